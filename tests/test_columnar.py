"""The columnar data path: one Beam element is a batch of documents (``transforms.batch.DocBatch``).

The batch operations are checked row by row against the per-document lists they replace; a real job
run writes each document's ``text_hash`` (XXH3-128 of its UTF-8 text, computed here by the xxhash library)
and says, in its summary and in every Parquet footer, how many documents each engine computed; a
local run is pinned to the in-process FnApiRunner."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_pipeline.__main__ import pin_local_runner
from beam_pipeline.ragged import Ragged
from tests import helpers
from transforms.batch import DocBatch, concat, hash_texts
from transforms.write import ENGINES_KEY

token_lists = st.lists(st.lists(st.integers(1, 1000), max_size=12), max_size=30)


def _batch(seqs: list[list[int]], tag: str = "d") -> DocBatch:
    ragged = Ragged.from_lists(seqs)
    n = len(seqs)
    return DocBatch(pa.array([f"{tag}{i}" for i in range(n)], pa.string()),
                    pa.array([f"text {tag}{i}" for i in range(n)], pa.string()),
                    ragged.offsets, ragged.values.astype(np.int32),
                    np.arange(n * 16, dtype=np.int64).astype(np.uint8).reshape(n, 16))


def _rows(batch: DocBatch) -> list[tuple]:
    return list(zip(batch.ids.to_pylist(), batch.texts.to_pylist(), batch.token_lists(),
                    map(bytes, batch.text_hash), strict=True))


@settings(max_examples=150, deadline=None)
@given(token_lists, st.data())
def test_take_slice_and_concat_equal_the_per_document_lists(seqs, data):
    batch = _batch(seqs)
    rows = _rows(batch)
    index = data.draw(st.lists(st.integers(0, max(len(seqs) - 1, 0)), max_size=40)) if seqs else []
    assert _rows(batch.take(np.array(index, dtype=np.int64))) == [rows[i] for i in index]
    start = data.draw(st.integers(0, len(seqs)))
    stop = data.draw(st.integers(start, len(seqs)))
    assert _rows(batch.slice(start, stop)) == rows[start:stop]
    other = _batch(data.draw(token_lists), "e")
    assert _rows(concat([batch, other])) == rows + _rows(other)
    assert Ragged(batch.offsets, batch.tokens).to_lists() == seqs


def test_a_sliced_batch_pickles_only_its_own_documents():
    import pickle

    batch = _batch([[1, 2, 3]] * 4000)
    assert len(pickle.dumps(batch.slice(0, 10))) < len(pickle.dumps(batch)) / 50


def test_hash_texts_is_xxh3_128_of_the_utf8_bytes():
    texts = ["", "fox", "naïve café ☕", "İstanbul Σ", "a" * 10000]
    arrays = [pa.array(texts, pa.string()), pa.array(texts, pa.large_string()), pa.array(["x", *texts]).slice(1)]
    for array in arrays:
        got = hash_texts(array)
        assert got.shape == (len(texts), 16) and got.dtype == np.uint8
        assert [bytes(h) for h in got] == [xxhash.xxh3_128_digest(t.encode()) for t in texts]


def test_a_local_run_is_pinned_to_the_fnapi_runner():
    for argv in ([], ["--runner", "DirectRunner"], ["--runner=direct"]):
        options = PipelineOptions(argv)
        pin_local_runner(options)
        assert options.view_as(StandardOptions).runner == "FnApiRunner"
    for runner in ("PrismRunner", "FlinkRunner", "DataflowRunner"):
        options = PipelineOptions(["--runner", runner])
        pin_local_runner(options)
        assert options.view_as(StandardOptions).runner == runner


def test_job_writes_text_hashes_and_counts_documents_per_engine(small_job, tmp_path):
    texts = ["the dog sleeps", "", "naïve café by the sea", "?!", "Σίσυφος İzmir fox", "the quick brown fox " * 30]
    docs = [(f"doc{i}", texts[i % len(texts)] + ("" if i < len(texts) else f" {i}")) for i in range(1300)]
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "o"
    summary = helpers.run_job(small_job.argv(corpus, out, "--engine", "onnx", "--batch_size", "256",
                                             "--num_shards", "3"))
    assert summary["read"] == summary["embedded"] == len(docs) and summary["accounted"]
    table = helpers.read_output(str(out), text_hash=True)
    by_id = dict(zip(table.column("doc_id").to_pylist(), table.column("text_hash").to_pylist()))
    assert by_id == {d: xxhash.xxh3_128_digest(t.encode()) for d, t in docs}

    # Documents with no token get Keras' value for padding alone; every other one ran on the forced engine.
    empty = sum(1 for _, t in docs if not t.strip("?! "))
    assert summary["documents_by_engine"] == {"keras": empty, "onnx": len(docs) - empty}
    footers: dict = {}
    for path in summary["output_files"]:
        metadata = pq.ParquetFile(path).metadata
        counts = json.loads(metadata.metadata[ENGINES_KEY])
        assert sum(counts.values()) == metadata.num_rows
        for name, n in counts.items():
            footers[name] = footers.get(name, 0) + n
    assert footers == summary["documents_by_engine"]


def test_a_batch_the_tokenizer_fails_on_dead_letters_only_the_failing_documents(small_job):
    """The batch tokenizer raising sends the batch through the exact per-document tokenizer: the one
    document it fails on is a tokenize_failed dead letter, the others keep their ids and hashes."""
    from beam_pipeline.keras_tokenizer import KerasTokenizer
    from transforms.tokenize import Tokenize

    stage = Tokenize(small_job.tokenizer, 3, "pre")
    stage.setup()
    reference = KerasTokenizer.from_json(open(small_job.tokenizer, encoding="utf-8").read())

    def fail(_):
        raise RuntimeError("injected")

    def per_document(text):
        if text == "bad":
            raise ValueError("this one")
        return reference.text_to_sequence(text)

    stage._tokenizer.encode, stage._reference.text_to_sequence = fail, per_document
    texts = ["the dog sleeps here", "bad", "the quick fox"]
    out = list(stage.process(DocBatch(pa.array(["a", "b", "c"]), pa.array(texts))))
    letters = [o.value for o in out if not isinstance(o, DocBatch)]
    (batch,) = [o for o in out if isinstance(o, DocBatch)]
    assert [(r["doc_id"], r["reason"]) for r in letters] == [("b", "tokenize_failed")]
    assert batch.ids.to_pylist() == ["a", "c"]
    assert batch.token_lists() == [reference.text_to_sequence(t)[-3:] for t in (texts[0], texts[2])]
    assert [bytes(h) for h in batch.text_hash] == [xxhash.xxh3_128_digest(t.encode()) for t in (texts[0], texts[2])]
