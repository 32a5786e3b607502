"""The command lines: absl flags → settings → pipeline.api → printed lines and exit codes."""
