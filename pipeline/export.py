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
from pathlib import Path

from absl import flags

from pipeline import benchmark, build, calibrate, clients, convert, metadata, report, train, verify
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
    metadata.define_flags()
    from pipeline.cli import define

    define("string", "output", None, "Output folder (default artifacts/<model-name>/).")
    define("string", "from-train", None,
           "A pipeline.train output folder: its model.keras, labels.txt, training images (for "
           "calibration) and held-out split (for --eval), unless those flags are given.")
    define("string", "android-demo", None,
           "After exporting, check the model's contract and copy it into this Android demo app.")
    define("float", "crop-fraction", 1.0,
           "Center-crop this fraction of the shorter side before resizing (1.0 = whole square).")


def export_from_flags(flag_values=FLAGS):
    """Runs every stage as the flags say; returns (report dict, output folder, ParityResult)."""
    from pipeline.errors import PipelineInputError

    timings = {}
    train.use_trained(flag_values)
    build_cfg = build.config_from_flags(flag_values)
    convert_cfg = convert.config_from_flags(flag_values)
    convert.check_config(convert_cfg)
    thresholds = verify.config_from_flags(flag_values)
    crop = flag_values["crop-fraction"].value
    if not 0 < crop <= 1:
        raise PipelineInputError(f"--crop-fraction {crop} must be in (0, 1], e.g. 1.0 or 0.875")
    with _timed(timings, "build"):
        built = build.build_model(build_cfg)
    info = metadata.info_from_flags(flag_values, built, convert_cfg)
    out_dir = flag_values["output"].value or f"artifacts/{built.name}"
    report.check_writable(out_dir)
    spec = Preprocessing(resolution=built.resolution, crop_fraction=crop)
    with _timed(timings, "calibrate"):
        calibration = calibrate.representative_dataset(
            calibrate.config_from_flags(flag_values, imagenet_weights=built.synsets is not None),
            spec, progress=calibrate.progress_bar("calibration images"))
    eval_dir = flag_values["eval"].value or calibration.default_eval_dir
    if eval_dir:
        eval_set = verify.eval_set_from_folder(eval_dir, built, flag_values["eval-samples"].value,
                                               flag_values["seed"].value)
    else:
        eval_set = verify.eval_set_from_held_out(calibration, built)
    with _timed(timings, "convert_float"):
        float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none",
                                                                         head=convert_cfg.head))
    keep_float = flag_values["keep-float"].value
    keep_float_report = calibrated = None
    with _timed(timings, "convert"):
        if keep_float:
            converted, keep_float_report, calibrated = _selective_int8(
                flag_values, built, calibration, spec, convert_cfg, float_model, thresholds)
        elif convert_cfg.quantize == "none":
            converted = float_model
        elif convert_cfg.quantize == "int8" and convert_cfg.backend == "tflite-converter":
            # Kept: the latency reference is requantized from it (~0.2 s, no second calibration).
            calibrated = convert.calibrated_for(built, calibration.arrays, convert_cfg)
            converted = convert.convert_calibrated(calibrated, convert_cfg)
        else:
            converted = convert.convert(built, calibration.arrays, convert_cfg, float_model.tflite)
    with _timed(timings, "metadata"):
        converted = metadata.attach(converted, built, spec, info)
    with _timed(timings, "verify"):
        parity = verify.verify(built, float_model.tflite, converted.tflite, eval_set, spec,
                               thresholds, threads=flag_values["threads"].value,
                               progress=lambda _, total: _progress(total))
    with _timed(timings, "clients"):
        client_rows = clients.check_clients(
            converted.tflite, eval_set.paths[:clients.SAMPLE_IMAGES], spec,
            config_files=report.artifact_files(built, converted, spec))
    with _timed(timings, "latency_reference"):
        reference_kind, reference = convert.latency_reference(built, calibration.arrays, converted.config,
                                                              calibrated)
    with _timed(timings, "benchmark"):
        bench = benchmark.quick_benchmark(
            converted.tflite, benchmark.BenchmarkConfig(runs=flag_values["benchmark-runs"].value),
            reference=reference, reference_kind=reference_kind)
    # The command as typed: export is also run by check (the gate) and its studies.
    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0].endswith(".py") else "export"
    command = f"python -m pipeline.{module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with _timed(timings, "report"):
        written = report.write_report(out_dir, built, converted, float_model.tflite, calibration,
                                      parity, bench, spec, timings, command,
                                      keep_float=keep_float_report, clients=client_rows)
    return written, out_dir, parity


