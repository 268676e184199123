"""Keras 2 artifacts as users have them, beyond what tf.keras 2.x writes today: CuDNN layers (TF 1.x
and Kaggle-era models), SpatialDropout1D, Sequential configs of Keras 2.0-2.2, a GRU config from before
``reset_after`` existed, a Bidirectional with its own ``backward_layer`` read from a SavedModel, and a
config Keras 3 cannot build. Each is run through the job and compared, to 1e-5, with what tf_keras
computes for the same file (for CuDNN layers: the plain tf_keras layer into which tf_keras itself
loads the CuDNN weights, converting them, since a CuDNN layer runs on a GPU only)."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest

from beam_pipeline.model import ModelError, load_model
from tests import helpers

TOL = 1e-5  # same computation order as tf_keras on the CPU
MAXLEN = 12
WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy_corpus")
    rng = np.random.default_rng(11)
    docs = [(f"doc{i}", " ".join(rng.choice(WORDS, size=n))) for i, n in enumerate([1, 3, 6, 9, 12, 15, 4, 2, 20])]
    docs.append(("empty", "zebra"))  # no known token: the layer's value for padding alone
    tok = helpers.legacy_tokenizer(WORDS)
    (folder / "tok.json").write_text(tok.to_json(), encoding="utf-8")
    seqs = tok.texts_to_sequences([t for _, t in docs])
    return {"path": helpers.write_jsonl(folder / "c.jsonl", docs), "tokenizer": str(folder / "tok.json"),
            "docs": docs, "vocab": len(WORDS) + 1,
            "padded": keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="pre", truncating="pre")}


def _run(corpus, model_path, out, layer: str, mode: str = "final") -> list[np.ndarray]:
    """The job's columns for ``layer`` in ``mode``, in corpus order (sequence: padded back to maxlen, pre)."""
    summary = helpers.run_job(["--input", corpus["path"], "--model", model_path, "--tokenizer", corpus["tokenizer"],
                               "--output", out, "--layer", layer, "--mode", mode, "--padding", "pre",
                               "--truncating", "pre"])
    assert summary["embedded"] == len(corpus["docs"]) and summary["dead_lettered"] == 0, summary
    table = helpers.read_output(str(out))
    order = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    rows = [order[d] for d, _ in corpus["docs"]]
    columns = []
    for name in table.column_names[2:]:
        values = table.column(name).to_pylist()
        if mode == "sequence":
            dim = len(next(v for v in values if v)[0])
            padded = np.zeros((len(rows), MAXLEN, dim), np.float32)
            for k, r in enumerate(rows):
                if values[r]:
                    padded[k, MAXLEN - len(values[r]):] = values[r]
            columns.append(padded)
        else:
            columns.append(np.asarray([values[r] for r in rows], np.float32))
    return columns


def _want(model, layer: str, mode: str, corpus) -> list[np.ndarray]:
    ref = helpers.tf_keras_reference(model, layer, mode, corpus["padded"])
    if mode == "sequence":  # real-token positions only (pre padding: the last num_tokens)
        real = (corpus["padded"] != 0)[..., None]
        ref = [np.concatenate(ref, axis=-1) * real] if len(ref) > 1 else [ref[0] * real]
    return ref


def _randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])


def _cudnn_model(kind: str, layers):
    """tf_keras: Embedding -> the recurrent layer named ``rnn`` -> Dense; ``layers`` maps the
    kinds to classes (the CuDNN ones, or the plain twins)."""
    import tf_keras

    inp = tf_keras.Input((MAXLEN,), dtype="int32")
    x = tf_keras.layers.Embedding(len(WORDS) + 1, 6, name="emb")(inp)
    if kind == "bi_lstm":
        x = tf_keras.layers.Bidirectional(layers["lstm"](5, return_sequences=True, name="cell"), name="rnn")(x)
    else:
        x = layers[kind](5, name="rnn")(x)
    return tf_keras.Model(inp, tf_keras.layers.Dense(1, name="head")(tf_keras.layers.Flatten()(x)))


@pytest.mark.parametrize("kind,mode", [("lstm", "states"), ("gru", "final"), ("bi_lstm", "sequence")])
def test_cudnn_layers_compute_what_tf_keras_loads_their_weights_into(kind, mode, corpus, tmp_path):
    import tf_keras
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

    cudnn = _cudnn_model(kind, {"lstm": CuDNNLSTM, "gru": CuDNNGRU})
    _randomize(cudnn, seed=len(kind))
    path = str(tmp_path / "cudnn.h5")
    cudnn.save(path)  # builds and saves on the CPU (it would run on a GPU only)
    plain = _cudnn_model(kind, {  # what tf_keras documents the CuDNN layers as
        "lstm": lambda units, **kw: tf_keras.layers.LSTM(units, recurrent_activation="sigmoid", **kw),
        "gru": lambda units, **kw: tf_keras.layers.GRU(units, recurrent_activation="sigmoid", reset_after=True, **kw),
    })
    plain.load_weights(path)  # tf_keras converts CuDNN weights into the plain layer's (hdf5_format)
    got = _run(corpus, path, tmp_path / "out", "rnn", mode)
    want = _want(plain, "rnn", mode, corpus)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)
    # The conversion matters: the CuDNN kernels read as they are give other values.
    raw = [np.asarray(w) for w in cudnn.get_layer("rnn").get_weights()]
    converted = plain.get_layer("rnn").get_weights()
    assert any(r.shape != c.shape or np.max(np.abs(r - c)) > 1e-3 for r, c in zip(raw, converted))
    translations = load_model(path).provenance.translations
    assert any(t["rule"] == "cudnn_layer" for t in translations)


