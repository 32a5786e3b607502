"""Typed errors. Each carries the exit code the command line ends with.

A `PipelineInputError` is the user's to fix (a file, a flag): the CLI prints its message as one line
and exits 2 without writing anything. A `ParityError` means the export worked but the quantized model
is too far from the float one: the report is written first, then the CLI exits 1.
"""


class PipelineError(Exception):
    exit_code = 2


class PipelineInputError(PipelineError):
    """Bad input: what is wrong, which file, what to do. Exit code 2."""

    exit_code = 2


class ParityError(PipelineError):
    """The quantized model failed a parity threshold. Exit code 1 (after the report is written)."""

    exit_code = 1
