"""Write: embedded documents -> Arrow tables of about one row group each -> sharded Parquet.

Columns: ``doc_id`` (string), ``num_tokens`` (int32), then by mode ``vector``
(``fixed_size_list<float>[D]``), ``vectors`` (``list<fixed_size_list<float>[D]>``, one vector per
real token) or the states ``h``, ``c`` / ``h_fw, c_fw, h_bw, c_bw`` (``fixed_size_list<float>[U]``).
Every file carries the key/value metadata ``embedding_job``: JSON that says what the numbers are.

Arrays are built from NumPy buffers (no per-float Python objects). Beam's file sink writes to a
temp directory and renames on success, so a killed run leaves no final shard behind.
"""

from __future__ import annotations

import json
import logging
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io import iobase, parquetio, textio
from apache_beam.metrics import Metrics

from transforms.errors import NAMESPACE

LOG = logging.getLogger("beam_pipeline.progress")

METADATA_KEY = b"embedding_job"


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
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})


def _fixed_size(values: np.ndarray, field_type: pa.DataType) -> pa.Array:
    numpy_type = np.float16 if field_type.value_type == pa.float16() else np.float32
    flat = pa.array(values.reshape(-1).astype(numpy_type, copy=False))
    return pa.FixedSizeListArray.from_arrays(flat, type=field_type)


SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


class ReplaceExistingFiles:
    """Mixin for Beam file sinks: this run's shard always replaces a final file of the same name.

    Beam's ``FileBasedSink`` deletes a temp shard instead of renaming it when the final file
    already exists with the same checksum, and for local files the checksum is the file size: a
    rerun (even with ``--overwrite`` and another model of the same dims) could keep the previous
    run's shard. Here every temp shard of this run is renamed over its final name.
    """

    def _check_state_for_finalize_write(self, writer_results, num_shards, window=None):
        src_files, dst_files, same_checksum, skipped = super()._check_state_for_finalize_write(
            writer_results, num_shards, window)
        duplicates = set(same_checksum)
        for shard_num, src in enumerate(writer_results):  # sorted by Beam, as in its own loop
            if src in duplicates:
                src_files.append(src)
                dst_files.append(self._get_final_name(shard_num, num_shards, window))
        return src_files, dst_files, [], skipped


class ParquetShards(ReplaceExistingFiles, parquetio._ParquetSink):
    """Beam's Parquet sink (``WriteToParquetBatched``) that replaces existing shards."""

    def __init__(self, prefix: str, arrow_schema: pa.Schema, compression: str, num_shards: int):
        super().__init__(prefix, arrow_schema, compression, False, False, ".parquet", num_shards, SHARD_TEMPLATE,
                         "application/x-parquet", None)


class JsonLinesShards(ReplaceExistingFiles, textio._TextSink):
    """Beam's text sink (``WriteToText``) that replaces existing shards."""

    def __init__(self, prefix: str):
        super().__init__(prefix, file_name_suffix=".jsonl", shard_name_template=SHARD_TEMPLATE)


class Progress:
    """Logs documents embedded so far and the rate, at most every ``every_s`` seconds, per worker."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.count = 0
        self.start = self.last = time.monotonic()

    def tick(self) -> None:
        self.count += 1
        if self.count % 256:
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            LOG.info("progress: %d documents embedded, %.0f docs/s", self.count, self.count / (now - self.start))


class ToArrowTables(beam.DoFn):
    """Buffers ``(doc_id, (num_tokens, arrays))`` and emits ``pa.Table``s of ~``target_bytes``."""

    def __init__(self, arrow_schema: pa.Schema, mode: str, target_bytes: int):
        self.schema = arrow_schema
        self.mode = mode
        self.target_bytes = target_bytes
        self._rows: list = []
        self._bytes = 0

    def setup(self):
        self._progress = Progress()

    def start_bundle(self):
        self._rows, self._bytes = [], 0

    def process(self, element):
        self._rows.append(element)
        self._bytes += sum(a.nbytes for a in element[1][1])
        self._progress.tick()
        if self._bytes >= self.target_bytes:
            yield self._table()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._rows:
            yield WindowedValue(self._table(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _table(self) -> pa.Table:
        rows, self._rows, self._bytes = self._rows, [], 0
        Metrics.counter(NAMESPACE, "embedded").inc(len(rows))
        ids = pa.array([doc_id for doc_id, _ in rows], type=pa.string())
        num_tokens = pa.array(np.fromiter((r[1][0] for r in rows), dtype=np.int32, count=len(rows)))
        arrays = [ids, num_tokens]
        first = 2
        if self.schema.names[2] == "windows":
            arrays.append(pa.array(np.fromiter((r[1][2] for r in rows), dtype=np.int32, count=len(rows))))
            first = 3
        for index, field in enumerate(list(self.schema)[first:]):
            parts = [r[1][1][index] for r in rows]
            if self.mode == "sequence":
                lengths = np.fromiter((len(p) for p in parts), dtype=np.int32, count=len(parts))
                offsets = np.zeros(len(parts) + 1, dtype=np.int32)
                np.cumsum(lengths, out=offsets[1:])
                inner = _fixed_size(np.concatenate(parts), field.type.value_type)
                arrays.append(pa.ListArray.from_arrays(pa.array(offsets), inner, type=field.type))
            else:
                arrays.append(_fixed_size(np.stack(parts), field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


class WriteEmbeddings(beam.PTransform):
    """Writes the embedded documents; returns the PCollection of shard file names and row counts."""

    def __init__(self, prefix: str, arrow_schema: pa.Schema, mode: str, num_shards: int, compression: str,
                 row_group_bytes: int):
        super().__init__()
        self.prefix = prefix
        self.schema = arrow_schema
        self.mode = mode
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_bytes = row_group_bytes

    def expand(self, embedded):
        tables = embedded | "ToArrow" >> beam.ParDo(ToArrowTables(self.schema, self.mode, self.row_group_bytes))
        shards = tables | "WriteParquet" >> iobase.Write(
            ParquetShards(self.prefix, self.schema, self.compression, self.num_shards))
        rows = tables | "CountRows" >> beam.Map(lambda t: t.num_rows) | "SumRows" >> beam.CombineGlobally(sum)
        return shards, rows
