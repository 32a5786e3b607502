"""`mobilenet-pipeline COMMAND …` (setup.py's console script) runs the same thing as
`python -m pipeline.COMMAND …`."""

import subprocess
import sys

from tests.conftest import REPO, run_cli


def console(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.commands.main", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_lists_every_python_m_command_and_refuses_an_unknown_one():
    shims = sorted(p.stem for p in (REPO / "pipeline").glob("*.py")
                   if p.stem not in ("__init__", "api"))
    listed = console()
    assert listed.returncode == 0
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()) == shims
    unknown = console("exprot", "--quantize", "int8")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unknown command 'exprot'")


def test_a_sub_command_gives_what_python_m_gives(small_int8, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(small_int8.tflite)
    direct = run_cli("inspect", model, "--json")
    through = console("inspect", model, "--json")
    assert direct.returncode == through.returncode == 0, through.stderr[-2000:]
    assert through.stdout == direct.stdout and '"inputs"' in direct.stdout
    bad = console("inspect", tmp_path / "missing.tflite")
    assert bad.returncode == run_cli("inspect", tmp_path / "missing.tflite").returncode == 2
