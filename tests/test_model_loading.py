"""Model loading (beam_pipeline/model): every saved form, the Keras 2 -> 3 translation table, and
the provenance the job reports. Values are compared with the framework that built the model:
tf_keras for Keras 2 artifacts, Keras 3 otherwise."""

from __future__ import annotations

import json
import os

import h5py
import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipeline import inspect as inspect_cli
from beam_pipeline.model import ModelError, legacy, load_model
from tests import helpers
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (the session fixture)

TOL = 1e-5  # same computation order as the building framework
MAXLEN = 12
GRID = np.concatenate([np.linspace(-10, 10, 4001), [-1e4, -50.0, -3.0, -2.5, 0.0, 2.5, 3.0, 50.0, 1e4]])


def _activation_names() -> list[str]:
    """Every activation name tf_keras 2.21 accepts (what a Keras 2 config can hold)."""
    import tf_keras

    names = []
    for name in sorted(dir(tf_keras.activations)):
        if name.startswith("_") or name in ("get", "serialize", "deserialize"):
            continue
        try:
            tf_keras.activations.get(name)
        except ValueError:
            continue
        names.append(name)
    return names


def _max_difference(name: str) -> float:
    import tensorflow as tf
    import tf_keras

    x = tf.constant(GRID.reshape(1, -1).astype(np.float32))
    keras2 = np.asarray(tf_keras.activations.get(name)(x))
    keras3 = np.asarray(keras.activations.get(name)(x))
    return float(np.max(np.abs(keras2 - keras3)))


def test_activations_that_differ_between_tf_keras_and_keras3_are_exactly_the_translated_ones():
    names = _activation_names()
    assert {"hard_sigmoid", "sigmoid", "tanh", "relu", "gelu", "swish", "softmax"} <= set(names)
    differences = {name: _max_difference(name) for name in names}
    differing = {name for name, diff in differences.items() if diff > 0}
    translated = {rule.name for rule in legacy.TABLE if rule.name in names}
    assert differing == translated, f"max |tf_keras - keras3| per name: {differences}"
    assert differences["hard_sigmoid"] > 0.08


def test_keras2_hard_sigmoid_translation_equals_tf_keras_exactly():
    import tensorflow as tf
    import tf_keras

    x = tf.constant(GRID.astype(np.float32))
    want = np.asarray(tf_keras.activations.hard_sigmoid(x))
    np.testing.assert_array_equal(np.asarray(legacy.keras2_hard_sigmoid(x)), want)


