"""`python -m pipeline.convert`: Keras → .tflite alone (pipeline.commands.convert)."""

if __name__ == "__main__":
    from pipeline.commands.convert import command

    command()
