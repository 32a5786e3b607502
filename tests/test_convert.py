import numpy as np
import pytest

from pipeline.core import tflite
from pipeline.stages import convert, litert, ranges
from pipeline.core.errors import PipelineInputError


def _activation_dtypes(converted):
    return {key.split("[")[1].rstrip("]") for key in converted.ops}


def test_int8_is_full_integer_with_per_channel_weights(small_int8, small_float):
    # uint8 in; the softmax head's float32 probabilities out.
    assert small_int8.input.dtype == "uint8" and small_int8.output.dtype == "float32"
    # The input grid is set, not calibrated: scale 1/127.5 and zero point 127 (Google's release
    # has the same), on which x = (p − 127)/127.5 is exactly the pixel byte.
    assert small_int8.input.scale == np.float32(1 / 127.5) and small_int8.input.zero_point == 127
    weighted = small_int8.weighted_ops
    counts = {op: sum(w["op"] == op for w in weighted) for op in tflite.WEIGHTED_OPS}
    # 35 convolutions (stem, 16 expansions, 17 projections, head), 17 depthwise, 1 classifier.
    assert counts == {"CONV_2D": 35, "DEPTHWISE_CONV_2D": 17, "FULLY_CONNECTED": 1}
    assert all(w["weight_dtype"] == "int8" and w["activation_dtype"] == "int8" and w["per_channel"]
               for w in weighted)
    # Nothing runs in float but the softmax head: only the boundary QUANTIZE op sees uint8, and
    # the int8 logits are dequantized into a float32 SOFTMAX.
    assert _activation_dtypes(small_int8) == {"int8", "uint8", "float32"}
    assert small_int8.ops["SOFTMAX[float32]"] == 1 and small_int8.ops["DEQUANTIZE[int8]"] == 1
    assert tflite.output_kind(small_int8.tflite) == "probabilities"
    assert small_int8.size_bytes < small_float.size_bytes / 3


def test_a_dim_calibration_set_still_gives_the_raw_byte_input_grid(small_built, small_calibration):
    # Images that never reach pixel 0 or 255 would calibrate a narrower input range; the range is
    # set from the preprocessing instead, so raw bytes stay exactly the input.
    dim = small_calibration.arrays[:4] * 0.5
    converted = convert.convert(small_built, dim, convert.ConvertConfig("int8"))
    assert converted.input.scale == np.float32(1 / 127.5) and converted.input.zero_point == 127


def test_logits_head_keeps_todays_model(small_built, small_calibration):
    cfg = convert.ConvertConfig("int8", head="logits")
    converted = convert.convert(small_built, small_calibration.arrays[:4], cfg)
    assert converted.output.dtype == "uint8" and converted.output.scale
    assert tflite.output_kind(converted.tflite) == "logits"
    assert _activation_dtypes(converted) == {"int8", "uint8"}


def test_probabilities_head_is_softmax_of_the_logits_head(small_built, small_calibration):
    """Both heads come from the same calibration: the deployed probabilities are exactly the
    softmax of the logits model's dequantized output (so parity measured on either is the same)."""
    from pipeline.device.runner import Runner, load_runtime
    from pipeline.stages.parity_metrics import as_logits, log_softmax

    arrays = small_calibration.arrays[:4]
    logits = convert.convert(small_built, arrays, convert.ConvertConfig("int8", head="logits"))
    probabilities = convert.convert(small_built, arrays, convert.ConvertConfig("int8"))
    _, _, module = load_runtime()
    x = small_calibration.arrays[4:12]
    from_logits = np.exp(log_softmax(Runner(module, model_content=logits.tflite)(x)))
    deployed = Runner(module, model_content=probabilities.tflite)(x)
    np.testing.assert_allclose(deployed, from_logits, atol=2e-6)
    assert np.array_equal(as_logits(deployed, "probabilities").argmax(-1), from_logits.argmax(-1))


def test_int8_conversion_is_byte_identical_on_rerun(small_built, small_calibration, small_int8):
    convert._FLOAT_MEMO.clear()  # convert again, not from memory
    again = convert.convert(small_built, small_calibration.arrays, convert.ConvertConfig("int8"))
    assert again.tflite == small_int8.tflite


def test_calibration_data_changes_the_model(small_built, small_calibration, small_int8):
    other = convert.convert(small_built, small_calibration.arrays[::-1][:4] * 0.5,
                            convert.ConvertConfig("int8"))
    assert other.tflite != small_int8.tflite