def _selective_int8(flag_values, built, calibration, spec, convert_cfg, float_model, thresholds):
    """--keep-float NAMES|auto: int8 with some layers in float; returns (ConvertedModel, report,
    the calibrated model it was quantized from)."""
    import dataclasses

    from pipeline import diagnose
    from pipeline.errors import PipelineInputError
    from pipeline.preprocess import load_images

    if convert_cfg.quantize != "int8":
        raise PipelineInputError(f"--keep-float works with --quantize int8, not {convert_cfg.quantize}")
    calibrated = convert.calibrated_for(built, calibration.arrays, convert_cfg)
    names = [n.strip() for n in flag_values["keep-float"].value.split(",") if n.strip()]
    if names != ["auto"]:
        keep = convert.resolve_keep_float(names, calibrated)
        converted = convert.convert_calibrated(calibrated, dataclasses.replace(convert_cfg, keep_float=keep))
        return converted, {"mode": "names", "layers": names, "tensors": list(keep)}, calibrated
    if thresholds.min_agreement is None:
        raise PipelineInputError("--keep-float auto needs a target: pass --min-agreement (e.g. 0.97)")
    held_out = calibration.held_out[:256]
    if len(held_out) < 50:
        raise PipelineInputError(
            f"--keep-float auto measures sensitivity on calibration images not used to calibrate, and "
            f"{calibration.folder.root} has only {len(held_out)}: add images or lower "
            "--calibration-samples")
    search = diagnose.search_keep_float(
        calibrated, convert_cfg, float_model.tflite, load_images(held_out, spec).arrays,
        thresholds.min_agreement, flag_values["keep-float-max-latency"].value,
        flag_values["keep-float-max-groups"].value,
        progress=lambda line: print(line, file=sys.stderr, flush=True))
    converted = convert.convert_calibrated(
        calibrated, dataclasses.replace(convert_cfg, keep_float=search.chosen))
    found = search.to_json()
    if found["pin"]:
        # The search measures latency, which a busy machine makes noisy: CI should pin its result.
        print(f"keep-float: chose {', '.join(search.chosen_groups)}; to reproduce without "
              f"searching: {found['pin']}", file=sys.stderr, flush=True)
    return converted, {"mode": "auto", **found}, calibrated


def main(argv):
    from pipeline.errors import ParityError, PipelineInputError

    if len(argv) > 1:
        raise PipelineInputError(f"unexpected argument {argv[1]!r}: all inputs are --flags (see --help)")
    written, out_dir, parity = export_from_flags(FLAGS)
    print(verify.format_checks(parity))
    print(clients.format_rows(written["clients"]["checked"]))
    latency = written["latency_ms"]
    print(f"{out_dir}/model.tflite: {written['size_bytes'] / 1e6:.2f} MB, "
          + ", ".join(f"{t} thread{'s' if t != '1' else ''} {v['median']:.2f} ms" for t, v in latency.items())
          + f", agreement {parity.agreement_top1:.2%} on {parity.images} images")
    if not parity.passed:
        raise ParityError("parity check failed (see ✗ above); report written to " + str(out_dir))
    if FLAGS["android-demo"].value:
        from pipeline import deploy

        assets = deploy.deploy_android(out_dir, FLAGS["android-demo"].value)
        print(f"✓ copied into {assets}")


def _progress(total):
    from tqdm import tqdm

    return tqdm(total=total, desc="parity", unit="img", leave=False)


if __name__ == "__main__":
    from pipeline.cli import run

    define_flags()
    run(main)
