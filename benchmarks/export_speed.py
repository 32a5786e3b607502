"""Export against the hand-written recipe, interleaved on one machine: the ratios issue 13 asks for.

Each round runs, one after the other:
  recipe   benchmarks/plain_recipe.py (Keras float in batches of 64, the int8 .tflite one image at
           a time, the converter calibrated on the same number of images)
  cold     python -m pipeline.export --quantize int8 … with an empty --cache-dir
  re-export the same command with only --activation-ranges percentile added, on that cache
and prints each one's median wall time and its ratio to the recipe's, with the machine.

    KERAS_HOME=… python benchmarks/export_speed.py \\
        --calibration ../shared/data/imagenette-224/calib --eval ../shared/data/imagenette-224/val

Wall time includes Python and TensorFlow start-up on both sides: it is what a user waits for.
Not a test: it takes ~4 minutes a round on the 2-core VM.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command, log):
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(map(str, command))}; see {log}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--samples", type=int, default=300, help="calibration images, both sides")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where outputs and logs go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from pipeline.device.runner import device_facts, int8_dot_product_line

    work = Path(args.workdir or tempfile.mkdtemp(prefix="export-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    recipe = [python, "benchmarks/plain_recipe.py", "--calibration", args.calibration,
              "--eval", args.eval, "--samples", str(args.samples)]
    export = [python, "-m", "pipeline.export", "--quantize", "int8", "--weights", "imagenet",
              "--calibration", args.calibration, "--calibration-samples", str(args.samples),
              "--eval", args.eval]
    times = {"recipe": [], "cold": [], "re-export": []}
    for round_ in range(args.rounds):
        cache = work / f"cache-{round_}"
        times["recipe"].append(timed(recipe, work / f"recipe-{round_}.log"))
        times["cold"].append(timed([*export, "--cache-dir", cache, "--output", work / f"cold-{round_}"],
                                   work / f"cold-{round_}.log"))
        times["re-export"].append(timed([*export, "--cache-dir", cache, "--activation-ranges",
                                         "percentile", "--output", work / f"warm-{round_}"],
                                        work / f"warm-{round_}.log"))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              flush=True)
    facts = device_facts()
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {facts.get('cpu_model') or facts.get('machine')}, {os.cpu_count()} cores, "
          f"{int8_dot_product_line(facts)}")
    for name in ("cold", "re-export"):
        print(f"{name}: median {medians[name]:.1f} s = {medians[name] / medians['recipe']:.3f}× the "
              f"recipe's {medians['recipe']:.1f} s ({args.rounds} interleaved rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": times, "median_s": medians,
                                               "machine": facts}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
