"""Fast readers: JSONL, plain text and Parquet read block by block into Arrow arrays, where that is exact.

Every fast path answers "exactly what the per-record code in ``transforms/read.py`` would give" or
refuses; the caller reads what was refused with that per-record code, so the documents and dead letters
never depend on which path read them. A JSONL reader that can say which line stands in the way gets that
line read by the per-line code and the rest tried again; a block refused otherwise is halved and each half
tried again (down to ``MIN_FAST_LINES`` lines): a bad line costs the per-line code a few lines, not a
whole block (``ReadRecords._halving``). Arrow's thread pool is never used (``use_threads=False``): the
model needs the cores. ``Batcher`` turns what is read into ``DocBatch``es. CSV: ``transforms/read_csv.py``.

JSONL blocks are parsed by ``pyarrow.json`` with an explicit ``{id: string, text: string}`` schema
(other fields ignored; an id column of integers read again as int64 and written ``str(int)`` as today).
What ``pyarrow.json`` takes and Python's ``json.loads`` would not, or reads otherwise, is refused before
or after parsing:

- invalid UTF-8 anywhere in the block (``pyarrow.json`` does not validate ignored fields);
- a line that does not start with ``{`` (blank lines, leading whitespace or byte-order mark, not an object);
- a lone ``\\r`` (a line break to ``pyarrow.json``, whitespace or an error to ``json.loads``);
- more rows than lines (two objects on one line: ``pyarrow.json`` reads both);
- a line with more than ``MAX_FAST_BRACKETS`` ``[``/``{`` (nesting ``json.loads`` may refuse);
- a run of digits longer than Python's integer string limit (``sys.get_int_max_str_digits``);
- ``Inf``, ``-Inf`` or ``-NaN`` as a value (rapidjson's extensions; Python takes ``NaN``/``Infinity``);
- after parsing: a null or missing id or text, an id that is blank (``str.strip``).

``pyarrow.json`` refuses by itself: duplicate keys (``json.loads`` keeps the last), lone surrogate
escapes, non-string texts, bool/float/object ids, comments, trailing commas, control characters.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from transforms.batch import BATCH_DOCS, DocBatch

BOM = b"\xef\xbb\xbf"
# A batch is handed on once its texts reach this many bytes (characters, for documents read one by one),
# even with fewer than BATCH_DOCS documents: long documents keep a batch's memory bounded (and its string
# offsets far from the 2 GiB of pa.string()).
BATCH_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20  # bytes read from the file at a time; a block is the whole lines read so far
MIN_FAST_LINES = 16  # a refused block of at most this many lines goes to the per-line code without halving
MAX_FAST_BRACKETS = 100  # a deeper line may pass Python's recursion limit in json.loads: per-line code decides
_NEWLINE, _OPEN_BRACE, _OPEN_BRACKET = ord("\n"), ord("{"), ord("[")
_DIGITS = bytes(ord("0") if ord("0") <= i <= ord("9") else ord(" ") for i in range(256))
_VALUE_BEFORE = frozenset(b":,[-")  # what stands before a value: a bare Inf/NaN there is a number


def range_blocks(f, start: int, end: int | None, counted: list[int] | None, on_read=None):
    """``(block, byte offset of its first line)`` for the lines of ``f`` that start in ``[start, end)``,
    split as ``transforms.read._range_lines`` splits them: on ``b"\\n"``, a leading byte-order mark
    dropped, a line that starts before ``start`` left to the previous range, the last line read whole
    past ``end``. A block is the whole lines read so far (about ``CHUNK_BYTES``; a longer line whole), each
    ending in ``b"\\n"`` but for the file's last one: the lines of a file that stops being readable are
    handed on up to the last chunk read, as the per-line reading did. ``counted`` (a one-item list) and
    ``on_read`` get the number of bytes read, as they are read."""
    first = start == 0  # the first line of the file counts as starting at byte 0, byte-order mark or not
    if start > 0:
        f.seek(start - 1)  # the byte before: a newline there means a line starts at ``start``
        pos, skip, head = start - 1, True, b""
    else:
        pos, skip, head = 0, False, f.read(len(BOM))
        if head == BOM:
            pos, head = len(BOM), b""
    tail, tail_size = [], 0  # read from ``pos`` on, not handed on yet; no newline in it
    while True:
        chunk = f.read(CHUNK_BYTES)
        eof = not chunk
        if chunk and counted is not None:
            counted[0] += len(chunk)
            if on_read is not None:
                on_read(len(chunk))
        if head:  # the first bytes, read apart to look for a byte-order mark
            chunk, head = head + chunk, b""
        if skip:  # the line that started before ``start`` is the previous range's
            cut = chunk.find(b"\n")
            if cut < 0:
                if eof:
                    return
                pos += len(chunk)
                continue
            pos, skip, chunk = pos + cut + 1, False, chunk[cut + 1:]
        if end is not None and (0 if first else pos) >= end:
            return
        if end is not None and pos + tail_size + len(chunk) >= end:
            cut = chunk.find(b"\n", max(end - 1 - pos - tail_size, 0))  # the line holding byte end - 1 is the last
            if cut >= 0:
                yield b"".join([*tail, memoryview(chunk)[:cut + 1]]), pos
                return
        elif not eof:
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                whole = not tail_size and cut == len(chunk) - 1  # the chunk ends a line: no copy
                block = chunk if whole else b"".join([*tail, memoryview(chunk)[:cut + 1]])
                yield block, pos
                pos, first, chunk = pos + len(block), False, chunk[cut + 1:]
                tail, tail_size = [], 0
        if eof:
            if tail_size or chunk:
                yield b"".join([*tail, chunk]), pos
            return
        tail.append(chunk)
        tail_size += len(chunk)


class Rows:
    """Documents read by a fast reader: ``ids`` and ``texts`` ``pa.string()`` arrays, in file order."""

    def __init__(self, ids: pa.Array, texts: pa.Array):
        self.ids, self.texts = ids, texts

    def __len__(self) -> int:
        return len(self.ids)


class Batcher:
    """Documents in (one by one or as arrays), ``DocBatch``es of at most ``BATCH_DOCS`` documents out, in
    the order given; a batch's arrays are its own (never a slice that would carry a whole block along)."""

    def __init__(self):
        self.pieces: list[tuple[pa.Array, pa.Array]] = []
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.size = 0
        self.nbytes = 0

    def add(self, doc_id: str, text: str) -> Iterator[DocBatch]:
        self.ids.append(doc_id)
        self.texts.append(text)
        self.size += 1
        self.nbytes += len(text)
        if self.size >= BATCH_DOCS or self.nbytes >= BATCH_BYTES:
            yield from self.flush(whole=self.nbytes >= BATCH_BYTES)

    def add_rows(self, rows: Rows) -> Iterator[DocBatch]:
        self._close_lists()
        self.pieces.append((rows.ids, rows.texts))
        self.size += len(rows)
        self.nbytes += rows.texts.nbytes
        if self.size >= BATCH_DOCS or self.nbytes >= BATCH_BYTES:
            yield from self.flush(whole=self.nbytes >= BATCH_BYTES)

    def _close_lists(self) -> None:
        if self.ids:
            self.pieces.append((pa.array(self.ids, pa.string()), pa.array(self.texts, pa.string())))
            self.ids, self.texts = [], []

    def flush(self, whole: bool = True) -> Iterator[DocBatch]:
        """The buffered documents as batches of ``BATCH_DOCS``, and what is left as one more batch
        (``whole``) or kept for the next. Each byte is copied once, into the batch that holds it."""
        self._close_lists()
        while self.size >= BATCH_DOCS or (whole and self.size):
            need, ids, texts = min(BATCH_DOCS, self.size), [], []
            self.size -= need
            while need:
                piece_ids, piece_texts = self.pieces[0]
                k = min(need, len(piece_ids))
                ids.append(piece_ids.slice(0, k))
                texts.append(piece_texts.slice(0, k))
                if k == len(piece_ids):
                    self.pieces.pop(0)
                else:
                    self.pieces[0] = (piece_ids.slice(k), piece_texts.slice(k))
                need -= k
            yield DocBatch(pa.concat_arrays(ids), pa.concat_arrays(texts))
        self.nbytes = sum(texts.nbytes for _, texts in self.pieces)


