"""Stage 5: parity — how far the exported `.tflite` is from the float model, on real images.

Both models see exactly the same tensors (`preprocess`, then each model's own input quantization).
The float reference is the float32 `.tflite` (XNNPACK, ~4x faster than Keras here); that it matches
Keras is proven in the same run on a sample (`keras_check.max_abs_prob_diff`).

Metrics are computed on logits. A model with a softmax head outputs float32 probabilities p, and
log p is its logits up to a per-image constant, which neither softmax nor any metric below sees
(SNR is taken on per-image centred logits for that reason), so the parity of either head is the
parity of its logits. Metrics, on logits turned into probabilities by softmax:
  top-1 / top-5        for each model, when the images have labels
  agreement_top1       share of images where both models pick the same class: the metric that
                       ranks int8 variants (top-1 moves by ±0.5 pt from sampling alone on 4k images)
  kl_mean              mean KL(float ‖ tflite) of the probabilities
  snr_db               10·log10(Σ float² / Σ (float − tflite)²) over all logits, each image's
                       centred on its mean
  per_class            the above, per true class
  dominant_share       share of images given the most frequent top-1 class; a model calibrated on
                       differently preprocessed images answers one class for everything

    python -m pipeline.verify --model-tflite OUT/model.tflite --eval DIR  (see --help)
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.options import option
from pipeline.stages import calibrate
from pipeline.core.errors import PipelineInputError
from pipeline.core.files import file_digests, files_sha256
from pipeline.stages.parity_metrics import compare_outputs, log_softmax, per_class_metrics, tflite_logits
from pipeline.stages.parity_workers import ModelOutputs, ParityWorkers
from pipeline.stages.preprocess import load_images

KERAS_CHECK_IMAGES = 32
KERAS_CHECK_TOLERANCE = 1e-3  # max |p_keras − p_tflite|; float32 reorderings give ~1e-6


PER_IMAGE_FILE = "parity_images.csv"


@dataclasses.dataclass
class PerImage:
    """Each evaluated image's outcome: what two runs on the same images are compared by, image by
    image (the gate's paired tests). `image` is the path inside the evaluation folder, so a person
    can open it and another machine's run on another copy of the folder matches it; `sha256` (16
    hex digits of the file's) says it is the same image."""

    COLUMNS = ("image", "sha256", "label", "float_top1", "tflite_top1", "kl")

    images: list
    sha256: list
    labels: list  # true class index per image, or None
    float_top1: list
    tflite_top1: list
    kl: list

    def __len__(self):
        return len(self.images)

    def agree(self):
        return [f == t for f, t in zip(self.float_top1, self.tflite_top1)]

    def to_csv(self):
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.COLUMNS)
        labels = self.labels if self.labels is not None else [None] * len(self.images)
        for row in zip(self.images, self.sha256, labels, self.float_top1, self.tflite_top1, self.kl):
            name, digest, label, f, t, kl = row
            writer.writerow([name, digest, "" if label is None else int(label), int(f), int(t),
                             f"{float(kl):.6g}"])
        return buffer.getvalue()

    @classmethod
    def from_csv(cls, text, where):
        """The per-image results in a parity_images.csv; one line naming `where` when it is not
        one."""
        import csv

        fix = "export again to write it"
        rows = list(csv.reader(text.splitlines()))
        if not rows or tuple(rows[0]) != cls.COLUMNS:
            raise PipelineInputError(f"{where} is not a per-image results file (its header is not "
                                     f"{','.join(cls.COLUMNS)}): {fix}")
        try:
            body = [(r[0], r[1], int(r[2]) if r[2] else None, int(r[3]), int(r[4]), float(r[5]))
                    for r in rows[1:]]
        except (IndexError, ValueError) as error:
            raise PipelineInputError(f"{where} has a malformed row ({error}): {fix}") from None
        if not all(math.isfinite(r[5]) for r in body):
            raise PipelineInputError(f"{where} has a KL that is not a finite number: {fix}")
        columns = list(zip(*body)) if body else [[] for _ in cls.COLUMNS]
        labels = list(columns[2]) if body and all(v is not None for v in columns[2]) else None
        return cls(list(columns[0]), list(columns[1]), labels, list(columns[3]), list(columns[4]),
                   list(columns[5]))


