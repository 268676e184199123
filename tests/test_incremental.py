"""``--previous``: incremental runs on the DirectRunner. A run over a changed corpus with ``--previous``
writes what a full run over it writes (the same ids, vectors within 1e-6), its reused rows bit-equal
to the previous output's; provenance differences, a missing summary, ``--previous`` equal to
``--output``, a killed run and repeated ids."""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.options import ConfigError
from beam_pipeline.previous import VALUE_FIELDS, differing_fields
from tests import helpers

FLAGS = ["--batch_size", "16", "--num_shards", "2"]


def _rows(prefix) -> dict:
    """doc_id -> list of (text_hash, [column values as float arrays], num_tokens), one per row."""
    table = helpers.read_output(str(prefix), text_hash=True)
    columns = [c for c in table.column_names if c not in ("doc_id", "num_tokens", "text_hash")]
    out: dict = {}
    for k, doc_id in enumerate(table.column("doc_id").to_pylist()):
        values = [np.asarray(table.column(c)[k].as_py(), dtype=np.float32) for c in columns]
        out.setdefault(doc_id, []).append((table.column("text_hash")[k].as_py(), values,
                                           table.column("num_tokens")[k].as_py()))
    return out


def _assert_bit_equal(got: tuple, want: tuple, doc_id: str) -> None:
    assert got[0] == want[0] and got[2] == want[2], doc_id
    for g, w in zip(got[1], want[1], strict=True):
        assert g.tobytes() == w.tobytes(), doc_id


def _assert_close(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for doc_id in want:
        assert len(got[doc_id]) == len(want[doc_id]), doc_id
        for g, w in zip(sorted(got[doc_id], key=lambda r: r[0]), sorted(want[doc_id], key=lambda r: r[0])):
            assert g[0] == w[0] and g[2] == w[2], doc_id
            for a, b in zip(g[1], w[1], strict=True):
                np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=doc_id)


def _changed_corpus(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict]:
    """``docs`` with 6 removed, 5 changed (a word appended) and 4 new documents."""
    removed = {d for d, _ in docs[:6]}
    changed = {d for d, _ in docs[6:11]}
    kept = [(d, t + " river" if d in changed else t) for d, t in docs if d not in removed]
    new = [(f"new{k}", text) for k, (_, text) in enumerate(docs[20:24])]
    return kept + new, {"removed": removed, "changed": changed, "new": {d for d, _ in new}}


@pytest.fixture(scope="module")
def first_run(small_job, tmp_path_factory):
    """A full run over 80 demo documents: the previous output of the tests below."""
    folder = tmp_path_factory.mktemp("first")
    path, docs = helpers.sample_jsonl(folder, 80, seed=4)
    summary = helpers.run_job(small_job.argv(path, folder / "emb", *FLAGS))
    return folder / "emb", docs, summary


@pytest.mark.parametrize("join", ["lookup", "shuffle"])
def test_unchanged_documents_are_copied_and_the_rest_embedded(small_job, first_run, tmp_path, join):
    previous, docs, _ = first_run
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", now)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--previous", previous,
                                             "--previous_join", join))
    full = helpers.run_job(small_job.argv(path, tmp_path / "full", *FLAGS))

    unchanged = len(now) - len(kinds["changed"]) - len(kinds["new"])
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (unchanged, 4, 5, 6)
    assert summary["embedded"] == 9 and summary["written"] == len(now) == summary["read"]
    assert summary["accounted"] and summary["previous"] == {"prefix": str(previous), "not_reused_because": None,
                                                            "shards_not_reused": {}}
    assert summary["metrics"]["embedded"] == 9
    assert summary["metrics"]["docs_read"] == len(now), "the second read of the input counted its records again"
    assert full["embedded"] == full["written"] == len(now) and full["reused"] == 0 and "previous" not in full
    got, before = _rows(tmp_path / "inc"), _rows(previous)
    _assert_close(got, _rows(tmp_path / "full"))
    for doc_id, rows in got.items():
        if doc_id not in kinds["changed"] | kinds["new"]:
            _assert_bit_equal(rows[0], before[doc_id][0], doc_id)
    assert not kinds["removed"] & set(got)
    engines = [json.loads(pq.ParquetFile(p).metadata.metadata[b"embedding_engines"])
               for p in summary["output_files"]]
    assert sum(e.get("reused", 0) for e in engines) == unchanged


