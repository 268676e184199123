"""The sub-model and the batching rules against Keras, without a pipeline: every Bidirectional
merge_mode, every mode, and length bucketing that changes padding but never values."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from beam_pipeline.inference import WIDTH_STEP, Embedder
from tests import helpers

MAXLEN = 14


def _sequences(seed: int, n: int = 37, vocab: int = 50, longest: int = MAXLEN) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(1, longest + 1))).tolist() for _ in range(n)]


def _model(recurrent_layer, mask_zero=True, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = keras.layers.Embedding(50, 6, mask_zero=mask_zero)(inp)
    x = recurrent_layer(x)
    if isinstance(x, (list, tuple)):  # Bidirectional(merge_mode=None) returns both directions
        x = keras.layers.Concatenate()(x)
    return keras.Model(inp, keras.layers.Dense(1)(x))


def _compare(model, layer, mode, seqs, padding, length_bucketing=True):
    embedder = Embedder(model, layer, mode, MAXLEN, padding=padding, length_bucketing=length_bucketing)
    out = embedder.embed(seqs)
    helpers.assert_embedded_equals_keras(out, model, layer, mode, seqs, padding, MAXLEN)
    return embedder, out


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
def test_bidirectional_every_merge_mode_equals_keras(merge_mode, mode):
    model = _model(lambda x: keras.layers.Bidirectional(keras.layers.LSTM(5), merge_mode=merge_mode, name="bi")(x))
    embedder, _ = _compare(model, "bi", mode, _sequences(1), "pre")
    expected = {"final": 10 if merge_mode in ("concat", None) else 5, "sequence": 10 if merge_mode in ("concat", None)
                else 5, "states": 5}[mode]
    assert all(dim == expected for _, dim in embedder.info.columns(mode))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_length_bucketing_gives_the_same_vectors_as_fixed_maxlen_padding(cell, padding):
    layer = getattr(keras.layers, cell)
    model = _model(lambda x: keras.layers.Bidirectional(layer(4, return_sequences=True), name="bi")(x))
    seqs = _sequences(2, longest=WIDTH_STEP - 2)
    for mode in ("final", "sequence", "states"):
        trimmed = Embedder(model, "bi", mode, MAXLEN, padding=padding, length_bucketing=True)
        fixed = Embedder(model, "bi", mode, MAXLEN, padding=padding, length_bucketing=False)
        assert trimmed.trim and not fixed.trim
        a, b = trimmed.embed(seqs), fixed.embed(seqs)
        longest = min(-(-max(map(len, seqs)) // WIDTH_STEP) * WIDTH_STEP, MAXLEN)
        assert a.padded_timesteps == len(seqs) * longest < b.padded_timesteps == len(seqs) * MAXLEN
        for name in a.columns:
            np.testing.assert_allclose(a.columns[name], b.columns[name], atol=1e-5, rtol=0)
        _compare(model, "bi", mode, seqs, padding)


def test_short_batches_pad_only_to_their_longest_document():
    model = _model(lambda x: keras.layers.LSTM(3, name="lstm")(x))
    _, out = _compare(model, "lstm", "final", [[1, 2], [3], [4, 5, 6]], "pre")
    assert out.padded_timesteps == 3 * WIDTH_STEP < 3 * MAXLEN


def test_unmasked_models_keep_the_trained_padding():
    """Without a mask, padding timesteps change the state: they are never trimmed."""
    model = _model(lambda x: keras.layers.LSTM(4, name="lstm")(x), mask_zero=False)
    for padding in ("pre", "post"):
        embedder, out = _compare(model, "lstm", "final", _sequences(3), padding)
        assert not embedder.trim and out.padded_timesteps == 37 * MAXLEN
        _compare(model, "lstm", "sequence", _sequences(3), padding)


def test_layer_trained_with_return_sequences_gives_its_final_vector():
    model = _model(lambda x: keras.layers.GlobalAveragePooling1D()(keras.layers.LSTM(4, return_sequences=True,
                                                                                      name="lstm")(x)))
    _compare(model, "lstm", "final", _sequences(4), "post")
    _compare(model, "lstm", "states", _sequences(4), "post")
