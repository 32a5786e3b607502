"""`python -m pipeline.build`: the float Keras classifier alone (pipeline.commands.build)."""

if __name__ == "__main__":
    from pipeline.commands.build import command

    command()
