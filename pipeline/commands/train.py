"""`python -m pipeline.train --data FOLDER`: your own classes, fine-tuned from Keras' ImageNet
MobileNetV2, ready for `python -m pipeline.export --from-train OUT`."""

from pipeline import api
from pipeline.commands import cli
from pipeline.stages import train


def main(argv):
    run = api.train(train.config_from_settings(cli.settings(train.OPTIONS)),
                    command=cli.command_line())
    print(run.summary_line)
    print("next: " + run.summary["export_command"])


def command():
    cli.define_options(train.OPTIONS)
    cli.run(main)
