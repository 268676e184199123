"""The job with gs:// --input, --model, --tokenizer and --output, for real, against a local GCS emulator.

The demo corpus (split in two files, read through a gs:// glob), model and tokenizer are uploaded
to an emulated bucket; the job runs in-process on the DirectRunner with every path a gs:// URI;
its shards are listed and downloaded with google-cloud-storage and compared with a local run of
the same job. The Beam GCS code paths exercised for real: object metadata, glob listing, ranged
reads, resumable uploads (BlobWriter), the sink's temp-file rename (batched copyTo + batched
delete) and the recursive delete of its temp directory. See ``gcs_emulator.py`` for the one thing
set up around the emulator (Beam's credential lookup).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.__main__ import run
from beam_pipeline.demo import build_assets
from beam_pipeline.options import ConfigError
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (the session fixture)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARD_NAME = re.compile(r"emb-\d{5}-of-(\d{5})\.parquet")
JOB_FLAGS = ["--mode", "final", "--num_shards", "3", "--batch_size", "128", "--padding", "pre", "--truncating", "pre"]


@pytest.fixture(scope="module")
def local_assets(tmp_path_factory) -> dict[str, str]:
    """The demo assets, with the corpus split into two files (read through a glob)."""
    folder = tmp_path_factory.mktemp("assets")
    paths = build_assets(str(folder))
    with open(paths["corpus.jsonl"], "rb") as f:
        lines = f.read().splitlines(keepends=True)
    for part, chunk in enumerate((lines[: len(lines) // 2], lines[len(lines) // 2:])):
        (folder / f"corpus-{part}.jsonl").write_bytes(b"".join(chunk))
    ids = [json.loads(line)["id"] for line in lines]
    return {
        "folder": str(folder),
        "corpus_glob": str(folder / "corpus-*.jsonl"),
        "model": paths["model.keras"],
        "tokenizer": paths["tokenizer.json"],
        "ids": ids,
    }


@pytest.fixture(scope="module")
def gs_assets(gcs_emulator, local_assets) -> dict[str, str]:  # noqa: F811
    """The same files uploaded to gs://BUCKET/assets/."""
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    for name in ("corpus-0.jsonl", "corpus-1.jsonl", "model.keras", "tokenizer.json"):
        bucket.blob(f"assets/{name}").upload_from_filename(os.path.join(local_assets["folder"], name))
    return {
        "corpus_glob": gcs_emulator.uri("assets/corpus-*.jsonl"),
        "model": gcs_emulator.uri("assets/model.keras"),
        "tokenizer": gcs_emulator.uri("assets/tokenizer.json"),
    }


def _argv(assets: dict[str, str], output: str) -> list[str]:
    return ["--input", assets["corpus_glob"], "--model", assets["model"], "--tokenizer", assets["tokenizer"],
            "--output", output, *JOB_FLAGS]


def _sorted_by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("doc_id")


def test_job_reads_and_writes_gs_uris(gcs_emulator, local_assets, gs_assets, tmp_path):  # noqa: F811
    client = gcs_emulator.client()
    out_prefix = "out/emb"
    summary = run(_argv(gs_assets, gcs_emulator.uri(out_prefix)))
    assert summary is not None, "the job's summary was not found in the bucket"

    # Shards, listed and downloaded from the bucket with google-cloud-storage (not through Beam).
    names = sorted(b.name for b in client.list_blobs(gcs_emulator.bucket, prefix="out/"))
    shards = [n for n in names if SHARD_NAME.fullmatch(n.rsplit("/", 1)[-1])]
    assert [int(SHARD_NAME.fullmatch(n.rsplit("/", 1)[-1]).group(1)) for n in shards] == [3, 3, 3]
    assert not [n for n in names if "beam-temp" in n], f"the sink left temp files behind: {names}"
    assert set(names) == {*shards, "out/emb-errors-00000-of-00001.jsonl", "out/emb-summary.json"}

    bucket = client.bucket(gcs_emulator.bucket)
    tables = [pq.read_table(pa.BufferReader(bucket.blob(n).download_as_bytes())) for n in shards]
    remote = _sorted_by_id(pa.concat_tables(tables))

    ids = remote.column("doc_id").to_pylist()
    assert len(ids) == len(local_assets["ids"]) == 600
    assert len(set(ids)) == len(ids), "a document was written twice"
    assert set(ids) == set(local_assets["ids"])

    # The summary JSON, read back from the bucket.
    written = json.loads(bucket.blob("out/emb-summary.json").download_as_bytes())
    assert written["read"] == written["embedded"] == 600
    assert written["metrics"] == summary["metrics"] and written["metrics"]["tokens"] > 0  # rewritten with them
    assert written["dead_lettered"] == 0 and written["accounted"]
    assert written["output_files"] == [gcs_emulator.uri(n) for n in shards]
    assert written["embedding_job"]["model"] == gs_assets["model"]
    assert summary["embedded"] == 600
    assert bucket.blob("out/emb-errors-00000-of-00001.jsonl").download_as_bytes() == b""

    # The same job on local files gives the same numbers.
    local_summary = run(_argv(local_assets, str(tmp_path / "emb")))
    local = _sorted_by_id(pa.concat_tables([pq.read_table(p) for p in local_summary["output_files"]]))
    assert local.column("doc_id").to_pylist() == ids
    assert local.column("num_tokens").equals(remote.column("num_tokens"))
    assert written["embedding_job"]["model_sha256"] == local_summary["embedding_job"]["model_sha256"]
    assert written["embedding_job"]["tokenizer_sha256"] == local_summary["embedding_job"]["tokenizer_sha256"]
    vector_columns = [name for name in remote.column_names if name not in ("doc_id", "num_tokens", "text_hash")]
    assert vector_columns == ["vector"]
    for name in vector_columns:
        a = np.stack(remote.column(name).to_numpy(zero_copy_only=False))
        b = np.stack(local.column(name).to_numpy(zero_copy_only=False))
        assert a.shape == b.shape == (600, 32)
        assert np.max(np.abs(a - b)) <= 1e-6

    # Parquet metadata read through Beam's GCS file system (seekable ranged reads).
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(gcs_emulator.uri(shards[0])) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata
    assert json.loads(meta[b"embedding_job"])["model"] == gs_assets["model"]


