"""Content digests of files: one hasher for every place that says which bytes a result came from
(weights, calibration and evaluation images, a sweep's inputs, per-image results)."""

import hashlib
import os
from pathlib import Path


def file_sha256(path):
    """sha256 of one file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(paths, digits=16):
    """The first `digits` hex digits of each file's sha256: which image a per-image result is."""
    return [file_sha256(path)[:digits] for path in paths]


def files_sha256(paths):
    """sha256 of a list of files: each one's name (not its folder) and content digest, in order —
    the same images in another folder give the same digest."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def tree_sha256(paths):
    """sha256 of files under one root (`paths[0]`), by path relative to it and content: a folder's
    digest, whatever folder it sits in."""
    root, files = Path(paths[0]), paths[1:]
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, root).encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()