def test_the_join_groups_ids_and_hashes_never_texts():
    """What goes through the join's shuffle (which Beam's local runner holds in memory) is each
    document's id and text hash, split by bucket: the texts stay out of it."""
    import pyarrow as pa

    from transforms.batch import DocBatch, hash_texts
    from transforms.reuse import SplitByBucket, buckets_of

    ids = pa.array([f"doc{i}" for i in range(50)])
    texts = pa.array([f"text number {i}" for i in range(50)])
    pieces = list(SplitByBucket(4).process(DocBatch(ids, texts)))
    assert {b for b, _ in pieces} == set(buckets_of(ids, 4).tolist()) and len(pieces) > 1
    assert all(piece.texts is None for _, piece in pieces)
    got = {i: h.tobytes() for _, piece in pieces for i, h in zip(piece.ids.to_pylist(), piece.text_hash)}
    assert got == {i: h.tobytes() for i, h in zip(ids.to_pylist(), hash_texts(texts))}


def test_an_input_that_changes_between_its_two_reads_is_unaccounted(small_job, first_run, tmp_path, monkeypatch):
    """The documents to embed come from a second read of the input. A document that is not there the
    second time (the file changed under the run: simulated by dropping one) is never lost silently: the
    summary's accounting fails and the command exits 1."""
    from transforms import reuse
    from transforms.batch import DocBatch

    previous, docs, _ = first_run
    now, _ = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", now)
    original = reuse.KeepToEmbed.process

    def drop_one(self, batch, keys):
        for kept in original(self, batch, keys):
            yield kept.take(np.arange(1, len(kept))) if isinstance(kept, DocBatch) else kept

    monkeypatch.setattr(reuse.KeepToEmbed, "process", drop_one)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--previous", previous,
                                             "--previous_join", "shuffle"))
    assert not summary["accounted"] and summary["read"] == len(now) > summary["written"]  # main() exits 1
    assert not os.path.exists(f"{tmp_path / 'inc'}-summary.json"), "an unaccounted output was committed"
    assert json.loads(open(f"{tmp_path / 'inc'}-unaccounted.json").read())["accounted"] is False


def test_an_input_edited_between_the_two_reads_same_count_is_unaccounted(small_job, first_run, tmp_path,
                                                                         monkeypatch):
    """Issue 24, case 4: between the join's read and the second read one document to embed is replaced by
    another (same count, so the plain accounting balances): the run is unaccounted, exits 1 and writes no
    commit record, never an output with one id missing and another duplicated."""
    from beam_pipeline.__main__ import main
    from transforms import reuse
    from transforms.batch import DocBatch

    previous, docs, _ = first_run
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", now)
    original = reuse.KeepToEmbed.process

    def substitute(self, batch, keys):
        import pyarrow as pa

        ids = batch.ids.to_pylist()
        if "new0" in ids:  # the second read sees "new0" gone and a copy of "new1" in its place
            texts = batch.texts.to_pylist()
            at, twin = ids.index("new0"), ids.index("new1")
            ids[at], texts[at] = ids[twin], texts[twin]
            batch = DocBatch(pa.array(ids), pa.array(texts))
        yield from original(self, batch, keys)

    monkeypatch.setattr(reuse.KeepToEmbed, "process", substitute)
    out = tmp_path / "inc"
    monkeypatch.setattr(sys, "argv", ["beam_pipeline", *map(str, small_job.argv(
        path, out, *FLAGS, "--previous", previous, "--previous_join", "shuffle"))])
    assert main() == 1
    assert not os.path.exists(f"{out}-summary.json")
    record = json.loads(open(f"{out}-unaccounted.json").read())
    assert record["accounted"] is False and "changed between" in record["unaccounted_because"]


