"""`python -m pipeline.diagnose [export flags] --output DIR`: which layers lose most to int8
(QuantizationDebugger), and how unequal each convolution's weight channels are."""

from pipeline.commands import cli
from pipeline.stages import build, calibrate, convert, diagnose

GROUPS = (build.OPTIONS, calibrate.OPTIONS, convert.OPTIONS, diagnose.OPTIONS)


def main(argv):
    print(diagnose.render_markdown(diagnose.diagnose_model(cli.settings(*GROUPS)), top_n=10))


def command():
    cli.define_options(*GROUPS)
    cli.run(main)
