"""`python -m pipeline.preprocess IMAGE [IMAGE ...]`: the tensor the one preprocessing function
makes of each image (shape, range, checksum)."""

import hashlib

from pipeline.commands import cli
from pipeline.core.errors import PipelineInputError
from pipeline.core.options import option
from pipeline.stages import preprocess

OPTIONS = (option("integer", "resolution", 224, "Model input resolution."),)


def main(argv):
    settings = cli.settings(OPTIONS, preprocess.OPTIONS)
    spec = preprocess.spec_from_settings(settings, settings["resolution"])
    if len(argv) < 2:
        raise PipelineInputError("give images: python -m pipeline.preprocess IMAGE [IMAGE ...]")
    for path in argv[1:]:
        try:
            x = preprocess.preprocess(path, spec)  # an undecodable file raises ImageDecodeError
        except OSError as error:  # the environment's: no such file, no permission, a folder
            raise PipelineInputError(f"cannot preprocess {path}: {error.strerror or error}") from None
        digest = hashlib.sha256(x.tobytes()).hexdigest()[:16]
        print(f"{path}: {x.shape} {x.dtype} min {x.min():.4f} max {x.max():.4f} sha256 {digest}")


def command():
    cli.define_options(OPTIONS, preprocess.OPTIONS)
    cli.run(main, positional=True)
