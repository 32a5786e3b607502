import math

import numpy as np
import pytest

from pipeline.stages import build, calibrate, convert, evalset, parity_metrics, verify
from pipeline.core.errors import PipelineInputError
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, make_images


def test_identical_outputs_agree_fully():
    logits = np.random.default_rng(0).normal(size=(50, 10))
    metrics = parity_metrics.compare_outputs(logits, logits.copy())
    assert metrics["agreement_top1"] == 1.0
    assert metrics["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["snr_db"] is None  # identical: no noise


def test_kl_and_snr_match_hand_computation():
    reference = np.array([[2.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[1.0, 0.0], [0.0, 1.0]])
    metrics = parity_metrics.compare_outputs(reference, candidate)
    p = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    q = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    expected_kl = float(np.sum(p * np.log(p / q))) / 2  # second image contributes 0
    assert metrics["kl_mean"] == pytest.approx(expected_kl, rel=1e-9)
    assert metrics["snr_db"] == pytest.approx(10 * math.log10(5.0 / 1.0))
    assert metrics["agreement_top1"] == 1.0


def test_topk_and_agreement_count_what_they_say():
    reference = np.array([[3, 2, 1, 0], [0, 1, 2, 3], [1, 3, 2, 0]], float)
    candidate = np.array([[3, 2, 1, 0], [3, 1, 2, 0], [1, 2, 3, 0]], float)
    labels = [0, 2, 1]
    metrics = parity_metrics.compare_outputs(reference, candidate, labels)
    assert metrics["float"]["top1"] == pytest.approx(2 / 3)  # image 2 predicts 3, not 2
    assert metrics["tflite"]["top1"] == pytest.approx(1 / 3)
    assert metrics["agreement_top1"] == pytest.approx(1 / 3)
    assert parity_metrics.topk_accuracy(reference, labels, 2) == 1.0


def test_collapsed_model_is_visible_in_dominant_share():
    reference = np.eye(4)[np.arange(40) % 4] * 5
    collapsed = np.tile([5.0, 0, 0, 0], (40, 1))
    metrics = parity_metrics.compare_outputs(reference, collapsed)
    assert metrics["dominant_share"] == {"float": 0.25, "tflite": 1.0}


def test_class_folders_map_by_synset_or_label(small_built):
    mapping, unknown = evalset.label_index(["n01440764", "n01443537"], small_built)
    assert mapping == {"n01440764": 0, "n01443537": 1} and unknown == []
    mapping, unknown = evalset.label_index(["Golden_Retriever", "tench", "unicorn"], small_built)
    assert mapping["Golden_Retriever"] == small_built.labels.index("golden retriever")
    assert mapping["tench"] == 0 and unknown == ["unicorn"]


def test_eval_folder_with_unknown_classes_is_refused(small_built, image_folder):
    with pytest.raises(PipelineInputError, match="not model labels \\(cats, dogs\\)"):
        evalset.eval_set_from_folder(image_folder, small_built)


def test_flat_eval_folder_is_label_free(small_built, tmp_path):
    make_images(tmp_path / "x", classes=("a",), per_class=3)
    flat = tmp_path / "flat"
    (tmp_path / "x" / "a").rename(flat)
    eval_set = evalset.eval_set_from_folder(flat, small_built)
    assert eval_set.labels is None and len(eval_set.paths) == 3


def test_float_against_itself_is_exact_and_matches_keras(small_built, small_float, image_folder):
    folder = calibrate.scan_images(image_folder)
    eval_set = evalset.EvalSet(folder.files, None, "test")
    result = verify.verify(small_built, small_float.tflite, small_float.tflite, eval_set,
                           Preprocessing(resolution=96), verify.Thresholds(min_agreement=1.0))
    assert result.images == len(folder.files)
    assert result.agreement_top1 == 1.0 and result.kl_mean == 0.0 and result.snr_db is None
    assert result.keras_check["max_abs_prob_diff"] < 1e-4
    assert result.passed


@pytest.fixture(scope="module")
def imagenet96():
    """A real ImageNet classifier small enough to convert fast: the shared 1.0 weights at 96 px
    (conv weights do not depend on resolution), int8 calibrated on 100 Imagenette images."""
    if not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()):
        pytest.skip("needs ../shared weights and Imagenette")
    weights = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    built = build.build_model(build.BuildConfig(resolution=96, weights=str(weights)))
    spec = Preprocessing(resolution=96)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=100), spec)
    int8 = convert.convert(built, calibration.arrays, convert.ConvertConfig("int8"))
    float_model = convert.convert(built, None, convert.ConvertConfig("none"))
    eval_set = evalset.eval_set_from_folder(IMAGENETTE / "val", built, samples=300, seed=0)
    return built, spec, int8, float_model, eval_set


def test_labelled_parity_on_imagenette(imagenet96):
    built, spec, int8, float_model, eval_set = imagenet96
    assert len(eval_set.paths) == 300 and len(set(eval_set.labels)) == 10
    result = verify.verify(built, float_model.tflite, int8.tflite, eval_set, spec,
                           verify.Thresholds(min_agreement=0.8, max_top1_drop=5.0))
    # A real classifier: far above chance (1/1000) even at 96 px, and int8 close to float.
    assert result.float_metrics["top1"] > 0.2
    assert result.float_metrics["top5"] > result.float_metrics["top1"]
    assert 0.8 < result.agreement_top1 < 1.0
    assert 0 < result.kl_mean < 0.5 and result.snr_db > 10
    assert len(result.per_class) == 10 and sum(r["images"] for r in result.per_class) == 300
    assert result.passed, verify.format_checks(result)


def test_thresholds_fail_when_parity_is_worse(imagenet96):
    built, spec, int8, float_model, eval_set = imagenet96
    result = verify.verify(built, float_model.tflite, int8.tflite, eval_set, spec,
                           verify.Thresholds(min_agreement=0.999, max_top1_drop=-50.0))
    assert not result.passed
    failed = [text for ok, text in result.checks if not ok]
    assert any(text.startswith("top-1 agreement") for text in failed)
    assert any(text.startswith("top-1 drop") for text in failed)
    assert "✗ top-1 agreement" in verify.format_checks(result)


def test_every_quantization_mode_has_the_parity_and_size_it_should(imagenet96):
    built, spec, int8, float_model, eval_set = imagenet96
    subset = evalset.EvalSet(eval_set.paths[:100], eval_set.labels[:100], "subset")
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=50), spec)
    results = {}
    for mode in ("none", "float16", "dynamic", "int16x8"):
        converted = convert.convert(built, calibration.arrays, convert.ConvertConfig(mode))
        parity = verify.verify(built, float_model.tflite, converted.tflite, subset, spec)
        results[mode] = (converted.size_bytes / float_model.size_bytes, parity)
        if mode == "int16x8":
            assert converted.input.dtype == "float32"
            assert all(w["activation_dtype"] == "int16" and w["weight_dtype"] == "int8"
                       for w in converted.weighted_ops)
    int8_parity = verify.verify(built, float_model.tflite, int8.tflite, subset, spec)
    assert results["none"][1].agreement_top1 == 1.0 and results["none"][0] == 1.0
    assert 0.45 < results["float16"][0] < 0.55 and results["float16"][1].kl_mean < int8_parity.kl_mean / 5
    assert 0.25 < results["dynamic"][0] < 0.32 and results["dynamic"][1].agreement_top1 > 0.9
    # int16 activations are far closer to float than int8 ones.
    assert results["int16x8"][1].kl_mean < int8_parity.kl_mean / 5
    assert results["int16x8"][1].agreement_top1 >= int8_parity.agreement_top1