def test_a_run_with_previous_is_the_next_runs_previous(small_job, first_run, tmp_path):
    """The output of an incremental run is complete on its own: a third run over the same corpus
    reuses every document of it."""
    previous, docs, _ = first_run
    now, _ = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", now)
    helpers.run_job(small_job.argv(path, tmp_path / "day2", *FLAGS, "--previous", previous))
    third = helpers.run_job(small_job.argv(path, tmp_path / "day3", *FLAGS, "--previous", tmp_path / "day2"))
    assert (third["reused"], third["embedded"], third["new"], third["changed"], third["removed"]) == (
        len(now), 0, 0, 0, 0)
    day2, day3 = _rows(tmp_path / "day2"), _rows(tmp_path / "day3")
    assert sorted(day2) == sorted(day3)
    for doc_id in day2:
        _assert_bit_equal(day3[doc_id][0], day2[doc_id][0], doc_id)


@pytest.mark.parametrize("field", VALUE_FIELDS)
def test_each_value_field_that_differs_is_named(field):
    current = {k: f"value of {k}" for k in VALUE_FIELDS} | {"version": "1", "model": "a/model.keras"}
    moved = current | {"version": "2", "model": "b/model.keras"}  # paths and version decide no value
    assert differing_fields(moved, current) == []
    assert differing_fields(current | {field: "another"}, current) == [field]


def test_another_dtype_recomputes_everything_and_says_why(small_job, first_run, tmp_path, caplog):
    previous, docs, _ = first_run
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", docs)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--dtype", "float16",
                                             "--previous", previous))
    helpers.run_job(small_job.argv(path, tmp_path / "full", *FLAGS, "--dtype", "float16"))
    assert summary["reused"] == 0 and summary["embedded"] == len(docs) and summary["new"] is None
    assert summary["previous"]["not_reused_because"] == "provenance differs in: dtype"
    assert [r.message for r in caplog.records if "not reused" in r.message] == [
        f"--previous {previous}: not reused, every document is embedded (provenance differs in: dtype)"]
    _assert_close(_rows(tmp_path / "inc"), _rows(tmp_path / "full"))


def test_another_model_recomputes_everything(small_job, first_run, tmp_path):
    import keras

    previous, docs, _ = first_run
    keras.utils.set_random_seed(12)
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(small_job.vocab, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(6, name="lstm")(x)
    other = tmp_path / "other.keras"
    keras.Model(inp, keras.layers.Dense(1, name="head")(x)).save(other)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", docs)
    argv = ["--input", path, "--model", other, "--tokenizer", small_job.tokenizer, "--padding", "pre",
            "--truncating", "pre", *FLAGS]
    summary = helpers.run_job([*argv, "--output", tmp_path / "inc", "--previous", previous])
    helpers.run_job([*argv, "--output", tmp_path / "full"])
    assert summary["reused"] == 0 and summary["previous"]["not_reused_because"] == (
        "provenance differs in: submodel_sha256")
    _assert_close(_rows(tmp_path / "inc"), _rows(tmp_path / "full"))


def test_a_previous_output_without_text_hash_is_not_reused_shard_by_shard(small_job, first_run, tmp_path):
    previous, docs, first = first_run
    old = tmp_path / "old"
    old.mkdir()
    shards = []
    for shard in first["output_files"]:
        table = pq.read_table(shard).drop_columns(["text_hash"])
        shards.append(str(old / os.path.basename(shard)))
        pq.write_table(table, shards[-1])
    (old / "emb-summary.json").write_text(json.dumps(first | {"output_files": shards}))
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", docs)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--previous", old / "emb"))
    assert summary["reused"] == 0 and summary["embedded"] == len(docs)
    assert summary["previous"]["not_reused_because"] is None
    assert summary["previous"]["shards_not_reused"] == {p: "schema differs: missing ['text_hash']" for p in shards}
    assert (summary["new"], summary["changed"], summary["removed"]) == (None, None, None)


def test_a_previous_output_without_summary_stops_before_any_work(small_job, first_run, tmp_path, monkeypatch):
    from beam_pipeline.__main__ import main

    previous, docs, first = first_run
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for shard in first["output_files"]:
        (incomplete / os.path.basename(shard)).write_bytes(open(shard, "rb").read())
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = tmp_path / "out"
    helpers.run_job(small_job.argv(path, out, *FLAGS))  # a complete output at --output, left untouched
    before = sorted(glob.glob(f"{out}*"))
    with pytest.raises(ConfigError, match="emb-summary.json not found"):
        helpers.run_job(small_job.argv(path, out, *FLAGS, "--previous", incomplete / "emb"))
    monkeypatch.setattr(sys, "argv", ["beam_pipeline", *map(str, small_job.argv(
        path, out, *FLAGS, "--previous", incomplete / "emb"))])
    assert main() == 2
    assert sorted(glob.glob(f"{out}*")) == before


