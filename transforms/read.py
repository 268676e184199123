"""Read: files -> ``DocBatch`` elements (ids and texts in file order), every unreadable record dead-lettered.

Formats, by file extension (``.gz`` / ``.bz2`` compressed files are decompressed by Beam); a
leading UTF-8 byte-order mark is dropped in every text format:

- ``.jsonl`` / ``.json``: one JSON object per line with ``id_field`` and ``text_field``; blank lines
  are not records.
- ``.csv``: a header row naming ``id_field`` and ``text_field``.
- ``.parquet``: columns ``id_field`` and ``text_field``.
- anything else: plain text, one document per line, id ``<file name>:<line number from 1>``; an
  empty line is an empty document, a final newline ends the last line.

An empty or whitespace-only text is a document like any other: it gets a row, with no token. Only
records without a usable text (unreadable, no id, no text field, a non-string text) are dead letters.

An uncompressed JSONL file larger than 64 MiB is read in 64 MiB byte ranges (each line belongs to
the range it starts in); any other file is read by one worker. The files and ranges are reshuffled so
that they spread over workers (and, on Dataflow, the tokenized documents too: ``--reshuffle``,
``beam_pipeline/pipeline.py``).
Each file also reports how many records it held (tag ``counts``), for the run's summary.

A main output is a ``DocBatch`` (``transforms/batch.py``) of at most ``BATCH_DOCS`` documents and about
``read_fast.BATCH_BYTES`` bytes of text: ``ids`` and ``texts`` ``pa.string()`` arrays, in file order; a
file's (or a range's) last batch holds what is left. Dead letters are single records (tag ``errors``).

JSONL, CSV, plain text and Parquet are read block by block by Arrow readers where that is exact
(``transforms/read_fast.py``, ``transforms/read_csv.py``); what they refuse is read record by record by
the code here, so the documents and dead letters are the same either way (``ReadRecords(fast=False)``
reads everything record by record: the reference the fast readers are tested against).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import queue
import threading
import uuid
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import read_csv, read_fast
from transforms.batch import DocBatch
from transforms.errors import NAMESPACE, tagged

COUNTS = "counts"
STAGE = "read"


class InputBytes:
    """This process's share of the input read so far, for the progress log: file sizes are known
    up front (``--input`` is matched on the launcher); an uncompressed JSONL or text file counts as
    it is read, any other file once it has been read."""

    def __init__(self):
        self.run = ""
        self.total = 0
        self.read = 0

    def start(self, run: str, total: int) -> None:
        """Called by every reader of run ``run``: the first one of a new run starts counting afresh."""
        if run != self.run:
            self.run, self.total, self.read = run, total, 0

    def add(self, size: int) -> None:
        self.read += size

    def share(self) -> float | None:
        """Fraction of the input's bytes read by this process; None when sizes are unknown."""
        return min(self.read / self.total, 1.0) if self.total else None


INPUT_BYTES = InputBytes()


def _ignore(size: int) -> None:
    """Where a second read (``counting=False``) reports the bytes it read."""
COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")  # what Beam decompresses by suffix


def file_format(path: str) -> str:
    name = path.lower()
    for compressed in COMPRESSED:
        if name.endswith(compressed):
            name = name[: -len(compressed)]
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _cut_short(f, size: int | None) -> bool:
    """True when ``f`` is a compressed file read to its end whose stream never reached its end marker
    (Beam's reader stops quietly there). An empty file is not cut short."""
    decompressor = getattr(f, "_decompressor", None)
    return bool(decompressor is not None and size and getattr(f, "_read_eof", False)
                and getattr(decompressor, "eof", True) is False)


