"""pipeline.train: own classes → a float model export takes as it is.

Fast tests use seeded random weights (alpha 0.35, 96 px) on synthetic images; the flowers tests
train for real from the shared ImageNet weights (a subset and one epoch in CI; the full default
run is a benchmark)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, SHARED, make_images, needs_shared, run_cli

FLOWERS = SHARED / "data" / "flowers-128"
# Class names a user's folders really have: spaces and non-ASCII characters.
CLASSES = ("red rose", "pâquerette", "tulip")
QUICK = ("--weights", "random", "--alpha", "0.35", "--resolution", "96", "--head-epochs", "2",
         "--epochs", "1", "--views", "3", "--val-split", "0.25")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="session")
def own_classes(tmp_path_factory):
    root = make_images(tmp_path_factory.mktemp("own") / "data", classes=CLASSES, per_class=12)
    (root / "tulip" / "notes.txt").write_text("not an image")
    (root / "tulip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="session")
def trained(own_classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "out"
    result = run_cli("train", "--data", own_classes, *QUICK, "--output", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_split_is_stratified_seeded_and_disjoint(own_classes):
    from pipeline.stages import train

    cfg = train.TrainConfig(data=str(own_classes), output="unused", val_split=0.25)
    split = train.split_data(cfg)
    assert split.classes == sorted(CLASSES)
    assert not set(split.train) & set(split.val)
    # 12 or 13 files a class (tulip has a broken one): a quarter of each held out.
    assert [split.val_labels.count(i) for i in range(3)] == [3, 3, 3]
    assert split.ignored_files == 1
    again = train.split_data(cfg)
    assert again.val == split.val
    other = train.split_data(train.TrainConfig(data=str(own_classes), output="x", val_split=0.25, seed=1))
    assert other.val != split.val


def test_view_zero_is_the_deployment_transform_and_views_are_seeded(own_classes):
    from pipeline.stages import train
    from pipeline.stages.preprocess import Preprocessing, preprocess

    spec = Preprocessing(resolution=96)
    path = sorted((own_classes / "red rose").glob("*.jpg"))[0]
    np.testing.assert_array_equal(train._one_view(path, spec, 0, 0, 0, "crop-flip"),
                                  preprocess(path, spec))
    np.testing.assert_array_equal(train._one_view(path, spec, 1, 0, 0, "crop-flip"),
                                  preprocess(path, spec)[:, ::-1])
    crop = train._one_view(path, spec, 4, 0, 5, "crop-flip")
    np.testing.assert_array_equal(crop, train._one_view(path, spec, 4, 0, 5, "crop-flip"))
    assert not np.array_equal(crop, train._one_view(path, spec, 4, 1, 5, "crop-flip"))
    # Same normalization as deployment: values on the uint8 grid (pixel − 127) / 127.5.
    pixels = crop * np.float32(127.5) + np.float32(127)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)


def test_snapping_puts_every_kernel_on_its_int8_grid():
    import keras

    from pipeline.stages import train

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classes=4, classifier_activation=None)
    before = train.snap_to_int8_grid(model)
    assert min(before.values()) > 0.4  # random weights lie anywhere between grid points
    assert len(before) == 53  # 52 convolutions and the dense head
    after = train.snap_to_int8_grid(model)
    assert max(after.values()) < 1e-3


def test_train_writes_everything_export_needs(trained, own_classes):
    from pipeline.stages import build, calibrate

    out, result = trained
    assert {p.name for p in out.iterdir()} == {
        "model.keras", "labels.txt", "train_images.json", "val_images.json", "train_report.json",
        "train_report.md", "training_curves.png", "confusion_matrix.png"}
    assert (out / "labels.txt").read_text(encoding="utf-8").splitlines() == sorted(CLASSES)
    summary = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert summary["data"]["ignored_files"] == 1
    assert [s["file"].endswith("broken.jpg") for s in summary["data"]["skipped"]] == [True]
    assert [row["stage"] for row in summary["history"]] == ["head", "head", "fine-tune"]
    assert summary["int8_grid"]["snapped"] and summary["int8_grid"]["max_distance_before"]
    assert summary["versions"]["tensorflow"] and summary["data"]["sha256_val"]
    assert len(summary["confusion_matrix"]) == 3
    # 36 decodable images (broken.jpg skipped from whichever side it fell on), a quarter held out.
    assert summary["data"]["train"] + summary["data"]["val"] == 36
    assert summary["data"]["val"] in (8, 9)
    assert sum(map(sum, summary["confusion_matrix"])) == summary["data"]["val"]
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    # The held-out list is the split, and the training list holds no held-out image.
    val = calibrate.scan_images(out / "val_images.json")
    train_list = calibrate.scan_images(out / "train_images.json")
    assert len(val.files) == summary["data"]["val"] and len(train_list.files) == summary["data"]["train"]
    assert not set(val.files) & set(train_list.files)
    assert set(val.class_names) == set(CLASSES)
    # Safe-mode loadable, logits head, the classes as labels.
    built = build.build_model(build.BuildConfig(model_path=str(out / "model.keras"),
                                                labels_path=str(out / "labels.txt")))
    assert built.output_kind == "logits" and built.labels == sorted(CLASSES)
    assert "next: python -m pipeline.export --from-train" in result.stdout


def test_same_seed_same_model(trained, own_classes, tmp_path):
    out, _ = trained
    again = tmp_path / "again"
    result = run_cli("train", "--data", own_classes, *QUICK, "--output", again)
    assert result.returncode == 0, result.stderr
    first = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    second = json.loads((again / "train_report.json").read_text(encoding="utf-8"))
    assert second["val_accuracy"] == first["val_accuracy"]
    assert second["sha256"]["model_weights"] == first["sha256"]["model_weights"]
    assert [r["val_loss"] for r in second["history"]] == [r["val_loss"] for r in first["history"]]


def test_export_from_train_folder_evaluates_on_the_held_out_split(trained, tmp_path):
    from pipeline.stages import metadata

    out, _ = trained
    exported = tmp_path / "int8"
    result = run_cli("export", "--from-train", out, "--quantize", "int8", "--output", exported)
    assert result.returncode == 0, result.stderr
    report = json.loads((exported / "report.json").read_text(encoding="utf-8"))
    summary = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert report["parity"]["images"] == summary["data"]["val"]  # exactly the held-out split
    assert report["float"]["top1"] is not None  # labelled: the class folders are the labels
    held_out = json.loads((out / "val_images.json").read_text(encoding="utf-8"))["files"]
    trained_on = set(json.loads((out / "train_images.json").read_text(encoding="utf-8"))["files"])
    assert report["calibration"]["used"] == summary["data"]["train"]
    assert report["calibration"]["held_out"] == 0
    assert not trained_on & set(held_out)
    found, files = metadata.read_metadata((exported / "model.tflite").read_bytes())
    assert files["labels.txt"].decode("utf-8").splitlines() == sorted(CLASSES)
    assert (exported / "labels.txt").read_text(encoding="utf-8").splitlines() == sorted(CLASSES)


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("empty", "holds no images"),
    ("one-class", "has one class"),
    ("loose", "outside class sub-folders"),
    ("too-few", "needs at least 2"),
    ("output-is-file", "is a file"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(case, expected, tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "out"
    if case == "empty":
        data.mkdir()
    elif case == "one-class":
        make_images(data, classes=("only",), per_class=4)
    elif case == "loose":
        make_images(data, per_class=3)
        make_images(tmp_path / "loose", classes=("x",), per_class=1)
        (tmp_path / "loose" / "x" / "x_000.jpg").rename(data / "stray.jpg")
    elif case == "too-few":
        make_images(data, per_class=3)
        for extra in sorted((data / "dogs").glob("*"))[1:]:
            extra.unlink()
    elif case == "output-is-file":
        make_images(data, per_class=3)
        out.write_text("a file")
    result = run_cli("train", "--data", data, *QUICK, "--output", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or out.is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def _train_process(data, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", "--data", str(data), *QUICK, *extra,
         "--output", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stderr=subprocess.PIPE, text=True)


def _wait_for(process, text, timeout=180):
    seen = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}:\n{seen}")


def test_interrupt_before_an_epoch_leaves_previous_output(trained, own_classes):
    out, _ = trained
    before = _digest(out)
    process = _train_process(own_classes, out)
    _wait_for(process, "checking")
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, rest
    assert _digest(out) == before
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_ctrl_c_while_fine_tuning_keeps_the_best_epoch(own_classes, tmp_path):
    out = tmp_path / "out"
    process = _train_process(own_classes, out, "--epochs", "200", "--patience", "200")
    _wait_for(process, "fine-tune epoch 1:")
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 0, rest
    summary = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert summary["interrupted"] is True
    assert summary["best_epoch"] in summary["history"]
    assert len([r for r in summary["history"] if r["stage"] == "fine-tune"]) < 200
    assert (out / "model.keras").is_file()


# --- for real, from the shared ImageNet weights -----------------------------------------------


@pytest.fixture(scope="session")
def flowers_trained(keras_home, tmp_path_factory):
    """A flowers-128 classifier with truly float weights (--noint8-grid): 40 images a class,
    96 px, one fine-tuning epoch — the realistic model for parity tests."""
    if not FLOWERS.is_dir():
        pytest.skip(f"needs {FLOWERS}")
    out = tmp_path_factory.mktemp("flowers") / "out"
    result = run_cli("train", "--data", FLOWERS, "--resolution", "96", "--max-per-class", "40",
                     "--head-epochs", "8", "--epochs", "1", "--views", "2", "--noint8-grid",
                     "--output", out, env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr
    return out


@needs_shared("data", "flowers-128")
def test_flowers_subset_trains_exports_and_clients_take_it(flowers_trained, keras_home, tmp_path):
    import keras

    from pipeline.stages import train

    summary = json.loads((flowers_trained / "train_report.json").read_text(encoding="utf-8"))
    # ImageNet features separate these five classes well above chance (0.2) even on 160 images.
    assert summary["val_accuracy"] >= 0.5, summary["val_accuracy"]
    assert summary["weights"].startswith("imagenet (mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_")
    # Really float: fine-tuned kernels lie off the int8 grid; the frozen ImageNet ones on it.
    model = keras.saving.load_model(flowers_trained / "model.keras", compile=False)
    distances = train.snap_to_int8_grid(model)
    assert distances["logits"] > 0.3
    if summary["best_epoch"]["stage"] == "fine-tune":  # else the top was reset to stage one's
        assert distances["block_16_project"] > 0.3
    assert distances["block_1_project"] < 1e-3
    import shutil

    shutil.copytree(REPO / "android_demo", tmp_path / "app",
                    ignore=shutil.ignore_patterns("build", ".gradle"))
    out = tmp_path / "int8"
    result = run_cli("export", "--from-train", flowers_trained, "--quantize", "int8",
                     "--android-demo", tmp_path / "app", "--output", out,
                     env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr
    assert "✓ MediaPipe Tasks ImageClassifier" in result.stdout
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["parity"]["images"] == summary["data"]["val"] == 20
    assert report["tflite"]["top1"] >= report["float"]["top1"] - 0.10
    assert report["agreement_top1"] >= 0.85
    assert (tmp_path / "app" / "app/src/main/assets" / "labels.txt").read_text().splitlines() == sorted(
        p.name for p in FLOWERS.iterdir() if p.is_dir())


@pytest.mark.bench
@needs_shared("data", "flowers-128")
def test_bench_flowers_default_train_and_export(keras_home, tmp_path):
    """The issue's two commands at 128 px with defaults: ≤ 10 minutes together on the 2-core
    machine, held-out float accuracy ≥ 80%, int8 within 1 point, agreement printed."""
    out = tmp_path / "flowers"
    start = time.perf_counter()
    result = run_cli("train", "--data", FLOWERS, "--resolution", "128", "--output", out,
                     env={"KERAS_HOME": str(keras_home)}, timeout=900)
    assert result.returncode == 0, result.stderr
    trained_s = time.perf_counter() - start
    exported = tmp_path / "int8"
    result = run_cli("export", "--from-train", out, "--quantize", "int8",
                     "--activation-ranges", "percentile", "--output", exported,
                     env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr
    total_s = time.perf_counter() - start
    summary = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    report = json.loads((exported / "report.json").read_text(encoding="utf-8"))
    print(f"\ntrain {trained_s:.0f} s, train+export {total_s:.0f} s; held-out float "
          f"{summary['val_accuracy']:.2%} (head only {summary['stage_one_val_accuracy']:.2%}); "
          f"int8 {report['tflite']['top1']:.2%}, agreement {report['agreement_top1']:.2%}, "
          f"KL {report['kl_mean']:.4f}")
    assert total_s <= 600
    assert summary["val_accuracy"] >= 0.80
    assert report["tflite"]["top1"] >= report["float"]["top1"] - 0.01
