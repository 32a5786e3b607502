"""The clients apps ship with, run on the exported model as it is: the report's "clients" section.

Each client is run, not assumed: MediaPipe Tasks' ImageClassifier (the runtime of Google's Android
image-classification sample, successor of the Task Library) with no options, the TFLite Task
Library's ImageClassifier where `tflite-support` installs (its wheels stop at Python 3.11, x86
Linux), a plain LiteRT Interpreter, and the Android demo's contract. Each is given the same images
at the model's input size, so its top-1 can be compared with the pipeline's own interpreter: every
client sees exactly the pixels calibration and parity saw.

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

    from pipeline.device_runner import quiet_native_stderr

    @contextlib.contextmanager
    def opened():
        options = image_classifier.ImageClassifierOptions(
            base_options=base_options.BaseOptions(model_asset_buffer=bytes(model_bytes)))
        with quiet_native_stderr(), image_classifier.ImageClassifier.create_from_options(options) as classifier:
            yield lambda pixels: classifier.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)).classifications[0]

    return _run(f"MediaPipe Tasks ImageClassifier (mediapipe {version})", opened, images, expected)


def task_library_image_classifier(model_bytes, images, expected, scratch_dir):
    """The TFLite Task Library's ImageClassifier (tflite-support), where it installs."""
    version = _version("tflite-support")
    client = f"TFLite Task Library ImageClassifier (tflite-support {version})"
    if version is None:
        return {"client": "TFLite Task Library ImageClassifier", "loads": None, "ok": None,
                "detail": "not checked: tflite-support is not installed (its last wheels, 2023, are "
                          "for Python ≤ 3.11 on x86 Linux)"}
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # it prints its own import failures
            from tflite_support.task import core, vision
    except Exception as error:  # its protobuf-3 modules fail to import beside TensorFlow's protobuf
        return {"client": client, "loads": None, "ok": None,
                "detail": f"not checked: tflite-support does not import here ({_one_line(error)})"}
    import os

    path = os.path.join(scratch_dir, "model.tflite")
    with open(path, "wb") as f:
        f.write(model_bytes)

    @contextlib.contextmanager
    def opened():
        options = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=path))
        classifier = vision.ImageClassifier.create_from_options(options)
        yield lambda pixels: classifier.classify(
            vision.TensorImage.create_from_array(pixels)).classifications[0]

    return _run(client, opened, images, expected)


SAMPLE_IMAGES = 16


def framed_sample(paths, spec):
    """(uint8 pixels (n, r, r, 3), float inputs) of the first decodable `paths`, framed and resized
    by the one preprocessing function: what every client is given."""
    from pipeline.preprocess import normalize, pixels

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

    from pipeline import deploy
    from pipeline.convert import output_kind
    from pipeline.device_runner import Runner, load_runtime
    from pipeline.errors import PipelineInputError
    from pipeline.verify import as_logits

    images, inputs = framed_sample(paths, spec)
    _, _, module = load_runtime()
    ours = as_logits(Runner(module, model_content=model_bytes)(inputs), output_kind(model_bytes))
    rows = [mediapipe_image_classifier(model_bytes, images, ours)]
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        rows.append(task_library_image_classifier(model_bytes, images, ours, scratch))
    rows.append({"client": f"LiteRT Interpreter (ai-edge-litert {_version('ai-edge-litert')})",
                 "loads": True, "ok": True, "images": len(images),
                 "detail": "the pipeline's own runner: parity and the other clients' comparison ran on it"})
    if config_files is not None:
        try:
            deploy.check_files(config_files, "the export")
            rows.append({"client": "Android demo app (android_demo/)", "loads": True, "ok": True,
                         "detail": "model_config.json, labels.txt and the model agree "
                                   "(pipeline.deploy's contract check; the app reads the config)"})
        except PipelineInputError as error:
            rows.append({"client": "Android demo app (android_demo/)", "loads": False, "ok": False,
                         "detail": str(error)})
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