def _tf_keras_model(seed: int, recurrent_activation: str = "hard_sigmoid", activation: str = "tanh"):
    """Embedding(mask_zero) -> Bidirectional(GRU) -> LSTM -> Dense, built with tf_keras, random weights."""
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    inp = tf_keras.Input((MAXLEN,), dtype="int32")
    x = tf_keras.layers.Embedding(20, 5, mask_zero=True)(inp)
    x = tf_keras.layers.Bidirectional(tf_keras.layers.GRU(4, recurrent_activation=recurrent_activation,
                                                          return_sequences=True, name="gru"), name="bigru")(x)
    x = tf_keras.layers.LSTM(3, activation=activation, recurrent_activation=recurrent_activation, name="lstm")(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(1, activation="hard_sigmoid")(x))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.8, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading_corpus")
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    rng = np.random.default_rng(5)
    docs = [(f"doc{i}", " ".join(rng.choice(words, size=n))) for i, n in enumerate([1, 3, 6, 9, 12, 15, 4, 2])]
    tok = helpers.legacy_tokenizer(words)
    (folder / "tok.json").write_text(tok.to_json(), encoding="utf-8")
    seqs = tok.texts_to_sequences([t for _, t in docs])
    return {"path": helpers.write_jsonl(folder / "c.jsonl", docs), "tokenizer": str(folder / "tok.json"),
            "docs": docs, "padded": keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post", truncating="pre")}


def _run(corpus, model_path, out, mode="final", layer="lstm"):
    helpers.run_job(["--input", corpus["path"], "--model", model_path, "--tokenizer", corpus["tokenizer"],
                     "--output", out, "--layer", layer, "--mode", mode, "--padding", "post", "--truncating", "pre"])
    table = helpers.read_output(str(out))
    by_id = dict(zip(table.column("doc_id").to_pylist(), table.column(table.column_names[2]).to_pylist()))
    return np.asarray([by_id[d] for d, _ in corpus["docs"]], dtype=np.float32)


@pytest.fixture(scope="module")
def keras2_h5(tmp_path_factory, corpus):
    """A tf_keras .h5 with hard_sigmoid everywhere, the job's final vectors for it, and tf_keras' own."""
    folder = tmp_path_factory.mktemp("keras2_h5")
    model = _tf_keras_model(1)
    path = str(folder / "model.h5")
    model.save(path)
    got = _run(corpus, path, folder / "out")
    want = helpers.tf_keras_reference(model, "lstm", "final", corpus["padded"])[0]
    return {"path": path, "model": model, "got": got, "want": want, "out": str(folder / "out")}


def test_keras2_h5_hard_sigmoid_matches_tf_keras(keras2_h5):
    np.testing.assert_allclose(keras2_h5["got"], keras2_h5["want"], atol=TOL, rtol=0)


def test_keras2_h5_without_the_translation_would_differ(keras2_h5, corpus, tmp_path):
    """The translation matters: Keras 3's own hard_sigmoid on the same config gives other values."""
    untranslated = tmp_path / "untranslated.h5"
    with h5py.File(keras2_h5["path"]) as f, h5py.File(untranslated, "w") as g:
        for key in f:
            f.copy(key, g)
        config = json.loads(f.attrs["model_config"])
        for _, entry in legacy.layer_configs(config):
            entry["config"].pop("time_major", None)
        g.attrs.update({k: v for k, v in f.attrs.items() if k != "model_config"})
        g.attrs["model_config"] = json.dumps(config)
    model = keras.models.load_model(untranslated, compile=False)
    plain = keras.Model(model.inputs, model.get_layer("lstm").output).predict(corpus["padded"], verbose=0)
    assert np.max(np.abs(plain - keras2_h5["want"])) > 1e-2


def test_keras2_translations_are_in_parquet_metadata(keras2_h5):
    shard = sorted(p for p in os.listdir(os.path.dirname(keras2_h5["out"])) if p.endswith(".parquet"))[0]
    meta = pq.ParquetFile(os.path.join(os.path.dirname(keras2_h5["out"]), shard)).schema_arrow.metadata
    origin = json.loads(meta[b"embedding_job"])["model_origin"]
    assert origin["framework"] == "keras 2" and origin["format"] == "h5"
    assert origin["framework_version"].startswith("2.")
    changed = {(t["layer"], t["rule"]) for t in origin["translations"]}
    assert {("bigru/gru", "hard_sigmoid"), ("lstm", "hard_sigmoid"), ("lstm", "time_major")} <= changed
    assert any(t["layer"].startswith("dense") and t["rule"] == "hard_sigmoid" for t in origin["translations"])


def test_inspect_shows_where_the_model_came_from_and_every_translation(keras2_h5, capsys):
    assert inspect_cli.main(["--model", keras2_h5["path"]]) == 0
    text = capsys.readouterr().out
    assert "saved by keras 2 2." in text and "format h5" in text
    assert "lstm: hard_sigmoid: recurrent_activation='hard_sigmoid' -> 'beam_pipeline>keras2_hard_sigmoid'" in text
    assert "bigru/gru: time_major: time_major=False removed" in text
    assert inspect_cli.main(["--model", keras2_h5["path"], "--json"]) == 0
    origin = json.loads(capsys.readouterr().out)["model"]["origin"]
    assert origin["framework"] == "keras 2" and len(origin["translations"]) >= 5


def test_savedmodel_folder_matches_h5(keras2_h5, corpus, tmp_path):
    folder = tmp_path / "savedmodel"
    keras2_h5["model"].save(str(folder), save_format="tf")
    got = _run(corpus, str(folder), tmp_path / "out")
    np.testing.assert_array_equal(got, keras2_h5["got"])
    np.testing.assert_allclose(got, keras2_h5["want"], atol=TOL, rtol=0)
    loaded = load_model(str(folder))
    assert (loaded.provenance.framework, loaded.provenance.format) == ("keras 2", "savedmodel")
    assert loaded.provenance.framework_version.startswith("2.")
    assert any(t["rule"] == "hard_sigmoid" for t in loaded.provenance.translations)


def test_savedmodel_folder_sequence_and_states_match_tf_keras(keras2_h5, corpus, tmp_path):
    folder = tmp_path / "savedmodel"
    keras2_h5["model"].save(str(folder), save_format="tf")
    padded = corpus["padded"]
    helpers.run_job(["--input", corpus["path"], "--model", folder, "--tokenizer", corpus["tokenizer"],
                     "--output", tmp_path / "s", "--layer", "bigru", "--mode", "states",
                     "--padding", "post", "--truncating", "pre"])
    table = helpers.read_output(str(tmp_path / "s"))
    want = helpers.tf_keras_reference(keras2_h5["model"], "bigru", "states", padded)
    rows = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
    for k, name in enumerate(["h_fw", "h_bw"]):
        got = np.asarray([table.column(name)[rows[d]].as_py() for d, _ in corpus["docs"]], dtype=np.float32)
        np.testing.assert_allclose(got, want[k], atol=TOL, rtol=0)


def test_savedmodel_with_a_lambda_layer_is_refused_in_safe_mode(tmp_path):
    import tf_keras

    inp = tf_keras.Input((4,), dtype="int32")
    x = tf_keras.layers.Embedding(10, 3)(inp)
    x = tf_keras.layers.Lambda(lambda t: t * 2.0)(x)
    model = tf_keras.Model(inp, tf_keras.layers.LSTM(2)(x))
    model.save(str(tmp_path / "sm"), save_format="tf")
    with pytest.raises(ModelError, match="unsafe_deserialization"):
        load_model(str(tmp_path / "sm"))


def test_folder_that_is_not_a_savedmodel_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a TensorFlow SavedModel"):
        load_model(str(tmp_path))


def test_keras2_time_major_true_is_refused_with_a_message(keras2_h5, tmp_path):
    patched = tmp_path / "time_major.h5"
    with h5py.File(keras2_h5["path"]) as f, h5py.File(patched, "w") as g:
        for key in f:
            f.copy(key, g)
        text = f.attrs["model_config"]
        text = text.decode() if isinstance(text, bytes) else text
        g.attrs.update({k: v for k, v in f.attrs.items() if k != "model_config"})
        g.attrs["model_config"] = text.replace('"time_major": false', '"time_major": true', 1)
    with pytest.raises(ModelError, match="time_major=True") as error:
        load_model(str(patched))
    assert str(patched) in str(error.value)


def test_tf_keras_keras_file_is_refused_with_advice(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Embedding(10, 3), tf_keras.layers.LSTM(2)])
    model.save(str(tmp_path / "m.keras"))
    with pytest.raises(ModelError, match="save it as .h5"):
        load_model(str(tmp_path / "m.keras"))


