"""Choose the variant that fits the budget: a grid of exports on Ray, and its Pareto frontier.

    python -m pipeline.sweep --alpha 0.35,0.5,0.75,1.0 --resolution 96,128,160,224 \\
        --quantize int8,float16,none --calibration DIR --eval DIR --output SWEEP/ [--workers N]

Every export flag may be given once (all cells get it) or as a comma list of values: one axis of
the grid. A flag whose single value is itself a comma list (--keep-float, list flags) separates its
alternatives with ';' instead. Each cell is an ordinary `python -m pipeline.export` with its flags
(the same stages, report and one-line errors), run in a Ray task, stored in SWEEP/cells/<cell>/.

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
after every accuracy trial on an otherwise idle machine, and the trial is a subprocess whose result
is a folder, not a metric stream. Ray's own retries (max_retries), resources and scheduling do the
rest.
"""

import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from pipeline import artifacts, cache
from pipeline.errors import PipelineInputError

FLAGS = flags.FLAGS

LATENCY_RESOURCE = "tflite_latency"
SWEEP_FLAGS = ("output", "workers", "cpus-per-cell", "ray-address", "target", "ssh-option",
               "remote-python", "latency-runs", "latency-threads", "retries")
ABSL_FLAGS = ("help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok")
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

    def argv(self):
        """The export's flags, with the paths that exist here made absolute (a Ray worker does
        not run in this folder)."""
        return [f"--{flag}={_absolute(value) if flag in PATH_FLAGS else value}"
                for flag, value in self.flags]

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

def split_argv(argv):
    """(the sweep's own argv for absl, [(export flag, raw value)]); raises PipelineInputError for a
    flag no export or sweep knows."""
    own, export_args = [argv[0]], []
    index = 1
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("-") or token in ("-", "--"):
            raise PipelineInputError(f"unexpected argument {token!r}: all inputs of pipeline.sweep "
                                     "are --flags (see --help)")
        name, has_value, value = token.lstrip("-").partition("=")
        base = name[2:] if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS else name
        if base not in FLAGS:
            raise PipelineInputError(f"unknown flag --{name}: pass pipeline.sweep's flags or "
                                     "pipeline.export's (see --help)")
        boolean = FLAGS[base].boolean
        if base in SWEEP_FLAGS or base in ABSL_FLAGS:
            own.append(token)
            if not has_value and not boolean and index < len(argv):
                own.append(argv[index])
                index += 1
            continue
        if base in REFUSED:
            raise PipelineInputError(f"--{base} is not a cell flag: {REFUSED[base]}")
        if boolean and not has_value:
            value = "false" if base != name else "true"
        elif not has_value:
            if index >= len(argv):
                raise PipelineInputError(f"--{name} needs a value")
            value = argv[index]
            index += 1
        export_args.append((base, value))
    return own, export_args


def alternatives(flag, value):
    """The values of one axis: `value` split on ',' (on ';' for list-valued flags, and whenever it
    holds a ';'). Empty alternatives are refused: `--quantize int8,` is a typo, not a cell."""
    list_valued = flag in LIST_VALUED or FLAGS[flag].flag_type() in ("list", "multi string")
    separator = ";" if list_valued or ";" in value else ","
    values = [v.strip() for v in value.split(separator)]
    if any(not v for v in values):
        raise PipelineInputError(f"--{flag} {value!r} has an empty value: separate the values of "
                                 f"an axis with '{separator}', no trailing one")
    if len(set(values)) != len(values):
        raise PipelineInputError(f"--{flag} {value!r} names a value twice")
    return values


def grid(export_args):
    """Every combination of the axes' values, the first flag varying slowest, as [Cell]."""
    names = []
    choices = {}
    for flag, value in export_args:
        if flag in choices:
            raise PipelineInputError(f"--{flag} is given twice: give its values once, comma-separated")
        names.append(flag)
        choices[flag] = alternatives(flag, value)
    axes = tuple(n for n in names if len(choices[n]) > 1)
    return [Cell(tuple(zip(names, combo)), axes)
            for combo in itertools.product(*(choices[n] for n in names))]


# --- What determines a cell -----------------------------------------------------------------------

def source_digest():
    """sha256 of the source a cell's export runs (this package but this module, which only
    schedules): a changed pipeline makes new cells, never stale ones."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _tree_digest(paths):
    # One root's files, by relative path and content (`paths[0]` is the root).
    root, files = Path(paths[0]), paths[1:]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, root).encode() + b"\0"
                          + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def input_digest(path, store):
    """The content digest of a file or folder a flag names ("absent:PATH" if there is none: the
    cell's export then says what is wrong)."""
    path = Path(path).expanduser()
    if path.is_file():
        return cache.files_digest(store, [str(path.parent), str(path)], _tree_digest)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file())
        return cache.files_digest(store, [str(path)] + files, _tree_digest)
    return f"absent:{path}"


