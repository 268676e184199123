"""Recurrent layers inside nested models (``--layer encoder/lstm_1``): a siamese model's shared
encoder, a seq2seq encoder that is a nested functional model, a ``Bidirectional`` inside a nested
``Sequential``; every mode, against Keras: the nested model's own output, or a Keras clone of the
layer (``return_sequences`` / ``return_state``) called on the same input and mask, built here by
hand from the loaded model's layers (never through the job's inlining)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from beam_pipeline import engines, nested
from beam_pipeline.inference import Embedder
from beam_pipeline.inspect import build_report, render_text
from beam_pipeline.model import load_model
from beam_pipeline.ragged import Ragged
from beam_pipeline.recurrent import ModelError

MAXLEN = 12
VOCAB = 60


def _sequences(seed: int, n: int = 23) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(n)]


def _siamese():
    encoder = keras.Sequential([keras.Input((MAXLEN,), dtype="int32"), keras.layers.Embedding(VOCAB, 8, mask_zero=True),
                                keras.layers.LSTM(6, name="lstm_1")], name="encoder")
    a, b = keras.Input((MAXLEN,), dtype="int32", name="left"), keras.Input((MAXLEN,), dtype="int32", name="right")
    distance = keras.layers.Subtract()([encoder(a), encoder(b)])
    return keras.Model([a, b], keras.layers.Dense(1)(distance), name="siamese")


def _seq2seq():
    ids = keras.Input((MAXLEN,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=True)(ids)
    _, h, c = keras.layers.LSTM(6, return_state=True, name="enc_lstm")(x)
    encoder = keras.Model(ids, [h, c], name="encoder")
    source, target = keras.Input((MAXLEN,), dtype="int32"), keras.Input((MAXLEN,), dtype="int32")
    h, c = encoder(source)
    y = keras.layers.LSTM(6, return_sequences=True, name="dec_lstm")(
        keras.layers.Embedding(VOCAB, 8, name="dec_emb")(target), initial_state=[h, c])
    return keras.Model([source, target], keras.layers.Dense(VOCAB)(y), name="seq2seq")


def _tower():
    ids = keras.Input((MAXLEN,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="emb")(ids)
    tower = keras.Sequential([keras.Input((MAXLEN, 8)), keras.layers.Bidirectional(keras.layers.GRU(5), name="bi")],
                             name="tower")
    return keras.Model(ids, keras.layers.Dense(1)(tower(x)), name="text_tower")


# name -> (builder, --layer path, (nested model, layer) names, how Keras feeds the target from ids)
CASES = {
    "siamese": (_siamese, "encoder/lstm_1", ("encoder", "lstm_1"), lambda m, x: m.get_layer("encoder").layers[0](x)),
    "seq2seq": (_seq2seq, "encoder/enc_lstm", ("encoder", "enc_lstm"),
                lambda m, x: m.get_layer("encoder").layers[1](x)),
    "tower": (_tower, "2/0", ("tower", "bi"), lambda m, x: m.get_layer("emb")(x)),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model saved as .keras and loaded back, as the job loads it."""
    folder = tmp_path_factory.mktemp("nested")
    out = {}
    for seed, (name, case) in enumerate(CASES.items()):
        keras.utils.set_random_seed(seed)
        path = folder / f"{name}.keras"
        case[0]().save(path)
        out[name] = load_model(str(path)).model
    return out


