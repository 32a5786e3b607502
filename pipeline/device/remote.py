"""Running models on devices: ARM boards and Jetsons over SSH, Android phones over adb.

SSH (`ssh://user@host[:port]`): the model and `device_runner.py` (standard library + numpy + the
device's TFLite runtime) are streamed over the user's own `ssh` client into `~/.mobilenet-pipeline/`
on the device, the runner prints JSON, and that comes back. Host-key checking and everything else
follow the user's SSH config; `--ssh-option` passes more options through. Every path and argument
is quoted with shlex.quote, so nothing in them reaches the remote shell as syntax.

adb (`adb` or `adb:SERIAL`): the official `benchmark_model` binary the user supplies is pushed to
/data/local/tmp with the model and run pinned (taskset) to as many of the fastest cores (highest
maximum frequency) as it has threads: 1 thread on the prime core, 4 on the prime and big ones of a
4+3+1 phone; its timing and memory lines are parsed into the same JSON shape.
"""

import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineInputError
from pipeline.core.options import option

REMOTE_DIR = ".mobilenet-pipeline"
ANDROID_DIR = "/data/local/tmp/mobilenet-pipeline"
RUNNER = Path(__file__).with_name("runner.py")  # copied to the device as device_runner.py


@dataclasses.dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = None
    options: tuple = ()
    python: str = "python3"

    @property
    def kind(self):
        return "ssh"

    def __str__(self):
        return f"ssh://{self.user}@{self.host}" + (f":{self.port}" if self.port else "")

    def ssh_argv(self, remote_command):
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        for option in self.options:
            argv += ["-o", option]
        return argv + ["--", f"{self.user}@{self.host}", remote_command]


@dataclasses.dataclass(frozen=True)
class AdbTarget:
    serial: str = None

    @property
    def kind(self):
        return "adb"

    def __str__(self):
        return "adb" + (f":{self.serial}" if self.serial else "")

    def adb_argv(self, *args):
        return ["adb"] + (["-s", self.serial] if self.serial else []) + list(args)


# What a user name, host name, adb serial (R58M12345, emulator-5554, 192.168.1.20:5555) and remote
# Python path are made of. Anything else (; $ ` | & < > spaces, quotes, newlines) is shell syntax
# or a typo: refused before any ssh or adb runs. A leading "-" would read as an option.
_NAME = r"[A-Za-z0-9_.][A-Za-z0-9._-]*"
_SERIAL = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9._:-]*")
_REMOTE_PYTHON = re.compile(r"[A-Za-z0-9_./~+][A-Za-z0-9_./~+-]*")


def parse_target(text, ssh_options=(), python="python3"):
    """'ssh://user@host[:port]' | 'adb' | 'adb:SERIAL' → a target."""
    usage = "names hold letters, digits and . _ - only; pass the device's address"
    if text == "adb" or text.startswith("adb:"):
        serial = text[4:] or None
        if serial is not None and not _SERIAL.fullmatch(serial):
            raise PipelineInputError(f"--target {text!r} is not adb[:SERIAL]: a serial holds "
                                     "letters, digits and . _ : - only; `adb devices` lists them")
        return AdbTarget(serial)
    match = re.fullmatch(rf"ssh://({_NAME})@({_NAME}|\[[0-9a-fA-F:]+\])(?::(\d+))?/?", text)
    if not match:
        raise PipelineInputError(f"--target {text!r} is not ssh://user@host[:port] or adb[:SERIAL]: "
                                 f"{usage}")
    user, host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise PipelineInputError(f"--target {text!r}: port {port} is not 1–65535")
    if not _REMOTE_PYTHON.fullmatch(python):
        raise PipelineInputError(f"--remote-python {python!r} is not a program name or path: pass "
                                 "e.g. python3 or /usr/bin/python3")
    return SshTarget(user, host.strip("[]"), int(port) if port else None, tuple(ssh_options), python)


def _run(argv, target, what, stdin=None, timeout=1800):
    try:
        completed = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        tool = argv[0]
        raise PipelineInputError(f"{tool} is not installed here: install it to reach {target}") from None
    except subprocess.TimeoutExpired:
        raise PipelineInputError(f"{what} on {target} took over {timeout} s; check the device") from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.decode(errors="replace").splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {completed.returncode}"
        raise PipelineInputError(f"{what} on {target} failed: {detail}")
    return completed.stdout


# --- SSH ---------------------------------------------------------------------------------------

