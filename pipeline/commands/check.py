"""`python -m pipeline.check --baseline BASELINE.json [export flags]`: the CI gate.

    python -m pipeline.check --baseline ci/baseline.json [export flags]   # export, then gate
    python -m pipeline.check --baseline ci/baseline.json --report OUT/report.json
    python -m pipeline.check --baseline ci/baseline.json --update-baseline [export flags]

Exit 0 pass, 1 a check failed, 2 bad input. What is judged: pipeline.stages.gate.
"""

from pipeline import api
from pipeline.commands import cli
from pipeline.core.errors import ParityError
from pipeline.stages import check
from pipeline.stages.report import machine_line


def main(argv):
    run = api.check(cli.settings(check.OPTIONS), command=cli.command_line())
    if isinstance(run, check.StudyRun):
        for table in run.tables:
            print(table)
        print(f"written to {run.output}")
        return
    if run.recorded:
        print(run.recorded)
        return
    machine = run.report.get("machine")
    if machine:
        print(f"machine: {machine_line(machine)}")
    print(run.identity)
    print("\n".join(r.line() for r in run.results))
    if not run.passed:
        raise ParityError("parity gate failed: " + ", ".join(run.failed))


def command():
    cli.define_options(check.OPTIONS)
    cli.run(main)
