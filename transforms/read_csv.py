"""CSV: the csv module record by record (the reference), and ``pyarrow.csv`` block by block where exact.

The csv module reads the lines as ``transforms.read`` splits them (byte-order mark dropped), decoded with
``surrogateescape``, ``"\\n"`` put back and split after a lone ``"\\r"``, with a header row naming the
fields. ``pyarrow.csv`` parses the same dialect (``,``, ``"``, doubled quotes, quoted fields spanning
lines, ``\\r`` / ``\\n`` / ``\\r\\n`` record ends, empty lines skipped; checked case by case in
``tests/test_batch_reader.py``), so it reads a block exactly when:

- the header is one line without quotes or ``\\r`` (but one before its ``\\n``), naming the id and text
  fields once each;
- every quote of the block opens a field (after ``,``, a line end or the block's start), closes one (before
  ``,``, a line end or the file's end), or is half of a doubled quote: then the number of quotes before a
  newline says whether a record ends there, and a block is cut where one does;
- the block is UTF-8, every row has as many fields as the header, no id is blank.

A block that is not so is read by the csv module: only that block when its quotes are as above (it ends
where a record ends), else the rest of the file (where records end is then the csv module's to say).
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from transforms import read_fast
from transforms.errors import tagged

STAGE = "read"
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")
_QUOTE = ord('"')
_QUOTE_NEIGHBOURS = np.array([ord(","), ord("\n"), ord("\r"), _QUOTE], np.uint8)


def csv_lines(blocks: Iterable[bytes]) -> Iterator[str]:
    """The lines of ``blocks`` as the csv module is given them: decoded with ``surrogateescape``,
    ``"\\n"`` put back (a quoted field may span lines), split after a lone ``"\\r"`` as a file opened with
    ``newline=""`` would be."""
    for block in blocks:
        for line in read_fast.block_lines(block):
            yield from _LONE_CR.split(line.decode("utf-8", "surrogateescape") + "\n")


def per_record(name: str, lines: Iterator[str], fields: Callable, fieldnames: list[str] | None = None,
               line_base: int = 0) -> Iterator:
    """Records of CSV ``lines`` (``csv_lines``) by the csv module: ``fields(raw, raw)`` of each row (see
    ``ReadRecords._fields``) or its invalid_utf8 dead letter, ``name:line`` counted from ``line_base``.
    ``fieldnames``: the header already read, else the first row is the header."""
    csv.field_size_limit(sys.maxsize)  # a long document is one field: the default limit is 131072 characters
    reader = csv.DictReader(lines, fieldnames=fieldnames)
    if fieldnames is None:
        if reader.fieldnames is None:
            return
        if not all(read_fast.is_utf8_text(k) for k in reader.fieldnames if isinstance(k, str)):
            raise ValueError(f"{name}: the header line is not UTF-8")
    for row in reader:
        raw = {k: v for k, v in row.items() if k is not None}
        undecodable = [k for k, v in raw.items() if isinstance(v, str) and not read_fast.is_utf8_text(v)]
        if undecodable:
            shown = {k: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for k, v in raw.items()}
            yield tagged(None, STAGE, "invalid_utf8", repr(shown),
                         f"{name}:{line_base + reader.line_num}: invalid UTF-8 in {', '.join(map(str, undecodable))}")
            continue
        yield fields(raw, raw)


def _header(line: bytes, id_field: str, text_field: str) -> list[str] | None:
    """The field names of a header line the fast reader can take (see the module's docstring), else None."""
    line = line.removesuffix(b"\r")
    if b'"' in line or b"\r" in line or not read_fast._utf8(line):
        return None
    names = line.decode("utf-8").split(",")
    if id_field == text_field or names.count(id_field) != 1 or names.count(text_field) != 1:
        return None
    return names


def _record_end(buf: bytes, eof: bool) -> int | None:
    """Where the last whole record of ``buf`` (which starts where a record starts) ends: the index after
    its newline, 0 when no record ends in it (or, at ``eof``, ``len(buf)`` if its quotes are all closed);
    None when its quotes do not say where records end (see the module's docstring)."""
    data = np.frombuffer(buf, np.uint8)
    quotes = np.flatnonzero(data == _QUOTE)
    if quotes.size:
        opening, closing = quotes[0::2], quotes[1::2]
        if not np.all((opening == 0) | np.isin(data[np.maximum(opening - 1, 0)], _QUOTE_NEIGHBOURS)):
            return None
        after = closing + 1
        inside = after < data.size
        if not np.all(np.isin(data[after[inside]], _QUOTE_NEIGHBOURS)) or (not eof and not np.all(inside)):
            return None
    if eof:
        return len(buf) if quotes.size % 2 == 0 else None
    newlines = np.flatnonzero(data == ord("\n"))
    ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(ends[-1]) + 1 if ends.size else 0


def _csv_line_count(block: bytes) -> int:
    """How many lines ``csv_lines`` makes of a block (its line count, plus one per lone ``\\r``)."""
    lines = block.count(b"\n") + (not block.endswith(b"\n"))
    lone_cr = block.count(b"\r") - block.count(b"\r\n") - block.endswith(b"\r")
    return lines + lone_cr


def _fast_block(block: bytes, fieldnames: list[str], id_field: str, text_field: str):
    """``(ids, texts)`` of a block of whole records, exactly as the csv module would read them, or None."""
    if not read_fast._utf8(block):
        return None
    try:
        table = pcsv.read_csv(
            pa.BufferReader(block),
            read_options=pcsv.ReadOptions(use_threads=False, column_names=fieldnames, block_size=len(block) + 1),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(include_columns=[id_field, text_field], strings_can_be_null=False,
                                                column_types={id_field: pa.string(), text_field: pa.string()}))
    except pa.ArrowInvalid:
        return None
    ids, texts = (read_fast._one_chunk(table.column(c)) for c in (id_field, text_field))
    if ids.null_count or texts.null_count or read_fast._blank(ids):
        return None
    return ids, texts


def read(name: str, blocks: Iterator[bytes], fields: Callable, id_field: str, text_field: str,
         fast: bool = True) -> Iterator:
    """Records of a CSV file given as blocks of whole lines (``read_fast.range_blocks``): ``fields(raw,
    raw)`` of each row or a dead letter, one by one, and ``read_fast.Rows`` of blocks read fast."""
    first = next(blocks, None)
    if first is None:
        return
    cut = first.find(b"\n")
    fieldnames = _header(first if cut < 0 else first[:cut], id_field, text_field) if fast else None
    if fieldnames is None:
        yield from per_record(name, csv_lines(chain([first], blocks)), fields)
        return
    line_base, carry = 1, b""
    for block in chain([first[cut + 1:]] if cut >= 0 else [], blocks):
        buf = carry + block
        end = _record_end(buf, eof=False)
        if end is None:
            yield from per_record(name, csv_lines(chain([buf], blocks)), fields, fieldnames, line_base)
            return
        ready, carry = buf[:end], buf[end:]
        if ready:
            line_base = yield from _block(name, ready, fields, fieldnames, id_field, text_field, line_base)
    if carry:
        if _record_end(carry, eof=True) is None:
            yield from per_record(name, csv_lines([carry]), fields, fieldnames, line_base)
        else:
            yield from _block(name, carry, fields, fieldnames, id_field, text_field, line_base)


def _block(name: str, block: bytes, fields: Callable, fieldnames: list[str], id_field: str, text_field: str,
           line_base: int):
    """The records of a block of whole records, fast or by the csv module; returns the next line number base."""
    rows = _fast_block(block, fieldnames, id_field, text_field)
    if rows is not None:
        yield read_fast.Rows(*rows)
    else:
        yield from per_record(name, csv_lines([block]), fields, fieldnames, line_base)
    return line_base + _csv_line_count(block)
