"""Classify images with an exported model: the first thing to run after exporting.

    python -m pipeline.predict OUT/ photo.jpg [more.jpg ...]           # an export folder
    python -m pipeline.predict model.tflite photo.jpg --top-k 3         # a model file alone

From an export folder it reads model_config.json (the exact preprocessing) and labels.txt. From a
`.tflite` alone it reads what the model carries: the labels packed in its metadata, and the
normalization; images are then framed as in calibration, a centered square of the whole frame.
Prints the top-k label names with probabilities and the time each image took.
"""

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.stages.preprocess import Preprocessing


@dataclasses.dataclass
class Classifier:
    """A model with everything needed to feed it and read its answer."""
    model: bytes
    labels: list
    spec: Preprocessing
    output_kind: str  # "probabilities" or "logits"
    source: str  # where labels and preprocessing came from


def _spec_from_config(config, where):
    """Preprocessing from a config dict (load_classifier's has been through deploy.read_config)."""
    try:
        pre = config["preprocessing"]
        return Preprocessing(resolution=int(pre["resize"]["size"][0]),
                             crop_fraction=float(pre["crop"]["crop_fraction"]),
                             mean=float(pre["normalize"]["mean"]), std=float(pre["normalize"]["std"]))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PipelineInputError(f"{where} is not a pipeline config ({type(error).__name__}: "
                                 f"{error}): re-export the model") from None


