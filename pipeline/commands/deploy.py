"""`python -m pipeline.deploy android ARTIFACT_DIR android_demo/`: the model, its labels and its
config into the demo app's assets, after checking that they belong together."""

from pipeline.commands import cli
from pipeline.core.errors import PipelineInputError
from pipeline.stages import deploy


def main(argv):
    if len(argv) != 4 or argv[1] != "android":
        raise PipelineInputError("usage: python -m pipeline.deploy android ARTIFACT_DIR android_demo/")
    assets = deploy.deploy_android(argv[2], argv[3])
    print(f"✓ {', '.join(deploy.FILES)} → {assets}; build with: cd {argv[3]} && ./gradlew assembleDebug")


def command():
    cli.run(main, positional=True)
