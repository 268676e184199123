"""File access through Beam's FileSystems, so local paths and gs:// URIs work the same way."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

RAW = CompressionTypes.UNCOMPRESSED  # a model's files are copied byte for byte, whatever their names


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


def is_folder(path: str) -> bool:
    """True for a local directory, or a gs:// prefix that holds objects below it."""
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list)


def exists_file_or_folder(path: str) -> bool:
    return exists(path) or is_folder(path)


def _folder_files(path: str) -> list[str]:
    """Every file below a folder, as paths relative to it, sorted."""
    root = path.rstrip("/")
    if not is_remote(path):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)
    return sorted(m.path[len(root) + 1:] for m in FileSystems.match([root + "/**"])[0].metadata_list)


def sha256_of_file_or_folder(path: str) -> str:
    """sha256 of a file; of a folder, over its files' relative paths and sha256s, in sorted order."""
    if not is_folder(path):
        return sha256_of(path)
    digest = hashlib.sha256()
    root = path.rstrip("/")
    for rel in _folder_files(path):
        digest.update(f"{rel}\0{sha256_of(root + '/' + rel)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def local_file_or_folder(path: str) -> Iterator[str]:
    """A local path holding the file or folder: the path itself when local, else a temp copy
    (a folder is copied file by file), removed on exit."""
    if not is_remote(path):
        yield path
        return
    if not is_folder(path):
        local, _ = local_copy(path)
        try:
            yield local
        finally:
            os.unlink(local)
        return
    temp = tempfile.mkdtemp()
    root = path.rstrip("/")
    local = os.path.join(temp, os.path.basename(root))
    try:
        for rel in _folder_files(path):
            target = os.path.join(local, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out, FileSystems.open(root + "/" + rel, compression_type=RAW) as src:
                shutil.copyfileobj(src, out, 1 << 20)
        yield local
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def match(patterns: list[str]) -> list[str]:
    """Every file matching any of the patterns, in a stable order; a pattern matching nothing is an error."""
    return list(match_sizes(patterns))


def match_sizes(patterns: list[str]) -> dict[str, int]:
    """``match``, with each file's size in bytes (as stored: compressed files' compressed size)."""
    found: dict[str, int] = {}
    for pattern in patterns:
        if any(c in pattern for c in "*?[") and _is_file(pattern):  # a file whose name holds [ ] * ?: itself
            found.setdefault(pattern, os.path.getsize(pattern) if not is_remote(pattern)
                             else FileSystems.get_filesystem(pattern).metadata(pattern).size_in_bytes)
            continue
        result = FileSystems.match([pattern])[0]
        paths = [m for m in result.metadata_list if is_remote(m.path) or not os.path.isdir(m.path)]  # no local dirs
        if not paths:
            if is_folder(pattern):
                raise FileNotFoundError(f"--input {pattern!r} is a folder; name its files ('{pattern.rstrip('/')}/*')")
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for m in sorted(paths, key=lambda m: m.path):
            found.setdefault(os.path.normpath(m.path) if not is_remote(m.path) else m.path, m.size_in_bytes)
    return found


def _is_file(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    try:
        return exists(path) and not path.endswith("/")
    except Exception:  # a pattern some filesystem cannot look up literally
        return False


def delete(paths: list[str]) -> None:
    """Deletes files (and local folders, or ``gs://`` folders given with a trailing ``/``), each path
    taken literally: Beam's local file system would read ``[``, ``*`` and ``?`` as a glob."""
    remote = [p for p in paths if is_remote(p)]
    if remote:
        FileSystems.delete(remote)
    for path in paths:
        if is_remote(path):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
