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
    records = list(ReadRecords("id", "text").process((str(path), os.path.getsize(path))))
    docs = [r for r in records if isinstance(r, tuple)]
    first_id = f"{path.name}:1" if name == "c.txt" else "first"
    assert docs[0] == (first_id, "the rocket launch"), "the first record keeps its id and text, without the mark"
    assert len(docs) == 2, "nothing dead-lettered"


# --- 6. the summary is the commit record; no mix of two runs' shards ----------------------------

def _table(schema, ids) -> pa.Table:
    return pa.table({"doc_id": ids, "num_tokens": [1] * len(ids)}, schema=schema)


def _write_shards(sink, schema, name: str, n: int):
    """(init result, writer results) of ``n`` writers of ``sink``, each writing one row ``name-i``."""
    init = sink.initialize_write()
    results = []
    for i in range(n):
        writer = sink.open_writer(init, f"{name}{i}")
        writer.write(_table(schema, [f"{name}-{i}"]))
        results.append(writer.close())
    return init, results


def test_previous_runs_shards_are_removed_before_this_runs_are_renamed_into_place(tmp_path):
    """Beam's finalize of the real sink, stopped where a kill could land: between the check and
    the renames, the old -of-00002 shards are already gone and no -of-00005 shard is there yet."""
    schema = pa.schema([("doc_id", pa.string()), ("num_tokens", pa.int32())])
    prefix = str(tmp_path / "emb")
    old = ParquetShards(prefix, schema, "none", 2)
    init, results = _write_shards(old, schema, "old", 2)
    list(old.finalize_write(init, results, None))
    assert [os.path.basename(p) for p in _shards(prefix)] == ["emb-00000-of-00002.parquet",
                                                              "emb-00001-of-00002.parquet"]
    new = ParquetShards(prefix, schema, "none", 5)
    init, results = _write_shards(new, schema, "new", 5)
    src, dst, _, _ = new._check_state_for_finalize_write(sorted(results), 5)
    assert _shards(prefix) == [], "the previous run's shards go before any of this run's is renamed"
    assert len(src) == len(dst) == 5
    list(new.finalize_write(init, results, None))
    list(new.finalize_write(init, results, None))  # a retried finalize keeps what the first attempt renamed
    ids = sorted(i for p in _shards(prefix) for i in pq.read_table(p).column("doc_id").to_pylist())
    assert ids == [f"new-{i}" for i in range(5)]


def test_rerun_with_other_num_shards_leaves_only_its_own_files_all_listed_in_the_summary(small_job, tmp_path):
    corpus, docs = helpers.sample_jsonl(tmp_path, 60, seed=2)
    out = tmp_path / "out" / "emb"
    helpers.run_job(small_job.argv(corpus, out, "--num_shards", "2"))
    summary = helpers.run_job(small_job.argv(corpus, out, "--num_shards", "5"))
    on_disk = sorted(str(p) for p in (tmp_path / "out").iterdir() if not p.name.endswith("-summary.json"))
    assert sorted(summary["output_files"] + summary["error_files"]) == on_disk
    assert [p.rsplit("-of-", 1)[1] for p in _shards(out)] == ["00005.parquet"] * 5
    assert helpers.read_output(str(out)).num_rows == len(docs)


def test_failed_run_leaves_no_summary_and_the_next_run_removes_its_temp_folders(small_job, tmp_path):
    corpus, docs = helpers.sample_jsonl(tmp_path, 30, seed=6)
    out = tmp_path / "out" / "emb"
    helpers.run_job(small_job.argv(corpus, out))
    assert os.path.exists(f"{out}-summary.json")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(Exception, match="(?i)parquet"):  # fails on a worker, after it started replacing
        helpers.run_job(small_job.argv([corpus, broken], out, "--overwrite"))
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
