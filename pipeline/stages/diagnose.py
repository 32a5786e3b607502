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
import numpy as np

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.core.layers import layer_name

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

    from pipeline.core.tflite import read_ops

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

    from pipeline.stages.convert import calibrating_converter
    from pipeline.device.runner import quiet_native_stderr

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

    from pipeline.device.runner import quiet_native_stderr

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
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()

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
    return png_bytes(figure)


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


OPTIONS = (
    option("integer", "debug-images", DEBUG_IMAGES, "Images the debugger compares layers on."),
    option("string", "output", None, "Folder for diagnosis.json, diagnosis.md and diagnosis.png."),
)


def diagnose_model(settings):
    """The diagnosis of the model the build, calibration and --granularity settings describe,
    written to --output as diagnosis.{json,md,png}; returns the Diagnosis."""
    from pipeline.core.artifacts import check_writable, write_files_atomically
    from pipeline.stages import build, calibrate, convert
    from pipeline.stages.preprocess import Preprocessing

    out_dir = settings["output"]
    if not out_dir:
        raise PipelineInputError("--output DIR is required: where diagnosis.{json,md,png} go")
    check_writable(out_dir)
    built = build.build_model(build.config_from_settings(settings))
    spec = Preprocessing(resolution=built.resolution)
    calibration = calibrate.representative_dataset(
        calibrate.config_from_settings(settings, imagenet_weights=built.synsets is not None), spec,
        progress=calibrate.progress_bar("calibration images"))
    debug_arrays = calibration.arrays[: settings["debug-images"]]
    float_tflite = convert.convert(built, None, convert.ConvertConfig("none")).tflite
    per_channel = settings["granularity"] == "per-channel"
    result = diagnose(built, calibration.arrays, debug_arrays, float_tflite, per_channel)
    write_files_atomically(out_dir, {
        "diagnosis.json": json.dumps(result.to_json(), indent=2) + "\n",
        "diagnosis.md": render_markdown(result),
        "diagnosis.png": render_plot(result, f"{built.name} {result.granularity}"),
    })
    return result
