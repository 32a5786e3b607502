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
import re
from pathlib import Path

import numpy as np

from pipeline import calibrate
from pipeline.errors import PipelineInputError
from pipeline.preprocess import load_images

KERAS_CHECK_IMAGES = 32
KERAS_CHECK_TOLERANCE = 1e-3  # max |p_keras − p_tflite|; float32 reorderings give ~1e-6


@dataclasses.dataclass
class EvalSet:
    paths: list
    labels: list  # output index per image, or None when unlabelled
    source: str  # what the images are, for the report
    root: str = None  # the folder the images' names are relative to (per-image results)


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
        from pipeline.stats import wilson_interval

        low, high = wilson_interval(round(self.agreement_top1 * self.images), self.images)
        return [round(low, 4), round(high, 4)]


def _normalize(name):
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def label_index(class_names, built):
    """Maps class-folder names to output indices: ImageNet synsets, else the model's label names.

    Returns (mapping, unknown names)."""
    if built.synsets is not None and all(n in built.synsets for n in class_names):
        position = {s: i for i, s in enumerate(built.synsets)}
        return {n: position[n] for n in class_names}, []
    by_label = {}
    for i, label in enumerate(built.labels):
        by_label.setdefault(_normalize(label), i)
    mapping = {n: by_label.get(_normalize(n)) for n in class_names}
    return mapping, sorted(n for n, i in mapping.items() if i is None)


def _labels(folder, paths, built):
    """(output index of each path's class, unknown class names); (None, []) when unlabelled."""
    if not folder.labelled:
        return None, []
    mapping, unknown = label_index(folder.class_names, built)
    if unknown:
        return None, unknown
    classes = dict(zip(folder.files, folder.classes))
    return [mapping[classes[p]] for p in paths], []


def eval_set_from_folder(directory, built, samples=None, seed=0):
    folder = calibrate.scan_images(directory)
    if not folder.files:
        raise PipelineInputError(
            f"no images (jpg, jpeg, png, bmp, webp) in evaluation folder {directory}: "
            "pass a folder with one sub-folder of images per class"
        )
    paths = folder.files
    if samples:
        paths, _ = calibrate.sample_files(folder, samples, seed)
        paths.sort()
    labels, unknown = _labels(folder, paths, built)
    if unknown:
        raise PipelineInputError(
            f"evaluation folder {directory} has classes that are not model labels "
            f"({', '.join(unknown[:5])}{'…' if len(unknown) > 5 else ''}): name the sub-folders "
            "after labels.txt entries or ImageNet synsets (n01440764), or pass --labels"
        )
    return EvalSet(paths, labels, str(directory) if folder.labelled else f"{directory} (unlabelled)",
                   root=str(folder.root))


def eval_set_from_held_out(calibration, built):
    """The calibration folder's images that calibration did not use (labels where they map)."""
    paths = sorted(calibration.held_out)
    source = f"{calibration.folder.root} (held-out: not used for calibration)"
    if not paths:
        # Everything was used to calibrate: measure in-sample rather than not at all, and say so.
        paths = sorted(calibration.used)
        source = f"{calibration.folder.root} (IN-SAMPLE: every image was used for calibration)"
    # Class folders that are not model labels just make this parity label-free.
    labels, _ = _labels(calibration.folder, paths, built)
    return EvalSet(paths, labels, source, root=str(calibration.folder.root))


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def as_logits(outputs, output_kind):
    """A model's outputs as logits: log p for probabilities (floored at float32's smallest normal,
    where a float32 softmax underflows), as they are otherwise."""
    outputs = np.asarray(outputs, np.float64)
    if output_kind != "probabilities":
        return outputs
    return np.log(np.maximum(outputs, np.finfo(np.float32).tiny))