class ReadAhead:
    """``iterator`` run on a thread of its own, up to ``depth`` items ahead of the consumer: a file's blocks are
    read and parsed (Arrow's JSON and Parquet readers run without the GIL) while this process' thread hands
    the records before them on (hashing, looking up, tokenizing, the model). Items come in order; an error of
    the iterator is raised by the ``next`` that reaches it, as if it were read here. ``close`` (also on an
    early stop) stops the thread and waits for it, so the file it reads may then be closed."""

    _END = object()

    def __init__(self, iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iterator,), name="read-ahead", daemon=True)
        self._thread.start()

    def _run(self, iterator) -> None:
        try:
            for item in iterator:
                if not self._put((True, item)):
                    return
            self._put((True, self._END))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who decides
            self._put((False, e))

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        ok, item = self._queue.get()
        if not ok:
            self._done = True
            raise item
        if item is self._END:
            self._done = True
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class ReadRecords(beam.DoFn):
    """One file path in; ``DocBatch`` main outputs, dead letters, and the file's record count."""

    def __init__(self, id_field: str, text_field: str, total_bytes: int = 0, fast: bool = True,
                 counting: bool = True):
        """``fast``: read with the Arrow readers where they are exact (default); False reads every record
        with the per-record code (the reference the fast readers are tested against). ``counting``:
        False for a second read of an input (``--previous``), which neither counts records (metric
        ``docs_read``) nor restarts the progress share; its record counts and dead letters are the first
        read's."""
        self.id_field = id_field
        self.text_field = text_field
        self.total_bytes = total_bytes
        self.fast = fast
        self.counting = counting
        self.run = uuid.uuid4().hex  # one per pipeline built: this run's progress counts

    def setup(self):
        if self.counting:
            INPUT_BYTES.start(self.run, self.total_bytes)

    def process(self, element: str | tuple):
        """``element``: a path, ``(path, size)``, or ``(path, size, start, end)``: the lines of an
        uncompressed JSONL file that start in bytes ``[start, end)`` (see ``split_files``)."""
        path, size, start, end = (element, None, 0, None) if isinstance(element, str) else (
            (*element, 0, None) if len(element) == 2 else element)
        fmt = file_format(path)
        count = 0
        self._counted = None if path.lower().endswith(COMPRESSED) else [0]  # compressed: counted once read
        failure = None
        batcher = read_fast.Batcher()
        with contextlib.ExitStack() as stack:
            # Errors of the reading itself (a corrupt or cut compressed stream, a file that is not Parquet)
            # end the file with one dead letter saying where; the records before it stay. Only ``next`` is
            # guarded: an error raised downstream while a record is handed on is not the file's.
            try:
                f = stack.enter_context(FileSystems.open(path))
                if end is not None:
                    records = self._jsonl(path, f, start, end)
                else:
                    reader = {"jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet}.get(fmt, self._text)
                    records = reader(path, f)
                records = ReadAhead(iter(records))
                stack.callback(records.close)  # before the file closes
            except Exception as e:
                failure, records = e, iter(())
            while failure is None:
                try:
                    out = next(records)
                except StopIteration:
                    break
                except Exception as e:
                    failure = e
                    break
                if isinstance(out, read_fast.Rows):
                    count += len(out)
                    yield from batcher.add_rows(out)
                elif isinstance(out, tuple):
                    count += 1
                    yield from batcher.add(*out)
                else:
                    count += 1
                    yield out
            if failure is None and _cut_short(f, size):
                failure = EOFError("the compressed stream ends before its end marker: the file was cut short, "
                                   "and its last record read may be incomplete")
        yield from batcher.flush()  # the records read before a failure stay
        if failure is not None:
            count += 1
            message = str(failure).strip()
            detail = message.splitlines()[0][:500] if message else ""
            yield tagged(None, STAGE, "unreadable_file", path,
                         f"{path}: reading stopped after {count - 1} record(s): {type(failure).__name__}: {detail}")
        if not self.counting:
            return
        expected = (end - start) if end is not None else (size or 0)
        INPUT_BYTES.add(max(expected - (self._counted[0] if self._counted else 0), 0))
        Metrics.counter(NAMESPACE, "docs_read").inc(count)
        yield beam.pvalue.TaggedOutput(COUNTS, count)

    def _fields(self, record: dict, raw: object, where: str = ""):
        """The ``(doc_id, text)`` of a parsed record, or a dead letter (its detail starting with
        ``where``, the ``file:line`` of a JSONL record, when given)."""
        at = f"{where}: " if where else ""
        doc_id = record.get(self.id_field)
        text = record.get(self.text_field)
        if isinstance(doc_id, bytes):  # a binary id column (Parquet)
            try:
                doc_id = doc_id.decode("utf-8")
            except UnicodeDecodeError:
                return tagged(None, STAGE, "invalid_id", raw, f"{at}{self.id_field!r} holds bytes that are not UTF-8")
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            return tagged(None, STAGE, "missing_id", raw, f"{at}no non-empty field {self.id_field!r}")
        if isinstance(doc_id, (dict, list, bool, float)):
            return tagged(None, STAGE, "invalid_id", raw, f"{at}{self.id_field!r} must be a string or an integer")
        doc_id = str(doc_id)
        if text is None:
            return tagged(doc_id, STAGE, "missing_text", raw, f"{at}no field {self.text_field!r}")
        if not isinstance(text, str):
            return tagged(doc_id, STAGE, "non_string_text", raw, f"{at}{self.text_field!r} is {type(text).__name__}")
        return doc_id, text

    def _blocks(self, f, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int]]:
        return read_fast.range_blocks(f, start, end, self._counted, INPUT_BYTES.add if self.counting else _ignore)

    def _halving(self, block: bytes, number: int, offset: int, fast_read, slow_read):
        """The records of ``block`` (lines numbered from ``number``, starting at byte ``offset``); returns
        (as a generator) the number of lines it held. ``fast_read(block, number)`` gives what
        ``read_fast.jsonl_block`` gives; ``slow_read(lines, number, offset)`` reads lines one by one.

        Lines a fast read names as bad are read one by one and what follows is tried again, in windows
        as long as the run of good lines before (at least ``16 * MIN_FAST_LINES``, doubled after each
        success); a block refused without
        saying where is halved, each half tried again, down to ``MIN_FAST_LINES`` lines read one by one.
        A window refused at its first line again and again sends 1, 2, 4, ... lines to the per-line code
        before the next try: a block of bad lines costs a few tries, not one a line."""
        result = fast_read(block, number) if self.fast else None
        if isinstance(result, tuple) and len(result) == 2:
            yield read_fast.Rows(*result)
            return len(result[0])
        bounds = read_fast.line_bounds(block)  # line i is block[bounds[i]:bounds[i + 1]]
        lines = len(bounds) - 1

        def slow(lo: int, hi: int) -> Iterator:
            return slow_read(read_fast.block_lines(block[bounds[lo]:bounds[hi]]), number + lo, offset + bounds[lo])

        lo, window, backoff = 0, lines, 0
        while lo < lines:
            hi = min(lo + window, lines)
            if lo or hi < lines:  # the first try was the whole block, above
                result = fast_read(block[bounds[lo]:bounds[hi]], number + lo)
            if isinstance(result, tuple):
                ids, texts, *bad = result
                done = 0
                for row in [*(bad[0] if bad else []), hi - lo]:
                    if row > done:
                        yield read_fast.Rows(ids.slice(done, row - done), texts.slice(done, row - done))
                    if row < hi - lo:
                        yield from slow(lo + row, lo + row + 1)
                    done = row + 1
                lo, window, backoff = hi, window * 2, 0
            elif isinstance(result, int) and hi - lo > 1:  # stopped at a line: the lines before it, it, the rest
                row = lo + min(result, hi - lo - 1)
                if row > lo:
                    yield from self._halving(block[bounds[lo]:bounds[row]], number + lo, offset + bounds[lo],
                                             fast_read, slow_read)
                backoff = 0 if row > lo else backoff + 1
                taken = min(row + (1 if row > lo else 1 << (backoff - 1)), lines)
                yield from slow(row, taken)
                lo, window = taken, max(row - lo, 16 * read_fast.MIN_FAST_LINES)
            elif self.fast and hi - lo > read_fast.MIN_FAST_LINES:  # refused, not saying where: halves
                mid = (lo + hi) // 2
                for a, b in ((lo, mid), (mid, hi)):
                    yield from self._halving(block[bounds[a]:bounds[b]], number + a, offset + bounds[a],
                                             fast_read, slow_read)
                lo = hi
            else:
                yield from slow(lo, hi)
                lo = hi
        return lines

    def _text(self, path: str, f) -> Iterator:
        name = posixpath.basename(path)

        def fast_read(block: bytes, number: int):
            return read_fast.text_block(block, name, number)

        def slow_read(lines: list[bytes], number: int, offset: int) -> Iterator:
            for raw in lines:
                doc_id = f"{name}:{number}"
                number += 1
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield tagged(doc_id, STAGE, "invalid_utf8", raw, str(e))
                    continue
                yield doc_id, text

        number = 1
        for block, offset in self._blocks(f):
            number += yield from self._halving(block, number, offset, fast_read, slow_read)

    def _jsonl(self, path: str, f, start: int = 0, end: int | None = None) -> Iterator:
        """Records of a JSONL file, or of the lines starting in ``[start, end)`` of it. A dead letter
        says where its line is: ``name:line number`` when reading from the file's start, else
        ``name@byte offset`` (the line number is unknown without reading the bytes before)."""
        name = posixpath.basename(path)

        def fast_read(block: bytes, number: int):
            return read_fast.jsonl_block(block, self.id_field, self.text_field)

        def slow_read(lines: list[bytes], number: int, offset: int) -> Iterator:
            for raw in lines:
                where = f"{name}:{number}" if start == 0 else f"{name}@{offset}"
                number, offset = number + 1, offset + len(raw) + 1
                yield from self._jsonl_line(raw, where)

        number = 1
        for block, offset in self._blocks(f, start, end):
            number += yield from self._halving(block, number, offset, fast_read, slow_read)

    def _jsonl_line(self, raw: bytes, where: str) -> Iterator:
        """The record of one JSONL line (none for a blank line), or its dead letter; ``where``: the
        ``file:line`` or ``file@offset`` its detail names."""
        if not raw.strip():
            return
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield tagged(None, STAGE, "invalid_utf8", raw, f"{where}: {e}")
            return
        except (ValueError, RecursionError) as e:  # JSONDecodeError, an int over 4300 digits, deep nesting
            yield tagged(None, STAGE, "invalid_json", raw, f"{where}: {type(e).__name__}: {str(e)[:300]}")
            return
        if not isinstance(record, dict):
            yield tagged(None, STAGE, "invalid_json", raw, f"{where}: not a JSON object")
            return
        # A valid UTF-8 line still yields a lone surrogate from an escape ("\ud800"), which no UTF-8 writer takes.
        if not all(read_fast.is_utf8_text(v) for v in (record.get(self.id_field), record.get(self.text_field))
                   if isinstance(v, str)):
            yield tagged(None, STAGE, "invalid_utf8", raw,
                         f"{where}: {self.id_field!r} or {self.text_field!r} holds a lone surrogate escape")
            return
        yield self._fields(record, raw, where)

    def _csv(self, path: str, f) -> Iterator:
        blocks = (block for block, _ in self._blocks(f))
        return read_csv.read(posixpath.basename(path), blocks, self._fields, self.id_field, self.text_field, self.fast)

    def _parquet(self, path: str, f) -> Iterator:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(f)
        wanted = [c for c in (self.id_field, self.text_field) if c in parquet.schema_arrow.names]
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=wanted, use_threads=False)
            rows = read_fast.parquet_group(table, self.id_field, self.text_field) if self.fast else None
            if rows is not None:
                yield read_fast.Rows(*rows)
                continue
            try:
                records = table.to_pylist()
            except UnicodeDecodeError:  # a string column holding bytes that are not UTF-8: find them row by row
                yield from self._parquet_rows_as_bytes(table)
                continue
            for record in records:
                yield self._fields(record, record)

    def _parquet_rows_as_bytes(self, table) -> Iterator:
        strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        as_bytes = table.cast(pa.schema([pa.field(f.name, pa.binary() if f.name in strings else f.type)
                                         for f in table.schema]))
        for record in as_bytes.to_pylist():
            try:
                record = {k: v.decode("utf-8") if k in strings and v is not None else v for k, v in record.items()}
            except UnicodeDecodeError as e:
                yield tagged(None, STAGE, "invalid_utf8", repr(record), f"a string column holds invalid UTF-8: {e}")
                continue
            yield self._fields(record, record)


