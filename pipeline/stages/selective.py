"""Selective quantization: int8 with the layers that break parity kept in float.

    python -m pipeline.export --quantize int8 --keep-float block_1,Conv1 …
    python -m pipeline.export --quantize int8 --keep-float auto --min-agreement 0.97 …

Names (`--keep-float`) are resolved against the calibrated model (pipeline.layers); `auto` searches:
it measures each MobileNetV2 block's sensitivity on held-out calibration images (never the
evaluation set), adds blocks within a latency budget measured interleaved against the all-int8
model, and stops when held-out agreement is confidently at the target. Composes convert (the
calibrated model, requantized per variant in ~0.2 s) and verify (the parity measures).
"""

import dataclasses

import numpy as np

from pipeline.core.options import option
from pipeline.stages import convert
from pipeline.device.runner import load_runtime, time_configs
from pipeline.core.errors import PipelineInputError
from pipeline.core.layers import layer_group
from pipeline.stages.parity_metrics import compare_outputs, tflite_logits

HELD_OUT_IMAGES = 256  # sensitivity and the stop rule are measured on at most this many
MIN_HELD_OUT_IMAGES = 50


@dataclasses.dataclass(frozen=True)
class KeepFloatConfig:
    layers: tuple  # names, or ("auto",)
    target_agreement: float = None  # --min-agreement, needed by auto
    max_latency_ratio: float = 1.3
    max_groups: int = 0

    @property
    def auto(self):
        return self.layers == ("auto",)


def config_from_settings(settings):
    """KeepFloatConfig from --keep-float and its budget flags; None when --keep-float is not given."""
    text = settings["keep-float"]
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise PipelineInputError(f"--keep-float {text!r} names no layer: pass block names "
                                 "(e.g. block_1,Conv1) or auto")
    if "auto" in names and names != ("auto",):
        raise PipelineInputError("--keep-float auto searches on its own: pass auto alone, or names")
    ratio = settings["keep-float-max-latency"]
    if not ratio >= 1.0:  # also refuses NaN
        raise PipelineInputError(f"--keep-float-max-latency {ratio} must be at least 1.0 (x the "
                                 "all-int8 model's latency), e.g. 1.3")
    groups = settings["keep-float-max-groups"]
    if groups < 0:
        raise PipelineInputError(f"--keep-float-max-groups {groups} must be 0 (no limit) or more")
    return KeepFloatConfig(names, settings["min-agreement"], ratio, groups)


def times_latency(keep_float):
    """Whether quantizing with `keep_float` measures latency (the auto search's budget): nothing
    else may run beside it then."""
    return bool(keep_float) and keep_float.auto


def quantize_selectively(built, calibration, spec, cfg, float_tflite, keep_float,
                         progress=print, store=None):
    """int8 with `keep_float`'s layers in float.

    Returns (ConvertedModel, the report's keep_float section, the calibrated model it came from:
    the latency reference is requantized from it)."""
    from pipeline.stages.preprocess import load_images

    if cfg.quantize != "int8":
        raise PipelineInputError(f"--keep-float works with --quantize int8, not {cfg.quantize}")
    if keep_float.auto and keep_float.target_agreement is None:
        raise PipelineInputError("--keep-float auto needs a target: pass --min-agreement (e.g. 0.97)")
    held_out = calibration.held_out[:HELD_OUT_IMAGES]
    if keep_float.auto and len(held_out) < MIN_HELD_OUT_IMAGES:
        raise PipelineInputError(
            f"--keep-float auto measures sensitivity on calibration images not used to calibrate, and "
            f"{calibration.folder.root} has only {len(held_out)}: add images or lower "
            "--calibration-samples")
    calibrated = convert.calibrated_for(built, calibration.arrays, cfg, store, float_tflite)
    if not keep_float.auto:
        keep = convert.resolve_keep_float(list(keep_float.layers), calibrated)
        converted = convert.convert_calibrated(calibrated, dataclasses.replace(cfg, keep_float=keep))
        return converted, {"mode": "names", "layers": list(keep_float.layers), "tensors": list(keep)}, calibrated
    search = search_keep_float(
        calibrated, cfg, float_tflite, load_images(held_out, spec).arrays,
        keep_float.target_agreement, keep_float.max_latency_ratio, keep_float.max_groups,
        progress=progress)
    converted = convert.convert_calibrated(calibrated, dataclasses.replace(cfg, keep_float=search.chosen))
    found = search.to_json()
    if found["pin"]:
        # The search measures latency, which a busy machine makes noisy: CI should pin its result.
        progress(f"keep-float: chose {', '.join(search.chosen_groups)}; to reproduce without "
                 f"searching: {found['pin']}")
    return converted, {"mode": "auto", **found}, calibrated


