"""``go_backwards`` layers in ``sequence`` mode, and documents with no token: golden tests against
Keras, through the real pipeline (JSONL in, Parquet read back) and on the ``Embedder`` alone.

- Vector *k* of a document is the layer's output right after it has read token *k*, in document
  order: the alignment Keras gives the backward half of a ``Bidirectional`` layer.
- A document with no token gets a row with ``num_tokens = 0`` and exactly what Keras computes for
  it: the model's output on padding alone (for a masked model, a fully masked input); ``sequence``
  gives an empty list. Such a document never enters the model's batch (cuDNN rejects fully masked
  rows); its value is computed once per loaded model on the CPU.

Tolerance 1e-5: the references run the same Keras layer code on the same inputs.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from beam_pipeline.inference import Embedder
from tests import helpers

TOL = 1e-5
MAXLEN = 12

# Texts with no token for a tokenizer without oov_token that filters punctuation: empty,
# whitespace only, punctuation only, and words the tokenizer does not know.
EMPTY_DOCS = [("empty", ""), ("spaces", "  \t  "), ("punctuation", "!!! ??? ... ;;"),
              ("unknown-words", "quagga okapi aardvark")]


def _docs(n: int = 14, seed: int = 40) -> list[tuple[str, str]]:
    return helpers.corpus(n, seed=seed)


def _tokenizer(docs):
    """A legacy tokenizer without oov_token, fitted on the documents that are not meant to be empty."""
    empty = dict(EMPTY_DOCS)
    return helpers.legacy_tokenizer([t for d, t in docs if d not in empty], num_words=40)


def _model(layer, masked: bool, seed: int, maxlen: int | None = MAXLEN, vocab: int = 40):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((maxlen,), dtype="int32")
    x = keras.layers.Embedding(vocab, 5, mask_zero=masked)(inp)
    x = layer(x)
    return keras.Model(inp, keras.layers.Dense(1)(x))


def _run(tmp_path, model, tok, docs, mode: str, padding: str | None, *extra) -> tuple[dict, dict, object]:
    """Runs the job; returns (summary, {doc_id: row}, table). ``padding=None``: no side flags (a
    raw-text model pads and truncates itself)."""
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    argv = ["--input", helpers.write_jsonl(tmp_path / "corpus.jsonl", docs), "--model", model_path,
            "--output", tmp_path / "out", "--mode", mode, *extra]
    if padding is not None:
        argv += ["--padding", padding, "--truncating", padding]
    if tok is not None:
        (tmp_path / "tok.json").write_text(tok.to_json(), encoding="utf-8")
        argv += ["--tokenizer", tmp_path / "tok.json"]
    summary = helpers.run_job(argv)
    table = helpers.read_output(str(tmp_path / "out"))
    rows = {doc_id: i for i, doc_id in enumerate(table.column("doc_id").to_pylist())}
    assert len(rows) == table.num_rows == len(docs), "one row per document"
    return summary, rows, table


def _cell(table, name: str, row: int) -> np.ndarray:
    return np.asarray(table.column(name)[row].as_py(), dtype=np.float32)


# --- go_backwards: vector k is the output right after reading token k -------------------------------

def keras_backward_half(model, layer_name: str, padded) -> np.ndarray:
    """Keras' own document-order alignment of a go_backwards layer: a clone of it (trained weights,
    ``return_sequences=True``) as the backward half of a ``Bidirectional`` layer, whose backward
    output Keras reverses into document order. Called on the layer's own input and mask."""
    layer = model.get_layer(layer_name)
    config = dict(layer.get_config(), return_sequences=True, name="backward_half")
    backward = type(layer).from_config(config)
    forward = type(layer).from_config(dict(config, go_backwards=False, name="forward_half"))
    bidirectional = keras.layers.Bidirectional(forward, backward_layer=backward, merge_mode=None)
    node = layer._inbound_nodes[0]
    _, out = bidirectional(*node.arguments.args, **node.arguments.kwargs)
    bidirectional.backward_layer.set_weights(layer.get_weights())
    return keras.Model(model.inputs, out).predict(padded, verbose=0)