def ssh_push(target, data, remote_path):
    directory = str(Path(remote_path).parent)
    command = f"mkdir -p {shlex.quote(directory)} && cat > {shlex.quote(remote_path)}"
    _run(target.ssh_argv(command), target, f"copying {remote_path}", stdin=data)


def ssh_fetch(target, remote_path):
    return _run(target.ssh_argv(f"cat {shlex.quote(remote_path)}"), target, f"reading {remote_path}")


def ssh_runner(target, args):
    """Runs device_runner.py on the device with `args`; returns its JSON."""
    runner = f"{REMOTE_DIR}/device_runner.py"
    command = " ".join(shlex.quote(a) for a in [target.python, runner] + [str(a) for a in args])
    output = _run(target.ssh_argv(command), target, "running the device runner")
    try:
        return json.loads(output)
    except ValueError:
        raise PipelineInputError(
            f"the device runner on {target} printed no JSON: {output[:200]!r}") from None


def _push_runner_and_models(target, models):
    ssh_push(target, RUNNER.read_bytes(), f"{REMOTE_DIR}/device_runner.py")
    remote = []
    for index, model in enumerate(models):
        name = f"{REMOTE_DIR}/{index}_{Path(model).name}"
        ssh_push(target, Path(model).read_bytes(), name)
        remote.append(name)
    return remote


def remote_benchmark(target, models, threads=(1,), runs=50, warmup=5, xnnpack="on",
                     delegate_library=None):
    """Benchmarks `models` on the device (one interleaved run); returns the runner's JSON."""
    if isinstance(target, AdbTarget):
        raise PipelineInputError("use adb_benchmark for Android targets")
    remote = _push_runner_and_models(target, models)
    args = remote + ["--threads", *map(str, threads), "--runs", str(runs), "--warmup", str(warmup),
                     "--xnnpack", xnnpack]
    if delegate_library:
        args += ["--delegate-library", delegate_library]
    result = ssh_runner(target, args)
    names = {r: Path(m).name for r, m in zip(remote, models)}
    for row in result["latency"]:
        row["model"] = names.get(f"{REMOTE_DIR}/{row['model']}", row["model"])
    result["target"] = str(target)
    return result


def remote_outputs(target, model, inputs):
    """Runs `model` on the device over `inputs` (np array in the model's input dtype); returns
    (raw outputs, runner JSON). XNNPACK on, 1 thread, like the host side it is compared with."""
    import io

    import numpy as np

    (remote_model,) = _push_runner_and_models(target, [model])
    buffer = io.BytesIO()
    np.save(buffer, inputs)
    ssh_push(target, buffer.getvalue(), f"{REMOTE_DIR}/inputs.npy")
    report = ssh_runner(target, [remote_model, "--threads", "1", "--inputs",
                                 f"{REMOTE_DIR}/inputs.npy", "--outputs", f"{REMOTE_DIR}/outputs.npy"])
    outputs = np.load(io.BytesIO(ssh_fetch(target, f"{REMOTE_DIR}/outputs.npy")))
    return outputs, report


# --- adb (Android) -----------------------------------------------------------------------------

_COUNT = re.compile(r"count=(\d+) first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) "
                    r"std=(\d+)(?: p5=(\d+) median=(\d+) p95=(\d+))?")
_SUMMARY = re.compile(r"Inference timings in us: Init: ([\d.e+]+), First inference: ([\d.e+]+), "
                      r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_MEMORY = re.compile(r"(Peak memory footprint|Memory footprint delta from the start of the tool)"
                     r" \(MB\): init=([\d.]+) overall=([\d.]+)")


def parse_benchmark_model(text):
    """The figures of TFLite's benchmark_model output, in the device runner's units (ms, kB)."""
    summary = _SUMMARY.search(text)
    if not summary:
        raise PipelineInputError("benchmark_model printed no 'Inference timings' line: "
                                 "check the binary and the model on the device")
    runs = [m for m in _COUNT.finditer(text)]
    result = {
        "init_ms": float(summary.group(1)) / 1e3,
        "first_invoke_ms": float(summary.group(2)) / 1e3,
        "warmup_avg_ms": float(summary.group(3)) / 1e3,
        "mean_ms": float(summary.group(4)) / 1e3,
    }
    if runs:
        last = runs[-1]  # the timed run comes after the warmup run
        result.update(runs=int(last.group(1)), min_ms=int(last.group(4)) / 1e3,
                      max_ms=int(last.group(5)) / 1e3, std_ms=int(last.group(7)) / 1e3)
        if last.group(9):
            result.update(p5_ms=int(last.group(8)) / 1e3, median_ms=int(last.group(9)) / 1e3,
                          p95_ms=int(last.group(10)) / 1e3)
    memory = _MEMORY.search(text)
    if memory:
        result["memory_mb"] = {"kind": memory.group(1), "init": float(memory.group(2)),
                               "overall": float(memory.group(3))}
    return result


def parse_max_frequencies(listing):
    """{cpu: max kHz} from `echo $f $(cat $f)` over /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq."""
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"cpu(\d+)/cpufreq/cpuinfo_max_freq (\d+)", listing)}


