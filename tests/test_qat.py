"""Quantization-aware fine-tuning: BN folding exact, the fake-quant student faithful to the
converter, the whole loop seeded, and on real ImageNet weights a held-out KL below plain PTQ's."""

import numpy as np
import pytest

from pipeline.core import tflite
from pipeline.stages import build, calibrate, convert, fold, qat
from pipeline.stages.preprocess import Preprocessing
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, make_images, move_batchnorm_statistics

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
needs_imagenet = pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                                    reason="needs ../shared weights and Imagenette")


@pytest.fixture(scope="module")
def trained_statistics_model(small_built):
    """The small model with BatchNormalization statistics and affine parameters far from their
    initial 0/1 values, so that folding them is a real change of weights."""
    import keras

    model = keras.models.clone_model(small_built.keras_model)
    model.set_weights(small_built.keras_model.get_weights())
    return move_batchnorm_statistics(model)


def test_folding_batchnorm_keeps_the_function_and_leaves_no_batchnorm(trained_statistics_model):
    folded = fold.fold_batchnorm(trained_statistics_model)
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNormalization" not in kinds and kinds.count("Identity") == 52
    images = np.random.default_rng(1).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    want = trained_statistics_model(images, training=False).numpy()
    got = folded(images, training=False).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_fake_quant_student_rounds_every_weight_and_activation_the_converter_does(
        trained_statistics_model, small_calibration):
    import keras

    folded = fold.fold_batchnorm(trained_statistics_model)
    student, activations = qat.fake_quantized(folded, Preprocessing(96).value_range())
    # Every ReLU6, Add, projection, the pooling and the logits: 64 per-tensor int8 activations.
    assert len(activations) == 64
    assert sum(type(layer).__name__ == "FakeQuantWeights" for layer in student.layers[-1].layers) \
        == sum(type(layer).__name__ in fold.WEIGHTED_LAYERS for layer in folded.layers) == 53
    qat.set_activation_ranges(folded, activations, small_calibration.arrays, 8)
    low, high = activations["out_relu"].range.numpy()
    assert low == 0 and 0 < high <= 6
    # Rounded weights: the student differs from the float model, by int8-sized amounts.
    images = small_calibration.arrays[:4]
    exact = keras.Model(folded.inputs, folded.outputs)(images).numpy()
    rounded = student(images).numpy()
    assert 0 < np.max(np.abs(rounded - exact)) < 0.2 * np.max(np.abs(exact))
    # Training the student trains the folded model: they share variables.
    assert {id(v) for v in student.trainable_variables} == {id(v) for v in folded.trainable_variables}


def test_fine_tuning_is_seeded_and_judges_every_epoch_on_the_converted_model(
        small_built, trained_statistics_model, tmp_path):
    import dataclasses

    # Random weights with default BN statistics give the same output for every image (KL 0):
    # the moved statistics make the outputs, and so the KL, depend on the image.
    small_built = dataclasses.replace(small_built, keras_model=trained_statistics_model)
    folder = make_images(tmp_path / "images", per_class=25, seed=3)
    spec = Preprocessing(resolution=96)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(folder), samples=16, seed=0), spec)
    cfg = qat.QatConfig(epochs=2, batch_size=8, learning_rate=1e-4, patience=5)
    float_model = convert.convert(small_built, None, convert.ConvertConfig("none"))
    runs = [qat.fine_tune(small_built, calibration, spec, cfg, convert.ConvertConfig("int8"),
                          float_model) for _ in range(2)]
    first, second = runs
    assert [e["held_out_kl"] for e in first.epochs] == [e["held_out_kl"] for e in second.epochs]
    assert [e["train_kl"] for e in first.epochs] == [e["train_kl"] for e in second.epochs]
    assert all(e["held_out_kl"] > 0 for e in first.epochs) and first.epochs[1]["train_kl"] > 0
    assert first.built.weights_sha256 == second.built.weights_sha256
    assert len(first.epochs) == 3 and first.stopped == "epochs" and first.held_out_images == 34
    # The best epoch: the lowest converted held-out KL among those significantly below plain PTQ
    # (epoch 0), which stays when none is.
    significant = [e for e in first.epochs[1:] if e["z_vs_ptq"] >= cfg.min_z]
    want = min(significant, key=lambda e: e["held_out_kl"])["epoch"] if significant else 0
    assert first.best_epoch == want
    assert (first.built is small_built) == (first.best_epoch == 0)
    assert (first.float_model is float_model) == (first.best_epoch == 0)


