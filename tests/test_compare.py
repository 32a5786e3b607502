import numpy as np

from pipeline.stages import compare


def test_peak_activation_memory_of_a_known_graph():
    import keras

    from pipeline.stages import convert

    inputs = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(16, 1, use_bias=False)(inputs)  # 8*8*16*4 = 4096 bytes
    b = keras.layers.Conv2D(2, 1, use_bias=False)(a)  # 512 bytes
    model = keras.Model(inputs, keras.layers.Add()([keras.layers.Conv2D(2, 1)(inputs), b]))

    class Built:
        keras_model = model

    tflite = convert.convert(Built, None, convert.ConvertConfig("none", head="logits")).tflite
    peak, traffic = compare.activation_memory(tflite)
    # At the second conv, the input (1024 B) is still needed by the skip branch and the 4096-byte
    # expansion is alive with the 512-byte result: 1024 + 4096 + 512.
    assert peak == 1024 + 4096 + 512
    assert traffic >= 1024 + 4096 + 512


def test_compare_v1_and_v2_side_by_side(tmp_path):
    arrays = np.random.default_rng(0).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    result = compare.compare(["v1", "v2-1.0"], 96, arrays, threads=[1], runs=5, work_dir=tmp_path)
    v1, v2 = result["models"]
    assert (v1["name"], v2["name"]) == ("MobileNetV1", "MobileNetV2 1.0")
    # The structural facts the comparison rests on: V2 has about half V1's MACs, more layers,
    # and bigger expanded activations.
    assert 1.7 < v1["macs"] / v2["macs"] < 2.1
    assert v2["layers"] > 1.5 * v1["layers"]
    assert v2["int8_peak_activation_bytes"] > v1["int8_peak_activation_bytes"]
    assert v1["int8_bytes"] < v1["float_bytes"] / 3
    for model in result["models"]:
        for key in ("float_1t", "int8_1t"):
            assert model["latency"][key]["median_ms"] > 0
            assert model["latency"][key]["delegate_partitions"] == 1
    assert "V1/V2 at 1t: MACs" in compare.render_markdown(result)


def test_unknown_model_is_refused(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("compare", "--models", "v1,v9")
    assert result.returncode == 2 and "--models v9: unknown" in result.stderr