def test_rerun_at_a_gs_prefix_replaces_the_previous_shards(gcs_emulator, gs_assets):  # noqa: F811
    client = gcs_emulator.client()
    prefix = gcs_emulator.uri("rerun/emb")

    def shard_names():
        return sorted(b.name for b in client.list_blobs(gcs_emulator.bucket, prefix="rerun/")
                      if SHARD_NAME.fullmatch(b.name.rsplit("/", 1)[-1]))

    run(_argv(gs_assets, prefix))
    assert len(shard_names()) == 3

    # A different job at the same prefix is refused: the previous shard's metadata is read from GCS.
    with pytest.raises(ConfigError, match="different job"):
        run([*_argv(gs_assets, prefix), "--mode", "states"])

    # The same job with fewer shards: the three old shards are deleted (batched delete on GCS).
    summary = run([*_argv(gs_assets, prefix), "--num_shards", "2"])
    names = shard_names()
    assert names == ["rerun/emb-00000-of-00002.parquet", "rerun/emb-00001-of-00002.parquet"]
    assert summary["output_files"] == [gcs_emulator.uri(n) for n in names]
    bucket = client.bucket(gcs_emulator.bucket)
    ids = [i for n in names
           for i in pq.read_table(pa.BufferReader(bucket.blob(n).download_as_bytes())).column("doc_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 600
    assert not [b.name for b in client.list_blobs(gcs_emulator.bucket, prefix="rerun/") if "beam-temp" in b.name]


def test_missing_gs_model_is_a_config_error(gcs_emulator, gs_assets):  # noqa: F811
    missing = gcs_emulator.uri("assets/no-such-model.keras")
    argv = _argv({**gs_assets, "model": missing}, gcs_emulator.uri("out-missing/emb"))
    with pytest.raises(ConfigError, match=re.escape(f"--model file not found: {missing}")):
        run(argv)
    assert not list(gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="out-missing/"))


def test_gs_jsonl_files_read_in_byte_ranges_give_every_document_once(gcs_emulator, gs_assets, monkeypatch):  # noqa: F811
    """Large uncompressed JSONL files are read in byte ranges: here every range a seek into a gs://
    object (Beam's GCS reader), ranges of 2000 bytes so that the two demo files make dozens."""
    from transforms import read

    monkeypatch.setattr(read, "SPLIT_BYTES", 2000)
    summary = run(_argv(gs_assets, gcs_emulator.uri("split/emb")))
    assert summary["read"] == summary["embedded"] == 600 and summary["accounted"]
    client = gcs_emulator.client()
    bucket = client.bucket(gcs_emulator.bucket)
    shards = [b.name for b in client.list_blobs(gcs_emulator.bucket, prefix="split/") if b.name.endswith(".parquet")]
    ids = [i for n in shards for i in pq.read_table(pa.BufferReader(bucket.blob(n).download_as_bytes()))
           .column("doc_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 600
    sizes = [b.size for b in client.list_blobs(gcs_emulator.bucket, prefix="assets/corpus-")]
    assert sum(-(-s // 2000) for s in sizes) > 20, "the files were split into many ranges"


def test_previous_output_on_gs(gcs_emulator, local_assets, gs_assets, tmp_path):  # noqa: F811
    """``--previous`` equal to a gs:// ``--output``: the summary is kept aside in the bucket while the
    run replaces it, unchanged rows are read from the bucket and copied, and the result equals a full
    local run over the day's corpus."""
    prefix = gcs_emulator.uri("incremental/emb")
    run(_argv(gs_assets, prefix))
    lines = []
    for part in (0, 1):
        with open(os.path.join(local_assets["folder"], f"corpus-{part}.jsonl"), encoding="utf-8") as f:
            lines += [json.loads(line) for line in f]
    day2 = [r | {"text": r["text"] + " again"} if k < 5 else r for k, r in enumerate(lines[10:])]
    day2 += [{"id": "added", "text": lines[0]["text"]}]
    path = tmp_path / "day2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in day2), encoding="utf-8")
    argv = ["--input", str(path), "--model", gs_assets["model"], "--tokenizer", gs_assets["tokenizer"], *JOB_FLAGS]

    summary = run([*argv, "--output", prefix, "--previous", prefix])
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (585, 1, 5, 10)
    assert summary["written"] == len(day2) and summary["accounted"]
    names = [b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="incremental/")]
    assert "incremental/emb-summary.json" in names and "incremental/emb-summary.previous.json" not in names

    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    remote = _sorted_by_id(pa.concat_tables([pq.read_table(pa.BufferReader(bucket.blob(p.split("/", 3)[3])
                                                                           .download_as_bytes()))
                                             for p in summary["output_files"]]))
    full = run([*argv, "--output", str(tmp_path / "full")])
    local = _sorted_by_id(pa.concat_tables([pq.read_table(p) for p in full["output_files"]]))
    assert remote.column("doc_id").equals(local.column("doc_id"))
    assert remote.column("text_hash").equals(local.column("text_hash"))
    a = np.stack(remote.column("vector").to_numpy(zero_copy_only=False))
    b = np.stack(local.column("vector").to_numpy(zero_copy_only=False))
    assert np.max(np.abs(a - b)) <= 1e-6