def topk_accuracy(logits, labels, k):
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def compare_outputs(reference, candidate, labels=None):
    """Parity metrics between two (n, classes) logit arrays."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    # Centred per image: logits are defined up to a per-image constant (softmax removes it).
    centred_ref = reference - reference.mean(axis=-1, keepdims=True)
    centred_cand = candidate - candidate.mean(axis=-1, keepdims=True)
    noise = float(np.sum((centred_ref - centred_cand) ** 2))
    signal = float(np.sum(centred_ref**2))
    ref_top1, cand_top1 = reference.argmax(-1), candidate.argmax(-1)
    metrics = {
        "agreement_top1": float(np.mean(ref_top1 == cand_top1)),
        "kl_mean": float(np.mean(kl)),
        "snr_db": None if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else None,
        "kl_per_image": kl,
        "dominant_share": {
            "float": float(np.bincount(ref_top1).max() / len(ref_top1)),
            "tflite": float(np.bincount(cand_top1).max() / len(cand_top1)),
        },
    }
    if labels is not None:
        metrics["float"] = {"top1": topk_accuracy(reference, labels, 1),
                            "top5": topk_accuracy(reference, labels, 5)}
        metrics["tflite"] = {"top1": topk_accuracy(candidate, labels, 1),
                             "top5": topk_accuracy(candidate, labels, 5)}
    else:
        metrics["float"] = {"top1": None, "top5": None}
        metrics["tflite"] = {"top1": None, "top5": None}
    return metrics


def per_class_metrics(reference, candidate, eval_set, built):
    if eval_set.labels is None:
        return []
    labels = np.asarray(eval_set.labels)
    rows = []
    for index in sorted(set(eval_set.labels)):
        mask = labels == index
        ref, cand = reference[mask].argmax(-1), candidate[mask].argmax(-1)
        rows.append({
            "class": built.labels[index],
            "index": int(index),
            "images": int(mask.sum()),
            "float_top1": float(np.mean(ref == index)),
            "tflite_top1": float(np.mean(cand == index)),
            "agreement_top1": float(np.mean(ref == cand)),
        })
    return rows


def tflite_logits(model_bytes, images, threads=2):
    """A .tflite model's outputs on `images` (in this process), as logits (`as_logits`)."""
    from pipeline.convert import output_kind
    from pipeline.device_runner import Runner, load_runtime

    runner = Runner(load_runtime()[2], model_content=model_bytes, threads=threads)
    return as_logits(runner(images), output_kind(model_bytes))


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


# Evaluation runs in worker processes, one interpreter thread each: two single-threaded
# interpreters side by side beat one two-threaded one (measured on the 2-core VM at 224: float
# 7.9 → 4.3 ms/img with 2 threads, int8 4.4 → 3.0), and the float half can start while the parent
# calibrates. XNNPACK's outputs do not depend on its thread count or on which process runs them
# (tests/test_cache.py checks against a 2-thread run). Small sets run in-process: starting a
# worker costs more than it saves.
CHUNK_IMAGES = 128
MIN_IMAGES_FOR_WORKERS = 2 * CHUNK_IMAGES


@dataclasses.dataclass
class ModelOutputs:
    """A model's outputs (as logits) on the decodable images of an evaluation set, in order."""
    paths: list
    logits: np.ndarray  # float64 (n, classes)
    skipped: list  # [(path, reason)] of files that are not decodable images


@dataclasses.dataclass
class FloatReference:
    """The float half of parity: the float model's outputs and the Keras check."""
    outputs: ModelOutputs
    keras_check: dict


_RUNNERS = {}  # in a worker process: model file → Runner, kept between chunks


def _runner(model_path):
    from pipeline.device_runner import Runner, load_runtime

    if model_path not in _RUNNERS:
        with open(model_path, "rb") as f:
            _RUNNERS[model_path] = Runner(load_runtime()[2], model_content=f.read(), threads=1)
    return _RUNNERS[model_path]


def _warm_up():
    from pipeline.device_runner import load_runtime

    load_runtime()


def _outputs_on(model_path, output_kind, paths, spec, runner=None):
    """One chunk: decode `paths`, run the model. An unreadable file comes back as its OSError's
    (filename, strerror), to be raised in the parent as one line."""
    try:
        loaded = load_images(paths, spec, workers=1)
    except OSError as error:
        return None, (error.filename, error.strerror)
    if not len(loaded.paths):
        return ModelOutputs([], np.zeros((0, 0)), loaded.skipped), None
    logits = as_logits((runner or _runner(model_path))(loaded.arrays), output_kind)
    return ModelOutputs(list(loaded.paths), logits, loaded.skipped), None


