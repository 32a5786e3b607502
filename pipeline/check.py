"""`python -m pipeline.check`: the CI parity gate (pipeline.commands.check)."""

if __name__ == "__main__":
    from pipeline.commands.check import command

    command()
