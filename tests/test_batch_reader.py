"""The reader's main outputs are ``DocBatch``es: the same documents, dead letters and counts as the
record-by-record reading, in file order, at most ``BATCH_DOCS`` documents a batch."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms import read_fast
from transforms.batch import DocBatch
from transforms.read import COUNTS, ReadCorpus, ReadRecords


def read_outputs(element, id_field: str = "id", text_field: str = "text", fast: bool = True) -> dict:
    """Everything ``ReadRecords`` gives for one element: ``batches``, ``docs`` (their rows as
    ``(id, text)``, in order), ``dead`` (dead-letter records) and ``count`` (the counts output)."""
    batches, dead, counts = [], [], []
    for out in ReadRecords(id_field, text_field, fast=fast).process(element):
        if isinstance(out, DocBatch):
            batches.append(out)
        elif out.tag == COUNTS:
            counts.append(out.value)
        else:
            assert out.tag == "errors"
            dead.append(out.value)
    assert len(counts) == 1, "one count per element"
    docs = [pair for b in batches for pair in zip(b.ids.to_pylist(), b.texts.to_pylist())]
    return {"batches": batches, "docs": docs, "dead": dead, "count": counts[0]}


def _jsonl_lines(n: int) -> list[bytes]:
    return [json.dumps({"id": f"d{i}", "text": f"text number {i}"}).encode() for i in range(n)]


def test_batches_hold_at_most_batch_docs_documents_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setattr(read_fast, "BATCH_DOCS", 4)
    lines = _jsonl_lines(10)
    lines.insert(5, b"not json")
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = read_outputs(str(path))
    assert [len(b) for b in got["batches"]] == [4, 4, 2]
    for batch in got["batches"]:
        assert batch.ids.type == pa.string() and batch.texts.type == pa.string()
    assert got["docs"] == [(f"d{i}", f"text number {i}") for i in range(10)]
    assert [(d["reason"], d["detail"].split(":")[:2]) for d in got["dead"]] == [("invalid_json", ["c.jsonl", "6"])]
    assert got["count"] == 11


@pytest.mark.parametrize("fast", [False, True])
def test_a_batch_is_handed_on_once_its_texts_are_large(tmp_path, monkeypatch, fast):
    """Per record, a batch ends at the document that brings it to ``BATCH_BYTES``; a fast reader hands
    on a block's rows at once (one block past the mark at most)."""
    monkeypatch.setattr(read_fast, "BATCH_BYTES", 100)
    path = tmp_path / "c.txt"
    path.write_bytes(b"\n".join([b"x" * 60] * 5) + b"\n")
    got = read_outputs(str(path), fast=fast)
    assert [len(b) for b in got["batches"]] == ([2, 2, 1] if not fast else [5])
    assert got["docs"] == [(f"c.txt:{k}", "x" * 60) for k in range(1, 6)]


def test_records_read_before_a_file_stops_being_readable_are_handed_on(tmp_path):
    import gzip

    whole = gzip.compress(b"".join(line + b"\n" for line in _jsonl_lines(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    got = read_outputs((str(path), os.path.getsize(path)))
    assert got["dead"][-1]["reason"] == "unreadable_file"
    assert [d["reason"] for d in got["dead"][:-1]] in ([], ["invalid_json"]), "a cut last line, if any"
    n = len(got["docs"])
    assert 0 < n < 2000 and got["docs"] == [(f"d{i}", f"text number {i}") for i in range(n)]
    assert got["count"] == n + len(got["dead"])
    assert f"reading stopped after {got['count'] - 1} record(s)" in got["dead"][-1]["detail"]


def test_read_corpus_in_a_direct_runner_pipeline_gives_batches_dead_letters_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(read_fast, "BATCH_DOCS", 3)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b"\n".join(_jsonl_lines(7) + [b"[1]"]) + b"\n")
    text = tmp_path / "b.txt"
    text.write_bytes(b"one\ntwo\n\xff\n")
    paths = [str(jsonl), str(text)]
    with beam.Pipeline("DirectRunner") as p:
        out = p | ReadCorpus(paths, "id", "text", sizes={q: os.path.getsize(q) for q in paths})
        rows = out.docs | "Rows" >> beam.FlatMap(
            lambda b: [(len(b) <= 3, i, t) for i, t in zip(b.ids.to_pylist(), b.texts.to_pylist())])
        assert_that(rows, equal_to([(True, f"d{i}", f"text number {i}") for i in range(7)]
                                   + [(True, "b.txt:1", "one"), (True, "b.txt:2", "two")]), label="docs")
        reasons = out.errors | beam.Map(lambda d: (d["reason"], d["doc_id"]))
        assert_that(reasons, equal_to([("invalid_json", None), ("invalid_utf8", "b.txt:3")]), label="errors")
        assert_that(out[COUNTS], equal_to([8, 3]), label="counts")


@pytest.mark.parametrize("data", [b"", b"\n", b"\xef\xbb\xbf"])
def test_a_file_without_documents_gives_no_batch(tmp_path, data):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(data)
    got = read_outputs(str(path))
    assert got["batches"] == [] and got["dead"] == [] and got["count"] == 0
