"""Weights-only files with the code that builds the model (``--model_fn``), against the framework
that wrote the weights: Keras 3 for a ``.weights.h5``, tf_keras for a Keras 2 ``save_weights``
``.h5``; refusals (shapes that do not fit, TensorFlow-format checkpoints) before any work."""

from __future__ import annotations

import glob
import json
import os
import textwrap

import h5py
import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipeline import files
from beam_pipeline.inference import Embedder
from beam_pipeline.model import load_model
from beam_pipeline.options import ConfigError, job_parser, one_hot_warnings
from beam_pipeline.recurrent import ModelError
from tests import helpers
from tests.test_nested_models import _golden, _siamese

MAXLEN = 12
VOCAB = 60

SIAMESE_BUILDER = f'''
import keras


def build():
    """The siamese network of tests/test_nested_models.py, as its user's code would build it."""
    encoder = keras.Sequential([keras.Input(({MAXLEN},), dtype="int32"), keras.layers.Embedding({VOCAB}, 8,
                                mask_zero=True), keras.layers.LSTM(UNITS, name="lstm_1")], name="encoder")
    a, b = keras.Input(({MAXLEN},), dtype="int32"), keras.Input(({MAXLEN},), dtype="int32")
    distance = keras.layers.Subtract()([encoder(a), encoder(b)])
    return keras.Model([a, b], keras.layers.Dense(1)(distance))
'''


