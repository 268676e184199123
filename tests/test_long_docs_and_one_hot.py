"""Documents longer than maxlen read window by window with the states carried (--long_docs carry),
and models fed one-hot sequences: golden tests against Keras through the real pipeline."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.options import ConfigError, resolve
from tests import helpers

TOL = 1e-5
WINDOW = 8


def _long_docs(n=24, seed=12):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(1, 9))  # 1..8 sentences: from a few tokens to several windows
        docs.append((f"long-{i}", " ".join(helpers.SENTENCES[int(j)] for j in rng.integers(0, 10, size=k))))
    return docs


def _save(tmp, name, model, tok, docs):
    model_path = tmp / f"{name}.keras"
    model.save(model_path)
    tok_path = tmp / f"{name}.json"
    tok_path.write_text(tok.to_json(), encoding="utf-8")
    return str(model_path), str(tok_path), helpers.write_jsonl(tmp / f"{name}.jsonl", docs)


@pytest.fixture(scope="module")
def carry_case(tmp_path_factory):
    """Masked Embedding -> LSTM(return_sequences) -> LSTM target, variable-length input."""
    tmp = tmp_path_factory.mktemp("carry")
    docs = _long_docs()
    tok = helpers.legacy_tokenizer([t for _, t in docs], oov_token="<unk>")
    keras.utils.set_random_seed(21)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 6, mask_zero=True)(inp)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.LSTM(7, return_sequences=True, name="lower")(x)
    x = keras.layers.LSTM(5, name="target")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    return (model, tok, docs, *_save(tmp, "carry", model, tok, docs))


@pytest.fixture(scope="module")
def carry_unmasked_case(tmp_path_factory):
    """No mask, GRU target, pre padding: the document is padded to whole windows as trained."""
    tmp = tmp_path_factory.mktemp("carry_unmasked")
    docs = _long_docs(16, seed=13)
    tok = helpers.legacy_tokenizer([t for _, t in docs], oov_token="<unk>")
    keras.utils.set_random_seed(22)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(len(tok.word_index) + 1, 6)(inp)
    x = keras.layers.GRU(4, name="target", return_sequences=True)(x)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x)))
    return (model, tok, docs, *_save(tmp, "unmasked", model, tok, docs))


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
def test_carry_equals_one_pass_over_the_whole_document(carry_case, mode, tmp_path):
    model, tok, docs, model_path, tok_path, corpus = carry_case
    out = tmp_path / "emb"
    helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output", out,
                     "--mode", mode, "--maxlen", WINDOW, "--long_docs", "carry", "--padding", "pre"])
    table = helpers.read_output(str(out))
    rows = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    assert len(rows) == len(docs)
    seqs = tok.texts_to_sequences([t for _, t in docs])
    assert max(map(len, seqs)) > 4 * WINDOW, "the corpus must hold documents of many windows"
    names = [n for n in table.column_names if n not in ("doc_id", "num_tokens", "windows")]
    for (doc_id, _), ids in zip(docs, seqs):
        row = rows[doc_id]
        assert table.column("num_tokens")[row].as_py() == len(ids)
        assert table.column("windows")[row].as_py() == math.ceil(len(ids) / WINDOW)
        ref = helpers.reference(model, "target", mode, np.asarray([ids]))
        for k, name in enumerate(names):
            got = np.asarray(table.column(name)[row].as_py(), dtype=np.float32)
            want = ref[0][0] if mode != "states" else ref[k][0]
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"{mode} {name} {doc_id}")


@pytest.mark.parametrize("mode", ["final", "sequence"])
def test_carry_on_an_unmasked_model_pads_to_whole_windows_as_trained(carry_unmasked_case, mode, tmp_path):
    model, tok, docs, model_path, tok_path, corpus = carry_unmasked_case
    out = tmp_path / "emb"
    helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output", out,
                     "--mode", mode, "--long_docs", "carry", "--maxlen", WINDOW, "--padding", "pre"])
    table = helpers.read_output(str(out))
    got = dict(zip(table.column("doc_id").to_pylist(), table.column(table.column_names[-1]).to_pylist()))
    for (doc_id, _), ids in zip(docs, tok.texts_to_sequences([t for _, t in docs])):
        width = max(1, math.ceil(len(ids) / WINDOW)) * WINDOW
        padded = keras.utils.pad_sequences([ids], maxlen=width, padding="pre")
        want = helpers.reference(model, "target", mode, padded)[0][0]
        if mode == "sequence":
            want = want[width - len(ids):]
        np.testing.assert_allclose(np.asarray(got[doc_id], dtype=np.float32), want, atol=TOL, rtol=0)


def test_truncate_stays_the_default_and_reads_one_window(carry_case, tmp_path):
    model, tok, docs, model_path, tok_path, corpus = carry_case
    helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output", tmp_path / "t",
                     "--maxlen", WINDOW, "--padding", "pre", "--truncating", "pre"])
    table = helpers.read_output(str(tmp_path / "t"))
    assert "windows" not in table.column_names
    assert max(table.column("num_tokens").to_pylist()) == WINDOW


def _carry_refused(tmp_path, model, match):
    path = tmp_path / "m.keras"
    model.save(path)
    from beam_pipeline.demo import fit_tokenizer_json

    tok = tmp_path / "t.json"
    tok.write_text(fit_tokenizer_json(["a b c"], oov_token="<unk>"))
    corpus = helpers.write_text(tmp_path / "c.txt", ["a b c"])
    argv = ["--input", corpus, "--model", str(path), "--tokenizer", str(tok), "--output", str(tmp_path / "o"),
            "--long_docs", "carry", "--maxlen", "4"]
    with pytest.raises(ConfigError, match=match):
        resolve(PipelineOptions(argv))


def test_carry_refuses_a_bidirectional_target(tmp_path):
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 3, mask_zero=True)(inp)
    model = keras.Model(inp, keras.layers.Bidirectional(keras.layers.LSTM(2))(x))
    _carry_refused(tmp_path, model, "Bidirectional.*backward direction needs the end of the document first")


def test_carry_refuses_layers_that_mix_timesteps_below_the_target(tmp_path):
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 3)(inp)
    x = keras.layers.Conv1D(4, 3, padding="same", name="conv")(x)
    model = keras.Model(inp, keras.layers.LSTM(2)(x))
    _carry_refused(tmp_path, model, "'conv' \\(Conv1D\\).*per-timestep")


# --- One-hot inputs ---------------------------------------------------------------------------------

def _one_hot(padded: np.ndarray, depth: int) -> np.ndarray:
    """One-hot vectors for token ids; padding (id 0) is the all-zero vector."""
    eye = np.eye(depth, dtype=np.float32)
    eye[0] = 0.0
    return eye[padded]


@pytest.fixture(scope="module")
def one_hot_texts():
    return [(f"oh-{i}", t) for i, t in enumerate(helpers.SENTENCES * 3)]


def _run_one_hot(tmp, model, tok, docs, mode, layer, *extra):
    model_path = tmp / "m.keras"
    model.save(model_path)
    (tmp / "t.json").write_text(tok.to_json())
    corpus = helpers.write_jsonl(tmp / "c.jsonl", docs)
    out = tmp / f"emb-{mode}-{layer}"
    helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tmp / "t.json", "--output", out,
                     "--mode", mode, "--layer", layer, "--truncating", "pre", *(extra or ("--padding", "pre"))])
    return helpers.read_output(str(out))


def _check_one_hot(table, model, tok, docs, mode, layer, maxlen, depth, padding="pre"):
    seqs = tok.texts_to_sequences([t for _, t in docs])
    padded = keras.utils.pad_sequences(seqs, maxlen=maxlen, padding=padding)
    ref = helpers.reference(model, layer, mode, _one_hot(padded, depth))
    rows = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    for j, ((doc_id, _), ids) in enumerate(zip(docs, seqs)):
        n = min(len(ids), maxlen)
        for k, name in enumerate(table.column_names[2:]):
            got = np.asarray(table.column(name)[rows[doc_id]].as_py(), dtype=np.float32)
            want = ref[k][j]
            if mode == "sequence":
                want = ref[0][j][helpers.real_positions(None, n, padding, maxlen)]
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"{layer} {mode} {name} {doc_id}")


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
def test_char_level_one_hot_lstm(one_hot_texts, mode, tmp_path):
    tok = helpers.legacy_tokenizer([t for _, t in one_hot_texts], char_level=True)
    depth = len(tok.word_index) + 1
    keras.utils.set_random_seed(31)
    inp = keras.Input((60, depth))
    x = keras.layers.Masking(0.0)(inp)
    x = keras.layers.LSTM(9, name="chars")(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    table = _run_one_hot(tmp_path, model, tok, one_hot_texts, mode, "chars")
    _check_one_hot(table, model, tok, one_hot_texts, mode, "chars", 60, depth)


@pytest.fixture(scope="module")
def autoencoder():
    keras.utils.set_random_seed(32)
    inp = keras.Input((45, 100))
    x = keras.layers.Bidirectional(keras.layers.LSTM(20), merge_mode="sum", name="encoder")(inp)
    x = keras.layers.RepeatVector(45)(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(100, return_sequences=True), merge_mode="sum",
                                   name="decoder")(x)
    return keras.Model(inp, x)


@pytest.mark.parametrize("mode,layer", [("final", "encoder"), ("states", "encoder"), ("sequence", "decoder")])
def test_one_hot_autoencoder_encoder_and_decoder(autoencoder, one_hot_texts, mode, layer, tmp_path):
    tok = helpers.legacy_tokenizer([t for _, t in one_hot_texts], char_level=True)
    assert len(tok.word_index) < 100
    table = _run_one_hot(tmp_path, autoencoder, tok, one_hot_texts, mode, layer, "--padding", "post")
    if mode == "states":
        assert table.column_names[2:] == ["h_fw", "c_fw", "h_bw", "c_bw"]
    _check_one_hot(table, autoencoder, tok, one_hot_texts, mode, layer, 45, 100, padding="post")


def test_one_hot_depth_too_small_for_the_tokenizer_is_refused(tmp_path, one_hot_texts):
    tok = helpers.legacy_tokenizer([t for _, t in one_hot_texts], char_level=True)
    inp = keras.Input((10, 5))
    model = keras.Model(inp, keras.layers.LSTM(2)(inp))
    model.save(tmp_path / "m.keras")
    (tmp_path / "t.json").write_text(tok.to_json())
    corpus = helpers.write_text(tmp_path / "c.txt", ["abc"])
    with pytest.raises(ConfigError, match="one-hot input of depth 5"):
        resolve(PipelineOptions(["--input", corpus, "--model", str(tmp_path / "m.keras"), "--tokenizer",
                                 str(tmp_path / "t.json"), "--output", str(tmp_path / "o")]))
