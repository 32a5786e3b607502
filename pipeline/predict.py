"""`python -m pipeline.predict`: top-k labels of images (pipeline.commands.predict)."""

if __name__ == "__main__":
    from pipeline.commands.predict import command

    command()
