"""`python -m pipeline.verify`: parity of a given .tflite, here or on a device (pipeline.commands.verify)."""

if __name__ == "__main__":
    from pipeline.commands.verify import command

    command()