def block_lines(block: bytes) -> list[bytes]:
    """The lines of a block, without their ``b"\\n"``."""
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def line_bounds(block: bytes) -> list[int]:
    """Where the lines of a block start, and its length: line ``i`` (with its ``b"\\n"``) is
    ``block[bounds[i]:bounds[i + 1]]``."""
    starts, _ = _line_starts(np.frombuffer(block, np.uint8))
    return [*starts.tolist(), len(block)]


def is_utf8_text(text: str) -> bool:
    """False for text holding surrogates: decoded with surrogateescape from bytes that were not UTF-8, or
    a JSON escape of a lone surrogate."""
    if text.isascii():  # O(1) in CPython: no surrogate in it
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(block: bytes) -> bool:
    """Whether ``block`` is UTF-8 as ``bytes.decode("utf-8")`` takes it (Arrow's validation, strict as
    Python's: no surrogates, no overlong forms, nothing past U+10FFFF; tested against it), without
    building a ``str``."""
    if block.isascii():
        return True
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, pa.py_buffer(np.array([0, len(block)], np.int64)),
                                                          pa.py_buffer(block)])
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_starts(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``: byte offsets of each line's first byte and of its end (its newline, or the
    end of the block)."""
    newlines = np.flatnonzero(data == _NEWLINE)
    ends = newlines if newlines.size and newlines[-1] == data.size - 1 else np.append(newlines, data.size)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return starts, ends


def _int_digits_over_limit(block: bytes, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    limit = sys.get_int_max_str_digits()
    if not limit:
        return False
    run = b"0" * (limit + 1)
    for i in np.flatnonzero(ends - starts > limit).tolist():
        if run in block[starts[i]:ends[i]].translate(_DIGITS):
            return True
    return False


def _rapidjson_only_numbers(block: bytes, data: np.ndarray) -> bool:
    """True when the block may hold ``Inf``, ``-Inf`` or ``-NaN`` as a value (not ``Infinity``, which both
    parsers take): an ``Inf`` after ``:``, ``,``, ``[`` or ``-`` (and whitespace), a ``NaN`` after ``-``.
    One inside a string that looks so is refused too; the per-line code then reads it as it always did."""
    for word in (b"Inf", b"NaN"):
        first = np.flatnonzero(data[:-2] == word[0])
        for at in first[(data[first + 1] == word[1]) & (data[first + 2] == word[2])].tolist():
            j = at
            while j > 0 and block[j - 1] in b" \t\r\n":
                j -= 1
            before = block[j - 1] if j > 0 else None
            if word == b"Inf" and before in _VALUE_BEFORE and not block.startswith(b"inity", at + 3):
                return True
            if word == b"NaN" and before == ord("-"):
                return True
    return False


def _jsonl_precheck(block: bytes) -> tuple[int | None, int | None]:
    """``(lines, None)``: the number of lines of a block ``pyarrow.json`` may read exactly as ``json.loads``
    would; ``(None, line)`` when it must not because of that line; ``(None, None)`` when it must not
    (see the module's docstring)."""
    if not _utf8(block):
        return None, None
    data = np.frombuffer(block, np.uint8)
    starts, ends = _line_starts(data)
    not_objects = np.flatnonzero(data[starts] != _OPEN_BRACE)
    if not_objects.size:
        return None, int(not_objects[0])
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return None, None
    opening = np.count_nonzero(data == _OPEN_BRACE) + np.count_nonzero(data == _OPEN_BRACKET)
    if opening - starts.size > MAX_FAST_BRACKETS:
        per_line = np.add.reduceat((data == _OPEN_BRACE) | (data == _OPEN_BRACKET), starts)
        if per_line.max() > MAX_FAST_BRACKETS:
            return None, int(np.argmax(per_line > MAX_FAST_BRACKETS))
    if _int_digits_over_limit(block, data, starts, ends) or _rapidjson_only_numbers(block, data):
        return None, None
    return int(starts.size), None


def _blank_rows(ids: pa.Array) -> np.ndarray:
    """Indices of the ids that are empty or whitespace (``str.strip``). Ids whose first byte is printable
    ASCII (``!`` to ``~``) are not; the others (rare) are checked in Python."""
    offset_type = np.int64 if ids.type in (pa.large_string(), pa.large_binary()) else np.int32
    offsets = np.frombuffer(ids.buffers()[1], offset_type)[ids.offset:ids.offset + len(ids) + 1]
    values = ids.buffers()[2]
    data = np.frombuffer(values, np.uint8) if values is not None and values.size else np.zeros(1, np.uint8)
    first = data[np.minimum(offsets[:-1], data.size - 1)]
    unsure = np.flatnonzero(~((offsets[1:] > offsets[:-1]) & (first >= ord("!")) & (first <= ord("~"))))
    if not unsure.size:
        return unsure
    return unsure[[i is None or not i.strip() for i in ids.take(pa.array(unsure)).to_pylist()]]


def _blank(ids: pa.Array) -> bool:
    return _blank_rows(ids).size > 0


_IN_ROW = re.compile(r"in row (\d+)$")


def jsonl_block(block: bytes, id_field: str, text_field: str):
    """A block of JSONL lines (see ``range_blocks``) read by ``pyarrow.json``, exactly as the per-line
    code would read it, or what stands in the way:

    - ``(ids, texts)`` (``pa.string()``): one row a line, all documents;
    - ``(ids, texts, bad)``: one row a line, but the lines at the indices ``bad`` (ascending) are for the
      per-line code (a null or missing id or text, a blank id); the other rows are documents;
    - an ``int``: ``pyarrow.json`` stopped at that row (= line, when nothing else is wrong), which is for the
      per-line code; the lines before and after are to be tried again;
    - None: the block is for the per-line code (or to be tried again in parts).
    """
    if id_field == text_field:
        return None
    lines, refused_line = _jsonl_precheck(block)
    if lines is None:
        return refused_line
    table = None
    for id_type in (pa.string(), pa.int64()):
        schema = pa.schema([(id_field, id_type), (text_field, pa.string())])
        try:
            table = pj.read_json(pa.BufferReader(block),
                                 read_options=pj.ReadOptions(use_threads=False, block_size=len(block) + 1),
                                 parse_options=pj.ParseOptions(explicit_schema=schema,
                                                               unexpected_field_behavior="ignore"))
            break
        except pa.ArrowInvalid as e:
            row = _IN_ROW.search(str(e))
            if row is None:
                return None
            if row.group(1) != "0" or f"Column(/{id_field}) changed from string to number" not in str(e):
                return int(row.group(1))
    if table is None or table.num_rows != lines:
        return None
    ids, texts = _one_chunk(table.column(id_field)), _one_chunk(table.column(text_field))
    if pa.types.is_integer(ids.type):
        ids = ids.cast(pa.string())
        bad = np.zeros(0, np.int64)
    else:
        bad = _blank_rows(ids)
    if ids.null_count or texts.null_count:
        nulls = pc.or_(pc.is_null(ids), pc.is_null(texts))
        bad = np.union1d(bad, np.flatnonzero(nulls.to_numpy(zero_copy_only=False)))
    return (ids, texts) if not bad.size else (ids, texts, bad.tolist())


def text_block(block: bytes, name: str, first_number: int) -> tuple[pa.Array, pa.Array] | None:
    """``(ids, texts)`` of a block of plain-text lines numbered from ``first_number``: ids
    ``<name>:<number>``, texts without their ``\\n`` and one ``\\r`` before it; None when a line is not
    UTF-8 (the per-line code dead-letters it)."""
    if not _utf8(block):
        return None
    if b"\r" in block:  # one \r before each line end goes (not overlapping: b"\r\r\n" keeps one)
        block = block.replace(b"\r\n", b"\n")
        if block.endswith(b"\r"):
            block = block[:-1]
    newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == _NEWLINE)
    lines = newlines.size + (not block.endswith(b"\n"))
    offsets = np.empty(lines + 1, np.int32)  # texts end where their newline was, less the newlines before
    offsets[0] = 0
    offsets[1:newlines.size + 1] = newlines - np.arange(newlines.size)
    data = block.replace(b"\n", b"")
    offsets[-1] = len(data)
    texts = pa.Array.from_buffers(pa.string(), lines, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    numbers = pa.array(np.arange(first_number, first_number + lines, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(f"{name}:", numbers, ""), texts


def parquet_group(table: pa.Table, id_field: str, text_field: str) -> tuple[pa.Array, pa.Array] | None:
    """``(ids, texts)`` of a Parquet row group read as Arrow, exactly as the per-record code would give
    them, or None when a row needs it: a missing column, a null, a blank id, an id that is not a string,
    an integer or UTF-8 bytes, a text that is not a string, a string that is not UTF-8."""
    if id_field not in table.column_names or text_field not in table.column_names:
        return None
    ids, texts = (_decoded(_one_chunk(table.column(c))) for c in (id_field, text_field))
    if ids.null_count or texts.null_count or texts.type not in _STRINGS:
        return None
    if not pa.types.is_integer(ids.type) and ids.type not in (*_STRINGS, pa.binary(), pa.large_binary()):
        return None
    try:
        if not pa.types.is_integer(ids.type):
            ids = ids.cast(pa.large_binary()).cast(pa.large_string())  # bytes that are not UTF-8 raise here
            ids.validate(full=True)
            if _blank(ids):
                return None
        texts.validate(full=True)  # strings that are not UTF-8 raise here
        return ids.cast(pa.string()), texts.cast(pa.string())  # and a group of over 2 GiB of text here
    except pa.ArrowInvalid:
        return None


_STRINGS = (pa.string(), pa.large_string())


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
