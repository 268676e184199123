"""Reading a previous output's row groups with every page checked against its CRC-32 checksum.

The job writes Parquet page checksums (``write_page_checksum``); pyarrow verifies those of the pages it
decodes (``page_checksum_verification``), but passes a page that has none. ``read_checked`` therefore
also walks the page headers of each column chunk (Thrift compact protocol: ``PageHeader`` fields 3,
``compressed_page_size``, and 4, ``crc``) and requires a CRC on every page. The columns a caller does not
need decoded (the vectors, when only the keys are wanted) are verified on their raw bytes, without
decompressing them: ``zlib.crc32`` of each page's data against its header's CRC, as the format defines it.
"""

from __future__ import annotations

import zlib

import pyarrow as pa

# Thrift compact protocol type codes (the low nibble of a field header).
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)


class PageError(ValueError):
    """A page that fails its checksum, has none, or whose header cannot be read."""


class _Short(PageError):
    """A page header that runs past the bytes given (past the column chunk, or past a window of it)."""


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if at >= len(buf):
            raise _Short("a page header runs past the column chunk")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise PageError("a malformed varint in a page header")


def _skip(buf: bytes, at: int, kind: int, depth: int = 0) -> int:
    """Past one value of Thrift compact type ``kind`` at ``at``."""
    if depth > 16:
        raise PageError("a page header nested too deep")
    if kind in (_TRUE, _FALSE):
        return at
    if kind == _BYTE:
        return at + 1
    if kind in (_I16, _I32, _I64):
        return _varint(buf, at)[1]
    if kind == _DOUBLE:
        return at + 8
    if kind == _BINARY:
        size, at = _varint(buf, at)
        return at + size
    if kind in (_LIST, _SET):
        header = buf[at]
        at += 1
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size, at = _varint(buf, at)
        for _ in range(size):
            at = at + 1 if element in (_TRUE, _FALSE) else _skip(buf, at, element, depth + 1)
        return at
    if kind == _MAP:
        size, at = _varint(buf, at)
        if size:
            types = buf[at]
            at += 1
            for _ in range(size):
                at = _skip(buf, at, types >> 4, depth + 1)
                at = _skip(buf, at, types & 0x0F, depth + 1)
        return at
    if kind == _STRUCT:
        return _struct(buf, at, depth + 1)[1]
    raise PageError(f"an unknown Thrift type {kind} in a page header")


def _struct(buf: bytes, at: int, depth: int = 0, last: int | None = None) -> tuple[dict[int, int], int]:
    """The integer fields of the struct at ``at`` (by field id) and the position past it; with ``last``,
    only the fields up to that id (the position returned is then inside the struct)."""
    fields: dict[int, int] = {}
    field = 0
    while True:
        if at >= len(buf):
            raise _Short("a page header runs past the column chunk")
        header = buf[at]
        at += 1
        if header == 0:
            return fields, at
        kind, delta = header & 0x0F, header >> 4
        if delta:
            field += delta
        else:
            raw, at = _varint(buf, at)
            field = (raw >> 1) ^ -(raw & 1)
        if last is not None and field > last:  # fields come in increasing order
            return fields, at - 1
        if kind in (_I16, _I32, _I64):
            raw, at = _varint(buf, at)
            fields[field] = (raw >> 1) ^ -(raw & 1)
        else:
            at = _skip(buf, at, kind, depth)


def verify_chunk(buf: bytes) -> int:
    """Checks every page of one column chunk's bytes against its CRC-32; returns the number of pages."""
    import io

    return _check_pages(io.BytesIO(buf), 0, len(buf), data=True)


def first_pages_have_crc(handle, metadata, group: int) -> bool:
    """Whether the first page of every column chunk of row group ``group`` carries a CRC (read from the
    first 64 bytes of each: ``PageHeader`` fields 1-4 are integers), without reading the chunks."""
    row_group = metadata.row_group(group)
    for c in range(row_group.num_columns):
        column = row_group.column(c)
        handle.seek(_chunk_range(column)[0])
        try:
            fields, _ = _struct(handle.read(64), 0, last=4)
        except PageError:
            return False
        if 4 not in fields:
            return False
    return True


HEADER_WINDOW = 256  # bytes read for a page header at first (a longer one is read again, 4x larger)


def _chunk_range(column) -> tuple[int, int]:
    """Where a column chunk's pages lie in its file: ``(start, end)``."""
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    return start, start + column.total_compressed_size


