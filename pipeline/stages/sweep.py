"""Choose the variant that fits the budget: a grid of exports on Ray, and its Pareto frontier.

    python -m pipeline.sweep --alpha 0.35,0.5,0.75,1.0 --resolution 96,128,160,224 \\
        --quantize int8,float16,none --calibration DIR --eval DIR --output SWEEP/ [--workers N]

Every export flag may be given once (all cells get it) or as a comma list of values: one axis of
the grid. A flag whose single value is itself a comma list (--keep-float, list flags) separates its
alternatives with ';' instead. Each cell is an ordinary export with its settings (`api.export`,
through `api.export_to_memory`: the same stages, report and one-line errors), run in a Ray task of
its own worker process, its files sent back as bytes and stored in SWEEP/cells/<cell>/.

Two phases, so that parallel cells never corrupt a timing:
  1. accuracy: the exports run in parallel, --workers at a time on a local Ray started in this
     process (or on the cluster at --ray-address), --cpus-per-cell CPUs each;
  2. latency: once they are done, every finished cell's model is timed interleaved in one run
     (`benchmark.host_benchmark`) in one Ray task holding the `tflite_latency` resource (one per
     machine that may time), or on the device at --target. One run makes the cells' figures
     comparable: the same machine noise reaches all of them.

Nothing is lost. A cell is stored under the sha256 of everything that determines it (its flags,
the contents of the weights, calibration and evaluation files it reads, the library versions and
this package's source); a re-run reuses a stored cell with the same key. Each cell is stored as soon
as it finishes, so Ctrl-C (exit 130), a killed worker (Ray runs the task again) or a failed cell
(its export's one error line in the sweep report, the others go on) costs no finished cell.

Writes SWEEP/sweep.json, sweep.md (the table, the frontier and its export commands, the failures),
sweep.csv and pareto.png (accuracy, or agreement without labels, against 1-thread latency; marker
area is the model's size; the frontier drawn and labelled). Exit codes: 0 every cell finished, 1 a
cell failed or missed its parity thresholds (all written), 2 bad input (nothing written).

Why Ray Core tasks and not Ray Tune's grid search: a cell here is keyed by content and reused by
any later sweep that contains it (Tune's resume is per experiment), the latency phase must run
after every accuracy trial on an otherwise idle machine, and the trial's result is a folder of
files, not a metric stream. Ray's own retries (max_retries), resources and scheduling do the
rest.
"""

import dataclasses
import hashlib
import io
import itertools
import json
import os
import shlex
import tempfile
import time
from pathlib import Path

from pipeline.core import artifacts, cache
from pipeline.core.errors import PipelineInputError
from pipeline.core.files import tree_sha256
from pipeline.core.options import merge, option
from pipeline.stages import export
from pipeline.stages.sweep_report import write_sweep

LATENCY_RESOURCE = "tflite_latency"
# Flags whose one value is a comma list: alternatives of these are separated by ';'.
LIST_VALUED = ("keep-float",)
# Flags naming inputs: the key holds their contents, not their path.
INPUT_FLAGS = ("weights", "model", "labels", "calibration", "eval", "from-train")
PATH_FLAGS = INPUT_FLAGS + ("cache-dir",)
# Flags that change how fast an export runs, never what it writes (tested: the cache gives
# byte-identical models, parity is bit-identical at any thread count): not part of a cell's key.
NOT_IN_KEY = ("cache-dir", "no-cache", "threads")
# Flags that change only the quantized model: cells differing in these alone share a float model and
# its float reference (through the cache), so they are not started side by side (`run_order`).
QUANTIZATION_FLAGS = ("quantize", "io", "backend", "algorithm", "activation-ranges",
                      "range-percentile", "granularity", "keep-float", "keep-float-max-latency",
                      "keep-float-max-groups", "calibration-samples", "benchmark-runs")
# Flags the sweep sets itself, or that make no sense per cell.
REFUSED = {"output": "the sweep's --output is the sweep folder; cells go to SWEEP/cells/<cell>",
           "android-demo": "copy the chosen cell into the app with pipeline.deploy"}
