"""Which layer breaks parity: per-layer quantization error with TensorFlow's QuantizationDebugger.

For every quantized op output the debugger runs the float and the int8 op side by side on a few
images and reports the error. We rank layers by RMSE / scale (the error in units of the layer's
quantization step: ~0.29 is pure rounding, ≫ 1 means the layer's range or weights are the problem),
add the output SNR, the output range (255 × scale) and, for convolutions, how unequal the weight
channels are: max / median of the per-channel weight ranges. That last ratio is why per-tensor
weights break MobileNetV2: one scale for a depthwise kernel whose channels differ 30x leaves the
small channels a handful of levels.

    python -m pipeline.diagnose --calibration DIR [--granularity per-tensor] --output OUT
"""

import csv
import dataclasses
import io
import json
import re

import numpy as np

from pipeline.errors import PipelineInputError

DEBUG_IMAGES = 32


@dataclasses.dataclass
class LayerStats:
    index: int  # execution order among quantized ops
    op: str
    layer: str  # Keras layer name recovered from the tensor name
    tensor: str  # output tensor name (what --keep-float takes)
    rmse_over_scale: float
    snr_db: float
    scale: float
    output_range: float
    max_abs_error: float
    weight_range_ratio: float = None  # max / median per-channel weight range (conv ops)
    channels: int = None


@dataclasses.dataclass
class Diagnosis:
    granularity: str
    images: int
    layers: list  # LayerStats in execution order

    def worst(self, n=None):
        ranked = sorted(self.layers, key=lambda s: -s.rmse_over_scale)
        return ranked[:n] if n else ranked

    def to_json(self):
        return {"granularity": self.granularity, "images": self.images,
                "layers_worst_first": [dataclasses.asdict(s) for s in self.worst()]}


