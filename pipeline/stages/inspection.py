"""A `.tflite` model's contract, read from the file alone: what an app or a runtime sees.

    python -m pipeline.inspect OUT/model.tflite           # for a person
    python -m pipeline.inspect OUT/model.tflite --json    # for a script

Inputs and outputs (shape, dtype, quantization), the TFLite Metadata (name, version, licence,
normalization, what the output means), the packed labels, the ops and how they are quantized, and
what the mainstream image-classification clients accept of it.
"""

import hashlib

from pipeline.core.errors import PipelineInputError
from pipeline.core.readers import parse_labels, parse_model
from pipeline.stages import metadata

# What MediaPipe Tasks' ImageClassifier takes (the Task Library's rules are the same): measured
# with mediapipe 1.2.x, which refuses an int8 output and a float32 input without normalization.
CLIENT_INPUT_DTYPES = ("uint8", "float32")
CLIENT_OUTPUT_DTYPES = ("uint8", "float32")


def _tensor(detail):
    scale, zero_point = detail["quantization"]
    spec = {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": detail["dtype"].__name__}
    if scale:
        spec["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return spec


def contract(model_bytes, where="model"):
    """Everything `inspect` prints, as a dict. A file that is not a model LiteRT loads is a
    PipelineInputError; damaged metadata or packed labels are reported in the dict (the graph
    still runs, and inspect is how one finds out what a client would see)."""
    from pipeline.core import tflite
    from pipeline.device.runner import load_runtime, make_interpreter

    # Checked in Python first: LiteRT verifies the flatbuffer, but crashes on some that verify.
    parse_model(model_bytes, where)
    _, _, module = load_runtime()
    try:
        # The interpreter alone (not a Runner, which needs an input): a model with no input or
        # several is described, and client_verdicts says who refuses it.
        interpreter = make_interpreter(module, model_content=model_bytes)
    except (ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PipelineInputError(f"{where} does not load in LiteRT ({reason}): re-export it") from None
    inputs = [_tensor(d) for d in interpreter.get_input_details()]
    outputs = [_tensor(d) for d in interpreter.get_output_details()]
    ops, weighted = tflite.inspect_tflite(model_bytes)
    try:
        found, files = metadata.read_metadata(model_bytes, where)
    except PipelineInputError as error:
        found, files = {"error": " ".join(str(error).split())[:300]}, {}
    labels = labels_error = None
    for name, data in files.items():
        if name.endswith(".txt"):
            try:
                labels, labels_error = parse_labels(data, f"{name} packed in {where}"), None
            except PipelineInputError as error:
                labels, labels_error = None, str(error)
    extra = {"labels_error": labels_error} if labels_error else {}
    return {
        "size_bytes": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "inputs": inputs,
        "outputs": outputs,
        "output_kind": tflite.output_kind(model_bytes),
        "macs": tflite.model_macs(model_bytes),
        "metadata": found,
        "packed_files": sorted(files),
        "labels": labels,
        **extra,
        "ops": ops,
        "weighted_ops": tflite.summarize_weighted_ops(weighted),
        "clients": client_verdicts(inputs, outputs, found),
    }


def client_verdicts(inputs, outputs, found):
    """Whether MediaPipe Tasks' / the Task Library's image classifier can take the model, and why
    not; from the contract alone (pipeline.clients runs the real ones)."""
    problems = []
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][-1] != 3:
        problems.append("needs one [1, h, w, 3] RGB image input")
    elif inputs[0]["dtype"] not in CLIENT_INPUT_DTYPES:
        problems.append(f"refuses {inputs[0]['dtype']} input (takes uint8 or float32)")
    elif inputs[0]["dtype"] == "float32" and not metadata.normalization_options(found):
        problems.append("a float32 input needs NormalizationOptions in the metadata")
    if len(outputs) != 1:
        problems.append(f"reads one score tensor; this model has {len(outputs)} outputs")
    elif outputs[0]["dtype"] not in CLIENT_OUTPUT_DTYPES:
        problems.append(f"refuses {outputs[0]['dtype']} output (takes uint8 or float32)")
    named = bool(found) and "error" not in found and metadata.has_label_file(found)
    return {"image_classifier": {"loads": not problems, "problems": problems,
                                 "category_names": named}}


def render(info, path):
    lines = [f"{path}: {info['size_bytes']:,} bytes, sha256 {info['sha256'][:16]}…, "
             f"{info['macs'] / 1e6:,.1f}M MACs"]
    for kind in ("inputs", "outputs"):
        for tensor in info[kind]:
            q = tensor.get("quantization")
            lines.append(f"  {kind[:-1]:6} {tensor['name']}: {tensor['shape']} {tensor['dtype']}"
                         + (f", scale {q['scale']:.6g} zero point {q['zero_point']}" if q else ""))
    lines.append(f"  output is {info['output_kind']}")
    found = info["metadata"]
    if not found:
        lines.append("  metadata: none (clients get no label names or normalization)")
    elif "error" in found:
        lines.append(f"  metadata: unreadable ({found['error']})")
    else:
        lines.append(f"  metadata: {found.get('name')} v{found.get('version')}, "
                     f"licence {found.get('license') or '—'}, author {found.get('author') or '—'}, "
                     f"min parser {found.get('min_parser_version')}")
        if found.get("description"):
            lines.append(f"    {found['description']}")
        options = metadata.normalization_options(found)
        if options is not None:
            lines.append(f"    input normalization: mean {options.get('mean')} std {options.get('std')}")
        lines += [f"    output: {description}" for description in metadata.output_descriptions(found)]
    if info.get("labels_error"):
        lines.append(f"  labels (packed): unreadable ({info['labels_error']})")
    if info["labels"] is not None:
        shown = ", ".join(info["labels"][:5])
        lines.append(f"  labels (packed): {len(info['labels'])}: {shown}{', …' if len(info['labels']) > 5 else ''}")
    verdict = info["clients"]["image_classifier"]
    lines.append("  MediaPipe / Task Library image classifier: "
                 + ("takes it" + ("" if verdict["category_names"] else ", but categories have no names")
                    if verdict["loads"] else "REFUSES it: " + "; ".join(verdict["problems"])))
    lines.append("  ops: " + ", ".join(f"{k} ×{v}" for k, v in info["ops"].items()))
    for line, count in info["weighted_ops"].items():
        lines.append(f"    {line}: {count}")
    return "\n".join(lines)