EXPORT_OPTIONS = {o.name: o for o in export.OPTIONS}
SHORT = {"alpha": "a", "resolution": "r", "quantize": "", "weights": "w", "calibration-samples": "cal"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One export of the grid: its flags as the user gave them, and which of them vary."""

    flags: tuple  # ((flag, value), ...) in command-line order
    axes: tuple  # names of the flags that vary across the sweep
    key: str = ""

    @property
    def label(self):
        """A short readable name: the axis values (a1.0-r224-int8)."""
        values = dict(self.flags)
        parts = [f"{SHORT.get(a, a)}{_slug(values[a])}" for a in self.axes]
        return "-".join(parts) or "cell"

    @property
    def name(self):
        return f"{self.label}-{self.key[:10]}"

    def resolved(self):
        """The export's flags, with the paths that exist here made absolute (a Ray worker does
        not run in this folder)."""
        return tuple((flag, _absolute(value) if flag in PATH_FLAGS else value)
                     for flag, value in self.flags)

    def command(self, output):
        """The one-line export command a user runs to make this cell on its own."""
        words = ["python", "-m", "pipeline.export"]
        for flag, value in self.flags:
            words += [f"--{flag}", value] if value not in ("true", "false") else (
                [f"--{flag}"] if value == "true" else [f"--no{flag}"])
        return shlex.join(words + ["--output", output])


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    output: str
    workers: int = 1  # None on a cluster: as many at once as its CPUs hold
    cpus_per_cell: int = 1
    ray_address: str = None
    target: str = None
    ssh_options: tuple = ()
    remote_python: str = "python3"
    latency_runs: int = 50
    latency_threads: tuple = (1,)
    retries: int = 2


@dataclasses.dataclass
class CellResult:
    cell: Cell
    state: str  # "exported" | "reused" | "failed"
    report: dict = None
    error: str = None  # the export's one line, for a failed cell
    exit_code: int = None
    latency: dict = None  # {threads: {"median", "p90"}} from the latency phase

    @property
    def folder(self):
        return f"cells/{self.cell.name}"


class CellCrashed(RuntimeError):
    """The export process ended without a report or a one-line error (killed, crashed): worth a
    retry by Ray; its last line is kept if the retries fail too."""


# --- The grid -------------------------------------------------------------------------------------

def alternatives(flag, value):
    """The values of one axis: `value` split on ',' (on ';' for list-valued flags, and whenever it
    holds a ';'). Empty alternatives are refused: `--quantize int8,` is a typo, not a cell."""
    list_valued = flag in LIST_VALUED or export_option(flag).kind in ("list", "multi_string")
    separator = ";" if list_valued or ";" in value else ","
    values = [v.strip() for v in value.split(separator)]
    if any(not v for v in values):
        raise PipelineInputError(f"--{flag} {value!r} has an empty value: separate the values of "
                                 f"an axis with '{separator}', no trailing one")
    if len(set(values)) != len(values):
        raise PipelineInputError(f"--{flag} {value!r} names a value twice")
    return values


def grid(export_args):
    """Every combination of the axes' values, the first flag varying slowest, as [Cell];
    `export_args` are [(flag, value as typed)], a value a comma list for an axis (`alternatives`)."""
    names = [flag for flag, _ in export_args]
    for flag in names:
        if names.count(flag) > 1:
            raise PipelineInputError(f"--{flag} is given twice: give its values once, comma-separated")
    return grid_of([(flag, alternatives(flag, value)) for flag, value in export_args])


def grid_of(choices):
    """[Cell] of [(flag, [values as typed])], the first flag varying slowest."""
    names = [flag for flag, _ in choices]
    values = dict(choices)
    axes = tuple(n for n in names if len(values[n]) > 1)
    return [Cell(tuple(zip(names, combo)), axes)
            for combo in itertools.product(*(values[n] for n in names))]


# --- What determines a cell -----------------------------------------------------------------------

def source_digest():
    """sha256 of the source a cell's export runs (this package but this module, which only
    schedules): a changed pipeline makes new cells, never stale ones."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def input_digest(path, store):
    """The content digest of a file or folder a flag names ("absent:PATH" if there is none: the
    cell's export then says what is wrong)."""
    path = Path(path).expanduser()
    if path.is_file():
        return cache.files_digest(store, [str(path.parent), str(path)], tree_sha256)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file())
        return cache.files_digest(store, [str(path)] + files, tree_sha256)
    return f"absent:{path}"