def _golden(model, name: str, mode: str, padded: np.ndarray) -> list[np.ndarray]:
    """Keras: a clone of the target with return_sequences / return_state, on the target's input and mask."""
    _, _, (outer, inner), feed = CASES[name]
    layer = model.get_layer(outer).get_layer(inner)
    config = layer.get_config()
    flags = {"return_sequences": mode == "sequence", "return_state": mode == "states"}
    for part in ([config["layer"]["config"], config["backward_layer"]["config"]]
                 if isinstance(layer, keras.layers.Bidirectional) else [config]):
        part.update(flags)
    config["name"] = f"{inner}_golden_{mode}"
    clone = type(layer).from_config(config)
    ids = keras.Input((MAXLEN,), dtype="int32")
    out = clone(feed(model, ids))
    clone.set_weights(layer.get_weights())
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    if mode == "states":
        out = out[1:]
    result = keras.Model(ids, out).predict(padded, verbose=0)
    return [np.asarray(o) for o in (result if isinstance(result, list) else [result])]


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
@pytest.mark.parametrize("name", list(CASES))
def test_nested_target_equals_keras(saved, name, mode):
    model = saved[name]
    seqs = _sequences(len(name))
    embedder = Embedder(model, CASES[name][1], mode, MAXLEN, padding="post")
    assert embedder.info.mask_is_padding and embedder.trim  # decided as for a flat model: Embedding(mask_zero)
    out = embedder.embed(seqs)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post")
    want = _golden(model, name, mode, padded)
    got = list(out.columns.values())
    if mode == "sequence":
        want = [np.concatenate([w[i, :len(s)] for i, s in enumerate(seqs)]) for w in want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_final_equals_the_nested_models_own_output(saved):
    """The nested model's own output, as the outer model computes it (Keras' mask passing included)."""
    seqs = _sequences(5)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post")
    siamese = saved["siamese"]
    np.testing.assert_allclose(Embedder(siamese, "encoder/lstm_1", "final", MAXLEN).embed(seqs).columns["vector"],
                               siamese.get_layer("encoder").predict(padded, verbose=0), atol=1e-5, rtol=0)
    tower = saved["tower"]
    own = keras.Model(tower.inputs, tower.get_layer("tower").output).predict(padded, verbose=0)
    np.testing.assert_allclose(Embedder(tower, "tower/bi", "final", MAXLEN).embed(seqs).columns["vector"], own,
                               atol=1e-5, rtol=0)
    seq2seq = saved["seq2seq"]
    h, c = seq2seq.get_layer("encoder").predict(padded, verbose=0)
    states = Embedder(seq2seq, "encoder/enc_lstm", "states", MAXLEN).embed(seqs).columns
    np.testing.assert_allclose(states["h"], h, atol=1e-5, rtol=0)
    np.testing.assert_allclose(states["c"], c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["siamese", "tower"])
def test_every_engine_runs_a_nested_target_exactly_or_declines(saved, name):
    model = saved[name]
    embedder = Embedder(model, CASES[name][1], "final", MAXLEN, padding="post", length_bucketing=False)
    batch, _, _ = embedder.pad(Ragged.from_lists(_sequences(9)))
    want = embedder.submodel.predict(batch, verbose=0)
    ran = []
    for engine, reason in engines.eligible(embedder.engine_context).items():
        if reason is not None:
            continue
        choice = engines.choose(embedder.engine_context, engine, batch)
        assert choice.engine.name == engine, choice.report  # not dropped for differing from the Keras graph
        np.testing.assert_allclose(choice.engine.run(batch)[0], want, atol=1e-5, rtol=0)
        ran.append(engine)
    assert "keras" in ran


def test_layer_paths_names_and_errors(saved):
    siamese = saved["siamese"]
    listed = {t.path: t.index_path for t in nested.targets(siamese)}
    assert listed == {"encoder/lstm_1": "2/1"}
    for spec in ("encoder/lstm_1", "2/1", "encoder/1", "lstm_1", None):  # a unique nested name finds it too
        _, layer, name = nested.locate(siamese, spec)
        assert layer is siamese.get_layer("encoder").get_layer("lstm_1") and name == "encoder/lstm_1"
    with pytest.raises(ModelError, match=r"not found.*2/1:encoder/lstm_1 \(LSTM\)"):
        nested.locate(siamese, "encoder/lstm_9")
    with pytest.raises(ModelError, match="is a Embedding, not a recurrent layer"):
        nested.locate(siamese, "encoder/0")


def test_inspect_lists_nested_recurrent_layers_with_their_paths(tmp_path):
    keras.utils.set_random_seed(3)
    path = tmp_path / "seq2seq.keras"
    _seq2seq().save(path)
    report = build_report(str(path))
    entries = {e["path"]: e for e in report["recurrent_layers"]}
    assert set(entries) == {"encoder/enc_lstm", "dec_lstm"}
    assert entries["encoder/enc_lstm"]["index"] == "3/2" and entries["encoder/enc_lstm"]["mask_is_padding"]
    assert report["default_layer"] == "dec_lstm"
    text = render_text(report)
    assert "targetable layers (recurrent): 3/2:encoder/enc_lstm, " in text


def test_long_docs_carry_reads_a_nested_target_window_by_window(saved):
    """--long_docs carry through an inlined encoder: the same vectors as the encoder's LSTM over the
    whole document in one pass (Keras, on an input as long as the longest document)."""
    model = saved["siamese"]
    rng = np.random.default_rng(7)
    seqs = [rng.integers(1, VOCAB, size=n).tolist() for n in (3, MAXLEN, 2 * MAXLEN + 5, 40)]
    embedder = Embedder(model, "encoder/lstm_1", "states", MAXLEN, padding="post", long_docs="carry")
    out = embedder.embed(seqs)
    assert out.windows.tolist() == [1, 1, 3, 4]
    encoder = model.get_layer("encoder")
    layer = encoder.get_layer("lstm_1")
    config = {**layer.get_config(), "return_state": True, "name": "lstm_1_whole"}
    clone = type(layer).from_config(config)
    ids = keras.Input((None,), dtype="int32")
    whole = clone(encoder.layers[0](ids))
    clone.set_weights(layer.get_weights())
    padded = keras.utils.pad_sequences(seqs, padding="post")
    _, h, c = keras.Model(ids, whole).predict(padded, verbose=0)
    np.testing.assert_allclose(out.columns["h"], h, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.columns["c"], c, atol=1e-5, rtol=0)