def _keras3_masked(seed: int):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = keras.layers.Embedding(20, 5, mask_zero=True)(inp)
    x = keras.layers.LSTM(4, return_sequences=True, name="lstm1")(x)
    x = keras.layers.GRU(3, name="lstm")(x)
    return keras.Model(inp, keras.layers.Dense(1)(x))


def test_keras3_h5_masked_functional_loads(corpus, tmp_path):
    model = _keras3_masked(3)
    model.save(tmp_path / "k3.h5")
    loaded = load_model(str(tmp_path / "k3.h5"))
    assert (loaded.provenance.framework, loaded.provenance.format) == ("keras 3", "h5")
    assert [t["change"].split(" ->")[0] for t in loaded.provenance.translations] == ["NotEqual"]
    got = _run(corpus, str(tmp_path / "k3.h5"), tmp_path / "out")
    want = helpers.reference(model, "lstm", "final", corpus["padded"])[0]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_keras3_h5_masking_layer_and_ops_load_as_operations(tmp_path):
    """A Masking layer (NotEqual, Any) and keras.ops arithmetic (Multiply, Add, Tanh) in a
    functional graph: loaded as the operations they are, not as the merge layers Add / Multiply."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((MAXLEN, 3))
    x = keras.layers.Masking(0.0)(inp)
    x = keras.layers.LSTM(4, return_sequences=True, name="lstm1")(x)
    x = keras.ops.tanh(x * 2.0 + 1.0)
    x = keras.layers.SimpleRNN(3, name="rnn")(x, mask=keras.ops.any(keras.ops.not_equal(inp, 0.0), axis=-1))
    model = keras.Model(inp, x)
    model.save(tmp_path / "ops.h5")
    loaded = load_model(str(tmp_path / "ops.h5"))
    resolved = {t["change"].split(" ->")[0] for t in loaded.provenance.translations}
    assert {"NotEqual", "Any", "Multiply", "Add", "Tanh"} <= resolved
    assert not any(isinstance(layer, (keras.layers.Add, keras.layers.Multiply)) for layer in loaded.model.layers)
    data = np.random.default_rng(0).normal(size=(6, MAXLEN, 3)).astype(np.float32)
    data[:, :4] = 0.0
    np.testing.assert_allclose(loaded.model.predict(data, verbose=0), model.predict(data, verbose=0), atol=TOL)


def test_keras_file_provenance_is_keras3_without_translations(tmp_path):
    model = _keras3_masked(5)
    model.save(tmp_path / "m.keras")
    provenance = load_model(str(tmp_path / "m.keras")).provenance
    assert provenance.to_dict() == {"framework": "keras 3", "framework_version": keras.__version__,
                                    "format": "keras", "translations": []}


def test_docs_list_every_translation_rule():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "docs", "models.md"), encoding="utf-8").read()
    for rule in legacy.TABLE:
        assert f"| `{rule.name}` |" in readme, rule.name
    assert "`keras3_h5_operation`" in readme


def test_savedmodel_folder_from_gs_loads_like_the_local_one(gcs_emulator, keras2_h5, corpus, tmp_path):  # noqa: F811
    from beam_pipeline import files

    local = tmp_path / "savedmodel"
    keras2_h5["model"].save(str(local), save_format="tf")
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    for root, _, names in os.walk(local):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local).replace(os.sep, "/")
            bucket.blob(f"models/savedmodel/{rel}").upload_from_filename(os.path.join(root, name))
    uri = gcs_emulator.uri("models/savedmodel")
    assert files.sha256_of_file_or_folder(uri) == files.sha256_of_file_or_folder(str(local))
    loaded = load_model(uri)
    assert loaded.provenance.format == "savedmodel"
    probe = keras.Model(loaded.model.inputs, loaded.model.get_layer("lstm").output)
    np.testing.assert_allclose(probe.predict(corpus["padded"], verbose=0), keras2_h5["want"], atol=TOL, rtol=0)
