"""Keras MobileNetV2 → calibrated `.tflite` → parity → report, in one command.

    python -m pipeline.export --quantize int8 \\
        --calibration calibration_data/ --eval path/to/labelled/val --output artifacts/mine

Composes the stages (build, calibrate, convert, verify, benchmark, report) and adds nothing of its
own. Exit codes: 0 done, 1 parity below a threshold (report written), 2 bad input (nothing written).
"""

import contextlib
import sys
import time

from absl import flags

from pipeline import (artifacts, benchmark, build, cache, calibrate, clients, convert, metadata,
                      preprocess, qat, report, selective, train, verify)

FLAGS = flags.FLAGS


@contextlib.contextmanager
def _timed(timings, stage):
    start = time.perf_counter()
    print(f"· {stage}…", file=sys.stderr, flush=True)
    yield
    timings[stage] = time.perf_counter() - start


def define_flags():
    build.define_flags()
    cache.define_flags()
    calibrate.define_flags()
    convert.define_flags()
    verify.define_flags()
    benchmark.define_flags()
    metadata.define_flags()
    preprocess.define_flags()
    qat.define_flags()
    selective.define_flags()
    from pipeline.cli import define

    define("string", "output", None, "Output folder (default artifacts/<model-name>/).")
    define("string", "from-train", None,
           "A pipeline.train output folder: its model.keras, labels.txt, training images (for "
           "calibration) and held-out split (for --eval), unless those flags are given.")
    define("string", "android-demo", None,
           "After exporting, check the model's contract and copy it into this Android demo app.")


def export_from_flags(flag_values=FLAGS):
    """Runs every stage as the flags say; returns (report dict, output folder, ParityResult)."""
    timings = {}
    train.use_trained(flag_values)
    build_cfg = build.config_from_flags(flag_values)
    convert_cfg = convert.config_from_flags(flag_values)
    convert.check_config(convert_cfg)
    thresholds = verify.config_from_flags(flag_values)
    keep_float = selective.config_from_flags(flag_values)
    qat_cfg = qat.config_from_flags(flag_values)
    store = cache.from_flags(flag_values)
    # Checked before any work: a reference that cannot be timed is bad input.
    reference_file = (benchmark.reference_from_file(flag_values["latency-reference"].value)
                      if flag_values["latency-reference"].value else None)
    with _timed(timings, "build"):
        built = build.build_model(build_cfg)
    info = metadata.info_from_flags(flag_values, built, convert_cfg)
    out_dir = flag_values["output"].value or f"artifacts/{built.name}"
    artifacts.check_writable(out_dir)
    spec = preprocess.spec_from_flags(flag_values, built.resolution)
    with _timed(timings, "calibrate"):
        calibration = calibrate.representative_dataset(
            calibrate.config_from_flags(flag_values, imagenet_weights=built.synsets is not None),
            spec, progress=calibrate.progress_bar("calibration images"))
    eval_set = verify.eval_set_from_flags(flag_values, built, calibration)
    with _timed(timings, "convert_float"):
        float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none",
                                                                         head=convert_cfg.head),
                                      store=store)
    # The float half of parity runs in worker processes while this one calibrates and quantizes,
    # unless the keep-float search times latency meanwhile.
    with verify.ParityWorkers(flag_values["threads"].value) as workers:
        reference = verify.float_reference(built, float_model.tflite, eval_set, spec, workers, store,
                                           start_now=not selective.times_latency(keep_float))
        keep_float_report = qat_report = None
        # Parity is always against the float model as given; --qat quantizes fine-tuned weights.
        quantized_from, quantized_float = built, float_model
        if qat_cfg:
            with _timed(timings, "qat"):
                tuned = qat.fine_tune(built, calibration, spec, qat_cfg, convert_cfg, float_model,
                                      store, progress=lambda total: _progress(total, "qat", "step"))
                qat_report = tuned.to_json()
                print(tuned.summary_line(), file=sys.stderr, flush=True)
                quantized_from, quantized_float = tuned.built, tuned.float_model
        with _timed(timings, "convert"):
            if keep_float:
                converted, keep_float_report, calibrated = selective.quantize_selectively(
                    built, calibration, spec, convert_cfg, float_model.tflite, keep_float,
                    progress=lambda line: print(line, file=sys.stderr, flush=True), store=store)
            else:
                converted, calibrated = convert.quantize(quantized_from, calibration.arrays,
                                                         convert_cfg, quantized_float, store)
        with _timed(timings, "metadata"):
            converted = metadata.attach(converted, built, spec, info)
        with _timed(timings, "verify"):
            parity = verify.verify(built, float_model.tflite, converted.tflite, eval_set, spec,
                                   thresholds,
                                   progress=lambda _, total: _progress(total, "parity", "img"),
                                   store=store, workers=workers, reference=reference)
    with _timed(timings, "clients"):
        client_rows = clients.check_clients(
            converted.tflite, eval_set.paths[:clients.SAMPLE_IMAGES], spec,
            config_files=report.artifact_files(built, converted, spec))
    with _timed(timings, "latency_reference"):
        reference_kind, latency_model, reference_facts = benchmark.latency_reference(
            reference_file, lambda: convert.latency_reference(
                quantized_from, calibration.arrays, converted.config, calibrated, store))
    with _timed(timings, "benchmark"):
        bench = benchmark.quick_benchmark(
            converted.tflite, benchmark.BenchmarkConfig(runs=flag_values["benchmark-runs"].value),
            reference=latency_model, reference_kind=reference_kind,
            reference_facts=reference_facts)
    with _timed(timings, "report"):
        written = report.write_report(out_dir, built, converted, float_model.tflite, calibration,
                                      parity, bench, spec, timings, report.command_line(),
                                      keep_float=keep_float_report, qat=qat_report,
                                      clients=client_rows,
                                      cache=store.summary())
    return written, out_dir, parity


def main(argv):
    from pipeline.errors import ParityError

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


def _progress(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


if __name__ == "__main__":
    from pipeline.cli import run

    define_flags()
    run(main)