def _check_pages(handle, at: int, end: int, data: bool) -> int:
    """Walks the page headers of one column chunk, bytes ``[at, end)`` of ``handle``, where they lie (only the
    headers are read, a small window at a time): each must carry a CRC-32; with ``data``, each page's bytes
    are read too and checked against it (one page in memory at a time). Returns the number of pages."""
    pages = 0
    while at < end:
        window = HEADER_WINDOW
        while True:
            handle.seek(at)
            buf = handle.read(min(window, end - at))
            try:
                fields, used = _struct(buf, 0)
                break
            except _Short:
                if at + len(buf) >= end or len(buf) < min(window, end - at):
                    raise
                window *= 4
        size, crc = fields.get(3), fields.get(4)
        at += used
        if size is None or size < 0 or at + size > end:
            raise PageError("a page header with no or a wrong compressed size")
        if crc is None:
            raise PageError("a page without a checksum")
        if data:
            handle.seek(at)
            page = handle.read(size)
            if len(page) != size:
                raise PageError("the file ends inside a column chunk")
            if zlib.crc32(page) != crc & 0xFFFFFFFF:
                raise PageError("a page whose data does not match its CRC-32 checksum")
        at += size
        pages += 1
    return pages


def footer_digest(handle) -> str:
    """The identity of a Parquet file as written: its size and an XXH3-128 of its footer (the row groups'
    offsets, sizes and statistics), ``"SIZE:HEX"``. The launcher records it for every previous shard it
    checks; a worker reading the shard later finds another one when the file was replaced or rewritten
    since (its pages' CRCs catch damage to the data itself)."""
    import xxhash

    size = handle.seek(0, 2)
    if size < 12:
        raise PageError("too short to be a Parquet file")
    handle.seek(size - 8)
    tail = handle.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length > size - 12:
        raise PageError("no Parquet footer at the end")
    handle.seek(size - 8 - length)
    footer = handle.read(length)
    return f"{size}:{xxhash.xxh3_128_hexdigest(footer + tail)}"


def _open(path: str):
    import os

    from apache_beam.io.filesystems import FileSystems

    local = "://" not in path and os.path.exists(path)
    # a local file is decoded by Arrow's own reader, without the GIL (through a Python file object, every
    # read takes it: 2.5x slower among the runner's threads)
    return (open(path, "rb") if local else FileSystems.open(path)), local


STREAM_BUFFER = 1 << 20  # iter_checked reads a column chunk through a buffer of this many bytes


def _checked_file(f, local: bool, path: str, footer: str | None, streamed: bool = False):
    """The shard as a ``ParquetFile`` that verifies page checksums; ``streamed``: its column chunks read
    through ``STREAM_BUFFER`` as they are decoded instead of a row group's wanted chunks read whole first
    (Arrow's pre-buffering: a 30 MB row group held while a night copies from it, and writes)."""
    import pyarrow.parquet as pq

    if footer is not None:
        found = footer_digest(f)
        if found != footer:
            raise PageError(f"the file changed since the launcher checked it (size:footer {footer}, now {found})")
    options = {"pre_buffer": False, "buffer_size": STREAM_BUFFER} if streamed else {}
    return pq.ParquetFile(path if local else f, page_checksum_verification=True, **options)


def _check_group(f, shard, group: int, decoded: set[str], others: bool) -> None:
    row_group = shard.metadata.row_group(group)
    for c in range(row_group.num_columns):
        column = row_group.column(c)
        top = column.path_in_schema.split(".")[0]
        if top in decoded:  # pyarrow checks the CRCs of the pages it decodes: here, that each page has one
            _check_pages(f, *_chunk_range(column), data=False)
        elif others:
            _check_pages(f, *_chunk_range(column), data=True)


def _failed(path: str, group: int, e: Exception) -> ValueError:
    detail = str(e) if isinstance(e, PageError) else f"{type(e).__name__}: {e}"
    return ValueError(f"{path} row group {group}: {detail}")


def read_checked(path: str, group: int, columns: list[str] | None = None, footer: str | None = None,
                 others: bool = True) -> pa.Table:
    """Row group ``group`` of the shard at ``path``: ``columns`` (every column when None) decoded, and
    every page of every column chunk checked to carry a CRC-32 that matches its data (the decoded ones by
    pyarrow as it reads, the others on their raw bytes, one page at a time; not at all with ``others``
    False). ``footer``: the ``footer_digest`` the file must still have. Raises ``ValueError`` naming the
    file and row group when a check fails or the file cannot be read."""
    try:
        opened, local = _open(path)
        with opened as f:
            shard = _checked_file(f, local, path, footer)
            _check_group(f, shard, group, set(columns if columns is not None else shard.schema_arrow.names), others)
            return shard.read_row_group(group, columns=columns, use_threads=False)
    except Exception as e:  # PageError, OSError from a bad checksum or page header, ArrowInvalid, ...
        raise _failed(path, group, e) from e


def iter_checked(path: str, group: int, footer: str | None = None, batch_rows: int = 8192):
    """Row group ``group`` of the shard at ``path``, every column, as ``pa.RecordBatch``es of up to
    ``batch_rows`` rows decoded one after the other (a whole row group is never in memory at once), each
    page checked against its CRC-32 as it is decoded; as ``read_checked`` otherwise."""
    try:
        opened, local = _open(path)
        with opened as f:
            shard = _checked_file(f, local, path, footer, streamed=True)
            _check_group(f, shard, group, set(shard.schema_arrow.names), others=False)
            yield from shard.iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False)
    except Exception as e:
        raise _failed(path, group, e) from e
