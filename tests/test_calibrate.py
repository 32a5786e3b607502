"""pipeline.calibrate on real folders of Pillow-written images, no mocks.

The Imagenette fetch runs offline: a small tarball with Imagenette's layout is built in tmp and
fetched through Keras' real download cache from a file:// URL into a fresh KERAS_HOME.
"""

import hashlib
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.stages import calibrate
from pipeline.core.files import files_sha256
from pipeline.stages.calibrate import (
    CalibrationConfig,
    representative_dataset,
    sample_files,
    scan_images,
    stratified_order,
)
from pipeline.core.errors import PipelineInputError
from pipeline.stages.preprocess import Preprocessing, preprocess

SPEC = Preprocessing(resolution=96)


def _jpeg(path, seed, size=(64, 48), fmt=None):
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path, format=fmt, quality=90)
    return path


def _touch(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _class_folder(root, sizes):
    """root/<class>/<class>_NNN.jpg, real small JPEGs."""
    seed = 0
    for name, count in sizes.items():
        for i in range(count):
            _jpeg(Path(root) / name / f"{name}_{i:03d}.jpg", seed)
            seed += 1
    return Path(root)


def _empty_class_folder(root, sizes):
    """Same layout with empty files: enough for scanning and sampling (nothing is decoded)."""
    for name, count in sizes.items():
        for i in range(count):
            _touch(Path(root) / name / f"{name}_{i:03d}.jpg")
    return Path(root)


def _class_of(folder, path):
    return folder.classes[folder.files.index(path)]


# --- scan_images --------------------------------------------------------------------------------


def test_scan_images_recursive_filtered_sorted_with_classes(tmp_path):
    root = tmp_path / "images"
    wanted = [
        "birds/a.JPG",
        "birds/nested/deeper/b.png",
        "cats/c.jpeg",
        "cats/d.BMP",
        "cats/e.webp",
        "cats/f.Jpeg",
    ]
    ignored = [
        "birds/notes.txt",
        "birds/.hidden.jpg",
        ".hidden_dir/g.jpg",
        "cats/.thumbs/h.jpg",
        "cats/anim.gif",
        "cats/scan.tiff",
        "cats/jpg",
        "cats/photo.jpg.txt",
    ]
    for rel in wanted + ignored:
        _touch(root / rel)

    folder = scan_images(root)
    assert [p.relative_to(root).as_posix() for p in folder.files] == sorted(wanted)
    assert all(isinstance(p, Path) and p.is_file() for p in folder.files)
    assert folder.classes == ["birds", "birds", "cats", "cats", "cats", "cats"]
    assert folder.class_names == ["birds", "cats"]
    assert folder.labelled
    assert folder.root == root


def test_scan_images_is_sorted_by_relative_path_not_creation_order(tmp_path):
    for rel in ["z/9.jpg", "a/2.jpg", "m/1.png", "a/10.jpg", "a/1.jpg"]:
        _touch(tmp_path / rel)
    folder = scan_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in folder.files] == [
        "a/1.jpg", "a/10.jpg", "a/2.jpg", "m/1.png", "z/9.jpg"
    ]
    assert folder.classes == ["a", "a", "a", "m", "z"]


def test_scan_images_flat_folder_has_no_classes(tmp_path):
    for name in ["b.png", "a.jpg", "c.webp"]:
        _touch(tmp_path / name)
    folder = scan_images(tmp_path)
    assert [p.name for p in folder.files] == ["a.jpg", "b.png", "c.webp"]
    assert folder.classes == [None, None, None]
    assert folder.class_names == []
    assert not folder.labelled


def test_scan_images_loose_files_beside_class_folders_is_unlabelled(tmp_path):
    _touch(tmp_path / "loose.jpg")
    _touch(tmp_path / "cats" / "c.jpg")
    folder = scan_images(tmp_path)
    assert len(folder.files) == 2
    assert folder.classes == [None, None]


def test_scan_images_empty_folder(tmp_path):
    folder = scan_images(tmp_path)
    assert folder.files == [] and folder.classes == [] and not folder.labelled


def test_scan_images_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(PipelineInputError) as error:
        scan_images(missing)
    assert str(missing) in str(error.value)
    assert error.value.exit_code == 2


