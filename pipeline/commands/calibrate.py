"""`python -m pipeline.calibrate`: the calibration sample an export would draw, as JSON.

    python -m pipeline.calibrate --calibration DIR --calibration-samples 300 --seed 0
"""

import json

from pipeline.commands import cli
from pipeline.core.options import option
from pipeline.stages import calibrate
from pipeline.stages.preprocess import Preprocessing

OPTIONS = (
    option("integer", "resolution", 224, "Model input resolution."),
    option("bool", "imagenet", False,
           "The model has ImageNet classes: fetch Imagenette when the default folder is empty."),
)


def main(argv):
    settings = cli.settings(calibrate.OPTIONS, OPTIONS)
    cfg = calibrate.config_from_settings(settings, imagenet_weights=settings["imagenet"])
    spec = Preprocessing(resolution=settings["resolution"])
    calibration = calibrate.representative_dataset(
        cfg, spec, progress=calibrate.progress_bar("calibration images"))
    print(json.dumps(calibration.summary(), indent=2))


def command():
    cli.define_options(calibrate.OPTIONS, OPTIONS)
    cli.run(main)
