"""`python -m pipeline.convert`: Keras → `.tflite` alone, summarized as JSON.

    python -m pipeline.convert --alpha 0.35 --resolution 96 --weights random --quantize int8 \\
        --calibration DIR --out model.tflite
"""

import json
import sys

from pipeline.commands import cli
from pipeline.core.artifacts import check_writable_file, write_files_atomically
from pipeline.core.options import option
from pipeline.stages import build, calibrate, convert
from pipeline.stages.preprocess import Preprocessing

OPTIONS = (option("string", "out", None, "Where to write the .tflite (atomically)."),)


def main(argv):
    settings = cli.settings(build.OPTIONS, calibrate.OPTIONS, convert.OPTIONS, OPTIONS)
    convert_cfg = convert.config_from_settings(settings)
    convert.check_config(convert_cfg)
    out = settings["out"]
    if out:
        check_writable_file(out, "--out")  # before the model is built and converted
    built = build.build_model(build.config_from_settings(settings))
    arrays = None
    if convert_cfg.quantize in ("int8", "int16x8"):
        cal_cfg = calibrate.config_from_settings(settings, imagenet_weights=built.synsets is not None)
        arrays = calibrate.representative_dataset(
            cal_cfg, Preprocessing(resolution=built.resolution),
            progress=calibrate.progress_bar("calibration images")).arrays
    converted = convert.convert(built, arrays, convert_cfg)
    if out:
        write_files_atomically(out, {"": converted.tflite})
    json.dump(converted.summary(), sys.stdout, indent=2)
    print()


def command():
    cli.define_options(build.OPTIONS, calibrate.OPTIONS, convert.OPTIONS, OPTIONS)
    cli.run(main)
