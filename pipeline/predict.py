"""Classify images with an exported model: the first thing to run after exporting.

    python -m pipeline.predict OUT/ photo.jpg [more.jpg ...]           # an export folder
    python -m pipeline.predict model.tflite photo.jpg --top-k 3         # a model file alone

From an export folder it reads model_config.json (the exact preprocessing) and labels.txt. From a
`.tflite` alone it reads what the model carries: the labels packed in its metadata, and the
normalization; images are then framed as in calibration, a centered square of the whole frame.
Prints the top-k label names with probabilities and the time each image took.
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineInputError
from pipeline.preprocess import Preprocessing


@dataclasses.dataclass
class Classifier:
    """A model with everything needed to feed it and read its answer."""
    model: bytes
    labels: list
    spec: Preprocessing
    output_kind: str  # "probabilities" or "logits"
    source: str  # where labels and preprocessing came from


def _spec_from_config(config, where):
    try:
        pre = config["preprocessing"]
        return Preprocessing(resolution=int(pre["resize"]["size"][0]),
                             crop_fraction=float(pre["crop"]["crop_fraction"]),
                             mean=float(pre["normalize"]["mean"]),
                             std=float(pre["normalize"]["std"]))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PipelineInputError(f"{where} is not a pipeline config ({type(error).__name__}: "
                                 f"{error}): re-export the model") from None


def _spec_from_metadata(found, input_shape):
    """Preprocessing from the model's own metadata: x = (p − mean) / std, the whole frame's centre
    square resized to the input size."""
    from pipeline.metadata import normalization_options

    spec = Preprocessing(resolution=int(input_shape[1]))
    options = normalization_options(found) or {}
    if options.get("std"):
        return dataclasses.replace(spec, mean=float(options["mean"][0]), std=float(options["std"][0]))
    return spec


def load_classifier(path):
    """A Classifier from an export folder (config + labels) or from a `.tflite` file alone."""
    from pipeline import convert, metadata
    from pipeline.inspect import contract, read_model

    path = Path(path)
    if path.is_dir():
        config_path = path / "model_config.json"
        if not config_path.is_file():
            raise PipelineInputError(f"{path} has no model_config.json: pass an export folder or a "
                                     ".tflite file")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise PipelineInputError(f"{config_path} is not readable JSON ({error}): re-export the "
                                     "model") from None
        if not isinstance(config, dict):
            raise PipelineInputError(f"{config_path} is not a pipeline config: re-export the model")
        model = read_model(path / str(config.get("model_file", "model.tflite")))
        labels_path = path / str(config.get("labels_file", "labels.txt"))
        try:
            labels = labels_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise PipelineInputError(f"cannot read {labels_path} ({error}): re-export the model") from None
        spec = _spec_from_config(config, config_path)
        source = f"{config_path.name} and {labels_path.name}"
    else:
        model = read_model(path)
        info = contract(model, where=str(path))
        found, _ = metadata.read_metadata(model)
        labels = info["labels"]
        spec = _spec_from_metadata(found, info["inputs"][0]["shape"])
        source = "the model's metadata" if found else "no metadata: index labels, default preprocessing"
    output_kind = convert.output_kind(model)
    return Classifier(model, labels or [], spec, output_kind, source)


def probabilities(outputs, output_kind):
    if output_kind == "probabilities":
        return np.asarray(outputs, np.float64)
    from pipeline.verify import log_softmax

    return np.exp(log_softmax(outputs))


def predict(classifier, images, top_k=5, threads=1):
    """[(path, [(label, probability)], milliseconds)] for each image."""
    from pipeline.device_runner import Runner, load_runtime
    from pipeline.preprocess import preprocess

    _, _, module = load_runtime()
    runner = Runner(module, model_content=classifier.model, threads=threads)
    results = []
    for image in images:
        try:
            array = preprocess(image, classifier.spec)
        except FileNotFoundError:
            raise PipelineInputError(f"{image}: no such image file") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise PipelineInputError(f"{image} is not an image Pillow can decode ({error}): pass a "
                                     "JPEG, PNG, BMP or WebP file") from None
        start = time.perf_counter()
        outputs = runner(array[None])
        elapsed_ms = (time.perf_counter() - start) * 1e3
        scores = probabilities(outputs, classifier.output_kind)[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        names = [classifier.labels[i] if i < len(classifier.labels) else f"#{i}" for i in order]
        results.append((str(image), list(zip(names, (float(scores[i]) for i in order))), elapsed_ms))
    return results


def define_flags():
    from pipeline.cli import define

    define("integer", "top-k", 5, "How many classes to print per image.")
    define("integer", "threads", 1, "Interpreter threads.")


def main(argv):
    from absl import flags

    values = flags.FLAGS
    if len(argv) < 3:
        raise PipelineInputError("give a model and images: python -m pipeline.predict "
                                 "OUT/|MODEL.tflite IMAGE [IMAGE ...]")
    if values["top-k"].value < 1:
        raise PipelineInputError(f"--top-k must be at least 1 (got {values['top-k'].value})")
    classifier = load_classifier(argv[1])
    print(f"{argv[1]}: {classifier.output_kind} out; labels and preprocessing from {classifier.source}")
    for path, top, ms in predict(classifier, argv[2:], values["top-k"].value, values["threads"].value):
        print(f"{path}  ({ms:.1f} ms)")
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")


if __name__ == "__main__":
    from pipeline.cli import run

    define_flags()
    run(main)
