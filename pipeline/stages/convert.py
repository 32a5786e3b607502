"""Stage 4: Keras → `.tflite`, float or quantized.

    --quantize none      float32 weights and activations (the float reference)
    --quantize float16   float16 weights, dequantized at load; float32 compute
    --quantize dynamic   int8 weights, float activations (dynamic-range quantization)
    --quantize int8      full integer: TFLITE_BUILTINS_INT8 only, per-channel int8 weights, int8
                         activations calibrated on the representative set; uint8 (default), int8
                         or float32 model input/output (--io)
    --quantize int16x8   int8 weights, int16 activations (accurate, but no XNNPACK kernels: slow)

    --head probabilities (default) the model ends in a float32 softmax: clients show its scores as
                         they are. In an int8 model the logits stay int8 and are dequantized into
                         the softmax, so probabilities keep full precision (a uint8 softmax output
                         has a 1/256 step) and the parity measured on them is the parity of logits
    --head logits        the model ends at the logits; the app applies softmax

Every int8 model is quantized from one calibrated model (`calibrated_for`), whose input range is
set to exactly what the preprocessing can produce, so the uint8 input grid is scale 1/127.5 and
zero point 127 whatever the calibration images hold: raw RGB bytes are the quantized input.

Keras 3 note: `TFLiteConverter.from_keras_model` is the path that works with the Keras 3 that
TensorFlow 2.21 ships (it exports a SavedModel internally). A concrete function of the model keeps
its weights as resource variables, and int8 calibration then fails on READ_VARIABLE.

    python -m pipeline.convert --alpha 0.35 --resolution 96 --weights random --quantize int8
"""

import contextlib
import dataclasses
import io

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.core.tflite import (TensorSpec, inspect_tflite, io_specs, model_macs, op_macs, output_kind, read_ops, structure, summarize_weighted_ops)
from pipeline.stages import litert
from pipeline.stages.ranges import CLIP_SAMPLING, GRID, clip_ranges, snap_model_ranges

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8", "int16x8")
BACKENDS = ("tflite-converter", "litert-quantizer")
# Google's LiteRT Quantizer (litert-quantizer, formerly ai-edge-quantizer) recipes, as shipped with
# the package: static int8 (a8w8) and int8 weights with int16 activations (a16w8).
IO_TYPES = ("auto", "uint8", "int8", "float32", "int16")
HEADS = ("probabilities", "logits")


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    quantize: str = "int8"
    io: str = "auto"  # uint8 for int8, float32 otherwise
    per_channel: bool = True
    keep_float: tuple = ()  # op output tensor names left in float (selective quantization)
    backend: str = "tflite-converter"  # or "litert-quantizer"
    algorithm: str = "min-max"  # litert-quantizer: min-max | mse | octav
    ranges: str = "minmax"  # activation ranges: calibrated min/max, or "percentile" clipping
    percentile: float = 99.99
    head: str = "probabilities"  # or "logits"

    def io_type(self):
        if self.io != "auto":
            return self.io
        if self.backend == "litert-quantizer":
            return "int8" if self.quantize == "int8" else "float32"
        return "uint8" if self.quantize == "int8" else "float32"


@dataclasses.dataclass
class ConvertedModel:
    tflite: bytes
    config: ConvertConfig
    input: TensorSpec
    output: TensorSpec
    ops: dict  # "OP_NAME[input dtype]" -> count
    weighted_ops: list  # [{op, weight_dtype, per_channel, activation_dtype}] for conv/dw/fc ops
    macs: int = None  # multiply-accumulates of one inference: the network's work, any quantization

    @property
    def size_bytes(self):
        return len(self.tflite)

    def summary(self):
        return {
            "quantize": self.config.quantize,
            "io": self.config.io_type(),
            "per_channel": self.config.per_channel,
            "backend": self.config.backend,
            "algorithm": self.config.algorithm if self.config.backend == "litert-quantizer" else None,
            "head": self.config.head,
            "output_dtype": self.output.dtype,
            "keep_float": list(self.config.keep_float),
            "activation_ranges": (self.config.ranges if self.config.ranges == "minmax"
                                  else f"percentile {self.config.percentile}"),
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "ops": self.ops,
            "weighted_ops": summarize_weighted_ops(self.weighted_ops),
            "structure": structure(self.weighted_ops),
        }


