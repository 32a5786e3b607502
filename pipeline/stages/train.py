"""Your own classes: a folder of labelled images → a fine-tuned float MobileNetV2 that export takes.

    python -m pipeline.train --data flowers/ --resolution 128 --output artifacts/flowers
    python -m pipeline.export --from-train artifacts/flowers --quantize int8

Transfer learning from Keras' ImageNet MobileNetV2 (arXiv:1801.04381), classes from the sub-folder
names, in two stages:

  1. a new linear head on the frozen base's pooled features;
  2. `--fine-tune-from block_N`: blocks N…16 and the last 1x1 conv unfrozen at a lower learning rate,
     BatchNorm kept in inference mode (its ImageNet statistics; a few thousand images would only
     make them noisier), cosine decay, label smoothing.

Where the time goes, and why it is cheap on two cores: the frozen bottom (stem → block N−1) is by
far most of the network's work, and it never changes. So each training image is drawn `--views`
times (view 0 the deployment transform itself, view 1 its mirror, the rest random crops, mirrored
at random), the bottom runs once per view, and its activations are cached: an epoch then runs only
the top blocks. Augmentation goes through `preprocess.preprocess` with another crop box and a flip:
the same decoder, filter and normalization as deployment, never a different one.

The held-out split is stratified and seeded and written down (`val_images.json`), so export
evaluates on exactly those images, and calibration draws from `train_images.json`: nothing trained
on leaks into parity figures. Early stopping keeps the epoch with the best validation accuracy;
Ctrl-C during fine-tuning stops there and writes that best model (marked interrupted); Ctrl-C
before any epoch ends writes nothing and leaves a previous OUT/ as it was.

OUT/ holds model.keras, labels.txt, train_images.json, val_images.json, train_report.{json,md},
training_curves.png and confusion_matrix.png, all written atomically.
"""

import dataclasses
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.core.options import option
from pipeline.core import artifacts
from pipeline.stages import build, calibrate
from pipeline.core.errors import PipelineInputError
from pipeline.core.files import file_sha256
from pipeline.stages.preprocess import Preprocessing, load_images, preprocess
from pipeline.stages.train_report import evaluate, write_outputs

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
BLOCKS = tuple(f"block_{i}" for i in range(1, 17))
AUGMENTATIONS = ("crop-flip", "flip", "none")
# Random crops keep this fraction of the centred square's area, at least (Inception-style zoom).
MIN_CROP_AREA = 0.5
LABEL_SMOOTHING = 0.1
HEAD_LEARNING_RATE = 1e-3
DROPOUT = 0.2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    val: str = None  # a labelled folder; else --val-split of --data
    val_split: float = 0.1
    alpha: float = 1.0
    resolution: int = 224
    weights: str = "imagenet"  # imagenet (Keras' cache) | random (seeded; tests and timing)
    head_epochs: int = 15
    epochs: int = 10  # fine-tuning epochs (stage two); 0 trains the head only
    fine_tune_from: str = "block_13"  # or "none"
    batch_size: int = 32
    learning_rate: float = 3e-4
    augment: str = "crop-flip"
    views: int = 6
    patience: int = 4
    seed: int = 0
    max_per_class: int = None  # use at most this many images of each class (quick runs, CI)
    int8_grid: bool = True  # finish with every kernel on its per-channel int8 grid


@dataclasses.dataclass
class Split:
    root: Path
    classes: list  # sorted class names = output order = labels.txt
    train: list  # Paths
    train_labels: list
    val: list
    val_labels: list
    source: str  # how val was chosen
    ignored_files: int  # files under --data that are not images by extension
    skipped: list  # [(path, reason)] undecodable images, dropped from both sides


# ---------------------------------------------------------------------------------------------
# Data: classes, the held-out split, augmented views


def _check_class_names(names, where):
    from pipeline.stages.evalset import normalize_label  # the rule export uses to match folders to labels

    for name in names:
        if not name.strip() or name != name.strip() or any(c in name for c in "\r\n"):
            raise PipelineInputError(
                f"class folder {where}/{name!r} has a name labels.txt cannot hold (blank, leading or "
                "trailing spaces, a line break): rename the folder")
    seen = {}
    for name in names:
        key = normalize_label(name)
        if key in seen:
            raise PipelineInputError(
                f"class folders {seen[key]!r} and {name!r} in {where} differ only in case, spaces, "
                "'_' or '-', so an evaluation folder could not tell them apart: rename one")
        seen[key] = name


