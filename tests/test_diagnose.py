import json

import pytest

from pipeline import build, calibrate, convert, diagnose
from pipeline.preprocess import Preprocessing
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, run_cli

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
needs_imagenet = pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                                    reason="needs ../shared weights and Imagenette")


def test_layer_name_is_recovered_from_tensor_names():
    name = ("mobilenetv2_1.00_96_1/block_1_depthwise_relu_1/Relu6;mobilenetv2_1.00_96_1/"
            "block_1_depthwise_BN_1/batchnorm/add_1")
    assert diagnose.layer_name(name) == "block_1_depthwise_relu"
    assert diagnose.layer_name("StatefulPartitionedCall_1:0") == "StatefulPartitionedCall_1:0"


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


@needs_imagenet
def test_keep_float_auto_adds_sensitive_blocks_and_reports_their_cost():
    from pipeline.preprocess import load_images

    built = build.build_model(build.BuildConfig(resolution=96, weights=str(WEIGHTS)))
    spec = Preprocessing(resolution=96)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=64), spec)
    float_tflite = convert.convert(built, None, convert.ConvertConfig("none")).tflite
    calibrated = convert.calibrate_model(built, calibration.arrays)
    held_out = load_images(calibration.held_out[:64], spec).arrays
    lines = []
    search = diagnose.search_keep_float(calibrated, convert.ConvertConfig("int8"), float_tflite,
                                        held_out, target_agreement=1.01, max_latency_ratio=10,
                                        max_groups=2, progress=lines.append)
    groups = [s.group for s in search.sensitivity]
    assert "block_1" in groups and "Conv1" in groups and len(groups) >= 18
    # Ordered by added KL per MAC, every group measured in isolation over the all-float floor.
    per_mmac = [s.per_mmac for s in search.sensitivity]
    assert per_mmac == sorted(per_mmac, reverse=True)
    assert all(s.macs > 0 for s in search.sensitivity)
    assert "global_average_pooling2d" not in groups  # no MACs: not worth a float island
    assert search.floor_kl < search.baseline.kl_mean
    # The stem's blocks inject the most error per MAC (at 224 as at 96 px).
    assert {"expanded_conv", "Conv1"} & set(groups[:3]), groups[:5]
    # Unreachable target: exactly max_groups groups added, in the kept order, each costed.
    first = groups if search.order == "most harmful per MAC" else ["Conv1", "expanded_conv"]
    assert [s.groups for s in search.steps] == [first[:1], first[:2]]
    assert not search.reached and search.chosen and search.chosen_groups == first[:2]
    assert search.to_json()["pin"] == "--keep-float " + ",".join(first[:2])
    assert all(s.size_bytes > search.baseline.size_bytes and s.latency_ratio > 0 for s in search.steps)
    assert search.steps[-1].kl_mean < search.baseline.kl_mean
    assert any("keep-float: +" in line for line in lines)
    # A latency budget nothing fits: every group is skipped and the int8 model is kept.
    tight = diagnose.search_keep_float(calibrated, convert.ConvertConfig("int8"), float_tflite,
                                       held_out[:16], target_agreement=1.01, max_latency_ratio=0.5,
                                       max_groups=3, progress=lines.append)
    assert not tight.steps and not tight.chosen and tight.skipped
    assert all(ratio > 0.5 for _, ratio in tight.skipped)


def test_agreement_lower_bound_is_wilsons():
    assert diagnose.lower_bound(200, 200) == pytest.approx(0.9812, abs=1e-4)
    assert diagnose.lower_bound(196, 200) == pytest.approx(0.9497, abs=1e-4)
    assert diagnose.lower_bound(0, 0) == 0.0
    # More images, tighter bound at the same rate.
    assert diagnose.lower_bound(1960, 2000) > diagnose.lower_bound(196, 200)
