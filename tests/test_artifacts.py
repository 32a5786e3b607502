"""Artifacts are replaced as one set: failures, SIGKILL, a full disk and concurrent writers never
leave a mix of two runs. Real processes, real signals, a real (tmpfs) full disk."""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core import artifacts
from pipeline.core.errors import PipelineInputError
from tests.conftest import REPO


def _digest(folder):
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_write_replaces_all_files_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    artifacts.write_files_atomically(out, {"a.txt": "one", "b.bin": b"\x00\x01"})
    artifacts.write_files_atomically(out, {"a.txt": "two", "b.bin": b"\x02"})
    assert (out / "a.txt").read_text() == "two" and (out / "b.bin").read_bytes() == b"\x02"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_written_files_and_folders_get_the_usual_permissions(tmp_path):
    # Staging is private (mkdtemp, mkstemp); what lands must not be.
    os.umask(0o022)
    artifacts.write_files_atomically(tmp_path / "out", {"a.txt": "one"})
    artifacts.write_files_atomically(tmp_path / "model.tflite", {"": b"m"})
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model.tflite").stat().st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "model.tflite", 0o640)
    artifacts.write_files_atomically(tmp_path / "model.tflite", {"": b"m2"})
    assert (tmp_path / "model.tflite").stat().st_mode & 0o777 == 0o640


def test_other_entries_of_the_folder_are_kept(tmp_path):
    out = tmp_path / "out"
    artifacts.write_files_atomically(out, {"a.txt": "one", "sub/x.txt": "x1"})
    (out / "notes.md").write_text("mine")
    (out / "sub" / "y.txt").write_text("mine too")
    (out / "keep").mkdir()
    (out / "keep" / "deep.txt").write_text("deep")
    os.symlink("a.txt", out / "link")
    artifacts.write_files_atomically(out, {"a.txt": "two", "sub/x.txt": "x2"})
    assert _digest(out) == _digest_of({"a.txt": "two", "sub/x.txt": "x2", "notes.md": "mine",
                                       "sub/y.txt": "mine too", "keep/deep.txt": "deep",
                                       "link": "two"})
    assert os.readlink(out / "link") == "a.txt"


def _digest_of(files):
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(files.items())}


def test_failed_write_leaves_previous_files(tmp_path):
    out = tmp_path / "out"
    artifacts.write_files_atomically(out, {"a.txt": "old", "b.txt": "old"})
    with pytest.raises(TypeError):
        # The second file cannot be serialized: nothing may be replaced, nothing staged may remain.
        artifacts.write_files_atomically(out, {"a.txt": "new", "b.txt": 12345})
    assert (out / "a.txt").read_text() == "old" and (out / "b.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_single_file_target(tmp_path):
    target = tmp_path / "model.tflite"
    artifacts.write_files_atomically(target, {"": b"model"})
    artifacts.write_files_atomically(target, {"": b"model 2"})
    assert target.read_bytes() == b"model 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_a_symlinked_output_folder_stays_a_symlink(tmp_path):
    real = tmp_path / "real"
    artifacts.write_files_atomically(real, {"a.txt": "one"})
    (tmp_path / "link").symlink_to(real)
    artifacts.write_files_atomically(tmp_path / "link", {"a.txt": "two"})
    assert (tmp_path / "link").is_symlink() and (real / "a.txt").read_text() == "two"


def test_check_writable_refuses_files_and_unwritable_places(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PipelineInputError, match="is a file"):
        artifacts.check_writable(blocker)
    with pytest.raises(PipelineInputError, match="is a file"):
        artifacts.check_writable(blocker / "sub" / "out")
    with pytest.raises(PipelineInputError, match="not writable"):
        artifacts.check_writable("/proc/pipeline-test-out")
    artifacts.check_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the check creates nothing


# --- SIGKILL at every step of a write -------------------------------------------------------------

# A real writer process that kills itself with SIGKILL when it reaches `step`: inside the staging
# writes, after staging and before the swap, right after the swap (before the old set is removed).
_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pipeline.core import artifacts

    out, step = sys.argv[1], sys.argv[2]
    new = {f"file{i}.txt": f"new {i}\\n" * 1000 for i in range(6)}
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if step == "staging":
        real = artifacts._write_file
        count = []
        def write(path, content):
            count.append(path)
            if len(count) == 3:
                die()
            real(path, content)
        artifacts._write_file = write
    elif step == "before-swap":
        real = artifacts.exchange
        artifacts.exchange = lambda a, b: die()
    elif step == "after-swap":
        real = artifacts.exchange
        def exchange(a, b):
            real(a, b)
            die()
        artifacts.exchange = exchange
    artifacts.write_files_atomically(out, new)
""")


@pytest.mark.parametrize("step", ["staging", "before-swap", "after-swap"])
def test_sigkill_at_any_step_leaves_one_whole_set_and_the_next_write_cleans_up(tmp_path, step):
    out = tmp_path / "out"
    old = {f"file{i}.txt": f"old {i}\n" for i in range(6)}
    artifacts.write_files_atomically(out, old)
    before = _digest(out)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out), step], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after = _digest(out)
    new = _digest_of({f"file{i}.txt": f"new {i}\n" * 1000 for i in range(6)})
    assert after == (new if step == "after-swap" else before)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers and all(artifacts.STAGING_MARK in name for name in leftovers)
    # The next write into OUT removes what the killed writer left (no live process holds it).
    artifacts.write_files_atomically(out, {"file0.txt": "third"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_killed_single_file_write_is_cleaned_up_by_the_next(tmp_path):
    target = tmp_path / "baseline.json"
    artifacts.write_files_atomically(target, {"": "old"})
    script = ("import os, signal, sys; from pipeline.core import artifacts; "
              "artifacts.os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL); "
              "artifacts.write_files_atomically(sys.argv[1], {'': 'new'})")
    killed = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 2
    artifacts.write_files_atomically(target, {"": "third"})
    assert target.read_text() == "third" and [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_a_live_writers_staging_folder_is_not_removed(tmp_path):
    out = tmp_path / "out"
    artifacts.write_files_atomically(out, {"a.txt": "one"})
    staging = tmp_path / f".out{artifacts.STAGING_MARK}live"
    staging.mkdir()
    with artifacts._locked(staging):
        artifacts.write_files_atomically(out, {"a.txt": "two"})
        assert staging.is_dir()
    artifacts.write_files_atomically(out, {"a.txt": "three"})
    assert not staging.exists()


# --- concurrent writers ---------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from pipeline.core import artifacts

    out, tag = sys.argv[1], sys.argv[2]
    for round in range(25):
        payload = f"{tag} {round}\\n" * 20000
        artifacts.write_files_atomically(out, {"model.bin": payload, "report.txt": payload[:40]})
""")


