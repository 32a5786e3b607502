"""MobileNet V1 vs V2 (vs V3, ResNet50) on this machine: the figures that decide between variants.

For each model at one resolution: parameters and MACs (counted from the Keras layers), float32 and
int8 `.tflite` size, peak activation memory (the largest set of tensors alive at once, from the
`.tflite` tensor sizes and lifetimes in execution order), and latency float/int8 at 1 and all
threads — every configuration interleaved in one run — with how many ops XNNPACK took and in how
many partitions (a graph split into many partitions pays a float/int8 hand-over at each seam).

Weights are random (seeded): latency, size and memory do not depend on them. int8 calibration uses
--calibration images when given, else seeded noise.

    python -m pipeline.compare --resolution 224 --output compare/
"""

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineInputError

MODELS = {
    "v1": ("MobileNetV1", lambda keras, r: keras.applications.MobileNet(
        input_shape=(r, r, 3), weights=None, classifier_activation=None)),
    "v2-1.0": ("MobileNetV2 1.0", lambda keras, r: keras.applications.MobileNetV2(
        input_shape=(r, r, 3), alpha=1.0, weights=None, classifier_activation=None)),
    "v2-1.4": ("MobileNetV2 1.4", lambda keras, r: keras.applications.MobileNetV2(
        input_shape=(r, r, 3), alpha=1.4, weights=None, classifier_activation=None)),
    "v3-small": ("MobileNetV3 Small", lambda keras, r: keras.applications.MobileNetV3Small(
        input_shape=(r, r, 3), weights=None, include_preprocessing=False,
        classifier_activation=None)),
    "v3-large": ("MobileNetV3 Large", lambda keras, r: keras.applications.MobileNetV3Large(
        input_shape=(r, r, 3), weights=None, include_preprocessing=False,
        classifier_activation=None)),
    "resnet50": ("ResNet50", lambda keras, r: keras.applications.ResNet50(
        input_shape=(r, r, 3), weights=None, classifier_activation=None)),
}
DEFAULT_MODELS = ("v1", "v2-1.0", "v2-1.4", "v3-small", "v3-large")


def peak_activation_bytes(model_bytes):
    """Largest total size of non-constant tensors alive at once, walking ops in execution order.

    A tensor lives from the op that writes it (or the start, for graph inputs) to the last op that
    reads it (or the end, for graph outputs)."""
    return activation_memory(model_bytes)[0]


