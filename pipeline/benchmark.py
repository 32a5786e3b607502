"""`python -m pipeline.benchmark`: models timed interleaved (pipeline.commands.benchmark)."""

if __name__ == "__main__":
    from pipeline.commands.benchmark import command

    command()
