"""Keras MobileNetV2 → calibrated `.tflite` → parity → report: the export, composed of the stages.

    python -m pipeline.export --quantize int8 \\
        --calibration calibration_data/ --eval path/to/labelled/val --output artifacts/mine

Composes the stages (build, calibrate, convert, verify, benchmark, report) and adds nothing of its
own; `pipeline.api.export` calls it, and the command `python -m pipeline.export` calls that.
"""

import contextlib
import dataclasses
import sys
import time

from pipeline.core import artifacts, cache
from pipeline.core.options import merge, option
from pipeline.stages import (benchmark, build, calibrate, clients, convert, deploy, evalset,
                             metadata, parity_workers, preprocess, qat, report, selective,
                             train, verify)

OWN_OPTIONS = (
    option("string", "output", None, "Output folder (default artifacts/<model-name>/)."),
    option("string", "from-train", None,
           "A pipeline.train output folder: its model.keras, labels.txt, training images (for "
           "calibration) and held-out split (for --eval), unless those flags are given."),
    option("string", "android-demo", None,
           "After exporting, check the model's contract and copy it into this Android demo app."),
)
# Every setting an export takes, in the order `--help` lists them.
OPTIONS = merge(build.OPTIONS, cache.OPTIONS, calibrate.OPTIONS, convert.OPTIONS, verify.OPTIONS,
                benchmark.OPTIONS, metadata.OPTIONS, preprocess.OPTIONS, qat.OPTIONS,
                selective.OPTIONS, OWN_OPTIONS)


@dataclasses.dataclass
class ExportResult:
    """What an export wrote and measured."""

    output: str  # the folder: model.tflite, labels.txt, model_config.json, report.*, parity.*
    report: dict  # report.json's content
    parity: object  # pipeline.stages.verify.ParityResult (its `per_image` too)
    android_demo: str = None  # the app's assets folder the model went into, with --android-demo

    @property
    def passed(self):
        """Whether parity met --min-agreement / --max-top1-drop (and the float model its Keras)."""
        return self.parity.passed

    @property
    def model(self):
        return f"{self.output}/model.tflite"

    @property
    def summary(self):
        """One line: where, how big, how fast, how close to float."""
        latency = self.report["latency_ms"]
        return (f"{self.model}: {self.report['size_bytes'] / 1e6:.2f} MB, "
                + ", ".join(f"{t} thread{'s' if t != '1' else ''} {v['median']:.2f} ms"
                            for t, v in latency.items())
                + f", agreement {self.parity.agreement_top1:.2%} on {self.parity.images} images")


@contextlib.contextmanager
def _timed(timings, stage):
    start = time.perf_counter()
    print(f"· {stage}…", file=sys.stderr, flush=True)
    yield
    timings[stage] = time.perf_counter() - start


def export(settings, command=None):
    """Runs every stage as `settings` (pipeline.core.options.Settings of OPTIONS) say; returns an
    ExportResult. `command` is what the report says was run (default: the command line equivalent of the settings). Bad input is one PipelineInputError, before anything is
    written."""
    timings = {}
    settings = train.trained_settings(settings)
    build_cfg = build.config_from_settings(settings)
    convert_cfg = convert.config_from_settings(settings)
    convert.check_config(convert_cfg)
    thresholds = verify.config_from_settings(settings)
    keep_float = selective.config_from_settings(settings)
    qat_cfg = qat.config_from_settings(settings)
    store = cache.from_settings(settings)
    # Checked before any work: a reference that cannot be timed is bad input.
    reference_file = (benchmark.reference_from_file(settings["latency-reference"])
                      if settings["latency-reference"] else None)
    with _timed(timings, "build"):
        built = build.build_model(build_cfg)
    info = metadata.info_from_settings(settings, built, convert_cfg)
    out_dir = settings["output"] or f"artifacts/{built.name}"
    artifacts.check_writable(out_dir)
    spec = preprocess.spec_from_settings(settings, built.resolution)
    with _timed(timings, "calibrate"):
        calibration = calibrate.representative_dataset(
            calibrate.config_from_settings(settings, imagenet_weights=built.synsets is not None),
            spec, progress=calibrate.progress_bar("calibration images"))
    eval_set = evalset.eval_set_from_settings(settings, built, calibration)
    with _timed(timings, "convert_float"):
        float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none",
                                                                         head=convert_cfg.head),
                                      store=store)
    # The float half of parity runs in worker processes while this one calibrates and quantizes,
    # unless the keep-float search times latency meanwhile.
    with parity_workers.ParityWorkers(settings["threads"]) as workers:
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
            converted.tflite, benchmark.BenchmarkConfig(runs=settings["benchmark-runs"]),
            reference=latency_model, reference_kind=reference_kind,
            reference_facts=reference_facts)
    with _timed(timings, "report"):
        written = report.write_report(out_dir, built, converted, float_model.tflite, calibration,
                                      parity, bench, spec, timings,
                                      command or settings.command_line("python -m pipeline.export"),
                                      keep_float=keep_float_report, qat=qat_report,
                                      clients=client_rows,
                                      cache=store.summary())
    # Into the app only when parity passed: a failing model is not handed on.
    android = (str(deploy.deploy_android(out_dir, settings["android-demo"]))
               if settings["android-demo"] and parity.passed else None)
    return ExportResult(str(out_dir), written, parity, android)


def _progress(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)