def core_mask(max_frequencies, threads):
    """taskset mask (hex) of the `threads` fastest cores (highest maximum frequency, the later core
    of equals: phones number their big cores last), so a run of N threads gets N cores: on a 4+3+1
    phone 1 thread is the prime core, 4 threads the prime and the three big ones. More threads than
    cores get every core."""
    fastest = sorted(max_frequencies, key=lambda cpu: (max_frequencies[cpu], cpu), reverse=True)
    return format(sum(1 << cpu for cpu in fastest[:max(1, threads)]), "x")


def adb_benchmark_command(model_remote, binary_remote, mask, threads, runs, use_xnnpack=True):
    """The shell command run on the phone (each argument quoted)."""
    args = ["taskset", mask, binary_remote, f"--graph={model_remote}", f"--num_threads={threads}",
            f"--num_runs={runs}", f"--use_xnnpack={'true' if use_xnnpack else 'false'}"]
    return " ".join(shlex.quote(a) for a in args)


def adb_benchmark(target, model, binary, threads=(1,), runs=50):
    """Pushes benchmark_model and the model, runs each thread count pinned to that many of the
    fastest cores, parses its output."""
    if not Path(binary).is_file():
        raise PipelineInputError(f"--benchmark-binary {binary}: no such file; build TFLite's "
                                 "benchmark_model for Android (arm64) and pass its path")
    _run(target.adb_argv("get-state"), target, "finding the device")
    binary_remote = f"{ANDROID_DIR}/benchmark_model"
    model_remote = f"{ANDROID_DIR}/{Path(model).name}"
    _run(target.adb_argv("shell", f"mkdir -p {shlex.quote(ANDROID_DIR)}"), target, "preparing")
    _run(target.adb_argv("push", str(binary), binary_remote), target, "pushing benchmark_model")
    _run(target.adb_argv("push", str(model), model_remote), target, "pushing the model")
    _run(target.adb_argv("shell", f"chmod 755 {shlex.quote(binary_remote)}"), target, "chmod")
    listing = _run(target.adb_argv(
        "shell", "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; "
                 "do echo $f $(cat $f); done"), target, "reading CPU frequencies").decode()
    frequencies = parse_max_frequencies(listing)
    rows = []
    for count in threads:
        mask = core_mask(frequencies, count) if frequencies else "ff"
        output = _run(target.adb_argv("shell", adb_benchmark_command(model_remote, binary_remote,
                                                                     mask, count, runs)),
                      target, "running benchmark_model").decode(errors="replace")
        rows.append({"model": Path(model).name, "threads": count, "cpu_mask": mask,
                     **parse_benchmark_model(output)})
    return {"target": str(target), "runtime": {"name": "benchmark_model"}, "latency": rows}


# --- Cross-architecture parity: the same int8 model, bit for bit, here and on the board -------

# float32 outputs (the softmax head) differ in their last bits between CPUs: XNNPACK's exp is a
# different polynomial on x86 and ARM. Measured on the emulated cortex-a76 board: 19 ulp at most
# (96 px ImageNet classifier, 20 Imagenette images).
TARGET_OPTIONS = (
    option("string", "target", None,
           "Device: ssh://user@host[:port] (ARM board, Jetson) or adb[:SERIAL]."),
    option("multi_string", "ssh-option", [],
           "Extra ssh -o option (repeatable), e.g. IdentityFile=~/.ssh/board."),
    option("string", "remote-python", "python3", "Python on the device (3.8+)."),
)


def target_from_settings(settings):
    """The device --target names (parse_target), None without one."""
    if not settings["target"]:
        return None
    return parse_target(settings["target"], settings["ssh-option"], settings["remote-python"])
