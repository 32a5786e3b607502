"""`python -m pipeline.export`: Keras MobileNetV2 → calibrated `.tflite` → parity → report.

    python -m pipeline.export --quantize int8 \\
        --calibration calibration_data/ --eval path/to/labelled/val --output artifacts/mine

Exit codes: 0 done, 1 parity below a threshold (report written), 2 bad input (nothing written).
"""

from pipeline import api
from pipeline.commands import cli
from pipeline.core.errors import ParityError
from pipeline.stages import clients, export, verify


def main(argv):
    result = api.export(cli.settings(export.OPTIONS), command=cli.command_line())
    print(verify.format_checks(result.parity))
    print(clients.format_rows(result.report["clients"]["checked"]))
    print(result.summary)
    if not result.passed:
        raise ParityError("parity check failed (see ✗ above); report written to " + result.output)
    if result.android_demo:
        print(f"✓ copied into {result.android_demo}")


def command():
    cli.define_options(export.OPTIONS)
    cli.run(main)