def _keras_weights(values):
    # `--weights imagenet`: the file Keras' cache holds for this width and resolution.
    from pipeline.build import IMAGENET_RESOLUTIONS

    alpha = values.get("alpha", FLAGS["alpha"].default)
    resolution = values.get("resolution", FLAGS["resolution"].default)
    try:
        alpha, resolution = float(alpha), int(resolution)
    except ValueError:
        return "unparsed"
    rows = resolution if resolution in IMAGENET_RESOLUTIONS else 224
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}.h5"


def _absolute(value):
    path = os.path.expanduser(value)
    return os.path.abspath(path) if os.path.exists(path) else value


def _slug(value):
    text = Path(value).stem if os.sep in value else value
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:24]


def _is_default(flag, value):
    parsed = copy.deepcopy(FLAGS[flag])
    try:
        parsed.parse(value)
    except (flags.Error, ValueError):
        return False
    return parsed.value == FLAGS[flag].default


def cell_key(cell, store, versions):
    """sha256 of what the cell's export depends on. Flags at their default value are dropped
    (`--quantize int8` and no --quantize are one cell), and NOT_IN_KEY; inputs count by content,
    not by path."""
    values = dict(cell.flags)
    parts = {}
    for flag in sorted(FLAGS[f].name for f in (set(INPUT_FLAGS) | set(values)) - set(NOT_IN_KEY)):
        value = values.get(flag, FLAGS[flag].default)
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
    from pipeline.report import versions

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


# --- Running a cell (on a Ray worker) --------------------------------------------------------------