class ParityWorkers:
    """Where evaluation chunks run: `workers` spawned processes, or this one (workers ≤ 1).

    Models are handed over as files in a private temporary folder, once, not pickled per chunk."""

    def __init__(self, workers=None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = None
        self._folder = None
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _model_file(self, model_bytes):
        import hashlib
        import tempfile

        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest not in self._files:
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="parity-")
            path = os.path.join(self._folder.name, digest + ".tflite")
            with open(path, "wb") as f:
                f.write(model_bytes)
            self._files[digest] = path
        return self._files[digest]

    def start(self, images):
        """Starts the worker processes (they import the runtime meanwhile) if `images` are worth
        them; returns whether they run."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self.workers <= 1 or images < MIN_IMAGES_FOR_WORKERS:
            return False
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.workers):
                self._pool.submit(_warm_up)
        return True

    def submit(self, model_bytes, paths, spec, progress=None):
        """Starts running the model on `paths`; returns a function that waits for the outputs."""
        from pipeline.convert import output_kind

        from pipeline.device_runner import Runner, load_runtime

        kind = output_kind(model_bytes)
        chunks = [paths[i : i + CHUNK_IMAGES] for i in range(0, len(paths), CHUNK_IMAGES)]
        in_process = not self.start(len(paths))
        if in_process:
            runner = Runner(load_runtime()[2], model_content=model_bytes, threads=1)
            jobs = chunks  # run as they are collected, in order
        else:
            model_path = self._model_file(model_bytes)
            jobs = [self._pool.submit(_outputs_on, model_path, kind, chunk, spec) for chunk in chunks]

        def collect():
            parts = []
            for job in jobs:
                result, error = (_outputs_on(None, kind, job, spec, runner) if in_process
                                 else job.result())
                if error is not None:
                    filename, strerror = error
                    raise PipelineInputError(f"cannot read {filename}: {strerror}; fix its "
                                             "permissions or remove it")
                parts.append(result)
                if progress is not None:
                    progress(len(result.paths) + len(result.skipped))
            kept = [p for part in parts for p in part.paths]
            logits = [part.logits for part in parts if len(part.paths)]
            return ModelOutputs(kept, np.concatenate(logits) if logits else np.zeros((0, 0)),
                                [s for part in parts for s in part.skipped])

        return collect


def float_reference(built, float_tflite, eval_set, spec, workers, store=None, progress=None,
                    start_now=True):
    """Starts the float half of parity (or finds it in `store`); returns a function that waits for
    the FloatReference (and starts it then, with `start_now` False). Keyed by the float model, the
    images (content hash, looked up by name, size and mtime), the preprocessing and the runtime."""
    from pipeline.cache import Cache, decode_arrays, encode_arrays, files_digest, key, sha256
    from pipeline.device_runner import load_runtime

    store = store or Cache(None)
    # The key reads the images' digest: not worth it when nothing is cached.
    entry = key("float-reference", sha256(float_tflite), built.weights_sha256,
                [os.path.basename(p) for p in eval_set.paths],
                files_digest(store, eval_set.paths, calibrate.files_sha256), spec.to_config(),
                load_runtime()[:2]) if store.enabled else None
    what = f"float reference on {len(eval_set.paths)} images"
    reference = store.lookup("float-reference", entry, what,
                             lambda payload: _decode_reference(payload, decode_arrays))
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
        store.put("float-reference", entry, _encode_reference(reference, encode_arrays), what)
        return reference

    return finish


def _encode_reference(reference, encode_arrays):
    import json

    outputs = reference.outputs
    meta = {"paths": [str(p) for p in outputs.paths], "skipped": outputs.skipped,
            "keras_check": reference.keras_check}
    return encode_arrays(logits=outputs.logits, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def _decode_reference(payload, decode_arrays):
    import json

    arrays = decode_arrays(payload)
    meta = json.loads(arrays["meta"].tobytes().decode())
    outputs = ModelOutputs(meta["paths"], arrays["logits"], [tuple(s) for s in meta["skipped"]])
    return FloatReference(outputs, meta["keras_check"])


def verify(built, float_tflite, tflite, eval_set, spec, thresholds=Thresholds(), threads=None,
           progress=None, store=None, workers=None, reference=None):
    """Runs both models over `eval_set` and measures parity. Returns a ParityResult.

    `reference` (from `float_reference`, already started) and `workers` let a caller overlap the
    float half with other work; `store` caches the float half."""
    from pipeline.cache import Cache, files_digest

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
    kept_set = EvalSet(kept, labels, eval_set.source, eval_set.root)
    ref_logits, cand_logits = reference.outputs.logits, candidate.logits
    metrics = compare_outputs(ref_logits, cand_logits, labels)
    keras = reference.keras_check
    per_image = PerImage(image_names(kept, eval_set.root), calibrate.file_digests(kept), labels,
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
        images_sha256=files_digest(store or Cache(None), kept, calibrate.files_sha256),
        kl_per_image=metrics["kl_per_image"],
        per_image=per_image,
    )


def format_checks(result):
    """The ✓/✗ lines a user reads at the end of a run."""
    return "\n".join(("✓ " if ok else "✗ ") + text for ok, text in result.checks)


def define_flags():
    from pipeline.cli import define

    define("string", "eval", None,
           "Labelled evaluation folder (one sub-folder per class: label names or ImageNet synsets). "
           "Without it, parity is measured label-free on held-out calibration images.")
    define("integer", "eval-samples", None,
           "Evaluate on this many images (stratified by class, drawn by --seed) instead of all.")
    define("float", "min-agreement", None,
           "Fail (exit 1, after writing the report) when top-1 agreement is below this (0–1).")
    define("float", "max-top1-drop", None,
           "Fail (exit 1, after writing the report) when top-1 drops by more than this many points.")
    define("integer", "threads", None, "Interpreter threads for evaluation (default: all cores).")


def eval_set_from_flags(flag_values, built, calibration):
    """--eval (all of it, or --eval-samples drawn by --seed), else the calibration folder's
    labelled held-out images."""
    directory = flag_values["eval"].value or calibration.default_eval_dir
    if directory:
        return eval_set_from_folder(directory, built, flag_values["eval-samples"].value,
                                    flag_values["seed"].value)
    return eval_set_from_held_out(calibration, built)


def config_from_flags(flag_values):
    agreement = flag_values["min-agreement"].value
    if agreement is not None and not 0 <= agreement <= 1:
        raise PipelineInputError(f"--min-agreement {agreement} must be a fraction in 0–1, e.g. 0.955")
    samples = flag_values["eval-samples"].value
    if samples is not None and samples < 1:
        raise PipelineInputError(f"--eval-samples must be at least 1 (got {samples})")
    directory = flag_values["eval"].value
    if directory is not None and not Path(directory).is_dir() and not calibrate.is_image_list(directory):
        raise PipelineInputError(f"--eval {directory} is not a folder: pass a folder of class "
                                 "sub-folders of images (or an image list such as pipeline.train's "
                                 "OUT/split/val.json)")
    return Thresholds(min_agreement=agreement, max_top1_drop=flag_values["max-top1-drop"].value)


def read_classifier(path, flag):
    """The bytes of the image classifier `flag` names, refused in one line when the file is not a
    `.tflite`, does not load, or is not one [1, r, r, 3] image in and one score vector out (what
    parity compares)."""
    from pipeline.deploy import classifier_problem, tensor_specs
    from pipeline.device_runner import load_runtime, make_interpreter
    from pipeline.inspect import read_model

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


def main(argv):
    """Parity of a given .tflite against the float model the build flags describe."""
    import json
    import sys

    from absl import flags

    from pipeline import build, convert
    from pipeline.preprocess import Preprocessing

    flag_values = flags.FLAGS
    path = flag_values["tflite"].value
    if not path:
        raise PipelineInputError("--tflite MODEL is required: pass the exported .tflite")
    if flag_values["target"].value:
        from pipeline import remote

        # The address first: one with shell syntax in it is refused before anything else runs.
        remote.parse_target(flag_values["target"].value, flag_values["ssh-option"].value,
                            flag_values["remote-python"].value)
    model = read_classifier(path, "--tflite")
    if flag_values["target"].value:
        return remote.cross_arch_main(flag_values, path)
    directory = flag_values["eval"].value
    if not directory:
        raise PipelineInputError("--eval DIR is required: a folder of images to compare the models on")
    thresholds = config_from_flags(flag_values)
    built = build.build_model(build.config_from_flags(flag_values))
    float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none"))
    eval_set = eval_set_from_folder(directory, built, flag_values["eval-samples"].value,
                                    flag_values["seed"].value)
    result = verify(built, float_model.tflite, model, eval_set,
                    Preprocessing(resolution=built.resolution), thresholds,
                    threads=flag_values["threads"].value)
    json.dump(result.to_json(), sys.stdout, indent=2)
    print()
    print(format_checks(result), file=sys.stderr)
    if not result.passed:
        from pipeline.errors import ParityError

        raise ParityError("parity check failed (see ✗ above)")


def define_target_flags():
    from pipeline.cli import define

    define("string", "target", None, "Device: ssh://user@host[:port] (ARM board, Jetson) or adb[:SERIAL].")
    define("multi_string", "ssh-option", [], "Extra ssh -o option (repeatable), e.g. IdentityFile=~/.ssh/board.")
    define("string", "remote-python", "python3", "Python on the device (3.8+).")


if __name__ == "__main__":
    from pipeline import build, remote
    from pipeline.cli import define, run

    build.define_flags()
    define_flags()
    define_target_flags()
    define("string", "tflite", None, "The .tflite model to compare with the float model.")
    define("float", "max-lsb", None, "With --target: the largest output difference still counted "
           "as parity, in quantization steps for integer outputs (default 0) and float32 ulps for "
           f"float ones (default {remote.FLOAT_ULPS_ALLOWED}).")
    run(main)
