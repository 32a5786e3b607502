"""`python -m pipeline.benchmark MODEL.tflite [MORE.tflite ...]`: models timed interleaved (thread
counts, XNNPACK on and off), with peak memory; on this machine or a device.

    python -m pipeline.benchmark OUT/model.tflite --compare google --threads-sweep 1,2 --output B
    python -m pipeline.benchmark OUT/model.tflite --target ssh://pi@board --threads-sweep 1,4
"""

from pipeline import api
from pipeline.commands import cli
from pipeline.stages import benchmark


def main(argv):
    print(api.benchmark(argv[1:], cli.settings(benchmark.RUN_OPTIONS)).table)


def command():
    cli.define_options(benchmark.RUN_OPTIONS)
    cli.run(main, positional=True)
