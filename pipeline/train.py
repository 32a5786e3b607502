"""`python -m pipeline.train`: your own classes, fine-tuned (pipeline.commands.train)."""

if __name__ == "__main__":
    from pipeline.commands.train import command

    command()
