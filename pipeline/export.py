"""Keras MobileNetV2 → calibrated `.tflite` → parity → report, in one command.

    python -m pipeline.export --quantize int8 \\
        --calibration calibration_data/ --eval path/to/labelled/val --output artifacts/mine

Composes the stages (build, calibrate, convert, verify, benchmark, report) and adds nothing of its
own. Exit codes: 0 done, 1 parity below a threshold (report written), 2 bad input (nothing written).
"""

import contextlib
import shlex
import sys
import time

from absl import flags

from pipeline import benchmark, build, calibrate, convert, report, verify
from pipeline.preprocess import Preprocessing

FLAGS = flags.FLAGS


@contextlib.contextmanager
def _timed(timings, stage):
    start = time.perf_counter()
    print(f"· {stage}…", file=sys.stderr, flush=True)
    yield
    timings[stage] = time.perf_counter() - start


def define_flags():
    build.define_flags()
    calibrate.define_flags()
    convert.define_flags()
    verify.define_flags()
    benchmark.define_flags()
    from pipeline.cli import define

    define("string", "output", None, "Output folder (default artifacts/<model-name>/).")
    define("float", "crop-fraction", 1.0,
           "Center-crop this fraction of the shorter side before resizing (1.0 = whole square).")


def main(argv):
    from pipeline.errors import ParityError, PipelineInputError

    if len(argv) > 1:
        raise PipelineInputError(f"unexpected argument {argv[1]!r}: all inputs are --flags (see --help)")
    timings = {}
    build_cfg = build.config_from_flags(FLAGS)
    convert_cfg = convert.config_from_flags(FLAGS)
    convert.check_config(convert_cfg)
    thresholds = verify.config_from_flags(FLAGS)
    crop = FLAGS["crop-fraction"].value
    if not 0 < crop <= 1:
        raise PipelineInputError(f"--crop-fraction {crop} must be in (0, 1], e.g. 1.0 or 0.875")
    with _timed(timings, "build"):
        built = build.build_model(build_cfg)
    out_dir = FLAGS["output"].value or f"artifacts/{built.name}"
    report.check_writable(out_dir)
    spec = Preprocessing(resolution=built.resolution, crop_fraction=crop)
    with _timed(timings, "calibrate"):
        calibration = calibrate.representative_dataset(
            calibrate.config_from_flags(FLAGS, imagenet_weights=built.synsets is not None),
            spec, progress=calibrate.progress_bar("calibration images"))
    eval_dir = FLAGS["eval"].value or calibration.default_eval_dir
    if eval_dir:
        eval_set = verify.eval_set_from_folder(eval_dir, built, FLAGS["eval-samples"].value,
                                               FLAGS["seed"].value)
    else:
        eval_set = verify.eval_set_from_held_out(calibration, built)
    with _timed(timings, "convert_float"):
        float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none"))
    with _timed(timings, "convert"):
        converted = (float_model if convert_cfg.quantize == "none"
                     else convert.convert(built, calibration.arrays, convert_cfg))
    with _timed(timings, "verify"):
        parity = verify.verify(built, float_model.tflite, converted.tflite, eval_set, spec,
                               thresholds, threads=FLAGS["threads"].value,
                               progress=lambda _, total: _progress(total))
    with _timed(timings, "benchmark"):
        bench = benchmark.quick_benchmark(
            converted.tflite, benchmark.BenchmarkConfig(runs=FLAGS["benchmark-runs"].value))
    command = "python -m pipeline.export " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with _timed(timings, "report"):
        written = report.write_report(out_dir, built, converted, float_model.tflite, calibration,
                                      parity, bench, spec, timings, command)
    print(verify.format_checks(parity))
    latency = written["latency_ms"]
    print(f"{out_dir}/model.tflite: {converted.size_bytes / 1e6:.2f} MB, "
          + ", ".join(f"{t} thread{'s' if t != '1' else ''} {v['median']:.2f} ms" for t, v in latency.items())
          + f", agreement {parity.agreement_top1:.2%} on {parity.images} images")
    if not parity.passed:
        raise ParityError("parity check failed (see ✗ above); report written to " + str(out_dir))


def _progress(total):
    from tqdm import tqdm

    return tqdm(total=total, desc="parity", unit="img", leave=False)


if __name__ == "__main__":
    from pipeline.cli import run

    define_flags()
    run(main)
