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

import apache_beam as beam
import numpy as np
import pyarrow as pa

METADATA_KEY = b"embedding_job"


def value_type(dtype: str) -> pa.DataType:
    return pa.float16() if dtype == "float16" else pa.float32()


def schema(columns: list[tuple[str, int]], mode: str, dtype: str, provenance: dict) -> pa.Schema:
    fields = [pa.field("doc_id", pa.string(), nullable=False), pa.field("num_tokens", pa.int32(), nullable=False)]
    for name, dim in columns:
        vec = pa.list_(pa.field("element", value_type(dtype), nullable=False), dim)
        fields.append(pa.field(name, pa.list_(pa.field("element", vec, nullable=False)) if mode == "sequence" else vec,
                               nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(provenance, sort_keys=True).encode()})


def _fixed_size(values: np.ndarray, field_type: pa.DataType) -> pa.Array:
    numpy_type = np.float16 if field_type.value_type == pa.float16() else np.float32
    flat = pa.array(values.reshape(-1).astype(numpy_type, copy=False))
    return pa.FixedSizeListArray.from_arrays(flat, type=field_type)


class ToArrowTables(beam.DoFn):
    """Buffers ``(doc_id, (num_tokens, arrays))`` and emits ``pa.Table``s of ~``target_bytes``."""

    def __init__(self, arrow_schema: pa.Schema, mode: str, target_bytes: int):
        self.schema = arrow_schema
        self.mode = mode
        self.target_bytes = target_bytes
        self._rows: list = []
        self._bytes = 0

    def start_bundle(self):
        self._rows, self._bytes = [], 0

    def process(self, element):
        self._rows.append(element)
        self._bytes += sum(a.nbytes for a in element[1][1])
        if self._bytes >= self.target_bytes:
            yield self._table()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._rows:
            yield WindowedValue(self._table(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _table(self) -> pa.Table:
        rows, self._rows, self._bytes = self._rows, [], 0
        ids = pa.array([doc_id for doc_id, _ in rows], type=pa.string())
        num_tokens = pa.array(np.fromiter((r[1][0] for r in rows), dtype=np.int32, count=len(rows)))
        arrays = [ids, num_tokens]
        for index, field in enumerate(list(self.schema)[2:]):
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
        shards = tables | "WriteParquet" >> beam.io.WriteToParquetBatched(
            self.prefix,
            schema=self.schema,
            codec=self.compression,
            file_name_suffix=".parquet",
            num_shards=self.num_shards,
            shard_name_template="-SSSSS-of-NNNNN",
        )
        rows = tables | "CountRows" >> beam.Map(lambda t: t.num_rows) | "SumRows" >> beam.CombineGlobally(sum)
        return shards, rows