# Uncompressed JSONL files larger than this are read in byte ranges of this size, by as many workers
# (each range a separate element after the reshuffle). Other formats are read one worker per file: plain
# text ids are line numbers (counting needs the bytes before), CSV fields may span lines, compressed
# files cannot seek.
SPLIT_BYTES = 64 << 20


def split_files(element: tuple[str, int | None], split_bytes: int) -> Iterator[tuple]:
    """``(path, size)`` -> ``(path, size, start, end)`` byte ranges for a large uncompressed JSONL file,
    else the element as it is."""
    path, size = element
    if (file_format(path) != "jsonl" or path.lower().endswith(COMPRESSED) or not size or split_bytes <= 0
            or size <= split_bytes):
        yield element
        return
    for start in range(0, size, split_bytes):
        yield path, size, start, min(start + split_bytes, size)


class ReadCorpus(beam.PTransform):
    """``paths`` -> PCollections ``docs`` (``DocBatch``es), ``errors`` (dead letters), ``counts``.
    ``sizes``: bytes per file where known, for the share of the input read that progress lines show,
    and to split large uncompressed JSONL files into ranges of ``split_bytes`` (default ``SPLIT_BYTES``)."""

    def __init__(self, paths: list[str], id_field: str, text_field: str, sizes: dict[str, int] | None = None,
                 split_bytes: int | None = None, counting: bool = True):
        super().__init__()
        self.counting = counting
        self.paths = paths
        self.id_field = id_field
        self.text_field = text_field
        self.sizes = sizes or {}
        self.split_bytes = SPLIT_BYTES if split_bytes is None else split_bytes

    def expand(self, pbegin):
        total = sum(self.sizes.values()) if all(p in self.sizes for p in self.paths) else 0
        return (
            pbegin
            | "InputFiles" >> beam.Create([(p, self.sizes.get(p)) for p in self.paths])
            | "SplitFiles" >> beam.FlatMap(split_files, self.split_bytes)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadRecords" >> beam.ParDo(
                ReadRecords(self.id_field, self.text_field, total, counting=self.counting)
            ).with_output_types(DocBatch).with_outputs("errors", COUNTS, main="docs")
        )