def _labelled_folder(directory, flag):
    folder = calibrate.scan_images(directory)
    if not folder.files:
        raise PipelineInputError(f"{flag} {directory} holds no images (jpg, jpeg, png, bmp, webp): "
                                 "give a folder with one sub-folder of images per class")
    if not folder.labelled:
        raise PipelineInputError(
            f"{flag} {directory} has images outside class sub-folders: put every image in a "
            "sub-folder named after its class (daisy/1.jpg, roses/2.jpg, …)")
    _check_class_names(folder.class_names, directory)
    return folder


def _count_ignored(root):
    count = 0
    for _, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        count += sum(1 for f in filenames if not f.startswith(".")
                     and not f.lower().endswith(calibrate.IMAGE_EXTENSIONS))
    return count


def split_data(cfg):
    """The classes and the train / held-out files: --val, or a stratified seeded --val-split."""
    folder = _labelled_folder(cfg.data, "--data")
    classes = folder.class_names
    if len(classes) < 2:
        raise PipelineInputError(
            f"--data {cfg.data} has one class ({classes[0]}): a classifier needs at least two "
            "class sub-folders")
    by_class = {c: [] for c in classes}
    for path, cls in zip(folder.files, folder.classes):
        by_class[cls].append(path)
    rng = random.Random(cfg.seed)
    if cfg.max_per_class:
        for cls in classes:
            by_class[cls] = sorted(rng.sample(by_class[cls], min(cfg.max_per_class, len(by_class[cls]))))
    train, val = [], []
    if cfg.val:
        val_folder = _labelled_folder(cfg.val, "--val")
        unknown = sorted(set(val_folder.class_names) - set(classes))
        if unknown:
            raise PipelineInputError(
                f"--val {cfg.val} has classes that --data {cfg.data} does not ({', '.join(unknown[:5])}): "
                "use the same class sub-folder names")
        train = [p for c in classes for p in by_class[c]]
        val = list(val_folder.files)
        val_classes = list(val_folder.classes)
        source = f"{cfg.val} (--val)"
    else:
        if not 0 < cfg.val_split < 1:
            raise PipelineInputError(
                f"--val-split {cfg.val_split} must be a fraction between 0 and 1 (e.g. 0.1), or pass "
                "--val DIR: early stopping and the parity figures need held-out images")
        val_classes = []
        for cls in classes:
            members = list(by_class[cls])
            held = max(1, round(len(members) * cfg.val_split))
            if len(members) - held < 1:
                raise PipelineInputError(
                    f"class {cls!r} in {cfg.data} has {len(members)} image(s): a {cfg.val_split:g} "
                    f"split needs at least 2 (one to train on, one to hold out); add images or pass "
                    "--val DIR")
            rng.shuffle(members)
            val += sorted(members[:held])
            val_classes += [cls] * held
            train += sorted(members[held:])
        source = f"{cfg.val_split:g} of {cfg.data}, stratified by class, seed {cfg.seed}"
    train_classes = [p.relative_to(folder.root).parts[0] for p in train]
    return Split(root=folder.root, classes=classes, train=train,
                 train_labels=[classes.index(c) for c in train_classes],
                 val=val, val_labels=[classes.index(c) for c in val_classes], source=source,
                 ignored_files=_count_ignored(folder.root), skipped=[])


def view_box_and_mirror(size, view, rng, augment):
    """(crop box, mirror) of view `view` of an image of `size`: 0 is the deployment transform
    itself, 1 its mirror, the rest random crops (at least MIN_CROP_AREA of the square), mirrored
    at random."""
    if view == 0 or augment == "none":
        return None, False
    if view == 1 or augment == "flip":
        return None, True
    width, height = size
    side = max(1, int(round(min(width, height) * np.sqrt(rng.uniform(MIN_CROP_AREA, 1.0)))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return (left, top, left + side, top + side), bool(rng.integers(0, 2))


def _one_view(path, spec, view, seed, index, augment):
    from pipeline.stages.preprocess import load_rgb

    # Seeded by (seed, view, image index): the same views whatever the thread scheduling.
    rng = np.random.default_rng([seed, view, index])
    image = load_rgb(path)
    box, mirror = view_box_and_mirror(image.size, view, rng, augment)
    return preprocess(image, spec, box=box, mirror=mirror)


def _load(paths, spec):
    """preprocess.load_images over `paths`: the decodable ones as view 0 (the deployment
    transform), the undecodable ones skipped with a reason; an unreadable file is bad input."""
    try:
        return load_images(paths, spec)
    except OSError as error:
        raise PipelineInputError(f"cannot read {error.filename}: {error.strerror}; fix its "
                                 "permissions or remove it") from None


def view_arrays(paths, spec, view, seed, augment):
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(
            lambda item: _one_view(item[1], spec, view, seed, item[0], augment), enumerate(paths))))


