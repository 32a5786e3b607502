"""`python -m pipeline.inspect`: a .tflite's contract (pipeline.commands.inspect)."""

if __name__ == "__main__":
    from pipeline.commands.inspect import command

    command()
