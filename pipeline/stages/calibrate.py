"""Stage 2: the representative dataset the int8 converter calibrates activation ranges on.

Images come from a folder (recursive; class sub-folders allowed), sampled deterministically by seed
and stratified by class, so that 300 images of a 10-class folder are 30 of each, not whatever sorts
first. The images not drawn are kept as the held-out set: parity is measured on them when the user
gives no labelled evaluation folder, never on the images the ranges were fitted to.

When the default folder holds no images and the weights are ImageNet's, Imagenette (a public
10-class ImageNet subset) is fetched once through Keras' own download cache, as Ultralytics does for
its calibration sets; its `val/` split is then offered as the default evaluation set.

    python -m pipeline.calibrate --calibration DIR --calibration-samples 300 --seed 0
"""

import dataclasses
import os
import random
import sys
from pathlib import Path

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.core.files import files_sha256
from pipeline.stages.preprocess import IMAGE_EXTENSIONS, load_images

DEFAULT_CALIBRATION_DIR = "calibration_data"
DEFAULT_SAMPLES = 300
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
IMAGENETTE_MD5 = "e793b78cc4c9e9a4ccc0c1155377a412"


@dataclasses.dataclass
class ImageFolder:
    """Image files under a root, each with its class (first sub-folder) or None for a flat folder."""

    root: Path
    files: list  # sorted Paths
    classes: list  # class name of each file, or None

    @property
    def class_names(self):
        return sorted({c for c in self.classes if c is not None})

    @property
    def labelled(self):
        return bool(self.files) and all(c is not None for c in self.classes)


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    directory: str = DEFAULT_CALIBRATION_DIR
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    fetch_url: str = IMAGENETTE_URL
    fetch_md5: str = IMAGENETTE_MD5
    allow_fetch: bool = False  # true when the folder is the default one and the weights are ImageNet


@dataclasses.dataclass
class CalibrationSet:
    folder: ImageFolder
    used: list  # Paths the converter saw, in feeding order
    held_out: list  # Paths not used for calibration (label-free parity runs on them)
    arrays: object  # float32 (n, r, r, 3), exactly `preprocess` of `used`
    skipped: list  # [(path, reason)] undecodable files met while drawing the sample
    sha256: str  # of the used files' names and bytes, in order
    fetched_from: str = None  # URL when the set was downloaded
    default_eval_dir: str = None  # the fetched set's val split

    def summary(self):
        return {
            "directory": str(self.folder.root),
            "images_found": len(self.folder.files),
            "classes": len(self.folder.class_names),
            "used": len(self.used),
            "held_out": len(self.held_out),
            "skipped": [{"file": p, "reason": r} for p, r in self.skipped],
            "sha256": self.sha256,
            "fetched_from": self.fetched_from,
        }


IMAGE_LIST_FORMAT = "pipeline.image_list"


def write_image_list(root, files, note):
    """An image list (JSON): a chosen subset of a folder, e.g. pipeline.train's held-out split, that
    --calibration and --eval take in place of a folder. Paths are relative to `root`; the class of a
    file is its first path component, as in a folder."""
    import json

    return json.dumps({
        "format": IMAGE_LIST_FORMAT, "version": 1, "note": note,
        "root": str(Path(root).absolute()),
        "files": [Path(f).relative_to(root).as_posix() for f in files],
    }, indent=1, ensure_ascii=False) + "\n"


