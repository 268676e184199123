"""What writing and reading one Parquet row of the job's output costs on this machine, with and without
dictionary encoding of the columns that hardly repeat (ids, text hashes, vectors): the floor under an
incremental night, which decodes the previous rows it copies and encodes them again.

``python -m bench.parquet_floor [--rows 300000] [--dim 64]``

A table of the job's schema (``doc_id``, ``num_tokens``, ``vector`` of ``--dim`` float32 in [-1, 1], 16-byte
``text_hash``) written in 16384-row tables with page checksums, as the job writes, then read back row group
by row group with checksums verified; best of 3, µs per row, and the file's bytes per row.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _table(rows: int, dim: int) -> pa.Table:
    rng = np.random.default_rng(0)
    values = np.tanh(rng.standard_normal((rows, dim)).astype(np.float32))
    hashes = rng.integers(0, 256, rows * 16, dtype=np.uint8).tobytes()
    return pa.table({
        "doc_id": pa.array([f"doc-{i:07d}" for i in range(rows)]),
        "num_tokens": pa.array(np.full(rows, 20, np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim),
        "text_hash": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, pa.py_buffer(hashes)]),
    })


def _best(f, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parquet_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args(argv)
    table = _table(args.rows, args.dim)
    print(f"{'compression':11} {'dictionary':22} {'write µs/row':>12} {'read µs/row':>11} {'bytes/row':>9}")
    for compression in ("zstd", "none"):
        for label, dictionary in (("every column", True), ("num_tokens only (job)", ["num_tokens"])):
            def write(compression=compression, dictionary=dictionary) -> bytes:
                sink = io.BytesIO()
                with pq.ParquetWriter(sink, table.schema, compression=compression, use_compliant_nested_type=False,
                                      write_page_checksum=True, use_dictionary=dictionary) as writer:
                    for start in range(0, args.rows, 16384):
                        writer.write_table(table.slice(start, 16384))
                return sink.getvalue()

            seconds = _best(write)
            data = write()
            shard = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
            read = _best(lambda shard=shard: [shard.read_row_group(g, use_threads=False)
                                              for g in range(shard.num_row_groups)])
            print(f"{compression:11} {label:22} {1e6 * seconds / args.rows:12.2f} {1e6 * read / args.rows:11.2f} "
                  f"{len(data) / args.rows:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
