"""The clients apps ship with, run on the exported model as it is: the report's "clients" section.

Each client is run, not assumed: MediaPipe Tasks' ImageClassifier (the runtime of Google's Android
image-classification sample, successor of the Task Library) with no options, the TFLite Task
Library's ImageClassifier (tflite-support 0.4.4 in an environment of its own, a subprocess: its
wheels stop at Python 3.11 and its protobuf 3 does not import beside TensorFlow's), and a plain LiteRT
Interpreter fed the model's own input tensor. Each is given the same images at the model's input
size, so its top-1 can be compared with the pipeline's own runner: every client sees exactly the
pixels calibration and parity saw. The Android row is what it is: a contract check of the files
the app reads (the app's Kotlin core runs on golden vectors in tests/test_android.py).

What an app must do beyond that is framing: calibration saw a centered square of each image
(`crop_fraction` of the shorter side); MediaPipe stretches the whole frame unless it is given that
square as its region of interest.
"""

import contextlib
import importlib.metadata

import numpy as np


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(error):
    """An error's first sentence on one line."""
    text = " ".join(str(error).split())
    return text.split(". ")[0][:200]


def _summary(client, top1, expected, per_image):
    """A client's row: what it returned, compared with the pipeline's own top-1. `expected` holds
    our interpreter's logits per image; `per_image` each image's categories as [(name, score)],
    all of them, best first."""
    names = all(name for categories in per_image for name, _ in categories)
    probabilities = all(all(0.0 <= s <= 1.0 for _, s in categories)
                        and sum(s for _, s in categories) <= 1.0 + 1e-4 for categories in per_image)
    # A client's top-1 matches when it is one of our top classes: equal int8 logits make equal
    # probabilities, and clients order ties their own way.
    matches = sum(int(ours[index] >= ours.max() - 1e-9) for index, ours in zip(top1, expected))
    first = per_image[0][0] if per_image and per_image[0] else ("", 0.0)
    return {"client": client, "loads": True, "images": len(expected), "top1_matches": matches,
            "category_names": names, "scores_are_probabilities": probabilities,
            "ok": matches == len(expected) and names and probabilities,
            "detail": f"first image: {first[0] or '(no name)'} {first[1]:.3f}"}


def _categories(classification):
    return [(c.category_name, float(c.score)) for c in classification.categories]


def _run(client, open_classifier, images, expected):
    """Classifies every image with the client `open_classifier()` yields (a context manager giving
    pixels → classification), and summarizes; a client that refuses the model is a row too."""
    top1, per_image = [], []
    try:
        with open_classifier() as classify:
            for pixels in images:
                classification = classify(np.ascontiguousarray(pixels))
                top1.append(classification.categories[0].index)
                per_image.append(_categories(classification))
    except (RuntimeError, ValueError) as error:
        return {"client": client, "loads": False, "ok": False, "detail": _one_line(error)}
    return _summary(client, top1, expected, per_image)


def mediapipe_image_classifier(model_bytes, images, expected):
    """MediaPipe Tasks' ImageClassifier, default options, on uint8 RGB images at the model's size."""
    version = _version("mediapipe")
    if version is None:
        return {"client": "MediaPipe Tasks ImageClassifier", "loads": None, "ok": None,
                "detail": "not checked: mediapipe is not installed (pip install mediapipe)"}
    import mediapipe as mp
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.vision import image_classifier

    from pipeline.device.runner import quiet_native_stderr

    @contextlib.contextmanager
    def opened():
        options = image_classifier.ImageClassifierOptions(
            base_options=base_options.BaseOptions(model_asset_buffer=bytes(model_bytes)))
        with quiet_native_stderr(), image_classifier.ImageClassifier.create_from_options(options) as classifier:
            yield lambda pixels: classifier.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)).classifications[0]

    return _run(f"MediaPipe Tasks ImageClassifier (mediapipe {version})", opened, images, expected)


def task_library_image_classifier(model_bytes, images, expected, scratch_dir):
    """The TFLite Task Library's ImageClassifier (tflite-support 0.4.4), default options, run in its
    own environment as a subprocess (`pipeline.device.task_library`): its protobuf 3 modules do
    not import beside TensorFlow's protobuf, and its wheels stop at Python 3.11."""
    import json
    import os
    import subprocess

    from pipeline.device import task_library

    client = f"TFLite Task Library ImageClassifier (tflite-support {task_library.VERSION})"
    python = task_library.env_python()
    if python is None:
        return {"client": client, "loads": None, "ok": None,
                "detail": f"not checked: no Task Library environment at {task_library.env_dir()} "
                          "(python -m pipeline.device.task_library --create makes it)"}
    model_path = os.path.join(scratch_dir, "model.tflite")
    images_path = os.path.join(scratch_dir, "images.npy")
    with open(model_path, "wb") as f:
        f.write(model_bytes)
    np.save(images_path, np.ascontiguousarray(images, np.uint8))
    done = subprocess.run([python, task_library.__file__, model_path, images_path],
                          capture_output=True, text=True, timeout=600)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"client": client, "loads": False, "ok": False,
                "detail": f"the Task Library process failed (exit {done.returncode}): "
                          f"{_one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '')}"}
    if "error" in answer:
        return {"client": client, "loads": False, "ok": False, "detail": answer["error"]}
    per_image = [[(name, score) for _, name, score in categories] for categories in answer["results"]]
    top1 = [categories[0][0] for categories in answer["results"]]
    return _summary(client, top1, expected, per_image)


