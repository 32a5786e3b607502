"""The full 224 ImageNet path, once, exactly as README tells a user to run it: ImageNet weights from
KERAS_HOME (no network), calibration on Imagenette's calib split, parity on all 3,925 val images."""

import json
import os
import re

import pytest

from tests.conftest import IMAGENETTE, REPO, WEIGHTS_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                       reason="needs ../shared ImageNet weights and Imagenette"),
]


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


def test_int8_does_the_work_of_googles_release(imagenet_export):
    """What holds on any CPU, exactly: the paper's 300M MACs, every op but the input conversion
    taken by XNNPACK, the structure of an all-int8 network. (How fast it runs beside Google's
    release is a timing: `pytest -m bench`, below.)"""
    _, report = imagenet_export
    assert report["latency_ratio"]["reference"]["kind"] == "self"  # a default export
    assert report["machine"]["machine_class"] and report["machine"]["cpu_count"] >= 1
    assert report["macs"] == pytest.approx(300e6, rel=0.02)  # the paper's 300M MACs at 1.0/224
    assert report["benchmark"]["ops_not_delegated"] == 1  # the uint8 → int8 QUANTIZE at the input
    structure = report["conversion"]["structure"]
    assert len(structure) == 53 and all(v.endswith("int8/int8 per-channel") for v in structure.values())


@pytest.mark.bench
def test_bench_int8_runs_like_googles_release(imagenet_export):
    """Ours / Google's int8 release of the same architecture, interleaved at 1 thread: 1.00 on
    AVX-512 VNNI and AVX2-only EPYCs alike (float32 / int8 is not: 2.0 and 0.9)."""
    from pipeline.stages import benchmark
    from tests.conftest import SHARED

    out, _ = imagenet_export
    google = SHARED / "reference-models" / "google" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
    result = benchmark.host_benchmark([out / "model.tflite", google], threads=(1,), runs=200)
    median = {row["model"]: row["median_ms"] for row in result["latency"]}
    print(f"\nours / Google's PTQ release: {median['model.tflite'] / median[google.name]:.3f} "
          f"({result['device'].get('machine_class')})")
    assert median["model.tflite"] / median[google.name] <= 1.10, (median, result["device"])
    assert all(row["xnnpack_applied"] for row in result["latency"])


def readme_api_example():
    """The README's "Python API" code block, as a user copies it."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- README-API-EXAMPLE[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert found, "README.md lost its Python API example"
    return found.group(1)


def test_readme_python_api_example_writes_the_readme_commands_model(imagenet_export, tmp_path,
                                                                     monkeypatch, capsys):
    """README's Python API block, run as written in a folder laid out as it assumes
    (calibration_data/ and path/to/labelled/val/ are Imagenette's calib and val), gives the very
    bytes of README's `python -m pipeline.export` command (the `imagenet_export` fixture)."""
    cli_out, _ = imagenet_export
    (tmp_path / "path" / "to" / "labelled").mkdir(parents=True)
    os.symlink(IMAGENETTE / "calib", tmp_path / "calibration_data")
    os.symlink(IMAGENETTE / "val", tmp_path / "path" / "to" / "labelled" / "val")
    monkeypatch.chdir(tmp_path)
    code = readme_api_example()
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    api_model = tmp_path / "artifacts" / "mobilenet_v2_int8" / "model.tflite"
    assert api_model.read_bytes() == (cli_out / "model.tflite").read_bytes()
    report = json.loads((cli_out / "report.json").read_text())
    assert printed[0].startswith("artifacts/mobilenet_v2_int8/model.tflite: ")
    assert printed[1] == str(report["agreement_top1"])
