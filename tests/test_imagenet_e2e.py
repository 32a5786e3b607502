"""The full 224 ImageNet path, once, exactly as README tells a user to run it: ImageNet weights from
KERAS_HOME (no network), calibration on Imagenette's calib split, parity on all 3,925 val images."""

import json

import pytest

from tests.conftest import IMAGENETTE, WEIGHTS_DIR, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                       reason="needs ../shared ImageNet weights and Imagenette"),
]


@pytest.fixture(scope="module")
def imagenet_export(keras_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet") / "out"
    result = run_cli("export", "--quantize", "int8", "--weights", "imagenet",
                     "--calibration", IMAGENETTE / "calib", "--eval", IMAGENETTE / "val",
                     "--output", out, env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def test_int8_export_is_deployable(imagenet_export):
    out, report = imagenet_export
    config = json.loads((out / "model_config.json").read_text())
    assert config["input"]["dtype"] == "uint8" and config["input"]["shape"] == [1, 224, 224, 3]
    # Calibrated on real [-1, 1] images: exactly Google's release's input grid.
    assert config["input"]["quantization"]["scale"] == pytest.approx(2 / 255, rel=1e-5)
    assert config["input"]["quantization"]["zero_point"] == 127
    weighted = report["conversion"]["weighted_ops"]
    assert weighted == {
        "CONV_2D: activations int8, weights int8 per-channel": 35,
        "DEPTHWISE_CONV_2D: activations int8, weights int8 per-channel": 17,
        "FULLY_CONNECTED: activations int8, weights int8 per-channel": 1,
    }
    assert report["size_bytes"] <= 4.2e6


def test_int8_parity_with_float_on_imagenette_val(imagenet_export):
    _, report = imagenet_export
    assert report["parity"]["images"] == 3925
    # The shared weights' float model scores ~0.734 top-1 on these images fed as they are.
    assert report["float"]["top1"] == pytest.approx(0.734, abs=0.005)
    assert report["tflite"]["top1"] >= report["float"]["top1"] - 0.005
    assert report["tflite"]["top5"] >= report["float"]["top5"] - 0.005
    assert report["agreement_top1"] >= 0.955
    assert report["kl_mean"] < 0.02
    assert report["parity"]["keras_check"]["max_abs_prob_diff"] < 1e-4
    assert len(report["parity"]["per_class"]) == 10


def test_int8_is_faster_than_float_at_one_thread(imagenet_export):
    out, report = imagenet_export
    from pipeline import benchmark, convert, build

    built = build.build_model(build.BuildConfig())
    float_model = convert.convert(built, None, convert.ConvertConfig("none"))
    # Back to back; int8 runs ~2x faster here, far outside the machine's noise.
    int8 = benchmark.quick_benchmark((out / "model.tflite").read_bytes(),
                                     benchmark.BenchmarkConfig(threads=(1,), runs=30))
    fp32 = benchmark.quick_benchmark(float_model.tflite, benchmark.BenchmarkConfig(threads=(1,), runs=30))
    assert int8.latencies[0]["median_ms"] < fp32.latencies[0]["median_ms"]
    assert int8.xnnpack_applied and fp32.xnnpack_applied