OPTIONS = (
    option("string", "keep-float", None,
           "Layers to keep in float in an int8 model: comma-separated names from pipeline.diagnose"
           " or whole blocks (Conv1, expanded_conv, block_3), or 'auto': add blocks, most harmful "
           "per MAC first (measured on held-out calibration images), within "
           "--keep-float-max-latency, until held-out agreement reaches --min-agreement with 95% "
           "confidence."),
    option("float", "keep-float-max-latency", 1.3,
           "With --keep-float auto: the most 1-thread latency (x the all-int8 model) to spend."),
    option("integer", "keep-float-max-groups", 0,
           "With --keep-float auto: the most blocks to add (0: as many as the latency budget "
           "allows)."),
)


# --- The search -----------------------------------------------------------------------------------

@dataclasses.dataclass
class KeepFloatStep:
    groups: list  # groups kept in float so far
    tensors: int  # op outputs kept in float
    agreement_top1: float
    kl_mean: float
    size_bytes: int
    latency_ratio: float  # 1-thread median vs the all-int8 model, measured interleaved


@dataclasses.dataclass
class GroupSensitivity:
    group: str
    kl_added: float  # held-out KL(float ‖ model) with only this group int8, minus the all-float floor
    macs: int  # multiply-accumulates of the group's convolutions: what keeping it float costs

    @property
    def per_mmac(self):
        return self.kl_added / max(self.macs / 1e6, 1e-3)


@dataclasses.dataclass
class KeepFloatSearch:
    floor_kl: float  # every op float, only the model's int8/uint8 input and output quantized
    sensitivity: list  # [GroupSensitivity], most harmful per MAC first
    order: str  # which order was kept: "most harmful per MAC" or "region from the input"
    baseline: KeepFloatStep
    steps: list  # KeepFloatStep after each added group
    skipped: list  # [(group, latency ratio it would have cost)]
    chosen: tuple  # tensor names of the chosen configuration
    chosen_groups: list
    reached: bool  # held-out evidence says the target is met (95% lower bound)

    def to_json(self):
        return {
            "floor_kl": self.floor_kl,
            "sensitivity": [{**dataclasses.asdict(s), "kl_added_per_mmac": s.per_mmac}
                            for s in self.sensitivity],
            "order": self.order,
            "baseline": dataclasses.asdict(self.baseline),
            "steps": [dataclasses.asdict(s) for s in self.steps],
            "skipped": [{"group": g, "latency_ratio": r} for g, r in self.skipped],
            "chosen": list(self.chosen),
            "chosen_groups": list(self.chosen_groups),
            "pin": "--keep-float " + ",".join(self.chosen_groups) if self.chosen_groups else None,
            "reached": self.reached,
        }


def lower_bound(successes, n, z=1.96):
    """Wilson score lower bound of a proportion: how low it may be given n samples."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def _parity_of(model_bytes, images, reference):
    return compare_outputs(reference, tflite_logits(model_bytes, images))


@dataclasses.dataclass
class _Growth:
    """One order's run through the candidate groups."""
    steps: list
    skipped: list
    kept: list
    chosen: tuple
    reached: bool


def _latency_ratio(candidate, baseline, runs=100):
    """1-thread median latency of `candidate` over `baseline`, the two timed invoke by invoke.

    Timing each model in its own block of runs let drift between the blocks in: at 224 it put a
    1.24x model at 1.30x."""
    _, _, module = load_runtime()
    base, cand = time_configs(module, [{"model": baseline, "threads": 1},
                                       {"model": candidate, "threads": 1}], warmup=10, runs=runs)
    return cand["median_ms"] / base["median_ms"]