@pytest.mark.parametrize("io_type, dtype", [("int8", "int8"), ("float32", "float32")])
def test_int8_io_types(small_built, small_calibration, io_type, dtype):
    converted = convert.convert(small_built, small_calibration.arrays[:4],
                                convert.ConvertConfig("int8", io=io_type, head="logits"))
    assert converted.input.dtype == dtype and converted.output.dtype == dtype
    assert all(w["weight_dtype"] == "int8" for w in converted.weighted_ops)


def test_float_modes(small_built, small_float):
    assert small_float.input.dtype == "float32" and small_float.input.scale is None
    assert all(w["weight_dtype"] == "float32" for w in small_float.weighted_ops)
    fp16 = convert.convert(small_built, None, convert.ConvertConfig("float16"))
    dynamic = convert.convert(small_built, None, convert.ConvertConfig("dynamic"))
    # float16 halves the weights; dynamic-range stores int8 weights but computes in float.
    assert 0.45 < fp16.size_bytes / small_float.size_bytes < 0.6
    assert 0.2 < dynamic.size_bytes / small_float.size_bytes < 0.35
    assert dynamic.input.dtype == "float32"
    assert any(w["weight_dtype"] == "int8" for w in dynamic.weighted_ops)


def test_a_model_the_runtime_refuses_is_one_clear_error(small_built, small_calibration):
    # Untrained weights leave a depthwise layer dead: int16x8 calibrates its output to a ~0 scale
    # and LiteRT refuses to prepare the model. (int16 activations on trained weights: test_verify.)
    with pytest.raises(PipelineInputError, match="int16x8 model does not load in LiteRT .*DEPTHWISE_CONV_2D"):
        convert.convert(small_built, small_calibration.arrays[:4], convert.ConvertConfig("int16x8"))


def test_per_tensor_weights_have_one_scale(small_built, small_calibration):
    converted = convert.convert(small_built, small_calibration.arrays[:4],
                                convert.ConvertConfig("int8", per_channel=False))
    assert not any(w["per_channel"] for w in converted.weighted_ops)


@pytest.mark.parametrize("cfg, words", [
    (convert.ConvertConfig("int4"), "--quantize int4 is unknown"),
    (convert.ConvertConfig("none", io="uint8"), "--io uint8 does not go with --quantize none"),
    (convert.ConvertConfig("int8", io="int16"), "--io int16 does not go with --quantize int8"),
])
def test_bad_conversion_settings_are_refused(cfg, words):
    with pytest.raises(PipelineInputError, match=words):
        convert.check_config(cfg)


def test_int8_without_calibration_images_is_refused(small_built):
    with pytest.raises(PipelineInputError, match="needs calibration images"):
        convert.convert(small_built, np.zeros((0, 96, 96, 3), np.float32), convert.ConvertConfig("int8"))


def test_keep_float_leaves_named_layers_in_float(small_built, small_calibration):
    calibrated = convert.calibrate_model(small_built, small_calibration.arrays[:4])
    names = [t for op, t, _ in convert.quantizable_tensors(calibrated) if op == "DEPTHWISE_CONV_2D"]
    assert len(names) == 17
    keep = convert.resolve_keep_float(["expanded_conv_depthwise_relu", names[5]], calibrated)
    assert keep[1] == names[5] and "expanded_conv_depthwise" in keep[0]
    cfg = convert.ConvertConfig("int8", keep_float=keep)
    converted = convert.convert(small_built, small_calibration.arrays[:4], cfg)
    depthwise = [w for w in converted.weighted_ops if w["op"] == "DEPTHWISE_CONV_2D"]
    assert sum(w["activation_dtype"] == "float32" for w in depthwise) == 2
    assert sum(w["weight_dtype"] == "int8" and w["per_channel"] for w in depthwise) == 15
    # The app-facing contract is unchanged: uint8 in, probabilities out.
    assert converted.input.dtype == "uint8" and converted.output.dtype == "float32"
    assert "DEQUANTIZE[int8]" in converted.ops and converted.summary()["keep_float"] == list(keep)


def test_keep_float_unknown_layer_is_refused(small_built, small_calibration):
    calibrated = convert.calibrate_model(small_built, small_calibration.arrays[:4])
    with pytest.raises(PipelineInputError, match="--keep-float block_99_depthwise: no such layer"):
        convert.resolve_keep_float(["block_99_depthwise"], calibrated)


