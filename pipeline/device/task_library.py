"""The TFLite Task Library's ImageClassifier as a client, in an environment of its own.

tflite-support (the Task Library's Python package) stopped at 0.4.4 (2023): wheels for Python
3.9–3.11 on x86-64 Linux, built against protobuf 3, whose generated modules do not import beside
TensorFlow 2.21's protobuf. So it runs in a virtual environment the project creates once and keeps
(`--create`), as a subprocess given a model and images, and answers in JSON. This file is that
subprocess too: it imports only the standard library, numpy and tflite_support.

    python -m pipeline.device.task_library --create          # once: the environment, ~30 s
    ENV/bin/python task_library.py MODEL.tflite IMAGES.npy   # what clients.py runs

The environment lives in $TFLITE_TASK_LIBRARY_ENV, default ~/.cache/tflite-pipeline-task-library.
"""

import json
import os
import shutil
import subprocess
import sys

VERSION = "0.4.4"
REQUIREMENTS = [f"tflite-support=={VERSION}", "numpy<2"]  # its compiled modules predate numpy 2
PYTHONS = ("python3.11", "python3.10", "python3.9")  # what its wheels exist for


def env_dir():
    return os.environ.get("TFLITE_TASK_LIBRARY_ENV") or os.path.join(
        os.path.expanduser("~"), ".cache", "tflite-pipeline-task-library")


def env_python(folder=None):
    """The environment's interpreter, or None when the environment was not created (or is broken:
    its marker file is written last)."""
    folder = folder or env_dir()
    python = os.path.join(folder, "bin", "python")
    ready = os.path.join(folder, "tflite-support-" + VERSION)
    return python if os.path.isfile(python) and os.path.isfile(ready) else None


def find_base_python():
    """A Python that tflite-support has wheels for: on PATH, or one pyenv installed."""
    for name in PYTHONS:
        found = shutil.which(name)
        if found:
            return found
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    versions = os.path.join(root, "versions")
    if os.path.isdir(versions):
        for name in sorted(os.listdir(versions), reverse=True):
            python = os.path.join(versions, name, "bin", "python")
            if name.split(".")[:2] in (["3", "11"], ["3", "10"], ["3", "9"]) and os.path.isfile(python):
                return python
    return None


def create(folder=None, base_python=None):
    """Creates the environment (a venv with tflite-support and its own protobuf); returns its
    interpreter. Needs the package index once; later runs reuse it."""
    folder = folder or env_dir()
    if env_python(folder):
        return env_python(folder)
    base_python = base_python or find_base_python()
    if base_python is None:
        raise RuntimeError(f"no Python {', '.join(p[6:] for p in PYTHONS)} here (tflite-support "
                           f"{VERSION} has wheels for no other): install one, e.g. apt install python3.11-venv")
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", folder], check=True)
    python = os.path.join(folder, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
                   check=True)
    with open(os.path.join(folder, "tflite-support-" + VERSION), "w") as marker:
        marker.write(" ".join(REQUIREMENTS) + "\n")
    return python


def classify(model_path, images_path):
    """[[[index, name, score], …] per image, every category, best first] from the Task Library's
    ImageClassifier with default options, on uint8 RGB images at the model's input size."""
    import numpy as np
    from tflite_support.task import core, processor, vision

    images = np.load(images_path)
    options = vision.ImageClassifierOptions(
        base_options=core.BaseOptions(file_name=model_path),
        classification_options=processor.ClassificationOptions(max_results=-1))
    classifier = vision.ImageClassifier.create_from_options(options)
    results = []
    for pixels in images:
        tensor = vision.TensorImage.create_from_array(np.ascontiguousarray(pixels))
        categories = classifier.classify(tensor).classifications[0].categories
        results.append([[c.index, c.category_name, float(c.score)] for c in categories])
    return results


def main(argv):
    if argv[1:] == ["--create"]:
        print(create())
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(json.dumps({"version": VERSION, "results": classify(argv[1], argv[2])}))
    except (RuntimeError, ValueError) as error:  # the Task Library refuses the model
        print(json.dumps({"version": VERSION, "error": " ".join(str(error).split())[:300]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
