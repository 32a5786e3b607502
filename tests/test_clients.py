"""The exported model in the clients apps ship with, as it is: MediaPipe Tasks' ImageClassifier with
no options, `pipeline.predict` and `pipeline.inspect` reading only the model file, and the export's
own "clients" report."""

import json

import numpy as np
import pytest

from tests.conftest import IMAGENETTE, SHARED, make_images, run_cli

PHOTOS = SHARED / "data" / "photos"


def _mediapipe_results(model_path, images):
    """[(index, score, name)] of every category, best first, for each uint8 image."""
    import mediapipe as mp
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.vision import image_classifier

    options = image_classifier.ImageClassifierOptions(
        base_options=base_options.BaseOptions(model_asset_path=str(model_path)))
    results = []
    with image_classifier.ImageClassifier.create_from_options(options) as classifier:
        for pixels in images:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
            categories = classifier.classify(image).classifications[0].categories
            results.append([(c.index, float(c.score), c.category_name) for c in categories])
    return results


def _ours(model_path, images, spec):
    """The pipeline interpreter's probabilities on the same pixels (through its preprocessing)."""
    from pipeline.core.tflite import output_kind
    from pipeline.device.runner import Runner, load_runtime
    from pipeline.stages.predict import probabilities
    from pipeline.stages.preprocess import normalize

    model = model_path.read_bytes()
    _, _, module = load_runtime()
    outputs = Runner(module, model_content=model)(normalize(np.asarray(images), spec))
    return probabilities(outputs, output_kind(model))


def _framed(paths, spec):
    from pipeline.stages.preprocess import pixels

    return np.stack([pixels(p, spec) for p in paths])


def _assert_same_as_ours(mediapipe, ours, labels, k=5):
    """Every category named from the model's own metadata, every score a probability, and the same
    top-k as ours: ranks whose classes tie (equal int8 logits) may come in either order."""
    for categories, p in zip(mediapipe, ours):
        assert all(name == labels[index] for index, _, name in categories)
        scores = np.array([s for _, s, _ in categories])
        assert np.all((0 <= scores) & (scores <= 1)) and scores.sum() <= 1 + 1e-4
        ranked = np.sort(p)[::-1][:k]
        for rank, (index, score, _) in enumerate(categories[:k]):
            assert score == pytest.approx(ranked[rank], abs=1e-5)
            assert p[index] == pytest.approx(ranked[rank], abs=1e-5)


def _config_spec(out):
    from pipeline.stages.predict import _spec_from_config

    return _spec_from_config(json.loads((out / "model_config.json").read_text()), "config")


@pytest.mark.parametrize("which", ["imagenet_export", "imagenet_float_io_export"])
def test_mediapipe_takes_the_224_export_as_it_is(which, request):
    out, report = request.getfixturevalue(which)
    spec = _config_spec(out)
    labels = (out / "labels.txt").read_text().splitlines()
    val = sorted((IMAGENETTE / "val").rglob("*.JPEG"))[::39][:100]  # 100 images, every class
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".bmp"))
    images = _framed(val + photos, spec)
    mediapipe = _mediapipe_results(out / "model.tflite", images)
    _assert_same_as_ours(mediapipe, _ours(out / "model.tflite", images, spec), labels)
    # The export checked the same client itself and says so in its report; so it did with the
    # Task Library (its own environment) and a plain LiteRT Interpreter fed the model's own input.
    for client in ("MediaPipe", "TFLite Task Library", "LiteRT Interpreter"):
        row = next(r for r in report["clients"]["checked"] if r["client"].startswith(client))
        assert row["ok"] and row["top1_matches"] == row["images"] > 0, row
    config = json.loads((out / "model_config.json").read_text())
    assert config["output"]["meaning"] == "probabilities" and config["output"]["dtype"] == "float32"


def test_raw_bytes_are_the_default_exports_input(imagenet_export):
    """Feeding the camera's RGB bytes (what MediaPipe does) and feeding the pipeline's
    preprocessing give identical input tensors, so report.json's parity is that input's."""
    from pipeline.device.runner import quantize_input
    from pipeline.stages.preprocess import normalize

    out, report = imagenet_export
    config = json.loads((out / "model_config.json").read_text())
    q = config["input"]["quantization"]
    assert config["input"]["dtype"] == "uint8" and "q = pixel" in config["input"]["contract"]
    images = _framed(sorted((IMAGENETTE / "val").rglob("*.JPEG"))[:8], _config_spec(out))
    grid = {"dtype": np.uint8, "quantization": (q["scale"], q["zero_point"])}
    assert np.array_equal(quantize_input(normalize(images, _config_spec(out)), grid), images)


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory):
    """A small model of three custom classes (--labels), calibrated on their images."""
    root = tmp_path_factory.mktemp("custom")
    images = make_images(root / "images", classes=("daisy", "rose", "tulip"), per_class=6)
    labels = root / "labels.txt"
    labels.write_text("daisy\nrose\ntulip\n")
    out = root / "out"
    result = run_cli("export", "--alpha", "0.35", "--resolution", "96", "--weights", "random",
                     "--classes", "3", "--labels", labels, "--calibration", images,
                     "--calibration-samples", "12", "--model-name", "flowers-demo",
                     "--model-author", "the team", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, images


def test_mediapipe_names_custom_classes_from_the_model_alone(custom_export):
    out, images = custom_export
    spec = _config_spec(out)
    paths = sorted(images.rglob("*.jpg"))
    framed = _framed(paths, spec)
    mediapipe = _mediapipe_results(out / "model.tflite", framed)
    assert {name for categories in mediapipe for _, _, name in categories} == {"daisy", "rose", "tulip"}
    _assert_same_as_ours(mediapipe, _ours(out / "model.tflite", framed, spec),
                         ["daisy", "rose", "tulip"], k=3)


@pytest.mark.parametrize("which", ["imagenet_export", "custom_export"])
def test_the_task_library_names_and_scores_every_export_as_ours(which, task_library, request, tmp_path):
    """The TFLite Task Library's ImageClassifier, default options, in its own environment: the
    model's label names from its metadata, probabilities as scores, our top-1."""
    from pipeline.stages import clients

    out = request.getfixturevalue(which)[0]
    spec = _config_spec(out)
    labels = (out / "labels.txt").read_text().splitlines()
    folder = IMAGENETTE / "val" if which == "imagenet_export" else request.getfixturevalue(which)[1]
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))[::7][:24]
    images = _framed(paths, spec)
    ours = _ours(out / "model.tflite", images, spec)
    model = (out / "model.tflite").read_bytes()
    row = clients.task_library_image_classifier(model, images, np.log(np.maximum(ours, 1e-38)), tmp_path)
    assert row["client"].startswith("TFLite Task Library ImageClassifier (tflite-support 0.4.4)")
    assert row["ok"] and row["top1_matches"] == len(paths), row
    assert row["category_names"] and row["scores_are_probabilities"], row
    assert row["detail"].split(": ", 1)[1].rsplit(" ", 1)[0] in labels
    report = json.loads((out / "report.json").read_text())
    checked = next(r for r in report["clients"]["checked"] if r["client"].startswith("TFLite Task"))
    assert checked["ok"], checked


