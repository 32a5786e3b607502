"""`python -m pipeline.sweep [export flags, once or as comma lists] --output SWEEP/`: a grid of
exports on Ray and its Pareto frontier (pipeline.stages.sweep).

    python -m pipeline.sweep --alpha 0.35,0.5,0.75,1.0 --resolution 96,128,160,224 \\
        --quantize int8,float16,none --calibration DIR --eval DIR --output SWEEP/ [--workers N]

Every export flag may be given once (all cells get it) or as a comma list of values: one axis of
the grid; a flag whose one value is itself a comma list (--keep-float, list flags) separates its
alternatives with ';'. Exit codes: 0 every cell finished, 1 a cell failed or missed its parity
thresholds (all written), 2 bad input (nothing written), 130 interrupted (finished cells kept).
"""

import shlex
import sys

from pipeline import api
from pipeline.commands import cli
from pipeline.core.errors import PipelineInputError
from pipeline.stages import sweep

ABSL_FLAGS = ("help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok")


def split_argv(argv):
    """(the sweep's own argv for absl, [(export flag, raw value)]); raises PipelineInputError for a
    flag no export or sweep knows."""
    options = {o.name: o for o in sweep.OPTIONS}
    own_names = {o.name for o in sweep.OWN_OPTIONS}
    own, export_args = [argv[0]], []
    index = 1
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("-") or token in ("-", "--"):
            raise PipelineInputError(f"unexpected argument {token!r}: all inputs of pipeline.sweep "
                                     "are --flags (see --help)")
        name, has_value, value = token.lstrip("-").partition("=")
        known = set(options) | set(sweep.REFUSED) | set(ABSL_FLAGS)
        base = name[2:] if name not in known and name.startswith("no") and name[2:] in known else name
        if base not in known:
            raise PipelineInputError(f"unknown flag --{name}: pass pipeline.sweep's flags or "
                                     "pipeline.export's (see --help)")
        boolean = base in options and options[base].kind == "bool"
        if base in own_names or base in ABSL_FLAGS:
            own.append(token)
            if not has_value and not boolean and base not in ABSL_FLAGS and index < len(argv):
                own.append(argv[index])
                index += 1
            continue
        if base in sweep.REFUSED:
            raise PipelineInputError(f"--{base} is not a cell flag: {sweep.REFUSED[base]}")
        if boolean and not has_value:
            value = "false" if base != name else "true"
        elif not has_value:
            if index >= len(argv):
                raise PipelineInputError(f"--{name} needs a value")
            value = argv[index]
            index += 1
        export_args.append((base, value))
    return own, export_args


_EXPORT_ARGS = []


def _parse_flags(argv):
    try:
        own, export_args = split_argv(argv)
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    _EXPORT_ARGS[:] = export_args
    return cli.parse_flags(own)


def main(argv):
    cfg, cells = sweep.prepare(cli.settings(sweep.OWN_OPTIONS), _EXPORT_ARGS)
    command = shlex.join(["python", "-m", "pipeline.sweep", *sys.argv[1:]])
    try:
        run = sweep.run(cfg, cells, command, api.export_to_memory,
                        lambda line: print(line, file=sys.stderr, flush=True))
    except sweep.Interrupted as stopped:
        print(f"interrupted: {stopped.kept} of {stopped.total} cells are finished and kept in "
              f"{stopped.output}/cells; run the same command to go on", file=sys.stderr)
        sys.exit(130)
    for r in run.failed:
        print(f"✗ {r.cell.name}: {r.error}")
    print(run.summary_line)
    if not run.passed:
        sys.exit(1)


def command():
    # The sweep's own flags first (--output is the sweep folder); the export's are defined for
    # --help, and reach the grid through split_argv, never absl.
    cli.define_options(sweep.OPTIONS)
    cli.run(main, flags_parser=_parse_flags)
