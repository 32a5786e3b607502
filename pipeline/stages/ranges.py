"""The activation ranges an int8 model's scales are made from, made immune to the CPU's last bits.

Every int8 scale, zero point, bias and requantization multiplier follows from each activation's
calibrated [min, max]. Those come out of float kernels, whose summation order depends on the
instruction set (AVX, FMA, AVX-512, NEON): two machines calibrate ranges a few ulps apart, a scale
moves by an LSB, and on MobileNetV2 — whose few-percent disagreements with float sit on near-ties —
that re-draws which images flip (issue 25: 1.2 points of agreement between an AMX Xeon and an AMD
EPYC, with KL unchanged). So ranges pass through two things before they become scales:

- **one set of kernels**: the min/max calibration and the percentile statistics both run on
  TensorFlow's built-in TFLite kernels, one thread, no XNNPACK. TensorFlow's wheel compiles them
  for one instruction set (AVX) with no runtime dispatch, so on x86 they give the same bits on
  every CPU (checked under qemu emulating a CPU without AVX2/FMA: WORKSPACE_NOTES); XNNPACK picks
  its kernels per CPU and does not. Percentiles are taken in float64.
- **a coarse grid** (`snap_range`): each endpoint is rounded to the nearest multiple of a power
  of two, 2^(e − GRID_BITS), where 2^e·√2 is the power-of-two band of the range's magnitude, so
  the grid has 45–90 steps across the magnitude. Values a few ulps apart land on the same point
  unless they straddle a half-step, a chance of about one in 10^5 per endpoint for an ulp-sized
  difference. Rounding to *nearest* keeps exact values where they are (a ReLU6's 0 and 6, the
  input's ±1): a one-ulp wobble around them cannot move them, as a floor or ceiling would. The
  band boundaries sit at √2·2^k, where no calibrated value lies exactly. An endpoint moves by
  at most 1.1% of the range's magnitude; the cost in agreement and KL was measured as nil
  (WORKSPACE_NOTES, issue 25).
"""

import math

GRID_BITS = 6
# Cache keys of calibrated models carry this: a change of grid or kernels is new work.
GRID = {"bits": GRID_BITS, "bands": "sqrt2", "rounding": "nearest", "kernels": "tf-builtin-1-thread"}
SQRT_HALF = math.sqrt(0.5)


def grid_step(magnitude):
    """The grid spacing for a range whose largest |endpoint| is `magnitude` (> 0): a power of two
    with magnitude / step in [45.25, 90.5). Exact: frexp and ldexp do no rounding."""
    mantissa, exponent = math.frexp(magnitude)  # magnitude = mantissa · 2^exponent, ½ ≤ m < 1
    if mantissa < SQRT_HALF:
        exponent -= 1
    return math.ldexp(1.0, exponent - GRID_BITS)


def snap_range(low, high):
    """(low, high) rounded to the grid of their magnitude. A zero range stays; a range that the
    rounding would close is kept one step wide."""
    low, high = float(low), float(high)
    magnitude = max(abs(low), abs(high))
    if not magnitude > 0 or not math.isfinite(magnitude):
        return low, high
    step = grid_step(magnitude)
    snapped_low, snapped_high = round(low / step) * step, round(high / step) * step
    if snapped_high <= snapped_low and high > low:
        snapped_high = snapped_low + step
    return snapped_low, snapped_high


def snap_model_ranges(model):
    """Snaps, in place, every calibrated [min, max] of a flatbuffer model object (per-tensor and
    per-channel alike)."""
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            quantization = tensor.quantization
            if quantization is None or quantization.min is None or quantization.max is None:
                continue
            pairs = [snap_range(lo, hi) for lo, hi in zip(quantization.min, quantization.max)]
            quantization.min = [lo for lo, _ in pairs]
            quantization.max = [hi for _, hi in pairs]