# ---------------------------------------------------------------------------------------------
# The network: ImageNet base through Keras' cache, cut where fine-tuning starts


def imagenet_base_weights(alpha, resolution):
    """(path, note) of Keras' no-top ImageNet file for this width: the resolution's own file if
    cached, else the cached 224 one (the convolutions do not depend on the input size), else Keras'
    download of the resolution's own file."""
    import keras

    cache = build.keras_cache_dir()
    names = [build.keras_weights_file(alpha, resolution, top=False)]
    if resolution != 224:
        names.append(build.keras_weights_file(alpha, 224, top=False))
    for name in names:
        if os.path.exists(os.path.join(cache, name)):
            note = "" if name == names[0] else f" (the {resolution} px file is not cached; these are the 224 px weights)"
            return os.path.join(cache, name), name + note
    try:
        path = keras.utils.get_file(names[0], KERAS_WEIGHTS_URL + names[0], cache_subdir="models")
    except Exception as error:  # Keras raises bare Exception for a failed download
        raise PipelineInputError(
            f"ImageNet weights {os.path.join(cache, names[0])} are not cached and could not be "
            f"downloaded ({str(error).splitlines()[0][:160]}): run once with network access, or "
            "copy the file there (KERAS_HOME sets the folder)") from None
    return path, names[0]


def base_network(cfg):
    """(MobileNetV2 without its head, pooled; weights source; sha256)."""
    import keras

    base = keras.applications.MobileNetV2(
        input_shape=(cfg.resolution, cfg.resolution, 3), alpha=cfg.alpha, include_top=False,
        weights=None, pooling="avg")
    if cfg.weights == "random":
        return base, f"random (seed {cfg.seed})", build.weights_sha256(base)
    path, name = imagenet_base_weights(cfg.alpha, cfg.resolution)
    base.load_weights(path)
    return base, f"imagenet ({name})", file_sha256(path)


def split_network(base, fine_tune_from):
    """(bottom, top): frozen stem → block N−1, and block N → pooled features."""
    import keras

    if fine_tune_from == "none":
        return keras.Model(base.input, base.output), None
    cut = base.get_layer(f"{fine_tune_from}_expand").input
    return keras.Model(base.input, cut), keras.Model(cut, base.output)


