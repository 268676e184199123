"""Write: batches of embedded documents (``Rows``) -> Arrow tables of about one row group each -> sharded Parquet.

Columns: ``doc_id`` (string), ``num_tokens`` (int32), then by mode ``vector``
(``fixed_size_list<float>[D]``), ``vectors`` (``list<fixed_size_list<float>[D]>``, one vector per
real token) or the states ``h``, ``c`` / ``h_fw, c_fw, h_bw, c_bw`` (``fixed_size_list<float>[U]``),
and last ``text_hash`` (``fixed_size_binary(16)``: XXH3-128 of the text's UTF-8 bytes, what an
incremental run compares). Every file carries the key/value metadata ``embedding_job``: JSON that
says what the numbers are, and ``embedding_engines``: how many of the file's rows each engine computed.

Arrays are built from NumPy buffers (no per-float Python objects). Beam's file sink writes to a
temp directory and renames on success, so a killed run leaves no final shard behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io import iobase, parquetio, textio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsIter, AsSingleton

from beam_pipeline.engines import NAMES
from transforms.errors import NAMESPACE
from transforms.read import INPUT_BYTES, InputBytes

LOG = logging.getLogger("beam_pipeline.progress")

METADATA_KEY = b"embedding_job"
ENGINES_KEY = b"embedding_engines"
HASH_BYTES = 16
DICTIONARY_COLUMNS = ["num_tokens", "windows"]  # the columns written dictionary-encoded (few distinct values)


def value_type(dtype: str) -> pa.DataType:
    return pa.float16() if dtype == "float16" else pa.float32()


def schema(columns: list[tuple[str, int]], mode: str, dtype: str, provenance: dict, windows: bool = False) -> pa.Schema:
    """``doc_id``, ``num_tokens``, (``windows`` with ``--long_docs carry``), then the embedding columns."""
    fields = [pa.field("doc_id", pa.string(), nullable=False), pa.field("num_tokens", pa.int32(), nullable=False)]
    if windows:
        fields.append(pa.field("windows", pa.int32(), nullable=False))
    for name, dim in columns:
        vec = pa.list_(pa.field("element", value_type(dtype), nullable=False), dim)
        fields.append(pa.field(name, pa.list_(pa.field("element", vec, nullable=False)) if mode == "sequence" else vec,
                               nullable=False))
    fields.append(pa.field("text_hash", pa.binary(HASH_BYTES), nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})


def output_schema(config) -> pa.Schema:
    """The schema a job with ``config`` (``JobConfig``) writes."""
    return schema(config.columns, config.mode, config.dtype, config.provenance(), windows=config.long_docs == "carry")


def _fixed_size(values: np.ndarray, field_type: pa.DataType) -> pa.Array:
    numpy_type = np.float16 if field_type.value_type == pa.float16() else np.float32
    flat = pa.array(values.reshape(-1).astype(numpy_type, copy=False))
    return pa.FixedSizeListArray.from_arrays(flat, type=field_type)


SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
# With --previous equal to --output, the new shards must not take the names of the shards being read:
# a run writes ``PREFIX-SSSSS-of-NNNNN.parquet`` or, when the previous output at its prefix has those
# names, ``PREFIX-SSSSS-of-NNNNN.g1.parquet``, so the previous output stays whole until the new summary exists.
GENERATIONS = ("", ".g1")


def escape(prefix: str) -> str:
    """``prefix`` with glob characters (``*``, ``?``, ``[``) matched literally by ``FileSystems.match``."""
    return re.sub(r"([*?\[])", r"[\1]", prefix)


def final_files(prefix: str, suffix: str) -> list[str]:
    """The shards ``PREFIX-SSSSS-of-NNNNN{generation}{suffix}`` now at ``prefix`` (nothing else sharing it)."""
    found = FileSystems.match([f"{escape(prefix)}-*-of-*{suffix}"])[0].metadata_list
    generations = "|".join(re.escape(g) for g in GENERATIONS)
    shard = re.compile(re.escape(prefix) + rf"-\d{{5}}-of-\d{{5}}({generations})" + re.escape(suffix))
    return sorted(m.path for m in found if shard.fullmatch(m.path))


def generation_of(path: str) -> str:
    """``".g1"`` for ``...-of-NNNNN.g1.parquet``, else ``""``."""
    return ".g1" if re.search(r"-of-\d{5}\.g1\.[a-z]+$", path) else ""


class RenameEveryShard:
    """Mixin for Beam file sinks: every temp shard of this run is renamed into place, none deleted.

    Beam's ``FileBasedSink`` deletes a temp shard instead of renaming it when the final file exists
    with the same checksum (for local files: the size), which could keep another run's shard. Shards
    of earlier runs at the prefix are not deleted here: the output's summary, written last, lists this
    run's; ``pipeline.collect_garbage`` deletes the others once it is written (a killed run thus never
    leaves its prefix with fewer rows than its previous output had).
    """

    def pre_finalize(self, init_result, writer_results):
        """Beam's deletes the final files of this run's names before renaming: here nothing is deleted
        (the renames replace them; a kill in between must leave the previous output whole)."""

    def pre_finalize_windowed(self, init_result, writer_results, window=None):
        """As ``pre_finalize``."""

    def _check_state_for_finalize_write(self, writer_results, num_shards, window=None):
        """Every temp shard is renamed (Beam's own deletes one whose final file has the same checksum);
        looked up file by file, not by glob, so prefixes holding ``[``, ``*`` or ``?`` work."""
        src_files, dst_files, skipped = [], [], 0
        for shard_num, src in enumerate(writer_results):  # sorted by Beam, as in its own loop
            dst = self._get_final_name(shard_num, num_shards, window)
            if FileSystems.exists(src):
                src_files.append(src)
                dst_files.append(dst)
            elif FileSystems.exists(dst):  # renamed by an earlier attempt of this finalize
                skipped += 1
            else:
                from apache_beam.io.filesystem import BeamIOError

                raise BeamIOError(f"src and dst files do not exist. src: {src}, dst: {dst}")
        return src_files, dst_files, [], skipped


class ParquetShards(RenameEveryShard, parquetio._ParquetSink):
    """Beam's Parquet sink (``WriteToParquetBatched``) writing CRC-32 page checksums (verified when a
    later run copies rows: ``transforms/reuse.py``). Its records are ``(table, documents per engine)``:
    each file's footer gets the sum of its tables' counts as the key/value metadata ``embedding_engines``."""

    def __init__(self, prefix: str, arrow_schema: pa.Schema, compression: str, num_shards: int,
                 generation: str = ""):
        super().__init__(prefix, arrow_schema, compression, False, False, generation + ".parquet", num_shards,
                         SHARD_TEMPLATE, "application/x-parquet", None)

    def open(self, temp_path):
        import pyarrow.parquet as pq
        from apache_beam.io.filebasedsink import FileBasedSink

        handle = FileBasedSink.open(self, temp_path)
        self._file_handle = handle
        # dictionary encoding only for the small integer columns: ids, hashes and vectors are (nearly) all
        # distinct, so Arrow would fill a dictionary per column chunk and fall back to plain pages anyway
        # (measured, 64-float vectors: writing 2.2 -> 1.0 µs per row, reading 0.78 -> 0.55, files 15% smaller)
        writer = pq.ParquetWriter(handle, self._schema, compression=self._codec, use_compliant_nested_type=False,
                                  write_page_checksum=True, use_dictionary=DICTIONARY_COLUMNS)
        writer.engine_counts = {}
        writer.pending = None  # the table being encoded and written, in the background
        return writer

    def write_record(self, writer, record) -> None:
        """Hands ``record``'s table to a background thread once the one before is written: Arrow encodes and
        compresses it without the GIL while this thread goes on (reading, the model); one table at a time, in
        order, so the file is the same; an error surfaces here or at ``close``. A table only of rows copied
        from ``--previous`` is written on this thread."""
        table, engines = record
        _wait(writer)
        if set(engines) == {"reused"}:  # only rows copied from --previous: no model to overlap with, so written
            writer.write_table(table)   # here, and one table fewer in memory (a night's peak: 1M rows, -24 MB)
        else:
            writer.pending = _writers().submit(writer.write_table, table)
        for name, n in engines.items():
            writer.engine_counts[name] = writer.engine_counts.get(name, 0) + n

    def close(self, writer) -> None:
        _wait(writer)
        writer.add_key_value_metadata({ENGINES_KEY: json.dumps(dict(sorted(writer.engine_counts.items())))})
        super().close(writer)


def _wait(writer) -> None:
    pending, writer.pending = writer.pending, None
    if pending is not None:
        pending.result()


_WRITERS: dict[int, ThreadPoolExecutor] = {}


def _writers() -> ThreadPoolExecutor:
    """The process' background writer threads (``ParquetShards.write_record``), a few for the whole process,
    each writer keeping at most one table in flight; made anew in a forked process (threads do not fork)."""
    import os

    pid = os.getpid()
    if pid not in _WRITERS:
        _WRITERS.clear()
        _WRITERS[pid] = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parquet-write")
    return _WRITERS[pid]


class JsonLinesShards(RenameEveryShard, textio._TextSink):
    """Beam's text sink (``WriteToText``), every shard renamed into place."""

    def __init__(self, prefix: str):
        super().__init__(prefix, file_name_suffix=".jsonl", shard_name_template=SHARD_TEMPLATE)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Logs documents embedded so far and the rate, at most every ``every_s`` seconds, per worker;
    where the input's sizes are known, also the share of its bytes read and the time left at the
    rate so far."""

    def __init__(self, every_s: float = 10.0, input_bytes: InputBytes = INPUT_BYTES):
        self.every_s = every_s
        self.input_bytes = input_bytes
        self.count = 0
        self.start = self.last = time.monotonic()

    def tick(self, documents: int = 1) -> None:
        self.count += documents
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            elapsed = max(now - self.start, 1e-9)
            line = f"progress: {self.count} documents embedded, {self.count / elapsed:.0f} docs/s"
            share = self.input_bytes.share()
            if share:
                line += f", {share:.0%} of the input read, about {_duration(elapsed * (1 - share) / share)} left"
            LOG.info(line)


@dataclasses.dataclass
class Rows:
    """Embedded documents in columns, one batch of them: what the embed stage emits (one element per
    batch, not per document) and the writer turns into Arrow tables without touching single rows.

    ``ids``: ``pa.string()`` array. ``columns``: per embedding column a ``(B, D)`` array, or for
    ``sequence`` one flat ``(sum(num_tokens), D)`` array whose rows ``offsets`` (``B + 1``) delimit per
    document. ``text_hash``: ``(B, 16)`` uint8. ``engines``: ``(B,)`` uint8, the engine that computed
    each document (its index in ``beam_pipeline.engines.NAMES``)."""

    ids: pa.Array
    num_tokens: np.ndarray
    columns: list
    offsets: np.ndarray | None = None
    windows: np.ndarray | None = None
    text_hash: np.ndarray | None = None
    engines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Every buffer the rows hold: the vectors and the ids, counts, hashes and engine codes (with
        1-float vectors the per-row columns are most of a row group)."""
        size = sum(c.nbytes for c in self.columns) + self.ids.nbytes + self.num_tokens.nbytes
        return size + sum(a.nbytes for a in (self.offsets, self.windows, self.text_hash, self.engines)
                          if a is not None)

    def take(self, index: np.ndarray) -> Rows:
        """The documents at ``index`` (increasing positions), in that order."""
        from beam_pipeline.ragged import take_ragged

        windows = None if self.windows is None else self.windows[index]
        text_hash = None if self.text_hash is None else self.text_hash[index]
        num_tokens = self.num_tokens[index]
        ids = self.ids.take(pa.array(index, type=pa.int64()))
        engines = self.engines[index]
        if self.offsets is None:
            return Rows(ids, num_tokens, [c[index] for c in self.columns], None, windows, text_hash, engines)
        offsets, rows = take_ragged(self.offsets.astype(np.int64), np.arange(self.offsets[-1]), index)
        return Rows(ids, num_tokens, [self.columns[0][rows]], offsets, windows, text_hash, engines)


@dataclasses.dataclass
class CopiedRows:
    """Rows copied from a previous output (``--previous``): a ``pa.Table`` already of the output's schema,
    written as it is (never through NumPy and back); their engine is ``reused``."""

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def take(self, index: np.ndarray) -> CopiedRows:
        return CopiedRows(self.table.take(pa.array(index, type=pa.int64())))


def engine_counts(parts: list) -> dict[str, int]:
    """Documents per engine in ``parts`` (``Rows`` and ``CopiedRows``)."""
    from beam_pipeline.engines import count_codes

    computed = [p.engines for p in parts if isinstance(p, Rows)]
    counts = count_codes(np.concatenate(computed)) if computed else {}
    copied = sum(len(p) for p in parts if isinstance(p, CopiedRows))
    if copied:
        counts["reused"] = counts.get("reused", 0) + copied
    return counts


def _hash_array(parts: list[Rows]) -> pa.Array:
    hashes = np.concatenate([p.text_hash for p in parts]) if parts else np.zeros((0, HASH_BYTES), np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(HASH_BYTES), len(hashes),
                                                [None, pa.py_buffer(np.ascontiguousarray(hashes).tobytes())])


def rows_to_table(parts: list, arrow_schema: pa.Schema, mode: str) -> pa.Table:
    """Batches of embedded (``Rows``) or copied (``CopiedRows``) documents -> one ``pa.Table`` of
    ``arrow_schema`` (copied rows' chunks as they are)."""
    copied = [p.table for p in parts if isinstance(p, CopiedRows)]
    if copied:
        computed = [p for p in parts if isinstance(p, Rows)]
        tables = ([_rows_table(computed, arrow_schema, mode)] if computed else []) + copied
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return _rows_table(parts, arrow_schema, mode)


def _rows_table(parts: list[Rows], arrow_schema: pa.Schema, mode: str) -> pa.Table:
    count = sum(len(p) for p in parts)
    reused = NAMES.index("reused")  # rows copied from --previous are written, not embedded
    Metrics.counter(NAMESPACE, "embedded").inc(count - sum(int((p.engines == reused).sum()) for p in parts))
    ids = pa.concat_arrays([p.ids for p in parts]).cast(pa.string()) if parts else pa.array([], pa.string())
    num_tokens = pa.array(np.concatenate([p.num_tokens for p in parts]).astype(np.int32, copy=False))
    arrays = [ids, num_tokens]
    first = 2
    if arrow_schema.names[2] == "windows":
        arrays.append(pa.array(np.concatenate([p.windows for p in parts]).astype(np.int32, copy=False)))
        first = 3
    for index, field in enumerate(list(arrow_schema)[first:-1]):
        values = np.concatenate([p.columns[index] for p in parts])
        if mode == "sequence":
            offsets = np.zeros(count + 1, dtype=np.int32)
            np.cumsum(np.concatenate([np.diff(p.offsets) for p in parts]), out=offsets[1:])
            inner = _fixed_size(values, field.type.value_type)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), inner, type=field.type))
        else:
            arrays.append(_fixed_size(values, field.type))
    arrays.append(_hash_array(parts))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


