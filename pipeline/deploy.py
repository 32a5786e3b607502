"""Hand an export to the Android demo app: check the model's contract, then copy it into the assets.

    python -m pipeline.deploy android ARTIFACT_DIR android_demo/
    python -m pipeline.export ... --android-demo android_demo/     (the same, after exporting)

The contract the app relies on (it reads everything from model_config.json, never from constants):
one image input of shape [1, r, r, 3] in uint8, int8 or float32 whose quantization matches the
config; one output [1, N] with N = the number of labels; the config's files present. A model that
breaks it is refused with one line; nothing is copied. The three files are staged and os.replace'd
into android_demo/app/src/main/assets/ so the app never sees a half-copied set.
"""

import json
from pathlib import Path

from pipeline.errors import PipelineInputError
from pipeline.report import write_files_atomically

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
        files[name] = path.read_bytes()
    return check_files(files, artifact_dir)


def check_files(files, artifact_dir):
    """Checks {model.tflite, labels.txt, model_config.json: bytes} against each other, as the app
    will read them; returns `files`."""
    from pipeline.device_runner import Runner, load_runtime

    artifact_dir = Path(artifact_dir)
    try:
        config = json.loads(files["model_config.json"])
        input_spec, _ = config["input"], config["output"]  # both must be there
    except (ValueError, KeyError, TypeError) as error:
        raise PipelineInputError(f"{artifact_dir / 'model_config.json'} is not a pipeline config "
                                 f"({error}): re-export the model") from None
    try:
        text = files["labels.txt"]
        labels = [line for line in (text.decode("utf-8") if isinstance(text, bytes) else text).splitlines()
                  if line.strip()]
    except UnicodeDecodeError as error:
        raise PipelineInputError(f"{artifact_dir / 'labels.txt'} is not UTF-8 text ({error}): "
                                 "re-export the model") from None
    _, _, module = load_runtime()
    try:
        runner = Runner(module, model_content=files["model.tflite"])
    except (ValueError, RuntimeError) as error:
        raise PipelineInputError(f"{artifact_dir / 'model.tflite'} does not load: {error}") from None
    interpreter = runner.interpreter
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    where = artifact_dir / "model.tflite"
    if len(inputs) != 1 or len(outputs) != 1:
        raise PipelineInputError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs: the app "
                                 "takes one image in and one score vector out")
    shape = [int(d) for d in inputs[0]["shape"]]
    dtype = inputs[0]["dtype"].__name__
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
        raise PipelineInputError(f"{where} takes input {shape}: the app feeds [1, r, r, 3] RGB images")
    if dtype not in APP_DTYPES or outputs[0]["dtype"].__name__ not in APP_DTYPES:
        raise PipelineInputError(f"{where} has {dtype} input / {outputs[0]['dtype'].__name__} output: "
                                 f"the app handles {', '.join(APP_DTYPES)}")
    if shape != input_spec.get("shape") or dtype != input_spec.get("dtype"):
        raise PipelineInputError(
            f"model_config.json says input {input_spec.get('shape')} {input_spec.get('dtype')} but "
            f"{where} takes {shape} {dtype}: the files are from different exports")
    scale, zero_point = inputs[0]["quantization"]
    configured = input_spec.get("quantization")
    if (scale != 0.0) != (configured is not None) or (
            configured and (abs(configured["scale"] - scale) > 1e-9 * max(1.0, scale)
                            or configured["zero_point"] != zero_point)):
        raise PipelineInputError(
            f"model_config.json input quantization {configured} does not match {where} "
            f"(scale {scale}, zero point {zero_point}): re-export")
    out_shape = [int(d) for d in outputs[0]["shape"]]
    if len(out_shape) != 2 or out_shape[1] != len(labels):
        raise PipelineInputError(
            f"{where} outputs {out_shape} but labels.txt has {len(labels)} labels: they must match "
            "(one label per output, in order)")
    return files


def deploy_android(artifact_dir, app_dir):
    app_dir = Path(app_dir)
    if not (app_dir / "app" / "build.gradle.kts").is_file():
        raise PipelineInputError(f"{app_dir} is not the Android demo app (no app/build.gradle.kts): "
                                 "pass the android_demo/ folder")
    files = check_contract(artifact_dir)
    write_files_atomically(app_dir / ASSETS, files)
    return app_dir / ASSETS


def main(argv):
    if len(argv) != 4 or argv[1] != "android":
        raise PipelineInputError("usage: python -m pipeline.deploy android ARTIFACT_DIR android_demo/")
    assets = deploy_android(argv[2], argv[3])
    print(f"✓ {', '.join(FILES)} → {assets}; build with: cd {argv[3]} && ./gradlew assembleDebug")


if __name__ == "__main__":
    from pipeline.cli import run

    run(main)