def check_config(cfg):
    if cfg.quantize not in QUANTIZE_MODES:
        raise PipelineInputError(
            f"--quantize {cfg.quantize} is unknown: use one of {', '.join(QUANTIZE_MODES)}"
        )
    io_type = cfg.io_type()
    if cfg.head not in HEADS:
        raise PipelineInputError(f"--head {cfg.head} is unknown: use {' or '.join(HEADS)}")
    if cfg.backend not in BACKENDS:
        raise PipelineInputError(f"--backend {cfg.backend} is unknown: use one of {', '.join(BACKENDS)}")
    if cfg.backend == "litert-quantizer":
        if cfg.quantize not in litert.RECIPES:
            raise PipelineInputError(f"--backend litert-quantizer does --quantize "
                                     f"{' or '.join(litert.RECIPES)}, not {cfg.quantize}")
        if cfg.algorithm not in litert.ALGORITHMS:
            raise PipelineInputError(f"--algorithm {cfg.algorithm} is unknown: use one of "
                                     f"{', '.join(litert.ALGORITHMS)}")
        expected = "int8" if cfg.quantize == "int8" else "int16"
        if io_type not in (expected, "auto") and not (cfg.quantize == "int16x8" and io_type == "float32"):
            raise PipelineInputError(f"--backend litert-quantizer keeps the model's {expected} "
                                     f"input and output: drop --io {io_type}")
        if cfg.keep_float or not cfg.per_channel or cfg.ranges != "minmax":
            raise PipelineInputError("--keep-float, --activation-ranges percentile and --granularity "
                                     "per-tensor need --backend tflite-converter")
        if cfg.head == "probabilities":
            # Its recipes quantize the softmax too: an int8 output, which MediaPipe refuses.
            raise PipelineInputError("--backend litert-quantizer quantizes the softmax into an int8 "
                                     "output that MediaPipe and the Task Library refuse: add --head "
                                     "logits")
        return
    if cfg.ranges not in ("minmax", "percentile"):
        raise PipelineInputError(f"--activation-ranges {cfg.ranges} is unknown: use minmax or percentile")
    if cfg.ranges == "percentile" and not 90 < cfg.percentile <= 100:
        raise PipelineInputError(f"--range-percentile {cfg.percentile} must be in (90, 100], e.g. 99.99")
    if cfg.ranges == "percentile" and cfg.quantize != "int8":
        raise PipelineInputError(f"--activation-ranges percentile works with --quantize int8, not {cfg.quantize}")
    if cfg.keep_float and cfg.quantize != "int8":
        raise PipelineInputError(f"--keep-float works with --quantize int8, not {cfg.quantize}")
    allowed = {
        "int8": ("uint8", "int8", "float32"),
        "int16x8": ("int16", "float32"),
    }.get(cfg.quantize, ("float32",))
    if io_type not in allowed:
        raise PipelineInputError(
            f"--io {io_type} does not go with --quantize {cfg.quantize}: use --io "
            + " or ".join(allowed)
        )


def _tf_dtype(name):
    import tensorflow as tf

    return {"uint8": tf.uint8, "int8": tf.int8, "int16": tf.int16, "float32": tf.float32}[name]


def keras_model_for(built, head):
    """The Keras model a conversion starts from: the logits model with its BatchNormalization
    folded in float64 (`pipeline.fold`: the converter's own fold depends on the CPU), with a
    softmax appended for --head probabilities (only where the model's output is logits)."""
    from pipeline.stages.fold import fold_batchnorm

    model = fold_batchnorm(built.keras_model)
    if head != "probabilities" or built.output_kind != "logits":
        return model
    import keras

    return keras.Model(model.inputs, keras.layers.Softmax(name="probabilities")(model.outputs[0]),
                       name=model.name)


def calibrating_converter(built, calibration_arrays, per_channel, head):
    import numpy as np
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model_for(built, head))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.asarray(a, np.float32)[None]]
                                                for a in calibration_arrays)
    if not per_channel:
        converter._experimental_disable_per_channel = True
    return converter


# The converter writes the model as a SavedModel into TMPDIR first (15 MB for MobileNetV2 0.35/96,
# measured); when that disk is full, TensorFlow fails with errors that say nothing of it (seen: a
# TypeError from Keras' call context).
LOW_TEMPORARY_SPACE = 256 * 2**20