BACKWARDS_CASES = {  # name: (cell, masked, padding); masked models are length-bucketed (right-padded)
    "masked-lstm": ("LSTM", True, "pre"),
    "unmasked-gru-pre": ("GRU", False, "pre"),
    "unmasked-simplernn-post": ("SimpleRNN", False, "post"),
}


@pytest.mark.parametrize("case", list(BACKWARDS_CASES))
def test_go_backwards_sequence_vectors_in_document_order(case, tmp_path):
    cell, masked, padding = BACKWARDS_CASES[case]
    docs = _docs()
    tok = _tokenizer(docs)
    model = _model(getattr(keras.layers, cell)(4, go_backwards=True, name="back"), masked, seed=41)
    summary, rows, table = _run(tmp_path, model, tok, docs, "sequence", padding)
    seqs = tok.texts_to_sequences([t for _, t in docs])
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding=padding, truncating=padding)
    want_all = keras_backward_half(model, "back", padded)
    assert summary["accounted"]
    for i, ((doc_id, _), ids) in enumerate(zip(docs, seqs)):
        n = min(len(ids), MAXLEN)
        got = _cell(table, "vectors", rows[doc_id])
        want = want_all[i][helpers.real_positions(None, n, padding, MAXLEN)]
        assert got.shape == want.shape == (n, 4)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"{case} {doc_id}")
        # Not the reading order: the first vector is the state after reading the whole document.
        assert n < 2 or not np.allclose(got[0], got[-1])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("padding,masked,bucketing", [("pre", True, True), ("post", True, False),
                                                      ("pre", False, False), ("post", False, False)])
def test_go_backwards_vector_k_is_the_final_output_after_reading_back_to_token_k(cell, padding, masked, bucketing):
    """The definition checked from the other side: reading backwards, the state right after token k
    is what the trained layer (``return_sequences=False``) returns for the padded input from token
    k's position on, for every padding the job uses."""
    model = _model(getattr(keras.layers, cell)(3, go_backwards=True, name="back"), masked, seed=42, maxlen=None)
    rng = np.random.default_rng(43)
    seqs = [rng.integers(1, 40, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(9)]
    out = Embedder(model, "back", "sequence", MAXLEN, padding=padding, length_bucketing=bucketing).embed(seqs)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding=padding)
    final = keras.Model(model.inputs, model.get_layer("back").output)
    after = {width: np.asarray(final([padded[:, MAXLEN - width:]], training=False)) for width in range(1, MAXLEN + 1)}
    for i, ids in enumerate(seqs):
        got = out.columns["vectors"][out.offsets[i]:out.offsets[i + 1]]
        positions = range(MAXLEN)[helpers.real_positions(None, len(ids), padding, MAXLEN)]
        want = np.stack([after[MAXLEN - p][i] for p in positions])
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"document {i}")


@pytest.mark.parametrize("mode", ["final", "states"])
@pytest.mark.parametrize("masked,padding", [(True, "pre"), (False, "pre"), (False, "post")])
def test_go_backwards_final_and_states_are_what_keras_returns(mode, masked, padding):
    """Only the order of ``sequence`` changes: ``final`` and ``states`` stay the state after the
    whole document (read back to its first token), as Keras returns them."""
    model = _model(keras.layers.LSTM(3, go_backwards=True, name="back"), masked, seed=53)
    rng = np.random.default_rng(53)
    seqs = [rng.integers(1, 40, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(7)]
    out = Embedder(model, "back", mode, MAXLEN, padding=padding).embed(seqs)
    ref = helpers.reference(model, "back", mode, keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding=padding))
    for got, want in zip(out.columns.values(), ref, strict=True):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_go_backwards_raw_text_model_sequence_in_document_order(tmp_path):
    docs = _docs(12, seed=44)
    vectorizer = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=MAXLEN, name="vectorize")
    vectorizer.adapt([t for _, t in docs])
    keras.utils.set_random_seed(44)
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(30, 5, mask_zero=True)(vectorizer(inp))
    x = keras.layers.LSTM(4, go_backwards=True, name="back")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    _, rows, table = _run(tmp_path, model, None, docs, "sequence", None)
    texts = np.asarray([[t] for _, t in docs])
    ids = np.asarray(vectorizer(texts[:, 0]))
    want_all = keras_backward_half(model, "back", tf.constant(texts))
    for i, (doc_id, _) in enumerate(docs):
        real = ids[i] != 0
        np.testing.assert_allclose(_cell(table, "vectors", rows[doc_id]), want_all[i][real], atol=TOL, rtol=0)


