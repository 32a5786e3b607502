"""`python -m pipeline.preprocess`: the one preprocessing function on images (pipeline.commands.preprocess)."""

if __name__ == "__main__":
    from pipeline.commands.preprocess import command

    command()
