"""The gate command as CI runs it: real exports of the shared ImageNet weights, planted regressions
that must each fail their check in the JUnit file, and an unchanged model that must pass with the
same bytes. (The judgement itself, on hand-made reports: tests/test_gate.py.)"""

import json
import xml.etree.ElementTree as ElementTree

import pytest
from PIL import Image

from pipeline.stages import check
from tests.conftest import IMAGENETTE, SHARED, WEIGHTS_DIR, run_cli
from tests.test_gate import REPORT, _churn, _per_image

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
GOOGLE_PTQ = SHARED / "reference-models" / "google" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
needs_shared = pytest.mark.skipif(
    not (WEIGHTS.is_file() and IMAGENETTE.is_dir() and GOOGLE_PTQ.is_file()),
    reason="needs ../shared: the ImageNet weights, Imagenette and Google's int8 MobileNetV2")
# The real classifier at 96 px, timed against Google's int8 release (a model other than the one
# judged: any fixed model serves as the reference within one machine class).
REAL96 = [
    "--weights", WEIGHTS, "--resolution", "96", "--calibration", IMAGENETTE / "calib",
    "--calibration-samples", "100", "--eval", IMAGENETTE / "val", "--eval-samples", "400",
    "--latency-reference", GOOGLE_PTQ,
]


def _write_report(folder, report, per_image):
    folder.mkdir(exist_ok=True)
    report = dict(report, parity={"per_image_file": "parity_images.csv"})
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "parity_images.csv").write_text(per_image.to_csv())
    return folder / "report.json"


def test_cli_gates_a_report_file_with_its_per_image_results(tmp_path):
    base = _per_image()
    report_path = _write_report(tmp_path / "base", REPORT, base)
    baseline = tmp_path / "baseline.json"
    result = run_cli("check", "--report", report_path, "--baseline", baseline, "--update-baseline")
    assert result.returncode == 0, result.stderr
    recorded = json.loads(baseline.read_text())
    assert recorded["agreement_top1"] == 0.960 and len(recorded["per_image"]["rows"]) == 1000
    outputs = ["--junit", tmp_path / "junit.xml", "--result", tmp_path / "result.json",
               "--summary", tmp_path / "summary.md"]
    result = run_cli("check", "--report", report_path, "--baseline", baseline, *outputs)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "result.json").read_text())["passed"] is True
    assert "model: byte-identical" in result.stdout
    assert "Parity gate: passed" in (tmp_path / "summary.md").read_text()
    worse = _churn(base, 35, 5)
    worse_path = _write_report(tmp_path / "worse", dict(REPORT, agreement_top1=0.93), worse)
    result = run_cli("check", "--report", worse_path, "--baseline", baseline, *outputs)
    assert result.returncode == 1
    assert "✗ agreement_top1" in result.stdout and "35 newly disagree" in result.stdout
    assert ElementTree.parse(tmp_path / "junit.xml").getroot().get("failures") == "1"
    flips = json.loads((tmp_path / "result.json").read_text())["checks"][1]["extra"]
    assert len(flips["newly_disagree"]) == 35
    # A report without its per-image file is gated against the fixed bound, and says so.
    (tmp_path / "worse" / "parity_images.csv").unlink()
    result = run_cli("check", "--report", worse_path, "--baseline", baseline)
    assert result.returncode == 1 and "this run wrote no per-image results" in result.stdout
    result = run_cli("check", "--report", report_path, "--baseline", tmp_path / "missing.json")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli("check", "--report", report_path, "--baseline", baseline, "--significance", "2")
    assert result.returncode == 2 and "--significance 2.0 must be between 0 and 1" in result.stderr