def test_previous_equal_to_output(small_job, first_run, tmp_path):
    previous, docs, first = first_run
    out = tmp_path / "emb"
    path = helpers.write_jsonl(tmp_path / "day1.jsonl", docs)
    helpers.run_job(small_job.argv(path, out, *FLAGS))
    before = _rows(out)
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "day2.jsonl", now)
    summary = helpers.run_job(small_job.argv(path, out, "--batch_size", "16", "--num_shards", "3",
                                             "--previous", out))
    full = helpers.run_job(small_job.argv(path, tmp_path / "full", *FLAGS))
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (len(now) - 9, 4, 5, 6)
    assert len(summary["output_files"]) == 3 and sorted(glob.glob(f"{out}-*.parquet")) == summary["output_files"]
    assert not os.path.exists(f"{out}-summary.previous.json")
    got = _rows(out)
    _assert_close(got, _rows(tmp_path / "full"))
    for doc_id in set(got) - kinds["changed"] - kinds["new"]:
        _assert_bit_equal(got[doc_id][0], before[doc_id][0], doc_id)
    assert full["written"] == summary["written"]


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("when", ["while copying rows", "after some new shards were renamed into place"])
def test_a_killed_run_over_its_previous_output_is_rerun_complete(small_job, first_run, tmp_path, monkeypatch,
                                                                  when):
    """``--previous`` equal to ``--output``, the run dies (its summary already deleted at launch; in the
    second case after the sink renamed one of its shards into place): the previous shards are all still
    there, so the same command again writes the complete output and reuses every unchanged row."""
    from apache_beam.io.filesystems import FileSystems

    from transforms import reuse

    previous, docs, _ = first_run
    out = tmp_path / "emb"
    path = helpers.write_jsonl(tmp_path / "day1.jsonl", docs)
    helpers.run_job(small_job.argv(path, out, *FLAGS))
    before = _rows(out)
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "day2.jsonl", now)
    argv = small_job.argv(path, out, "--batch_size", "16", "--num_shards", "3", "--previous", out)

    def die(*args, **kwargs):
        raise _Killed(when)

    def rename_one_then_die(sources, destinations):
        if "beam-temp-" not in sources[0]:  # the launcher's own renames
            return original(sources, destinations)
        original([sources[0]], [destinations[0]])
        raise _Killed(when)

    if when == "while copying rows":
        monkeypatch.setattr(reuse.CopyRows, "process", die)
    else:
        original = FileSystems.rename
        monkeypatch.setattr(FileSystems, "rename", rename_one_then_die)
    with pytest.raises(Exception, match="_Killed|" + when):
        helpers.run_job(argv)
    monkeypatch.undo()
    assert not os.path.exists(f"{out}-summary.json") and os.path.exists(f"{out}-summary.previous.json")

    summary = helpers.run_job(argv)
    assert summary["written"] == len(now) and summary["accounted"]
    assert summary["reused"] == len(now) - 9, "previous work was lost to the kill"
    assert not os.path.exists(f"{out}-summary.previous.json")
    assert sorted(glob.glob(f"{out}-*.parquet")) == summary["output_files"], "stale shards left beside the output"
    helpers.run_job(small_job.argv(path, tmp_path / "full", *FLAGS))
    got = _rows(out)
    _assert_close(got, _rows(tmp_path / "full"))
    for doc_id in set(got) - kinds["changed"] - kinds["new"]:
        _assert_bit_equal(got[doc_id][0], before[doc_id][0], doc_id)