def search_keep_float(calibrated, cfg, float_tflite, images, target_agreement,
                      max_latency_ratio=1.3, max_groups=0, progress=print):
    """Keeps MobileNetV2 blocks in float, within a latency budget, to bring int8 closer to float.

    1. Sensitivity, measured on `images` (held-out: never the evaluation set): the KL(float ‖
       model) a group adds when it is the *only* int8 group, over the floor of an all-float-ops
       model. Measured in isolation because the other way round (one group float in an int8 model)
       moves KL less than the noise of a few hundred images: at 224 it ranked block_1 and block_7
       as harmful to keep float; in isolation the ranking matches the one measured on 3,925 val
       images (expanded_conv, block_1, Conv1, block_2 first). Groups without convolutions (the
       global average pool) are not candidates.
    2. Two orders are tried: added KL per MAC (keeping a group float costs about its MACs at float
       speed), and one float region grown from the input (one dequantize/quantize pair instead of
       one per island). A group that would push the measured 1-thread latency (interleaved with
       the all-int8 model) past `max_latency_ratio` is skipped (per-MAC order) or ends the region.
    3. An order stops when the held-out agreement's 95% lower bound reaches `target_agreement`
       (agreement on 200 images moves ±1.5 pt between equally good models, so reaching the target
       by luck is not enough), or after `max_groups` groups (0: no limit). The order that reached
       the target, else the one with the lower held-out KL, is kept.
    """
    reference = tflite_logits(float_tflite, images)
    groups, macs = {}, {}
    for _, tensor, tensor_macs in convert.quantizable_tensors(calibrated):
        group = layer_group(tensor)
        groups.setdefault(group, []).append(tensor)
        macs[group] = macs.get(group, 0) + tensor_macs

    def variant(group_names):
        tensors = tuple(t for g in group_names for t in groups[g])
        return tensors, convert.quantize_calibrated(calibrated, dataclasses.replace(cfg, keep_float=tensors))

    def kl_of(group_names):
        return _parity_of(variant(group_names)[1], images, reference)["kl_mean"]

    floor = kl_of(list(groups))
    # Groups without convolutions (the global average pool) save nothing measurable in float and
    # cost a dequantize/quantize pair: not candidates.
    sensitivity = [GroupSensitivity(g, kl_of([h for h in groups if h != g]) - floor, macs[g])
                   for g in groups if macs[g]]
    sensitivity.sort(key=lambda s: -s.per_mmac)
    _, int8 = variant([])
    base = _parity_of(int8, images, reference)
    baseline = KeepFloatStep([], 0, base["agreement_top1"], base["kl_mean"], len(int8), 1.0)
    progress(f"keep-float: int8 agreement {base['agreement_top1']:.2%}, KL {base['kl_mean']:.5f} on "
             f"{len(images)} held-out images (all ops float: KL {floor:.5f}); most harmful per MAC: "
             + ", ".join(s.group for s in sensitivity[:5]))

    def confident(parity):
        agreed = int(round(parity["agreement_top1"] * len(images)))
        return lower_bound(agreed, len(images)) >= target_agreement

    def grow(order, contiguous):
        """Adds `order`'s groups within the budget; a contiguous region stops at the first misfit."""
        steps, skipped, kept, chosen = [], [], [], ()
        reached = confident(base)
        for group in order:
            if reached or (max_groups and len(kept) >= max_groups):
                break
            tensors, model = variant(kept + [group])
            ratio = _latency_ratio(model, int8)
            if ratio > max_latency_ratio:
                skipped.append((group, ratio))
                progress(f"keep-float: {group} would cost {ratio:.2f}x latency (> {max_latency_ratio}); "
                         + ("stop" if contiguous else "skipped"))
                if contiguous:
                    break
                continue
            kept.append(group)
            parity = _parity_of(model, images, reference)
            steps.append(KeepFloatStep(list(kept), len(tensors), parity["agreement_top1"],
                                       parity["kl_mean"], len(model), ratio))
            chosen = tensors
            progress(f"keep-float: + {group}: agreement {parity['agreement_top1']:.2%}, "
                     f"KL {parity['kl_mean']:.5f}, {len(model):,} bytes, latency {ratio:.2f}x")
            reached = confident(parity)
        return _Growth(steps, skipped, kept, chosen, reached)

    # Two orders, the better held-out KL wins: most harmful per MAC first, and a float region
    # grown from the input. The second matters because each float island pays a dequantize /
    # quantize pair: at 224 the region through block_7 reached held-out KL 0.00246 at 1.28x where
    # the per-MAC order, split into islands, reached 0.00277 at the same latency.
    progress("keep-float: order 1, most harmful per MAC first")
    by_sensitivity = grow([s.group for s in sensitivity], contiguous=False)
    progress("keep-float: order 2, a float region grown from the input")
    from_input = grow([g for g in groups if macs[g]], contiguous=True)

    def rank(named):  # reached the target first, then the lower final held-out KL
        growth = named[1]
        return (not growth.reached, growth.steps[-1].kl_mean if growth.steps else base["kl_mean"])

    order, best = min((("most harmful per MAC", by_sensitivity),
                       ("region from the input", from_input)), key=rank)
    progress(f"keep-float: kept order: {order}")
    return KeepFloatSearch(floor, sensitivity, order, baseline, best.steps, best.skipped,
                           best.chosen, best.kept, best.reached)