# --- Documents with no token ------------------------------------------------------------------------

def _keras_on_padding(model, layer: str, mode: str, padding_row) -> list[np.ndarray]:
    """What Keras computes for a document with no token: the layer on one row of padding alone."""
    return [r[0] for r in helpers.reference(model, layer, mode, padding_row)]


def _check_rows_with_tokens(table, rows, model, tok, docs, layer, mode, padding):
    """The documents with tokens, in the same batches as the empty ones, keep their Keras values."""
    seqs = tok.texts_to_sequences([t for _, t in docs])
    kept = [i for i, s in enumerate(seqs) if s]
    padded = keras.utils.pad_sequences([seqs[i] for i in kept], maxlen=MAXLEN, padding=padding, truncating=padding)
    ref = helpers.reference(model, layer, mode, padded)
    for j, i in enumerate(kept):
        row = rows[docs[i][0]]
        for k, name in enumerate(table.column_names[2:]):
            np.testing.assert_allclose(_cell(table, name, row), ref[k][j], atol=TOL, rtol=0)


def _empty_corpus(seed: int) -> list[tuple[str, str]]:
    docs = _docs(10, seed=seed)
    return docs[:4] + EMPTY_DOCS[:2] + docs[4:7] + EMPTY_DOCS[2:] + docs[7:]


def _check_empty_rows(table, rows, want: list[np.ndarray]):
    for doc_id, _ in EMPTY_DOCS:
        row = rows[doc_id]
        assert table.column("num_tokens")[row].as_py() == 0
        for name, w in zip(table.column_names[2:], want, strict=True):
            np.testing.assert_allclose(_cell(table, name, row), w, atol=TOL, rtol=0, err_msg=f"{doc_id} {name}")


@pytest.mark.parametrize("mode", ["final", "states"])
def test_empty_document_gets_keras_all_padding_vector_masked(mode, tmp_path):
    docs = _empty_corpus(45)
    tok = _tokenizer(docs)
    model = _model(keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi"), True, seed=45)
    summary, rows, table = _run(tmp_path, model, tok, docs, mode, "pre")
    assert summary["read"] == summary["embedded"] == len(docs) and summary["dead_lettered"] == 0
    assert summary["errors_by_reason"] == {}
    fully_masked = np.zeros((1, MAXLEN), dtype="int32")
    _check_empty_rows(table, rows, _keras_on_padding(model, "bi", mode, fully_masked))
    _check_rows_with_tokens(table, rows, model, tok, docs, "bi", mode, "pre")


@pytest.mark.parametrize("mode,padding", [("final", "pre"), ("states", "post")])
def test_empty_document_gets_keras_all_padding_vector_unmasked(mode, padding, tmp_path):
    docs = _empty_corpus(46)
    tok = _tokenizer(docs)
    model = _model(keras.layers.LSTM(4, name="lstm"), False, seed=46)
    summary, rows, table = _run(tmp_path, model, tok, docs, mode, padding)
    assert summary["accounted"] and summary["dead_lettered"] == 0
    want = _keras_on_padding(model, "lstm", mode, np.zeros((1, MAXLEN), dtype="int32"))
    assert np.abs(want[0]).max() > 1e-3, "maxlen steps of padding move an unmasked layer away from zero"
    _check_empty_rows(table, rows, want)
    _check_rows_with_tokens(table, rows, model, tok, docs, "lstm", mode, padding)


@pytest.mark.parametrize("masked", [True, False])
def test_empty_document_sequence_is_empty_list(masked, tmp_path):
    docs = _empty_corpus(47)
    tok = _tokenizer(docs)
    model = _model(keras.layers.GRU(4, name="gru"), masked, seed=47)
    summary, rows, table = _run(tmp_path, model, tok, docs, "sequence", "post")
    assert summary["accounted"] and summary["dead_lettered"] == 0
    for doc_id, _ in EMPTY_DOCS:
        assert table.column("num_tokens")[rows[doc_id]].as_py() == 0
        assert table.column("vectors")[rows[doc_id]].as_py() == []
    seqs = tok.texts_to_sequences([t for _, t in docs])
    for (doc_id, _), ids in zip(docs, seqs):
        assert len(table.column("vectors")[rows[doc_id]].as_py()) == min(len(ids), MAXLEN)


@pytest.mark.parametrize("mode", ["final", "sequence"])
def test_empty_document_raw_text_model_gets_keras_value(mode, tmp_path):
    """In-model TextVectorization: a text it finds no token in gets the Keras value of the model
    on that text (a fully masked row), like any other document of the batch."""
    docs = _empty_corpus(48)
    vectorizer = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=MAXLEN, name="vectorize")
    vectorizer.adapt([t for _, t in docs])
    keras.utils.set_random_seed(48)
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(30, 5, mask_zero=True)(vectorizer(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(4, name="lstm")(x)))
    summary, rows, table = _run(tmp_path, model, None, docs, mode, None)
    assert summary["accounted"] and summary["errors_by_reason"] == {}
    texts = np.asarray([[t] for _, t in docs])
    ids = np.asarray(vectorizer(texts[:, 0]))
    ref = helpers.reference(model, "lstm", mode, tf.constant(texts))[0]
    no_token = {doc_id for (doc_id, _), row in zip(docs, ids) if not row.any()}
    assert no_token == {"empty", "spaces", "punctuation"}, "unknown words are TextVectorization's OOV token"
    for i, (doc_id, _) in enumerate(docs):
        real = ids[i] != 0
        assert table.column("num_tokens")[rows[doc_id]].as_py() == real.sum()
        want = ref[i][real] if mode == "sequence" else ref[i]
        np.testing.assert_allclose(_cell(table, table.column_names[-1], rows[doc_id]).reshape(want.shape), want,
                                   atol=TOL, rtol=0, err_msg=doc_id)


