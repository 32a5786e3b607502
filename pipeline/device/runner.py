"""Runs a `.tflite` model and times it: one file, standard library + numpy + a TFLite runtime.

This file is copied as-is onto devices (ARM boards, Jetsons) as well as used on the host, so it
imports nothing else from this package and stays Python 3.8 compatible. The runtime is the first
of `ai_edge_litert` (LiteRT, the maintained package), `tflite_runtime` (retired) and `tensorflow`
that imports.

    python device_runner.py MODEL.tflite --threads 1 2 --runs 50 > result.json

(In this repository it is pipeline/device/runner.py; on a device, device_runner.py.)
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow", "tensorflow.lite", "tensorflow"),
)


def load_runtime(prefer=None):
    """(runtime name, version, interpreter module) for the first runtime that imports."""
    import importlib

    errors = []
    for name, module_name, package in RUNTIMES:
        if prefer and name != prefer:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            errors.append("%s: %s" % (name, error))
            continue
        version = getattr(importlib.import_module(package), "__version__", "unknown")
        return name, version, module
    raise RuntimeError("no TFLite runtime found (pip install ai-edge-litert): " + "; ".join(errors))


@contextlib.contextmanager
def quiet_native_stderr():
    """Silences what native code writes to fd 2 (TFLite's "Created XNNPACK delegate" and the
    converter's calibration notices), which Python-level redirection cannot reach."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def make_interpreter(module, model_path=None, model_content=None, threads=1, xnnpack=True,
                     delegates=None):
    kwargs = {"num_threads": threads}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if model_path:
        kwargs["model_path"] = model_path
    else:
        kwargs["model_content"] = model_content
    if not xnnpack:
        resolver = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with quiet_native_stderr():
        interpreter = module.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    return interpreter


def delegation(interpreter):
    """How the execution plan was delegated: XNNPACK replaces the ops it takes with DELEGATE nodes.

    The interpreter lists the replaced nodes too, and no execution plan, so the ops left outside
    the delegate are found by data flow: a node runs on its own when a tensor it produces is read by
    a DELEGATE node, by another node that runs on its own, or is a graph output, and no DELEGATE
    node produces that tensor."""
    try:
        details = interpreter._get_ops_details()
        graph_outputs = [d["index"] for d in interpreter.get_output_details()]
    except (AttributeError, RuntimeError):
        return {"xnnpack_applied": None, "delegate_partitions": None, "ops_not_delegated": None}
    delegates = [d for d in details if d["op_name"] == "DELEGATE"]
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    if not delegates:
        return {"xnnpack_applied": False, "delegate_partitions": 0, "ops_not_delegated": len(originals)}
    produced_by_delegates = set(int(t) for d in delegates for t in d["outputs"])
    wanted = set(int(t) for t in graph_outputs) | set(int(t) for d in delegates for t in d["inputs"])
    outside = set()
    changed = True
    while changed:
        changed = False
        for node in originals:
            outputs = set(int(t) for t in node["outputs"])
            if node["index"] in outside or not (outputs & wanted) or outputs & produced_by_delegates:
                continue
            outside.add(node["index"])
            wanted.update(int(t) for t in node["inputs"])
            changed = True
    return {
        "xnnpack_applied": True,
        "delegate_partitions": len(delegates),
        "ops_not_delegated": len(outside),
    }


def delegate_shares(module, model, delegate=None, delegate_name=None, threads=1, xnnpack=True):
    """Which delegate took how many of the model's ops, from the graph after delegation.

    Every delegate's nodes are named DELEGATE alike, so the requested delegate's share is counted
    on an interpreter that has it alone (no default delegate), and XNNPACK's (the default delegate,
    applied after it to what is left) as the rest of what the full interpreter delegates. `model`
    is a path or the model's bytes. Returns {"delegates": [{"delegate", "ops", "partitions"}],
    "ops": the model's ops, "ops_on_cpu_kernels": ops no delegate took}; a delegate that loads but
    takes nothing is listed with 0 ops."""
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": model}
    full = make_interpreter(module, threads=threads, xnnpack=xnnpack,
                            delegates=[delegate] if delegate else None, **source)
    try:
        ops = sum(1 for d in full._get_ops_details() if d["op_name"] != "DELEGATE")
    except (AttributeError, RuntimeError):
        return {"delegates": None, "ops": None, "ops_on_cpu_kernels": None}
    together = delegation(full)
    shares, taken, partitions = [], 0, 0
    if delegate is not None:
        alone = delegation(make_interpreter(module, threads=threads, xnnpack=False,
                                            delegates=[delegate], **source))
        taken, partitions = ops - alone["ops_not_delegated"], alone["delegate_partitions"]
        shares.append({"delegate": delegate_name or "requested", "ops": taken, "partitions": partitions})
    if xnnpack:
        shares.append({"delegate": "XNNPACK",
                       "ops": ops - together["ops_not_delegated"] - taken,
                       "partitions": together["delegate_partitions"] - partitions})
    return {"delegates": shares, "ops": ops, "ops_on_cpu_kernels": together["ops_not_delegated"]}


