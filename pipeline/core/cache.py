"""Work done once: a content-addressed cache of what an export would otherwise redo.

An entry's key is the sha256 of everything its content depends on (a model's weights and graph,
the images' bytes, the settings, the library versions), so a changed input is a new key and an
entry is never stale, only unused. What is kept (issue 13):

- `float-tflite`: the float conversion of a Keras model (≈9 s at 224);
- `calibrated`: a float `.tflite` annotated with calibrated activation ranges, min/max or
  percentile-clipped (≈13 s for 300 images at 224);
- `float-reference`: the float model's outputs on an evaluation set, with the Keras check (the float
  half of parity, ≈30 CPU-s on 3,925 images at 224);
- `digests`: image folders' content hashes, looked up by names, sizes and modification times, so
  unchanged folders are not read again.

An entry is one file: the sha256 of its payload on the first line, then the payload. A truncated
or edited entry fails that check and is rebuilt, with one line on stderr that says so; it is never
trusted. Entries are written atomically (temp file + rename), so a killed run leaves no partial
entry, and concurrent runs that make the same entry write the same bytes.

Where: `--cache-dir`, else `$TFLITE_PIPELINE_CACHE`, else `$XDG_CACHE_HOME/tflite-pipeline`
(`~/.cache/tflite-pipeline`), like Keras' own cache under `~/.keras`. `--no-cache` turns it off.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError

# Bumped when an entry's format or the work behind a kind changes: old entries are then unused.
FORMAT = 1


def default_dir():
    if os.environ.get("TFLITE_PIPELINE_CACHE"):
        return Path(os.environ["TFLITE_PIPELINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tflite-pipeline"


def key(*parts):
    """sha256 of the parts as canonical JSON: equal parts, equal key."""
    text = json.dumps([FORMAT, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Cache:
    """A cache folder (None: disabled) and what this run took from it, made or rebuilt."""

    root: Path = None
    events: list = dataclasses.field(default_factory=list)  # [(kind, "hit" | "made" | "rebuilt", what)]
    damaged: set = dataclasses.field(default_factory=set)  # (kind, key) found corrupt this run

    @staticmethod
    def warn(line):
        print(line, file=sys.stderr, flush=True)

    @property
    def enabled(self):
        return self.root is not None

    def _path(self, kind, entry_key):
        return self.root / kind / entry_key[:2] / entry_key

    def read(self, kind, entry_key):
        """The payload stored under the key, or None (absent, disabled, or corrupt: then warned)."""
        if not self.enabled:
            return None
        path = self._path(kind, entry_key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            self.warn(f"cache: cannot read {path} ({error.strerror}); rebuilding it")
            self.damaged.add((kind, entry_key))
            return None
        digest, _, payload = data.partition(b"\n")
        with contextlib.suppress(OSError):
            os.utime(path)  # an entry's mtime is its last use: what pruning by age goes by
        if digest.decode("ascii", "replace") != sha256(payload):
            self.warn(f"cache: {kind} entry {path} is corrupt (its sha256 does not match: truncated "
                      "or edited); rebuilding it")
            self.damaged.add((kind, entry_key))
            return None
        return payload

    def write(self, kind, entry_key, payload):
        """Stores the payload (atomically); a cache that cannot be written is warned about, once,
        and the run goes on without it: a cache is never a reason to fail an export."""
        if not self.enabled:
            return
        path = self._path(kind, entry_key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(sha256(payload).encode() + b"\n")
                    f.write(payload)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as error:
            self.warn(f"cache: cannot write {self.root} ({error.strerror}); continuing without it")
            self.root = None

    def lookup(self, kind, entry_key, what, decode=lambda x: x):
        """The decoded value under the key, recorded as a hit; None when absent, disabled, damaged
        or undecodable (the last two warned about, and rebuilt by the caller's `put`)."""
        payload = self.read(kind, entry_key)
        if payload is None:
            return None
        try:
            value = decode(payload)
        except Exception as error:  # a payload whose hash matches but does not decode: a bug
            self.warn(f"cache: {kind} entry {self._path(kind, entry_key)} does not decode "
                      f"({type(error).__name__}); rebuilding it")
            self.damaged.add((kind, entry_key))
            return None
        self.events.append((kind, "hit", what))
        return value

    def get(self, kind, entry_key, make, what, encode=lambda x: x, decode=lambda x: x):
        """The cached value under the key, else `make()` stored and returned. `what` names the
        entry for the report ("float .tflite", "float reference on 3925 images")."""
        value = self.lookup(kind, entry_key, what, decode)
        if value is None:
            value = make()
            self.put(kind, entry_key, encode(value), what)
        return value

    def put(self, kind, entry_key, payload, what):
        """Stores work just done, recorded as made (or rebuilt, if its entry was found damaged)."""
        self.write(kind, entry_key, payload)
        if self.enabled or (kind, entry_key) in self.damaged:
            state = "rebuilt" if (kind, entry_key) in self.damaged else "made"
            self.events.append((kind, state, what))

    def summary(self):
        """For the report: where, and what each cached piece of work was this run."""
        return {
            "dir": str(self.root) if self.root is not None else None,
            "entries": [{"kind": k, "state": s, "what": w} for k, s, w in self.events],
        }


def encode_arrays(**arrays):
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # uncompressed: float logits barely compress, and this is faster
    return buffer.getvalue()


def decode_arrays(payload):
    import numpy as np

    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def files_digest(store, paths, digest_files):
    """`digest_files(paths)` (a content hash of the files), looked up first by the files' names,
    sizes and modification times: the contents are read only when one of those changed."""
    if not store.enabled:
        return digest_files(paths)
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return digest_files(paths)  # let the content reader raise its own error
        stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino])
    entry_key = key("digest", getattr(digest_files, "__qualname__", str(digest_files)), stats)
    payload = store.read("digests", entry_key)
    if payload is not None:
        return payload.decode()
    digest = digest_files(paths)
    store.write("digests", entry_key, digest.encode())
    return digest