def calibrated_ranges(model_bytes):
    """{tensor name: (min, max)} of a calibrated model's per-tensor ranges, for tests and study."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes)).subgraphs[0]
    return {t.name.decode(): (float(t.quantization.min[0]), float(t.quantization.max[0]))
            for t in graph.tensors if t.quantization is not None and t.quantization.min is not None
            and len(t.quantization.min) == 1}


def builtin_interpreter(model_bytes, preserve_all_tensors=False):
    """An interpreter on TensorFlow's built-in kernels, one thread, no delegate: the kernels the
    calibrator runs, the same bits on every x86 CPU. (XNNPACK's differ by CPU; more threads split
    the built-in convolutions' sums differently.)"""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is, here
        interpreter = tf.lite.Interpreter(
            model_content=model_bytes, num_threads=1,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType
            .BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=preserve_all_tensors)
    interpreter.allocate_tensors()
    return interpreter


# How clip_ranges samples activations: `images` calibration images, `samples` values per tensor
# per image, drawn with `seed`.
CLIP_SAMPLING = {"images": 150, "samples": 4000, "seed": 0}


def activation_samples(calibrated, calibration_arrays, images=CLIP_SAMPLING["images"],
                       samples=CLIP_SAMPLING["samples"], seed=CLIP_SAMPLING["seed"],
                       interpreter=None):
    """{tensor index: float64 values} sampled (seeded) from each calibrated per-tensor activation of
    the model outputs excepted: `samples` values per image from `images` calibration images, plus
    each image's extremes. `interpreter` (one with all tensors preserved) defaults to the built-in
    kernels."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated)).subgraphs[0]
    stat_tensors = [i for i, t in enumerate(graph.tensors)
                    if t.quantization is not None and t.quantization.min is not None
                    and len(t.quantization.min) == 1 and i not in graph.outputs]
    interpreter = interpreter or builtin_interpreter(calibrated, preserve_all_tensors=True)
    input_index = interpreter.get_input_details()[0]["index"]
    rng = np.random.default_rng(seed)
    values = {i: [] for i in stat_tensors}
    for array in calibration_arrays[:images]:
        interpreter.set_tensor(input_index, np.asarray(array, np.float32)[None])
        interpreter.invoke()
        for i in stat_tensors:
            tensor = interpreter.get_tensor(i).ravel()
            values[i].append(tensor[rng.integers(0, tensor.size, min(tensor.size, samples))])
            values[i].append(np.array([tensor.min(), tensor.max()], tensor.dtype))
    return {i: np.concatenate(v).astype(np.float64) for i, v in values.items()}


def clip_ranges(calibrated, calibration_arrays, percentile, images=CLIP_SAMPLING["images"],
                samples=CLIP_SAMPLING["samples"], seed=CLIP_SAMPLING["seed"], interpreter=None):
    """Replaces each activation's calibrated min/max with the given percentiles of its values,
    snapped to the grid.

    Min/max lets one extreme pixel set a tensor's range: MobileNetV2's ReLU6 outputs calibrate to
    [0, 6] while most values are a few hundredths, so the int8 step drowns them. Measured at 224
    (all 3,925 val images): percentile 99.99 lifts agreement 96.05% → 96.82% and cuts KL 0.0078 →
    0.0052 at no latency cost; 99.9 clips too much (90.6%). Values are sampled (seeded) by
    `activation_samples`.

    The model's outputs keep their min/max: the top logits are exactly the extremes a percentile
    cuts off, and clipping them ties the leading classes at the range's end. Measured at 224, the
    effect is within the ±0.3 pt scatter between equally good models: 96.82% with clipped logits;
    96.97% (same samples) and 96.71% (re-drawn samples) without, KL 0.0052 → 0.0049–0.0051.
    """
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    seen = activation_samples(calibrated, calibration_arrays, images, samples, seed, interpreter)
    for i, values in seen.items():
        quantization = graph.tensors[i].quantization
        low = float(np.percentile(values, 100 - percentile))
        high = float(np.percentile(values, percentile))
        # Keep 0 representable for ranges that held it (ReLU outputs, zero padding).
        low = min(low, 0.0) if quantization.min[0] <= 0 else low
        quantization.min, quantization.max = [low], [max(high, low + 1e-6)]
    snap_model_ranges(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