# what ToArrowTables outputs, declared so that Beam sizes the tables without encoding them (transforms/coders.py)
TABLE_RECORD = beam.typehints.Tuple[pa.Table, beam.typehints.Dict[str, int]]


class ToArrowTables(beam.DoFn):
    """Buffers batches of embedded documents (``Rows``) and emits ``(pa.Table, documents per engine)``
    of ~``target_bytes``."""

    def __init__(self, arrow_schema: pa.Schema, mode: str, target_bytes: int):
        self.schema = arrow_schema
        self.mode = mode
        self.target_bytes = target_bytes
        self._parts: list = []
        self._bytes = 0

    def setup(self):
        self._progress = Progress()

    def start_bundle(self):
        self._parts, self._bytes = [], 0

    def process(self, element: Rows):
        self._parts.append(element)
        self._bytes += element.nbytes
        self._progress.tick(len(element))
        if self._bytes >= self.target_bytes:
            yield self._table()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._parts:
            yield WindowedValue(self._table(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _table(self) -> tuple[pa.Table, dict]:
        parts, self._parts, self._bytes = self._parts, [], 0
        return rows_to_table(parts, self.schema, self.mode), engine_counts(parts)


class _RoundRobin(beam.DoFn):
    """Deals the documents of each batch to the shards in turn, from a random start, continuing
    across batches: shards differ by at most one document per worker, whatever the bundles.
    Emits ``(shard, Rows)`` per shard that gets documents of the batch."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def setup(self):
        self._next = random.randrange(self.num_shards)

    def process(self, rows: Rows):
        n = len(rows)
        shard_of = (self._next + np.arange(n)) % self.num_shards
        self._next = (self._next + n) % self.num_shards
        for k in range(min(n, self.num_shards)):
            shard = (int(shard_of[0]) + k) % self.num_shards
            yield shard, rows.take(np.flatnonzero(shard_of == shard))


class _WriteShard(beam.DoFn):
    """One shard's rows -> Arrow tables of ~``target_bytes`` -> one temp file of ``sink``; also
    outputs ``(engine, documents)`` pairs (tag ``rows``)."""

    def __init__(self, sink, arrow_schema: pa.Schema, mode: str, target_bytes: int):
        self.sink = sink
        self.schema = arrow_schema
        self.mode = mode
        self.target_bytes = target_bytes

    def setup(self):
        self._progress = Progress()

    def process(self, element, init_result):
        from apache_beam.transforms.window import TimestampedValue
        from apache_beam.utils.timestamp import MAX_TIMESTAMP

        writer = self.sink.open_writer(init_result, str(uuid.uuid4()))
        parts, size, counts = [], 0, {}
        for rows in element[1]:
            parts.append(rows)
            size += rows.nbytes
            for name, n in engine_counts([rows]).items():
                counts[name] = counts.get(name, 0) + n
            self._progress.tick(len(rows))
            if size >= self.target_bytes:
                writer.write((rows_to_table(parts, self.schema, self.mode), engine_counts(parts)))
                parts, size = [], 0
        if parts:
            writer.write((rows_to_table(parts, self.schema, self.mode), engine_counts(parts)))
        yield TimestampedValue(writer.close(), MAX_TIMESTAMP)
        for name, n in counts.items():
            yield beam.pvalue.TaggedOutput("rows", (name, n))


class WriteEmbeddings(beam.PTransform):
    """Writes the embedded documents; returns the PCollections of shard file names and of
    ``(engine, documents written)`` pairs.

    With ``num_shards`` 0 the runner decides: each bundle's tables go to their own files. With
    ``num_shards`` N, rows (not tables of up to a row group) are dealt to the N shards in turn,
    so every shard gets its share however few row groups the output holds; Beam's own
    initialize / pre-finalize / finalize steps of the sink commit them.
    """

    def __init__(self, prefix: str, arrow_schema: pa.Schema, mode: str, num_shards: int, compression: str,
                 row_group_bytes: int, generation: str = ""):
        super().__init__()
        self.generation = generation
        self.prefix = prefix
        self.schema = arrow_schema
        self.mode = mode
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_bytes = row_group_bytes

    def expand(self, embedded):
        """``embedded``: one PCollection of ``Rows``, or several (the embedded and the reused documents of an
        incremental run). Without ``num_shards`` each is written where it is produced, its own bundles to
        their own files, and only the file names meet: a ``Flatten`` of the rows themselves would make Beam's
        local runner hold all of them between stages."""
        parts = list(embedded) if isinstance(embedded, (list, tuple)) else [embedded]
        sink = ParquetShards(self.prefix, self.schema, self.compression, self.num_shards, self.generation)
        once = parts[0].pipeline | "DoOnce" >> beam.Create([None])
        init = once | "InitializeWrite" >> beam.Map(lambda _, s: s.initialize_write(), sink)
        if not self.num_shards:
            files, counts = [], []
            for k, part in enumerate(parts):
                label = "" if k == 0 else str(k + 1)
                tables = part | f"ToArrow{label}" >> beam.ParDo(ToArrowTables(
                    self.schema, self.mode, self.row_group_bytes)).with_output_types(TABLE_RECORD)
                files.append(tables | f"WriteParquet{label}" >> beam.ParDo(iobase._WriteBundleDoFn(sink),
                                                                            AsSingleton(init)))
                counts.append(tables | f"CountRows{label}" >> beam.FlatMap(lambda record: record[1].items()))
            # the file names through a GroupByKey, as Beam's WriteImpl does: a side input read straight off
            # the writers would split them from the stage that feeds them (on Flink a pipelined exchange, so a
            # lost TaskManager failed its consumers too and used up the job's restart attempts at once)
            written = (
                (files[0] if len(files) == 1 else files | "AllShards" >> beam.Flatten())
                | "PairFiles" >> beam.Map(lambda name: (None, name))
                | "GroupFiles" >> beam.GroupByKey()
                | "FileNames" >> beam.FlatMap(lambda kv: kv[1])
            )
            rows = ((counts[0] if len(counts) == 1 else counts | "AllCounts" >> beam.Flatten())
                    | "SumRows" >> beam.CombinePerKey(sum))
            min_shards = 1
        else:
            rows_in = parts[0] if len(parts) == 1 else parts | "AllRows" >> beam.Flatten()
            dealt = (
                rows_in
                | "DealToShards" >> beam.ParDo(_RoundRobin(self.num_shards))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShard(sink, self.schema, self.mode, self.row_group_bytes),
                                              AsSingleton(init)).with_outputs("rows", main="files")
            )
            written = dealt.files
            rows = dealt.rows | "SumRows" >> beam.CombinePerKey(sum)
            min_shards = self.num_shards
        pre = once | "PreFinalize" >> beam.FlatMap(iobase._pre_finalize, sink, AsSingleton(init), AsIter(written))
        shards = once | "FinalizeWrite" >> beam.FlatMap(
            iobase._finalize_write, sink, AsSingleton(init), AsIter(written), min_shards, AsSingleton(pre))
        return shards, rows


def _register_coders() -> None:
    from transforms.coders import ArrowTableCoder, CopiedRowsCoder, RowsCoder

    for cls, coder in ((Rows, RowsCoder), (CopiedRows, CopiedRowsCoder), (pa.Table, ArrowTableCoder)):
        beam.coders.registry.register_coder(cls, coder)


_register_coders()