def test_scan_images_file_instead_of_folder(tmp_path):
    path = _touch(tmp_path / "one.jpg")
    with pytest.raises(PipelineInputError, match="not a folder"):
        scan_images(path)


# --- stratified sampling ------------------------------------------------------------------------

SIZES = {"ants": 30, "bees": 10, "crabs": 5}


@pytest.fixture()
def unequal_folder(tmp_path):
    return scan_images(_empty_class_folder(tmp_path / "unequal", SIZES))


def test_sample_is_stratified_by_class(unequal_folder):
    used, held_out = sample_files(unequal_folder, 9, seed=0)
    assert len(used) == 9
    counts = Counter(_class_of(unequal_folder, p) for p in used)
    assert counts == {"ants": 3, "bees": 3, "crabs": 3}


def test_sample_runs_out_of_small_classes_gracefully(unequal_folder):
    used, _ = sample_files(unequal_folder, 21, seed=0)
    counts = Counter(_class_of(unequal_folder, p) for p in used)
    # 5 rounds of 3 take all crabs; the remaining 6 alternate between ants and bees.
    assert counts == {"ants": 8, "bees": 8, "crabs": 5}


def test_sample_is_deterministic_by_seed(unequal_folder):
    a, a_rest = sample_files(unequal_folder, 9, seed=7)
    b, b_rest = sample_files(unequal_folder, 9, seed=7)
    assert a == b and a_rest == b_rest
    c, _ = sample_files(unequal_folder, 9, seed=8)
    assert c != a
    assert set(c) != set(a)  # a different draw, not just a different order


def test_sample_used_and_held_out_partition_the_files(unequal_folder):
    used, held_out = sample_files(unequal_folder, 9, seed=3)
    assert len(used) == 9 and len(held_out) == 45 - 9
    assert not set(used) & set(held_out)
    assert sorted(used + held_out) == sorted(unequal_folder.files)
    assert len(set(used + held_out)) == 45  # no duplicates


def test_stratified_order_prefixes_are_balanced(unequal_folder):
    order = stratified_order(unequal_folder, seed=1)
    assert sorted(order) == sorted(unequal_folder.files)
    classes = [_class_of(unequal_folder, p) for p in order]
    assert classes[:15] == ["ants", "bees", "crabs"] * 5  # round-robin over sorted classes


def test_sample_of_flat_folder_is_seeded_shuffle(tmp_path):
    for i in range(20):
        _touch(tmp_path / f"{i:02d}.jpg")
    folder = scan_images(tmp_path)
    used, held_out = sample_files(folder, 5, seed=0)
    assert len(used) == 5 and sorted(used + held_out) == folder.files
    assert used != folder.files[:5]  # shuffled, not "whatever sorts first"
    assert used == sample_files(folder, 5, seed=0)[0]


# --- representative_dataset ---------------------------------------------------------------------


@pytest.fixture()
def jpeg_folder(tmp_path):
    return _class_folder(tmp_path / "calib", {"ants": 4, "bees": 4, "crabs": 4})


def test_representative_dataset_draws_requested_sample(jpeg_folder):
    cfg = CalibrationConfig(directory=str(jpeg_folder), samples=6, seed=0)
    result = representative_dataset(cfg, SPEC)
    assert len(result.used) == 6
    assert result.arrays.shape == (6, 96, 96, 3) and result.arrays.dtype == np.float32
    # exactly `preprocess` of `used`, in feeding order
    for path, array in zip(result.used, result.arrays):
        np.testing.assert_array_equal(array, preprocess(path, SPEC))
    folder = result.folder
    assert Counter(_class_of(folder, p) for p in result.used) == {"ants": 2, "bees": 2, "crabs": 2}
    assert result.used == stratified_order(folder, 0)[:6]
    assert not set(result.used) & set(result.held_out)
    assert sorted(result.used + result.held_out) == sorted(folder.files)
    assert result.skipped == []
    assert result.sha256 == files_sha256(result.used)
    assert result.fetched_from is None and result.default_eval_dir is None
    summary = result.summary()
    assert summary["used"] == 6 and summary["held_out"] == 6 and summary["classes"] == 3
    assert summary["images_found"] == 12 and summary["sha256"] == result.sha256


