"""Golden tests: the real pipeline on the DirectRunner, text files in, Parquet out, every value
compared with what Keras itself computes for the layer (see helpers.reference)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest

from tests import helpers

TOL = 1e-4


@dataclass
class Case:
    name: str
    model_path: str
    tokenizer_path: str
    input_path: str
    docs: list  # (doc_id, text) as the job should see them
    model: object
    tokenizer: object
    layer: str
    maxlen: int
    padding: str
    truncating: str
    extra: tuple = ()


def _save(tmp, name, model, tok, docs, *, text_file=False):
    model_path = tmp / f"{name}.keras"
    model.save(model_path)
    tok_path = tmp / f"{name}-tokenizer.json"
    tok_path.write_text(tok.to_json(), encoding="utf-8")
    if text_file:
        path = helpers.write_text(tmp / f"{name}.txt", [t for _, t in docs])
        docs = [(f"{name}.txt:{i}", t) for i, (_, t) in enumerate(docs, start=1)]
    else:
        path = helpers.write_jsonl(tmp / f"{name}.jsonl", docs)
    return str(model_path), str(tok_path), path, docs


def _seed_classifier(tmp):
    """Seed-style classifier: Embedding without mask -> LSTM -> Dense, post padding, trained briefly."""
    docs = helpers.corpus(50, seed=1)
    tok = helpers.legacy_tokenizer([t for _, t in docs], num_words=30, oov_token="<OOV>")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((20,), dtype="int32"),
        keras.layers.Embedding(30, 16),
        keras.layers.LSTM(24, name="lstm"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    x = keras.utils.pad_sequences(tok.texts_to_sequences([t for _, t in docs]), maxlen=20, padding="post",
                                  truncating="post")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, np.arange(len(docs)) % 3, epochs=1, verbose=0)
    paths = _save(tmp, "seed", model, tok, docs, text_file=True)
    return Case("seed", *paths, model, tok, "lstm", 20, "post", "post", ("--padding", "post", "--truncating", "post"))


def _bidirectional_stack(tmp):
    """Masked stacked Bidirectional LSTMs on a variable-length input (maxlen from the flag)."""
    docs = helpers.corpus(60, seed=2)
    tok = helpers.legacy_tokenizer([t for _, t in docs])
    keras.utils.set_random_seed(2)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 12, mask_zero=True)(inp)
    x = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name="bi1")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(6), merge_mode="sum", name="bi2")(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    paths = _save(tmp, "bistack", model, tok, docs)
    return Case("bistack", *paths, model, tok, "bi2", 24, "pre", "pre", ("--maxlen", "24"))


def _pre_padding_masked(tmp):
    """pre padding (the default) with mask_zero; a tokenizer without oov_token drops unknown words."""
    docs = helpers.corpus(40, seed=4) + [("unknown-only", "zebra zebra quagga")]
    tok = helpers.legacy_tokenizer([t for _, t in docs[:30]], num_words=25)
    keras.utils.set_random_seed(4)
    inp = keras.Input((16,), dtype="int32")
    x = keras.layers.Embedding(25, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(12, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    paths = _save(tmp, "premask", model, tok, docs)
    return Case("premask", *paths, model, tok, "lstm", 16, "pre", "pre")


def _gru(tmp):
    docs = helpers.corpus(40, seed=5)
    tok = helpers.legacy_tokenizer([t for _, t in docs], oov_token="<unk>")
    keras.utils.set_random_seed(5)
    inp = keras.Input((18,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 8, mask_zero=True)(inp)
    x = keras.layers.GRU(10, name="gru")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    paths = _save(tmp, "gru", model, tok, docs)
    return Case("gru", *paths, model, tok, "gru", 18, "post", "pre", ("--padding", "post"))


def _char_level(tmp):
    """Chinese text with a char-level tokenizer, SimpleRNN(return_sequences) -> LSTM, masked."""
    texts = ["我爱北京天安门", "今天天气很好，我们去公园散步吧！", "机器学习很有趣", "你好",
             "北京欢迎你，欢迎你来北京。", "天气预报说明天会下雨，记得带伞", "学习",
             "我们一起学习机器学习和深度学习的知识"]
    docs = [(f"zh-{i}", texts[i % len(texts)] + texts[(3 * i) % len(texts)]) for i in range(24)]
    tok = helpers.legacy_tokenizer([t for _, t in docs], char_level=True, oov_token="?")
    keras.utils.set_random_seed(6)
    inp = keras.Input((20,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 8, mask_zero=True)(inp)
    x = keras.layers.SimpleRNN(7, return_sequences=True, name="rnn")(x)
    x = keras.layers.LSTM(9, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    paths = _save(tmp, "chars", model, tok, docs)
    return Case("chars", *paths, model, tok, "lstm", 20, "pre", "post", ("--truncating", "post"))


def _unmasked_pre(tmp):
    """Keras' default padding on a model without a mask: the job sorts the documents by length, and the
    ONNX engine (forced) starts each from the state its padding prefix reaches, in length-sorted chunks
    (300 documents, batches of 256: two chunks of 128 and one of 44 sorted across batches)."""
    docs = helpers.corpus(300, seed=7)
    tok = helpers.legacy_tokenizer([t for _, t in docs], oov_token="<unk>")
    keras.utils.set_random_seed(7)
    inp = keras.Input((22,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 8)(inp)
    x = keras.layers.LSTM(12, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    paths = _save(tmp, "unmaskedpre", model, tok, docs)
    return Case("unmaskedpre", *paths, model, tok, "lstm", 22, "pre", "pre",
                ("--engine", "onnx", "--batch_size", "256"))


BUILDERS = {"seed": _seed_classifier, "bistack": _bidirectional_stack, "premask": _pre_padding_masked,
            "gru": _gru, "chars": _char_level,
            "unmaskedpre": _unmasked_pre}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    return {name: build(tmp) for name, build in BUILDERS.items()}


def check_against_keras(case: Case, mode: str, layer: str, table) -> None:
    texts = [t for _, t in case.docs]
    seqs = case.tokenizer.texts_to_sequences(texts)
    # A document with no token is a row of padding alone (fully masked for a masked model): Keras
    # computes its value like any other's.
    padded = keras.utils.pad_sequences(seqs, maxlen=case.maxlen, padding=case.padding, truncating=case.truncating)
    ref = helpers.reference(case.model, layer, mode, padded)
    rows = {doc_id: i for i, doc_id in enumerate(table.column("doc_id").to_pylist())}
    assert sorted(rows) == sorted(doc_id for doc_id, _ in case.docs), "every document is written once"
    assert len(rows) == table.num_rows
    num_tokens = table.column("num_tokens").to_numpy()
    names = [f.name for f in table.schema][2:]
    columns = {name: table.column(name).to_pylist() for name in names}
    for j, (doc_id, _) in enumerate(case.docs):
        row = rows[doc_id]
        n = min(len(seqs[j]), case.maxlen)
        assert num_tokens[row] == n
        for k, name in enumerate(names):
            got = np.asarray(columns[name][row], dtype=np.float32)
            if mode == "sequence":
                want = ref[0][j][helpers.real_positions(padded[j], n, case.padding, case.maxlen)]
                assert len(got) == n, "one vector per real token, padding dropped"
                got = got.reshape(want.shape)
            else:
                want = ref[k][j]
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"{case.name} {mode} {name} {row}")


def run_case(case: Case, mode: str, tmp_path, layer: str | None = None):
    out = tmp_path / f"{case.name}-{mode}"
    argv = ["--input", case.input_path, "--model", case.model_path, "--tokenizer", case.tokenizer_path,
            "--output", out, "--mode", mode, "--padding", case.padding, "--truncating", case.truncating,
            *case.extra]
    if layer:
        argv += ["--layer", layer]
    summary = helpers.run_job(argv)
    return summary, helpers.read_output(str(out))


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_pipeline_output_equals_keras_layer(cases, name, mode, tmp_path):
    case = cases[name]
    summary, table = run_case(case, mode, tmp_path)
    check_against_keras(case, mode, case.layer, table)
    assert summary["accounted"] and summary["read"] == len(case.docs)


def test_unknown_only_document_gets_a_row_with_no_token(cases, tmp_path):
    """All words unknown to a tokenizer without oov_token: a row with num_tokens 0 and the Keras
    value of a fully masked input (checked value by value in check_against_keras)."""
    case = cases["premask"]
    summary, table = run_case(case, "final", tmp_path)
    ids = table.column("doc_id").to_pylist()
    assert table.column("num_tokens")[ids.index("unknown-only")].as_py() == 0
    assert summary["errors_by_reason"] == {} and summary["embedded"] == summary["read"] == len(case.docs)
    check_against_keras(case, "final", case.layer, table)


def test_layer_chosen_by_index_and_by_name(cases, tmp_path):
    case = cases["bistack"]
    index = [layer.name for layer in case.model.layers].index("bi1")
    _, table = run_case(case, "sequence", tmp_path, layer=str(index))
    check_against_keras(case, "sequence", "bi1", table)
    _, table = run_case(cases["chars"], "sequence", tmp_path, layer="rnn")
    check_against_keras(cases["chars"], "sequence", "rnn", table)


def test_states_columns_are_named_h_c_and_per_direction(cases, tmp_path):
    assert run_case(cases["premask"], "states", tmp_path)[1].column_names == ["doc_id", "num_tokens", "h", "c"]
    assert run_case(cases["gru"], "states", tmp_path)[1].column_names == ["doc_id", "num_tokens", "h"]
    assert run_case(cases["bistack"], "states", tmp_path)[1].column_names == [
        "doc_id", "num_tokens", "h_fw", "c_fw", "h_bw", "c_bw"]


def test_legacy_tf_keras_h5_model_loads_and_matches_tf_keras(tmp_path):
    """An .h5 written by tf.keras (LSTM config carries time_major) runs, and equals tf.keras' own values."""
    import tf_keras

    docs = helpers.corpus(30, seed=9)
    tok = helpers.legacy_tokenizer([t for _, t in docs], oov_token="<OOV>")
    tf_keras.utils.set_random_seed(9)
    legacy = tf_keras.Sequential([
        tf_keras.layers.Embedding(len(tok.word_index) + 1, 8, input_length=15, mask_zero=True),
        tf_keras.layers.LSTM(5, name="lstm"),
        tf_keras.layers.Dense(1),
    ])
    legacy.build((None, 15))
    model_path = tmp_path / "legacy.h5"
    legacy.save(model_path)
    (tmp_path / "tok.json").write_text(tok.to_json())
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tmp_path / "tok.json",
                     "--output", tmp_path / "out", "--padding", "pre", "--truncating", "pre"])
    table = helpers.read_output(str(tmp_path / "out"))
    padded = tf_keras.utils.pad_sequences(tok.texts_to_sequences([t for _, t in docs]), maxlen=15)
    want = tf_keras.Model(legacy.inputs, legacy.get_layer("lstm").output).predict(padded, verbose=0)
    got = dict(zip(table.column("doc_id").to_pylist(), table.column("vector").to_pylist()))
    for (doc_id, _), w in zip(docs, want):
        np.testing.assert_allclose(np.asarray(got[doc_id]), w, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """Raw text in: an in-model TextVectorization, Embedding(mask_zero) -> LSTM; no tokenizer file."""
    tmp = tmp_path_factory.mktemp("text_model")
    docs = helpers.corpus(40, seed=17) + [("unknown-words", "zzz qqq xxx"), ("punctuation-only", "!!! ... ???")]
    keras.utils.set_random_seed(17)
    vectorizer = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=16, name="vectorize")
    vectorizer.adapt([t for _, t in docs[:20]])
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.Embedding(40, 8, mask_zero=True)(vectorizer(inp))
    x = keras.layers.LSTM(6, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    model.save(tmp / "text.keras")
    return model, vectorizer, docs, str(tmp / "text.keras"), helpers.write_jsonl(tmp / "text.jsonl", docs)


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
def test_model_with_text_vectorization_takes_raw_text(text_model, mode, tmp_path):
    model, vectorizer, docs, model_path, corpus = text_model
    summary = helpers.run_job(["--input", corpus, "--model", model_path, "--output", tmp_path / "t", "--mode", mode])
    table = helpers.read_output(str(tmp_path / "t"))
    texts = np.asarray([[t] for _, t in docs], dtype=object)
    ids = np.asarray(vectorizer(texts[:, 0]))
    import tensorflow as tf

    ref = helpers.reference(model, "lstm", mode, tf.constant(texts.astype(str)))
    rows = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    assert sorted(rows) == sorted(doc_id for doc_id, _ in docs)
    assert summary["errors_by_reason"] == {}
    assert table.column("num_tokens")[rows["punctuation-only"]].as_py() == 0, "no token: the Keras value, no vector"
    assert table.column("num_tokens")[rows["unknown-words"]].as_py() > 0, "unknown words are the OOV token"
    for i in range(len(docs)):
        row, real = rows[docs[i][0]], ids[i] != 0
        assert table.column("num_tokens")[row].as_py() == real.sum()
        for k, name in enumerate(table.column_names[2:]):
            got = np.asarray(table.column(name)[row].as_py(), dtype=np.float32)
            want = ref[0][i][real] if mode == "sequence" else ref[k][i]
            got = got.reshape(want.shape) if mode == "sequence" and not real.any() else got
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
