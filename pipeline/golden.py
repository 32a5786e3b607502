"""`python -m pipeline.golden`: golden vectors for the Android core (pipeline.commands.golden)."""

if __name__ == "__main__":
    from pipeline.commands.golden import command

    command()
