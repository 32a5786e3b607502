"""`python -m pipeline.predict OUT/|MODEL.tflite IMAGE|FOLDER [IMAGE|FOLDER ...]`: top-k names and
probabilities, from an export folder (its config frames the images) or a bare model (its metadata
does). A folder gives its images (recursively, as calibration takes a folder); what else it holds is
skipped and named."""

from pipeline import api
from pipeline.commands import cli
from pipeline.core.errors import PipelineInputError
from pipeline.stages import predict

OPTIONS = predict.OPTIONS


def main(argv):
    if len(argv) < 3:
        raise PipelineInputError("give a model and images: python -m pipeline.predict "
                                 "OUT/|MODEL.tflite IMAGE|FOLDER [IMAGE|FOLDER ...]")
    settings = cli.settings(OPTIONS)
    run = api.predict(argv[1], argv[2:], settings["top-k"], settings["threads"])
    classifier = run.classifier
    print(f"{argv[1]}: {classifier.output_kind} out; labels and preprocessing from {classifier.source}")
    for path, reason in run.skipped:
        print(f"– skipped {path}: {reason}")
    for path, top, ms in run.predictions:
        print(f"{path}  ({ms:.1f} ms)")
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")


def command():
    cli.define_options(OPTIONS)
    cli.run(main, positional=True)