def test_keras2_spatial_dropout_loads_from_h5_and_savedmodel(corpus, tmp_path):
    import tf_keras

    inp = tf_keras.Input((MAXLEN,), dtype="int32")
    x = tf_keras.layers.Embedding(len(WORDS) + 1, 6)(inp)
    x = tf_keras.layers.SpatialDropout1D(0.3)(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(1)(tf_keras.layers.LSTM(4, name="lstm")(x)))
    _randomize(model, seed=3)
    model.save(str(tmp_path / "m.h5"))
    model.save(str(tmp_path / "sm"), save_format="tf")
    want = _want(model, "lstm", "final", corpus)[0]
    for name in ("m.h5", "sm"):
        got = _run(corpus, str(tmp_path / name), tmp_path / f"out_{name}", "lstm")[0]
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def _rewrite(source_h5: str, path: str, config: dict, version: str) -> str:
    """``source_h5`` with its model config and keras_version replaced, as an older Keras wrote them."""
    import shutil

    shutil.copyfile(source_h5, path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = version.encode()
        f["model_weights"].attrs["keras_version"] = version.encode()
    return path


def _sequential_source(tmp_path, rnn):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Embedding(len(WORDS) + 1, 6, input_length=MAXLEN, name="emb"),
                                 rnn, tf_keras.layers.Dense(1, name="head")])
    model.build((None, MAXLEN))
    _randomize(model, seed=7)
    model.save(str(tmp_path / "source.h5"))
    with h5py.File(tmp_path / "source.h5") as f:
        config = json.loads(f.attrs["model_config"])
    return model, str(tmp_path / "source.h5"), config


def test_keras_2_0_to_2_2_sequential_configs_load_as_the_model_they_describe(corpus, tmp_path):
    """Keras up to 2.2 wrote a Sequential with no InputLayer entry (batch_input_shape on the first
    layer), Keras 2.0 as a bare list of layers; tf.keras writes an InputLayer first."""
    import tf_keras

    model, source, config = _sequential_source(
        tmp_path, tf_keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", name="lstm"))
    layers = config["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer"
    first = dict(layers[1], config=dict(layers[1]["config"], batch_input_shape=[None, MAXLEN]))
    old_layers = [first, *layers[2:]]
    want = _want(model, "lstm", "final", corpus)[0]
    for version, old in (("2.2.4", {"class_name": "Sequential", "config": {"name": "seq", "layers": old_layers}}),
                         ("2.0.8", {"class_name": "Sequential", "config": old_layers})):
        path = _rewrite(source, str(tmp_path / f"keras{version}.h5"), old, version)
        got = _run(corpus, path, tmp_path / f"out{version}", "lstm")[0]
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        rules = {t["rule"] for t in load_model(path).provenance.translations}
        assert "sequential_input_layer" in rules and "hard_sigmoid" in rules


def test_gru_config_without_reset_after_is_the_reset_before_gru(corpus, tmp_path):
    import tf_keras

    model, source, config = _sequential_source(tmp_path, tf_keras.layers.GRU(4, reset_after=False, name="gru"))
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "GRU":
            del layer["config"]["reset_after"]  # Keras before 2.1.3 wrote no such key
    path = _rewrite(source, str(tmp_path / "keras212.h5"), config, "2.1.2")
    got = _run(corpus, path, tmp_path / "out", "gru")[0]
    np.testing.assert_allclose(got, _want(model, "gru", "final", corpus)[0], atol=TOL, rtol=0)


def test_savedmodel_bidirectional_with_its_own_backward_layer(corpus, tmp_path):
    import tf_keras

    inp = tf_keras.Input((MAXLEN,), dtype="int32")
    x = tf_keras.layers.Embedding(len(WORDS) + 1, 6, mask_zero=True)(inp)
    x = tf_keras.layers.Bidirectional(
        tf_keras.layers.GRU(4), backward_layer=tf_keras.layers.GRU(4, go_backwards=True, activation="relu"),
        name="bi")(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(1)(x))
    _randomize(model, seed=9)
    model.save(str(tmp_path / "sm"), save_format="tf")
    got = _run(corpus, str(tmp_path / "sm"), tmp_path / "out", "bi")[0]
    np.testing.assert_allclose(got, _want(model, "bi", "final", corpus)[0], atol=TOL, rtol=0)


def test_a_config_keras3_cannot_build_is_a_model_error_naming_the_layer(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((MAXLEN,)), tf_keras.layers.Embedding(5, 3, name="emb"),
                                 tf_keras.layers.LSTM(2, name="lstm")])
    model.save(str(tmp_path / "m.h5"))
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "MyAttention"  # a custom layer the job cannot know
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelError, match="MyAttention") as error:
        load_model(str(tmp_path / "m.h5"))
    assert "cannot build this model" in str(error.value) and str(tmp_path / "m.h5") in str(error.value)
