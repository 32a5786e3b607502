"""Runs a `.tflite` model and times it: one file, standard library + numpy + a TFLite runtime.

This file is copied as-is onto devices (ARM boards, Jetsons) as well as used on the host, so it
imports nothing else from this package and stays Python 3.8 compatible. The runtime is the first
of `ai_edge_litert` (LiteRT, the maintained package), `tflite_runtime` (retired) and `tensorflow`
that imports.

    python device_runner.py MODEL.tflite --threads 1 2 --runs 50 > result.json
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


def make_interpreter(module, model_path=None, model_content=None, threads=1, xnnpack=True):
    kwargs = {"num_threads": threads}
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
    """How the execution plan was delegated: XNNPACK replaces the ops it takes with DELEGATE nodes."""
    try:
        ops = [d["op_name"] for d in interpreter._get_ops_details()]
    except (AttributeError, RuntimeError):
        return {"xnnpack_applied": None, "delegate_partitions": None, "ops_not_delegated": None}
    partitions = sum(1 for op in ops if op == "DELEGATE")
    return {
        "xnnpack_applied": partitions > 0,
        "delegate_partitions": partitions,
        "ops_not_delegated": len(ops) - partitions,
    }


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

    def __init__(self, module, model_path=None, model_content=None, threads=1, xnnpack=True):
        self.interpreter = make_interpreter(module, model_path, model_content, threads, xnnpack)
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
        if isinstance(model, (bytes, bytearray)):
            runner = Runner(module, model_content=bytes(model), threads=config["threads"],
                            xnnpack=config.get("xnnpack", True))
        else:
            runner = Runner(module, model_path=model, threads=config["threads"],
                            xnnpack=config.get("xnnpack", True))
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
        results.append(result)
    return results


def time_invokes(module, model, threads_list, warmup=5, runs=50, xnnpack=True, seed=0):
    """Latency of one model per thread count, the thread counts interleaved (see time_configs)."""
    configs = [{"model": model, "threads": t, "xnnpack": xnnpack} for t in threads_list]
    results = time_configs(module, configs, warmup, runs, seed=seed)
    for result in results:
        del result["times_ms"]
    return results


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


def device_facts():
    facts = {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu part")):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return facts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--xnnpack", choices=["on", "off", "both"], default="on")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--runtime", default=None, help="ai-edge-litert | tflite-runtime | tensorflow")
    args = parser.parse_args(argv)
    name, version, module = load_runtime(args.runtime)
    rss_before = peak_rss_kb()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.xnnpack]
    configs = [{"model": m, "name": m, "threads": t, "xnnpack": x}
               for m in args.models for t in args.threads for x in modes]
    latencies = time_configs(module, configs, args.warmup, args.runs, args.budget_s)
    json.dump({"runtime": {"name": name, "version": version}, "device": device_facts(),
               "latency": latencies,
               "memory": {"rss_before_models_kb": rss_before, "peak_rss_kb": peak_rss_kb()}},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
