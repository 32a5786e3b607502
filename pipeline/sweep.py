"""`python -m pipeline.sweep`: a grid of exports on Ray (pipeline.commands.sweep)."""

if __name__ == "__main__":
    from pipeline.commands.sweep import command

    command()