def _kernel_channel_axis(layer):
    """The axis TFLite's per-channel int8 quantization keeps one scale along, or None."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2  # (h, w, channels, multiplier): one scale a channel
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return layer.get_weights()[0].ndim - 1  # output channels
    return None


def snap_to_int8_grid(model):
    """Moves every conv, depthwise and dense kernel onto its symmetric per-channel int8 grid
    (w = s·k, s = max|w|/127 per output channel, k integer), in place; returns
    {layer: max |w/s − round(w/s)| before}, the distance the converter's rounding would have been.

    Why: the converter rounds each kernel to exactly this grid (BatchNorm folding scales whole
    output channels, which keeps a kernel on its grid). Measured on flowers-128, rounding the
    fine-tuned top blocks' kernels alone cost 2 points of agreement, most of it in the linear
    projections that feed the residual adds (WORKSPACE_NOTES). Snapped, the float model holds the
    very weights the int8 model will, and the int8 error is activation rounding alone, as it is
    for Keras' ImageNet weights, which already lie on this grid."""
    distances = {}
    for layer in model.layers:
        axis = _kernel_channel_axis(layer)
        if axis is None:
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        reduce = tuple(i for i in range(kernel.ndim) if i != axis)
        scale = np.abs(kernel).max(axis=reduce, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        steps = kernel / scale
        distances[layer.name] = float(np.abs(steps - np.round(steps)).max())
        layer.set_weights([(np.round(steps) * scale).astype(kernel.dtype)] + weights[1:])
    return distances


# ---------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class TrainResult:
    model: object  # keras.Model, image → logits
    split: Split
    history: list  # one dict per epoch: stage, epoch, loss, accuracy, val_loss, val_accuracy, seconds
    stage_one_val_accuracy: float
    best: dict  # the epoch whose weights were kept
    interrupted: bool
    weights_source: str
    weights_sha256: str
    timings: dict
    val_arrays: object = None  # float32 held-out images, view 0 (what evaluate runs on)
    grid_distances: dict = None  # {layer: max distance from the int8 grid} before snapping
    val_accuracy_before_snap: float = None


class _EpochLog:
    """Keras callback: one line per epoch, tqdm over batches, best weights kept, Ctrl-C noted."""

    def __init__(self, stage, weights_of, history, total_epochs, batches):
        import keras
        from tqdm import tqdm

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.started = time.perf_counter()
                outer.bar = tqdm(total=batches, desc=f"{stage} epoch {epoch + 1}/{total_epochs}",
                                 unit="batch", leave=False, file=sys.stderr,
                                 disable=not sys.stderr.isatty())  # a log gets the epoch lines

            def on_train_batch_end(self, batch, logs=None):
                outer.bar.update(1)
                outer.bar.set_postfix(loss=f"{logs['loss']:.3f}")

            def on_epoch_end(self, epoch, logs=None):
                outer.bar.close()
                row = {"stage": stage, "epoch": epoch + 1,
                       **{k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
                       "seconds": round(time.perf_counter() - outer.started, 2)}
                history.append(row)
                improved = outer.best is None or row["val_accuracy"] > outer.best["val_accuracy"]
                if improved:
                    outer.best, outer.best_weights = row, weights_of()
                print(f"{stage} epoch {epoch + 1}: train {row['accuracy']:.2%}, held-out "
                      f"{row['val_accuracy']:.2%}{' (best)' if improved else ''}, "
                      f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)

        self.best = self.best_weights = None
        self.bar = None
        self.callback = Callback()


def _fit(model, batches, val, stage, epochs, patience, weights_of, history, have_earlier=False):
    """Runs model.fit with early stopping on held-out accuracy; returns (best row, best weights,
    interrupted). Ctrl-C ends training at the best epoch so far (of this stage, or of an earlier
    one when `have_earlier`); with none to keep it propagates and nothing is written."""
    import keras

    log = _EpochLog(stage, weights_of, history, epochs, len(batches))
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, mode="max")
    try:
        model.fit(batches, epochs=epochs, validation_data=val, verbose=0,
                  callbacks=[log.callback, stop])
        interrupted = False
    except KeyboardInterrupt:
        if log.bar is not None:
            log.bar.close()
        if log.best is None and not have_earlier:
            raise  # nothing finished: write nothing
        kept = f"{stage} epoch {log.best['epoch']}" if log.best else "the head-only model"
        print(f"interrupted: keeping {kept} (best held-out accuracy)", file=sys.stderr, flush=True)
        interrupted = True
    return log.best, log.best_weights, interrupted


def _batches(features, labels, views, batch_size, seed):
    """A keras PyDataset over cached activations: each epoch, every image once, in a seeded
    order, as one of its views chosen at random."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._draw()

        def _draw(self):
            rng = np.random.default_rng([seed, 7, self.epoch])
            self.order = rng.permutation(len(labels))
            self.view = rng.integers(0, views, len(labels))

        def on_epoch_end(self):
            self.epoch += 1
            self._draw()

        def __len__(self):
            return (len(labels) + batch_size - 1) // batch_size

        def __getitem__(self, i):
            rows = self.order[i * batch_size:(i + 1) * batch_size]
            return features[self.view[rows], rows], labels[rows]

    return Batches()


def _compile(model, learning_rate):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=LABEL_SMOOTHING),
                  metrics=["accuracy"])


def check_config(cfg):
    if cfg.alpha not in build.ALPHAS:
        raise PipelineInputError(f"--alpha {cfg.alpha} is not a MobileNetV2 width: use one of "
                                 f"{', '.join(map(str, build.ALPHAS))}")
    if not build.MIN_RESOLUTION <= cfg.resolution <= build.MAX_RESOLUTION:
        raise PipelineInputError(f"--resolution {cfg.resolution} is out of range: use "
                                 f"{build.MIN_RESOLUTION}–{build.MAX_RESOLUTION}")
    if cfg.weights not in ("imagenet", "random"):
        raise PipelineInputError(f"--weights {cfg.weights}: train starts from imagenet (Keras' "
                                 "cache) or random; to export a model you trained, use export --model")
    if cfg.fine_tune_from not in BLOCKS + ("none",):
        raise PipelineInputError(f"--fine-tune-from {cfg.fine_tune_from}: use block_1 … block_16 "
                                 "(unfreeze from that block to the top) or none (head only)")
    if cfg.augment not in AUGMENTATIONS:
        raise PipelineInputError(f"--augment {cfg.augment}: use one of {', '.join(AUGMENTATIONS)}")
    for name, value, low in (("views", cfg.views, 1), ("batch-size", cfg.batch_size, 1),
                             ("head-epochs", cfg.head_epochs, 1), ("epochs", cfg.epochs, 0),
                             ("patience", cfg.patience, 1)):
        if value < low:
            raise PipelineInputError(f"--{name} must be at least {low} (got {value})")
    if not cfg.learning_rate > 0:
        raise PipelineInputError(f"--learning-rate must be positive (got {cfg.learning_rate})")
    if cfg.max_per_class is not None and cfg.max_per_class < 2:
        raise PipelineInputError(f"--max-per-class must be at least 2 (got {cfg.max_per_class})")


def train(cfg):
    """Both stages; returns a TrainResult whose model maps preprocessed images to logits."""
    import keras
    import tensorflow as tf

    timings = {}
    started = time.perf_counter()
    split = split_data(cfg)
    spec = Preprocessing(resolution=cfg.resolution)
    print(f"· checking {len(split.train) + len(split.val)} images of {len(split.classes)} classes…",
          file=sys.stderr, flush=True)
    # Decoded once: these arrays are view 0 of every image, and the held-out set as evaluated.
    train_set, val_set = _load(split.train, spec), _load(split.val, spec)
    split.skipped = train_set.skipped + val_set.skipped
    kept = {str(p) for p in train_set.paths + val_set.paths}
    split.train_labels = [c for p, c in zip(split.train, split.train_labels) if str(p) in kept]
    split.val_labels = [c for p, c in zip(split.val, split.val_labels) if str(p) in kept]
    split.train, split.val = train_set.paths, val_set.paths
    missing = sorted(set(range(len(split.classes))) - set(split.train_labels))
    if missing:
        cls = split.classes[missing[0]]
        reasons = [r for p, r in train_set.skipped if Path(p).relative_to(split.root).parts[0] == cls]
        raise PipelineInputError(
            f"class {cls!r} has no decodable training images in {cfg.data}"
            + (f" (first: {reasons[0]})" if reasons else "") + ": add images or remove the folder")
    # Warned about only when training goes on; a refusal is one line.
    for path, reason in split.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    timings["scan"] = time.perf_counter() - started

    keras.utils.set_random_seed(cfg.seed)
    # Deterministic kernels: the same seed gives the same weights on the same machine and build.
    tf.config.experimental.enable_op_determinism()
    tf.get_logger().setLevel("ERROR")  # predict() on each view's shape retraces; that is expected
    base, source, sha = base_network(cfg)
    bottom, top = split_network(base, cfg.fine_tune_from)
    views = 1 if cfg.augment == "none" else (min(cfg.views, 2) if cfg.augment == "flip" else cfg.views)

    from tqdm import tqdm

    mark = time.perf_counter()
    cached = []
    for view in tqdm(range(views), desc="frozen base, per view", unit="view", leave=False,
                     file=sys.stderr):
        arrays = train_set.arrays if view == 0 else view_arrays(split.train, spec, view, cfg.seed,
                                                                 cfg.augment)
        cached.append(bottom.predict(arrays, batch_size=64, verbose=0))
    cached = np.stack(cached)  # (views, n, …)
    val_cached = bottom.predict(val_set.arrays, batch_size=64, verbose=0)
    timings["cache_frozen_base"] = time.perf_counter() - mark

    classes = len(split.classes)
    y_train = keras.utils.to_categorical(split.train_labels, classes)
    y_val = keras.utils.to_categorical(split.val_labels, classes)
    head = keras.layers.Dense(classes, name="logits")
    history = []

    # Stage one: the head alone, on pooled features of every view.
    mark = time.perf_counter()
    if top is None:
        pooled, val_pooled = cached, val_cached
    else:
        pooled = np.stack([top.predict(v, batch_size=256, verbose=0) for v in cached])
        val_pooled = top.predict(val_cached, batch_size=256, verbose=0)
    features_in = keras.Input(pooled.shape[2:])
    head_model = keras.Model(features_in, head(keras.layers.Dropout(DROPOUT, seed=cfg.seed)(features_in)))
    _compile(head_model, HEAD_LEARNING_RATE)
    best, best_weights, interrupted = _fit(
        head_model, _batches(pooled, y_train, views, cfg.batch_size, cfg.seed), (val_pooled, y_val),
        "head", cfg.head_epochs, cfg.patience, head.get_weights, history)
    head.set_weights(best_weights)
    stage_one = best["val_accuracy"]
    timings["stage_one"] = time.perf_counter() - mark

    # Stage two: unfreeze block N … the top; BatchNorm stays in inference mode.
    if top is not None and cfg.epochs > 0 and not interrupted:
        mark = time.perf_counter()
        top_in = keras.Input(cached.shape[2:])
        features = top(top_in, training=False)
        model = keras.Model(top_in, head(keras.layers.Dropout(DROPOUT, seed=cfg.seed)(features)))
        for layer in top.layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        batches = _batches(cached, y_train, views, cfg.batch_size, cfg.seed + 1)
        schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * len(batches))
        _compile(model, schedule)
        weights_of = lambda: (top.get_weights(), head.get_weights())  # noqa: E731
        stage_one_weights = weights_of()
        fine_best, fine_weights, interrupted = _fit(
            model, batches, (val_cached, y_val), "fine-tune", cfg.epochs, cfg.patience, weights_of,
            history, have_earlier=True)
        if fine_best is not None and fine_best["val_accuracy"] >= best["val_accuracy"]:
            best = fine_best
        else:  # fine-tuning never beat the head alone: back to where stage one ended
            fine_weights = stage_one_weights
        top.set_weights(fine_weights[0])
        head.set_weights(fine_weights[1])
        timings["stage_two"] = time.perf_counter() - mark

    classifier = keras.Model(base.input, head(base.output), name="mobilenet_v2_classifier")
    result = TrainResult(model=classifier, split=split, history=history,
                         stage_one_val_accuracy=stage_one, best=best, interrupted=interrupted,
                         weights_source=source, weights_sha256=sha, timings=timings,
                         val_arrays=val_set.arrays)
    if cfg.int8_grid:
        result.val_accuracy_before_snap = evaluate(result)[0]
        result.grid_distances = snap_to_int8_grid(classifier)
    timings["total"] = time.perf_counter() - started
    return result


@dataclasses.dataclass(frozen=True)
class TrainedArtifacts:
    """What export --from-train OUT reads."""

    model: Path
    labels: Path
    train_images: Path
    val_images: Path


def trained_artifacts(out_dir):
    out_dir = Path(out_dir)
    found = TrainedArtifacts(out_dir / "model.keras", out_dir / "labels.txt",
                             out_dir / "train_images.json", out_dir / "val_images.json")
    missing = [p.name for p in dataclasses.astuple(found) if not p.is_file()]
    if missing:
        raise PipelineInputError(f"--from-train {out_dir} lacks {', '.join(missing)}: pass the "
                                 "--output folder of a finished pipeline.train run")
    return found


def trained_settings(settings):
    """export --from-train OUT as a transformation of the export's settings: the model, labels,
    training images (calibration) and held-out split (evaluation) train wrote, for each of those
    settings not given; they count as given (so calibration treats the folder as the user's and
    never fetches). Settings without --from-train are returned as they are."""
    out_dir = settings["from-train"]
    if not out_dir:
        return settings
    found = trained_artifacts(out_dir)
    return settings.replace(**{name: str(path) for name, path in (
        ("model", found.model), ("labels", found.labels), ("calibration", found.train_images),
        ("eval", found.val_images)) if not settings.given(name)})


OPTIONS = (
    option("string", "data", None,
           "Folder with one sub-folder of images per class (the class names)."),
    option("string", "output", None,
           "Output folder (default artifacts/<data folder>_classifier/)."),
    option("string", "val", None, "A labelled folder to hold out instead of --val-split."),
    option("float", "val-split", 0.1, "Fraction of each class held out (stratified, seeded)."),
    option("float", "alpha", 1.0,
           "MobileNetV2 width: " + ", ".join(map(str, build.ALPHAS))),
    option("integer", "resolution", 224, "Input resolution (96–224)."),
    option("string", "weights", "imagenet", "imagenet (Keras' cache) or random (seeded)."),
    option("integer", "head-epochs", 15, "Stage one: epochs of the new head on the frozen base."),
    option("integer", "epochs", 10, "Stage two: fine-tuning epochs (0: head only)."),
    option("string", "fine-tune-from", "block_13",
           "Unfreeze from this block to the top in stage two (block_1 … block_16), or none."),
    option("integer", "batch-size", 32, "Batch size."),
    option("float", "learning-rate", 3e-4, "Stage two's peak learning rate (cosine decay to 0)."),
    option("string", "augment", "crop-flip",
           "crop-flip (random crops and mirrors), flip, or none."),
    option("integer", "views", 6, "Augmented views per training image, drawn once and cached."),
    option("integer", "patience", 4,
           "Stop after this many epochs without a better held-out accuracy."),
    option("integer", "max-per-class", None,
           "Use at most this many images per class (quick runs)."),
    option("integer", "seed", 0,
           "Seed for the split, the views, the head and the order of batches."),
    option("bool", "int8-grid", True,
           "Finish by moving every kernel onto its per-channel int8 grid, so the int8 model holds "
           "the float model's exact weights."),
)


def config_from_settings(settings):
    data = settings["data"]
    if not data:
        raise PipelineInputError("--data is required: a folder with one sub-folder of images per class")
    output = settings["output"] or f"artifacts/{Path(data).absolute().name}_classifier"
    cfg = TrainConfig(
        data=data, output=output, val=settings["val"],
        val_split=settings["val-split"], alpha=settings["alpha"],
        resolution=settings["resolution"], weights=settings["weights"],
        head_epochs=settings["head-epochs"], epochs=settings["epochs"],
        fine_tune_from=settings["fine-tune-from"], batch_size=settings["batch-size"],
        learning_rate=settings["learning-rate"], augment=settings["augment"],
        views=settings["views"], patience=settings["patience"],
        seed=settings["seed"], max_per_class=settings["max-per-class"],
        int8_grid=settings["int8-grid"])
    check_config(cfg)
    return cfg


@dataclasses.dataclass
class TrainRun:
    """What `run_training` trained and wrote."""

    output: str  # model.keras, labels.txt, train/val image lists, train_report.{json,md}, plots
    result: TrainResult
    summary: dict  # train_report.json's content (its export_command: the next step)

    @property
    def summary_line(self):
        return (f"{'✗ interrupted, kept' if self.result.interrupted else '✓'} {self.output}/model.keras: "
                f"held-out accuracy {self.summary['val_accuracy']:.2%} on "
                f"{len(self.result.split.val)} images ({len(self.result.split.classes)} classes; "
                f"head only {self.result.stage_one_val_accuracy:.2%}), "
                f"{self.summary['timings_s']['total']:.0f} s")


def run_training(cfg, command=None):
    """Trains as `cfg` says and writes the outputs; returns a TrainRun. `command` is what the
    report says was run (default: the equivalent command line)."""
    artifacts.check_writable(cfg.output)
    result = train(cfg)
    summary = write_outputs(cfg, result, command or config_command_line(cfg))
    return TrainRun(cfg.output, result, summary)


def config_command_line(cfg):
    """`python -m pipeline.train …` with the settings of `cfg` that differ from the defaults."""
    import shlex

    words = ["python", "-m", "pipeline.train"]
    defaults = TrainConfig(data=cfg.data, output=cfg.output)
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name in ("data", "output") or value != getattr(defaults, field.name):
            flag = field.name.replace("_", "-")
            words += ([f"--{flag}"] if value is True else [f"--no{flag}"] if value is False
                      else [f"--{flag}", str(value)])
    return shlex.join(words)