def layer_name(tensor_name):
    """'model_1/block_3_depthwise_relu_1/Relu6;…' → 'block_3_depthwise_relu'."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    return re.sub(r"_\d+$", "", name)


def _snr_db(float_tensor, quant_tensor, scale, zero_point):
    dequantized = (np.asarray(quant_tensor, np.float32) - zero_point) * scale
    noise = float(np.sum(np.square(np.asarray(float_tensor, np.float32) - dequantized)))
    signal = float(np.sum(np.square(float_tensor)))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(max(signal, 1e-30) / noise)


def weight_range_ratios(float_tflite):
    """Per conv op in execution order: (op, max/median per-output-channel weight range, channels)."""
    from tensorflow.lite.python import schema_py_generated as schema

    from pipeline.convert import read_ops

    model, graph, named_ops = read_ops(float_tflite)
    ratios = []
    for name, op in named_ops:
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        tensor = graph.tensors[op.inputs[1]]
        data = model.buffers[tensor.buffer].data
        if data is None or tensor.type != schema.TensorType.FLOAT32:
            ratios.append((name, None, None))
            continue
        weights = np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)
        # Output channels: last axis for depthwise [1, h, w, C], first for conv/fc [O, ...].
        axis = 3 if name == "DEPTHWISE_CONV_2D" else 0
        moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
        ranges = moved.max(axis=1) - moved.min(axis=1)
        median = float(np.median(ranges))
        ratios.append((name, float(ranges.max() / median) if median > 0 else None, len(ranges)))
    return ratios


def make_debugger(built, calibration_arrays, debug_arrays, per_channel=True):
    """A QuantizationDebugger over the same int8 converter the convert stage uses."""
    import contextlib

    import tensorflow as tf

    from pipeline.convert import calibrating_converter
    from pipeline.device_runner import quiet_native_stderr

    # Per-layer errors are measured up to the logits: a float softmax head has none to show.
    converter = calibrating_converter(built, calibration_arrays, per_channel, "logits")
    # Float fallback must be allowed for kept-float layers; the rest stays int8.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"snr_db": _snr_db})
    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: ([np.asarray(a, np.float32)[None]] for a in debug_arrays),
            debug_options=options,
        )
    return debugger


def diagnose(built, calibration_arrays, debug_arrays, float_tflite, per_channel=True):
    """Runs the debugger and returns a Diagnosis (layers in execution order)."""
    import contextlib

    from pipeline.device_runner import quiet_native_stderr

    debugger = make_debugger(built, calibration_arrays, debug_arrays, per_channel)
    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr():
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    ratios = iter(weight_range_ratios(float_tflite))
    layers = []
    for index, row in enumerate(rows):
        scale = float(row["scale"])
        stats = LayerStats(
            index=index,
            op=row["op_name"],
            layer=layer_name(row["tensor_name"]),
            tensor=row["tensor_name"],
            rmse_over_scale=float(np.sqrt(float(row["mean_squared_error"])) / scale),
            snr_db=float(row["snr_db"]),
            scale=scale,
            output_range=255 * scale,
            max_abs_error=float(row["max_abs_error"]),
        )
        if stats.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            op, ratio, channels = next(ratios)
            if op != stats.op:
                raise RuntimeError(f"op order differs between float and debug model at {stats.layer}")
            stats.weight_range_ratio, stats.channels = ratio, channels
        layers.append(stats)
    return Diagnosis(granularity="per-channel" if per_channel else "per-tensor",
                     images=len(debug_arrays), layers=layers)


def render_plot(diagnosis, title):
    """diagnosis.png: error by depth (depthwise layers marked) and weight channel-range ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = diagnosis.layers
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), dpi=100, sharex=True)
    x = np.arange(len(layers))
    colors = ["tab:red" if s.op == "DEPTHWISE_CONV_2D" else "tab:blue" if s.op == "CONV_2D"
              else "tab:gray" for s in layers]
    top.bar(x, [s.rmse_over_scale for s in layers], color=colors)
    top.axhline(0.29, color="k", linestyle=":", linewidth=1)
    top.text(len(layers) - 1, 0.3, "rounding only (1/√12)", ha="right", va="bottom", fontsize=8)
    top.set_yscale("log")
    top.set_ylim(top=max(s.rmse_over_scale for s in layers) * 12)
    top.set_ylabel("RMSE / scale")
    top.set_title(f"{title}: quantization error by layer (red: depthwise, blue: conv, grey: other)")
    ratio = [s.weight_range_ratio or 0 for s in layers]
    bottom.bar(x, ratio, color=colors)
    bottom.set_yscale("log")
    bottom.set_ylabel("max / median channel\nweight range")
    bottom.set_xlabel("layer (execution order)")
    for s in diagnosis.worst(3):
        top.annotate(s.layer, (s.index, s.rmse_over_scale), fontsize=7, rotation=30,
                     xytext=(2, 4), textcoords="offset points")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def render_markdown(diagnosis, top_n=15):
    lines = [
        f"## Per-layer quantization error ({diagnosis.granularity} weights, {diagnosis.images} images)",
        "",
        "RMSE / scale is the error in quantization steps (≈0.29 is rounding alone). The weight ratio is "
        "max / median of the per-output-channel weight ranges: a large ratio cannot share one scale.",
        "",
        "| # | layer | op | RMSE/scale | SNR dB | output range | weight ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in diagnosis.worst(top_n):
        ratio = "—" if s.weight_range_ratio is None else f"{s.weight_range_ratio:.1f}×"
        lines.append(f"| {s.index} | {s.layer} | {s.op} | {s.rmse_over_scale:.3f} | {s.snr_db:.1f} | "
                     f"{s.output_range:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def define_flags():
    from pipeline.cli import define

    define("integer", "debug-images", DEBUG_IMAGES, "Images the debugger compares layers on.")


def main(argv):
    from absl import flags

    from pipeline import build, calibrate, convert
    from pipeline.preprocess import Preprocessing
    from pipeline.report import check_writable, write_files_atomically

    values = flags.FLAGS
    out_dir = values["output"].value
    if not out_dir:
        raise PipelineInputError("--output DIR is required: where diagnosis.{json,md,png} go")
    check_writable(out_dir)
    built = build.build_model(build.config_from_flags(values))
    spec = Preprocessing(resolution=built.resolution)
    calibration = calibrate.representative_dataset(
        calibrate.config_from_flags(values, imagenet_weights=built.synsets is not None), spec,
        progress=calibrate.progress_bar("calibration images"))
    debug_arrays = calibration.arrays[: values["debug-images"].value]
    float_tflite = convert.convert(built, None, convert.ConvertConfig("none")).tflite
    per_channel = values["granularity"].value == "per-channel"
    result = diagnose(built, calibration.arrays, debug_arrays, float_tflite, per_channel)
    title = f"{built.name} {result.granularity}"
    write_files_atomically(out_dir, {
        "diagnosis.json": json.dumps(result.to_json(), indent=2) + "\n",
        "diagnosis.md": render_markdown(result),
        "diagnosis.png": render_plot(result, title),
    })
    print(render_markdown(result, top_n=10))


if __name__ == "__main__":
    from pipeline import build, calibrate, convert
    from pipeline.cli import define, run

    build.define_flags()
    calibrate.define_flags()
    convert.define_flags()
    define_flags()
    define("string", "output", None, "Folder for diagnosis.json, diagnosis.md and diagnosis.png.")
    run(main)


# --- Fixing it: keep the layers that matter in float ------------------------------------------

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


def layer_group(tensor_name):
    """The MobileNetV2 block an op belongs to (block_3, expanded_conv, Conv1, …), else the layer.

    Measured here: keeping single layers in float barely moves agreement (errors are spread
    through a block and compound), whole early blocks do; so the search adds blocks."""
    name = layer_name(tensor_name)
    match = re.match(r"(block_\d+|expanded_conv|Conv1|Conv_1)", name)
    return match.group(1) if match else name


def lower_bound(successes, n, z=1.96):
    """Wilson score lower bound of a proportion: how low it may be given n samples."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def _outputs(model_bytes, images):
    """The model's outputs on `images`, as logits (verify.as_logits)."""
    from pipeline.convert import output_kind
    from pipeline.device_runner import Runner, load_runtime
    from pipeline.verify import as_logits

    _, _, module = load_runtime()
    return as_logits(Runner(module, model_content=model_bytes, threads=2)(images),
                     output_kind(model_bytes))


def _parity_of(model_bytes, images, reference):
    from pipeline.verify import compare_outputs

    return compare_outputs(reference, _outputs(model_bytes, images))


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
    from pipeline.device_runner import load_runtime, time_configs

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
    from pipeline import convert

    reference = _outputs(float_tflite, images)
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

