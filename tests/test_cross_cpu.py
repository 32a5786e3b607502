"""The same inputs give the same int8 model on another CPU: the model-making stages run here and
under qemu's x86-64 emulation of a CPU without AVX2 or FMA, and every model is byte-identical.

What changes under the emulated CPU is exactly what made the gate's verdict depend on the machine
(issue 25): XNNPACK, oneDNN and Eigen pick other kernels by CPUID (AVX instead of AVX2/FMA or
AVX-512), so float sums round differently, and `rsqrtps` is qemu's exact reciprocal square root
instead of the host's approximation, so TensorFlow's own BatchNormalization fold gives other float
weights. The model is a MobileNetV2 0.35/96 whose BatchNormalizations hold trained-like statistics
(with the default 0/1 ones the fold is exact on every CPU, and this test could not fail).

    python -m pytest -m cross_cpu        # ~5 min: TensorFlow under emulation is ~10x slower

It runs in `.ci/run` as a step of its own (not in the default suite: it would double its time).
As a script, `python -m tests.test_cross_cpu MODEL.keras CALIBRATION_DIR OUT_DIR` writes the
models (min/max ranges, percentile ranges, and min/max with block_8 kept in float) into OUT_DIR.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_images, move_batchnorm_statistics

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
EMULATED_CPU = "SandyBridge"  # AVX, no AVX2, no FMA
VARIANTS = {
    "minmax.tflite": {},
    "percentile.tflite": {"ranges": "percentile"},
    "keep_float.tflite": {"keep_float": ("block_8",)},
}

pytestmark = pytest.mark.cross_cpu


def make_models(model_path, calibration_dir, out_dir):
    """The int8 models of VARIANTS, made by the stages an export composes (build, calibrate,
    convert, selective quantization, metadata), each written to out_dir."""
    import dataclasses

    from pipeline.stages import build, calibrate, convert, metadata
    from pipeline.stages.preprocess import Preprocessing

    built = build.build_model(build.BuildConfig(model_path=str(model_path)))
    spec = Preprocessing(resolution=built.resolution)
    calibration = calibrate.representative_dataset(
        calibrate.CalibrationConfig(directory=str(calibration_dir), samples=8), spec)
    float_model = convert.convert(built, None, convert.ConvertConfig("none"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, settings in VARIANTS.items():
        keep = settings.get("keep_float", ())
        cfg = convert.ConvertConfig("int8", ranges=settings.get("ranges", "minmax"))
        calibrated = convert.calibrated_for(built, calibration.arrays, cfg, None, float_model.tflite)
        if keep:
            cfg = dataclasses.replace(cfg, keep_float=convert.resolve_keep_float(keep, calibrated))
        converted = convert.convert_calibrated(calibrated, cfg)
        info = metadata.ModelInfo(name=built.name, description="cross-CPU test", version="1",
                                  author="", license="")
        (out_dir / name).write_bytes(metadata.attach(converted, built, spec, info).tflite)
    (out_dir / "float.tflite").write_bytes(float_model.tflite)


def _trained_statistics_model(path):
    """MobileNetV2 0.35/96 (seeded random weights) with BatchNormalization statistics and affine
    parameters far from 0/1, saved as .keras."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classes=10, classifier_activation=None)
    move_batchnorm_statistics(model).save(path)
    return path


@pytest.mark.skipif(QEMU is None, reason="needs qemu-user (Debian's qemu-user-static: .ci/run "
                                         "installs it as root) to emulate another x86-64 CPU")
def test_models_are_byte_identical_on_an_emulated_cpu_without_avx2_and_fma(tmp_path):
    model = _trained_statistics_model(tmp_path / "model.keras")
    images = make_images(tmp_path / "images", per_class=6, size=(96, 96))
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "tests.test_cross_cpu", str(model), str(images)]
    here = subprocess.Popen(command + [str(tmp_path / "here")], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    emulated = subprocess.run([QEMU, "-cpu", EMULATED_CPU] + command + [str(tmp_path / "emulated")],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, timeout=1800)
    here_err = here.communicate(timeout=600)[1]
    assert here.returncode == 0, here_err[-3000:]
    assert emulated.returncode == 0, emulated.stderr[-3000:]
    for name in ["float.tflite", *VARIANTS]:
        ours, theirs = ((tmp_path / side / name).read_bytes() for side in ("here", "emulated"))
        assert ours == theirs, f"{name} differs between this CPU and the emulated {EMULATED_CPU}"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    make_models(*sys.argv[1:4])
