"""Inputs and outputs that cannot mislead (issue 10): a byte-order mark loses no record, two runs'
shards never sit side by side, the summary is the output's commit record, and ``--num_shards``
spreads the rows."""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.demo import sample_corpus
from tests import helpers
from transforms.read import ReadRecords
from transforms.write import ParquetShards

BOM = b"\xef\xbb\xbf"


def _shards(prefix) -> list[str]:
    return sorted(glob.glob(f"{prefix}-[0-9]*-of-[0-9]*.parquet"))


# --- 5. byte-order mark -------------------------------------------------------------------------

TEXT_FILES = {
    "c.jsonl": b'{"id": "first", "text": "the rocket launch"}\n{"id": "second", "text": "a recipe"}\n',
    "c.csv": b"id,text\nfirst,the rocket launch\nsecond,a recipe\n",
    "c.txt": b"the rocket launch\na recipe\n",
}


@pytest.mark.parametrize("compress", ["", ".gz", ".bz2"])
@pytest.mark.parametrize("name", list(TEXT_FILES))
def test_leading_byte_order_mark_is_stripped_in_every_text_format(tmp_path, name, compress):
    data = BOM + TEXT_FILES[name]
    path = tmp_path / (name + compress)
    path.write_bytes({"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress}[compress](data))
    records = helpers.reader_records(ReadRecords("id", "text").process((str(path), os.path.getsize(path))))
    docs = [r for r in records if isinstance(r, tuple)]
    first_id = f"{path.name}:1" if name == "c.txt" else "first"
    assert docs[0] == (first_id, "the rocket launch"), "the first record keeps its id and text, without the mark"
    assert len(docs) == 2, "nothing dead-lettered"


# --- 6. the summary is the commit record; no mix of two runs' shards ----------------------------

def _table(schema, ids) -> pa.Table:
    return pa.table({"doc_id": ids, "num_tokens": [1] * len(ids)}, schema=schema)


def _write_shards(sink, schema, name: str, n: int):
    """(init result, writer results) of ``n`` writers of ``sink``, each writing one row ``name-i`` (a
    record of the job's sink is a table and its documents per engine)."""
    init = sink.initialize_write()
    results = []
    for i in range(n):
        writer = sink.open_writer(init, f"{name}{i}")
        writer.write((_table(schema, [f"{name}-{i}"]), {"keras": 1}))
        results.append(writer.close())
    return init, results


def test_previous_runs_shards_stay_until_this_runs_summary_is_written(tmp_path):
    """Beam's finalize of the real sink deletes nothing (a kill between its steps must leave the
    previous output whole); once the summary is written, ``collect_garbage`` deletes the shards it does
    not list. A retried finalize keeps what the first attempt renamed."""
    from beam_pipeline.pipeline import collect_garbage

    schema = pa.schema([("doc_id", pa.string()), ("num_tokens", pa.int32())])
    prefix = str(tmp_path / "emb")
    old = ParquetShards(prefix, schema, "none", 2)
    init, results = _write_shards(old, schema, "old", 2)
    list(old.finalize_write(init, results, None))
    before = _shards(prefix)
    assert [os.path.basename(p) for p in before] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
    new = ParquetShards(prefix, schema, "none", 5)
    init, results = _write_shards(new, schema, "new", 5)
    new.pre_finalize(init, sorted(results))
    src, dst, _, _ = new._check_state_for_finalize_write(sorted(results), 5)
    assert _shards(prefix) == before and len(src) == len(dst) == 5
    written = list(new.finalize_write(init, results, None))
    list(new.finalize_write(init, results, None))
    assert len(_shards(prefix)) == 7, "the previous run's shards stay until the summary exists"
    collect_garbage(prefix, {"output_files": written, "error_files": []})
    ids = sorted(i for p in _shards(prefix) for i in pq.read_table(p).column("doc_id").to_pylist())
    assert ids == [f"new-{i}" for i in range(5)] and sorted(_shards(prefix)) == sorted(written)


def test_rerun_with_other_num_shards_leaves_only_its_own_files_all_listed_in_the_summary(small_job, tmp_path):
    corpus, docs = helpers.sample_jsonl(tmp_path, 60, seed=2)
    out = tmp_path / "out" / "emb"
    helpers.run_job(small_job.argv(corpus, out, "--num_shards", "2"))
    summary = helpers.run_job(small_job.argv(corpus, out, "--num_shards", "5"))
    on_disk = sorted(str(p) for p in (tmp_path / "out").iterdir() if not p.name.endswith("-summary.json"))
    assert sorted(summary["output_files"] + summary["error_files"]) == on_disk
    assert [p.rsplit("-of-", 1)[1] for p in _shards(out)] == ["00005.parquet"] * 5
    assert helpers.read_output(str(out)).num_rows == len(docs)


def test_failed_run_leaves_no_summary_and_the_next_run_removes_its_temp_folders(small_job, tmp_path, monkeypatch):
    from transforms import write

    corpus, docs = helpers.sample_jsonl(tmp_path, 30, seed=6)
    out = tmp_path / "out" / "emb"
    helpers.run_job(small_job.argv(corpus, out))
    assert os.path.exists(f"{out}-summary.json")
    # Bad input no longer fails a run (it is dead-lettered): a failure of the writer itself (a full disk,
    # say) is injected instead, on the worker, after the run started replacing the output.
    def disk_full(*args, **kwargs):
        raise OSError("injected: no space left on device (parquet writer)")

    monkeypatch.setattr(write, "_fixed_size", disk_full)
    with pytest.raises(Exception, match="(?i)parquet"):
        helpers.run_job(small_job.argv([corpus], out, "--overwrite"))
    monkeypatch.undo()
    assert not os.path.exists(f"{out}-summary.json"), "no summary: the output is not complete"
    assert glob.glob(str(tmp_path / "out" / "beam-temp-emb-*")), "the failed run left Beam temp folders"
    summary = helpers.run_job(small_job.argv(corpus, out))
    assert glob.glob(str(tmp_path / "out" / "beam-temp-*")) == [], "the next run removed them"
    assert json.loads(open(f"{out}-summary.json").read())["embedded"] == summary["embedded"] == len(docs)


# --- 7. --num_shards spreads the rows -----------------------------------------------------------

def test_num_shards_spreads_rows_over_every_shard(small_job, tmp_path):
    docs = [(f"n{i}", d["text"]) for i, d in enumerate(sample_corpus(3000, seed=12))]
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "emb"
    helpers.run_job(small_job.argv(corpus, out, "--num_shards", "3"))
    rows = [pq.read_metadata(p).num_rows for p in _shards(out)]
    assert len(rows) == 3 and sum(rows) == 3000
    assert min(rows) > 0 and max(rows) <= 2 * min(rows), rows
    ids = helpers.read_output(str(out)).column("doc_id").to_pylist()
    assert sorted(ids) == sorted(d for d, _ in docs)
    assert np.all(np.asarray(rows) > 0)


# --- large JSONL files are read in byte ranges ------------------------------------------------------

def _range_records(path, split_bytes: int) -> tuple[list, list, int]:
    """(documents, dead letters, records counted) of ``path`` read as the job reads it: split into
    ``split_bytes`` ranges (``split_files``), each range read by ``ReadRecords``."""
    from transforms.read import COUNTS, split_files

    docs, dead, counted = [], [], 0
    for element in split_files((str(path), os.path.getsize(path)), split_bytes):
        for out in helpers.reader_records(ReadRecords("id", "text").process(element)):
            if getattr(out, "tag", None) == COUNTS:
                counted += out.value
            elif getattr(out, "tag", None) == "errors":
                dead.append(out.value)
            else:
                docs.append(out)
    return docs, dead, counted


def test_jsonl_read_in_byte_ranges_gives_every_line_exactly_once(tmp_path):
    """Ranges of 1, 7, 50 and 333 bytes tile a file with a byte-order mark, CRLF line ends, blank lines,
    lines longer than a range, bad lines and no final newline: the same documents and dead letters as
    one read of the whole file, each once; each range counts its own records."""
    lines = [b'{"id": "a", "text": "the rocket launch"}', b"", b'{"id": "b", "text": "a recipe"}\r',
             b"not json", b'{"id": "c", "text": "' + b"long text " * 40 + b'"}', b"   ", b"[1, 2]",
             b'{"id": "d", "text": "caf\xc3\xa9"}', b'{"id": "e", "text": "\xff"}', b'{"id": "f", "text": "end"}']
    path = tmp_path / "big.jsonl"
    path.write_bytes(BOM + b"\n".join(lines))
    whole_docs, whole_dead, whole_count = _range_records(path, 0)
    assert [d for d, _ in whole_docs] == ["a", "b", "c", "d", "f"] and len(whole_dead) == 3
    for split_bytes in (1, 7, 50, 333):
        docs, dead, counted = _range_records(path, split_bytes)
        assert docs == whole_docs, split_bytes
        assert [(r["reason"], r["input"]) for r in dead] == [(r["reason"], r["input"]) for r in whole_dead]
        assert counted == whole_count == len(docs) + len(dead)
    _, dead, _ = _range_records(path, 50)
    assert any("big.jsonl@" in r["detail"] for r in dead), "a range past the start names the byte offset"


def test_job_on_a_jsonl_file_split_into_ranges_writes_what_one_read_writes(small_job, tmp_path, monkeypatch):
    from transforms import read

    docs = [(f"r{i}", d["text"]) for i, d in enumerate(sample_corpus(300, seed=4))]
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    whole = helpers.run_job(small_job.argv(corpus, tmp_path / "whole" / "emb", "--num_shards", "1"))
    monkeypatch.setattr(read, "SPLIT_BYTES", 997)  # ~30 ranges
    assert len(list(read.split_files((corpus, os.path.getsize(corpus)), read.SPLIT_BYTES))) > 20
    split = helpers.run_job(small_job.argv(corpus, tmp_path / "split" / "emb", "--num_shards", "1"))
    assert split["read"] == whole["read"] == len(docs) and split["accounted"]
    got = helpers.read_output(str(tmp_path / "split" / "emb")).sort_by("doc_id")
    want = helpers.read_output(str(tmp_path / "whole" / "emb")).sort_by("doc_id")
    assert got.column("doc_id").to_pylist() == want.column("doc_id").to_pylist()
    np.testing.assert_array_equal(np.stack(got.column("vector").to_numpy(zero_copy_only=False)),
                                  np.stack(want.column("vector").to_numpy(zero_copy_only=False)))


def test_summary_file_carries_the_runs_metrics(small_job, tmp_path):
    """The metrics (tokens, padded timesteps, batches per engine, inference time) are known once the
    runner has finished: the summary file is rewritten with them, whole, and no temp file stays."""
    docs = [(f"m{i}", d["text"]) for i, d in enumerate(sample_corpus(50, seed=2))]
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "out" / "emb"
    summary = helpers.run_job(small_job.argv(corpus, out))
    with open(f"{out}-summary.json", encoding="utf-8") as f:
        written = json.load(f)
    assert written == summary
    metrics = written["metrics"]
    assert metrics["batches"] >= 1 and metrics["embedded"] == len(docs)
    assert metrics["tokens"] > 0 and metrics["padded_timesteps"] >= metrics["tokens"]
    assert sum(v for k, v in metrics.items() if k.startswith("batches_")) == metrics["batches"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if "summary" in p.name) == ["emb-summary.json"]
