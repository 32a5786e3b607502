"""`python -m pipeline.golden`: golden vectors for the Android app's core (the exact input tensor
bytes and top-k the pipeline computes), for its JUnit tests to replay."""

from pipeline.commands import cli
from pipeline.core.artifacts import check_writable
from pipeline.core.options import option
from pipeline.stages import golden

OPTIONS = (
    option("string", "output", "android_demo/core/src/test/resources/golden", "Where the vectors go."),
    option("string", "images", None, "Make vectors for these photos instead of the synthetic set."),
)


def main(argv):
    settings = cli.settings(OPTIONS)
    check_writable(settings["output"])
    files = golden.image_folder_set(settings["images"]) if settings["images"] else golden.synthetic_set()
    golden.write(settings["output"], files)
    print(f"{len(files)} files written to {settings['output']}")


def command():
    cli.define_options(OPTIONS)
    cli.run(main)
