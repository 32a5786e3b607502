"""`mobilenet-pipeline COMMAND [--flags]`: every `python -m pipeline.COMMAND` as one installed
command with sub-commands (the way `yolo export …` and `optimum-cli export …` work).

    mobilenet-pipeline export --quantize int8 --calibration calibration_data/ --output artifacts/mine
    mobilenet-pipeline check --help

The sub-command runs exactly what `python -m pipeline.COMMAND` runs, with the same flags, output
and exit codes; reports record it as that `python -m` line, which is what it is.
"""

import ast
import importlib
import sys
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent


def commands():
    """{name: one-line description}, from the `python -m pipeline.NAME` shims' docstrings (read,
    not imported: listing the commands costs nothing)."""
    found = {}
    for shim in sorted(PACKAGE.glob("*.py")):
        doc = ast.get_docstring(ast.parse(shim.read_text())) or ""
        if doc.startswith(f"`python -m pipeline.{shim.stem}`:"):
            found[shim.stem] = doc.split(":", 1)[1].strip().rsplit(" (pipeline.commands.", 1)[0]
    return found


def usage(found):
    width = max(map(len, found))
    return ("usage: mobilenet-pipeline COMMAND [--flags]   (COMMAND --help for its flags)\n\n"
            + "\n".join(f"  {name:<{width}}  {text}" for name, text in found.items()))


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    found = commands()
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage(found))
        return 0
    name = argv[1]
    if name not in found:
        print(f"error: unknown command {name!r}\n\n{usage(found)}", file=sys.stderr)
        return 2
    # As `python -m pipeline.NAME` would run it: argv[0] is the shim's file, which is what absl
    # lists the key flags of and what the report's command line is read from.
    sys.argv = [str(PACKAGE / f"{name}.py")] + argv[2:]
    importlib.import_module(f"pipeline.commands.{name}").command()
    return 0


if __name__ == "__main__":
    sys.exit(main())
