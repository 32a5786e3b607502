"""What parity is measured on: an evaluation folder (class sub-folders → output indices by label
name or ImageNet synset), or the calibration folder's held-out images."""

import dataclasses
import re

from pipeline.core.errors import PipelineInputError
from pipeline.stages import calibrate


@dataclasses.dataclass
class EvalSet:
    paths: list
    labels: list  # output index per image, or None when unlabelled
    source: str  # what the images are, for the report
    root: str = None  # the folder the images' names are relative to (per-image results)


def normalize_label(name):
    """A class or label name as folders are matched to labels: case, spaces, _ and - ignored."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def label_index(class_names, built):
    """Maps class-folder names to output indices: ImageNet synsets, else the model's label names.

    Returns (mapping, unknown names)."""
    if built.synsets is not None and all(n in built.synsets for n in class_names):
        position = {s: i for i, s in enumerate(built.synsets)}
        return {n: position[n] for n in class_names}, []
    by_label = {}
    for i, label in enumerate(built.labels):
        by_label.setdefault(normalize_label(label), i)
    mapping = {n: by_label.get(normalize_label(n)) for n in class_names}
    return mapping, sorted(n for n, i in mapping.items() if i is None)


def folder_labels(folder, paths, built):
    """(output index of each path's class, unknown class names); (None, []) when unlabelled."""
    if not folder.labelled:
        return None, []
    mapping, unknown = label_index(folder.class_names, built)
    if unknown:
        return None, unknown
    classes = dict(zip(folder.files, folder.classes))
    return [mapping[classes[p]] for p in paths], []


def eval_set_from_folder(directory, built, samples=None, seed=0):
    folder = calibrate.scan_images(directory)
    if not folder.files:
        raise PipelineInputError(
            f"no images (jpg, jpeg, png, bmp, webp) in evaluation folder {directory}: "
            "pass a folder with one sub-folder of images per class"
        )
    paths = folder.files
    if samples:
        paths, _ = calibrate.sample_files(folder, samples, seed)
        paths.sort()
    labels, unknown = folder_labels(folder, paths, built)
    if unknown:
        raise PipelineInputError(
            f"evaluation folder {directory} has classes that are not model labels "
            f"({', '.join(unknown[:5])}{'…' if len(unknown) > 5 else ''}): name the sub-folders "
            "after labels.txt entries or ImageNet synsets (n01440764), or pass --labels"
        )
    return EvalSet(paths, labels, str(directory) if folder.labelled else f"{directory} (unlabelled)",
                   root=str(folder.root))


def eval_set_from_held_out(calibration, built):
    """The calibration folder's images that calibration did not use (labels where they map)."""
    paths = sorted(calibration.held_out)
    source = f"{calibration.folder.root} (held-out: not used for calibration)"
    if not paths:
        # Everything was used to calibrate: measure in-sample rather than not at all, and say so.
        paths = sorted(calibration.used)
        source = f"{calibration.folder.root} (IN-SAMPLE: every image was used for calibration)"
    # Class folders that are not model labels just make this parity label-free.
    labels, _ = folder_labels(calibration.folder, paths, built)
    return EvalSet(paths, labels, source, root=str(calibration.folder.root))


def eval_set_from_settings(settings, built, calibration):
    """--eval (all of it, or --eval-samples drawn by --seed), else the calibration folder's
    labelled held-out images."""
    directory = settings["eval"] or calibration.default_eval_dir
    if directory:
        return eval_set_from_folder(directory, built, settings["eval-samples"],
                                    settings["seed"])
    return eval_set_from_held_out(calibration, built)
