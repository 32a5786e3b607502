"""`python -m pipeline.inspect MODEL.tflite [--json]`: a `.tflite`'s contract, read from the file
alone: inputs, outputs, metadata, labels, ops, and what the mainstream clients take of it."""

import json

from pipeline import api
from pipeline.commands import cli
from pipeline.core.errors import PipelineInputError
from pipeline.core.options import option
from pipeline.stages import inspection

OPTIONS = (option("bool", "json", False, "Print the contract as JSON."),)


def main(argv):
    if len(argv) != 2:
        raise PipelineInputError("give one model: python -m pipeline.inspect MODEL.tflite")
    info = api.inspect(argv[1])
    print(json.dumps(info, indent=2) if cli.settings(OPTIONS)["json"] else
          inspection.render(info, argv[1]))


def command():
    cli.define_options(OPTIONS)
    cli.run(main, positional=True)