def image_names(paths, root):
    """Each path inside `root`, as a POSIX relative path (the file name when it is not inside)."""
    names = []
    for path in paths:
        try:
            names.append(Path(path).relative_to(root).as_posix() if root else Path(path).name)
        except ValueError:
            names.append(Path(path).name)
    return names


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_agreement: float = None  # e.g. 0.955
    max_top1_drop: float = None  # in points of top-1 accuracy, e.g. 0.5


@dataclasses.dataclass
class ParityResult:
    images: int
    source: str
    float_metrics: dict  # {"top1", "top5"} (None without labels)
    tflite_metrics: dict
    agreement_top1: float
    kl_mean: float
    snr_db: float
    dominant_share: dict  # {"float": share, "tflite": share}
    per_class: list
    keras_check: dict
    skipped: list
    checks: list  # [(ok, text)]
    images_sha256: str = None  # of the evaluated files' names and bytes, in order
    kl_per_image: object = None  # numpy array, for the plot; not serialized
    per_image: PerImage = None  # written beside the report (PER_IMAGE_FILE), not into it

    @property
    def passed(self):
        return all(ok for ok, _ in self.checks)

    def to_json(self):
        return {
            "images": self.images,
            "source": self.source,
            "float": self.float_metrics,
            "tflite": self.tflite_metrics,
            "agreement_top1": self.agreement_top1,
            "agreement_interval_95": self.agreement_interval(),
            "kl_mean": self.kl_mean,
            "snr_db": self.snr_db,
            "dominant_share": self.dominant_share,
            "keras_check": self.keras_check,
            "per_class": self.per_class,
            "skipped": [{"file": p, "reason": r} for p, r in self.skipped],
            "images_sha256": self.images_sha256,
            "per_image_file": PER_IMAGE_FILE if self.per_image is not None else None,
            "checks": [{"ok": ok, "check": text} for ok, text in self.checks],
            "passed": self.passed,
        }

    def agreement_interval(self):
        """The 95% (Wilson) interval of top-1 agreement on these images."""
        from pipeline.core.stats import wilson_interval

        low, high = wilson_interval(round(self.agreement_top1 * self.images), self.images)
        return [round(low, 4), round(high, 4)]


def keras_check(built, float_tflite, paths, spec):
    """Max |softmax(Keras) − softmax(float .tflite)| on a sample: the fast reference is faithful."""
    sample = load_images(paths, spec).arrays
    keras_logits = built.keras_model.predict(sample, batch_size=len(sample), verbose=0)
    float_logits = tflite_logits(float_tflite, sample, threads=1)
    diff = np.abs(np.exp(log_softmax(keras_logits)) - np.exp(log_softmax(float_logits))).max()
    return {"images": int(len(sample)), "max_abs_prob_diff": float(diff),
            "tolerance": KERAS_CHECK_TOLERANCE}


def threshold_checks(metrics, keras, thresholds):
    checks = []
    ok = keras["max_abs_prob_diff"] <= keras["tolerance"]
    checks.append((ok, f"float .tflite matches Keras: max |Δp| {keras['max_abs_prob_diff']:.2e} "
                       f"on {keras['images']} images (≤ {keras['tolerance']:.0e})"))
    if thresholds.min_agreement is not None:
        value = metrics["agreement_top1"]
        checks.append((value >= thresholds.min_agreement,
                       f"top-1 agreement {value:.2%} (≥ {thresholds.min_agreement:.2%})"))
    if thresholds.max_top1_drop is not None:
        f1, t1 = metrics["float"]["top1"], metrics["tflite"]["top1"]
        if f1 is None:
            checks.append((False, "top-1 drop: the evaluation images have no labels "
                                  "(pass --eval with class sub-folders)"))
        else:
            drop = (f1 - t1) * 100
            checks.append((drop <= thresholds.max_top1_drop,
                           f"top-1 drop {drop:+.2f} pt (≤ {thresholds.max_top1_drop:.2f} pt)"))
    return checks


@dataclasses.dataclass
class FloatReference:
    """The float half of parity: the float model's outputs and the Keras check."""
    outputs: ModelOutputs
    keras_check: dict


