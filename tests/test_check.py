"""The parity gate: planted regressions must be caught, and reported as CI systems read them."""

import copy
import json
import xml.etree.ElementTree as ElementTree

import pytest
from PIL import Image

from pipeline import check
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, run_cli

REPORT = {
    "model": {"name": "mobilenet_v2_1.0_96", "quantize": "int8"},
    "float": {"top1": 0.700, "top5": 0.900},
    "tflite": {"top1": 0.698, "top5": 0.899},
    "agreement_top1": 0.960,
    "kl_mean": 0.0080,
    "size_bytes": 4_000_000,
    "latency_ms": {"1": {"median": 1.70, "p90": 1.80}, "2": {"median": 1.0, "p90": 1.1}},
    "command": "python -m pipeline.export ...",
}


def _gate(report, **thresholds):
    return {r.name: r for r in check.gate(report, check.baseline_from_report(REPORT),
                                          check.GateThresholds(**thresholds))}


def test_unchanged_model_passes_every_check():
    results = _gate(REPORT)
    assert set(results) == {"relative_top1", "agreement_top1", "top5_drop", "kl_mean",
                            "size_growth", "latency_growth"}
    assert all(r.passed for r in results.values())


@pytest.mark.parametrize("change, failing", [
    ({"tflite": {"top1": 0.680, "top5": 0.899}}, {"relative_top1"}),  # 0.971 of float
    ({"agreement_top1": 0.945}, {"agreement_top1"}),  # 1.5 pt below the baseline
    ({"tflite": {"top1": 0.698, "top5": 0.880}}, {"top5_drop"}),
    ({"kl_mean": 0.0200}, {"kl_mean"}),
    ({"size_bytes": 4_400_000}, {"size_growth"}),
    ({"latency_ms": {"1": {"median": 3.5, "p90": 4.0}}}, {"latency_growth"}),
])
def test_planted_regression_fails_exactly_its_check(change, failing):
    report = copy.deepcopy(REPORT)
    report.update(change)
    results = _gate(report)
    assert {name for name, r in results.items() if not r.passed} == failing


def test_explicit_thresholds_override_baseline_defaults():
    results = _gate(REPORT, min_agreement=0.97, max_kl=0.005)
    assert not results["agreement_top1"].passed and not results["kl_mean"].passed


def test_unlabelled_report_cannot_pass_relative_top1():
    report = copy.deepcopy(REPORT)
    report["float"] = {"top1": None, "top5": None}
    report["tflite"] = {"top1": None, "top5": None}
    results = _gate(report)
    assert not results["relative_top1"].passed and "not measured" in results["relative_top1"].detail


def test_junit_names_the_failed_threshold_and_its_numbers():
    report = copy.deepcopy(REPORT)
    report["agreement_top1"] = 0.90
    suite = ElementTree.fromstring(check.junit_xml(check.gate(
        report, check.baseline_from_report(REPORT), check.GateThresholds())))
    assert suite.get("tests") == "6" and suite.get("failures") == "1"
    failed = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["agreement_top1"]
    message = failed[0].find("failure").get("message")
    assert "0.9000" in message and "0.9500" in message
    properties = {p.get("name"): p.get("value") for p in failed[0].iter("property")}
    assert properties["measured"] == "0.9" and properties["relation"] == "≥"


def test_cli_gates_a_report_file(tmp_path):
    report_path, baseline = tmp_path / "report.json", tmp_path / "baseline.json"
    report_path.write_text(json.dumps(REPORT))
    result = run_cli("check", "--report", report_path, "--baseline", baseline, "--update-baseline")
    assert result.returncode == 0, result.stderr
    assert json.loads(baseline.read_text())["agreement_top1"] == 0.960
    outputs = ["--junit", tmp_path / "junit.xml", "--result", tmp_path / "result.json",
               "--summary", tmp_path / "summary.md"]
    result = run_cli("check", "--report", report_path, "--baseline", baseline, *outputs)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "result.json").read_text())["passed"] is True
    assert "Parity gate: passed" in (tmp_path / "summary.md").read_text()
    worse = dict(REPORT, agreement_top1=0.90)
    report_path.write_text(json.dumps(worse))
    result = run_cli("check", "--report", report_path, "--baseline", baseline, *outputs)
    assert result.returncode == 1
    assert "✗ agreement_top1" in result.stdout
    assert ElementTree.parse(tmp_path / "junit.xml").getroot().get("failures") == "1"
    result = run_cli("check", "--report", report_path, "--baseline", tmp_path / "missing.json")
    assert result.returncode == 2 and "does not exist" in result.stderr


REAL96 = [
    "--weights", WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "--resolution", "96", "--calibration", IMAGENETTE / "calib", "--calibration-samples", "100",
    "--eval", IMAGENETTE / "val", "--eval-samples", "400",
]


@pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                    reason="needs ../shared weights and Imagenette")
def test_gate_catches_per_tensor_weights_and_blank_calibration(tmp_path):
    baseline = tmp_path / "baseline.json"
    result = run_cli("check", *REAL96, "--baseline", baseline, "--update-baseline",
                     "--output", tmp_path / "base")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("check", *REAL96, "--baseline", baseline, "--output", tmp_path / "again")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]

    # A baseline written for another model (MobileNetV2 0.35, random weights) fails on size and
    # latency, whatever the accuracy does.
    other = tmp_path / "other_baseline.json"
    result = run_cli("check", "--alpha", "0.35", "--resolution", "96", "--weights", "random",
                     "--calibration", IMAGENETTE / "calib", "--calibration-samples", "20",
                     "--eval-samples", "20", "--eval", IMAGENETTE / "val", "--baseline", other,
                     "--update-baseline", "--output", tmp_path / "other")
    assert result.returncode == 0, result.stderr[-2000:]
    junit = tmp_path / "other.xml"
    result = run_cli("check", "--report", tmp_path / "again" / "report.json", "--baseline", other,
                     "--junit", junit)
    assert result.returncode == 1
    failed = {case.get("name"): case.find("failure").get("message")
              for case in ElementTree.parse(junit).getroot().iter("testcase")
              if case.find("failure") is not None}
    assert {"size_growth", "latency_growth"} <= set(failed)
    assert "bytes vs baseline" in failed["size_growth"]

    junit = tmp_path / "per_tensor.xml"
    result = run_cli("check", *REAL96, "--granularity", "per-tensor", "--baseline", baseline,
                     "--junit", junit, "--output", tmp_path / "per_tensor")
    assert result.returncode == 1, result.stdout
    failed = {case.get("name") for case in ElementTree.parse(junit).getroot().iter("testcase")
              if case.find("failure") is not None}
    assert {"relative_top1", "agreement_top1", "kl_mean"} <= failed

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(5):
        Image.new("RGB", (96, 96), (128, 128, 128)).save(blank / f"blank_{i}.png")
    junit = tmp_path / "blank.xml"
    args = [a if a != IMAGENETTE / "calib" else blank for a in REAL96]
    result = run_cli("check", *args, "--baseline", baseline, "--junit", junit,
                     "--output", tmp_path / "blank_out")
    assert result.returncode == 1, result.stdout
    failed = {case.get("name") for case in ElementTree.parse(junit).getroot().iter("testcase")
              if case.find("failure") is not None}
    assert "agreement_top1" in failed


def test_comparison_table_and_sweep_plot():
    worse = dict(REPORT, agreement_top1=0.9, kl_mean=0.02)
    table = check.comparison_table([("a", REPORT), ("b", worse)])
    assert "| a | 70.00% | 69.80% | 96.00% | 0.00800 | 4,000,000 | 1.70 |" in table
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
