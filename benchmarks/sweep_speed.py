"""Does a sweep's accuracy part scale with Ray workers, and do its latency figures stay true?

    python benchmarks/sweep_speed.py --weights ../shared/weights/keras_home/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 \\
        --calibration ../shared/data/imagenette-224/calib --eval ../shared/data/imagenette-224/val

Runs the same 8-cell sweep (1.0 at 96/128/160/224 × int8/float16, 100 calibration and 500 eval
images) with 1 worker (2 CPUs a cell) and with 2 workers (1 CPU a cell), rounds interleaved, each
run with an empty cache of its own so neither reuses the other's work. Prints:
- the accuracy phase's wall time for each, and the speed-up (the issue asks ≥ 1.6×);
- per cell, the 1-thread latency the parallel sweep measured over the serial one's, beside the
  noise of the measurement: p90 / median within the serial run, and a second latency phase of
  the serial sweep (the same command again: every cell reused, all re-timed) over its first, which
  is the machine's run-to-run noise; and the latency the cell's own export measured while the
  other worker ran beside it: what the latency phase exists to avoid.
Not a test: it takes minutes and its figures belong to the machine it ran on (printed).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(args, workers, root):
    out = Path(root) / f"w{workers}"
    command = [sys.executable, "-m", "pipeline.sweep", "--weights", args.weights,
               "--resolution", "96,128,160,224", "--quantize", "int8,float16",
               "--calibration", args.calibration, "--calibration-samples", str(args.calibration_samples),
               "--eval", args.eval, "--eval-samples", str(args.eval_samples),
               "--cache-dir", str(Path(root) / f"cache-w{workers}"), "--workers", str(workers),
               "--output", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sweep with {workers} worker(s) failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "sweep.json").read_text())
    reports = {c["cell"]: json.loads((out / c["folder"] / "report.json").read_text())
               for c in summary["cells"]}
    return summary, reports


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--calibration-samples", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    accuracy = {1: [], 2: []}
    last = {}
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as root:
        for round_ in range(args.rounds):
            for workers in (1, 2):
                summary, reports = run_sweep(args, workers, Path(root) / str(round_))
                accuracy[workers].append(summary["timings_s"]["accuracy"])
                last[workers] = (summary, reports)
                print(f"round {round_ + 1}, {workers} worker(s): accuracy part "
                      f"{summary['timings_s']['accuracy']:.1f} s, latency part "
                      f"{summary['timings_s']['latency']:.1f} s", flush=True)
        # Same command again on the last serial sweep: nothing is exported, every model re-timed.
        retimed, _ = run_sweep(args, 1, Path(root) / str(args.rounds - 1))
    serial, parallel = (statistics.median(accuracy[w]) for w in (1, 2))
    device = last[1][0]["latency"]["device"]
    print(f"\nmachine: {device.get('cpu_model')}, {device.get('cpu_count')} cores, "
          f"{device.get('machine_class')}")
    print(f"accuracy part, median of {args.rounds}: 1 worker {serial:.1f} s, 2 workers "
          f"{parallel:.1f} s: {serial / parallel:.2f}x faster")
    print("\n| cell | serial sweep ms | parallel sweep ms | parallel / serial | serial p90/median | "
          "serial again / serial | own export under load ms |")
    print("|---|---|---|---|---|---|---|")
    label = lambda name: name.rsplit("-", 1)[0]  # noqa: E731  (the key part may differ: the cache dir)
    cells_1 = {label(c["cell"]): c for c in last[1][0]["cells"]}
    again = {label(c["cell"]): c["latency_ms"]["1"]["median"] for c in retimed["cells"]}
    ratios, noise = [], []
    for cell in last[2][0]["cells"]:
        one = cells_1[label(cell["cell"])]["latency_ms"]["1"]
        two = cell["latency_ms"]["1"]
        ratios.append(two["median"] / one["median"])
        noise.append(again[label(cell["cell"])] / one["median"])
        own = last[2][1][cell["cell"]]["latency_ms"]["1"]["median"]
        print(f"| {cell['cell']} | {one['median']:.3f} | {two['median']:.3f} | {ratios[-1]:.3f} | "
              f"{one['p90'] / one['median']:.3f} | {noise[-1]:.3f} | {own:.3f} |")
    print(f"\nparallel / serial latency: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}–{max(ratios):.3f}")
    print(f"serial again / serial (the machine's run-to-run noise): median "
          f"{statistics.median(noise):.3f}, range {min(noise):.3f}–{max(noise):.3f}")


if __name__ == "__main__":
    main()
