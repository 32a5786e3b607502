"""`python -m pipeline.calibrate`: the calibration sample alone (pipeline.commands.calibrate)."""

if __name__ == "__main__":
    from pipeline.commands.calibrate import command

    command()
