"""Skips cannot hide: every skip is listed with its reason, and under CI=true one that is not on
tests/expected_skips.txt fails the run (tests/conftest.py)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, expected_skips

PROBE = '''
import pytest

def test_runs():
    pass

def test_needs_something():
    pytest.skip("needs something this machine lacks")
'''


def run_probe(tmp_path, ci, allowed=""):
    (tmp_path / "test_probe.py").write_text(PROBE)
    skips = tmp_path / "expected.txt"
    skips.write_text(allowed)
    env = dict(os.environ, CI=ci, PIPELINE_EXPECTED_SKIPS=str(skips))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull,
                           "--rootdir", str(tmp_path), "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_an_unlisted_skip_fails_a_ci_run_and_every_skip_is_printed(tmp_path):
    ci = run_probe(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "SKIPPED test_probe.py::test_needs_something: needs something this machine lacks" in ci.stdout
    assert "✗ not an expected CI skip" in ci.stdout
    listed = run_probe(tmp_path, "true", "test_probe.py::test_needs_* | the probe's\n")
    assert listed.returncode == 0, listed.stdout[-2000:]
    assert "SKIPPED test_probe.py::test_needs_something" in listed.stdout
    local = run_probe(tmp_path, "false")
    assert local.returncode == 0 and "SKIPPED test_probe.py::test_needs_something" in local.stdout


def test_every_expected_skip_says_why(tmp_path):
    assert all(why for _, why in expected_skips())
    bad = tmp_path / "bad.txt"
    bad.write_text("tests/test_x.py::test_y\n")
    with pytest.raises(ValueError, match="why CI may skip it"):
        expected_skips(bad)
