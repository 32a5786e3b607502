"""`python -m pipeline.cache`: the export cache listed and pruned (pipeline.commands.cache)."""

if __name__ == "__main__":
    from pipeline.commands.cache import command

    command()