def test_predict_reads_everything_from_the_model_file_alone(custom_export, tmp_path):
    out, images = custom_export
    image = sorted(images.rglob("*.jpg"))[0]
    alone = tmp_path / "model.tflite"
    alone.write_bytes((out / "model.tflite").read_bytes())
    from_folder = run_cli("predict", out, image, "--top-k", "3")
    from_file = run_cli("predict", alone, image, "--top-k", "3")
    assert from_folder.returncode == 0 and from_file.returncode == 0, from_file.stderr
    assert "the model's metadata" in from_file.stdout and "model_config.json" in from_folder.stdout

    def top(stdout):
        rows = [line.split() for line in stdout.splitlines() if line.startswith("  ")]
        return [(row[1], float(row[0].rstrip("%"))) for row in rows]

    assert top(from_folder.stdout) == top(from_file.stdout)
    assert {name for name, _ in top(from_file.stdout)} == {"daisy", "rose", "tulip"}
    assert sum(p for _, p in top(from_file.stdout)) == pytest.approx(100, abs=0.05)
    assert " ms)" in from_file.stdout


def test_inspect_prints_the_contract(custom_export):
    out, _ = custom_export
    result = run_cli("inspect", out / "model.tflite")
    assert result.returncode == 0, result.stderr
    for words in ("uint8, scale 0.00784314 zero point 127", "output is probabilities",
                  "flowers-demo v1", "author the team", "labels (packed): 3: daisy, rose, tulip",
                  "input normalization: mean [127.0] std [127.5]",
                  "MediaPipe / Task Library image classifier: takes it"):
        assert words in result.stdout, (words, result.stdout)
    info = json.loads(run_cli("inspect", out / "model.tflite", "--json").stdout)
    assert info["labels"] == ["daisy", "rose", "tulip"] and info["packed_files"] == ["labels.txt"]


def test_inspect_says_what_a_client_refuses(tmp_path, small_built, small_calibration):
    from pipeline.stages import convert

    # --io int8 with the logits head: an int8 output, which MediaPipe refuses.
    model = convert.convert(small_built, small_calibration.arrays[:4],
                            convert.ConvertConfig("int8", io="int8", head="logits")).tflite
    path = tmp_path / "int8_out.tflite"
    path.write_bytes(model)
    result = run_cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "REFUSES it: refuses int8 input" in result.stdout
    assert "metadata: none" in result.stdout


@pytest.mark.parametrize("content, words", [
    (b"", "is not a TFLite model"),
    (b"PK\x03\x04 not a model at all", "is not a TFLite model"),
    (b"\x18\x00\x00\x00TFL3" + b"\x00" * 40, "does not load"),
])
def test_inspect_and_predict_refuse_what_is_not_a_model(tmp_path, content, words):
    path = tmp_path / "bad model.tflite"
    path.write_bytes(content)
    for command in (["inspect", path], ["predict", path, path]):
        result = run_cli(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and words in errors[0] and str(path) in errors[0], result.stderr


def test_predict_refuses_an_image_it_cannot_decode(custom_export, tmp_path):
    out, _ = custom_export
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run_cli("predict", out, bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not an image Pillow can decode" in result.stderr and str(bad) in result.stderr


def test_predict_on_a_folder_takes_its_images_and_names_what_it_skipped(custom_export, tmp_path):
    """As calibration takes a folder: its images (recursively), the rest skipped and named; a
    file named on its own that is no image is still refused in one line."""
    import shutil

    out, images = custom_export
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    (folder / "COPYRIGHT").write_text("photos: CC BY")
    (folder / "rose" / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_cli("predict", out, folder, "--top-k", "1")
    assert result.returncode == 0, result.stderr
    taken = [line.split("  (")[0] for line in result.stdout.splitlines() if line.startswith(str(folder))]
    assert sorted(taken) == sorted(str(folder / p.relative_to(images)) for p in images.rglob("*.jpg"))
    assert len(taken) == 18
    assert f"– skipped {folder / 'COPYRIGHT'}: not an image file" in result.stdout
    assert f"– skipped {folder / 'rose' / 'broken.jpg'}: " in result.stdout
    alone = run_cli("predict", out, folder / "COPYRIGHT")
    assert alone.returncode == 2 and alone.stderr.startswith("error: ") and "Traceback" not in alone.stderr
