"""`python -m pipeline.analyze`: MobileNetV2's block structure (pipeline.commands.analyze)."""

if __name__ == "__main__":
    from pipeline.commands.analyze import command

    command()