def quantize_input(x, detail):
    """float model input → the tensor's dtype: q = clip(round_half_even(x / scale) + zero_point)."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if scale == 0.0:
        return np.asarray(x, dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(q, detail):
    scale, zero_point = detail["quantization"]
    if scale == 0.0:
        return np.asarray(q, np.float32)
    return (np.asarray(q, np.float32) - np.float32(zero_point)) * np.float32(scale)


class Runner(object):
    """One interpreter, fed float images one at a time (batch 1 is XNNPACK's fastest path here)."""

    def __init__(self, module, model_path=None, model_content=None, threads=1, xnnpack=True,
                 delegates=None):
        self.interpreter = make_interpreter(module, model_path, model_content, threads, xnnpack,
                                            delegates)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def raw(self, image_q):
        """Runs one already-typed input (1, h, w, c); returns the raw output tensor."""
        self.interpreter.set_tensor(self.input["index"], image_q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def __call__(self, images):
        """float32 (n, h, w, c) → dequantized float32 outputs (n, classes)."""
        outputs = []
        for image in images:
            q = quantize_input(image[None], self.input)
            outputs.append(dequantize_output(self.raw(q), self.output)[0])
        return np.stack(outputs)


def percentile(values, q):
    return float(np.percentile(np.asarray(values, np.float64), q))


def _random_input(detail, rng):
    if np.issubdtype(detail["dtype"], np.integer):
        info = np.iinfo(detail["dtype"])
        return rng.randint(info.min, info.max + 1, size=detail["shape"]).astype(detail["dtype"])
    return rng.uniform(-1, 1, size=detail["shape"]).astype(detail["dtype"])


def time_configs(module, configs, warmup=5, runs=50, budget_s=None, seed=0):
    """Latency of several (model, threads, xnnpack) configurations, interleaved invoke by invoke.

    Interleaving makes every configuration see the same machine noise, so their ratios hold on a
    busy shared host even when the absolute numbers drift. Each config is a dict with `model`
    (a file path or the model's bytes), `threads` and `xnnpack`; each result repeats those keys
    (model as given by `name`, if present) and adds the timings and how the graph was delegated.
    `budget_s` stops the timed loop early once that many seconds have passed.
    """
    rng = np.random.RandomState(seed)
    states = []
    for config in configs:
        model = config["model"]
        start = time.perf_counter()
        options = {"threads": config["threads"], "xnnpack": config.get("xnnpack", True),
                   "delegates": config.get("delegates")}
        if isinstance(model, (bytes, bytearray)):
            runner = Runner(module, model_content=bytes(model), **options)
        else:
            runner = Runner(module, model_path=model, **options)
        init_ms = (time.perf_counter() - start) * 1e3
        sample = _random_input(runner.input, rng)
        start = time.perf_counter()
        runner.raw(sample)  # the first invoke pays for lazy packing of weights: reported apart
        first_ms = (time.perf_counter() - start) * 1e3
        states.append({"runner": runner, "sample": sample, "init_ms": init_ms,
                       "first_ms": first_ms, "times": []})
    for _ in range(warmup):
        for state in states:
            state["runner"].raw(state["sample"])
    deadline = time.perf_counter() + budget_s if budget_s else None
    for _ in range(runs):
        for state in states:
            start = time.perf_counter()
            state["runner"].raw(state["sample"])
            state["times"].append((time.perf_counter() - start) * 1e3)
        if deadline and time.perf_counter() > deadline:
            break
    results = []
    for config, state in zip(configs, states):
        times = state["times"]
        result = {
            "model": config.get("name", config["model"] if isinstance(config["model"], str) else None),
            "threads": config["threads"],
            "xnnpack": config.get("xnnpack", True),
            "runs": len(times),
            "min_ms": min(times),
            "median_ms": percentile(times, 50),
            "p90_ms": percentile(times, 90),
            "p99_ms": percentile(times, 99),
            "first_invoke_ms": state["first_ms"],
            "init_ms": state["init_ms"],
            "times_ms": [round(t, 4) for t in times],
        }
        result.update(delegation(state["runner"].interpreter))
        if config.get("delegates"):
            # DELEGATE nodes of another delegate are not XNNPACK's: count each one's share.
            shares = delegate_shares(module, config["model"], config["delegates"][0],
                                     config.get("delegate_name"), config["threads"],
                                     config.get("xnnpack", True))
            result["delegates"] = shares["delegates"]
            result["xnnpack_applied"] = any(d["delegate"] == "XNNPACK" and d["ops"] for d in
                                            shares["delegates"] or [])
        results.append(result)
    return results


def load_delegate(module, library):
    """(delegate or None, report): tries a delegate library and says plainly whether it loaded."""
    if not library:
        return None, {"requested": None, "loaded": False,
                      "note": "no delegate requested: CPU (XNNPACK)"}
    loader = getattr(module, "load_delegate", None) or getattr(
        getattr(module, "experimental", None), "load_delegate", None)
    if loader is None:
        return None, {"requested": library, "loaded": False,
                      "note": "this runtime cannot load delegates"}
    import gc

    with quiet_native_stderr():
        try:
            delegate = loader(library)
        except (ValueError, OSError, RuntimeError) as error:
            failure = str(error).splitlines()[0]
            delegate = None
        gc.collect()  # a half-built Delegate complains from __del__; keep that off the output
    if delegate is None:
        return None, {"requested": library, "loaded": False,
                      "note": "NOT loaded (%s): the timings are CPU figures" % failure}
    # Loading is not taking ops: what it took is counted on the model (delegate_shares).
    return delegate, {"requested": library, "loaded": True, "note": "loaded"}


def peak_rss_kb():
    """This process's peak resident set size in kB.

    /proc's VmHWM belongs to this program alone; getrusage's ru_maxrss survives fork+exec and would
    report the parent's peak when a large process (TensorFlow) starts the runner."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


# The instruction sets that decide which int8 kernels XNNPACK picks, best first, as /proc/cpuinfo
# names them ("flags" on x86, "Features" on ARM). On an AVX2-only x86 CPU int8 runs *slower* than
# float32; with AVX-512 VNNI it runs ~2x faster: timings only compare within one class.
INT8_ISA = {
    "x86": ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx512f", "avx2", "avx", "sse4_1"),
    "arm": ("sme", "i8mm", "asimddp", "sve", "asimd"),
}
ISA_NAMES = {"asimddp": "dotprod", "asimd": "neon"}
# Of those, the int8 dot-product instructions (4 int8 products summed into int32 in one instruction):
# they decide whether int8 beats float32. Measured at 224, 1 thread, interleaved: 3.9 ms int8 vs
# 7.5 ms float32 on an AVX-512 VNNI EPYC; 11.0 vs 9.9 ms on an AVX2-only one.
INT8_DOT_PRODUCT = ("amx_int8", "avx512_vnni", "avx_vnni", "sme", "i8mm", "dotprod")


def cpu_features(cpuinfo, machine):
    """The int8-relevant instruction sets in a /proc/cpuinfo text, best first."""
    family = "arm" if machine.lower().startswith(("aarch64", "arm")) else "x86"
    present = set()
    for line in cpuinfo.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            present.update(line.split(":", 1)[1].split())
    return [ISA_NAMES.get(name, name) for name in INT8_ISA[family] if name in present]


def int8_dot_product(isa):
    """The int8 dot-product instructions among `isa` (best first); [] when there are none."""
    return [name for name in isa if name in INT8_DOT_PRODUCT]


def int8_dot_product_line(facts):
    """Whether int8 can be expected to beat float32 on this CPU, in words."""
    if facts.get("emulated"):
        return "int8 dot-product: unknown (emulated)"
    found = facts.get("int8_dot_product")
    if found is None:
        found = int8_dot_product(facts.get("isa") or [])
    if found:
        return "int8 dot-product: yes (%s)" % " ".join(found)
    return ("int8 dot-product: none (%s): int8 kernels may run slower than float32 here"
            % ((facts.get("isa") or ["no SIMD found"])[0]))


def machine_class(machine, isa):
    """The key a baseline's timing entries are stored under: architecture and best int8 ISA.

    Two machines of one class run the same XNNPACK int8 kernels, so a latency ratio measured on
    one holds on the other; core count and clock do not enter a 1-thread ratio."""
    return "%s/%s" % (machine.lower(), isa[0] if isa else "unknown")


def device_facts():
    """Machine, CPU, int8 instruction sets, governor, temperature, and whether this 'device' is
    really an emulator."""
    facts = {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "isa": [],
        "int8_dot_product": [],
        "machine_class": None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": None,
        "emulated": False,
    }
    cpuinfo = _read("/proc/cpuinfo") or ""
    facts["isa"] = cpu_features(cpuinfo, facts["machine"])
    facts["int8_dot_product"] = int8_dot_product(facts["isa"])
    facts["machine_class"] = machine_class(facts["machine"], facts["isa"])
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu part")):
            facts["cpu_model"] = line.split(":", 1)[1].strip()
            break
    temperatures = []
    for zone in range(16):
        value = _read("/sys/class/thermal/thermal_zone%d/temp" % zone)
        if value and value.lstrip("-").isdigit():
            temperatures.append(int(value) / 1000.0)
    if temperatures:
        facts["temperature_c"] = max(temperatures)
    # qemu-user runs ARM code on an x86 host and leaves the host's /proc/cpuinfo visible: an ARM
    # machine reporting an x86 vendor is emulated, and its timings mean nothing for real ARM.
    is_arm = facts["machine"].lower().startswith(("aarch64", "arm"))
    x86_cpu = any(tag in cpuinfo for tag in ("GenuineIntel", "AuthenticAMD", "vendor_id"))
    if is_arm and x86_cpu:
        facts["emulated"] = True
        facts["emulation"] = "user-mode emulation on an x86 host (qemu-user): timings are not ARM figures"
        facts["isa"] = []
        facts["int8_dot_product"] = None
        facts["machine_class"] = "%s/emulated" % facts["machine"].lower()
    return facts


def run_inputs(module, model_path, inputs_path, outputs_path, threads=1, xnnpack=True):
    """Runs the model on every input tensor of an .npy file (already in the model's input dtype)
    and saves the raw output tensors: what cross-architecture parity compares bit for bit."""
    runner = Runner(module, model_path=model_path, threads=threads, xnnpack=xnnpack)
    inputs = np.load(inputs_path)
    outputs = np.stack([runner.raw(x[None])[0] for x in inputs])
    np.save(outputs_path, outputs)
    return {"inputs": int(len(inputs)), "output_dtype": str(outputs.dtype),
            "delegation": delegation(runner.interpreter)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--xnnpack", choices=["on", "off", "both"], default="on")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--runtime", default=None, help="ai-edge-litert | tflite-runtime | tensorflow")
    parser.add_argument("--inputs", default=None,
                        help="Parity mode: run these input tensors (.npy) instead of timing")
    parser.add_argument("--outputs", default=None, help="Parity mode: where the outputs (.npy) go")
    parser.add_argument("--delegate-library", default=None,
                        help="A TFLite delegate .so to load (e.g. a GPU delegate on a Jetson)")
    args = parser.parse_args(argv)
    name, version, module = load_runtime(args.runtime)
    runtime = {"name": name, "version": version}
    if args.inputs:
        result = run_inputs(module, args.models[0], args.inputs, args.outputs or "outputs.npy",
                            threads=args.threads[0], xnnpack=args.xnnpack != "off")
        json.dump({"runtime": runtime, "device": device_facts(), "parity": result}, sys.stdout)
        print()
        return
    delegate, runtime["delegate"] = load_delegate(module, args.delegate_library)
    if delegate is not None:
        shares = delegate_shares(module, args.models[0], delegate,
                                 os.path.basename(args.delegate_library), args.threads[0],
                                 args.xnnpack != "off")
        runtime["delegate"].update(shares)
        took = shares["delegates"][0]["ops"] if shares["delegates"] else None
        runtime["delegate"]["note"] = (
            "loaded, but took no op: every op ran on XNNPACK or the CPU kernels" if took == 0
            else "loaded; took %s of %s ops of %s" % (took, shares["ops"], os.path.basename(args.models[0])))
    rss_before = peak_rss_kb()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.xnnpack]
    configs = [{"model": m, "name": os.path.basename(m), "threads": t, "xnnpack": x,
                "delegates": [delegate] if delegate else None,
                "delegate_name": os.path.basename(args.delegate_library or "")}
               for m in args.models for t in args.threads for x in modes]
    latencies = time_configs(module, configs, args.warmup, args.runs, args.budget_s)
    json.dump({"runtime": runtime, "device": device_facts(),
               "latency": latencies,
               "memory": {"rss_before_models_kb": rss_before, "peak_rss_kb": peak_rss_kb()}},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
