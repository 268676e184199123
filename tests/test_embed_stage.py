"""The embed stage (``transforms.embed.EmbedBatches``) on a real model and the DirectRunner: a batch
whose inference raises becomes one ``inference_failed`` dead letter per document while every other
batch is written, and the rows that are written are Keras' values."""

from __future__ import annotations

import apache_beam as beam
import keras
import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from beam_pipeline.options import resolve
from beam_pipeline.ragged import Ragged
from tests import helpers
from transforms.batch import DocBatch
from transforms.embed import Embed


def test_a_batch_whose_inference_raises_is_dead_lettered_and_the_others_are_written(small_job, tmp_path):
    # The tokenizer never emits an id the Embedding cannot take (checked at launch), so the failing
    # batch is made here: id 5000 of a 100-row Embedding makes TensorFlow's Gather raise on that batch.
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", [("x", "the crew")])  # resolve checks that input exists
    config = resolve(PipelineOptions(small_job.argv(corpus, tmp_path / "o", "--batch_size", "4")))
    docs = [(f"d{i:02d}", [1 + (i * 7 + k) % 90 for k in range(1 + i % 5)]) for i in range(12)]
    bad = {"d05": [3, 5000, 7]}
    docs = [(doc_id, bad.get(doc_id, ids)) for doc_id, ids in docs]
    model = keras.models.load_model(small_job.model)
    good = {doc_id: ids for doc_id, ids in docs if doc_id not in bad}
    padded = keras.utils.pad_sequences(list(good.values()), maxlen=config.maxlen, padding="post")
    expected = dict(zip(good, helpers.reference(model, config.layer, "final", padded)[0]))

    def check_rows(batches):
        got = {}
        for rows in batches:
            for doc_id, n, vector in zip(rows.ids.to_pylist(), rows.num_tokens, rows.columns[0]):
                assert n == len(dict(docs)[doc_id])
                got[doc_id] = vector
        # The failing document's batch-mates are lost to the rows but not to the job: see the dead letters.
        failed = set(expected) - set(got)
        assert failed and len(failed) < config.batch_size and set(got) <= set(expected)
        for doc_id, vector in got.items():
            np.testing.assert_allclose(vector, expected[doc_id], atol=1e-5)

    def check_dead_letters(letters):
        assert letters and all(r["reason"] == "inference_failed" and r["stage"] == "embed" for r in letters)
        assert "d05" in {r["doc_id"] for r in letters} and len(letters) <= config.batch_size
        assert any("5000" in r["detail"] for r in letters)

    def check_accounting(counts):
        assert sum(counts) == len(docs)  # every document written or reported

    ragged = Ragged.from_lists([ids for _, ids in docs])
    # Two elements of the job's format (DocBatch: ids + token offsets), cut across model batches of 4.
    elements = [DocBatch(pa.array([d for d, _ in docs]), None, ragged.offsets, ragged.values.astype(np.int32),
                         np.zeros((len(docs), 16), np.uint8)).slice(a, b) for a, b in ((0, 7), (7, len(docs)))]
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        embedded, failed = p | beam.Create(elements) | Embed(config)
        assert_that(embedded, check_rows, label="rows")
        assert_that(failed, check_dead_letters, label="dead letters")
        counted = ((embedded | beam.Map(len)), (failed | beam.Map(lambda _: 1))) | beam.Flatten()
        assert_that(counted | beam.CombineGlobally(sum), check_accounting, label="accounting")


def test_documents_that_trickle_in_are_embedded_before_the_bundle_ends(small_job, tmp_path):
    """A --previous night hands the embed stage a few documents per input batch: after TRICKLE_ELEMENTS
    elements the whole model batches buffered go to the inference thread, not only when the sort buffer
    (SORT_BATCHES batches) fills or the bundle ends; every document comes out once, with Keras' values."""
    from transforms import embed

    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", [("x", "the crew")])
    config = resolve(PipelineOptions(small_job.argv(corpus, tmp_path / "o", "--batch_size", "4")))
    assert config.length_bucketing
    sort_buffer = embed.SORT_BATCHES * config.batch_size
    docs = [(f"d{i:03d}", [1 + (i * 7 + k) % 90 for k in range(1 + i % 6)]) for i in range(120)]
    assert len(docs) < sort_buffer  # the sort buffer alone would hold every one of them to the end
    ragged = Ragged.from_lists([ids for _, ids in docs])
    whole = DocBatch(pa.array([d for d, _ in docs]), None, ragged.offsets, ragged.values.astype(np.int32),
                     np.zeros((len(docs), 16), np.uint8))
    dofn = embed.EmbedBatches(config, sort_buffer)
    dofn.setup()
    dofn.start_bundle()
    out = []
    for start in range(0, len(docs), 2):
        out.extend(dofn.process(whole.slice(start, start + 2)))
    handed = len(docs) - dofn._buffered
    assert handed >= len(docs) // 2, f"{handed} documents handed over before the bundle's end"
    out.extend(o.value for o in dofn.finish_bundle())
    got = {}
    for rows in out:
        for doc_id, vector in zip(rows.ids.to_pylist(), rows.columns[0]):
            assert doc_id not in got
            got[doc_id] = vector
    assert set(got) == {d for d, _ in docs}
    model = keras.models.load_model(small_job.model)
    padded = keras.utils.pad_sequences([ids for _, ids in docs], maxlen=config.maxlen, padding="post")
    want = helpers.reference(model, config.layer, "final", padded)[0]
    np.testing.assert_allclose(np.stack([got[d] for d, _ in docs]), want, atol=1e-5, rtol=0)
