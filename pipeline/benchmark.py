"""Stage 6: the quick latency benchmark the export report carries.

Median and p90 latency at 1 thread and at all cores, with the runtime `device_runner` finds
(ai-edge-litert, else tflite-runtime, else tf.lite); the report says which ran and whether XNNPACK
took the graph. The two thread counts are interleaved invoke by invoke so their ratio holds on a
noisy machine.

    python -m pipeline.benchmark MODEL.tflite [--runs 50]
"""

import dataclasses
import os

from pipeline import device_runner


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    threads: tuple = (1, os.cpu_count() or 1)
    warmup: int = 5
    runs: int = 50


@dataclasses.dataclass
class BenchmarkResult:
    runtime: str
    runtime_version: str
    latencies: list  # one dict per thread count (device_runner.time_invokes)

    @property
    def xnnpack_applied(self):
        return all(r["xnnpack_applied"] for r in self.latencies)

    def latency_ms(self):
        """{threads: {median, p90}} — the report's `latency_ms`."""
        return {
            str(r["threads"]): {"median": round(r["median_ms"], 3), "p90": round(r["p90_ms"], 3)}
            for r in self.latencies
        }


def quick_benchmark(model, cfg=BenchmarkConfig()):
    """Times `model` (path or bytes) at each thread count of `cfg`."""
    name, version, module = device_runner.load_runtime()
    threads = tuple(sorted(set(cfg.threads)))
    latencies = device_runner.time_invokes(module, model, threads, cfg.warmup, cfg.runs)
    return BenchmarkResult(runtime=name, runtime_version=version, latencies=latencies)


def define_flags():
    from pipeline.cli import define

    define("integer", "benchmark-runs", 50, "Timed invokes per thread count in the quick benchmark.")


def main(argv):
    import json
    from pathlib import Path

    from absl import flags

    from pipeline.errors import PipelineInputError

    if len(argv) < 2:
        raise PipelineInputError("give a model: python -m pipeline.benchmark MODEL.tflite")
    for path in argv[1:]:
        if not Path(path).is_file():
            raise PipelineInputError(f"{path}: no such model file")
        result = quick_benchmark(path, BenchmarkConfig(runs=flags.FLAGS["benchmark-runs"].value))
        print(json.dumps({"model": path, "runtime": result.runtime,
                          "runtime_version": result.runtime_version,
                          "latency": result.latencies}, indent=2))


if __name__ == "__main__":
    from pipeline.cli import run

    define_flags()
    run(main)