@contextlib.contextmanager
def temporary_space():
    """Turns a converter failure on a nearly full TMPDIR into one line that says so."""
    try:
        yield
    except Exception:
        import shutil
        import tempfile

        where = tempfile.gettempdir()
        free = shutil.disk_usage(where).free
        if free >= LOW_TEMPORARY_SPACE:
            raise
        raise PipelineInputError(
            f"the TFLite converter ran out of temporary space in {where} ({free / 2**20:.1f} MiB "
            "free): free some space or point TMPDIR at a roomier disk") from None


# How the float model is made, in cache keys: "folded-float64" since BatchNormalization is folded
# by pipeline.fold (issue 25); entries made by the converter's own fold are not reused.
FLOAT_CONVERSION = "folded-float64"


def float_tflite(built, head="probabilities", store=None):
    """The float32 `.tflite` of `built` with `head`, from the cache when it was made before.

    Keyed by the Keras graph (its JSON: layers, names, shapes) and weights, the head and the
    TensorFlow version: the converter is deterministic for those (tests/test_convert.py). The last
    few are also kept in memory for callers that convert one model to many modes in one process."""
    import tensorflow as tf

    from pipeline.stages.build import weights_sha256
    from pipeline.core.cache import Cache, key

    store = store or Cache(None)
    # The weights as they are now (not the file they came from): ~30 ms at 224.
    entry = key("float-tflite", built.keras_model.to_json(), weights_sha256(built.keras_model), head,
                getattr(built, "output_kind", None), tf.__version__, FLOAT_CONVERSION)
    model = store.get("float-tflite", entry, lambda: _FLOAT_MEMO.get(entry) or _convert_float(built, head),
                      f"float .tflite ({head})")
    # Kept in memory too (the last few): callers of convert() in one process (the gate's variants,
    # tests) convert one model to many modes.
    _FLOAT_MEMO[entry] = model
    while len(_FLOAT_MEMO) > 4:
        del _FLOAT_MEMO[next(iter(_FLOAT_MEMO))]
    return model


_FLOAT_MEMO = {}


def _convert_float(built, head):
    import tensorflow as tf

    from pipeline.device.runner import quiet_native_stderr

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model_for(built, head))
    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr(), temporary_space():
        return converter.convert()


def calibrate_model(built, calibration_arrays, per_channel=True, head="probabilities", store=None,
                    float_model=None):
    """The float model annotated with calibrated ranges, its input range set to what the
    preprocessing produces and every range snapped to the grid of
    `pipeline.ranges` (so the same images give the same scales on every CPU); from the cache when
    this float model was calibrated on these exact arrays before.

    This is TFLite's calibrate-only step run on the float `.tflite` the export converts anyway
    (`float_model`, made when not given): the converter's `_experimental_calibrate_only` converts
    the Keras model a second time (≈9 s at 224) and then calibrates that same float graph with the
    same `Calibrator`; its result differs only in the conversion metadata, which records the
    full-integer optimization (`mark_full_integer`). Byte-identical to the converter's (snapped
    the same way), checked by tests/test_cache.py. Min/max are the extremes over all images, so the result does not depend
    on how images are grouped; `per_channel` does not change it (it matters at quantization).

    Quantizing it (`quantize_calibrated`) takes ~0.2 s, so many selective-quantization variants
    can be tried from one calibration.
    """
    import numpy as np
    import tensorflow as tf

    from pipeline.core.cache import Cache, key, sha256

    del per_channel  # recorded in the signature for callers; calibration does not depend on it
    store = store or Cache(None)
    if float_model is None:
        float_model = float_tflite(built, head, store)
    arrays = np.ascontiguousarray(calibration_arrays, np.float32)
    entry = key("calibrated", sha256(float_model), sha256(arrays.data), arrays.shape, tf.__version__,
                GRID)
    return store.get("calibrated", entry, lambda: _calibrate(float_model, arrays),
                     f"calibrated ranges ({len(arrays)} images)")


def _calibrate(float_model, arrays):
    from tensorflow.lite.python.optimize import calibrator

    from pipeline.device.runner import quiet_native_stderr

    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr(), temporary_space():
        annotated = calibrator.Calibrator(calibrator.add_intermediate_tensors(float_model))
        calibrated = annotated.calibrate(lambda: ([a[None]] for a in arrays))
    # One read and one write of the flatbuffer for the three edits (each is ~14 MB at 224).
    return _edited(calibrated, mark_full_integer, _set_input_range, snap_model_ranges)


