"""The Python API: what every command calls, for a notebook, a script or another tool.

    from pipeline import api

    result = api.export(quantize="int8", weights="imagenet", calibration="calibration_data/",
                        eval="val/", output="out/")
    print(result.summary)        # out/model.tflite: 4.03 MB, 1 thread 3.47 ms, …, agreement 96.36% …
    result.report["kl_mean"]     # report.json, as a dict
    result.parity.per_image      # each image's float and int8 top-1 and KL

Each function is named after its command and takes keyword arguments named like that command's
flags, dashes as underscores (`--calibration-samples 100` is `calibration_samples=100`), with the
same defaults; or `settings=`, a `pipeline.core.options.Settings` (`api.export_settings(...)` makes
one, `.replace(...)` changes it). They return result objects and raise the project's typed errors:
`PipelineInputError` for bad input (the command's exit 2) — nothing is written then. A failed parity
threshold is not an exception: `result.passed` is False (the command's exit 1). No absl: flags stop
at the commands (pipeline.commands), which turn them into these calls.

    api.export(...)       → ExportResult        python -m pipeline.export
    api.train(...)        → TrainRun            python -m pipeline.train
    api.check(...)        → CheckRun            python -m pipeline.check
    api.benchmark(...)    → BenchmarkRun        python -m pipeline.benchmark
    api.predict(...)      → PredictRun          python -m pipeline.predict
    api.inspect(...)      → dict                python -m pipeline.inspect
    api.sweep(...)        → SweepRun            python -m pipeline.sweep
    api.cache(...)        → PruneResult         python -m pipeline.cache
"""

import dataclasses

from pipeline.core.options import Settings


def _settings(options, what, settings, keywords):
    if settings is not None and keywords:
        return settings.replace(**keywords)
    if settings is not None:
        return settings
    return Settings.from_keywords(options, what, **keywords)


def export_settings(**keywords):
    """The Settings of an export (every `python -m pipeline.export` flag), from keywords."""
    from pipeline.stages import export as stage

    return Settings.from_keywords(stage.OPTIONS, "export", **keywords)


def export(settings=None, command=None, **keywords):
    """Keras MobileNetV2 (or your model) → calibrated `.tflite` → parity → report, written to
    `output` (default artifacts/<model name>/). Returns an ExportResult: `output`, `report` (the
    report.json dict), `parity` (with `per_image`), `passed`, `summary` (one line). Calling it twice
    in one process with different settings gives the bytes the command line gives for each."""
    from pipeline.stages import export as stage

    return stage.export(_settings(stage.OPTIONS, "export", settings, keywords), command)


def train(config=None, command=None, **keywords):
    """Fine-tunes MobileNetV2 on a folder with one sub-folder of images per class (`data=`), and
    writes what `export(from_train=OUT)` takes. `config`: a TrainConfig, or keywords named like
    `python -m pipeline.train`'s flags. Returns a TrainRun."""
    from pipeline.stages import train as stage

    if config is None:
        config = stage.config_from_settings(Settings.from_keywords(stage.OPTIONS, "train", **keywords))
    return stage.run_training(config, command)


def check(settings=None, command=None, **keywords):
    """The CI gate: an export (or `report=` an existing report.json) judged against `baseline=`
    (pipeline.gate), or the baseline written from it with `update_baseline=True`; `junit=`,
    `result=`, `summary=` files written. Returns a CheckRun (`passed`, `results`, `identity`, …)."""
    from pipeline.stages import check as stage

    return stage.check(_settings(stage.OPTIONS, "check", settings, keywords), command)


def benchmark(models, settings=None, **keywords):
    """Times `models` (.tflite paths) interleaved: thread counts (`threads_sweep=`), XNNPACK on
    and off, peak memory; `compare=["google"]` adds Google's releases; `target="ssh://…"` times
    on a device. Returns a BenchmarkRun (`result`, the benchmark.json dict, and `table`)."""
    from pipeline.stages import benchmark as stage

    return stage.run_benchmark(list(models), _settings(stage.RUN_OPTIONS, "benchmark", settings,
                                                       keywords))


def predict(model, images, top_k=5, threads=1):
    """Top-k labels and probabilities of `images` (files, or folders: their images) from `model`:
    an export folder (its model_config.json frames the images) or a bare .tflite (its metadata
    does). Returns a PredictRun: `predictions` [(path, [(label, probability)], milliseconds)],
    `skipped` [(path, reason)] (what a given folder held besides decodable images), `classifier`."""
    from pipeline.stages import predict as stage

    return stage.predict_images(model, images, top_k, threads)


def inspect(model):
    """A .tflite's contract from the file alone: inputs, outputs, metadata, labels, ops, and what
    the mainstream clients take of it (the dict `python -m pipeline.inspect --json` prints)."""
    from pipeline.core.tflite import read_model
    from pipeline.stages import inspection

    return inspection.contract(read_model(model), where=str(model))


def sweep(settings=None, grid=None, **keywords):
    """A grid of exports on Ray and its Pareto frontier, written to `output=`: `grid` maps export
    settings to lists of values (`{"resolution": [96, 224], "quantize": ["int8", "float16"]}`),
    keywords set the rest and the sweep's own settings (`workers=`, `ray_address=`, …). Returns a
    SweepRun."""
    from pipeline.stages import sweep as stage

    return stage.sweep(_settings(stage.OPTIONS, "sweep", settings, keywords), grid or {},
                       export_to_memory)


def cache(cache_dir=None, older_than=None, max_size=None, dry_run=False):
    """The export cache (`cache_dir`, default $TFLITE_PIPELINE_CACHE or ~/.cache/tflite-pipeline)
    pruned: entries unused for `older_than` ("30d"), then the least recently used until it fits in
    `max_size` ("5GB"); neither given lists it. Returns a PruneResult (`removed`, `kept`, `freed`,
    `usage()`)."""
    from pathlib import Path

    from pipeline.core import cache as store

    return store.prune(Path(cache_dir) if cache_dir else store.default_dir(),
                       older_than_s=None if older_than is None else store.parse_age(older_than),
                       max_bytes=None if max_size is None else store.parse_size(max_size),
                       dry_run=dry_run)


@dataclasses.dataclass
class ExportFiles:
    """An export made in a private folder: its files as bytes, and whether parity passed."""

    files: dict  # {"model.tflite": b"…", "report.json": b"…", …}
    passed: bool
    summary: str


def export_to_memory(settings=None, command=None, **keywords):
    """`export` into a private temporary folder, its files returned as bytes (ExportFiles): for an
    export whose output folder is not the caller's — a sweep cell on a Ray worker sends them back
    to the driver, on another machine maybe."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="export-") as folder:
        out = Path(folder) / "out"
        settings = export_settings(**keywords) if settings is None else settings.replace(**keywords)
        result = export(settings.replace(output=str(out)), command)
        files = {str(p.relative_to(out)): p.read_bytes()
                 for p in sorted(out.rglob("*")) if p.is_file()}
        return ExportFiles(files, result.passed, result.summary)
