"""`python -m pipeline.diagnose`: per-layer quantization error (pipeline.commands.diagnose)."""

if __name__ == "__main__":
    from pipeline.commands.diagnose import command

    command()