def test_too_few_held_out_images_is_one_clear_error(small_built, small_calibration, small_float):
    from pipeline.core.errors import PipelineInputError

    with pytest.raises(PipelineInputError, match="--qat judges each epoch.*has only 8"):
        qat.fine_tune(small_built, small_calibration, Preprocessing(96), qat.QatConfig(),
                      convert.ConvertConfig("int8"), small_float)


@needs_imagenet
def test_qat_export_on_imagenet_weights_ships_what_its_rule_chose(keras_home, tmp_path):
    """CI's real configuration, as a user runs it: `export --quantize int8 --qat` on the shared
    ImageNet weights at 224 (at 96 px they are off their training distribution and nothing
    measurable is learned: WORKSPACE_NOTES, issue 15), the export's 300 Imagenette calibration
    images, one epoch. What is asserted holds on any CPU: the epoch is judged on its real int8
    conversion, held-out KL moves the right way, the model shipped is the one the selection rule
    picks (the tuned weights only when they beat plain PTQ by 2 standard errors), with plain
    int8's ops. Whether one epoch clears the 2-standard-error bar is the measurement (z 1.9–2.5 on
    the machines of issue 15), so no verdict here hangs on it."""
    import json

    from tests.conftest import run_cli

    out = tmp_path / "out"
    result = run_cli("export", "--quantize", "int8", "--weights", "imagenet", "--qat",
                     "--qat-epochs", "1", "--calibration", IMAGENETTE / "calib",
                     "--eval", IMAGENETTE / "val", "--eval-samples", "50", "--output", out,
                     env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    tuned = report["qat"]
    ptq, epoch = tuned["epochs"]
    assert tuned["held_out_images"] == 200 and tuned["train_images"] == 300
    assert report["timings_s"]["qat"] > 0 and epoch["train_kl"] > 0
    # Distillation learns: the converted epoch-1 model is closer to float on unseen images.
    assert epoch["held_out_kl"] < ptq["held_out_kl"], tuned["epochs"]
    chosen = epoch["z_vs_ptq"] >= 2
    assert tuned["best_epoch"] == (1 if chosen else 0), tuned["epochs"]
    assert (("✓ qat: held-out KL" if chosen else "✗ qat: no epoch beat plain PTQ") in result.stderr)

    built = build.build_model(build.BuildConfig(weights=str(WEIGHTS)))
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(IMAGENETTE / "calib"), samples=300, seed=0),
        Preprocessing(resolution=224))
    plain, _ = convert.quantize(built, calibration.arrays, convert.ConvertConfig("int8"),
                                convert.convert(built, None, convert.ConvertConfig("none")))
    shipped = (out / "model.tflite").read_bytes()

    def op_names(model_bytes):
        return [name for name, _ in tflite.read_ops(model_bytes)[2]]

    assert op_names(shipped) == op_names(plain.tflite)
    # The shipped graph is plain PTQ's exactly when PTQ was kept (metadata aside: it holds the
    # weights' name and digest, and the labels).
    assert (_weights_bytes(shipped) == _weights_bytes(plain.tflite)) == (not chosen)
    # The report names the float weights as given (parity is against them) and the tuned ones.
    assert report["sha256"]["weights"] == built.weights_sha256
    assert (tuned["weights_sha256"] is not None) == chosen
    assert tuned["weights_sha256"] != built.weights_sha256


def _weights_bytes(model_bytes):
    """The bytes of every constant buffer of a model (its weights and biases), in order."""
    model, graph, _ = tflite.read_ops(model_bytes)
    return [bytes(model.buffers[t.buffer].data) for t in graph.tensors
            if t.buffer and model.buffers[t.buffer].data is not None]


