import json

import pytest

from pipeline import analyze, benchmark, device_runner
from tests.conftest import SHARED, run_cli

GOOGLE = SHARED / "reference-models" / "google"


def test_structure_is_read_from_the_graph():
    result = analyze.analyze(1.0, 224)
    # The paper's Table 2: 17 bottlenecks, stride 2 at the stem and at the first block of the
    # 24-, 32-, 64- and 160-channel stages.
    assert result["bottleneck_blocks"] == 17
    assert result["strides_at"] == ["stem", "block_1", "block_3", "block_6", "block_13"]
    rows = [(r["t"], r["c"], r["n"], r["s"]) for r in result["paper_rows"] if r["kind"] == "bottleneck"]
    assert rows == [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1)]
    assert result["published"]["macs_ratio"] == pytest.approx(1.0, abs=0.01)  # 300M MACs


@pytest.mark.parametrize("alpha, resolution", [
    (a, r) for (a, r), (macs, _) in sorted(analyze.PUBLISHED.items()) if macs >= 20])
def test_totals_match_the_published_table(alpha, resolution):
    published = analyze.analyze(alpha, resolution)["published"]
    assert published["macs_ratio"] == pytest.approx(1.0, abs=0.03)
    assert published["params_ratio"] == pytest.approx(1.0, abs=0.03)


def test_layer_macs_of_known_layers():
    import keras

    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(6, 3, padding="same")
    depthwise = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")
    dense = keras.layers.Dense(5)
    x = depthwise(conv(inputs))
    dense(keras.layers.Flatten()(x))
    assert analyze.layer_macs(conv) == 8 * 8 * 9 * 4 * 6
    assert analyze.layer_macs(depthwise) == 4 * 4 * 9 * 6
    assert analyze.layer_macs(dense) == 4 * 4 * 6 * 5


def test_interleaved_benchmark_of_two_models(small_int8, small_float, tmp_path):
    paths = []
    for name, model in (("int8.tflite", small_int8), ("float.tflite", small_float)):
        (tmp_path / name).write_bytes(model.tflite)
        paths.append(tmp_path / name)
    result = benchmark.host_benchmark(paths, threads=(1, 2), xnnpack_modes=(True, False), runs=10)
    rows = result["latency"]
    assert len(rows) == 8 and all(r["runs"] == 10 and len(r["times_ms"]) == 10 for r in rows)
    assert all(r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)
    assert {(r["xnnpack"], r["delegate_partitions"] > 0) for r in rows} == {(True, True), (False, False)}
    memory = result["memory"]["int8.tflite"]
    assert memory["peak_rss_kb"] > memory["model_rss_kb"] > 0
    table = benchmark.markdown_table(result)
    assert table.count("| int8.tflite |") == 4
    assert benchmark.latency_plot(result)[:4] == b"\x89PNG"


def test_device_runner_is_standalone(small_int8, tmp_path):
    """The runner copied to devices: stdlib + numpy + a runtime, and a JSON report."""
    import ast
    import subprocess
    import sys

    source = open(device_runner.__file__).read()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"numpy"}, imported
    model = tmp_path / "m.tflite"
    model.write_bytes(small_int8.tflite)
    output = subprocess.run([sys.executable, device_runner.__file__, str(model), "--threads", "1",
                             "--runs", "3", "--xnnpack", "both"], capture_output=True, text=True,
                            cwd=tmp_path, check=True).stdout
    report = json.loads(output)
    assert report["runtime"]["name"] == "ai-edge-litert"
    assert [r["xnnpack_applied"] for r in report["latency"]] == [True, False]
    assert report["device"]["machine"] and report["memory"]["peak_rss_kb"] > 0


@pytest.mark.skipif(not GOOGLE.is_dir(), reason="needs ../shared reference models")
def test_benchmark_cli_compares_with_googles_releases(small_int8, tmp_path):
    model = tmp_path / "ours.tflite"
    model.write_bytes(small_int8.tflite)
    out = tmp_path / "bench"
    result = run_cli("benchmark", model, "--compare", "google", "--reference-dir", GOOGLE,
                     "--threads-sweep", "1", "--benchmark-runs", "5", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "benchmark.json").read_text())
    assert [r["model"] for r in report["latency"]] == [
        "ours.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite"]
    assert (out / "benchmark.png").exists() and "| ours.tflite |" in (out / "benchmark.md").read_text()
    missing = run_cli("benchmark", tmp_path / "nope.tflite")
    assert missing.returncode == 2 and "no such model file" in missing.stderr
