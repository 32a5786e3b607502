"""`python -m pipeline.analyze --alpha 1.0 --resolution 224`: MobileNetV2's block structure read
from the built graph, against the paper's table."""

import json

from pipeline.commands import cli
from pipeline.core.artifacts import check_writable_file, write_files_atomically
from pipeline.core.options import option
from pipeline.stages import analyze

OPTIONS = (
    option("float", "alpha", 1.0, "Width multiplier."),
    option("integer", "resolution", 224, "Input resolution."),
    option("string", "json", None, "Also write the analysis as JSON here."),
)


def main(argv):
    settings = cli.settings(OPTIONS)
    if settings["json"]:
        check_writable_file(settings["json"], "--json")  # before the model is built
    result = analyze.analyze(settings["alpha"], settings["resolution"])
    print(analyze.render_markdown(result))
    if settings["json"]:
        write_files_atomically(settings["json"], {"": json.dumps(result, indent=2) + "\n"})


def command():
    cli.define_options(OPTIONS)
    cli.run(main)