# --- Keeping it bounded ----------------------------------------------------------------------------
# Keys change with every input, so nothing here is ever stale, only unused: an entry's last use is
# its mtime (a hit touches it). `prune` removes entries unused for longer than an age, then the
# least recently used until the folder fits a size; what a killed run left (.tmp- files) goes too.

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text, flag="--max-size"):
    """'500MB', '5GB', '2GiB', '1000' (bytes) → bytes."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not found or found.group(2).upper() not in UNITS:
        raise PipelineInputError(f"{flag} {text!r} is not a size: write e.g. 500MB or 5GB")
    return int(float(found.group(1)) * UNITS[found.group(2).upper()])


def parse_age(text, flag="--older-than"):
    """'30d', '12h', '90m', '2w' → seconds."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not found:
        raise PipelineInputError(f"{flag} {text!r} is not an age: write e.g. 30d, 12h or 90m")
    return float(found.group(1)) * DURATIONS[found.group(2)]


@dataclasses.dataclass
class Entry:
    kind: str
    path: Path
    size: int
    last_used: float  # seconds since the epoch


def entries(root):
    """Every entry under `root` (and leftovers of killed writes, kind '.tmp'), oldest use first."""
    found = []
    root = Path(root)
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            kind = ".tmp" if path.name.startswith(".tmp-") else path.relative_to(root).parts[0]
            found.append(Entry(kind, path, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda e: (e.last_used, str(e.path)))


@dataclasses.dataclass
class PruneResult:
    removed: list  # [Entry]
    kept: list  # [Entry]
    dry_run: bool = False

    @property
    def freed(self):
        return sum(e.size for e in self.removed)

    def usage(self):
        """{kind: (entries, bytes)} of what is kept."""
        by_kind = {}
        for entry in self.kept:
            count, size = by_kind.get(entry.kind, (0, 0))
            by_kind[entry.kind] = (count + 1, size + entry.size)
        return dict(sorted(by_kind.items()))


def prune(root, older_than_s=None, max_bytes=None, dry_run=False, now=None):
    """Removes the entries of the cache at `root` not used for `older_than_s` seconds, then the
    least recently used until the rest fits in `max_bytes`; leftovers of killed writes older than
    an hour always. Nothing given: nothing removed (a listing). Returns a PruneResult."""
    import time

    now = time.time() if now is None else now
    kept, removed = [], []
    for entry in entries(root):
        age = now - entry.last_used
        stale = older_than_s is not None and age > older_than_s
        leftover = entry.kind == ".tmp" and age > 3600
        (removed if stale or leftover else kept).append(entry)
    if max_bytes is not None:
        total = sum(e.size for e in kept)
        while kept and total > max_bytes:
            oldest = kept.pop(0)
            removed.append(oldest)
            total -= oldest.size
    if not dry_run:
        for entry in removed:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        for folder in sorted((p for p in Path(root).rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only the empty ones go
    return PruneResult(removed, kept, dry_run)


OPTIONS = (
    option("string", "cache-dir", None,
           "Cache folder for work an export would redo: float conversion, calibration, the float "
           "model's outputs on the eval set (default $TFLITE_PIPELINE_CACHE, else "
           "~/.cache/tflite-pipeline)."),
    option("bool", "no-cache", False, "Do everything again and store nothing in the cache."),
)


def from_settings(settings):
    if settings["no-cache"]:
        return Cache(None)
    root = Path(settings["cache-dir"]) if settings["cache-dir"] else default_dir()
    if root.exists() and not root.is_dir():
        raise PipelineInputError(f"--cache-dir {root} is a file, not a folder: pass a folder path "
                                 "or --no-cache")
    return Cache(root)


PRUNE_OPTIONS = (
    OPTIONS[0],
    option("string", "older-than", None,
           "Remove entries not used for this long (30d, 12h, 90m)."),
    option("string", "max-size", None,
           "Then remove the least recently used until the cache fits in this (500MB, 5GB)."),
    option("bool", "dry-run", False, "Say what would be removed; remove nothing."),
    option("string", "sweep", None,
           "Also prune this sweep folder: remove cells/<cell>/ its sweep.json does not reference "
           "(an earlier grid's cells, cells whose inputs changed)."),
)
