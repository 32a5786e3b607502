"""Stage 6: the quick latency benchmark the export report carries.

Median and p90 latency at 1 thread and at all cores, with the runtime `device_runner` finds
(ai-edge-litert, else tflite-runtime, else tf.lite); the report says which ran and whether XNNPACK
took the graph. The two thread counts are interleaved invoke by invoke so their ratio holds on a
noisy machine.

The host benchmark (`python -m pipeline.benchmark MODEL.tflite [MORE.tflite ...]`) times several
models at a sweep of thread counts, XNNPACK on and off, all interleaved in one run, and measures
each model's peak memory in a process of its own.

    python -m pipeline.benchmark OUT/model.tflite --compare google --threads-sweep 1,2 --output B
"""

import dataclasses
import json
import os
from pathlib import Path

from pipeline.core.options import merge, option
from pipeline.device import runner as device_runner
from pipeline.device.remote import TARGET_OPTIONS


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    threads: tuple = (1, os.cpu_count() or 1)
    warmup: int = 5
    runs: int = 50


@dataclasses.dataclass
class BenchmarkResult:
    runtime: str
    runtime_version: str
    latencies: list  # one dict per thread count (device_runner.time_configs, without times_ms)
    machine: dict = None  # device_runner.device_facts(): CPU, int8 ISA, machine class
    reference: dict = None  # the latency reference, timed interleaved with the model at 1 thread

    @property
    def xnnpack_applied(self):
        return all(r["xnnpack_applied"] for r in self.latencies)

    def latency_ms(self):
        """{threads: {median, p90}} — the report's `latency_ms`."""
        return {
            str(r["threads"]): {"median": round(r["median_ms"], 3), "p90": round(r["p90_ms"], 3)}
            for r in self.latencies
        }

    def latency_ratio(self):
        """The report's `latency_ratio`: 1-thread median over the reference's, from one run."""
        one = next(r for r in self.latencies if r["threads"] == 1)
        if self.reference is None:
            return None
        if self.reference["kind"] == "self":
            value = 1.0
        else:
            value = round(one["median_ms"] / self.reference["median_ms"], 4)
        return {"value": value, "threads": 1, "median_ms": round(one["median_ms"], 3),
                "reference": dict(self.reference)}


def quick_benchmark(model, cfg=BenchmarkConfig(), reference=None, reference_kind=None,
                    reference_facts=None):
    """Times `model` (path or bytes) at each thread count of `cfg`, and `reference` (bytes) at one
    thread interleaved with it, invoke by invoke, so their ratio holds on any machine.

    `reference_kind` names what the reference is: "int8" (the plain int8 model of the same
    network), "file" (a model the user named, `--latency-reference`), or "self" (the model is its
    own reference: ratio exactly 1, nothing more to time, and nothing a gate can judge).
    `reference_facts` (its name, MACs, …) go into the ratio's record."""
    name, version, module = device_runner.load_runtime()
    threads = tuple(sorted(set(cfg.threads) | ({1} if reference_kind else set())))
    configs = [{"model": model, "threads": t} for t in threads]
    if reference is not None:
        configs.append({"model": reference, "threads": 1})
    rows = device_runner.time_configs(module, configs, cfg.warmup, cfg.runs)
    for row in rows:
        del row["times_ms"]
    ref = None
    if reference_kind == "self":
        ref = {"kind": "self"}
    elif reference is not None:
        import hashlib

        ref_row = rows.pop()
        ref = {"kind": reference_kind, "median_ms": round(ref_row["median_ms"], 3),
               "sha256": hashlib.sha256(reference).hexdigest(),
               "xnnpack_applied": ref_row["xnnpack_applied"], **(reference_facts or {})}
    return BenchmarkResult(runtime=name, runtime_version=version, latencies=rows,
                           machine=device_runner.device_facts(), reference=ref)


GOOGLE_RELEASES = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")
DEFAULT_REFERENCE_DIR = "../shared/reference-models/google"