def _spec_from_metadata(found, input_shape, where):
    """Preprocessing from the model's own metadata: x = (p − mean) / std, the whole frame's centre
    square resized to the input size."""
    from pipeline.stages.metadata import normalization_options

    spec = Preprocessing(resolution=int(input_shape[1]))
    options = normalization_options(found) or {}
    if not options.get("std"):
        return spec
    try:
        mean, std = float(options["mean"][0]), float(options["std"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        mean = std = float("nan")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise PipelineInputError(f"{where}: the metadata's input normalization (mean "
                                 f"{options.get('mean')}, std {options.get('std')}) is not a usable "
                                 "x = (pixel - mean) / std; re-export the model")
    return dataclasses.replace(spec, mean=mean, std=std)


def _read(path, what):
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PipelineInputError(f"{path}: no such {what}; pass an export folder (python -m "
                                 "pipeline.export --output OUT) or a .tflite file") from None
    except OSError as error:
        raise PipelineInputError(f"cannot read {path}: {error.strerror}; fix its permissions or "
                                 "re-export") from None


def load_classifier(path):
    """A Classifier from an export folder (config + labels) or from a `.tflite` file alone."""
    from pipeline.core import tflite
    from pipeline.core.readers import parse_labels
    from pipeline.core.tflite import read_model
    from pipeline.stages.deploy import classifier_problem, read_config
    from pipeline.stages.inspection import contract

    path = Path(path)
    if path.is_dir():
        config_path = path / "model_config.json"
        if not config_path.is_file():
            raise PipelineInputError(f"{path} has no model_config.json: pass an export folder or a "
                                     ".tflite file")
        config = read_config(_read(config_path, "config"), config_path)
        model_path = path / config["model_file"]
        model = read_model(model_path)
        labels_path = path / config["labels_file"]
        labels = parse_labels(_read(labels_path, "labels file"), labels_path)
        spec = _spec_from_config(config, config_path)
        source = f"{config_path.name} and {labels_path.name}"
    else:
        model_path = labels_path = path
        model = read_model(path)
        labels = spec = None
    info = contract(model, where=str(model_path))
    problem = classifier_problem(info["inputs"], info["outputs"])
    if problem:
        raise PipelineInputError(f"{model_path} {problem}; predict classifies images with an "
                                 "exported image classifier")
    resolution, classes = info["inputs"][0]["shape"][1], info["outputs"][0]["shape"][1]
    if spec is None:
        found = info["metadata"] or {}
        found = {} if "error" in found else found  # unreadable metadata: index labels, defaults
        labels = info["labels"]
        spec = _spec_from_metadata(found, info["inputs"][0]["shape"], model_path)
        source = "the model's metadata" if found else "no metadata: index labels, default preprocessing"
    elif spec.resolution != resolution:
        raise PipelineInputError(f"{config_path} resizes to {spec.resolution} px but {model_path} "
                                 f"takes {resolution} px: the files are from different exports; "
                                 "re-export")
    if labels and len(labels) != classes:
        raise PipelineInputError(f"{labels_path} has {len(labels)} labels for the {classes} outputs "
                                 f"of {model_path}: one label a line, in output order; re-export")
    return Classifier(model, labels or [], spec, tflite.output_kind(model), source)


def probabilities(outputs, output_kind):
    if output_kind == "probabilities":
        return np.asarray(outputs, np.float64)
    from pipeline.stages.parity_metrics import log_softmax

    return np.exp(log_softmax(outputs))


def _decoded(image, spec):
    """`preprocess` of one image file, or one line saying why it cannot be (Pillow raises many
    classes on bad data: load_images sorts them from the environment's errors)."""
    from pipeline.stages.preprocess import load_images

    try:
        loaded = load_images([image], spec, workers=1)
    except FileNotFoundError:
        raise PipelineInputError(f"{image}: no such image file") from None
    except IsADirectoryError:
        raise PipelineInputError(f"{image} is a folder: pass image files") from None
    except OSError as error:
        raise PipelineInputError(f"cannot read {image}: {error.strerror}; fix its permissions") from None
    if loaded.skipped:
        raise PipelineInputError(f"{image} is not an image Pillow can decode: {loaded.skipped[0][1]}; "
                                 "pass a JPEG, PNG, BMP or WebP file")
    return loaded.arrays[0]


def predict(classifier, images, top_k=5, threads=1):
    """[(path, [(label, probability)], milliseconds)] for each image."""
    from pipeline.device.runner import Runner, load_runtime

    arrays = [_decoded(image, classifier.spec) for image in images]  # every image, before any answer
    _, _, module = load_runtime()
    runner = Runner(module, model_content=classifier.model, threads=threads)
    results = []
    for image, array in zip(images, arrays):
        start = time.perf_counter()
        outputs = runner(array[None])
        elapsed_ms = (time.perf_counter() - start) * 1e3
        scores = probabilities(outputs, classifier.output_kind)[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        names = [classifier.labels[i] if i < len(classifier.labels) else f"#{i}" for i in order]
        results.append((str(image), list(zip(names, (float(scores[i]) for i in order))), elapsed_ms))
    return results


OPTIONS = (
    option("integer", "top-k", 5, "How many classes to print per image."),
    option("integer", "threads", 1, "Interpreter threads."),
)


@dataclasses.dataclass
class PredictRun:
    """What predict found: the classifier read, each image's answer, the files of given folders it
    did not take."""

    classifier: object  # Classifier: model bytes, labels, preprocessing, where they came from
    predictions: list  # [(path, [(label, probability)], milliseconds)]
    skipped: list  # [(path, reason)]: in a given folder, not an image or not decodable


def images_in(paths):
    """(image files, skipped): each file as given; each folder's image files as calibration takes a
    folder (by extension, recursively), the other files in it named as skipped."""
    from pipeline.stages.calibrate import scan_images

    files, skipped = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        taken = scan_images(path).files
        files.extend(taken)
        chosen = set(taken)
        skipped.extend((other, "not an image file (jpg, jpeg, png, bmp, webp)")
                       for other in sorted(p for p in path.rglob("*") if p.is_file() and p not in chosen
                                           and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        if not taken:
            raise PipelineInputError(f"no images (jpg, jpeg, png, bmp, webp) in {path}: pass image "
                                     "files or a folder of them")
    return files, skipped


def predict_images(model, images, top_k=5, threads=1):
    """PredictRun of `images` (files, or folders: their images) from `model` (an export folder or a
    .tflite): the checks of the command (top_k and threads at least 1, images given) then
    `predict`. A file named on its own that is not a decodable image is refused in one line; in a
    folder, it is skipped and named, as calibration does."""
    from pipeline.stages.preprocess import load_images

    if not images:
        raise PipelineInputError("give a model and images: python -m pipeline.predict "
                                 "OUT/|MODEL.tflite IMAGE|FOLDER [IMAGE|FOLDER ...]")
    if top_k < 1:
        raise PipelineInputError(f"--top-k must be at least 1 (got {top_k})")
    if threads < 1:
        raise PipelineInputError(f"--threads must be at least 1 (got {threads})")
    classifier = load_classifier(model)
    named = {str(p) for p in images if not Path(p).is_dir()}
    files, skipped = images_in(images)
    in_folders = [f for f in files if str(f) not in named]
    undecodable = {str(path): reason for path, reason in
                   (load_images(in_folders, classifier.spec, workers=1).skipped if in_folders else [])}
    skipped += [(f, undecodable[str(f)]) for f in in_folders if str(f) in undecodable]
    taken = [str(f) for f in files if str(f) not in undecodable]
    return PredictRun(classifier, predict(classifier, taken, top_k, threads),
                      [(str(path), reason) for path, reason in sorted(skipped)])