def _keras_weights(values):
    # `--weights imagenet`: the file Keras' cache holds for this width and resolution.
    from pipeline.stages.build import keras_weights_path

    try:
        alpha = float(values.get("alpha", export_option("alpha").default))
        resolution = int(values.get("resolution", export_option("resolution").default))
    except ValueError:
        return "unparsed"
    return keras_weights_path(alpha, resolution)


def _absolute(value):
    path = os.path.expanduser(value)
    return os.path.abspath(path) if os.path.exists(path) else value


def _slug(value):
    text = Path(value).stem if os.sep in value else value
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:24]


def export_option(name):
    """The export's Option called `name` (pipeline.stages.export.OPTIONS)."""
    return EXPORT_OPTIONS[name]


def _is_default(flag, value):
    try:
        return export_option(flag).parse(value) == export_option(flag).default
    except PipelineInputError:
        return False


def cell_key(cell, store, versions):
    """sha256 of what the cell's export depends on. Flags at their default value are dropped
    (`--quantize int8` and no --quantize are one cell), and NOT_IN_KEY; inputs count by content,
    not by path."""
    values = dict(cell.flags)
    parts = {}
    for flag in sorted((set(INPUT_FLAGS) | set(values)) - set(NOT_IN_KEY)):
        value = values.get(flag, export_option(flag).default)
        if flag in INPUT_FLAGS:
            if value is None or (flag == "weights" and value == "random"):
                parts[flag] = value
            elif flag == "weights" and value == "imagenet":
                parts[flag] = ["imagenet", input_digest(_keras_weights(values), store)]
            else:
                parts[flag] = input_digest(value, store)
        elif not _is_default(flag, value):
            parts[flag] = value
    return cache.key("sweep-cell", parts, versions)


def with_keys(cells, store):
    from pipeline.stages.report import versions

    fingerprint = {**versions(), "pipeline_source": source_digest()}
    fingerprint.pop("platform")
    return [dataclasses.replace(c, key=cell_key(c, store, fingerprint)) for c in cells]


def run_order(cells):
    """The cells in the order to start them: one of each float model first, then the next of each.

    Cells that share a float model (they differ only in QUANTIZATION_FLAGS) reuse its conversion
    and float reference from the cache when they run one after the other; started side by side,
    both would make them. Measured on the 8-cell benchmark (benchmarks/sweep_speed.py)."""
    groups = {}
    for cell in cells:
        shared = tuple((f, v) for f, v in cell.flags if f not in QUANTIZATION_FLAGS)
        groups.setdefault(shared, []).append(cell)
    rounds = itertools.zip_longest(*groups.values())
    return [cell for round_ in rounds for cell in round_ if cell is not None]


def finished(output, cell):
    """The stored report of `cell` if SWEEP/cells/<cell>/ holds this key's finished export."""
    folder = Path(output) / "cells" / cell.name
    try:
        stored = json.loads((folder / "cell.json").read_text())
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != cell.key or not (folder / "model.tflite").is_file():
        return None
    return stored, report