def _die_with_parent():
    # The export must not outlive a killed Ray worker: PR_SET_PDEATHSIG, Linux's own mechanism.
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def error_line(text):
    """The export's one-line error (its last 'error: …' line), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors[-1][len("error: "):] if errors else lines[-1] if lines else "no output")


def export_cell(argv, env=None):
    """Runs `python -m pipeline.export ARGV` into a private folder; returns its files and log, or
    its error line for bad input. Raises CellCrashed when it ended any other way."""
    package_root = str(Path(__file__).resolve().parents[1])
    environment = dict(os.environ, **(env or {}))
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="sweep-cell-") as folder:
        out = os.path.join(folder, "out")
        completed = subprocess.run([sys.executable, "-m", "pipeline.export", *argv, f"--output={out}"],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   env=environment, preexec_fn=_die_with_parent)
        log = completed.stdout + completed.stderr
        if completed.returncode in (0, 1) and os.path.isfile(os.path.join(out, "report.json")):
            files = {str(p.relative_to(out)): p.read_bytes()
                     for p in sorted(Path(out).rglob("*")) if p.is_file()}
            return {"files": files, "log": log, "exit_code": completed.returncode}
        if completed.returncode == 2:
            return {"error": error_line(log), "log": log, "exit_code": 2}
        raise CellCrashed(f"export ended with exit code {completed.returncode}: {error_line(log)}")


def time_models(models, threads, runs):
    """The latency phase: every model ({name: bytes}) timed interleaved in one run, on this machine."""
    from pipeline import benchmark

    with tempfile.TemporaryDirectory(prefix="sweep-latency-") as folder:
        return benchmark.host_benchmark(_model_files(folder, models), threads=threads, runs=runs)


def _model_files(folder, models):
    """Writes {name: bytes} as folder/<name>.tflite (the names the timings are reported under)."""
    paths = [os.path.join(folder, name + ".tflite") for name in models]
    for path, data in zip(paths, models.values()):
        Path(path).write_bytes(data)
    return paths


def _device_latency(cfg, models):
    from pipeline import remote

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
        from pipeline.device_runner import quiet_native_stderr

        package = str(Path(__file__).resolve().parent)
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


def run_sweep(cfg, cells, progress=print):
    """Runs the cells (with keys, `with_keys`) not already in cfg.output, then times them all;
    returns ([CellResult] in grid order, the latency run, {phase: seconds}). Stores each cell as it
    finishes."""
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
            _run_cells(ray, cfg, todo, results, progress)
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


def _run_cells(ray, cfg, todo, results, progress):
    from tqdm import tqdm

    task = ray.remote(export_cell).options(
        num_cpus=cfg.cpus_per_cell, max_retries=cfg.retries, retry_exceptions=[CellCrashed])
    threads = [] if any(f == "threads" for c in todo for f, _ in c.flags) else [
        f"--threads={cfg.cpus_per_cell}"]
    waiting = run_order(todo)
    pending = {}

    def submit():  # at most --workers in flight (a local Ray's CPUs cap it already)
        while waiting and (not cfg.workers or len(pending) < cfg.workers):
            cell = waiting.pop(0)
            pending[task.remote(cell.argv() + threads)] = cell

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


# --- The sweep report -----------------------------------------------------------------------------

def accuracy_metric(results):
    """("top1", …) when every finished cell has labelled top-1, else agreement with its float model."""
    done = [r for r in results if r.report]
    if done and all(r.report["tflite"].get("top1") is not None for r in done):
        return "top1", "top-1 accuracy (eval labels)"
    return "agreement_top1", "top-1 agreement with the cell's float model"


def metric_of(result, metric):
    return result.report["tflite"]["top1"] if metric == "top1" else result.report["agreement_top1"]


def pareto_frontier(results, metric):
    """The cells no other cell beats on both latency (1 thread) and the metric, fastest first."""
    timed = sorted((r for r in results if r.report and r.latency),
                   key=lambda r: (r.latency["1"]["median"], -metric_of(r, metric)))
    frontier, best = [], float("-inf")
    for result in timed:
        if metric_of(result, metric) > best:
            frontier.append(result)
            best = metric_of(result, metric)
    return frontier


def rows(results, metric):
    out = []
    for r in results:
        row = {"cell": r.cell.name, "state": r.state, **dict(r.cell.flags)}
        if r.report:
            row.update({
                "float_top1": r.report["float"].get("top1"), "tflite_top1": r.report["tflite"].get("top1"),
                "agreement_top1": r.report["agreement_top1"], "kl_mean": r.report["kl_mean"],
                "size_bytes": r.report["size_bytes"], "macs": r.report.get("macs"),
                "parity_passed": r.exit_code == 0,
                "latency_1t_ms": (r.latency or {}).get("1", {}).get("median"),
                "tflite_sha256": r.report["sha256"].get("model"),
            })
        row["error"] = r.error
        out.append(row)
    return out


def render_csv(table):
    columns = list(dict.fromkeys(k for row in table for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def _pct(value):
    return "—" if value is None else f"{value:.2%}"


def render_markdown(results, metric, frontier, latency, machine_line):
    _, metric_name = accuracy_metric(results)
    names = {r.cell.name for r in frontier}
    lines = ["# Sweep", "", f"{len(results)} cells: "
             + ", ".join(f"{sum(r.state == s for r in results)} {s}" for s in ("exported", "reused", "failed")),
             ""]
    if latency:
        lines += [f"Latency: 1-thread median of {latency['latency'][0]['runs'] if latency['latency'] else 0} "
                  f"invokes per model, all models interleaved in one run ({latency['where']}); "
                  f"{machine_line}. Milliseconds hold for this machine and this run; the ratios "
                  "(× fastest) are what carries to another machine of the same class.", ""]
    lines += ["| cell | float top-1 | tflite top-1 | agreement | KL | size MB | 1-thread ms | "
              "× fastest | frontier |", "|---|---|---|---|---|---|---|---|---|"]
    fastest = min((r.latency["1"]["median"] for r in results if r.latency), default=None)
    for r in results:
        if not r.report:
            lines.append(f"| {r.cell.name} | ✗ failed | | | | | | | |")
            continue
        ms = (r.latency or {}).get("1", {}).get("median")
        lines.append(f"| {r.cell.name} | {_pct(r.report['float'].get('top1'))} | "
                     f"{_pct(r.report['tflite'].get('top1'))} | {r.report['agreement_top1']:.2%} | "
                     f"{r.report['kl_mean']:.5f} | {r.report['size_bytes'] / 1e6:.2f} | "
                     f"{'—' if ms is None else f'{ms:.3f}'} | "
                     f"{'—' if ms is None else f'{ms / fastest:.2f}'} | {'★' if r.cell.name in names else ''} |")
    lines += ["", f"## Frontier ({metric_name} against 1-thread latency)", "",
              "Each is the fastest cell at its accuracy; every other cell is slower and no more "
              "accurate than one of them. To make one on its own:", ""]
    for r in frontier:
        lines += [f"- {r.cell.name} ({metric_of(r, metric):.2%}, {r.latency['1']['median']:.3f} ms, "
                  f"{r.report['size_bytes'] / 1e6:.2f} MB):", "",
                  "  ```", "  " + r.cell.command(f"artifacts/{r.cell.label}"), "  ```", ""]
    failed = [r for r in results if r.state == "failed"]
    if failed:
        lines += ["## Failed cells", ""]
        lines += [f"- ✗ {r.cell.name}: {r.error} (log: logs/{r.cell.name}.log)" for r in failed]
        lines.append("")
    below = [r for r in results if r.report and r.exit_code == 1]
    if below:
        lines += ["## Cells below their parity thresholds", ""]
        lines += [f"- {r.cell.name}: see {r.folder}/report.md" for r in below]
        lines.append("")
    return "\n".join(lines)


def pareto_plot(results, metric, frontier, title):
    """pareto.png: the metric against 1-thread latency, marker area ∝ size, the frontier labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, metric_name = accuracy_metric(results)
    timed = [r for r in results if r.report and r.latency]
    figure, axis = plt.subplots(figsize=(8, 5.5), dpi=110)
    groups = {}
    for r in timed:
        groups.setdefault(dict(r.cell.flags).get("quantize", "int8"), []).append(r)
    biggest = max((r.report["size_bytes"] for r in timed), default=1)
    for (group, members), marker in zip(sorted(groups.items()), "os^Dvp*"):
        axis.scatter([r.latency["1"]["median"] for r in members], [metric_of(r, metric) for r in members],
                     s=[30 + 400 * r.report["size_bytes"] / biggest for r in members], marker=marker,
                     alpha=0.6, label=f"--quantize {group}")
    axis.plot([r.latency["1"]["median"] for r in frontier], [metric_of(r, metric) for r in frontier],
              "k--", drawstyle="steps-post", linewidth=1, label="Pareto frontier")
    for r in frontier:
        axis.annotate(r.cell.label, (r.latency["1"]["median"], metric_of(r, metric)),
                      textcoords="offset points", xytext=(6, -10), fontsize=8)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.tick_params(axis="x", which="minor", labelsize=7)
    axis.set_xlabel("1-thread median latency (ms, log scale)")
    axis.set_ylabel(metric_name)
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.set_title(title + "\n(marker area ∝ model size)", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_sweep(cfg, results, latency, argv, timings=None):
    from pipeline.report import machine_line

    metric, metric_name = accuracy_metric(results)
    frontier = pareto_frontier(results, metric)
    machine = (latency or {}).get("device") or {}
    where = machine_line(machine) if machine else "no latency measured"
    short = (f"{machine.get('cpu_model') or machine.get('machine')}, {machine.get('cpu_count')} cores, "
             f"{machine.get('machine_class')}") if machine else "no latency measured"
    table = rows(results, metric)
    summary = {
        "command": shlex.join(["python", "-m", "pipeline.sweep", *argv[1:]]),
        "config": {**dataclasses.asdict(cfg), "latency_threads": list(cfg.latency_threads)},
        "metric": metric,
        "cells": [{**row, "folder": f"cells/{row['cell']}", "key": r.cell.key, "latency_ms": r.latency,
                   "export_command": r.cell.command(f"artifacts/{r.cell.label}")}
                  for row, r in zip(table, results)],
        "frontier": [r.cell.name for r in frontier],
        "timings_s": timings or {},
        "latency": None if not latency else {"where": latency["where"], "device": machine,
                                             "runtime": latency.get("runtime"),
                                             "runs": latency["latency"][0]["runs"] if latency["latency"] else 0},
    }
    files = {"sweep.json": json.dumps(summary, indent=2) + "\n",
             "sweep.csv": render_csv(table),
             "sweep.md": render_markdown(results, metric, frontier, latency, where) + "\n"}
    if frontier:
        files["pareto.png"] = pareto_plot(results, metric, frontier, f"{len(results)}-cell sweep, latency on {short}")
    artifacts.write_files_atomically(cfg.output, files)
    return summary, frontier


# --- Command line ---------------------------------------------------------------------------------

def define_flags():
    from pipeline.cli import define

    define("string", "output", None, "The sweep folder: cells/<cell>/ (each an export's folder), "
           "sweep.json, sweep.md, sweep.csv, pareto.png.")
    define("integer", "workers", None, "Cells exported at once (default: one per core, at most the "
           "number of cells; on a cluster, as many as its CPUs hold).")
    define("integer", "cpus-per-cell", None, "CPUs each cell's export gets (its --threads, and the "
           "Ray task's num_cpus; default: cores / workers, on a cluster 1).")
    define("string", "ray-address", None, "auto or HOST:PORT: run on this Ray cluster instead of a "
           "local one (the node that times latency offers the tflite_latency resource).")
    define("string", "target", None, "Time the latency phase on this device: ssh://user@host[:port].")
    define("multi_string", "ssh-option", [], "Extra ssh -o option for --target (repeatable).")
    define("string", "remote-python", "python3", "Python on the --target device.")
    define("integer", "latency-runs", 50, "Timed invokes per model in the latency phase.")
    define("list", "latency-threads", ["1"], "Thread counts the latency phase times (1 is always timed).")
    define("integer", "retries", 2, "Times Ray runs a cell again after its worker died or its export "
           "crashed.")


def config_from_flags(values, cells):
    output = values["output"].value
    if not output:
        raise PipelineInputError("--output SWEEP/ is required: the folder the cells and the sweep "
                                 "report go to")
    artifacts.check_writable(output)
    cores = os.cpu_count() or 1
    on_cluster = bool(values["ray-address"].value)
    workers = values["workers"].value
    if workers is None and not on_cluster:  # on a cluster: as many as its CPUs hold
        workers = max(1, min(cores, len(cells)))
    if workers is not None and workers < 1:
        raise PipelineInputError(f"--workers must be at least 1 (got {workers})")
    cpus = values["cpus-per-cell"].value
    if cpus is None:
        # One CPU a cell is the better use of a core (benchmarks/sweep_speed.py: 2 cells at 1 CPU
        # beat 1 at 2 by 1.78x); this machine's cores say nothing about a cluster's nodes.
        cpus = 1 if on_cluster else max(1, cores // workers)
    if cpus < 1:
        raise PipelineInputError(f"--cpus-per-cell must be at least 1 (got {cpus})")
    try:
        threads = tuple(sorted({1} | {int(t) for t in values["latency-threads"].value}))
    except ValueError:
        raise PipelineInputError("--latency-threads takes counts like 1,2,4") from None
    if min(threads) < 1 or values["latency-runs"].value < 1 or values["retries"].value < 0:
        raise PipelineInputError("--latency-threads and --latency-runs must be at least 1, "
                                 "--retries at least 0")
    if values["target"].value:
        from pipeline import remote

        target = remote.parse_target(values["target"].value, values["ssh-option"].value,
                                     values["remote-python"].value)
        # Refused before any cell runs, not after the exports.
        if isinstance(target, remote.AdbTarget):
            raise PipelineInputError("pipeline.sweep --target adb is not supported: time the chosen "
                                     "cells with pipeline.benchmark --target adb --benchmark-binary …")
    return SweepConfig(output=output, workers=workers, cpus_per_cell=cpus,
                       ray_address=values["ray-address"].value, target=values["target"].value,
                       ssh_options=tuple(values["ssh-option"].value),
                       remote_python=values["remote-python"].value,
                       latency_runs=values["latency-runs"].value, latency_threads=threads,
                       retries=values["retries"].value)


_EXPORT_ARGS = []


def _parse_flags(argv):
    from pipeline.cli import _parse_flags as parse_own

    try:
        own, export_args = split_argv(argv)
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    _EXPORT_ARGS[:] = export_args
    return parse_own(own)


def main(argv):
    try:
        import ray  # noqa: F401
    except ImportError:
        raise PipelineInputError("pipeline.sweep needs Ray: pip install 'ray>=2.50'") from None
    cells = grid(_EXPORT_ARGS)
    cfg = config_from_flags(FLAGS, cells)
    store = cache.from_flags(FLAGS) if any(f in ("cache-dir", "no-cache") for f, _ in _EXPORT_ARGS) \
        else cache.Cache(cache.default_dir())
    cells = with_keys(cells, store)
    try:
        results, latency, timings = run_sweep(cfg, cells, progress=lambda line: print(line, file=sys.stderr,
                                                                            flush=True))
    except KeyboardInterrupt:
        kept = sum(finished(cfg.output, c) is not None for c in cells)
        print(f"interrupted: {kept} of {len(cells)} cells are finished and kept in "
              f"{cfg.output}/cells; run the same command to go on", file=sys.stderr)
        sys.exit(130)
    summary, frontier = write_sweep(cfg, results, latency, sys.argv, timings)
    for r in results:
        if r.state == "failed":
            print(f"✗ {r.cell.name}: {r.error}")
    print(f"{cfg.output}/sweep.md: {len(results)} cells "
          f"({sum(r.state == 'reused' for r in results)} reused, "
          f"{sum(r.state == 'failed' for r in results)} failed); frontier: "
          + ", ".join(r.cell.name for r in frontier))
    if any(r.state == "failed" or r.exit_code == 1 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    from pipeline import export
    from pipeline.cli import run

    define_flags()  # first: --output here is the sweep folder
    export.define_flags()
    run(main, flags_parser=_parse_flags)
