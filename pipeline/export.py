"""`python -m pipeline.export`: Keras MobileNetV2 → calibrated .tflite → parity → report (pipeline.commands.export)."""

if __name__ == "__main__":
    from pipeline.commands.export import command

    command()