def litert_interpreter(model_bytes, inputs, expected):
    """A plain LiteRT Interpreter, as an app without the pipeline would use it: the model's own
    input tensor fed (the normalized image on the input's own scale and zero point: for the default
    export, the camera's uint8 pixels as they are), the output read back, top-1 compared with the
    pipeline's runner."""
    from pipeline.device.runner import load_runtime, quantize_input

    name, version, module = load_runtime()
    client = f"LiteRT Interpreter ({name} {version})"
    try:
        interpreter = module.Interpreter(model_content=bytes(model_bytes))
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        return {"client": client, "loads": False, "ok": False, "detail": _one_line(error)}
    given, returned = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1, finite = [], True
    for x in inputs:
        # The input's own grid: for the default export that is the camera's bytes as they are
        # (tests/test_clients.py::test_raw_bytes_are_the_default_exports_input).
        interpreter.set_tensor(given["index"], quantize_input(x[None], given))
        interpreter.invoke()
        out = interpreter.get_tensor(returned["index"])[0].astype(np.float64)
        scale, zero_point = returned["quantization"]
        if returned["dtype"] != np.float32 and scale:
            out = (out - zero_point) * scale
        finite = finite and bool(np.all(np.isfinite(out)))
        top1.append(int(np.argmax(out)))
    matches = sum(int(ours[index] >= ours.max() - 1e-9) for index, ours in zip(top1, expected))
    return {"client": client, "loads": True, "images": len(expected), "top1_matches": matches,
            "ok": matches == len(expected) and finite,
            "detail": f"fed {np.dtype(given['dtype']).name} {[int(d) for d in given['shape']]}, read "
                      f"{np.dtype(returned['dtype']).name} {[int(d) for d in returned['shape']]}"
                      + ("" if finite else "; outputs are not finite")}


SAMPLE_IMAGES = 16


def framed_sample(paths, spec):
    """(uint8 pixels (n, r, r, 3), float inputs) of the first decodable `paths`, framed and resized
    by the one preprocessing function: what every client is given."""
    from pipeline.stages.preprocess import normalize, pixels

    framed = []
    for path in paths:
        try:
            framed.append(pixels(path, spec))
        except (OSError, ValueError, SyntaxError):
            continue  # parity already reported what it skipped
    framed = np.stack(framed) if framed else np.zeros((0, spec.resolution, spec.resolution, 3), np.uint8)
    return framed, normalize(framed, spec)


def check_clients(model_bytes, paths, spec, config_files=None, scratch_dir=None):
    """Runs every client on the first of `paths`, framed as calibration frames them, and compares
    each one's top-1 with the pipeline's own interpreter on the same tensors."""
    import tempfile

    from pipeline.stages import deploy
    from pipeline.core.tflite import output_kind
    from pipeline.device.runner import Runner, load_runtime
    from pipeline.core.errors import PipelineInputError
    from pipeline.stages.parity_metrics import as_logits

    images, inputs = framed_sample(paths, spec)
    _, _, module = load_runtime()
    ours = as_logits(Runner(module, model_content=model_bytes)(inputs), output_kind(model_bytes))
    rows = [mediapipe_image_classifier(model_bytes, images, ours)]
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        rows.append(task_library_image_classifier(model_bytes, images, ours, scratch))
    rows.append(litert_interpreter(model_bytes, inputs, ours))
    if config_files is not None:
        # Not a client run: what the app reads, checked as the app would (the app's Kotlin core is
        # run on golden vectors by tests/test_android.py, not by an export).
        contract = "Android demo app contract (model_config.json, labels.txt, model)"
        try:
            deploy.check_files(config_files, "the export")
            rows.append({"client": contract, "loads": None, "ok": True,
                         "detail": "the files agree with each other and with the model "
                                   "(pipeline.deploy's check; no app was run)"})
        except PipelineInputError as error:
            rows.append({"client": contract, "loads": None, "ok": False, "detail": str(error)})
    return rows


def format_rows(rows):
    """One ✓/✗/– line per client, for the console."""
    lines = []
    for row in rows:
        mark = {True: "✓", False: "✗", None: "–"}[row.get("ok")]
        matches = f"top-1 as ours on {row['top1_matches']}/{row['images']}; " if "top1_matches" in row else ""
        named = "" if row.get("category_names", True) else "categories unnamed; "
        scores = "" if row.get("scores_are_probabilities", True) else "scores are not probabilities; "
        lines.append(f"{mark} {row['client']}: {matches}{named}{scores}{row.get('detail', '')}")
    return "\n".join(lines)
