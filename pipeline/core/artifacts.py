"""Outputs written so that a reader never sees a mix of two runs, whatever happens to the writer.

A folder of artifacts (OUT/model.tflite beside OUT/report.json, or an app's assets) is replaced as
one: every new file is written and fsynced in a staging folder beside OUT, the entries of OUT this
write does not replace are hard-linked into it, and the staging folder is then swapped with OUT in
one atomic rename (Linux `renameat2(RENAME_EXCHANGE)`). So at every instant OUT is either the
previous set or the new one:

- a failure while staging (disk full, a file that cannot be serialized, Ctrl-C) removes the staging
  folder and leaves OUT untouched;
- SIGKILL at any moment leaves OUT complete, plus at most a hidden `.OUT.partial-*` folder beside
  it, which the next write into OUT removes (it knows the folder is orphaned because no live
  process holds its lock: flock locks die with their process);
- concurrent writers into the same OUT commit one after the other under a lock on OUT's parent
  folder, so the last one wins whole.

Where the exchange is not available (another OS, a filesystem without it) files are os.replace'd one
by one under the same lock: each file is still whole, the set may briefly mix.
"""

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.core.errors import PipelineInputError

STAGING_MARK = ".partial-"


def _nearest_existing(path):
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(out_dir):
    """Fails early (before any work) when OUT cannot be written; creates nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineInputError(f"--output {out_dir} is a file, not a folder: pass a folder path")
    existing = _nearest_existing(out_dir)
    if not existing.is_dir():
        raise PipelineInputError(
            f"--output {out_dir} cannot be created: {existing} is a file; pass a folder path"
        )
    # os.access answers for root too on read-only mounts (EROFS) but not for special filesystems;
    # a probe folder, removed at once, is the only honest check.
    try:
        probe = tempfile.mkdtemp(prefix=".write-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as error:
        raise PipelineInputError(
            f"--output {out_dir} is not writable ({existing}: {error.strerror}): pass a folder you "
            "can write to"
        ) from None


def check_writable_file(path, flag):
    """Fails before any work when the file `flag` names cannot be written; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise PipelineInputError(f"{flag} {path} is a folder: pass a file path")
    try:
        check_writable(path.parent)
    except PipelineInputError:
        raise PipelineInputError(f"{flag} {path} cannot be written: {path.parent} is not a folder "
                                 "you can write to; pass a file path in one") from None


def _write_error(target, error):
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device"
        fix = "free some space or pass another --output"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"not writable ({error.strerror})"
        fix = "pass a folder you can write to"
    else:
        what = error.strerror or str(error)
        fix = "check the folder and try again"
    return PipelineInputError(f"cannot write {target}: {what}; {fix} (previous files left as they were)")


# --- the atomic swap ------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    # Python exposes no renameat2; glibc has had it since 2.28 (2018).
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def exchange(a, b):
    """Atomically swaps two paths (both must exist). OSError(ENOSYS/EINVAL) where unsupported."""
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a))
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


@contextlib.contextmanager
def _locked(path, mode=fcntl.LOCK_EX):
    """An flock on a folder: held until the block ends or the process dies."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a folder we may write but not read: no lock, the rename is still atomic
        yield None
        return
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_orphaned_staging(parent, name):
    """Removes staging folders and files of `name` left by writers that died (SIGKILL, power loss)."""
    for entry in Path(parent).glob(f".{name}{STAGING_MARK}*"):
        if entry.is_symlink():
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir() else 0))
        except OSError:
            continue
        try:
            # A live writer holds its staging entry's lock; a dead one's is gone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        finally:
            os.close(fd)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _link_tree(source, destination):
    """Hard links `source` (a file or a folder tree) to `destination`: no data is copied."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=os.link)
    elif source.is_symlink():
        os.symlink(os.readlink(source), destination)
    else:
        os.link(source, destination)


def _write_file(path, content):
    data = content.encode("utf-8") if isinstance(content, str) else content
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{path.name}: content must be str or bytes, not {type(content).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_files_atomically(out_dir, files):
    """Writes {name: bytes|str} into folder `out_dir`, all of them or none (see the module doc).

    Names may hold "/" (files in sub-folders). Entries of `out_dir` not named are kept. With the
    single name "" the file is `out_dir` itself (a file path), replaced with one os.replace.
    """
    out_dir = Path(os.path.realpath(out_dir))  # a symlinked OUT stays a symlink; its target is swapped
    single = list(files) == [""]
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(parent, error) from None
    if single:
        _write_single(out_dir, files[""])
        return
    with _locked(parent):
        _remove_orphaned_staging(parent, out_dir.name)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{STAGING_MARK}", dir=parent))
    except OSError as error:
        raise _write_error(out_dir, error) from None
    try:
        with _locked(staging):  # marks the staging folder as live (see _remove_orphaned_staging)
            try:
                for name, content in files.items():
                    _write_file(staging / name, content)
            except OSError as error:
                raise _write_error(out_dir, error) from None
            with _locked(parent):
                _commit(staging, out_dir, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _carry_over(out_dir, staging):
    """Hard-links into `staging` every entry of `out_dir` this write does not replace."""
    for entry in out_dir.iterdir():
        target = staging / entry.name
        if not (target.exists() or target.is_symlink()):
            _link_tree(entry, target)
        elif entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _carry_over(entry, target)  # a sub-folder this write adds files to


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _commit(staging, out_dir, files):
    if not out_dir.exists():
        # mkdtemp makes the staging folder private (0700); the artifacts are not.
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, out_dir)
        _fsync_dir(out_dir.parent)
        return
    if not out_dir.is_dir():
        raise PipelineInputError(f"--output {out_dir} is a file, not a folder: pass a folder path")
    try:
        _carry_over(out_dir, staging)
        os.chmod(staging, out_dir.stat().st_mode & 0o7777)
        exchange(staging, out_dir)
    except OSError as error:
        if error.errno in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.EPERM, errno.EBUSY,
                           errno.EMLINK, errno.ENOTSUP):
            _replace_one_by_one(staging, out_dir, files)
            return
        raise _write_error(out_dir, error) from None
    _fsync_dir(out_dir.parent)


def _replace_one_by_one(staging, out_dir, files):
    try:
        for name in files:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out_dir / name)
    except OSError as error:
        raise _write_error(out_dir, error) from None
    _fsync_dir(out_dir)


def _write_single(path, content):
    with _locked(path.parent):
        _remove_orphaned_staging(path.parent, path.name)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}{STAGING_MARK}", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # live (see _remove_orphaned_staging)
        try:
            _write_file(Path(temporary), content)
            # mkstemp makes the file private (0600); keep the mode of the file it replaces.
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except OSError as error:
            raise _write_error(path, error) from None
        _fsync_dir(path.parent)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