def test_litert_quantizer_backend_gives_full_int8(small_built, small_calibration, small_float):
    cfg = convert.ConvertConfig("int8", backend="litert-quantizer", head="logits")
    logits_float = convert.convert(small_built, None, convert.ConvertConfig("none", head="logits"))
    converted = convert.convert(small_built, small_calibration.arrays[:8], cfg, logits_float.tflite)
    assert converted.input.dtype == "int8" and converted.output.dtype == "int8"
    assert all(w["weight_dtype"] == "int8" and w["activation_dtype"] == "int8" and w["per_channel"]
               for w in converted.weighted_ops)
    assert len(converted.weighted_ops) == 53
    again = convert.convert(small_built, small_calibration.arrays[:8], cfg, logits_float.tflite)
    assert again.tflite == converted.tflite
    assert converted.summary()["backend"] == "litert-quantizer"


def test_litert_recipe_is_the_packaged_one_with_the_algorithm():
    recipe = litert.recipe(convert.ConvertConfig("int8", backend="litert-quantizer",
                                                         algorithm="octav"))
    assert recipe[0]["algorithm_key"] == "OCTAV"
    assert recipe[0]["op_config"]["weight_tensor_config"]["granularity"] == "CHANNELWISE"
    a16 = litert.recipe(convert.ConvertConfig("int16x8", backend="litert-quantizer"))
    assert a16[0]["op_config"]["activation_tensor_config"]["num_bits"] == 16


@pytest.mark.parametrize("cfg, words", [
    (convert.ConvertConfig("dynamic", backend="litert-quantizer"), "does --quantize int8 or int16x8"),
    (convert.ConvertConfig("int8", backend="litert-quantizer", io="uint8"), "drop --io uint8"),
    (convert.ConvertConfig("int8", backend="litert-quantizer", keep_float=("x",)), "need --backend tflite-converter"),
    (convert.ConvertConfig("int8", ranges="percentile", percentile=80), "must be in \\(90, 100\\]"),
    (convert.ConvertConfig("dynamic", ranges="percentile"), "works with --quantize int8"),
    # Its recipe would quantize the softmax into an int8 output that clients refuse.
    (convert.ConvertConfig("int8", backend="litert-quantizer"), "add --head logits"),
    (convert.ConvertConfig("int8", head="softmax"), "--head softmax is unknown"),
])
def test_litert_backend_refuses_what_it_cannot_do(cfg, words):
    with pytest.raises(PipelineInputError, match=words):
        convert.check_config(cfg)


def test_percentile_ranges_narrow_activation_ranges(small_built, small_calibration):
    from tensorflow.lite.tools import flatbuffer_utils

    calibrated = convert.calibrate_model(small_built, small_calibration.arrays)
    clipped = ranges.clip_ranges(calibrated, small_calibration.arrays, 99.0)
    assert clipped == ranges.clip_ranges(calibrated, small_calibration.arrays, 99.0)  # seeded

    def ranges_of(model_bytes):
        graph = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes)).subgraphs[0]
        return {i: (t.quantization.min[0], t.quantization.max[0]) for i, t in enumerate(graph.tensors)
                if t.quantization is not None and t.quantization.min is not None
                and len(t.quantization.min) == 1}

    before, after = ranges_of(calibrated), ranges_of(clipped)
    assert before.keys() == after.keys() and len(before) > 50
    # The logits keep their calibrated min/max: clipping them would tie the leading classes.
    output = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated)).subgraphs[0].outputs[0]
    assert after[output] == before[output]
    # Within the min/max, up to the grids both are snapped to (half a step each: 1/90 of the
    # magnitude at most) and the 1e-6 width a range is never narrower than.
    slack = {i: max(max(map(abs, before[i])) / 45, 1e-6) for i in before}
    assert all(after[i][0] >= before[i][0] - slack[i] and after[i][1] <= before[i][1] + slack[i]
               for i in before)
    assert sum(after[i][1] < before[i][1] for i in before) > len(before) // 2
    cfg = convert.ConvertConfig("int8", ranges="percentile", percentile=99.0)
    converted = convert.convert(small_built, small_calibration.arrays, cfg)
    assert converted.input.dtype == "uint8"
    assert all(w["activation_dtype"] == "int8" for w in converted.weighted_ops)
    assert converted.summary()["activation_ranges"] == "percentile 99.0"


def test_keep_float_takes_whole_blocks(small_built, small_calibration):
    calibrated = convert.calibrate_model(small_built, small_calibration.arrays[:4])
    keep = convert.resolve_keep_float(["block_16"], calibrated)
    # expand conv, depthwise, projection: the whole inverted-residual block.
    assert len(keep) == 3 and all("block_16" in t for t in keep)
