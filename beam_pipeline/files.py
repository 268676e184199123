"""File access through Beam's FileSystems, so local paths and gs:// URIs work the same way."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from apache_beam.io.filesystems import FileSystems


def is_remote(path: str) -> bool:
    return "://" in path


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_copy(path: str) -> tuple[str, bool]:
    """A local path holding the file's bytes: the path itself when local, else a temp copy.

    Returns (local path, whether it is a temp copy the caller should delete).
    """
    if not is_remote(path):
        return path, False
    suffix = os.path.splitext(path)[1]
    fd, local = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
        shutil.copyfileobj(src, out, 1 << 20)
    return local, True


def match(patterns: list[str]) -> list[str]:
    """Every file matching any of the patterns, in a stable order; a pattern matching nothing is an error."""
    return list(match_sizes(patterns))


def match_sizes(patterns: list[str]) -> dict[str, int]:
    """``match``, with each file's size in bytes (as stored: compressed files' compressed size)."""
    found: dict[str, int] = {}
    for pattern in patterns:
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for m in sorted(result.metadata_list, key=lambda m: m.path):
            found.setdefault(m.path, m.size_in_bytes)
    return found


def delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)
