import json

import pytest

from pipeline.stages import build, calibrate, convert, diagnose
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, run_cli

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
needs_imagenet = pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                                    reason="needs ../shared weights and Imagenette")


def test_weight_range_ratio_of_a_small_model(small_float):
    ratios = diagnose.weight_range_ratios(small_float.tflite)
    assert [op for op, _, _ in ratios].count("DEPTHWISE_CONV_2D") == 17
    assert all(ratio is None or ratio >= 1 for _, ratio, _ in ratios)


@pytest.fixture(scope="module")
def diagnoses():
    if not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()):
        pytest.skip("needs ../shared weights and Imagenette")
    built = build.build_model(build.BuildConfig(resolution=96, weights=str(WEIGHTS)))
    spec = Preprocessing(resolution=96)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=64), spec)
    float_tflite = convert.convert(built, None, convert.ConvertConfig("none")).tflite
    return {granularity: diagnose.diagnose(built, calibration.arrays, calibration.arrays[:16],
                                           float_tflite, per_channel=granularity == "per-channel")
            for granularity in ("per-channel", "per-tensor")}


def test_per_tensor_diagnosis_points_at_wide_depthwise_layers(diagnoses):
    per_tensor = diagnoses["per-tensor"]
    worst = per_tensor.worst(3)
    assert all(s.op == "DEPTHWISE_CONV_2D" for s in worst), [s.layer for s in worst]
    assert all(s.weight_range_ratio > 10 for s in worst[:2]), [(s.layer, s.weight_range_ratio) for s in worst]
    # Some depthwise kernel's channels differ by 30x+ (shared/README: up to 36x).
    assert max(s.weight_range_ratio for s in per_tensor.layers if s.op == "DEPTHWISE_CONV_2D") > 30
    # Per-channel weights fix it: the worst per-channel layer is many times better.
    assert diagnoses["per-channel"].worst(1)[0].rmse_over_scale < worst[0].rmse_over_scale / 10


def test_diagnosis_covers_every_quantized_layer(diagnoses):
    layers = diagnoses["per-channel"].layers
    ops = [s.op for s in layers]
    assert ops.count("CONV_2D") == 35 and ops.count("DEPTHWISE_CONV_2D") == 17
    assert all(s.snr_db > 0 for s in layers if s.op in ("CONV_2D", "DEPTHWISE_CONV_2D"))
    png = diagnose.render_plot(diagnoses["per-channel"], "test")
    assert png[:4] == b"\x89PNG"
    assert "| block_" in diagnose.render_markdown(diagnoses["per-channel"])


@needs_imagenet
def test_diagnose_cli_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "diag"
    result = run_cli("diagnose", "--weights", WEIGHTS, "--resolution", "96",
                     "--calibration", IMAGENETTE / "calib", "--calibration-samples", "32",
                     "--debug-images", "8", "--granularity", "per-tensor", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"diagnosis.json", "diagnosis.md", "diagnosis.png"}
    worst = json.loads((out / "diagnosis.json").read_text())["layers_worst_first"][0]
    assert worst["op"] == "DEPTHWISE_CONV_2D" and worst["weight_range_ratio"] > 10
