"""Shared fixtures. Built models are session-scoped: TensorFlow imports and conversions are the
suite's cost, so each model is built once and shared. ../shared (weights, Imagenette) is read in
place; tests that need it skip with a reason when it is absent."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED_DIR", REPO.parent / "shared"))
WEIGHTS_DIR = SHARED / "weights" / "keras_home" / "models"
IMAGENETTE = SHARED / "data" / "imagenette-224"


# Where a test needs a download to fail (weights that are not cached), it routes the download
# through a proxy on a closed local port: the test means the same with or without a network.
NO_NETWORK = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                                       "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
NO_NETWORK.update(no_proxy="", NO_PROXY="")


def needs_shared(*parts):
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"needs {path} (../shared is absent)")


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"needs ../shared ({SHARED} is absent)")
    return SHARED


def _make_keras_home():
    # Keras reads KERAS_HOME once, when it is imported, so the whole test session (and every CLI it
    # starts) shares one writable KERAS_HOME whose models/ links the shared ImageNet weights.
    home = Path(tempfile.mkdtemp(prefix="keras_home_"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    (home / "models").mkdir()
    if WEIGHTS_DIR.is_dir():
        for weights in WEIGHTS_DIR.iterdir():
            (home / "models" / weights.name).symlink_to(weights)
    os.environ["KERAS_HOME"] = str(home)
    return home


KERAS_HOME = _make_keras_home()


def _make_pipeline_cache():
    # One pipeline cache for the session, shared by every export it runs (in-process and CLI, and
    # every pytest-xdist worker: they inherit it from the controller, which made it and removes it):
    # float conversions, calibrations and float references are made once, as on a user's machine
    # that exported before. Tests of the cache itself use folders of their own (or --no-cache).
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("TFLITE_PIPELINE_CACHE"):
        return Path(os.environ["TFLITE_PIPELINE_CACHE"])
    cache = Path(tempfile.mkdtemp(prefix="pipeline_cache_"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["TFLITE_PIPELINE_CACHE"] = str(cache)
    return cache


PIPELINE_CACHE = _make_pipeline_cache()


@pytest.fixture(scope="session")
def keras_home():
    """KERAS_HOME holding the shared ImageNet weights (skips without them)."""
    if not WEIGHTS_DIR.is_dir():
        pytest.skip(f"needs the shared ImageNet weights in {WEIGHTS_DIR}")
    return KERAS_HOME


def move_batchnorm_statistics(model, seed=0):
    """Sets every BatchNormalization's statistics and affine parameters far from their initial 0/1
    (as training leaves them), so that folding them is a real change of weights; returns model."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.1, 3, n)])
    return model


def make_images(root, classes=("cats", "dogs"), per_class=12, size=(120, 90), seed=0):
    """Writes smooth random JPEGs (class-tinted, so classes differ) into root/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 255, (6, 8, 3)).astype(np.float32)
            small[..., c % 3] = 0.5 * small[..., c % 3] + 120
            image = Image.fromarray(small.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
            image.save(root / name / f"{name}_{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def small_built():
    """MobileNetV2 0.35 at 96 px, seeded random weights, 1000 classes (ImageNet labels)."""
    from pipeline.stages import build

    return build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights="random", seed=0))


@pytest.fixture(scope="session")
def small_calibration(small_built, image_folder):
    from pipeline.stages import calibrate
    from pipeline.stages.preprocess import Preprocessing

    cfg = calibrate.CalibrationConfig(directory=str(image_folder), samples=16, seed=0)
    return calibrate.representative_dataset(cfg, Preprocessing(resolution=96))


@pytest.fixture(scope="session")
def small_int8(small_built, small_calibration):
    from pipeline.stages import convert

    return convert.convert(small_built, small_calibration.arrays, convert.ConvertConfig("int8"))


@pytest.fixture(scope="session")
def small_float(small_built):
    from pipeline.stages import convert

    return convert.convert(small_built, None, convert.ConvertConfig("none"))


def run_cli(module, *args, env=None, cwd=None, timeout=600):
    """Runs `python -m pipeline.<module> args` for real; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )


def _imagenet_224_export(keras_home, tmp_path_factory, name, *flags):
    import json

    if not IMAGENETTE.is_dir():
        pytest.skip(f"needs Imagenette in {IMAGENETTE}")
    out = tmp_path_factory.mktemp(name) / "out"
    result = run_cli("export", "--quantize", "int8", "--weights", "imagenet",
                     "--calibration", IMAGENETTE / "calib", "--eval", IMAGENETTE / "val", *flags,
                     "--output", out, env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="session")
def imagenet_export(keras_home, tmp_path_factory):
    """The README's export, once: ImageNet weights at 224, parity on all 3,925 val images."""
    return _imagenet_224_export(keras_home, tmp_path_factory, "imagenet")


@pytest.fixture(scope="session")
def imagenet_float_io_export(keras_home, tmp_path_factory):
    """The same with float32 input (what an app that normalizes itself ships), 400 val images."""
    return _imagenet_224_export(keras_home, tmp_path_factory, "imagenet_float_io", "--io", "float32",
                                "--eval-samples", "400")


@pytest.fixture(scope="session")
def task_library():
    """pipeline.device.task_library, its environment made (skips, with the command, without it)."""
    from pipeline.device import task_library

    if task_library.env_python() is None:
        pytest.skip(f"no Task Library environment at {task_library.env_dir()}: "
                    "python -m pipeline.device.task_library --create makes it")
    return task_library


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # pytest.ini runs the suite on 2 pytest-xdist workers; benchmarks (-m bench) measure time and
    # run alone, in one process.
    markexpr = config.getoption("markexpr", "") or ""
    if "bench" in markexpr and "not bench" not in markexpr and hasattr(config.option, "numprocesses"):
        config.option.numprocesses = 0
        config.option.dist = "no"


# --- Skips that cannot hide ----------------------------------------------------------------------
# Every skip is listed with its reason at the end of a run. Under CI=true, a skip that is not on
# tests/expected_skips.txt (a short, committed list, each entry with why CI may skip it) fails the
# run: a missing dependency, interpreter or right cannot quietly shrink what a green run covers.
EXPECTED_SKIPS = Path(os.environ.get("PIPELINE_EXPECTED_SKIPS") or REPO / "tests" / "expected_skips.txt")


def expected_skips(path=EXPECTED_SKIPS):
    """[(test id pattern, why)] from the committed list."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, separator, why = (part.strip() for part in line.partition("|"))
        if not separator or not pattern or not why:
            raise ValueError(f"{path}:{number}: write `test id pattern | why CI may skip it`")
        entries.append((pattern, why))
    return entries


def skip_reason(report):
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def unexpected_skips(reports, allowed):
    """The skipped (not xfailed) reports whose test id matches no allowed pattern."""
    import fnmatch

    return [r for r in reports if not hasattr(r, "wasxfail")
            and not any(fnmatch.fnmatchcase(r.nodeid, pattern) for pattern, _ in allowed)]


def _skipped(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = reporter.stats.get("skipped", []) if reporter is not None else []
    return [r for r in reports if not hasattr(r, "wasxfail")]


REFUSED_SKIPS = []


def pytest_sessionfinish(session, exitstatus):
    # Before the terminal summary is printed (the reporter prints it after every sessionfinish).
    if hasattr(session.config, "workerinput") or os.environ.get("CI") != "true":
        return
    REFUSED_SKIPS[:] = unexpected_skips(_skipped(session.config), expected_skips())
    if REFUSED_SKIPS and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    skipped = _skipped(config)
    terminalreporter.section(f"skips ({len(skipped)})")
    for report in skipped:
        terminalreporter.line(f"SKIPPED {report.nodeid}: {skip_reason(report)}")
    for report in REFUSED_SKIPS:
        terminalreporter.line(f"✗ not an expected CI skip (tests/expected_skips.txt): "
                              f"{report.nodeid}: {skip_reason(report)}", red=True)