@pytest.mark.parametrize("masked,mode", [(True, "states"), (False, "final"), (False, "sequence")])
def test_empty_document_with_long_docs_carry_is_one_window_of_padding(masked, mode, tmp_path):
    docs = _empty_corpus(49)
    tok = _tokenizer(docs)
    keras.utils.set_random_seed(49)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(40, 5, mask_zero=masked)(inp)
    x = keras.layers.LSTM(4, return_sequences=True, name="lower")(x)
    model = keras.Model(inp, keras.layers.GRU(3, name="target")(x))
    window = 4
    summary, rows, table = _run(tmp_path, model, tok, docs, mode, "pre", "--long_docs", "carry", "--maxlen", window)
    assert summary["accounted"] and summary["dead_lettered"] == 0
    assert max(table.column("windows").to_pylist()) > 1
    want = _keras_on_padding(model, "target", mode, np.zeros((1, window), dtype="int32"))
    for doc_id, _ in EMPTY_DOCS:
        row = rows[doc_id]
        assert table.column("num_tokens")[row].as_py() == 0
        assert table.column("windows")[row].as_py() == 1, "an empty document is one window of padding"
        for name, w in zip(table.column_names[3:], want, strict=True):
            got = _cell(table, name, row)
            if mode == "sequence":
                assert got.size == 0
            else:
                np.testing.assert_allclose(got, w, atol=TOL, rtol=0)


def test_empty_document_one_hot_model_gets_keras_value_on_zero_vectors(tmp_path):
    """A model fed one-hot sequences: no token is ``maxlen`` all-zero vectors (masked here)."""
    docs = [d for d in _empty_corpus(50) if d[0] != "unknown-words"]
    tok = helpers.legacy_tokenizer([t for _, t in docs], char_level=True)
    depth = len(tok.word_index) + 1
    keras.utils.set_random_seed(50)
    inp = keras.Input((MAXLEN, depth))
    x = keras.layers.Masking(0.0)(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(4, name="chars")(x)))
    summary, rows, table = _run(tmp_path, model, tok, docs, "final", "pre")
    assert summary["accounted"] and summary["dead_lettered"] == 0
    want = _keras_on_padding(model, "chars", "final", np.zeros((1, MAXLEN, depth), dtype="float32"))
    no_token = [d for d, t in docs if not tok.texts_to_sequences([t])[0]]
    assert no_token == ["empty"], "a char-level tokenizer keeps spaces and punctuation as tokens"
    assert table.column("num_tokens")[rows["empty"]].as_py() == 0
    np.testing.assert_allclose(_cell(table, "vector", rows["empty"]), want[0], atol=TOL, rtol=0)


