"""`python -m pipeline.compare`: MobileNet variants side by side (pipeline.commands.compare)."""

if __name__ == "__main__":
    from pipeline.commands.compare import command

    command()