def _edited(model_bytes, *edits):
    """The model with each edit (a function of its schema object) applied, re-serialized."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    for edit in edits:
        edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def mark_full_integer(model):
    """Records post-training full-integer quantization in the model's CONVERSION_METADATA, as the
    converter does when it calibrates (the float conversion records no optimization)."""
    from tensorflow.lite.python import conversion_metadata_schema_py_generated as schema

    import flatbuffers

    for entry in model.metadata or []:
        if entry.name != b"CONVERSION_METADATA":
            continue
        buffer = model.buffers[entry.buffer]
        metadata = schema.ConversionMetadataT.InitFromObj(
            schema.ConversionMetadata.GetRootAs(bytes(buffer.data), 0))
        metadata.options.modelOptimizationModes = [schema.ModelOptimizationMode.PTQ_FULL_INTEGER]
        builder = flatbuffers.Builder(0)
        builder.Finish(metadata.Pack(builder))
        buffer.data = list(builder.Output())


def settle_ranges(calibrated):
    """A calibrated model's ranges as every int8 model here is quantized from: the input's set to
    x(0) … x(255) of the preprocessing (`_set_input_range`), then every range snapped to the grid
    of `pipeline.ranges`."""
    return _edited(calibrated, _set_input_range, snap_model_ranges)


def _set_input_range(model):
    """Sets the input's calibrated range to x(0) … x(255) of the preprocessing.

    Calibration records the range the images happened to hold; with the full pixel range the
    uint8 grid becomes scale 1/127.5, zero point 127, on which x = (p − 127)/127.5 is exactly p.
    Images without a 0 or a 255 (a dim calibration set) would otherwise give another grid, and
    raw bytes would no longer be the input the model was calibrated on."""
    from pipeline.stages.preprocess import Preprocessing

    graph = model.subgraphs[0]
    low, high = Preprocessing().value_range()
    for index in graph.inputs:
        quantization = graph.tensors[index].quantization
        if quantization is not None and quantization.min is not None:
            quantization.min, quantization.max = [low], [high]


def calibrated_for(built, calibration_arrays, cfg, store=None, float_model=None):
    """The calibrated model `cfg` asks for: min/max, or percentile-clipped ranges (both cached)."""
    import numpy as np

    from pipeline.core.cache import Cache, key, sha256

    store = store or Cache(None)
    calibrated = calibrate_model(built, calibration_arrays, cfg.per_channel, cfg.head, store,
                                 float_model)
    if cfg.ranges != "percentile":
        return calibrated
    arrays = np.ascontiguousarray(calibration_arrays, np.float32)
    entry = key("percentile", sha256(calibrated), sha256(arrays.data), arrays.shape, cfg.percentile,
                CLIP_SAMPLING, GRID)
    return store.get("calibrated", entry, lambda: clip_ranges(calibrated, arrays, cfg.percentile),
                     f"percentile {cfg.percentile} ranges")


def quantize_calibrated(calibrated, cfg):
    """int8 model from a calibrated one, with `cfg.keep_float` op outputs left in float.

    A softmax head stays float32 (its input dequantized from the int8 logits), and so does the
    output: probabilities at full precision, in the dtype every client takes."""
    from tensorflow.lite.python import convert as tf_convert

    from pipeline.device.runner import quiet_native_stderr

    keep = list(cfg.keep_float)
    output_type = cfg.io_type()
    if output_kind(calibrated) == "probabilities":
        keep += [tensor for op, tensor, _ in quantizable_tensors(calibrated) if op == "SOFTMAX"]
        output_type = "float32"
    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr():
        return tf_convert.mlir_quantize(
            calibrated,
            disable_per_channel=not cfg.per_channel,
            input_data_type=_tf_dtype(cfg.io_type()),
            output_data_type=_tf_dtype(output_type),
            denylisted_nodes=keep or None,
        )


def convert_calibrated(calibrated, cfg):
    """ConvertedModel from a calibrated model (the selective-quantization path)."""
    check_config(cfg)
    return _converted(quantize_calibrated(calibrated, cfg), cfg)


# What `--quantize int8` makes with every other setting at its default: the latency reference.
REFERENCE_CONFIG = ConvertConfig("int8")
# A model's speed does not depend on its ranges, so the reference's calibration can be small.
REFERENCE_CALIBRATION_IMAGES = 16


def is_latency_reference(cfg):
    """Whether `cfg` makes the reference itself (then the model is its own latency reference)."""
    return dataclasses.replace(cfg, io=cfg.io_type()) == dataclasses.replace(REFERENCE_CONFIG, io="uint8")


def latency_reference(built, calibration_arrays, cfg, calibrated=None, store=None):
    """(kind, model bytes or None): the model an export's latency is divided by.

    The reference is the plain full-int8 model of the same network (per-channel, min/max, uint8
    I/O). Timed interleaved in the same run, the ratio cancels the CPU: a default export is 1.00x on
    every machine, while keep-float layers, another --quantize mode or float I/O show up as what
    they cost relative to full int8 *on this machine* (float32 costs 2x int8 with AVX-512 VNNI and
    0.9x on AVX2-only CPUs). A network that does more work is caught exactly by its MACs and size.
    ("self", None) when `cfg` makes the reference itself. `calibrated` (a calibrated model of
    `built`, e.g. from --keep-float) is requantized in ~0.2 s instead of calibrating again.
    """
    if is_latency_reference(cfg):
        return "self", None
    if calibrated is None or not cfg.per_channel or cfg.head != REFERENCE_CONFIG.head:
        if calibration_arrays is None or len(calibration_arrays) == 0:
            raise PipelineInputError("the int8 latency reference needs calibration images: pass "
                                     "--calibration DIR")
        calibrated = calibrate_model(built, calibration_arrays[:REFERENCE_CALIBRATION_IMAGES],
                                     head=REFERENCE_CONFIG.head, store=store)
    return "int8", quantize_calibrated(calibrated, REFERENCE_CONFIG)


def quantizable_tensors(calibrated):
    """[(op name, output tensor name, MACs)] of the ops a keep-float list can name, in execution
    order."""
    _, graph, named_ops = read_ops(calibrated)
    found = []
    for name, op in named_ops:
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensor = graph.tensors[op.outputs[0]].name
        found.append((name, tensor.decode() if isinstance(tensor, bytes) else tensor,
                      op_macs(graph, name, op)))
    return found


def resolve_keep_float(names, calibrated):
    """Block names (block_3, Conv1), layer names (block_3_depthwise_relu) or tensor names → op
    output tensor names."""
    from pipeline.core.layers import layer_group, layer_name

    tensors = [t for _, t, _ in quantizable_tensors(calibrated)]
    by_layer, by_group = {}, {}
    for tensor in tensors:
        by_layer.setdefault(layer_name(tensor), tensor)
        by_group.setdefault(layer_group(tensor), []).append(tensor)
    resolved = []
    for name in names:
        if name in tensors:
            resolved.append(name)
        elif name in by_layer:
            resolved.append(by_layer[name])
        elif name in by_group:
            resolved.extend(by_group[name])
        else:
            examples = ", ".join(list(by_layer)[:4])
            raise PipelineInputError(
                f"--keep-float {name}: no such layer; use names from `python -m pipeline.diagnose` "
                f"(e.g. {examples})"
            )
    return tuple(resolved)


def convert(built, calibration_arrays, cfg, float_model=None, store=None):
    """Converts a BuiltModel. `calibration_arrays` (float32 NHWC) is used by int8 and int16x8.

    int8 (the converter's) and the litert-quantizer backend start from the float .tflite
    (`float_model`, made or taken from `store` if absent)."""
    import tensorflow as tf

    check_config(cfg)
    if cfg.quantize == "none":
        return _converted(float_model or float_tflite(built, cfg.head, store), cfg)
    if cfg.backend == "litert-quantizer":
        if calibration_arrays is None or len(calibration_arrays) == 0:
            raise PipelineInputError(f"--quantize {cfg.quantize} needs calibration images")
        if float_model is None:
            float_model = float_tflite(built, cfg.head, store)
        return _converted(litert.quantize(float_model, calibration_arrays, cfg), cfg)
    needs_calibration = cfg.quantize in ("int8", "int16x8")
    if needs_calibration and (calibration_arrays is None or len(calibration_arrays) == 0):
        raise PipelineInputError(f"--quantize {cfg.quantize} needs calibration images")
    if cfg.quantize == "int8":
        # Per-tensor weights (cfg.per_channel False) are kept as an option because they show why
        # MobileNetV2 needs per-channel: depthwise channel ranges differ 30x+.
        return convert_calibrated(calibrated_for(built, calibration_arrays, cfg, store, float_model),
                                  cfg)
    if needs_calibration:
        # int16x8 keeps the logits head: its converter would quantize a softmax to int16 (small
        # probabilities round to 0) and cannot leave one op in float. The report and the clients
        # check say that this model's scores are logits.
        converter = calibrating_converter(built, calibration_arrays, cfg.per_channel, "logits")
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = _tf_dtype(cfg.io_type())
        converter.inference_output_type = _tf_dtype(cfg.io_type())
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model_for(built, cfg.head))
        if cfg.quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if cfg.quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
    # The converter prints the SavedModel it writes internally and its calibration settings to
    # stdout; the user needs neither.
    from pipeline.device.runner import quiet_native_stderr

    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr(), temporary_space():
        model_bytes = converter.convert()
    return _converted(model_bytes, cfg)


def check_loads(model_bytes, cfg):
    """Refuses a converted model the LiteRT runtime will not prepare, in one line.

    Seen with --quantize int16x8 on untrained weights: a layer whose activations are all ~0
    calibrates to a near-zero scale, and quantizing ReLU6's 6.0 with it overflows int32
    ("no_integer_overflow_from_quantization", kernel_util.cc)."""
    from pipeline.device.runner import load_runtime, make_interpreter

    _, _, module = load_runtime()
    try:
        make_interpreter(module, model_content=model_bytes)
    except (RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise PipelineInputError(
            f"the --quantize {cfg.quantize} model does not load in LiteRT ({reason}): a layer's "
            "calibrated range is ~0 (dead activations, e.g. untrained weights); calibrate with "
            "representative images and trained weights, or use --quantize int8"
        ) from None


def _converted(model_bytes, cfg):
    check_loads(model_bytes, cfg)
    ops, weighted = inspect_tflite(model_bytes)
    input_spec, output_spec = io_specs(model_bytes)
    return ConvertedModel(
        tflite=model_bytes, config=cfg, input=input_spec, output=output_spec, ops=ops,
        weighted_ops=weighted, macs=model_macs(model_bytes),
    )


def quantize(built, calibration_arrays, cfg, float_model, store=None):
    """The model `cfg` asks for, given the float conversion already made.

    Returns (ConvertedModel, the calibrated model it was quantized from, or None): for the
    converter's int8 the calibrated model is kept, because the latency reference is requantized
    from it (~0.2 s) instead of calibrating a second time."""
    if cfg.quantize == "none":
        return float_model, None
    if cfg.quantize == "int8" and cfg.backend == "tflite-converter":
        float_bytes = float_model.tflite if float_model.config.head == cfg.head else None
        calibrated = calibrated_for(built, calibration_arrays, cfg, store, float_bytes)
        return convert_calibrated(calibrated, cfg), calibrated
    return convert(built, calibration_arrays, cfg, float_model.tflite, store), None


OPTIONS = (
    option("string", "quantize", "int8", "none | float16 | dynamic | int8 | int16x8"),
    option("string", "io", "auto",
           "Model input/output type: uint8 | int8 | float32 (| int16 for int16x8); auto = uint8 "
           "for int8 (an app feeds camera bytes), float32 otherwise."),
    option("enum", "backend", "tflite-converter",
           "Quantizer: TensorFlow's TFLiteConverter, or Google's LiteRT Quantizer "
           "(litert-quantizer).", choices=list(BACKENDS)),
    option("enum", "algorithm", "min-max",
           "LiteRT Quantizer weight-range algorithm (activations: absolute min-max).",
           choices=list(litert.ALGORITHMS)),
    option("enum", "activation-ranges", "minmax",
           "int8 activation ranges: calibrated min/max, or clipped at --range-percentile.",
           choices=["minmax", "percentile"]),
    option("float", "range-percentile", 99.99,
           "With --activation-ranges percentile: where to clip."),
    option("enum", "head", "probabilities",
           "What the model outputs: probabilities (a float32 softmax inside the model, what "
           "MediaPipe and the Task Library show as scores) or logits (the app applies softmax).",
           choices=list(HEADS)),
    option("enum", "granularity", "per-channel",
           "Weight quantization granularity for int8 (per-tensor breaks MobileNetV2; kept to show "
           "it).", choices=["per-channel", "per-tensor"]),
)


def config_from_settings(settings):
    return ConvertConfig(
        quantize=settings["quantize"],
        io=settings["io"],
        per_channel=settings["granularity"] == "per-channel",
        backend=settings["backend"],
        algorithm=settings["algorithm"],
        ranges=settings["activation-ranges"],
        percentile=settings["range-percentile"],
        head=settings["head"],
    )