def model_memory(path):
    """Peak RSS of a fresh process that loads and runs only `path` (device_runner, 3 invokes)."""
    import subprocess
    import sys

    command = [sys.executable, device_runner.__file__, str(path), "--threads", "1", "--runs", "3",
               "--warmup", "1"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        return None
    memory = json.loads(completed.stdout)["memory"]
    return {"peak_rss_kb": memory["peak_rss_kb"],
            "model_rss_kb": memory["peak_rss_kb"] - memory["rss_before_models_kb"]}


def host_benchmark(models, threads=(1,), xnnpack_modes=(True,), warmup=5, runs=50, budget_s=None):
    """Every (model, threads, xnnpack) configuration, interleaved in one run; plus memory."""
    name, version, module = device_runner.load_runtime()
    configs = [{"model": str(path), "name": Path(path).name, "threads": t, "xnnpack": x}
               for path in models for t in threads for x in xnnpack_modes]
    rows = device_runner.time_configs(module, configs, warmup, runs, budget_s)
    memory = {Path(path).name: model_memory(path) for path in models}
    return {"runtime": {"name": name, "version": version}, "device": device_runner.device_facts(),
            "latency": rows, "memory": memory,
            "sizes": {Path(path).name: Path(path).stat().st_size for path in models}}


def markdown_table(result):
    rows = result["latency"]
    first = {}
    lines = ["| model | threads | XNNPACK | median ms | p90 | p99 | min | first invoke | init | "
             "× first model | partitions | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        key = (row["threads"], row["xnnpack"])
        first.setdefault(key, row["median_ms"])
        memory = result.get("memory", {}).get(row["model"]) or {}
        rss = f"{memory['peak_rss_kb'] / 1024:.0f}" if memory.get("peak_rss_kb") else "—"
        lines.append(
            f"| {row['model']} | {row['threads']} | {'on' if row['xnnpack'] else 'off'} | "
            f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['min_ms']:.2f} | "
            f"{row['first_invoke_ms']:.1f} | {row['init_ms']:.1f} | {row['median_ms'] / first[key]:.2f} | "
            f"{row['delegate_partitions']} | {rss} |")
    return "\n".join(lines) + "\n"


def latency_plot(result):
    """benchmark.png: the latency distribution of every configuration (box plot, log scale)."""
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()

    rows = result["latency"]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5), dpi=100)
    axis.boxplot([r["times_ms"] for r in rows], showfliers=True)
    axis.set_xticks(range(1, len(rows) + 1),
                    [f"{r['model'][:28]}\n{r['threads']}t XNNPACK {'on' if r['xnnpack'] else 'off'}"
                     for r in rows], rotation=30, ha="right", fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("latency per invoke (ms)")
    axis.set_title(f"{result['device'].get('cpu_model', '')} — {result['runtime']['name']} "
                   f"{result['runtime']['version']}, interleaved")
    figure.tight_layout()
    return png_bytes(figure)


def device_benchmark(target, settings, models, threads):
    """The models timed on a device (`remote.target_from_settings`): over ssh with this runner, or
    on Android with TFLite's benchmark_model (`--benchmark-binary`)."""
    from pipeline.core.errors import PipelineInputError
    from pipeline.device import remote

    if isinstance(target, remote.AdbTarget):
        if not settings["benchmark-binary"]:
            raise PipelineInputError("--target adb needs --benchmark-binary: TFLite's benchmark_model "
                                     "for Android")
        return remote.adb_benchmark(target, models[0], settings["benchmark-binary"], threads,
                                    settings["benchmark-runs"])
    library = None
    if settings["delegate"] == "gpu":
        library = settings["delegate-library"]
        if not library:
            raise PipelineInputError("--delegate gpu needs --delegate-library: the delegate .so's "
                                     "path on the device")
    result = remote.remote_benchmark(target, models, threads, settings["benchmark-runs"],
                                     xnnpack=settings["xnnpack"], delegate_library=library)
    result["memory"] = {}
    result["sizes"] = {Path(path).name: Path(path).stat().st_size for path in models}
    return result


def device_summary(result):
    """One line on what ran where, saying plainly when figures are emulated or CPU-only."""
    device = result.get("device", {})
    runtime = result.get("runtime", {})
    parts = [f"{result.get('target', 'host')}: {device.get('machine')} {device.get('cpu_model') or ''}".strip(),
             f"{runtime.get('name')} {runtime.get('version', '')}".strip()]
    if device.get("emulated"):
        parts.append("EMULATED — " + device["emulation"])
    elif device:
        parts.append(device_runner.int8_dot_product_line(device))
    delegate = runtime.get("delegate")
    if delegate and delegate.get("requested"):
        parts.append(f"delegate {delegate['requested']}: {delegate['note']}")
    if device.get("governor"):
        parts.append(f"governor {device['governor']}")
    if device.get("temperature_c") is not None:
        parts.append(f"{device['temperature_c']:.0f} °C")
    return "; ".join(parts)


def checked_model(path):
    """Refuses, in one line, a model file the benchmark cannot time: not a `.tflite`, one LiteRT
    will not load, or one that fails on the random inputs the benchmark feeds (as a model reading
    token ids does: random ids fall outside its vocabulary). Returns its bytes."""
    from pipeline.core.errors import PipelineInputError
    from pipeline.core.tflite import read_model

    data = read_model(path)
    _, _, module = device_runner.load_runtime()
    fix = "pass a .tflite model the converter wrote, such as an exported image classifier"
    try:
        interpreter = device_runner.make_interpreter(module, model_content=data)
        if not interpreter.get_input_details() or not interpreter.get_output_details():
            raise PipelineInputError(f"{path} has no inputs or no outputs: nothing to time; {fix}")
        device_runner.time_configs(module, [{"model": data, "threads": 1}], warmup=0, runs=1)
    except (ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PipelineInputError(f"{path} does not run in LiteRT on random inputs ({reason}): "
                                 f"{fix}") from None
    return data


OPTIONS = (
    option("integer", "benchmark-runs", 50, "Timed invokes per configuration."),
    option("string", "latency-reference", None,
           "A .tflite to time the model against, interleaved, at 1 thread (e.g. the model of your "
           "last release): the report's latency ratio is to it. Default: the plain int8 model of "
           "the same network (the default export is then its own reference, ratio 1.00)."),
)


def latency_reference(reference_file, plain_int8):
    """(kind, model bytes or None, facts) an export is timed against: the `--latency-reference`
    file (from `reference_from_file`) when given, else `plain_int8()` — convert.latency_reference's
    (kind, bytes): the plain int8 model of the same network, or "self"."""
    if reference_file is not None:
        model, facts = reference_file
        return "file", model, facts
    kind, model = plain_int8()
    return kind, model, None


def reference_from_file(path):
    """(bytes, facts) of a `--latency-reference` model: refused in one line when it cannot be
    timed; its facts (file name, MACs, whether every conv/fc op is int8) let the gate tell whether
    a ratio to it carries across CPU classes."""
    from pipeline.core import tflite

    data = checked_model(path)
    _, weighted = tflite.inspect_tflite(data)
    return data, {"name": Path(path).name, "macs": tflite.model_macs(data),
                  "int8": bool(weighted) and all(w["activation_dtype"] in ("int8", "uint8")
                                                 and w["weight_dtype"] in ("int8", "uint8")
                                                 for w in weighted)}


HOST_OPTIONS = (
    option("list", "threads-sweep", ["1", str(os.cpu_count() or 1)], "Thread counts to time."),
    option("enum", "xnnpack", "on", "XNNPACK delegate on, off, or both.",
           choices=["on", "off", "both"]),
    option("float", "budget-s", None, "Stop the timed loop after this many seconds."),
    option("list", "compare", [],
           "Extra models to time beside yours; 'google' = Google's MobileNetV2 releases in "
           "--reference-dir."),
    option("string", "reference-dir", DEFAULT_REFERENCE_DIR, "Where Google's .tflite releases are."),
    option("string", "output", None, "Folder for benchmark.json, benchmark.md, benchmark.png."),
    option("string", "benchmark-binary", None,
           "With --target adb: TFLite's benchmark_model built for Android, pushed and run there."),
    option("enum", "delegate", "none",
           "With an ssh target: gpu loads --delegate-library on the device (a Jetson's GPU "
           "delegate); the report says plainly whether it loaded.", choices=["none", "gpu"]),
    option("string", "delegate-library", None, "Path ON THE DEVICE of the delegate .so to load."),
)


# What `run_benchmark` (the benchmark command, api.benchmark) takes.
RUN_OPTIONS = merge(OPTIONS, HOST_OPTIONS, TARGET_OPTIONS)


@dataclasses.dataclass
class BenchmarkRun:
    """What `run_benchmark` measured: the result dict (benchmark.json) and its text (benchmark.md)."""
    result: dict
    table: str
    output: str = None  # the folder written, if any


def run_benchmark(models, settings):
    """Times `models` (paths; plus --compare's) as the settings say: on this machine, every model ×
    thread count × XNNPACK on/off interleaved, and each model's peak memory; or on --target. Writes
    benchmark.{json,md,png} to --output. Bad settings or models are one PipelineInputError, before
    anything is timed."""
    from pipeline.core.artifacts import check_writable, write_files_atomically
    from pipeline.core.errors import PipelineInputError
    from pipeline.device import remote

    models = [str(m) for m in models]
    for item in settings["compare"]:
        if item == "google":
            models += [str(Path(settings["reference-dir"]) / name) for name in GOOGLE_RELEASES]
        else:
            models.append(item)
    if not models:
        raise PipelineInputError("give models: python -m pipeline.benchmark MODEL.tflite [MORE ...]")
    try:
        threads = [int(t) for t in settings["threads-sweep"]]
    except ValueError:
        raise PipelineInputError("--threads-sweep takes counts like 1,2,4") from None
    if not threads or min(threads) < 1:
        raise PipelineInputError(f"--threads-sweep {','.join(map(str, threads))}: thread counts "
                                 "must be at least 1, e.g. 1,2,4")
    if settings["benchmark-runs"] < 1:
        raise PipelineInputError(f"--benchmark-runs must be at least 1 (got "
                                 f"{settings['benchmark-runs']}); 50 is typical")
    budget = settings["budget-s"]
    if budget is not None and not budget > 0:
        raise PipelineInputError(f"--budget-s {budget} must be a positive number of seconds")
    # The address first: one with shell syntax in it is refused before anything else runs.
    target = remote.target_from_settings(settings)
    for path in models:
        checked_model(path)
    out = settings["output"]
    if out:
        check_writable(out)
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[settings["xnnpack"]]
    if target is not None:
        result = device_benchmark(target, settings, models, threads)
    else:
        result = host_benchmark(models, threads, modes, runs=settings["benchmark-runs"],
                                budget_s=budget)
    table = device_summary(result) + "\n\n" + (markdown_table(result) if "memory" in result
                                                 else json.dumps(result["latency"], indent=2))
    if out:
        write_files_atomically(out, {"benchmark.json": json.dumps(result, indent=2) + "\n",
                                     "benchmark.md": table,
                                     "benchmark.png": latency_plot(result)})
    return BenchmarkRun(result, table, out)
