"""The shards read back with pyarrow, DuckDB and Polars; compression, row groups, float16, metadata."""

from __future__ import annotations

import glob
import json

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from tests import helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.sample_jsonl(tmp_path_factory.mktemp("formats"), 400, seed=21)


@pytest.fixture(scope="module")
def final_output(small_job, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("final") / "emb"
    helpers.run_job(small_job.argv(corpus[0], out, "--num_shards", "3"))
    return str(out)


def test_pyarrow_duckdb_and_polars_read_the_same_ids_and_vectors(final_output, corpus):
    table = helpers.read_output(final_output)
    ids = table.column("doc_id").to_pylist()
    assert sorted(ids) == sorted(d for d, _ in corpus[1]) and len(set(ids)) == len(ids)
    expected = dict(zip(ids, table.column("vector").to_numpy(zero_copy_only=False)))
    pattern = f"{final_output}-*-of-*.parquet"

    con = duckdb.connect()
    # Parquet has no fixed-size list type: DuckDB reads a list and casts it to FLOAT[6] (see README).
    con.execute(f"CREATE VIEW emb AS SELECT doc_id, num_tokens, vector::FLOAT[6] AS vector "
                f"FROM read_parquet('{pattern}')")
    assert con.execute("SELECT typeof(vector) FROM emb LIMIT 1").fetchone()[0] == "FLOAT[6]"
    rows = con.execute("SELECT doc_id, vector, num_tokens FROM emb").fetchall()
    assert len(rows) == len(ids)
    for doc_id, vector, _ in rows:
        np.testing.assert_array_equal(np.asarray(vector, dtype=np.float32), expected[doc_id])
    dot = con.execute(f"SELECT array_inner_product(vector, vector) FROM emb WHERE doc_id = '{ids[0]}'").fetchone()[0]
    assert dot == pytest.approx(float(np.dot(expected[ids[0]], expected[ids[0]])), rel=1e-5)

    frame = pl.read_parquet(pattern)
    assert frame.schema["vector"] == pl.Array(pl.Float32, 6)
    assert frame.height == len(ids) and frame["doc_id"].n_unique() == len(ids)
    for doc_id, vector in zip(frame["doc_id"].to_list(), frame["vector"].to_numpy()):
        np.testing.assert_array_equal(vector, expected[doc_id])


def test_metadata_says_what_the_numbers_mean(final_output, small_job):
    import hashlib

    meta = json.loads(pq.ParquetFile(f"{final_output}-00000-of-00003.parquet").schema_arrow.metadata[b"embedding_job"])
    assert meta["model_sha256"] == hashlib.sha256(open(small_job.model, "rb").read()).hexdigest()
    assert meta["tokenizer_sha256"] == hashlib.sha256(open(small_job.tokenizer, "rb").read()).hexdigest()
    assert (meta["layer"], meta["layer_class"], meta["mode"], meta["columns"]) == ("lstm", "LSTM", "final",
                                                                                   {"vector": 6})
    assert (meta["maxlen"], meta["padding"], meta["truncating"], meta["masked"]) == (32, "pre", "pre", True)
    assert meta["version"]


def test_compression_is_on_by_default_and_selectable(final_output, small_job, corpus, tmp_path):
    shards = [pq.ParquetFile(p).metadata for p in sorted(glob.glob(f"{final_output}-*-of-00003.parquet"))]
    default = next(m for m in shards if m.num_row_groups).row_group(0).column(2).compression
    assert default == "ZSTD"
    helpers.run_job(small_job.argv(corpus[0], tmp_path / "s", "--compression", "snappy"))
    codec = pq.ParquetFile(f"{tmp_path / 's'}-00000-of-00001.parquet").metadata.row_group(0).column(2).compression
    assert codec == "SNAPPY"


def test_row_groups_are_sized_in_bytes(small_job, corpus, tmp_path):
    """With a 1 MiB target, 400 sequence rows of ~13 tokens x 6 floats fit one group; the sequence
    mode's bytes per row decide, not a row count."""
    helpers.run_job(small_job.argv(corpus[0], tmp_path / "one", "--mode", "sequence", "--row_group_mb", "1"))
    meta = pq.ParquetFile(f"{tmp_path / 'one'}-00000-of-00001.parquet").metadata
    assert meta.num_row_groups == 1 and meta.num_rows == 400


def test_float16_output_halves_the_vectors_and_keeps_values(final_output, small_job, corpus, tmp_path):
    helpers.run_job(small_job.argv(corpus[0], tmp_path / "h", "--dtype", "float16"))
    half = helpers.read_output(str(tmp_path / "h"))
    assert str(half.schema.field("vector").type) == "fixed_size_list<item: halffloat>[6]"
    full = helpers.read_output(final_output)
    want = dict(zip(full.column("doc_id").to_pylist(), full.column("vector").to_numpy(zero_copy_only=False)))
    for doc_id, vector in zip(half.column("doc_id").to_pylist(), half.column("vector").to_numpy(zero_copy_only=False)):
        np.testing.assert_allclose(vector.astype(np.float32), want[doc_id], atol=1e-3, rtol=1e-3)


def test_sequence_vectors_read_as_nested_arrays_in_duckdb_and_polars(small_job, corpus, tmp_path):
    helpers.run_job(small_job.argv(corpus[0], tmp_path / "seq", "--mode", "sequence"))
    pattern = f"{tmp_path / 'seq'}-*-of-*.parquet"
    con = duckdb.connect()
    kind, ok = con.execute(f"SELECT typeof(vectors::FLOAT[6][]), bool_and(len(vectors) = num_tokens) "
                           f"FROM read_parquet('{pattern}') GROUP BY 1").fetchone()
    assert kind == "FLOAT[6][]" and ok
    frame = pl.read_parquet(pattern)
    assert frame.schema["vectors"] == pl.List(pl.Array(pl.Float32, 6))
    assert (frame["vectors"].list.len() == frame["num_tokens"]).all()


def test_progress_logs_documents_and_rate(caplog):
    import logging

    from transforms.read import InputBytes
    from transforms.write import Progress

    progress = Progress(every_s=0.0, input_bytes=InputBytes())  # input sizes unknown
    with caplog.at_level(logging.INFO, logger="beam_pipeline.progress"):
        for _ in range(512):
            progress.tick()
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_pipeline.progress"]
    assert lines and lines[-1].startswith("progress: 512 documents embedded,") and lines[-1].endswith("docs/s")
