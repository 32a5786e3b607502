"""`python -m pipeline.deploy`: an export into the Android demo app (pipeline.commands.deploy)."""

if __name__ == "__main__":
    from pipeline.commands.deploy import command

    command()