def prune_cells(output, dry_run=False):
    """Removes SWEEP/cells/<cell>/ folders the sweep's last report (sweep.json) does not reference
    with their key: cells of an earlier grid, or a cell whose inputs changed since. Returns
    ([(folder, bytes)] removed, [(folder, bytes)] kept)."""
    import shutil

    output = Path(output)
    try:
        summary = json.loads((output / "sweep.json").read_text())
        referenced = {c["folder"]: c["key"] for c in summary["cells"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise PipelineInputError(f"{output} holds no readable sweep.json: pass the --output folder "
                                 "of a finished pipeline.sweep") from None
    removed, kept = [], []
    for folder in sorted(p for p in (output / "cells").glob("*") if p.is_dir()):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        try:
            key = json.loads((folder / "cell.json").read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            key = None
        if key is not None and referenced.get(f"cells/{folder.name}") == key:
            kept.append((folder, size))
            continue
        removed.append((folder, size))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return removed, kept


# --- Running a cell (on a Ray worker) --------------------------------------------------------------

def export_cell(flags, command, export_to_memory):
    """Runs the export that `flags` ((flag, value as typed) pairs) describe, with
    `export_to_memory` (pipeline.api.export_to_memory: the API's export into a private folder,
    its files returned as bytes); returns those files and the log, or the one error line for bad
    input. Run as a Ray task in a worker process of its own (a fresh TensorFlow for every cell).
    Raises CellCrashed when the export ended any other way (Ray runs it again)."""
    import contextlib

    from pipeline.core.options import Settings

    log = io.StringIO()
    try:
        values = {name: export_option(name).parse(text) for name, text in flags}
        settings = Settings(export.OPTIONS, values, given=values)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            made = export_to_memory(settings, command=command)
    except PipelineInputError as error:
        return {"error": str(error), "log": log.getvalue() + f"error: {error}\n", "exit_code": 2}
    except Exception as error:  # a crash, not bad input: worth another try
        raise CellCrashed(f"the export raised {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200] if str(error) else ''}") from error
    return {"files": made.files, "log": log.getvalue(), "exit_code": 0 if made.passed else 1}


def time_models(models, threads, runs):
    """The latency phase: every model ({name: bytes}) timed interleaved in one run, on this machine."""
    from pipeline.stages import benchmark

    with tempfile.TemporaryDirectory(prefix="sweep-latency-") as folder:
        return benchmark.host_benchmark(_model_files(folder, models), threads=threads, runs=runs)


def _model_files(folder, models):
    """Writes {name: bytes} as folder/<name>.tflite (the names the timings are reported under)."""
    paths = [os.path.join(folder, name + ".tflite") for name in models]
    for path, data in zip(paths, models.values()):
        Path(path).write_bytes(data)
    return paths


def _device_latency(cfg, models):
    from pipeline.device import remote

    target = remote.parse_target(cfg.target, cfg.ssh_options, cfg.remote_python)
    with tempfile.TemporaryDirectory(prefix="sweep-latency-") as folder:
        return remote.remote_benchmark(target, _model_files(folder, models), cfg.latency_threads,
                                       cfg.latency_runs)


# --- The driver -----------------------------------------------------------------------------------

def _start_ray(cfg):
    import logging

    import ray

    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False,
             "configure_logging": True}
    if cfg.ray_address:
        from pipeline.device.runner import quiet_native_stderr

        package = str(Path(__file__).resolve().parents[1])
        try:
            # Ray's C++ client logs every failed attempt to fd 2; the one line below says it all.
            with quiet_native_stderr():
                ray.init(address=cfg.ray_address, runtime_env={"py_modules": [package]}, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise PipelineInputError(
                f"--ray-address {cfg.ray_address}: cannot connect "
                f"({str(error).splitlines()[0][:160]}): start the cluster with `ray start --head`; "
                "a cluster with token authentication (ray start's default when a token exists) "
                "also needs RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token or "
                "RAY_AUTH_TOKEN") from None
        if not ray.cluster_resources().get(LATENCY_RESOURCE):
            ray.shutdown()
            raise PipelineInputError(
                f"no node of the Ray cluster at {cfg.ray_address} offers the {LATENCY_RESOURCE!r} "
                "resource the latency phase runs on: start the machine that should time with "
                f"`ray start … --resources '{{\"{LATENCY_RESOURCE}\": 1}}'`")
        # A task asking more CPUs than any node has waits forever; say so instead.
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        if largest < cfg.cpus_per_cell:
            ray.shutdown()
            raise PipelineInputError(
                f"--cpus-per-cell {cfg.cpus_per_cell}: no node of the Ray cluster at "
                f"{cfg.ray_address} has that many CPUs (the largest has {largest:g}): pass "
                f"--cpus-per-cell {max(1, int(largest))} or fewer")
    else:
        # address="local": a new Ray of our own, even when `ray start` runs one on this machine.
        ray.init(address="local", num_cpus=cfg.workers * cfg.cpus_per_cell,
                 resources={LATENCY_RESOURCE: 1}, **quiet)
    return ray


def run_sweep(cfg, cells, export_to_memory, progress=print):
    """Runs the cells (with keys, `with_keys`) not already in cfg.output, each through
    `export_to_memory` (pipeline.api's) in a Ray task, then times them all; returns ([CellResult]
    in grid order, the latency run, {phase: seconds}). Stores each cell as it finishes."""
    results = {}
    for cell in cells:
        found = finished(cfg.output, cell)
        if found:
            stored, report = found
            results[cell.name] = CellResult(cell, "reused", report, exit_code=stored.get("exit_code"))
    todo = [c for c in cells if c.name not in results]
    timings = {}
    started = time.perf_counter()
    ray = _start_ray(cfg) if todo or not cfg.target else None
    timings["ray_start"] = time.perf_counter() - started
    at_once = f"{cfg.workers} at a time" if cfg.workers else "as many at a time as its CPUs hold"
    progress(f"· {len(cells)} cells ({len(cells) - len(todo)} already finished), {at_once}, "
             f"{cfg.cpus_per_cell} CPU{'s' if cfg.cpus_per_cell > 1 else ''} each, "
             + (f"on the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "on a local Ray"))
    try:
        started = time.perf_counter()
        if todo:
            _run_cells(ray, cfg, todo, results, progress, export_to_memory)
        timings["accuracy"] = time.perf_counter() - started
        models = {r.cell.name: (Path(cfg.output) / r.folder / "model.tflite").read_bytes()
                  for r in (results[c.name] for c in cells) if r.state != "failed"}
        started = time.perf_counter()
        latency = _latency_phase(ray, cfg, models, progress) if models else None
        timings["latency"] = time.perf_counter() - started
    finally:
        if ray is not None:
            ray.shutdown()
    ordered = [results[c.name] for c in cells]
    if latency:
        for row in latency["latency"]:
            name = row.get("name", row["model"]).removesuffix(".tflite")
            results[name].latency = results[name].latency or {}
            results[name].latency[str(row["threads"])] = {"median": round(row["median_ms"], 3),
                                                         "p90": round(row["p90_ms"], 3)}
    return ordered, latency, {k: round(v, 2) for k, v in timings.items()}


def _run_cells(ray, cfg, todo, results, progress, export_to_memory):
    from tqdm import tqdm

    # max_calls=1: each cell in a worker process of its own, as a command-line export would be.
    task = ray.remote(max_calls=1)(export_cell).options(
        num_cpus=cfg.cpus_per_cell, max_retries=cfg.retries, retry_exceptions=[CellCrashed])
    threads = () if any(f == "threads" for c in todo for f, _ in c.flags) else (
        ("threads", str(cfg.cpus_per_cell)),)
    waiting = run_order(todo)
    pending = {}

    def submit():  # at most --workers in flight (a local Ray's CPUs cap it already)
        while waiting and (not cfg.workers or len(pending) < cfg.workers):
            cell = waiting.pop(0)
            pending[task.remote(cell.resolved() + threads, cell.command(f"cells/{cell.name}"),
                                export_to_memory)] = cell

    submit()
    with tqdm(total=len(todo), desc="cells", unit="cell", leave=False) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayError as error:
                cause = getattr(error, "cause", None)
                line = str(cause) if isinstance(cause, CellCrashed) else str(error).splitlines()[-1]
                outcome = {"error": line, "log": str(error), "exit_code": None}
            results[cell.name] = _store(cfg.output, cell, outcome)
            bar.update()
            result = results[cell.name]
            mark = "✗" if result.state == "failed" else "✓"
            bar.write(f"{mark} {cell.name}: " + (result.error if result.state == "failed" else
                                                   _summary(result.report)))
            submit()


def _store(output, cell, outcome):
    if "files" not in outcome:
        artifacts.write_files_atomically(Path(output) / "logs", {f"{cell.name}.log": outcome["log"]})
        return CellResult(cell, "failed", error=outcome["error"], exit_code=outcome["exit_code"])
    record = {"key": cell.key, "flags": dict(cell.flags), "axes": list(cell.axes),
              "exit_code": outcome["exit_code"], "command": cell.command(f"cells/{cell.name}")}
    files = dict(outcome["files"], **{"cell.json": json.dumps(record, indent=2) + "\n",
                                      "export.log": outcome["log"]})
    artifacts.write_files_atomically(Path(output) / "cells" / cell.name, files)
    report = json.loads(outcome["files"]["report.json"])
    return CellResult(cell, "exported", report, exit_code=outcome["exit_code"])


def _latency_phase(ray, cfg, models, progress):
    progress(f"· latency: {len(models)} models, interleaved, "
             f"{'on ' + cfg.target if cfg.target else 'one machine, nothing else running'}…")
    if cfg.target:
        result = _device_latency(cfg, models)
        result["where"] = cfg.target
        return result
    task = ray.remote(time_models).options(num_cpus=1, resources={LATENCY_RESOURCE: 1},
                                           max_retries=cfg.retries)
    result = ray.get(task.remote(models, tuple(cfg.latency_threads), cfg.latency_runs))
    result["where"] = "ray node with the tflite_latency resource" if cfg.ray_address else "this machine"
    return result


def _summary(report):
    if report is None:
        return ""
    metric = report["tflite"].get("top1")
    return (f"agreement {report['agreement_top1']:.2%}"
            + (f", top-1 {metric:.2%}" if metric is not None else "")
            + f", {report['size_bytes'] / 1e6:.2f} MB")


# --- Command line ---------------------------------------------------------------------------------

OWN_OPTIONS = (
    option("string", "output", None,
           "The sweep folder: cells/<cell>/ (each an export's folder), sweep.json, sweep.md, "
           "sweep.csv, pareto.png."),
    option("integer", "workers", None,
           "Cells exported at once (default: one per core, at most the number of cells; on a "
           "cluster, as many as its CPUs hold)."),
    option("integer", "cpus-per-cell", None,
           "CPUs each cell's export gets (its --threads, and the Ray task's num_cpus; default: "
           "cores / workers, on a cluster 1)."),
    option("string", "ray-address", None,
           "auto or HOST:PORT: run on this Ray cluster instead of a local one (the node that times"
           " latency offers the tflite_latency resource)."),
    option("string", "target", None,
           "Time the latency phase on this device: ssh://user@host[:port]."),
    option("multi_string", "ssh-option", [], "Extra ssh -o option for --target (repeatable)."),
    option("string", "remote-python", "python3", "Python on the --target device."),
    option("integer", "latency-runs", 50, "Timed invokes per model in the latency phase."),
    option("list", "latency-threads", ["1"],
           "Thread counts the latency phase times (1 is always timed)."),
    option("integer", "retries", 2,
           "Times Ray runs a cell again after its worker died or its export crashed."),
)


def config_from_settings(settings, cells):
    """SweepConfig from the sweep's own settings (OWN_OPTIONS), checked against the grid."""
    output = settings["output"]
    if not output:
        raise PipelineInputError("--output SWEEP/ is required: the folder the cells and the sweep "
                                 "report go to")
    artifacts.check_writable(output)
    cores = os.cpu_count() or 1
    on_cluster = bool(settings["ray-address"])
    workers = settings["workers"]
    if workers is None and not on_cluster:  # on a cluster: as many as its CPUs hold
        workers = max(1, min(cores, len(cells)))
    if workers is not None and workers < 1:
        raise PipelineInputError(f"--workers must be at least 1 (got {workers})")
    cpus = settings["cpus-per-cell"]
    if cpus is None:
        # One CPU a cell is the better use of a core (benchmarks/sweep_speed.py: 2 cells at 1 CPU
        # beat 1 at 2 by 1.78x); this machine's cores say nothing about a cluster's nodes.
        cpus = 1 if on_cluster else max(1, cores // workers)
    if cpus < 1:
        raise PipelineInputError(f"--cpus-per-cell must be at least 1 (got {cpus})")
    try:
        threads = tuple(sorted({1} | {int(t) for t in settings["latency-threads"]}))
    except ValueError:
        raise PipelineInputError("--latency-threads takes counts like 1,2,4") from None
    if min(threads) < 1 or settings["latency-runs"] < 1 or settings["retries"] < 0:
        raise PipelineInputError("--latency-threads and --latency-runs must be at least 1, "
                                 "--retries at least 0")
    if settings["target"]:
        from pipeline.device import remote

        target = remote.parse_target(settings["target"], settings["ssh-option"],
                                     settings["remote-python"])
        # Refused before any cell runs, not after the exports.
        if isinstance(target, remote.AdbTarget):
            raise PipelineInputError("pipeline.sweep --target adb is not supported: time the chosen "
                                     "cells with pipeline.benchmark --target adb --benchmark-binary …")
    return SweepConfig(output=output, workers=workers, cpus_per_cell=cpus,
                       ray_address=settings["ray-address"], target=settings["target"],
                       ssh_options=tuple(settings["ssh-option"]),
                       remote_python=settings["remote-python"],
                       latency_runs=settings["latency-runs"], latency_threads=threads,
                       retries=settings["retries"])


# The sweep's --output is the sweep folder, so its own options come first; every other export
# setting may be given once or as an axis.
OPTIONS = merge(OWN_OPTIONS, [o for o in export.OPTIONS if o.name not in REFUSED])


def as_typed(item, value):
    """A setting's value as the command line would type it (what a cell's flags hold)."""
    if item.kind == "bool":
        return "true" if value else "false"
    if item.kind in ("list", "multi_string"):
        return ",".join(map(str, value))
    return str(value)


@dataclasses.dataclass
class SweepRun:
    """What a sweep exported, reused, timed and wrote."""

    output: str
    results: list  # [CellResult] in grid order
    frontier: list  # the CellResults on the Pareto frontier
    summary: dict  # sweep.json's content

    @property
    def failed(self):
        return [r for r in self.results if r.state == "failed"]

    @property
    def passed(self):
        """Every cell finished and met its parity thresholds (the command's exit 0)."""
        return not any(r.state == "failed" or r.exit_code == 1 for r in self.results)

    @property
    def summary_line(self):
        return (f"{self.output}/sweep.md: {len(self.results)} cells "
                f"({sum(r.state == 'reused' for r in self.results)} reused, {len(self.failed)} "
                "failed); frontier: " + ", ".join(r.cell.name for r in self.frontier))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: how many cells are finished and kept."""

    def __init__(self, kept, total, output):
        super().__init__(f"{kept} of {total} cells kept")
        self.kept, self.total, self.output = kept, total, output


def prepare(settings, export_args):
    """(SweepConfig, [Cell] with keys) of the sweep's settings and export flags
    [(flag, value as typed, a comma list for an axis)]."""
    cells = grid(export_args)
    cfg = config_from_settings(settings, cells)
    return cfg, with_keys(cells, digest_store(dict(export_args)))


def digest_store(values):
    """The cache the inputs' digests are looked up in: the cells' own (--cache-dir, --no-cache,
    as typed), else the default one."""
    from pipeline.core.options import Settings

    given = {name: EXPORT_OPTIONS[name].parse(values[name]) for name in ("cache-dir", "no-cache")
             if name in values and len(alternatives(name, values[name])) == 1}
    return cache.from_settings(Settings(cache.OPTIONS, given, given=given))


def run(cfg, cells, command, export_to_memory, progress=print):
    """Runs the cells through `export_to_memory` (pipeline.api.export_to_memory), times them,
    writes the sweep report; returns a SweepRun. Ctrl-C raises Interrupted, every finished cell
    kept."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise PipelineInputError("pipeline.sweep needs Ray: pip install 'ray>=2.50'") from None
    try:
        results, latency, timings = run_sweep(cfg, cells, export_to_memory, progress=progress)
    except KeyboardInterrupt:
        kept = sum(finished(cfg.output, c) is not None for c in cells)
        raise Interrupted(kept, len(cells), cfg.output) from None
    summary, frontier = write_sweep(cfg, results, latency, command, timings)
    return SweepRun(cfg.output, results, frontier, summary)


def sweep(settings, axes, export_to_memory):
    """The API's sweep: `settings` (OPTIONS: the sweep's own and every export setting that is the
    same in every cell) and `axes` ({export setting: [values]}, dashes or underscores), each cell
    through `export_to_memory` → SweepRun."""
    import sys

    by_name = {o.name: o for o in OPTIONS}
    own = {o.name for o in OWN_OPTIONS}
    export_args = [(name, as_typed(by_name[name], value)) for name, value in settings.explicit().items()
                   if name not in own]
    choices = [(name, [as_typed(by_name[name], value)]) for name, value in export_args]
    for key, values in axes.items():
        name = key.replace("_", "-")
        if name not in by_name or name in own:
            raise PipelineInputError(f"sweep axis {key!r} is not an export setting")
        values = [as_typed(by_name[name], by_name[name].check(v)) for v in values]
        if not values or len(set(values)) != len(values):
            raise PipelineInputError(f"sweep axis {key!r} needs distinct values, at least one")
        choices = [(n, v) for n, v in choices if n != name] + [(name, values)]
    cells = grid_of(choices)
    cfg = config_from_settings(settings, cells)
    store = digest_store(dict(export_args))
    command = settings.command_line("python -m pipeline.sweep") + "".join(
        f" --{name} {shlex.quote((';' if ',' in ''.join(v) else ',').join(v))}"
        for name, v in choices if len(v) > 1)
    return run(cfg, with_keys(cells, store), command, export_to_memory,
               lambda line: print(line, file=sys.stderr))