def float_reference(built, float_tflite, eval_set, spec, workers, store=None, progress=None,
                    start_now=True):
    """Starts the float half of parity (or finds it in `store`); returns a function that waits for
    the FloatReference (and starts it then, with `start_now` False). Keyed by the float model, the
    images (content hash, looked up by name, size and mtime), the preprocessing and the runtime."""
    from pipeline.core.cache import Cache, decode_arrays, encode_arrays, files_digest, key, sha256
    from pipeline.device.runner import load_runtime

    store = store or Cache(None)
    # The key reads the images' digest: not worth it when nothing is cached.
    entry = key("float-reference", sha256(float_tflite), built.weights_sha256,
                [os.path.basename(p) for p in eval_set.paths],
                files_digest(store, eval_set.paths, files_sha256), spec.to_config(),
                load_runtime()[:2], REFERENCE_LAYOUT) if store.enabled else None
    what = f"float reference on {len(eval_set.paths)} images"
    reference = store.lookup("float-reference", entry, what,
                             lambda payload: _decode_reference(payload, decode_arrays, eval_set.paths))
    if reference is not None:
        workers.start(len(eval_set.paths))  # ready for the candidate's half
        if progress is not None:
            progress(len(eval_set.paths))
        return lambda: reference
    started = [workers.submit(float_tflite, eval_set.paths, spec, progress)] if start_now else []

    def finish():
        collect = started[0] if started else workers.submit(float_tflite, eval_set.paths, spec, progress)
        outputs = collect()
        if not outputs.paths:
            raise PipelineInputError(f"none of the evaluation images could be decoded ({eval_set.source})")
        keras = keras_check(built, float_tflite, outputs.paths[:KERAS_CHECK_IMAGES], spec)
        reference = FloatReference(outputs, keras)
        store.put("float-reference", entry, _encode_reference(reference, encode_arrays, eval_set.paths),
                  what)
        return reference

    return finish


# The same images may sit in another folder next time (a copy, a symlink, a notebook's relative
# path): the key names them by file name and content, so the entry records each kept or skipped
# image by its position in the evaluation set and gets its paths back from the set at hand.
REFERENCE_LAYOUT = "positions"


