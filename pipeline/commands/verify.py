"""`python -m pipeline.verify --tflite MODEL`: parity of a given `.tflite` against the float model
the build flags describe, or, with --target, the same model here and on a device (bit-exact).

    python -m pipeline.verify --tflite OUT/model.tflite --eval DIR
    python -m pipeline.verify --tflite OUT/model.tflite --target ssh://pi@board --eval DIR
"""

import json
import sys

from pipeline.commands import cli
from pipeline.core.errors import ParityError, PipelineInputError
from pipeline.core.options import option
from pipeline.device import remote
from pipeline.stages import build, convert, cross_arch, evalset, verify
from pipeline.stages.preprocess import Preprocessing

OPTIONS = (
    option("string", "tflite", None, "The .tflite model to compare with the float model."),
    option("float", "max-lsb", None,
           "With --target: the largest output difference still counted as parity, in quantization "
           "steps for integer outputs (default 0) and float32 ulps for float ones (default "
           f"{cross_arch.FLOAT_ULPS_ALLOWED})."),
)
GROUPS = (build.OPTIONS, verify.OPTIONS, remote.TARGET_OPTIONS, OPTIONS)


def main(argv):
    settings = cli.settings(*GROUPS)
    path = settings["tflite"]
    if not path:
        raise PipelineInputError("--tflite MODEL is required: pass the exported .tflite")
    # The address first: one with shell syntax in it is refused before anything else runs.
    target = remote.target_from_settings(settings)
    model = verify.read_classifier(path, "--tflite")
    directory = settings["eval"]
    if target is not None:
        if not directory:
            raise PipelineInputError("--eval DIR is required: images to run on both machines")
        return run_cross_arch(target, path, directory, settings)
    if not directory:
        raise PipelineInputError("--eval DIR is required: a folder of images to compare the models on")
    thresholds = verify.config_from_settings(settings)
    built = build.build_model(build.config_from_settings(settings))
    float_model = convert.convert(built, None, convert.ConvertConfig(quantize="none"))
    eval_set = evalset.eval_set_from_folder(directory, built, settings["eval-samples"],
                                           settings["seed"])
    result = verify.verify(built, float_model.tflite, model, eval_set,
                           Preprocessing(resolution=built.resolution), thresholds,
                           threads=settings["threads"])
    json.dump(result.to_json(), sys.stdout, indent=2)
    print()
    print(verify.format_checks(result), file=sys.stderr)
    if not result.passed:
        raise ParityError("parity check failed (see ✗ above)")


def run_cross_arch(target, path, directory, settings):
    """The model here and on the device, output by output, printed."""
    result = cross_arch.cross_arch_parity_on_folder(target, path, directory,
                                                    settings["eval-samples"] or 50,
                                                    settings["seed"], settings["max-lsb"])
    json.dump(result, sys.stdout, indent=2)
    print()
    device = result["device"]
    mark = "✓" if result["passed"] else "✗"
    print(f"{mark} {result['identical']}/{result['images']} outputs identical on {device['machine']} "
          f"({'EMULATED: ' + device['emulation'] if device.get('emulated') else device.get('cpu_model')}); "
          f"max difference {result['max_lsb']:g} "
          f"{'LSB' if result['output_dtype'].startswith(('int', 'uint')) else 'ulp'} "
          f"(≤ {result['max_lsb_allowed']:g}), top-1 agreement {result['top1_agreement']:.0%}",
          file=sys.stderr)
    if not result["passed"]:
        raise ParityError("cross-architecture parity failed")


def command():
    cli.define_options(*GROUPS)
    cli.run(main)