def _concurrently(*commands):
    """Runs `run_cli` commands two at a time (the CI machine has 2 cores; each is mostly one
    single-threaded process); returns their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def _failed_cases(junit):
    return {case.get("name"): case.find("failure").get("message")
            for case in ElementTree.parse(junit).getroot().iter("testcase")
            if case.find("failure") is not None}


@pytest.fixture(scope="module")
def baseline96(tmp_path_factory):
    """A baseline recorded from the real 96 px export, and a second, unchanged run gated on it."""
    if not (WEIGHTS.is_file() and IMAGENETTE.is_dir() and GOOGLE_PTQ.is_file()):
        pytest.skip("needs ../shared: the ImageNet weights, Imagenette and Google's int8 MobileNetV2")
    root = tmp_path_factory.mktemp("gate96")
    baseline = root / "baseline.json"
    result = run_cli("check", *REAL96, "--baseline", baseline, "--update-baseline",
                     "--output", root / "base")
    assert result.returncode == 0, result.stderr[-2000:]
    return root, baseline


@needs_shared
def test_unchanged_model_passes_with_the_baseline_s_bytes(baseline96):
    root, baseline = baseline96
    # --no-cache: made again from scratch, and the bytes are still the baseline's.
    result = run_cli("check", *REAL96, "--baseline", baseline, "--no-cache",
                     "--junit", root / "again.xml", "--output", root / "again")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "model: byte-identical to the baseline's" in result.stdout
    assert "0 newly disagree, 0 newly agree" in result.stdout
    assert "✓ latency_growth" in result.stdout and "tf2_mobilenet_v2_1.0_224_ptq.tflite" in result.stdout
    assert ElementTree.parse(root / "again.xml").getroot().get("failures") == "0"


@needs_shared
def test_gate_catches_per_tensor_weights_blank_and_too_small_calibration(baseline96, tmp_path):
    root, baseline = baseline96
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(5):
        Image.new("RGB", (96, 96), (128, 128, 128)).save(blank / f"blank_{i}.png")
    blank_args = [a if a != IMAGENETTE / "calib" else blank for a in REAL96]
    # Calibrated on 3 images instead of 100: a genuinely worse model (89% → 79% agreement on the
    # 400 images, 64 newly disagreeing against 23, p ~ 1e-5 here). (On 5 images the drop is 3
    # points, 36 against 24: p 0.08, inside the noise of the 96 px configuration, though KL doubles.)
    few_args = [a if a != "100" else "3" for a in REAL96]
    junits = {name: tmp_path / f"{name}.xml" for name in ("per_tensor", "blank", "few")}
    per_tensor, blanked = _concurrently(
        ("check", *REAL96, "--granularity", "per-tensor", "--baseline", baseline,
         "--junit", junits["per_tensor"], "--output", tmp_path / "per_tensor"),
        ("check", *blank_args, "--baseline", baseline, "--junit", junits["blank"],
         "--output", tmp_path / "blank_out"))
    few = run_cli("check", *few_args, "--baseline", baseline, "--junit", junits["few"],
                  "--output", tmp_path / "few")
    assert per_tensor.returncode == 1, per_tensor.stdout
    assert {"relative_top1", "agreement_top1", "kl_mean"} <= set(_failed_cases(junits["per_tensor"]))
    assert blanked.returncode == 1, blanked.stdout
    assert "agreement_top1" in _failed_cases(junits["blank"])
    assert few.returncode == 1, few.stdout
    failed = _failed_cases(junits["few"])
    assert {"agreement_top1", "kl_mean"} <= set(failed), few.stdout
    assert "newly disagree" in failed["agreement_top1"] and "McNemar" in failed["agreement_top1"]
    # The model is not the baseline's, and the gate names what changed.
    assert "model: differs from the baseline's" in few.stdout
    assert "calibration images" in few.stdout


@needs_shared
def test_gate_catches_a_block_silently_in_float_by_name(baseline96, tmp_path):
    root, baseline = baseline96
    junit = tmp_path / "float_block.xml"
    result = run_cli("check", *REAL96, "--keep-float", "block_8", "--baseline", baseline,
                     "--junit", junit, "--output", tmp_path / "float_block")
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    failed = _failed_cases(junit)
    assert "structure" in failed
    assert "block_8_expand_relu: CONV_2D int8/int8 per-channel → CONV_2D float32/float32" in \
        failed["structure"]
    # Accuracy is as good as the baseline's (a float block only helps); MACs are the same.
    assert not {"agreement_top1", "kl_mean", "macs_growth"} & set(failed), failed


def _slowed_model(path, copies=40):
    """MobileNetV2 1.0 at 96 px on the shared weights with `copies` zero-pad/crop pairs after
    block_1's expansion: exactly the same function, the same MACs and conv layers, every op taken
    by XNNPACK, and each pair moves a 60×60×96 tensor twice. A real model that runs slower, which
    only a latency ratio to another model can see."""
    import keras

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None,
                                           classifier_activation=None)
    model.load_weights(str(WEIGHTS))

    def call(layer, *args, **kwargs):
        y = layer(*args, **kwargs)
        if layer.name == "block_1_expand_relu":
            for i in range(copies):
                y = keras.layers.Cropping2D(6, name=f"slow_crop_{i}")(
                    keras.layers.ZeroPadding2D(6, name=f"slow_pad_{i}")(y))
        return y

    keras.models.clone_model(model, clone_function=lambda layer: layer,
                             call_function=call).save(path)
    return path


@needs_shared
def test_gate_catches_a_slower_model_with_the_same_work_and_ops(baseline96, tmp_path):
    root, baseline = baseline96
    slowed = _slowed_model(tmp_path / "slowed.keras")
    junit = tmp_path / "slow.xml"
    args = [a for a in REAL96[2:]]  # --model instead of --weights
    result = run_cli("check", "--model", slowed, *args, "--baseline", baseline, "--junit", junit,
                     "--output", tmp_path / "slow")
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    failed = _failed_cases(junit)
    assert set(failed) == {"latency_growth"}, result.stdout
    assert "tf2_mobilenet_v2_1.0_224_ptq.tflite" in failed["latency_growth"]
    # What the old gate judged by saw nothing: the same MACs, layers and delegation, and the same
    # outputs image by image.
    assert "✓ macs_growth: 0.0000" in result.stdout and "✓ structure" in result.stdout
    assert "✓ undelegated_ops" in result.stdout and "0 newly disagree" in result.stdout


@needs_shared
def test_gate_catches_undelegated_ops_and_another_model_s_baseline(baseline96, tmp_path):
    root, baseline = baseline96
    # Dynamic-range quantization (hybrid kernels outside XNNPACK, float activations); and a
    # baseline written for another model (MobileNetV2 0.35, random weights), which fails on size
    # and work whatever the accuracy does.
    other = tmp_path / "other_baseline.json"
    junit = tmp_path / "dynamic.xml"
    dynamic, made_other = _concurrently(
        ("check", *REAL96, "--quantize", "dynamic", "--baseline", baseline, "--junit", junit,
         "--output", tmp_path / "dynamic"),
        ("check", "--alpha", "0.35", "--resolution", "96", "--weights", "random",
         "--calibration", IMAGENETTE / "calib", "--calibration-samples", "20",
         "--eval-samples", "20", "--eval", IMAGENETTE / "val", "--latency-reference", GOOGLE_PTQ,
         "--baseline", other, "--update-baseline", "--output", tmp_path / "other"))
    assert dynamic.returncode == 1, dynamic.stdout + dynamic.stderr[-2000:]
    assert {"undelegated_ops", "structure"} <= set(_failed_cases(junit)), dynamic.stdout
    assert "machine: " in dynamic.stdout
    assert made_other.returncode == 0, made_other.stderr[-2000:]
    junit = tmp_path / "other.xml"
    by_other = run_cli("check", "--report", root / "base" / "report.json", "--baseline", other,
                       "--junit", junit)
    assert by_other.returncode == 1
    failed = _failed_cases(junit)
    assert {"size_growth", "macs_growth"} <= set(failed)
    assert "bytes vs baseline" in failed["size_growth"]


def test_comparison_table_and_sweep_plot():
    worse = dict(REPORT, agreement_top1=0.9, kl_mean=0.02)
    table = check.comparison_table([("a", REPORT), ("b", worse)])
    assert "| a | 70.00% | 69.80% | 96.00% | 0.00800 | 4,000,000 | 1.70 | 1.0000 |" in table
    png = check.sweep_plot([(10, worse), (300, REPORT)], "t")
    assert png[:4] == b"\x89PNG"


def test_calibration_sweep_cli(tmp_path, image_folder):
    out = tmp_path / "study"
    result = run_cli("check", "--alpha", "0.35", "--resolution", "96", "--weights", "random",
                     "--calibration", image_folder, "--sweep-calibration", "4,8", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    points = json.loads((out / "calibration_sweep.json").read_text())
    assert [p["calibration_images"] for p in points] == [4, 8]
    assert (out / "calibration_sweep.png").read_bytes()[:4] == b"\x89PNG"
    reports = [json.loads((out / "sweep" / str(i) / "report.json").read_text()) for i in (0, 1)]
    assert [r["calibration"]["used"] for r in reports] == [4, 8]


def test_the_committed_baseline_is_today_s_format_and_model():
    """.ci/parity_baseline.json is what `.ci/run`'s gate reads: the current format, a model digest,
    per-image results for all 1,000 gated images, and the latency reference .ci/run passes."""
    from tests.conftest import REPO

    baseline = json.loads((REPO / ".ci" / "parity_baseline.json").read_text())
    assert baseline["format_version"] == 3 and len(baseline["model_sha256"]) == 64
    assert len(baseline["per_image"]["rows"]) == 1000
    assert baseline["latency_reference"]["name"] == GOOGLE_PTQ.name
    assert "--latency-reference" in (REPO / ".ci" / "run").read_text()
