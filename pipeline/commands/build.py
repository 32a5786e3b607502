"""`python -m pipeline.build`: the float Keras classifier alone, described as JSON.

    python -m pipeline.build --alpha 0.35 --resolution 96 --weights random
"""

import json

from pipeline.commands import cli
from pipeline.stages import build


def main(argv):
    built = build.build_model(build.config_from_settings(cli.settings(build.OPTIONS)))
    print(json.dumps({
        "name": built.name,
        "architecture": built.architecture,
        "weights": built.weights_source,
        "weights_sha256": built.weights_sha256,
        "output": built.output_kind,
        "layers": len(built.keras_model.layers),
    }, indent=2))


def command():
    cli.define_options(build.OPTIONS)
    cli.run(main)