def test_representative_dataset_is_deterministic(jpeg_folder):
    cfg = CalibrationConfig(directory=str(jpeg_folder), samples=5, seed=4)
    a = representative_dataset(cfg, SPEC)
    b = representative_dataset(cfg, SPEC)
    assert a.used == b.used and a.sha256 == b.sha256
    assert a.arrays.tobytes() == b.arrays.tobytes()


def test_more_samples_than_images_uses_all(jpeg_folder, capsys):
    cfg = CalibrationConfig(directory=str(jpeg_folder), samples=50, seed=0)
    result = representative_dataset(cfg, SPEC)
    assert len(result.used) == 12 and result.held_out == []
    assert result.arrays.shape == (12, 96, 96, 3)
    assert "only 12 usable images" in capsys.readouterr().err


def test_corrupt_image_is_skipped_and_replaced(jpeg_folder, capsys):
    folder = scan_images(jpeg_folder)
    order = stratified_order(folder, 0)
    corrupt = order[1]  # certainly drawn in a sample of 4
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])

    cfg = CalibrationConfig(directory=str(jpeg_folder), samples=4, seed=0)
    result = representative_dataset(cfg, SPEC)
    assert len(result.used) == 4  # the sample kept its size
    assert corrupt not in result.used
    assert result.used == [p for p in order[:5] if p != corrupt]  # the next image took its place
    assert [p for p, _ in result.skipped] == [str(corrupt)]
    assert result.summary()["skipped"][0]["file"] == str(corrupt)
    assert result.arrays.shape == (4, 96, 96, 3)
    assert corrupt not in result.held_out
    assert result.held_out == order[5:]
    assert str(corrupt) in capsys.readouterr().err


def test_all_images_corrupt_is_an_input_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"not an image")
    cfg = CalibrationConfig(directory=str(tmp_path), samples=2)
    with pytest.raises(PipelineInputError, match="could be decoded"):
        representative_dataset(cfg, SPEC)


def test_zero_samples_is_an_input_error(jpeg_folder):
    with pytest.raises(PipelineInputError, match="at least 1"):
        representative_dataset(CalibrationConfig(directory=str(jpeg_folder), samples=0), SPEC)
    with pytest.raises(PipelineInputError):
        representative_dataset(CalibrationConfig(directory=str(jpeg_folder), samples=-3), SPEC)


def test_named_empty_folder_is_an_input_error(tmp_path):
    empty = tmp_path / "my_images"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    cfg = CalibrationConfig(directory=str(empty), samples=4, allow_fetch=False)
    with pytest.raises(PipelineInputError) as error:
        representative_dataset(cfg, SPEC)
    assert str(empty) in str(error.value)
    assert "\n" not in str(error.value)


def test_sha256_changes_when_a_used_image_changes(jpeg_folder):
    cfg = CalibrationConfig(directory=str(jpeg_folder), samples=4, seed=0)
    before = representative_dataset(cfg, SPEC)
    _jpeg(before.used[2], seed=999)  # rewrite one used image with different content
    after = representative_dataset(cfg, SPEC)
    assert after.used == before.used
    assert after.sha256 != before.sha256
    # ...while a held-out image changing does not change the calibration hash.
    _jpeg(after.held_out[0], seed=1234)
    assert representative_dataset(cfg, SPEC).sha256 == after.sha256


# --- Imagenette fetch, offline --------------------------------------------------------------------

SYNSETS = ("n01440764", "n02102040")


@pytest.fixture(scope="module")
def imagenette_tarball(tmp_path_factory):
    """imagenette2-160.tgz with Imagenette's layout: 2 classes x 4 images in train and in val."""
    base = tmp_path_factory.mktemp("imagenette_src")
    top = base / "imagenette2-160"
    seed = 0
    for split in ("train", "val"):
        for synset in SYNSETS:
            for i in range(4):
                _jpeg(top / split / synset / f"{synset}_{split}_{i}.JPEG", seed, fmt="JPEG")
                seed += 1
    tarball = base / "imagenette2-160.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(top, arcname="imagenette2-160")
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    return tarball, md5


