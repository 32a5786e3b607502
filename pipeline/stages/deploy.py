"""Hand an export to the Android demo app: check the model's contract, then copy it into the assets.

    python -m pipeline.deploy android ARTIFACT_DIR android_demo/
    python -m pipeline.export ... --android-demo android_demo/     (the same, after exporting)

The contract the app relies on (it reads everything from model_config.json, never from constants):
one image input of shape [1, r, r, 3] in uint8, int8 or float32 whose quantization matches the
config; one output [1, N] with N = the number of labels, one label a line (no blank or repeated
lines; a UTF-8 byte-order mark and CRLF line ends are dropped, since the app would show them); the
config's fields of the right types. A set that breaks it is refused with one line; nothing is
copied. The three files are staged and os.replace'd
into android_demo/app/src/main/assets/ so the app never sees a half-copied set.
"""

from pathlib import Path

from pipeline.core.errors import PipelineInputError
from pipeline.core.artifacts import write_files_atomically
from pipeline.core.readers import parse_json, parse_labels, parse_model

ASSETS = Path("app/src/main/assets")
FILES = ("model.tflite", "labels.txt", "model_config.json")
APP_DTYPES = ("uint8", "int8", "float32")


def check_contract(artifact_dir):
    """Reads the three artifacts and checks them against each other; returns {name: bytes}."""
    artifact_dir = Path(artifact_dir)
    files = {}
    for name in FILES:
        path = artifact_dir / name
        if not path.is_file():
            raise PipelineInputError(f"{path} is missing: export first (python -m pipeline.export "
                                     f"--output {artifact_dir})")
        try:
            files[name] = path.read_bytes()
        except OSError as error:
            raise PipelineInputError(f"cannot read {path}: {error.strerror}; fix its permissions "
                                     "or re-export") from None
    return check_files(files, artifact_dir)


def read_config(data, where):
    """model_config.json (bytes or text) as a dict, with every field an app and pipeline.predict
    read checked for type and range; one line naming `where` otherwise."""
    fix = "re-export the model (python -m pipeline.export)"
    # Strict JSON (no NaN / Infinity / 1e400, no nesting past the parser's depth): pipeline.readers.
    config = parse_json(data, where, fix)

    def field(*keys, kind=dict):
        node = config
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                name = ".".join(keys[: depth + 1])
                raise PipelineInputError(f"{where} has no {name!r}: it is not a pipeline config; {fix}")
            node = node[key]
        if not isinstance(node, kind) or isinstance(node, bool):
            raise PipelineInputError(f"{where}: {'.'.join(keys)} is {node!r}, not "
                                     f"{getattr(kind, '__name__', 'a number')}; {fix}")
        return node

    number = (int, float)
    if not isinstance(config, dict):
        raise PipelineInputError(f"{where} holds a JSON {type(config).__name__}, not the object a "
                                 f"pipeline config is; {fix}")
    for key in ("model_file", "labels_file"):
        name = field(key, kind=str)
        if not name or Path(name).name != name or name in (".", ".."):
            raise PipelineInputError(f"{where}: {key} {name!r} is not a file name in the export "
                                     f"folder; {fix}")
    for side in ("input", "output"):
        shape = field(side, "shape", kind=list)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise PipelineInputError(f"{where}: {side}.shape {shape!r} is not a list of positive "
                                     f"integers; {fix}")
        field(side, "dtype", kind=str)
    quantization = config["input"].get("quantization")
    if quantization is not None:
        scale = field("input", "quantization", "scale", kind=number)
        field("input", "quantization", "zero_point", kind=int)
        if not scale > 0 or scale == float("inf"):
            raise PipelineInputError(f"{where}: input.quantization.scale {scale!r} is not a positive "
                                     f"number; {fix}")
    field("output", "meaning", kind=str)
    size = field("preprocessing", "resize", "size", kind=list)
    if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise PipelineInputError(f"{where}: preprocessing.resize.size {size!r} is not [r, r] in "
                                 f"pixels; {fix}")
    crop = field("preprocessing", "crop", "crop_fraction", kind=number)
    if not 0 < crop <= 1:
        raise PipelineInputError(f"{where}: preprocessing.crop.crop_fraction {crop!r} is not in "
                                 f"(0, 1]; {fix}")
    field("preprocessing", "normalize", "mean", kind=number)
    std = field("preprocessing", "normalize", "std", kind=number)
    if not 0 < std < float("inf"):
        raise PipelineInputError(f"{where}: preprocessing.normalize.std {std!r} is not a positive "
                                 f"number; {fix}")
    return config