def _encode_reference(reference, encode_arrays, paths):
    import json

    position = {str(p): i for i, p in enumerate(paths)}
    outputs = reference.outputs
    meta = {"kept": [position[str(p)] for p in outputs.paths],
            "skipped": [[position[str(p)], reason] for p, reason in outputs.skipped],
            "keras_check": reference.keras_check}
    return encode_arrays(logits=outputs.logits, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def _decode_reference(payload, decode_arrays, paths):
    import json

    arrays = decode_arrays(payload)
    meta = json.loads(arrays["meta"].tobytes().decode())
    outputs = ModelOutputs([paths[i] for i in meta["kept"]], arrays["logits"],
                           [(paths[i], reason) for i, reason in meta["skipped"]])
    return FloatReference(outputs, meta["keras_check"])


def verify(built, float_tflite, tflite, eval_set, spec, thresholds=Thresholds(), threads=None,
           progress=None, store=None, workers=None, reference=None):
    """Runs both models over `eval_set` and measures parity. Returns a ParityResult.

    `reference` (from `float_reference`, already started) and `workers` let a caller overlap the
    float half with other work; `store` caches the float half."""
    from pipeline.core.cache import Cache, files_digest

    own_workers = workers is None
    workers = workers or ParityWorkers(threads)
    total = 2 * len(eval_set.paths)
    bar = progress(None, total=total) if progress else None
    tick = bar.update if bar is not None else None
    try:
        started_outside = reference is not None
        if not started_outside:
            reference = float_reference(built, float_tflite, eval_set, spec, workers, store, tick)
        reference = reference()
        if started_outside and tick is not None:
            tick(len(eval_set.paths))  # the float half, done while the caller did other work
        # The candidate runs on the images the reference decoded; the rest are skipped already.
        collect = workers.submit(tflite, reference.outputs.paths, spec, tick)
        candidate = collect()
    finally:
        if bar is not None:
            bar.close()
        if own_workers:
            workers.close()
    kept, skipped = reference.outputs.paths, reference.outputs.skipped
    label_of = dict(zip(map(str, eval_set.paths), eval_set.labels)) if eval_set.labels is not None else None
    labels = [label_of[str(p)] for p in kept] if label_of is not None else None
    kept_set = dataclasses.replace(eval_set, paths=kept, labels=labels)
    ref_logits, cand_logits = reference.outputs.logits, candidate.logits
    metrics = compare_outputs(ref_logits, cand_logits, labels)
    keras = reference.keras_check
    per_image = PerImage(image_names(kept, eval_set.root), file_digests(kept), labels,
                         ref_logits.argmax(-1).tolist(), cand_logits.argmax(-1).tolist(),
                         metrics["kl_per_image"].tolist())
    return ParityResult(
        images=len(kept),
        source=eval_set.source,
        float_metrics=metrics["float"],
        tflite_metrics=metrics["tflite"],
        agreement_top1=metrics["agreement_top1"],
        kl_mean=metrics["kl_mean"],
        snr_db=metrics["snr_db"],
        dominant_share=metrics["dominant_share"],
        per_class=per_class_metrics(ref_logits, cand_logits, kept_set, built),
        keras_check=keras,
        skipped=[tuple(s) for s in skipped],
        checks=threshold_checks(metrics, keras, thresholds),
        images_sha256=files_digest(store or Cache(None), kept, files_sha256),
        kl_per_image=metrics["kl_per_image"],
        per_image=per_image,
    )


def format_checks(result):
    """The ✓/✗ lines a user reads at the end of a run."""
    return "\n".join(("✓ " if ok else "✗ ") + text for ok, text in result.checks)


OPTIONS = (
    option("string", "eval", None,
           "Labelled evaluation folder (one sub-folder per class: label names or ImageNet "
           "synsets). Without it, parity is measured label-free on held-out calibration images."),
    option("integer", "eval-samples", None,
           "Evaluate on this many images (stratified by class, drawn by --seed) instead of all."),
    option("float", "min-agreement", None,
           "Fail (exit 1, after writing the report) when top-1 agreement is below this (0–1)."),
    option("float", "max-top1-drop", None,
           "Fail (exit 1, after writing the report) when top-1 drops by more than this many "
           "points."),
    option("integer", "threads", None, "Interpreter threads for evaluation (default: all cores)."),
)


def config_from_settings(settings):
    agreement = settings["min-agreement"]
    if agreement is not None and not 0 <= agreement <= 1:
        raise PipelineInputError(f"--min-agreement {agreement} must be a fraction in 0–1, e.g. 0.955")
    samples = settings["eval-samples"]
    if samples is not None and samples < 1:
        raise PipelineInputError(f"--eval-samples must be at least 1 (got {samples})")
    directory = settings["eval"]
    if directory is not None and not Path(directory).is_dir() and not calibrate.is_image_list(directory):
        raise PipelineInputError(f"--eval {directory} is not a folder: pass a folder of class "
                                 "sub-folders of images (or an image list such as pipeline.train's "
                                 "OUT/split/val.json)")
    return Thresholds(min_agreement=agreement, max_top1_drop=settings["max-top1-drop"])


def read_classifier(path, flag):
    """The bytes of the image classifier `flag` names, refused in one line when the file is not a
    `.tflite`, does not load, or is not one [1, r, r, 3] image in and one score vector out (what
    parity compares)."""
    from pipeline.stages.deploy import classifier_problem, tensor_specs
    from pipeline.device.runner import load_runtime, make_interpreter
    from pipeline.core.tflite import read_model

    try:
        model = read_model(path)
    except PipelineInputError as error:
        raise PipelineInputError(f"{flag} {error}") from None
    _, _, module = load_runtime()
    try:
        interpreter = make_interpreter(module, model_content=model)
    except (ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PipelineInputError(f"{flag} {path} does not load in LiteRT ({reason}): pass the "
                                 "exported .tflite") from None
    problem = classifier_problem(tensor_specs(interpreter.get_input_details()),
                                 tensor_specs(interpreter.get_output_details()))
    if problem:
        raise PipelineInputError(f"{flag} {path} {problem}; pass the exported image classifier")
    return model