@pytest.mark.parametrize("join", ["lookup", "shuffle"])
def test_repeated_ids(small_job, tmp_path, join):
    """An id repeated in the input gets one row per occurrence, with or without ``--previous``: each
    occurrence whose text matches a previous row of that id is copied from the first such row; the
    others are embedded. ``new`` / ``changed`` / ``reused`` count input documents, ``removed`` ids."""
    texts = [t for t in helpers.SENTENCES]
    day1 = [("same", texts[0]), ("same", texts[0]), ("two", texts[1]), ("two", texts[2]), ("gone", texts[3]),
            ("gone", texts[4]), ("kept", texts[5])]
    day2 = [("same", texts[0]), ("same", texts[0]), ("same", texts[0]), ("two", texts[2]), ("two", texts[6]),
            ("kept", texts[5]), ("kept", texts[7])]
    first = helpers.write_jsonl(tmp_path / "day1.jsonl", day1)
    second = helpers.write_jsonl(tmp_path / "day2.jsonl", day2)
    helpers.run_job(small_job.argv(first, tmp_path / "day1", *FLAGS))
    summary = helpers.run_job(small_job.argv(second, tmp_path / "day2", *FLAGS, "--previous", tmp_path / "day1",
                                             "--previous_join", join))
    helpers.run_job(small_job.argv(second, tmp_path / "full", *FLAGS))
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (5, 0, 2, 1)
    got, before = _rows(tmp_path / "day2"), _rows(tmp_path / "day1")
    assert {k: len(v) for k, v in got.items()} == {"same": 3, "two": 2, "kept": 2}
    _assert_close(got, _rows(tmp_path / "full"))
    for row in got["same"]:
        _assert_bit_equal(row, before["same"][0], "same")


@pytest.mark.parametrize("extra", [["--mode", "sequence"], ["--mode", "states"], ["--long_docs", "carry"],
                                   ["--dtype", "float16"]], ids=["sequence", "states", "carry", "float16"])
def test_every_output_layout_is_copied_bit_for_bit(small_job, tmp_path, extra):
    """Ragged ``vectors`` (sequence), several state columns, the ``windows`` column and float16
    values go through the copy unchanged."""
    from beam_pipeline.demo import sample_corpus

    docs = [(d["id"], d["text"] * (1 + k % 5)) for k, d in enumerate(sample_corpus(40, seed=9))]
    path = helpers.write_jsonl(tmp_path / "day1.jsonl", docs)
    helpers.run_job(small_job.argv(path, tmp_path / "day1", *FLAGS, *extra))
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "day2.jsonl", now)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "day2", *FLAGS, *extra, "--previous", tmp_path / "day1"))
    helpers.run_job(small_job.argv(path, tmp_path / "full", *FLAGS, *extra))
    assert summary["reused"] == len(now) - 9 and summary["embedded"] == 9
    got, before = _rows(tmp_path / "day2"), _rows(tmp_path / "day1")
    _assert_close(got, _rows(tmp_path / "full"))
    for doc_id in set(got) - kinds["changed"] - kinds["new"]:
        _assert_bit_equal(got[doc_id][0], before[doc_id][0], doc_id)
    assert pq.read_schema(summary["output_files"][0]) == pq.read_schema(f"{tmp_path}/full-00000-of-00002.parquet")


def test_a_model_that_tokenizes_raw_text(tmp_path):
    """A model with its own TextVectorization: the documents to embed keep their texts through the join."""
    import keras

    docs = helpers.corpus(40, seed=8)
    vectorizer = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=16, name="vectorize")
    vectorizer.adapt([t for _, t in docs])
    keras.utils.set_random_seed(8)
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(40, 5, mask_zero=True)(vectorizer(inp))
    model_path = tmp_path / "text.keras"
    keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(4, name="lstm")(x))).save(model_path)
    argv = ["--model", model_path, *FLAGS]
    helpers.run_job(["--input", helpers.write_jsonl(tmp_path / "day1.jsonl", docs), "--output", tmp_path / "day1",
                     *argv])
    now, kinds = _changed_corpus(docs)
    path = helpers.write_jsonl(tmp_path / "day2.jsonl", now)
    summary = helpers.run_job(["--input", path, "--output", tmp_path / "day2", "--previous", tmp_path / "day1", *argv])
    helpers.run_job(["--input", path, "--output", tmp_path / "full", *argv])
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (len(now) - 9, 4, 5, 6)
    got, before = _rows(tmp_path / "day2"), _rows(tmp_path / "day1")
    _assert_close(got, _rows(tmp_path / "full"))
    for doc_id in set(got) - kinds["changed"] - kinds["new"]:
        _assert_bit_equal(got[doc_id][0], before[doc_id][0], doc_id)