def classifier_problem(inputs, outputs):
    """Why a model with these inputs and outputs ({"shape": [...], "dtype": "uint8"} each) is not
    the image classifier the app, predict and verify feed, or None: one [1, r, r, 3] RGB image in
    uint8, int8 or float32, one [1, N] score vector out."""
    if len(inputs) != 1 or len(outputs) != 1:
        return (f"has {len(inputs)} inputs and {len(outputs)} outputs: an image classifier takes "
                "one image in and gives one score vector out")
    shape, dtype = inputs[0]["shape"], inputs[0]["dtype"]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
        return f"takes input {shape} {dtype}, not a [1, r, r, 3] RGB image"
    if dtype not in APP_DTYPES or outputs[0]["dtype"] not in APP_DTYPES:
        return (f"has {dtype} input / {outputs[0]['dtype']} output: image classifiers here take "
                f"{', '.join(APP_DTYPES)}")
    if len(outputs[0]["shape"]) != 2 or outputs[0]["shape"][0] != 1:
        return f"outputs {outputs[0]['shape']}, not a [1, classes] score vector"
    return None


def tensor_specs(details):
    """Interpreter tensor details → [{"shape", "dtype", "quantization"}] (plain Python values)."""
    return [{"shape": [int(d) for d in detail["shape"]], "dtype": detail["dtype"].__name__,
             "quantization": tuple(detail["quantization"])} for detail in details]


def check_files(files, artifact_dir):
    """Checks {model.tflite, labels.txt, model_config.json: bytes} against each other, as the app
    will read them; returns `files`, labels.txt normalized (no byte-order mark, LF line ends)."""
    from pipeline.device.runner import load_runtime, make_interpreter

    artifact_dir = Path(artifact_dir)
    config_where = artifact_dir / "model_config.json"
    config = read_config(files["model_config.json"], config_where)
    for key, name in (("model_file", "model.tflite"), ("labels_file", "labels.txt")):
        if config[key] != name:
            raise PipelineInputError(f"{config_where}: {key} is {config[key]!r}, but the export "
                                     f"and the app use {name}; re-export the model")
    input_spec = config["input"]
    labels_where = artifact_dir / "labels.txt"
    labels = parse_labels(files["labels.txt"], labels_where)
    _, _, module = load_runtime()
    where = artifact_dir / "model.tflite"
    parse_model(files["model.tflite"], str(where))  # before LiteRT, which can crash on damage
    try:
        interpreter = make_interpreter(module, model_content=files["model.tflite"])
    except (ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PipelineInputError(f"{where} does not load in LiteRT ({reason}): re-export it") from None
    inputs = tensor_specs(interpreter.get_input_details())
    outputs = tensor_specs(interpreter.get_output_details())
    problem = classifier_problem(inputs, outputs)
    if problem:
        raise PipelineInputError(f"{where} {problem}; export a MobileNetV2 classifier for the app")
    shape, dtype = inputs[0]["shape"], inputs[0]["dtype"]
    if shape != input_spec["shape"] or dtype != input_spec["dtype"]:
        raise PipelineInputError(
            f"{config_where} says input {input_spec['shape']} {input_spec['dtype']} but {where} "
            f"takes {shape} {dtype}: the files are from different exports; re-export")
    scale, zero_point = inputs[0]["quantization"]
    configured = input_spec.get("quantization")
    if (scale != 0.0) != (configured is not None) or (
            configured and (abs(configured["scale"] - scale) > 1e-9 * max(1.0, scale)
                            or configured["zero_point"] != zero_point)):
        raise PipelineInputError(
            f"{config_where} input quantization {configured} does not match {where} "
            f"(scale {scale}, zero point {zero_point}): re-export")
    out_shape = outputs[0]["shape"]
    if out_shape[1] != len(labels):
        raise PipelineInputError(
            f"{where} outputs {out_shape} but labels.txt has {len(labels)} labels ({labels_where}): "
            "they must match (one label per output, in order)")
    return dict(files, **{"labels.txt": "\n".join(labels) + "\n"})


def deploy_android(artifact_dir, app_dir):
    app_dir = Path(app_dir)
    if not (app_dir / "app" / "build.gradle.kts").is_file():
        raise PipelineInputError(f"{app_dir} is not the Android demo app (no app/build.gradle.kts): "
                                 "pass the android_demo/ folder")
    files = check_contract(artifact_dir)
    write_files_atomically(app_dir / ASSETS, files)
    return app_dir / ASSETS