def _write(folder, name: str, source: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def keras3_weights(tmp_path_factory):
    """A trained-weights siamese model saved with save_weights, its builder module, a corpus and tokenizer."""
    from beam_pipeline.demo import fit_tokenizer_json

    folder = tmp_path_factory.mktemp("k3weights")
    keras.utils.set_random_seed(21)
    model = _siamese()
    weights = folder / "siamese.weights.h5"
    model.save_weights(weights)
    _write(folder, "siamese_builder", SIAMESE_BUILDER.replace("UNITS", "6"))
    _write(folder, "siamese_wrong_builder", SIAMESE_BUILDER.replace("UNITS", "7"))
    docs = helpers.corpus(40, seed=5)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(fit_tokenizer_json([t for _, t in docs], num_words=VOCAB), encoding="utf-8")
    corpus = helpers.write_jsonl(folder / "corpus.jsonl", docs)
    return model, str(weights), str(folder), str(tokenizer), corpus, docs


def test_keras3_weights_with_a_builder_module_through_the_job(keras3_weights, tmp_path, monkeypatch):
    """The whole job: --model_fn MODULE:FUNCTION, a .weights.h5, a target in the shared nested encoder."""
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    model, weights, folder, tokenizer, corpus, docs = keras3_weights
    monkeypatch.syspath_prepend(folder)  # the module is importable, as --setup_file would make it on workers
    out = tmp_path / "emb"
    summary = helpers.run_job(["--input", corpus, "--model", weights, "--model_fn", "siamese_builder:build",
                               "--tokenizer", tokenizer, "--output", out, "--truncating", "pre",
                               "--layer", "encoder/lstm_1", "--mode", "states"])
    assert summary["accounted"] and summary["embedded"] == len(docs)
    table = helpers.read_output(str(out)).sort_by("doc_id")
    tok = KerasTokenizer.from_json(open(tokenizer, encoding="utf-8").read())
    seqs = [s[-MAXLEN:] for s in tok.texts_to_sequences([t for _, t in sorted(docs)])]
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post")
    h, c = _golden(model, "siamese", "states", padded)
    real = np.array([len(s) > 0 for s in seqs])
    np.testing.assert_allclose(np.stack(table["h"].to_numpy(zero_copy_only=False))[real], h[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack(table["c"].to_numpy(zero_copy_only=False))[real], c[real], atol=1e-5, rtol=0)
    shard = sorted(glob.glob(f"{out}-*-of-*.parquet"))[0]
    job = json.loads(pq.ParquetFile(shard).schema_arrow.metadata[b"embedding_job"])
    assert job["layer"] == "encoder/lstm_1"
    origin = job["model_origin"]
    assert origin["builder"] == "siamese_builder:build" and "builder_sha256" not in origin
    assert origin["weights_sha256"] == files.sha256_of(weights) and origin["format"] == "weights.h5"
    assert origin["framework"] == "keras 3" and origin["warnings"] == []


def test_weights_that_do_not_fit_are_refused_before_any_work(keras3_weights, tmp_path, monkeypatch):
    _, weights, folder, tokenizer, corpus, _ = keras3_weights
    monkeypatch.syspath_prepend(folder)
    out = tmp_path / "emb"
    with pytest.raises(ConfigError) as refused:
        helpers.run_job(["--input", corpus, "--model", weights, "--model_fn", "siamese_wrong_builder:build",
                         "--tokenizer", tokenizer, "--output", out, "--truncating", "pre"])
    message = str(refused.value)
    assert "nothing was loaded" in message
    assert "layer 'encoder/lstm_1/lstm_cell' (variable 0, layers/sequential/layers/lstm/cell/vars/0): the model has " \
           "shape (8, 28), the file (8, 24)" in message
    assert not os.listdir(tmp_path)  # no shard, no summary, no temp folder


def test_a_layer_the_file_lacks_or_holds_extra_is_named(keras3_weights, tmp_path):
    _, weights, _, _, _, _ = keras3_weights
    extra = _write(tmp_path, "extra", SIAMESE_BUILDER.replace("UNITS", "6").replace(
        "keras.layers.Dense(1)(distance)", "keras.layers.Dense(1)(keras.layers.Dense(4)(distance))"))
    with pytest.raises(ModelError, match=r"layer 'dense' \(variable 0, layers/dense_1/vars/0\): the model has "
                                         r"shape \(4, 1\), the file has no such weight"):
        load_model(weights, model_fn=f"{extra}:build")


# --- Keras 2 (tf.keras) save_weights files -------------------------------------------------------------------

KERAS2_DEFAULTS_BUILDER = f'''
import keras

from beam_pipeline.model.legacy import keras2_hard_sigmoid


def build():
    """Keras 3 code written to standalone Keras 2.2's defaults (other layer names: matched by order)."""
    return keras.Sequential([
        keras.Input(({MAXLEN},), dtype="int32"),
        keras.layers.Embedding({VOCAB}, 8, mask_zero=True, name="words"),
        keras.layers.LSTM(6, return_sequences=True, recurrent_activation=keras2_hard_sigmoid, name="lstm_a"),
        keras.layers.GRU(5, reset_after=False, recurrent_activation=keras2_hard_sigmoid, name="gru_a"),
        keras.layers.Dense(1, name="out"),
    ])
'''

KERAS3_DEFAULTS_BUILDER = f'''
import keras


def build():
    """The same network with Keras 3's defaults."""
    return keras.Sequential([
        keras.Input(({MAXLEN},), dtype="int32"),
        keras.layers.Embedding({VOCAB}, 8, mask_zero=True, name="embedding"),
        keras.layers.LSTM(6, return_sequences=True, name="lstm"),
        keras.layers.GRU(5, reset_after=RESET_AFTER, name="gru"),
        keras.layers.Dense(1, name="dense"),
    ])
'''


@pytest.fixture(scope="module")
def keras2_weights(tmp_path_factory):
    """A tf_keras model with standalone Keras 2.2's RNN defaults spelled out, its save_weights .h5
    labelled keras_version 2.2.4 (standalone Keras wrote the same layout; tf_keras writes its own version)."""
    import tf_keras

    folder = tmp_path_factory.mktemp("k2weights")
    tf_keras.utils.set_random_seed(8)
    model = tf_keras.Sequential([
        tf_keras.Input((MAXLEN,), dtype="int32"),
        tf_keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="embedding"),
        tf_keras.layers.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid", name="lstm"),
        tf_keras.layers.GRU(5, reset_after=False, recurrent_activation="hard_sigmoid", name="gru"),
        tf_keras.layers.Dense(1, name="dense"),
    ])
    path = folder / "weights.h5"
    model.save_weights(str(path))
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = "2.2.4"
    return model, str(path), folder


def _sequences(seed: int, n: int = 19) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(n)]


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
def test_keras2_weights_with_a_builder_written_to_keras2_defaults_equal_tf_keras(keras2_weights, mode):
    original, path, folder = keras2_weights
    builder = _write(folder, "keras2_defaults", KERAS2_DEFAULTS_BUILDER)
    loaded = load_model(path, model_fn=f"{builder}:build")
    origin = loaded.provenance.to_dict()
    assert origin["framework"] == "keras 2" and origin["framework_version"] == "2.2.4"
    assert origin["weights_matched"] == "by topological order" and origin["warnings"] == []
    assert origin["builder"] == f"{builder}:build" and origin["builder_sha256"] == files.sha256_of(builder)
    seqs = _sequences(1)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post")
    for target, keras2_name in (("gru_a", "gru"), ("lstm_a", "lstm")):
        got = list(Embedder(loaded.model, target, mode, MAXLEN, padding="post").embed(seqs).columns.values())
        want = helpers.tf_keras_reference(original, keras2_name, mode, padded)
        if mode == "sequence":
            want = [np.concatenate([w[i, :len(s)] for i, s in enumerate(seqs)]) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_keras2_weights_under_keras3_defaults_warn_and_compute_as_keras3(keras2_weights, caplog):
    original, path, folder = keras2_weights
    builder = _write(folder, "keras3_defaults", KERAS3_DEFAULTS_BUILDER.replace("RESET_AFTER", "False"))
    loaded = load_model(path, model_fn=f"{builder}:build")
    warnings = loaded.provenance.weights["warnings"]
    assert loaded.provenance.weights["weights_matched"] == "by topological order"
    assert len(warnings) == 2 and all("recurrent_activation='sigmoid' is Keras 3's default, but standalone Keras "
                                      "2.2.4, which wrote the weights, defaulted to 'hard_sigmoid'" in w
                                      for w in warnings)
    assert "keras2_hard_sigmoid" in warnings[0] and "'lstm'" in warnings[0] and "'gru'" in warnings[1]
    seqs = _sequences(2)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post")
    got = Embedder(loaded.model, "gru", "final", MAXLEN, padding="post").embed(seqs).columns["vector"]
    keras2 = helpers.tf_keras_reference(original, "gru", "final", padded)[0]
    assert np.abs(got - keras2).max() > 1e-3  # Keras 3's sigmoid: not what Keras 2 computed
    np.testing.assert_allclose(got, helpers.reference(loaded.model, "gru", "final", padded)[0], atol=1e-5, rtol=0)


def test_a_whole_tf_keras_h5_gives_its_weights_and_tf_keras_defaults_warn_nothing(keras2_weights, tmp_path):
    import tf_keras

    original, _, folder = keras2_weights
    whole = tmp_path / "whole.h5"
    original.save(str(whole))  # tf_keras writes its own keras_version (2.21.0): tf.keras defaults
    builder = _write(folder, "keras3_whole", KERAS3_DEFAULTS_BUILDER.replace("RESET_AFTER", "False"))
    loaded = load_model(str(whole), model_fn=f"{builder}:build")
    origin = loaded.provenance.to_dict()
    assert origin["framework_version"] == tf_keras.__version__ and origin["weights_matched"] == "by topological order"
    assert origin["warnings"] == []  # sigmoid is tf.keras 2.x's default as well as Keras 3's
    for name in ("embedding", "lstm", "gru", "dense"):
        for got, want in zip(loaded.model.get_layer(name).get_weights(), original.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ModelError, match="is a whole model: it needs no --model_fn"):
        load_model(str(tmp_path / "m.keras"), model_fn=f"{builder}:build")


def test_layers_in_another_order_are_matched_by_name(tmp_path):
    import tf_keras

    def two_branches(lib, first: str):
        inputs = {"a": lib.Input((4,), name="a"), "b": lib.Input((5,), name="b")}
        dense = {k: lib.layers.Dense(3, name=f"dense_{k}") for k in "ab"}
        order = [first, "b" if first == "a" else "a"]
        outputs = [dense[k](inputs[k]) for k in order]
        return lib.Model([inputs[k] for k in order], lib.layers.Concatenate()(outputs))

    tf_keras.utils.set_random_seed(2)
    original = two_branches(tf_keras, "a")
    path = tmp_path / "two.h5"
    original.save_weights(str(path))
    builder = _write(tmp_path, "two", """
        import keras


        def build():  # the b branch first: its Dense comes first in model.layers
            inputs = {"a": keras.Input((4,)), "b": keras.Input((5,))}
            dense = {k: keras.layers.Dense(3, name=f"dense_{k}") for k in "ab"}
            outs = [dense[k](inputs[k]) for k in "ba"]
            return keras.Model([inputs["b"], inputs["a"]], keras.layers.Concatenate()(outs))
        """)
    loaded = load_model(str(path), model_fn=f"{builder}:build")
    assert loaded.provenance.weights["weights_matched"] == "by name"
    for name in ("dense_a", "dense_b"):
        for got, want in zip(loaded.model.get_layer(name).get_weights(), original.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_keras2_weights_warnings_reach_the_launch_log(keras2_weights, tmp_path, caplog):
    """Before any work: resolve() logs them (a tokenizer the model cannot take then stops the job)."""
    _, path, folder = keras2_weights
    builder = _write(folder, "hard", KERAS3_DEFAULTS_BUILDER.replace("RESET_AFTER", "False").replace(
        'name="lstm")', 'recurrent_activation="hard_sigmoid", name="lstm")'))
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text(helpers.legacy_tokenizer([" ".join(f"w{i}" for i in range(VOCAB + 5))]).to_json())
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", [("a", "w1")])
    with caplog.at_level("WARNING", logger="beam_pipeline"), pytest.raises(ConfigError, match="input_dim=60"):
        helpers.run_job(["--input", corpus, "--model", path, "--model_fn", f"{builder}:build", "--tokenizer",
                         tokenizer, "--output", tmp_path / "o", "--truncating", "pre"])
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'lstm' (LSTM): recurrent_activation='hard_sigmoid' is Keras 3's relu6(x + 3) / 6" in m
               and "keras2_hard_sigmoid" in m for m in logged), logged
    assert any("'gru' (GRU): recurrent_activation='sigmoid' is Keras 3's default" in m for m in logged), logged


def test_keras2_gru_bias_under_keras3_reset_after_is_refused_with_the_fix(keras2_weights):
    _, path, folder = keras2_weights
    builder = _write(folder, "reset_after", KERAS3_DEFAULTS_BUILDER.replace("RESET_AFTER", "True"))
    with pytest.raises(ModelError, match=r"layer 'gru', weight gru/gru_cell/bias:0: the model has shape \(2, 15\), the "
                                         r"file \(15,\) \(a GRU bias of this shape is reset_after=False: build the "
                                         r"GRU with reset_after=False\)"):
        load_model(path, model_fn=f"{builder}:build")


def test_tensorflow_checkpoints_are_refused_with_how_to_convert(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    model.save_weights(str(tmp_path / "ckpt"))  # no .h5: the TensorFlow format
    builder = _write(tmp_path, "b", "import keras\n\ndef build():\n    return keras.Sequential([keras.Input((4,)), "
                                    "keras.layers.Dense(2)])\n")
    for given in ("ckpt", "ckpt.index", "ckpt.data-00000-of-00001", ""):
        with pytest.raises(ModelError, match=r"a TensorFlow-format checkpoint .*ckpt.index .*"
                                             r"model.load_weights\('.*ckpt'\).*save_weights\('model.weights.h5'\)"):
            load_model(str(tmp_path / given), model_fn=f"{builder}:build")


def test_builder_errors_say_what_to_do(tmp_path):
    tf_model = _write(tmp_path, "tfk", "import tf_keras\n\ndef build():\n    return tf_keras.Sequential("
                                       "[tf_keras.Input((4,)), tf_keras.layers.Dense(2)])\n")
    weights = tmp_path / "w.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(weights)
    cases = {"no_colon": "MODULE:FUNCTION", f"{tf_model}:build": "not a Keras 3 model",
             f"{tf_model}:missing": "has no function 'missing'", "no_such_module_x:build": "cannot import",
             "missing.py:build": "file not found: missing.py"}
    for spec, expected in cases.items():
        with pytest.raises(ModelError, match=expected):
            load_model(str(weights), model_fn=spec)


def test_help_says_model_fn_runs_your_code():
    text = job_parser().format_help()
    assert "--model_fn" in text and "Runs YOUR code" in text


def test_the_keras_that_wrote_a_file_decides_the_defaults_warned_about():
    from beam_pipeline.model.weights import keras2_defaults

    assert [keras2_defaults(v)[1:] for v in ("2.2.4", "2.3.1", "2.1.6-tf", "2.2.4-tf", "2.3.0-tf", "2.4.0", "2.21.0")] \
        == [("hard_sigmoid", False)] * 4 + [("sigmoid", True)] * 3
    assert "TF 2.0-2.1 wrote the same version" in keras2_defaults("2.2.4-tf")[0]


def test_one_hot_rule_in_inspect_and_the_id_0_warning(tmp_path):
    from beam_pipeline.inspect import build_report, render_text

    model = tmp_path / "chars.keras"
    keras.Sequential([keras.Input((10, 5)), keras.layers.LSTM(3)]).save(model)
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text(json.dumps({"class_name": "Tokenizer", "config": {
        "num_words": None, "filters": "", "lower": True, "split": " ", "char_level": True, "oov_token": None,
        "document_count": 1, "word_index": json.dumps({"a": 0, "b": 1, "c": 2})}}), encoding="utf-8")
    report = build_report(str(model), str(tokenizer))
    assert report["one_hot"]["rule"].startswith("token id k -> one-hot position k")
    assert "id 0 is padding, fed as the all-zero vector (position 0 is never set)" in render_text(report)
    assert any("1 token(s) to id 0 ('a')" in w for w in report["warnings"])


def test_one_hot_warns_when_a_real_token_is_id_0():
    assert one_hot_warnings({"a": 1, "b": 2}, 5) == []
    warning = one_hot_warnings({"pad": 0, "a": 1}, 5)[0]
    assert "1 token(s) to id 0 ('pad')" in warning and "never set" in warning