# What a night holds: the copy requests carry a digest of the hashes, not the hashes; the index is
# dropped before the copies; ``removed`` is counted from the bundles' bits alone.

def _first_shard(first_run) -> str:
    previous, _, summary = first_run
    return summary["output_files"][0]


def _request(table, rows, hashes_from=None):
    from transforms.reuse import copy_request, hash_matrix

    hashes = hash_matrix(table.column("text_hash").combine_chunks())
    return copy_request(np.asarray(rows), hashes[np.asarray(rows if hashes_from is None else hashes_from)])


def _copy(shard, requests):
    """``CopyRows`` over row group 0 of ``shard``: the rows yielded, and the error raised (or None)."""
    from transforms.reuse import CopyRows

    fn = CopyRows((shard,), pq.read_schema(shard))
    fn.start_bundle()
    out = []
    try:
        for piece in fn.process(((0, 0), requests)):
            out.append(piece.table)
    except ValueError as e:
        return out, e
    return out, None


def test_copied_rows_are_those_asked_for_in_row_order_repeats_included(first_run):
    shard = _first_shard(first_run)
    table = pq.ParquetFile(shard).read_row_group(0)
    out, error = _copy(shard, [_request(table, [5, 9, 9]), _request(table, [0, 3])])
    assert error is None
    got = pa.concat_tables(out)
    want = table.take([0, 3, 5, 9, 9])
    assert got.column("doc_id").to_pylist() == want.column("doc_id").to_pylist()
    assert got.equals(want.select(got.column_names).cast(got.schema))


@pytest.mark.parametrize("case", ["one row's hash", "two rows swapped", "a row asked twice, another once"])
def test_a_copy_whose_rows_do_not_hold_the_matched_hashes_fails_before_its_last_rows_go_out(first_run, case):
    """The join matched these rows by id and full hash; a copy request holds a digest of those hashes. Rows
    that hold other hashes (the shard changed during the run) fail the copy, never written."""
    shard = _first_shard(first_run)
    table = pq.ParquetFile(shard).read_row_group(0)
    rows, wrong = {"one row's hash": ([1, 2, 4], [1, 2, 6]), "two rows swapped": ([1, 2, 4], [1, 4, 2]),
                   "a row asked twice, another once": ([2, 2, 7], [2, 7, 7])}[case]
    out, error = _copy(shard, [_request(table, [0, 3]), _request(table, rows, hashes_from=wrong)])
    assert error is not None and "changed during the run" in str(error)
    assert sum(t.num_rows for t in out) < 5


def test_the_index_is_dropped_before_rows_are_copied(small_job, first_run, tmp_path, monkeypatch):
    """Copies start once every batch is matched: the process' index of the previous keys is gone by then
    (its memory is the copies'), and the counts are still exact."""
    from transforms import reuse, reuse_lookup

    previous, docs, _ = first_run
    now, kinds = _changed_corpus(docs)
    held = []
    original = reuse.CopyRows.process

    def process(self, element):
        held.append(len(reuse_lookup._INDEX))
        yield from original(self, element)

    monkeypatch.setattr(reuse.CopyRows, "process", process)
    path = helpers.write_jsonl(tmp_path / "corpus.jsonl", now)
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--previous", previous,
                                             "--previous_join", "lookup"))
    assert held and not any(held)
    assert (summary["reused"], summary["new"], summary["changed"], summary["removed"]) == (len(now) - 9, 4, 5, 6)


@pytest.mark.parametrize("join", ["lookup", "shuffle"])
def test_an_input_without_documents_removes_every_previous_id(small_job, first_run, tmp_path, join):
    previous, docs, _ = first_run
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    summary = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--previous", previous,
                                             "--previous_join", join))
    assert (summary["read"], summary["reused"], summary["new"], summary["changed"]) == (0, 0, 0, 0)
    assert summary["removed"] == len({d for d, _ in docs})