def test_malformed_records_stay_dead_letters(small_job, tmp_path):
    lines = [
        json.dumps({"id": "ok", "text": "the rocket launch"}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "spaces", "text": "   "}).encode(),
        b'{"id": "broken", "text": ',
        b'{"id": "bad-utf8", "text": "caf\xe9"}',
        json.dumps({"text": "no id here"}).encode(),
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "number-text", "text": 7}).encode(),
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    summary = helpers.run_job(small_job.argv(corpus, out, "--padding", "pre", "--truncating", "pre"))
    assert summary["errors_by_reason"] == {"invalid_json": 1, "invalid_utf8": 1, "missing_id": 1,
                                           "missing_text": 1, "non_string_text": 1}
    assert summary["read"] == 8 and summary["embedded"] == 3 and summary["accounted"]
    table = helpers.read_output(str(out))
    tokens = dict(zip(table.column("doc_id").to_pylist(), table.column("num_tokens").to_pylist()))
    assert tokens["empty"] == tokens["spaces"] == 0 and tokens["ok"] > 0


# --- The separation, on the CPU path --------------------------------------------------------------

def _recording(embedder: Embedder) -> list[np.ndarray]:
    """Records every batch handed to the model's compiled function."""
    seen: list[np.ndarray] = []
    run = embedder._run

    def spy(batch):
        seen.append(np.asarray(batch).copy())
        return run(batch)

    embedder._run = spy
    return seen


@pytest.mark.parametrize("masked", [True, False])
def test_empty_documents_never_enter_the_models_batch(masked):
    model = _model(keras.layers.LSTM(4, name="lstm"), masked, seed=51)
    embedder = Embedder(model, "lstm", "final", MAXLEN, padding="pre")
    seen = _recording(embedder)
    cpu_calls = []
    on_cpu = embedder._run_on_cpu
    embedder._run_on_cpu = lambda batch: cpu_calls.append(1) or on_cpu(batch)
    out = embedder.embed([[3, 4], [], [5], []])
    assert [b.shape[0] for b in seen] == [2] and (seen[0] != 0).any(axis=1).all(), "no row of padding alone"
    np.testing.assert_array_equal(out.lengths, [2, 0, 1, 0])
    want = _keras_on_padding(model, "lstm", "final", np.zeros((1, MAXLEN), dtype="int32"))[0]
    np.testing.assert_allclose(out.columns["vector"][[1, 3]], [want, want], atol=TOL, rtol=0)
    only_empty = embedder.embed([[], []])
    assert len(seen) == 1, "a batch of empty documents runs no batch at all"
    np.testing.assert_array_equal(only_empty.columns["vector"], out.columns["vector"][[1, 3]])
    assert only_empty.padded_timesteps == 0
    assert len(cpu_calls) == 1, "the value of an empty document is computed once per loaded model"


def test_raw_text_empty_documents_never_enter_the_models_batch():
    vectorizer = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=MAXLEN)
    vectorizer.adapt(["the rocket launch", "a new mission"])
    keras.utils.set_random_seed(52)
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(20, 5, mask_zero=True)(vectorizer(inp))
    model = keras.Model(inp, keras.layers.GRU(3, name="gru")(x))
    embedder = Embedder(model, "gru", "sequence", MAXLEN)
    seen = _recording(embedder)
    out = embedder.embed(["the rocket", "", "?!", "unknown words"])
    assert [list(b.reshape(-1)) for b in seen] == [["the rocket", "unknown words"]]
    np.testing.assert_array_equal(out.lengths, [2, 0, 0, 2])
    np.testing.assert_array_equal(out.offsets, [0, 2, 2, 2, 4])