def read_image_list(path):
    """The ImageFolder an image list names; every listed file must still exist."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PipelineInputError(f"cannot read image list {path}: {error}; pass a folder of images "
                                 "or a list written by pipeline.train") from None
    if (not isinstance(data, dict) or data.get("format") != IMAGE_LIST_FORMAT
            or not isinstance(data.get("root"), str) or not isinstance(data.get("files"), list)
            or not all(isinstance(f, str) and f and not Path(f).is_absolute()
                       and ".." not in Path(f).parts for f in data["files"])):
        # Entries are relative to root, never absolute or climbing out of it.
        raise PipelineInputError(f"{path} is not an image list (a JSON file written by "
                                 "pipeline.train with format, root and files): pass a folder of images")
    root = Path(data["root"])
    files = [root / f for f in data["files"]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise PipelineInputError(
            f"image list {path} names {len(missing)} files that do not exist (first: {missing[0]}): "
            f"the images were moved from {root}; re-run pipeline.train or pass a folder")
    classes = [Path(f).parts[0] if len(Path(f).parts) > 1 else None for f in data["files"]]
    if any(c is None for c in classes):
        classes = [None] * len(files)
    order = sorted(range(len(files)), key=lambda i: data["files"][i])
    return ImageFolder(root=root, files=[files[i] for i in order], classes=[classes[i] for i in order])


def is_image_list(path):
    return Path(path).is_file() and Path(path).suffix.lower() == ".json"


def scan_images(root):
    """Lists image files under `root`, recursively, sorted; the class of a file is its top folder.

    `root` may also be an image list (`write_image_list`): then exactly the files it names."""
    if is_image_list(root):
        return read_image_list(root)
    root = Path(root)
    if not root.exists():
        raise PipelineInputError(
            f"image folder {root} does not exist: create it and put images in it, or pass another folder"
        )
    if not root.is_dir():
        raise PipelineInputError(f"{root} is not a folder: pass a folder of images")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                files.append(Path(dirpath) / name)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    classes = []
    for path in files:
        parts = path.relative_to(root).parts
        classes.append(parts[0] if len(parts) > 1 else None)
    if any(c is None for c in classes) and any(c is not None for c in classes):
        # Loose files beside class folders: treat the folder as unlabelled rather than guess.
        classes = [None] * len(files)
    return ImageFolder(root=root, files=files, classes=classes)


def stratified_order(folder, seed):
    """All files in a deterministic order that interleaves classes: class-balanced prefixes.

    Each class's files are shuffled with `seed`, then dealt round-robin over the sorted classes, so
    the first n files of the order are a stratified random sample of size n.
    """
    rng = random.Random(seed)
    by_class = {}
    for path, cls in zip(folder.files, folder.classes):
        by_class.setdefault(cls or "", []).append(path)
    queues = []
    for cls in sorted(by_class):
        members = list(by_class[cls])
        rng.shuffle(members)
        queues.append(members)
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


def sample_files(folder, n, seed):
    """(used, held_out): the first n of `stratified_order`, and the rest."""
    order = stratified_order(folder, seed)
    return order[:n], order[n:]


def fetch_imagenette(url, md5):
    """Downloads (or finds in Keras' cache) the Imagenette tarball; returns (train_dir, val_dir)."""
    import keras

    try:
        extracted = keras.utils.get_file(
            fname="imagenette2-160.tgz", origin=url, md5_hash=md5, extract=True
        )
    except Exception as error:  # keras wraps URL and hash failures in bare Exception/ValueError
        raise PipelineInputError(
            f"the calibration folder has no images and fetching Imagenette from {url} failed "
            f"({str(error).splitlines()[0]}): put ~300 representative images in the folder, or pass "
            "--calibration DIR"
        ) from None
    for candidate in [Path(extracted)] + sorted(Path(extracted).glob("*")):
        if (candidate / "train").is_dir():
            return candidate / "train", candidate / "val"
    raise PipelineInputError(
        f"the archive from {url} has no train/ folder: check --calibration-url"
    )


def representative_dataset(cfg, spec, progress=None):
    """Draws and preprocesses the calibration sample. Returns a CalibrationSet."""
    if cfg.samples <= 0:
        raise PipelineInputError(
            f"--calibration-samples must be at least 1 (got {cfg.samples}); ~300 is typical"
        )
    root = Path(cfg.directory)
    folder = scan_images(root)
    fetched_from = default_eval = None
    if not folder.files:
        if not cfg.allow_fetch:
            raise PipelineInputError(
                f"no images (jpg, jpeg, png, bmp, webp) in {root}: add ~{DEFAULT_SAMPLES} "
                "representative images, preferably in class sub-folders"
            )
        train_dir, val_dir = fetch_imagenette(cfg.fetch_url, cfg.fetch_md5)
        folder = scan_images(train_dir)
        fetched_from = cfg.fetch_url
        default_eval = str(val_dir) if val_dir.is_dir() else None
        if not folder.files:
            raise PipelineInputError(f"the fetched set {train_dir} holds no images")

    order = stratified_order(folder, cfg.seed)
    used, skipped, arrays = [], [], []
    position = 0
    # Draw in order; a corrupt file is skipped and the next one in the stratified order takes its
    # place, so the sample keeps its size when a few files are bad.
    while len(used) < cfg.samples and position < len(order):
        batch = order[position : position + (cfg.samples - len(used))]
        position += len(batch)
        try:
            loaded = load_images(batch, spec, progress=progress)
        except OSError as error:
            raise PipelineInputError(
                f"cannot read {error.filename}: {error.strerror}; fix its permissions or remove it"
            ) from None
        used += loaded.paths
        skipped += loaded.skipped
        arrays.append(loaded.arrays)
    if not used:
        # One line, not a warning per file first: the first file's reason stands for the rest.
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise PipelineInputError(
            f"none of the {len(order)} images in {folder.root} could be decoded{first}: "
            "replace them with valid jpg/png/bmp/webp files"
        )
    for path, reason in skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if len(used) < cfg.samples:
        print(
            f"warning: only {len(used)} usable images in {folder.root}, fewer than the "
            f"{cfg.samples} asked for; ranges may be less reliable",
            file=sys.stderr,
        )
    import numpy as np

    skipped_paths = {p for p, _ in skipped}
    return CalibrationSet(
        folder=folder,
        used=used,
        held_out=[p for p in order[position:] if str(p) not in skipped_paths],
        arrays=np.concatenate(arrays),
        skipped=skipped,
        sha256=files_sha256(used),
        fetched_from=fetched_from,
        default_eval_dir=default_eval,
    )


OPTIONS = (
    option("string", "calibration", DEFAULT_CALIBRATION_DIR,
           "Folder of representative images (recursive; class sub-folders allowed)."),
    option("integer", "calibration-samples", DEFAULT_SAMPLES,
           "How many images to calibrate on (stratified by class, drawn by --seed)."),
    option("integer", "seed", 0, "Seed for sampling (and for --weights random)."),
    option("string", "calibration-url", IMAGENETTE_URL,
           "Where to fetch Imagenette when the default folder is empty and the weights are "
           "ImageNet."),
    option("string", "calibration-md5", IMAGENETTE_MD5, "md5 of the --calibration-url archive."),
)


def config_from_settings(settings, imagenet_weights):
    return CalibrationConfig(
        directory=settings["calibration"],
        samples=settings["calibration-samples"],
        seed=settings["seed"],
        fetch_url=settings["calibration-url"],
        fetch_md5=settings["calibration-md5"],
        # Only the default folder (which ships empty) is filled by fetching; a folder the user named
        # and left empty is a mistake to report.
        allow_fetch=imagenet_weights and not settings.given("calibration"),
    )


def progress_bar(desc):
    from tqdm import tqdm

    return lambda iterable, total: tqdm(iterable, total=total, desc=desc, unit="img", leave=False)
