"""The export command as a user runs it: real subprocesses, real files."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import NO_NETWORK, REPO, make_images, run_cli

SMALL = ["--alpha", "0.35", "--resolution", "96", "--weights", "random", "--seed", "0"]
ARTIFACTS = {"model.tflite", "labels.txt", "model_config.json", "report.json", "report.md",
             "parity.png", "parity_images.csv"}


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory):
    from pipeline.stages import calibrate

    root = make_images(tmp_path_factory.mktemp("cal"), per_class=15)
    # Truncate one image that the seed-0 draw of 20 takes, so the export must skip and replace it.
    drawn, _ = calibrate.sample_files(calibrate.scan_images(root), 20, seed=0)
    data = drawn[0].read_bytes()
    drawn[0].write_bytes(data[: len(data) // 2])
    (root / "dogs" / "notes.txt").write_text("ignored: not an image")
    return root, drawn[0]


@pytest.fixture(scope="module")
def small_export(tmp_path_factory, calibration_folder):
    out = tmp_path_factory.mktemp("export") / "out"
    result = run_cli("export", *SMALL, "--calibration", calibration_folder[0],
                     "--calibration-samples", "20", "--output", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_export_writes_every_artifact(small_export):
    out, result = small_export
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    assert "Traceback" not in result.stderr
    # The clients it was checked with, one line each.
    assert "✓ MediaPipe Tasks ImageClassifier (mediapipe " in result.stdout
    assert "✓ Android demo app contract (model_config.json, labels.txt, model)" in result.stdout
    assert "✓ TFLite Task Library ImageClassifier (tflite-support 0.4.4): top-1 as ours" in result.stdout
    assert "✓ LiteRT Interpreter (ai-edge-litert " in result.stdout
    labels = (out / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"


def test_model_config_tells_an_app_how_to_feed_the_model(small_export):
    out, _ = small_export
    config = json.loads((out / "model_config.json").read_text())
    assert config["model_file"] == "model.tflite" and config["labels_file"] == "labels.txt"
    assert config["input"]["shape"] == [1, 96, 96, 3] and config["input"]["dtype"] == "uint8"
    q = config["input"]["quantization"]
    pre = config["preprocessing"]
    assert pre["resize"]["size"] == [96, 96] and pre["crop"]["crop_fraction"] == 1.0
    assert (pre["normalize"]["mean"], pre["normalize"]["std"]) == (127.0, 127.5)
    # Probabilities out (a float32 softmax inside the model), raw bytes in.
    assert config["output"]["meaning"] == "probabilities" and config["output"]["classes"] == 1000
    assert config["output"]["dtype"] == "float32" and "quantization" not in config["output"]
    assert "softmax inside the model" in config["output"]["postprocessing"]
    assert config["input"]["contract"].startswith("uint8: write the RGB bytes")
    assert (q["scale"], q["zero_point"]) == (pytest.approx(1 / 127.5, rel=1e-6), 127)


def test_report_holds_the_promised_fields(small_export, calibration_folder):
    out, _ = small_export
    report = json.loads((out / "report.json").read_text())
    for key in ("agreement_top1", "kl_mean", "size_bytes", "latency_ms", "timings_s", "versions",
                "sha256", "macs", "latency_ratio", "machine"):
        assert key in report
    # The machine the timings hold on, and the same-run ratio that holds on others.
    assert report["machine"]["machine_class"] and isinstance(report["machine"]["isa"], list)
    # Whether int8 can beat float32 here: the CPU's int8 dot-product instructions, said in words.
    assert isinstance(report["machine"]["int8_dot_product"], list)
    assert "int8 dot-product: " in (out / "report.md").read_text()
    # A default export is the plain int8 model of its network, the reference other exports of it
    # are timed against: its own ratio says nothing, and the report says so.
    assert report["latency_ratio"]["reference"] == {"kind": "self"}
    assert "by construction" in (out / "report.md").read_text()
    assert "--latency-reference" in (out / "report.md").read_text()
    # Each image's outcome, beside the report.
    per_image = (out / "parity_images.csv").read_text().splitlines()
    assert per_image[0] == "image,sha256,label,float_top1,tflite_top1,kl"
    assert len(per_image) == 1 + report["parity"]["images"]
    assert report["parity"]["per_image_file"] == "parity_images.csv"
    low, high = report["parity"]["agreement_interval_95"]
    assert low <= report["agreement_top1"] <= high
    # Each client was run on the model as written, not assumed to take it.
    clients = {row["client"].split(" (")[0]: row for row in report["clients"]["checked"]}
    assert clients["MediaPipe Tasks ImageClassifier"]["ok"] is True
    assert clients["MediaPipe Tasks ImageClassifier"]["category_names"] is True
    assert clients["Android demo app contract"]["ok"] is True
    assert clients["LiteRT Interpreter"]["top1_matches"] == clients["LiteRT Interpreter"]["images"]
    assert "region_of_interest" in report["clients"]["framing"]
    assert "## Clients" in (out / "report.md").read_text()
    assert set(report["float"]) == {"top1", "top5"} and set(report["tflite"]) == {"top1", "top5"}
    assert report["size_bytes"] == (out / "model.tflite").stat().st_size
    assert report["sha256"]["model"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert set(report["latency_ms"]) == {"1", str(os.cpu_count())} or set(report["latency_ms"]) == {"1"}
    assert all(v["median"] > 0 and v["p90"] >= v["median"] for v in report["latency_ms"].values())
    assert report["benchmark"]["runtime"] == "ai-edge-litert"
    assert report["benchmark"]["xnnpack_applied"] is True
    assert {"python", "tensorflow", "keras", "runtime", "litert_quantizer"} <= set(report["versions"])
    assert set(report["timings_s"]) >= {"build", "calibrate", "convert", "verify", "benchmark"}
    # The truncated JPEG was skipped, counted, and replaced so 20 images were still used.
    calibration = report["calibration"]
    folder, truncated = calibration_folder
    assert calibration["used"] == 20 and calibration["images_found"] == 30
    assert [s["file"] for s in calibration["skipped"]] == [str(truncated)]
    # Without --eval, parity runs on the held-out images (29 good - 20 used = 9).
    assert report["parity"]["images"] == 9 and "held-out" in report["parity"]["source"]
    assert "# mobilenet_v2_0.35_96" in (out / "report.md").read_text()
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["sha256"]["eval_images"] and report["sha256"]["calibration_images"]


def test_same_inputs_give_the_same_bytes_wherever_and_however_they_are_computed(
        calibration_folder, small_built, tmp_path):
    """Two exports of the same weights and images: from two folders whose names say where they
    are, from other working directories, HOME and TMPDIR, and the second with oneDNN on, on one CPU
    and one evaluation thread, with nothing from the cache. The models are byte-identical, the
    report's numbers equal, and no path, host or user name is inside the model."""
    import getpass
    import socket

    host, user = socket.gethostname(), getpass.getuser()
    runs = []
    for n, numerics in enumerate(({}, {"TF_ENABLE_ONEDNN_OPTS": "1"})):
        where = tmp_path / f"run{n}-{host}-{user}-where-the-weights-are"
        (where / "home").mkdir(parents=True)
        (where / "tmp").mkdir()
        small_built.keras_model.save_weights(where / "mobilenet.weights.h5")
        images = where / "images"
        shutil.copytree(calibration_folder[0], images)
        args = ["--alpha", "0.35", "--resolution", "96", "--weights", where / "mobilenet.weights.h5",
                "--calibration", images, "--calibration-samples", "20", "--output", where / "out"]
        env = dict(HOME=str(where / "home"), TMPDIR=str(where / "tmp"), **numerics)
        if n:
            args += ["--threads", "1", "--no-cache"]
        runs.append((where, args, env))
    prefix = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    first = subprocess.Popen([sys.executable, "-m", "pipeline.export", *map(str, runs[0][1])],
                             cwd=runs[0][0], env=dict(os.environ, PYTHONPATH=str(REPO), **runs[0][2]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run(prefix + [sys.executable, "-m", "pipeline.export", *map(str, runs[1][1])],
                            cwd=runs[1][0], env=dict(os.environ, PYTHONPATH=str(REPO), **runs[1][2]),
                            capture_output=True, text=True, timeout=600)
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    models = [(where / "out" / "model.tflite").read_bytes() for where, _, _ in runs]
    assert models[0] == models[1]
    for where, _, _ in runs:
        # (A short host or user name, "vm" or "root", turns up by chance in 4 MB of weights.)
        for text in [str(where), where.name, str(REPO)] + [n for n in (host, user) if len(n) > 5]:
            assert text.encode() not in models[0], f"{text!r} is inside the model"
    reports = [json.loads((where / "out" / "report.json").read_text()) for where, _, _ in runs]
    for key in ("float", "tflite", "agreement_top1", "kl_mean", "snr_db", "macs", "size_bytes"):
        assert reports[0][key] == reports[1][key], key
    for key in ("model", "float_model", "weights", "calibration_images", "eval_images"):
        assert reports[0]["sha256"][key] == reports[1]["sha256"][key], key
    assert [(where / "out" / "model_config.json").read_text() for where, _, _ in runs] == \
        [(runs[0][0] / "out" / "model_config.json").read_text()] * 2


def test_parity_threshold_failure_exits_1_after_writing_the_report(calibration_folder, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", *SMALL, "--quantize", "dynamic", "--calibration", calibration_folder[0],
                     "--calibration-samples", "20", "--min-agreement", "1.0",
                     "--max-top1-drop", "0.5", "--output", out)
    # Held-out images carry no ImageNet labels, so the top-1 drop cannot be measured: a failure.
    assert result.returncode == 1, result.stderr
    assert "✗ top-1 drop" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["passed"] is False
    assert report["conversion"]["quantize"] == "dynamic"
    # Timed against the plain int8 model of the same network, built for the purpose; its hybrid
    # convolutions run outside XNNPACK, which the report counts.
    reference = report["latency_ratio"]["reference"]
    assert reference["kind"] == "int8" and len(reference["sha256"]) == 64 and reference["median_ms"] > 0
    assert report["latency_ratio"]["value"] > 0
    assert report["benchmark"]["ops_not_delegated"] > 2


def _assert_bad_input(result, *words, out=None):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    if out is not None:
        assert not out.exists(), f"{out} was written"


def _bad_cases(tmp_path, calibration_folder):
    calibration_folder = calibration_folder[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("x")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(calibration_folder, unreadable)
    (unreadable / "cats" / "aaa_dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    not_hdf5 = tmp_path / "weights.weights.h5"
    not_hdf5.write_text("not weights")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cal = ["--calibration", str(calibration_folder)]
    return {
        "missing calibration folder": (["--calibration", str(tmp_path / "nope")], ["does not exist"]),
        "empty calibration folder": (["--calibration", str(empty)], ["no images", str(empty)]),
        "folder with no images": (["--calibration", str(no_images)], ["no images", str(no_images)]),
        "unreadable file": (["--calibration", str(unreadable)], ["cannot read", "aaa_dangling.jpg"]),
        "weights not HDF5": (cal + ["--weights", str(not_hdf5)], ["not an HDF5 file", str(not_hdf5)]),
        "unwritable output": (cal + ["--output", str(blocker / "out")], ["--output", "is a file"]),
        "samples 0": (cal + ["--calibration-samples", "0"], ["--calibration-samples must be at least 1"]),
        "unknown quantize": (cal + ["--quantize", "int3"], ["--quantize int3 is unknown"]),
        "bad io": (cal + ["--quantize", "none", "--io", "uint8"], ["--io uint8 does not go with"]),
        "missing eval folder": (cal + ["--eval", str(tmp_path / "noeval")], ["--eval", "is not a folder"]),
        "eval classes unknown": (cal + ["--eval", str(calibration_folder)], ["not model labels"]),
        "bad flag value": (cal + ["--calibration-samples", "many"], ["calibration-samples"]),
        "qat with keep-float": (cal + ["--qat", "--keep-float", "block_1"], ["--qat and --keep-float"]),
        "qat without int8": (cal + ["--qat", "--quantize", "float16"], ["--qat fine-tunes for int8"]),
        "qat epochs 0": (cal + ["--qat", "--qat-epochs", "0"], ["--qat-epochs must be at least 1"]),
        "qat without held-out images": (cal + ["--qat", "--calibration-samples", "20"],
                                        ["--qat judges each epoch", "has only", "--calibration-samples"]),
        # Untrained weights leave a layer dead: its int16 scale is ~0 and LiteRT will not prepare it.
        "model the runtime refuses": (cal + ["--calibration-samples", "20", "--quantize", "int16x8"],
                                      ["--quantize int16x8 model does not load in LiteRT",
                                       "DEPTHWISE_CONV_2D", "--quantize int8"]),
    }


def test_bad_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, calibration_folder):
    from concurrent.futures import ThreadPoolExecutor

    def run_case(item):
        name, (args, words) = item
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        if "--output" not in args:
            args = args + ["--output", str(out)]
        flags = ["--alpha", "0.35", "--resolution", "96"] if "--weights" in args else SMALL
        return run_cli("export", *flags, *args), words, out

    # Two cases at a time: each is one mostly single-threaded process, the CI machine has 2 cores.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run_case, _bad_cases(tmp_path, calibration_folder).items()))
    for result, words, out in results:
        _assert_bad_input(result, *words, out=out)


def test_weights_for_another_alpha_exit_2(tmp_path, small_built, calibration_folder):
    weights = tmp_path / "small.weights.h5"
    small_built.keras_model.save_weights(weights)
    out = tmp_path / "out"
    result = run_cli("export", "--alpha", "0.5", "--resolution", "96", "--weights", weights,
                     "--calibration", calibration_folder[0], "--output", out)
    _assert_bad_input(result, "does not fit MobileNetV2 alpha=0.5", str(weights), out=out)


def test_imagenet_offline_without_cache_exit_2(tmp_path, calibration_folder):
    out = tmp_path / "out"
    result = run_cli("export", "--weights", "imagenet", "--calibration", calibration_folder[0],
                     "--output", out, env={"KERAS_HOME": str(tmp_path / "empty_keras_home"), **NO_NETWORK})
    _assert_bad_input(result, "not cached and could not be downloaded", "KERAS_HOME", out=out)


def test_bad_input_leaves_previous_artifacts_untouched(small_export, tmp_path):
    out, _ = small_export
    before = _digest(out)
    result = run_cli("export", *SMALL, "--calibration", tmp_path / "missing", "--output", out)
    assert result.returncode == 2
    assert _digest(out) == before


def test_interrupted_run_leaves_previous_artifacts_and_no_partial_files(small_export,
                                                                        calibration_folder):
    out, _ = small_export
    before = _digest(out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.export", *SMALL, "--quantize", "int8",
         "--calibration", str(calibration_folder[0]), "--calibration-samples", "20",
         "--output", str(out)],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline:
        line = process.stderr.readline()
        seen += line
        if "convert…" in line and "convert_float" not in line or not line:
            break
    # Inside the int8 conversion (~4 s here). A longer wait once let a faster machine finish
    # converting and move on before the signal came.
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert _digest(out) == before
    leftovers = [p.name for p in out.parent.iterdir() if ".partial-" in p.name]
    assert leftovers == []


def test_latency_reference_is_timed_beside_the_model(small_export, calibration_folder, tmp_path):
    # A user's last release as the reference: timed interleaved with the new model; the report
    # names it. (The ratio's value is a measurement, asserted by nothing here.)
    release = tmp_path / "release.tflite"
    shutil.copy(small_export[0] / "model.tflite", release)
    out = tmp_path / "out"
    result = run_cli("export", *SMALL, "--calibration", calibration_folder[0],
                     "--calibration-samples", "20", "--latency-reference", release, "--output", out)
    assert result.returncode == 0, result.stderr
    ratio = json.loads((out / "report.json").read_text())["latency_ratio"]
    assert ratio["reference"]["kind"] == "file" and ratio["reference"]["name"] == "release.tflite"
    assert ratio["reference"]["sha256"] == hashlib.sha256(release.read_bytes()).hexdigest()
    assert ratio["reference"]["int8"] is True and ratio["reference"]["macs"] > 0
    assert ratio["value"] > 0 and ratio["reference"]["median_ms"] > 0
    assert "release.tflite (--latency-reference)" in (out / "report.md").read_text()
    # A reference that is no model is bad input, before any work.
    result = run_cli("export", *SMALL, "--calibration", calibration_folder[0],
                     "--latency-reference", tmp_path / "missing.tflite", "--output", tmp_path / "x")
    assert result.returncode == 2 and "missing.tflite" in result.stderr
    assert not (tmp_path / "x").exists()


def test_keep_float_export_is_timed_against_the_plain_int8_reference(calibration_folder, tmp_path):
    # A model with float layers is not its own reference: the gate must see what they cost.
    out = tmp_path / "out"
    result = run_cli("export", *SMALL, "--calibration", calibration_folder[0],
                     "--calibration-samples", "20", "--keep-float", "Conv1", "--output", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["keep_float"]["mode"] == "names"
    assert report["latency_ratio"]["reference"]["kind"] == "int8"


# --- Faults while the artifacts are written: a full disk, SIGKILL, two exports at once -----------

def _consistent_set(out):
    """The folder holds one export's whole set: every artifact, and the report describes this model."""
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "model_config.json").read_text())
    assert report["sha256"]["model"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert config["model"]["quantize"] == report["model"]["quantize"]
    assert report["command"] in (out / "report.md").read_text() or report["model"]["name"] in (
        out / "report.md").read_text()
    return report


def test_disk_full_while_writing_artifacts_leaves_the_previous_set(small_export, calibration_folder,
                                                                   tmp_path):
    from tests.test_artifacts import fill, small_tmpfs

    previous, _ = small_export
    size = sum(p.stat().st_size for p in previous.iterdir())
    with small_tmpfs(tmp_path / "disk", size=f"{size // 1024 + 512}k") as disk:
        out = disk / "out"
        shutil.copytree(previous, out)
        before = _digest(out)
        fill(disk, 200 * 1024)  # room for a probe folder, not for a new model beside the old one
        result = run_cli("export", *SMALL, "--quantize", "float16", "--calibration",
                         calibration_folder[0], "--calibration-samples", "20", "--output", out)
        _assert_bad_input(result, "no space left", str(out))
        assert _digest(out) == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "out"]


# Runs the real export and SIGKILLs it at a chosen instant of writing its artifacts: halfway through
# staging them (three files written, fsynced), or the moment the new set has been swapped in
# before the old one is removed, the worst instant to die. Chosen, not timed: a sleep after the
# "report…" line once let a fast machine finish the whole commit before the signal came.
_KILLED_EXPORT = """
import os, runpy, signal, sys
from pipeline.core import artifacts
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
when = sys.argv.pop(1)
if when == "staging":
    write, written = artifacts._write_file, []
    def write_then_die(path, content):
        write(path, content)
        written.append(path)
        if len(written) == 3:
            die()
    artifacts._write_file = write_then_die
else:
    swap = artifacts.exchange
    def swap_then_die(a, b):
        swap(a, b)
        die()
    artifacts.exchange = swap_then_die
sys.argv = ["pipeline/export.py"] + sys.argv[1:]
runpy.run_module("pipeline.export", run_name="__main__")
"""


def test_sigkill_and_concurrent_exports_leave_one_whole_set(small_export, calibration_folder,
                                                            tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_export[0], out)
    before = _digest(out)
    args = [*SMALL, "--calibration", str(calibration_folder[0]), "--calibration-samples", "20",
            "--output", str(out)]
    # 1. SIGKILL halfway through staging the new artifacts: OUT is untouched.
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, "staging", *args, "--quantize",
                             "float16"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _digest(out) == before
    # 2. SIGKILL right after the swap: the new set is whole, the old one is left beside it, hidden.
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, "swap", *args, "--quantize",
                             "float16"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _consistent_set(out)["model"]["quantize"] == "float16"
    assert any(".partial-" in p.name for p in tmp_path.iterdir())
    # 3. Two exports into the same folder at once (int8 and dynamic): both finish, the folder holds
    # one of them whole, and what the killed runs left is gone.
    runs = [subprocess.Popen([sys.executable, "-m", "pipeline.export", *args, "--quantize", mode],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for mode in ("int8", "dynamic")]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert _consistent_set(out)["model"]["quantize"] in ("int8", "dynamic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_temporary_disk_is_one_line_not_a_converter_traceback(tmp_path):
    # The converter's SavedModel goes to TMPDIR; TensorFlow says nothing of the disk when it fills.
    from tests.test_artifacts import small_tmpfs

    with small_tmpfs(tmp_path / "tmp", size="256k") as tmp:
        out = tmp_path / "model.tflite"
        result = run_cli("convert", *SMALL, "--quantize", "none", "--out", out, env={"TMPDIR": str(tmp)})
        _assert_bad_input(result, "ran out of temporary space", str(tmp), "TMPDIR", out=out)


def test_the_api_exports_twice_in_one_process_with_the_bytes_of_the_command_line(
        small_export, calibration_folder, tmp_path):
    """`api.export` is the command without flags: two exports with different settings in this
    process, each byte-identical to its command line; bad input is a typed error, nothing written."""
    from pipeline import api
    from pipeline.core.errors import PipelineInputError

    cli_default, _ = small_export
    cli_percentile = tmp_path / "cli_percentile"
    result = run_cli("export", *SMALL, "--calibration", calibration_folder[0],
                     "--calibration-samples", "20", "--activation-ranges", "percentile",
                     "--output", cli_percentile)
    assert result.returncode == 0, result.stderr[-2000:]
    common = dict(alpha=0.35, resolution=96, weights="random", seed=0,
                  calibration=str(calibration_folder[0]), calibration_samples=20)
    percentile = api.export(**common, activation_ranges="percentile", output=str(tmp_path / "p"))
    default = api.export(**common, output=str(tmp_path / "d"))
    assert (tmp_path / "p" / "model.tflite").read_bytes() == (cli_percentile / "model.tflite").read_bytes()
    assert (tmp_path / "d" / "model.tflite").read_bytes() == (cli_default / "model.tflite").read_bytes()
    assert percentile.model != default.model and default.passed
    assert default.report["agreement_top1"] == json.loads((cli_default / "report.json").read_text())["agreement_top1"]
    with pytest.raises(PipelineInputError, match="--calibration-samples"):
        api.export(**{**common, "calibration_samples": 0}, output=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(PipelineInputError, match="export has no setting 'no_such_flag'"):
        api.export(no_such_flag=1)
