"""`python -m pipeline.compare --resolution 224 --calibration DIR --output compare/`: MobileNetV1,
V2 1.0 and 1.4, V3 Small and Large side by side, float and int8, timed interleaved."""

from pipeline.commands import cli
from pipeline.core.options import option
from pipeline.stages import compare

OPTIONS = (
    option("list", "models", list(compare.DEFAULT_MODELS), "Models: " + ", ".join(compare.MODELS)),
    option("integer", "resolution", 224, "Input resolution."),
    option("string", "calibration", None, "Images for int8 calibration (default: seeded noise)."),
    option("integer", "benchmark-runs", 30, "Timed invokes per configuration."),
    option("string", "output", None, "Folder for compare.json and compare.md."),
)


def main(argv):
    settings = cli.settings(OPTIONS)
    _, table = compare.compare_models(settings["models"], settings["resolution"],
                                      settings["calibration"], settings["benchmark-runs"],
                                      settings["output"])
    print(table)


def command():
    cli.define_options(OPTIONS)
    cli.run(main)
