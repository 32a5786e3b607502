"""Selective quantization: names resolved, the keep-float search measured on a real model."""

import pytest

from pipeline.core import layers
from pipeline.stages import build, calibrate, convert, selective
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import IMAGENETTE, WEIGHTS_DIR

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
needs_imagenet = pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                                    reason="needs ../shared weights and Imagenette")


def test_layer_and_block_names_are_recovered_from_tensor_names():
    name = ("mobilenetv2_1.00_96_1/block_1_depthwise_relu_1/Relu6;mobilenetv2_1.00_96_1/"
            "block_1_depthwise_BN_1/batchnorm/add_1")
    assert layers.layer_name(name) == "block_1_depthwise_relu"
    assert layers.layer_group(name) == "block_1"
    assert layers.layer_name("StatefulPartitionedCall_1:0") == "StatefulPartitionedCall_1:0"
    assert layers.layer_group("model/Conv1_relu/Relu6") == "Conv1"


def test_keep_float_names_resolve_to_tensors_and_unknown_names_say_where_to_look(small_built,
                                                                               small_calibration):
    from pipeline.core.errors import PipelineInputError

    calibrated = convert.calibrate_model(small_built, small_calibration.arrays)
    block = convert.resolve_keep_float(["block_1"], calibrated)
    assert block and all(layers.layer_group(t) == "block_1" for t in block)
    with pytest.raises(PipelineInputError, match="no such layer.*pipeline.diagnose"):
        convert.resolve_keep_float(["block_99"], calibrated)


@needs_imagenet
def test_keep_float_auto_adds_sensitive_blocks_and_reports_their_cost():
    from pipeline.stages.preprocess import load_images

    built = build.build_model(build.BuildConfig(resolution=96, weights=str(WEIGHTS)))
    spec = Preprocessing(resolution=96)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=64), spec)
    float_tflite = convert.convert(built, None, convert.ConvertConfig("none")).tflite
    calibrated = convert.calibrate_model(built, calibration.arrays)
    held_out = load_images(calibration.held_out[:64], spec).arrays
    lines = []
    search = selective.search_keep_float(calibrated, convert.ConvertConfig("int8"), float_tflite,
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
    tight = selective.search_keep_float(calibrated, convert.ConvertConfig("int8"), float_tflite,
                                       held_out[:16], target_agreement=1.01, max_latency_ratio=0.5,
                                       max_groups=3, progress=lines.append)
    assert not tight.steps and not tight.chosen and tight.skipped
    assert all(ratio > 0.5 for _, ratio in tight.skipped)


def test_agreement_lower_bound_is_wilsons():
    assert selective.lower_bound(200, 200) == pytest.approx(0.9812, abs=1e-4)
    assert selective.lower_bound(196, 200) == pytest.approx(0.9497, abs=1e-4)
    assert selective.lower_bound(0, 0) == 0.0
    # More images, tighter bound at the same rate.
    assert selective.lower_bound(1960, 2000) > selective.lower_bound(196, 200)