@pytest.fixture()
def fresh_keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    home.mkdir()  # Keras falls back to /tmp/.keras when the folder is not writable (or absent)
    monkeypatch.setenv("KERAS_HOME", str(home))
    # Keras reads KERAS_HOME once, at import: when another test imported it first, the variable
    # alone would send the download to that earlier home (or ~/.keras). Point the loaded module too.
    import keras.src.backend.config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    return home


def _empty_dir(tmp_path):
    empty = tmp_path / "calibration_data"
    empty.mkdir()
    return empty


def test_fetch_imagenette_from_file_url(tmp_path, imagenette_tarball, fresh_keras_home):
    tarball, md5 = imagenette_tarball
    url = "file://" + str(tarball)
    cfg = CalibrationConfig(
        directory=str(_empty_dir(tmp_path)), samples=4, seed=0,
        allow_fetch=True, fetch_url=url, fetch_md5=md5,
    )
    result = representative_dataset(cfg, SPEC)
    assert result.fetched_from == url
    assert result.summary()["fetched_from"] == url
    assert len(result.used) == 4 and result.arrays.shape == (4, 96, 96, 3)

    train = result.folder.root
    assert train.name == "train" and train.parent.name == "imagenette2-160"
    assert train.resolve().is_relative_to(fresh_keras_home.resolve())  # in the fresh cache
    assert len(result.folder.files) == 8 and result.folder.class_names == list(SYNSETS)
    for path in result.used:
        assert path.parent.parent == train and "_train_" in path.name
    assert Counter(p.parent.name for p in result.used) == {SYNSETS[0]: 2, SYNSETS[1]: 2}
    for path, array in zip(result.used, result.arrays):
        np.testing.assert_array_equal(array, preprocess(path, SPEC))

    val = Path(result.default_eval_dir)
    assert val.is_dir() and val.name == "val" and val.parent == train.parent
    val_folder = scan_images(val)
    assert len(val_folder.files) == 8 and val_folder.class_names == list(SYNSETS)
    assert not set(val_folder.files) & set(result.used)


def test_fetch_with_wrong_md5_is_an_input_error(tmp_path, imagenette_tarball, fresh_keras_home):
    tarball, md5 = imagenette_tarball
    url = "file://" + str(tarball)
    cfg = CalibrationConfig(
        directory=str(_empty_dir(tmp_path)), samples=4,
        allow_fetch=True, fetch_url=url, fetch_md5="0" * 32,
    )
    with pytest.raises(PipelineInputError) as error:
        representative_dataset(cfg, SPEC)
    message = str(error.value)
    assert "\n" not in message
    assert url in message
    assert "0" * 32 in message  # keras' hash-mismatch reason is carried into the one line
    assert not list(fresh_keras_home.rglob("train"))  # nothing extracted from a bad archive


def test_fetch_from_missing_file_is_an_input_error(tmp_path, fresh_keras_home):
    url = "file://" + str(tmp_path / "nowhere" / "imagenette2-160.tgz")
    cfg = CalibrationConfig(
        directory=str(_empty_dir(tmp_path)), samples=4,
        allow_fetch=True, fetch_url=url, fetch_md5="0" * 32,
    )
    with pytest.raises(PipelineInputError) as error:
        representative_dataset(cfg, SPEC)
    message = str(error.value)
    assert "\n" not in message
    assert url in message


def test_no_fetch_when_folder_has_images(jpeg_folder, fresh_keras_home):
    # allow_fetch only fills an empty folder; an unreachable URL must not matter here.
    cfg = CalibrationConfig(
        directory=str(jpeg_folder), samples=3, allow_fetch=True,
        fetch_url="file:///nonexistent/imagenette2-160.tgz",
    )
    result = representative_dataset(cfg, SPEC)
    assert result.fetched_from is None and len(result.used) == 3
    assert list(fresh_keras_home.iterdir()) == []


def test_defaults_point_at_imagenette():
    cfg = CalibrationConfig()
    assert cfg.allow_fetch is False  # fetching is opt-in (default folder + ImageNet weights)
    assert cfg.fetch_url.endswith("imagenette2-160.tgz")
    assert len(cfg.fetch_md5) == 32 and calibrate.DEFAULT_SAMPLES == cfg.samples == 300