@pytest.mark.bench
def test_bench_qat_224_export(imagenet_export, keras_home, tmp_path):
    """The issue's 224 run: `export --quantize int8 --qat` on the shared ImageNet weights and
    Imagenette, against the plain int8 export (all 3,925 val images): the fine-tuning within 15
    minutes on the 2-core machine, agreement and KL no worse, top-1 within 0.3 points of float,
    the same size, and latency within 1.02× of plain int8 (interleaved, 1 thread)."""
    import json

    from tests.conftest import run_cli

    plain_dir, plain = imagenet_export
    out = tmp_path / "qat"
    result = run_cli("export", "--quantize", "int8", "--weights", "imagenet", "--qat",
                     "--calibration", IMAGENETTE / "calib", "--eval", IMAGENETTE / "val",
                     "--output", out, env={"KERAS_HOME": str(keras_home)}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    bench = tmp_path / "bench"
    timed = run_cli("benchmark", out / "model.tflite", "--compare", plain_dir / "model.tflite",
                    "--threads-sweep", "1", "--benchmark-runs", "200", "--output", bench)
    assert timed.returncode == 0, timed.stderr[-3000:]
    latency = json.loads((bench / "benchmark.json").read_text())["latency"]
    ratio = latency[0]["median_ms"] / latency[1]["median_ms"]
    print(f"\nqat {report['timings_s']['qat']:.0f} s ({report['qat']['stopped']}, epoch "
          f"{report['qat']['best_epoch']}); agreement {plain['agreement_top1']:.2%} → "
          f"{report['agreement_top1']:.2%}, KL {plain['kl_mean']:.5f} → {report['kl_mean']:.5f}; "
          f"top-1 float {report['float']['top1']:.2%}, int8 {report['tflite']['top1']:.2%}; "
          f"{report['size_bytes']} vs {plain['size_bytes']} bytes; latency ×{ratio:.3f}")
    assert report["timings_s"]["qat"] <= 900
    assert report["kl_mean"] <= plain["kl_mean"]
    assert report["agreement_top1"] >= plain["agreement_top1"]
    assert report["tflite"]["top1"] >= report["float"]["top1"] - 0.003
    assert abs(report["size_bytes"] - plain["size_bytes"]) <= 0.01 * plain["size_bytes"]
    assert ratio <= 1.02


def test_ctrl_c_while_fine_tuning_leaves_the_previous_artifacts(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    folder = make_images(tmp_path / "images", per_class=30, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    previous = {"model.tflite": b"the previous model", "report.json": b"{}"}
    for name, data in previous.items():
        (out / name).write_bytes(data)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.export", "--alpha", "0.35", "--resolution", "96",
         "--weights", "random", "--quantize", "int8", "--qat", "--qat-epochs", "100",
         "--calibration", str(folder), "--calibration-samples", "20", "--output", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stderr=subprocess.PIPE)
    # Interrupted inside fine-tuning proper: once the progress bar (`qat: k/total`, total =
    # 100 epochs × steps) is past the first epoch's steps, epoch 1 has been converted and judged.
    import re

    seen, deadline, step, per_epoch = "", time.time() + 300, 0, None
    os.set_blocking(process.stderr.fileno(), False)
    while time.time() < deadline and process.poll() is None and (per_epoch is None or step <= per_epoch):
        try:
            seen += os.read(process.stderr.fileno(), 1 << 16).decode(errors="replace")
        except BlockingIOError:
            pass
        counts = re.findall(r"qat:[^|]*\|[^|]*\| *(\d+)/(\d+)", seen)
        if counts:
            step, total = map(int, counts[-1])
            per_epoch = total // 100
        time.sleep(0.05)
    assert per_epoch and step > per_epoch, f"never got past epoch 1 (step {step}):\n{seen[-3000:]}"
    process.send_signal(signal.SIGINT)
    os.set_blocking(process.stderr.fileno(), True)
    rest = process.communicate(timeout=120)[1].decode(errors="replace")
    assert process.returncode == 130, seen + rest
    assert "Traceback" not in rest
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