def activation_memory(model_bytes):
    """(peak bytes alive at once, activation traffic: bytes every op reads and writes)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = model.subgraphs[0]
    itemsize = {schema.TensorType.FLOAT32: 4, schema.TensorType.INT8: 1, schema.TensorType.UINT8: 1,
                schema.TensorType.INT16: 2, schema.TensorType.INT32: 4, schema.TensorType.FLOAT16: 2,
                schema.TensorType.INT64: 8, schema.TensorType.BOOL: 1}

    def is_variable(index):
        buffer = model.buffers[graph.tensors[index].buffer]
        return buffer.data is None or len(buffer.data) == 0

    def nbytes(index):
        tensor = graph.tensors[index]
        return int(np.prod(tensor.shape if tensor.shape is not None else [1])) * itemsize.get(tensor.type, 4)

    last_use, first_def = {}, {}
    traffic = 0
    for step, op in enumerate(graph.operators):
        traffic += sum(nbytes(i) for i in list(op.inputs) + list(op.outputs) if i >= 0 and is_variable(i))
        for index in op.inputs:
            if index >= 0 and is_variable(index):
                last_use[index] = step
        for index in op.outputs:
            first_def.setdefault(index, step)
    end = len(graph.operators)
    for index in graph.inputs:
        first_def[index] = -1
    for index in graph.outputs:
        last_use[index] = end
    peak = 0
    for step in range(-1, end + 1):
        alive = sum(nbytes(i) for i, start in first_def.items()
                    if start <= step <= last_use.get(i, start))
        peak = max(peak, alive)
    return peak, traffic


@dataclasses.dataclass
class ModelFigures:
    key: str
    name: str
    params: int
    macs: int
    layers: int
    float_bytes: int
    int8_bytes: int
    float_peak_activation_bytes: int
    int8_peak_activation_bytes: int
    int8_activation_traffic_bytes: int


def build_and_convert(key, resolution, calibration_arrays, seed=0):
    import keras

    from pipeline.stages import analyze, convert

    keras.utils.set_random_seed(seed)
    name, factory = MODELS[key]
    model = factory(keras, resolution)

    class Built:  # the slice of build.BuiltModel that convert needs
        keras_model = model

    # The architectures as built, without a softmax head: the figures compare the networks.
    float_model = convert.convert(Built, None, convert.ConvertConfig("none", head="logits"))
    int8_model = convert.convert(Built, calibration_arrays,
                                 convert.ConvertConfig("int8", io="uint8", head="logits"))
    figures = ModelFigures(
        key=key, name=name, params=int(model.count_params()),
        macs=int(sum(analyze.layer_macs(layer) for layer in model.layers)),
        layers=len(model.layers), float_bytes=float_model.size_bytes, int8_bytes=int8_model.size_bytes,
        float_peak_activation_bytes=peak_activation_bytes(float_model.tflite),
        int8_peak_activation_bytes=activation_memory(int8_model.tflite)[0],
        int8_activation_traffic_bytes=activation_memory(int8_model.tflite)[1])
    return figures, float_model.tflite, int8_model.tflite


def compare(keys, resolution, calibration_arrays, threads, runs, work_dir):
    from pipeline.stages import benchmark

    figures, paths = [], []
    for key in keys:
        result, float_bytes, int8_bytes = build_and_convert(key, resolution, calibration_arrays)
        figures.append(result)
        for kind, data in (("float", float_bytes), ("int8", int8_bytes)):
            path = Path(work_dir) / f"{key}_{kind}.tflite"
            path.write_bytes(data)
            paths.append(path)
    timing = benchmark.host_benchmark(paths, threads=threads, runs=runs)
    latency = {}
    for row in timing["latency"]:
        key, kind = row["model"].rsplit(".", 1)[0].rsplit("_", 1)
        latency.setdefault(key, {})[f"{kind}_{row['threads']}t"] = {
            "median_ms": row["median_ms"], "p90_ms": row["p90_ms"],
            "delegate_partitions": row["delegate_partitions"],
            "ops_not_delegated": row["ops_not_delegated"]}
    return {"resolution": resolution, "device": timing["device"], "runtime": timing["runtime"],
            "models": [dict(dataclasses.asdict(f), latency=latency[f.key]) for f in figures]}


def render_markdown(result):
    threads = sorted({k.split("_")[1] for m in result["models"] for k in m["latency"]})
    lines = [f"# MobileNet variants at {result['resolution']} px on "
             f"{result['device'].get('cpu_model')} ({result['runtime']['name']} "
             f"{result['runtime']['version']}, interleaved)", "",
             "| model | params M | MACs M | layers | float MB | int8 MB | peak act. float / int8 kB | "
             "int8 act. traffic MB | "
             + " | ".join(f"float {t} ms | int8 {t} ms" for t in threads)
             + " | int8 XNNPACK partitions (ops left) |",
             "|---|---|---|---|---|---|---|---|" + "---|---|" * len(threads) + "---|"]
    for m in result["models"]:
        cells = []
        for t in threads:
            cells += [f"{m['latency'][f'float_{t}']['median_ms']:.2f}",
                      f"{m['latency'][f'int8_{t}']['median_ms']:.2f}"]
        int8 = m["latency"][f"int8_{threads[0]}"]
        lines.append(
            f"| {m['name']} | {m['params'] / 1e6:.2f} | {m['macs'] / 1e6:.0f} | {m['layers']} | "
            f"{m['float_bytes'] / 1e6:.2f} | {m['int8_bytes'] / 1e6:.2f} | "
            f"{m['float_peak_activation_bytes'] / 1024:.0f} / {m['int8_peak_activation_bytes'] / 1024:.0f} | "
            f"{m['int8_activation_traffic_bytes'] / 1e6:.1f} | "
            + " | ".join(cells) + f" | {int8['delegate_partitions']} ({int8['ops_not_delegated']}) |")
    by_key = {m["key"]: m for m in result["models"]}
    if "v1" in by_key and "v2-1.0" in by_key:
        v1, v2 = by_key["v1"], by_key["v2-1.0"]
        for t in threads:
            lines.append("")
            lines.append(
                f"V1/V2 at {t}: MACs {v1['macs'] / v2['macs']:.2f}×, latency float "
                f"{v1['latency'][f'float_{t}']['median_ms'] / v2['latency'][f'float_{t}']['median_ms']:.2f}×, "
                f"int8 {v1['latency'][f'int8_{t}']['median_ms'] / v2['latency'][f'int8_{t}']['median_ms']:.2f}×; "
                f"peak activations (int8) {v1['int8_peak_activation_bytes'] / v2['int8_peak_activation_bytes']:.2f}×, "
                f"activation traffic {v1['int8_activation_traffic_bytes'] / v2['int8_activation_traffic_bytes']:.2f}×; "
                f"layers {v1['layers']} vs {v2['layers']}.")
    return "\n".join(lines) + "\n"


def compare_models(models, resolution=224, calibration=None, runs=30, output=None):
    """`compare` of `models` (keys of MODELS) at `resolution`, calibrated on 50 images of the
    `calibration` folder (seeded noise without one), timed at 1 and all cores; written to `output`
    as compare.{json,md} when given. Returns (the result, its Markdown table)."""
    from pipeline.core.artifacts import check_writable, write_files_atomically
    from pipeline.stages import calibrate
    from pipeline.stages.preprocess import Preprocessing

    unknown = [k for k in models if k not in MODELS]
    if unknown:
        raise PipelineInputError(f"--models {', '.join(unknown)}: unknown; choose from {', '.join(MODELS)}")
    # Keras builds these networks from 32 px up; past 1024 px a laptop runs out of memory first.
    if not 32 <= resolution <= 1024:
        raise PipelineInputError(f"--resolution {resolution} is out of range: use 32–1024, e.g. 224")
    if runs < 1:
        raise PipelineInputError(f"--benchmark-runs must be at least 1 (got {runs})")
    if output:
        check_writable(output)
    if calibration:
        arrays = calibrate.representative_dataset(
            calibrate.CalibrationConfig(directory=calibration, samples=50),
            Preprocessing(resolution=resolution)).arrays
    else:
        arrays = np.random.default_rng(0).uniform(-1, 1, (20, resolution, resolution, 3)).astype(np.float32)
    threads = sorted({1, os.cpu_count() or 1})
    with tempfile.TemporaryDirectory() as work:
        result = compare(list(models), resolution, arrays, threads, runs, work)
    table = render_markdown(result)
    if output:
        write_files_atomically(output, {"compare.json": json.dumps(result, indent=2) + "\n",
                                        "compare.md": table})
    return result, table