def _read_as_one_set(folder, *names):
    # What an app does that opens its model folder once: every file is read through that handle,
    # so it is one set even if a new one is swapped in meanwhile (FileNotFoundError: the old set
    # was removed before its files were opened; read again).
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        texts = []
        for name in names:
            with open(os.open(name, os.O_RDONLY, dir_fd=fd), encoding="utf-8") as f:
                texts.append(f.read())
        return texts
    finally:
        os.close(fd)


def test_concurrent_writers_never_mix_their_files(tmp_path):
    out = tmp_path / "out"
    artifacts.write_files_atomically(out, {"model.bin": "start", "report.txt": "start"})
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(out), tag], cwd=REPO)
               for tag in ("A", "B")]
    seen = 0
    while any(w.poll() is None for w in writers):
        with contextlib.suppress(FileNotFoundError):
            model, report_text = _read_as_one_set(out, "model.bin", "report.txt")
            # A reader never sees one writer's model beside another's (or another round's) report.
            if model != "start":
                assert model[:40] == report_text, (model[:40], report_text)
            seen += 1
    assert [w.wait() for w in writers] == [0, 0]
    assert seen > 10
    model, report_text = (out / "model.bin").read_text(), (out / "report.txt").read_text()
    assert model[:40] == report_text and model.split()[1] == "24"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- a full disk ----------------------------------------------------------------------------------

@contextlib.contextmanager
def small_tmpfs(path, size="4m"):
    """A real tmpfs of `size` (needs root, as in CI); skips where mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); CI runs as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk, leave_bytes):
    """Fills the filesystem of `disk` until about `leave_bytes` are free."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))


def test_disk_full_while_staging_leaves_the_previous_set_and_says_so(tmp_path):
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "out"
        artifacts.write_files_atomically(out, {"a.bin": b"old" * 1000, "b.txt": "old"})
        before = _digest(out)
        fill(disk, 64 * 1024)
        with pytest.raises(PipelineInputError, match="no space left") as raised:
            artifacts.write_files_atomically(out, {"a.bin": b"n" * 300_000, "b.txt": "new"})
        assert str(out) in str(raised.value) and "\n" not in str(raised.value)
        assert _digest(out) == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "out"]
