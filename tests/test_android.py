"""The hand-over to the Android demo: golden vectors, the Kotlin core against them, the contract
check, and the app's build files kept consistent."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.stages import deploy, golden, report
from pipeline.core.errors import PipelineInputError
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import REPO, SHARED, run_cli

APP = REPO / "android_demo"
GOLDEN = APP / "core" / "src" / "test" / "resources" / "golden"
JARS = [Path("/usr/share/java") / name for name in ("gson.jar", "junit4.jar", "hamcrest-core.jar")]


def _kotlinc():
    candidates = [os.environ.get("KOTLINC"), REPO / ".tools/node_modules/kotlin-compiler/bin/kotlinc",
                  shutil.which("kotlinc")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def test_committed_golden_vectors_are_current():
    """Change the Python preprocessing (the crop, the filter, the rounding) and this fails until
    the vectors are regenerated with `python -m pipeline.golden` — and the Kotlin core must then
    reproduce the new ones."""
    fresh = golden.synthetic_set()
    committed = {p.name for p in GOLDEN.iterdir()}
    assert committed == set(fresh), "regenerate: python -m pipeline.golden"
    stale = [name for name, content in fresh.items()
             if (GOLDEN / name).read_bytes() != (content.encode() if isinstance(content, str) else content)]
    assert not stale, f"stale golden vectors {stale[:5]}: regenerate with python -m pipeline.golden"


def test_golden_vectors_notice_a_different_crop():
    image = golden.synthetic_images()["odd_landscape"]
    full = golden.image_case("x", image, Preprocessing(resolution=32), golden.UINT8_INPUT)
    cropped = golden.image_case("x", image, Preprocessing(resolution=32, crop_fraction=0.875),
                                golden.UINT8_INPUT)
    assert full["x.input"] != cropped["x.input"]


@pytest.fixture(scope="module")
def kotlin_core(tmp_path_factory):
    """android_demo/core compiled with a real Kotlin compiler, with its JUnit tests."""
    kotlinc = _kotlinc()
    if kotlinc is None or not all(j.exists() for j in JARS):
        pytest.skip("needs kotlinc (npm kotlin-compiler, see .ci/run) and Debian's junit4 and "
                    "libgoogle-gson-java")
    out = tmp_path_factory.mktemp("kotlin") / "core.jar"
    classpath = os.pathsep.join(map(str, JARS))
    compiled = subprocess.run(
        [str(kotlinc), str(APP / "core/src/main/kotlin"), str(APP / "core/src/test/kotlin"),
         "-cp", classpath, "-d", str(out)], capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    stdlib = next(kotlinc.parent.parent.glob("lib/kotlin-stdlib.jar"), None)
    return out, os.pathsep.join([str(out), classpath] + ([str(stdlib)] if stdlib else []))


def _run_junit(classpath, folders):
    return subprocess.run(
        ["java", f"-Dgolden.dirs={os.pathsep.join(map(str, folders))}", "-cp", classpath,
         "org.junit.runner.JUnitCore", "com.example.mobilenetdemo.core.GoldenVectorsTest"],
        capture_output=True, text=True, cwd=APP / "core", timeout=600)


def test_kotlin_core_reproduces_the_pipeline(kotlin_core, tmp_path, small_built, small_int8):
    _, classpath = kotlin_core
    extra = tmp_path / "vectors"
    photos = SHARED / "data" / "photos"
    if photos.is_dir():
        # The shared photos at the export's default settings (224, crop 1.0, uint8): real sizes
        # (up to 512x600), downscaling with antialiasing. Generated here, never committed.
        golden.write(extra, golden.image_folder_set(photos))
    else:
        extra.mkdir()
    config = report.model_config(small_built, small_int8, Preprocessing(resolution=96))
    (extra / "model_config.json").write_text(json.dumps(config))
    result = _run_junit(classpath, [GOLDEN, extra])
    assert result.returncode == 0 and "OK (4 tests)" in result.stdout, result.stdout[-3000:]


def test_kotlin_core_fails_on_vectors_it_does_not_reproduce(kotlin_core, tmp_path):
    """The JUnit check is not vacuous: one flipped byte in an expected tensor fails it."""
    _, classpath = kotlin_core
    broken = tmp_path / "broken"
    shutil.copytree(GOLDEN, broken)
    data = bytearray((broken / "odd_landscape.input").read_bytes())
    data[100] ^= 1
    (broken / "odd_landscape.input").write_bytes(bytes(data))
    result = _run_junit(classpath, [broken])
    assert result.returncode != 0 and "odd_landscape.json: first differing byte at 100" in result.stdout


def test_build_files_agree_with_each_other():
    catalog = (APP / "gradle/libs.versions.toml").read_text()
    app_gradle = (APP / "app/build.gradle.kts").read_text()
    manifest = (APP / "app/src/main/AndroidManifest.xml").read_text()
    classifier = (APP / "app/src/main/kotlin/com/example/mobilenetdemo/Classifier.kt").read_text()
    versions = dict(re.findall(r'^([\w-]+) = "([^"]+)"', catalog, re.M))
    # LiteRT (not the retired org.tensorflow:tensorflow-lite) is in the catalog and used by the app.
    assert re.search(r'litert = \{ group = "com.google.ai.edge.litert", name = "litert"', catalog)
    assert "implementation(libs.litert)" in app_gradle and "implementation(libs.litert.gpu)" in app_gradle
    assert "tensorflow-lite" not in app_gradle + catalog
    assert int(versions["minSdk"]) >= 21 and "libs.versions.minSdk" in app_gradle
    assert 'assets.srcDirs("src/main/assets")' in app_gradle
    assert (APP / "app/src/main/assets").is_dir()
    assert 'noCompress += "tflite"' in app_gradle  # memory-mapped from the APK
    assert 'android:name=".MainActivity"' in manifest and "android.permission.CAMERA" in manifest
    namespace = re.search(r'namespace = "([^"]+)"', app_gradle).group(1)
    assert f"package {namespace}" in classifier
    # The app reads the files deploy copies, by the names the export writes.
    assert 'CONFIG_FILE = "model_config.json"' in classifier
    assert "config.modelFile" in classifier and "config.labelsFile" in classifier
    assert set(deploy.FILES) == {"model.tflite", "labels.txt", "model_config.json"}
    assert 'include(":app", ":core")' in (APP / "settings.gradle.kts").read_text()
    assert "implementation(project(\":core\"))" in app_gradle


def _artifacts(folder, built, converted, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(converted.tflite)
    (folder / "labels.txt").write_text("\n".join(labels or built.labels) + "\n")
    config = report.model_config(built, converted, Preprocessing(resolution=built.resolution))
    (folder / "model_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture()
def app_copy(tmp_path):
    copy = tmp_path / "android_demo"
    shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("build", ".gradle"))
    for name in deploy.FILES:
        (copy / deploy.ASSETS / name).unlink(missing_ok=True)
    return copy


def test_deploy_refuses_a_float_model_whose_labels_do_not_match(tmp_path, small_built, small_float,
                                                                app_copy):
    artifacts = _artifacts(tmp_path / "float", small_built, small_float, labels=["cat", "dog"])
    with pytest.raises(PipelineInputError, match=r"outputs \[1, 1000\] but labels.txt has 2 labels"):
        deploy.deploy_android(artifacts, app_copy)
    assert not (app_copy / deploy.ASSETS / "model.tflite").exists()
    result = run_cli("deploy", "android", artifacts, app_copy)
    assert result.returncode == 2 and result.stderr.count("error:") == 1


def test_deploy_refuses_a_config_from_another_export(tmp_path, small_built, small_int8, small_float,
                                                     app_copy):
    artifacts = _artifacts(tmp_path / "mixed", small_built, small_int8)
    config = json.loads((artifacts / "model_config.json").read_text())
    config["input"]["quantization"]["zero_point"] += 1
    (artifacts / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineInputError, match="input quantization .* does not match"):
        deploy.deploy_android(artifacts, app_copy)
    with pytest.raises(PipelineInputError, match="is not the Android demo app"):
        deploy.deploy_android(_artifacts(tmp_path / "ok", small_built, small_int8), tmp_path)


def test_export_with_android_demo_copies_the_int8_model(tmp_path, image_folder, app_copy):
    out = tmp_path / "export"
    result = run_cli("export", "--alpha", "0.35", "--resolution", "96", "--weights", "random",
                     "--calibration", image_folder, "--calibration-samples", "12", "--output", out,
                     "--android-demo", app_copy)
    assert result.returncode == 0, result.stderr[-2000:]
    assets = app_copy / deploy.ASSETS
    for name in deploy.FILES:
        assert (assets / name).read_bytes() == (out / name).read_bytes()
    assert json.loads((assets / "model_config.json").read_text())["input"]["dtype"] == "uint8"
    assert not [p for p in assets.parent.iterdir() if ".partial-" in p.name]
