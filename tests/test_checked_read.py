"""``transforms/checked_read.py``: every page of a previous shard is checked against its CRC-32, decoded or
not. Property: a bit flipped anywhere in a row group's column chunks is reported (``ValueError`` naming the
file), or the table read is exactly the one written: a damaged value is never returned."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.checked_read import STREAM_BUFFER, iter_checked, read_checked, verify_chunk


def _table(n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(5)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 8, dtype=np.float32)), 8)
    return pa.table({"doc_id": pa.array([f"doc-{i}" for i in range(n)]), "vector": vectors,
                     "text_hash": pa.array([bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(n)],
                                           pa.binary(16))})


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("checked") / "shard.parquet"
    pq.write_table(_table(), path, write_page_checksum=True, compression="zstd", data_page_size=4096,
                   row_group_size=1500)
    return str(path)


def _chunks(path: str) -> list[tuple[int, int]]:
    md = pq.ParquetFile(path).metadata
    out = []
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(g).column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            out.append((start, col.total_compressed_size))
    return out


def test_an_intact_shard_reads_whole_or_by_columns(shard):
    want = pq.read_table(shard)
    got = pa.concat_tables([read_checked(shard, g) for g in range(2)])
    assert got.equals(want)
    keys = pa.concat_tables([read_checked(shard, g, ["doc_id", "text_hash"]) for g in range(2)])
    assert keys.equals(want.select(["doc_id", "text_hash"]))


def _read(path: str, columns, streamed: bool) -> pa.Table:
    """Both row groups, whole (``read_checked``) or a slice at a time, every column (``iter_checked``)."""
    if streamed:
        return pa.Table.from_batches([b for g in range(2) for b in iter_checked(path, g, batch_rows=500)])
    return pa.concat_tables([read_checked(path, g, columns) for g in range(2)])


@settings(max_examples=200, deadline=None)
@given(at=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       columns=st.sampled_from([None, ["doc_id", "text_hash"], ["vector"]]), streamed=st.booleans())
def test_a_flipped_bit_is_reported_or_harmless(shard, tmp_path_factory, at, bit, columns, streamed):
    chunks = _chunks(shard)
    total = sum(size for _, size in chunks)
    offset = int(at * total)
    for start, size in chunks:
        if offset < size:
            position = start + offset
            break
        offset -= size
    data = bytearray(open(shard, "rb").read())
    data[position] ^= 1 << bit
    damaged = str(tmp_path_factory.mktemp("flip") / "shard.parquet")
    open(damaged, "wb").write(bytes(data))
    columns = None if streamed else columns
    want = pq.read_table(shard, columns=columns)
    try:
        got = _read(damaged, columns, streamed)
    except ValueError as e:
        assert damaged in str(e)
        return
    assert got.equals(want), "a damaged value was returned"


def test_a_row_group_is_decoded_a_slice_at_a_time_never_read_whole_first(tmp_path):
    """``iter_checked`` (what a night copies through) holds a buffer per column and the slice decoded, not
    the row group's column chunks (Arrow pre-buffers them whole by default: a 30 MB row group held while
    the copies are written)."""
    n = 100000
    rng = np.random.default_rng(3)
    table = pa.table({"doc_id": pa.array([f"d{i}" for i in range(n)]),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 64, dtype=np.float32)), 64),
                      "text_hash": pa.array([b"h" * 16] * n, pa.binary(16))})
    path = str(tmp_path / "one-group.parquet")
    pq.write_table(table, path, write_page_checksum=True, compression="zstd", row_group_size=n)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1).total_compressed_size
    assert chunk > 8 * STREAM_BUFFER
    pools = [getattr(pa, f"{name}_memory_pool")() for name in pa.supported_memory_backends()]

    def allocated() -> int:  # every pool: Arrow's C++ default need not be pyarrow's (transforms/__init__.py)
        return sum(pool.bytes_allocated() for pool in pools)

    base, most, rows = allocated(), 0, 0
    for batch in iter_checked(path, 0, batch_rows=1024):
        most = max(most, allocated() - base - batch.nbytes)
        rows += batch.num_rows
    assert rows == n
    assert most < chunk / 3, (most, chunk)


def test_pages_without_checksums_are_refused(tmp_path):
    path = str(tmp_path / "nocrc.parquet")
    pq.write_table(_table(200), path, write_page_checksum=False)
    for columns in (None, ["doc_id", "text_hash"]):
        with pytest.raises(ValueError, match="without a checksum"):
            read_checked(path, 0, columns)
    start, size = _chunks(path)[1]
    with pytest.raises(ValueError, match="without a checksum"):
        verify_chunk(open(path, "rb").read()[start:start + size])
