"""A `.tflite` file read as data: its ops, tensors, dtypes, work and I/O, without TensorFlow.

Every reader checks the bytes first (pipeline.core.readers.parse_model): a damaged or foreign file
is one PipelineInputError naming it, never garbage read through out-of-range offsets. This is the
one place that reads a model's structure; the stages (convert, inspection, gate, benchmark, …)
call it.
"""

import collections
import dataclasses
from pathlib import Path

from pipeline.core.errors import PipelineInputError
from pipeline.core.readers import TFLITE_IDENTIFIER, parse_model, read_input_file

# The compute ops that must be integer in a full-int8 MobileNetV2.
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def read_model(path):
    """The bytes of a `.tflite` file, refused in one line when it is not one."""
    path = Path(path)
    data = read_input_file(path, "{path}: no such model file", "{path} is a folder: pass a .tflite file",
                           "cannot read {path}: {reason}")
    # A TFLite flatbuffer carries its file identifier "TFL3" at bytes 4..8; the rest is checked by
    # parse_model before anything native reads it.
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise PipelineInputError(f"{path} is not a TFLite model (no TFL3 identifier): pass a .tflite "
                                 "file written by the converter")
    parse_model(data, str(path))
    return data


@dataclasses.dataclass
class TensorSpec:
    name: str
    shape: list
    dtype: str
    scale: float = None
    zero_point: int = None

    def to_config(self):
        spec = {"name": self.name, "shape": self.shape, "dtype": self.dtype}
        if self.scale is not None:
            spec["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return spec


def dtype_name(code):
    """A TensorType number's name: 9 → "int8"."""
    from ai_edge_litert import schema_py_generated as schema  # TensorFlow's schema, without TF

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}[code].lower()


def read_ops(model_bytes, where="the model"):
    """(model, main graph, [(builtin op name, op)] in execution order) from a .tflite flatbuffer.

    The bytes are checked by pipeline.readers.parse_model: a damaged file is a PipelineInputError
    naming `where`, not garbage read through out-of-range offsets."""
    from ai_edge_litert import schema_py_generated as schema  # TensorFlow's schema, without TF

    from pipeline.core.readers import parse_model

    model = parse_model(model_bytes, where)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        number = max(code.builtinCode, code.deprecatedBuiltinCode)
        # An op newer than this schema still counts, under its number.
        ops.append((op_names.get(number, f"BUILTIN_{number}"), op))
    return model, graph, ops


def inspect_tflite(model_bytes):
    """(ops histogram, weighted-op details) read from the flatbuffer itself."""
    from pipeline.core.layers import layer_name

    _, graph, named_ops = read_ops(model_bytes)
    ops = collections.Counter()
    weighted = []
    for name, op in named_ops:
        activation = graph.tensors[op.inputs[0]]
        ops[f"{name}[{dtype_name(activation.type)}]"] += 1
        if name in WEIGHTED_OPS:
            weight = graph.tensors[op.inputs[1]]
            scales = weight.quantization.scale if weight.quantization is not None else None
            output = graph.tensors[op.outputs[0]].name
            weighted.append({
                "op": name,
                "layer": layer_name(output.decode(errors="replace") if isinstance(output, bytes)
                                    else output),
                "activation_dtype": dtype_name(activation.type),
                "weight_dtype": dtype_name(weight.type),
                "per_channel": scales is not None and len(scales) > 1,
            })
    return dict(sorted(ops.items())), weighted


def structure(weighted_ops):
    """{layer: "OP activations/weights[ per-channel]"} of every conv, depthwise conv and
    fully-connected op, in execution order: what the gate compares layer by layer, so a layer that
    silently stops being int8 fails by name. A name met twice gets "#2", "#3"."""
    found = {}
    for w in weighted_ops:
        name, n = w["layer"], 2
        while name in found:
            name, n = f"{w['layer']}#{n}", n + 1
        found[name] = (f"{w['op']} {w['activation_dtype']}/{w['weight_dtype']}"
                       + (" per-channel" if w["per_channel"] else ""))
    return found


def summarize_weighted_ops(weighted):
    summary = collections.Counter(
        f"{w['op']}: activations {w['activation_dtype']}, weights {w['weight_dtype']}"
        + (" per-channel" if w["per_channel"] else "")
        for w in weighted
    )
    return dict(sorted(summary.items()))


def io_specs(model_bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    specs = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        quantized = scale != 0.0
        specs.append(TensorSpec(
            name=detail["name"],
            shape=[int(d) for d in detail["shape"]],
            dtype=detail["dtype"].__name__,
            scale=float(scale) if quantized else None,
            zero_point=int(zero_point) if quantized else None,
        ))
    return specs


def output_kind(model_bytes):
    """"probabilities" when the model's output comes from a SOFTMAX op, else "logits"."""
    _, graph, named_ops = read_ops(model_bytes)
    outputs = set(graph.outputs)
    for name, op in named_ops:
        if outputs & set(op.outputs):
            if name == "SOFTMAX":
                return "probabilities"
            if name in ("DEQUANTIZE", "QUANTIZE"):  # a softmax handed over in another dtype
                producer = {t: n for n, o in named_ops for t in o.outputs}.get(op.inputs[0])
                if producer == "SOFTMAX":
                    return "probabilities"
    return "logits"


def op_macs(graph, name, op):
    """Multiply-accumulates of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op (batch 1), else 0."""
    import numpy as np

    if name not in WEIGHTED_OPS:
        return 0
    out = int(np.prod(graph.tensors[op.outputs[0]].shape))
    weight_shape = [int(d) for d in graph.tensors[op.inputs[1]].shape]
    if name == "CONV_2D":  # weights [out_ch, kh, kw, in_ch]
        return out * int(np.prod(weight_shape[1:]))
    if name == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, channels]
        return out * weight_shape[1] * weight_shape[2]
    return int(np.prod(weight_shape))  # FULLY_CONNECTED: weights [out, in]


def model_macs(model_bytes):
    """Multiply-accumulates of one batch-1 inference, read from the flatbuffer (machine-independent:
    the gate compares it exactly where latency can only be compared as a ratio)."""
    _, graph, named_ops = read_ops(model_bytes)
    return sum(op_macs(graph, name, op) for name, op in named_ops)


