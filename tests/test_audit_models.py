"""Models an audit found the job computed wrongly or failed on, each against Keras' own values.

- a ``Masking`` layer after an ``Embedding``: its mask depends on the embedded values (the padding row
  need not equal ``mask_value``, a real token's row may), so the model is padded exactly as trained and
  ``--padding`` is required; only a mask that is exactly ``ids != 0`` lets the job trim and re-pad;
- ``TimeDistributed`` and ``unroll=True`` layers need the trained, static time axis;
- ``--mode sequence`` on a layer that sees fewer timesteps than ``maxlen`` (Conv1D / pooling) is a
  configuration error, not a run of dead letters;
- a ``Bidirectional`` layer whose two halves differ is declined by the ONNX engine.

Golden values come from Keras itself (``helpers.reference``: a clone of the layer with the trained
weights, on ``pad_sequences`` of the documents as trained); tolerance 1e-5."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import engines, recurrent
from beam_pipeline.engines import onnx_rt
from beam_pipeline.inference import Embedder
from beam_pipeline.options import ConfigError, resolve
from tests import helpers

L = keras.layers
TOL = 1e-5
MAXLEN = 14
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def calibrate_on_the_first_batch(monkeypatch):
    """``--engine auto`` looks at every engine on the first batch here."""
    from beam_pipeline import inference

    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", 0)


def _randomize(model, seed: int, scale: float = 0.5) -> None:
    """Non-trivial weights everywhere, biases included."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, scale, w.shape).astype(np.float32) for w in model.get_weights()])


def _sequences(seed: int, n: int, vocab: int = 50) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(n)]


def _files(tmp_path, model, docs, tok) -> tuple[str, str, str]:
    model.save(tmp_path / "m.keras")
    (tmp_path / "tok.json").write_text(tok.to_json())
    return str(tmp_path / "m.keras"), str(tmp_path / "tok.json"), helpers.write_jsonl(tmp_path / "c.jsonl", docs)


def _by_id(table, column: str) -> dict[str, np.ndarray]:
    rows = table.column(column).to_pylist()
    return {d: np.asarray(v, np.float32) for d, v in zip(table.column("doc_id").to_pylist(), rows)}


# --- 1. Masking layers: the mask depends on the values, so padding is as trained ---------------------------------

MASKING_MAXLEN = 20


@pytest.fixture(scope="module")
def masking_case(tmp_path_factory):
    """Embedding (no mask_zero) -> Masking(0.0) -> LSTM. The padding row (id 0) is NOT all 0.0, so
    Keras does not mask the padding; the row of "the" IS all 0.0, so Keras masks that real token
    wherever it occurs, mid-sequence included."""
    docs = helpers.corpus(60, seed=21)
    tok = helpers.legacy_tokenizer([t for _, t in docs])
    vocab = len(tok.word_index) + 1
    keras.utils.set_random_seed(21)
    inp = keras.Input((MASKING_MAXLEN,), dtype="int32")
    x = L.Embedding(vocab, 4, name="embedding")(inp)
    x = L.Masking(0.0, name="masking")(x)
    x = L.LSTM(5, name="target")(x)
    model = keras.Model(inp, L.Dense(1)(x))
    _randomize(model, 21)
    table = model.get_layer("embedding").embeddings.numpy()
    masked_id = tok.word_index["the"]
    table[masked_id] = 0.0
    assert np.all(table[0] != 0.0), "the padding row is not the mask value"
    model.get_layer("embedding").embeddings.assign(table)
    folder = tmp_path_factory.mktemp("masking")
    paths = _files(folder, model, docs, tok)
    seqs = tok.texts_to_sequences([t for _, t in docs])
    return {"model": model, "docs": docs, "seqs": seqs, "paths": paths, "masked_id": masked_id, "folder": folder}


def test_masking_layer_mask_is_not_taken_for_the_padding(masking_case):
    model = masking_case["model"]
    info = recurrent.describe_layer(model.get_layer("target"), model)
    assert info.masked and not info.mask_is_padding
    assert "Masking layer 'masking'" in info.mask_source
    seqs = masking_case["seqs"]
    kept = [s[-MASKING_MAXLEN:] for s in seqs]
    assert any(len(s) < MASKING_MAXLEN for s in kept), "some documents are padded"
    assert any(masking_case["masked_id"] in s[1:-1] for s in kept), "a real token is masked mid-sequence"


def test_masking_layer_model_requires_padding_and_engines_that_map_masks_decline_it(masking_case, tmp_path):
    model_path, tok_path, corpus = masking_case["paths"]
    base = ["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output", str(tmp_path / "o"),
            "--truncating", "pre"]
    with pytest.raises(ConfigError, match="--padding is required.*Masking layer 'masking'"):
        resolve(PipelineOptions(base))
    for engine in ("onnx", "table"):
        with pytest.raises(ConfigError, match=f"--engine {engine} cannot run layer 'target' exactly: .*[Mm]asking"):
            resolve(PipelineOptions([*base, "--padding", "pre", "--engine", engine]))
    config = resolve(PipelineOptions([*base, "--padding", "post"]))
    assert config.padding == "post" and not config.length_bucketing
    model = masking_case["model"]
    ctx = engines.context_for(model, model.get_layer("target"), "final", MASKING_MAXLEN, "pre")
    declined = engines.eligible(ctx)
    assert declined["onnx"] and declined["table"] and declined["keras"] is None


@pytest.mark.parametrize("mode", ["final", "sequence", "states"])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_masking_layer_model_equals_keras_on_the_trained_padding(masking_case, padding, mode, tmp_path):
    model_path, tok_path, corpus = masking_case["paths"]
    out = tmp_path / "emb"
    summary = helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output", out,
                               "--layer", "target", "--mode", mode, "--padding", padding, "--truncating", "pre",
                               "--batch_size", 16])
    assert summary["dead_lettered"] == 0
    table = helpers.read_output(str(out))
    model, seqs, docs = masking_case["model"], masking_case["seqs"], masking_case["docs"]
    padded = keras.utils.pad_sequences(seqs, MASKING_MAXLEN, padding=padding, truncating="pre")
    ref = helpers.reference(model, "target", mode, padded)
    row_of = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    names = table.column_names[2:]
    assert len(names) == len(ref)
    for name, want in zip(names, ref):
        got = _by_id(table, name)
        assert len(got) == len(docs)
        for doc_id, vector in got.items():
            i = row_of[doc_id]
            if mode == "sequence":
                n = min(len(seqs[i]), MASKING_MAXLEN)
                expected = want[i][helpers.real_positions(None, n, padding, MASKING_MAXLEN)]
                np.testing.assert_allclose(vector.reshape(n, -1), expected, atol=TOL, rtol=0)
            else:
                np.testing.assert_allclose(vector, want[i], atol=TOL, rtol=0)


def test_inspect_says_a_masking_layer_needs_the_padding_side(masking_case, small_job, capsys):
    from beam_pipeline.inspect import main

    assert main(["--model", masking_case["paths"][0]]) == 0
    text = capsys.readouterr().out
    assert "Masking layer 'masking'" in text and "padding required" in text
    assert "--padding required" in text
    assert main(["--model", small_job.model]) == 0  # mask_zero: unchanged
    assert "masked: yes; --padding optional" in capsys.readouterr().out


def _masked_variants():
    keras.utils.set_random_seed(3)
    ids = keras.Input((MAXLEN,), dtype="int32")
    mask_zero = keras.Model(ids, L.LSTM(3, name="target")(L.Dropout(0.1)(L.Embedding(20, 4, mask_zero=True)(ids))))
    sequential = keras.Sequential([keras.Input((MAXLEN,), dtype="int32"), L.Embedding(20, 4, mask_zero=True),
                                   L.LSTM(3, return_sequences=True), L.GRU(3, name="target")])
    ids = keras.Input((MAXLEN,), dtype="int32")
    both = keras.Model(ids, L.LSTM(3, name="target")(L.Masking(0.0)(L.Embedding(20, 4, mask_zero=True)(ids))))
    one_hot = keras.Input((MAXLEN, 7))
    one_hot_zero = keras.Model(one_hot, L.LSTM(3, name="target")(L.Masking(0.0)(one_hot)))
    one_hot_other = keras.Model(one_hot, L.LSTM(3, name="target")(L.Masking(1.0)(one_hot)))
    return {"mask_zero": (mask_zero, True), "sequential": (sequential, True), "masking_after_mask_zero": (both, False),
            "one_hot_masking_zero": (one_hot_zero, True), "one_hot_masking_one": (one_hot_other, False)}


@pytest.mark.parametrize("saved", ["in_memory", "keras", "h5"])
def test_only_an_ids_not_zero_mask_counts_as_hiding_the_padding(saved, tmp_path):
    """``Embedding(mask_zero=True)`` passed on (and ``Masking(0.0)`` on a one-hot input) is ``ids != 0``,
    also once saved and loaded (Keras 3 writes the mask's operations into the file); a Masking layer on
    embedded values, or with another mask_value, is not."""
    from beam_pipeline.model import load_model

    for name, (model, expected) in _masked_variants().items():
        if saved != "in_memory":
            model.save(tmp_path / f"{name}.{saved}")
            model = load_model(str(tmp_path / f"{name}.{saved}")).model
        info = recurrent.describe_layer(model.get_layer("target"), model)
        assert info.masked and info.mask_is_padding is expected, (name, info.mask_source)


# --- 2. TimeDistributed and unroll=True need the static time axis ------------------------------------------------

def _static_axis_model(kind: str, mask_zero: bool, seed: int):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.Embedding(50, 6, mask_zero=mask_zero)(inp)
    if kind == "time_distributed":
        x = L.TimeDistributed(L.Dense(5, activation="tanh"))(x)
        x = L.LSTM(4, name="target", return_sequences=True)(x)
    elif kind == "unroll":
        x = L.GRU(4, unroll=True, name="target", return_sequences=True)(x)
    else:  # a Bidirectional layer of unrolled LSTMs
        x = L.Bidirectional(L.LSTM(3, unroll=True, return_sequences=True), name="target")(x)
    model = keras.Model(inp, L.Dense(1)(L.GlobalAveragePooling1D()(x)))
    _randomize(model, seed)
    return model


@pytest.mark.parametrize("engine", ["keras", "xla"])
@pytest.mark.parametrize("mask_zero", [True, False])
@pytest.mark.parametrize("kind", ["time_distributed", "unroll", "bidirectional_unroll"])
def test_static_time_axis_layers_equal_keras_with_fewer_and_more_documents_than_timesteps(kind, mask_zero, engine):
    """Keras 3's TimeDistributed loops over the batch when the time axis is unknown (wrong values with
    fewer documents than timesteps, a failure with more), and unroll=True cannot run without it."""
    model = _static_axis_model(kind, mask_zero, seed=7)
    padding = "post" if mask_zero else "pre"
    embedder = Embedder(model, "target", "final", MAXLEN, padding=padding, engine=engine)
    assert embedder.static_time_axis and not embedder.trim
    for n in (3, 37):
        seqs = _sequences(n, n)
        out = embedder.embed(seqs)
        assert embedder.engine.name == engine
        helpers.assert_embedded_equals_keras(out, model, "target", "final", seqs, padding, MAXLEN)


@pytest.mark.parametrize("kind", ["time_distributed", "unroll"])
def test_static_time_axis_layers_in_sequence_and_states_mode_equal_keras(kind):
    model = _static_axis_model(kind, True, seed=8)
    seqs = _sequences(5, 6)
    for mode in ("sequence", "states"):
        out = Embedder(model, "target", mode, MAXLEN, padding="pre", engine="auto").embed(seqs)
        helpers.assert_embedded_equals_keras(out, model, "target", mode, seqs, "pre", MAXLEN)


def test_job_on_time_distributed_masked_model_with_small_batches_equals_keras(tmp_path):
    docs = helpers.corpus(30, seed=9)
    tok = helpers.legacy_tokenizer([t for _, t in docs])
    keras.utils.set_random_seed(9)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.TimeDistributed(L.Dense(5, activation="tanh"))(L.Embedding(len(tok.word_index) + 1, 6, mask_zero=True)(inp))
    model = keras.Model(inp, L.Dense(1)(L.LSTM(4, name="target")(x)))
    _randomize(model, 9)
    model_path, tok_path, corpus = _files(tmp_path, model, docs, tok)
    summary = helpers.run_job(["--input", corpus, "--model", model_path, "--tokenizer", tok_path, "--output",
                               tmp_path / "emb", "--truncating", "pre", "--batch_size", 4])
    assert summary["dead_lettered"] == 0 and summary["embedded"] == len(docs)
    got = _by_id(helpers.read_output(str(tmp_path / "emb")), "vector")
    seqs = tok.texts_to_sequences([t for _, t in docs])
    want = helpers.reference(model, "target", "final", keras.utils.pad_sequences(seqs, MAXLEN, truncating="pre"))[0]
    for i, (doc_id, _) in enumerate(docs):
        np.testing.assert_allclose(got[doc_id], want[i], atol=TOL, rtol=0)


# --- 3. --mode sequence on a layer that does not see one timestep per token --------------------------------------

def _conv_model(fixed_length: bool):
    keras.utils.set_random_seed(12)
    inp = keras.Input((MAXLEN if fixed_length else None,), dtype="int32")
    x = L.Conv1D(5, 3, padding="same", name="conv")(L.Embedding(100, 6)(inp))
    x = L.MaxPooling1D(2, name="pool")(x)
    model = keras.Model(inp, L.Dense(1)(L.LSTM(4, name="target")(x)))
    _randomize(model, 12)
    return model


@pytest.mark.parametrize("fixed_length", [True, False])
def test_sequence_mode_on_a_pooled_time_axis_is_a_config_error(fixed_length, small_job, tmp_path):
    model = _conv_model(fixed_length)
    model.save(tmp_path / "conv.keras")
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", helpers.corpus(5))
    argv = ["--input", corpus, "--model", str(tmp_path / "conv.keras"), "--tokenizer", small_job.tokenizer,
            "--output", str(tmp_path / "o"), "--padding", "pre", "--truncating", "pre", "--mode", "sequence",
            "--maxlen", MAXLEN]
    message = (f"--mode sequence needs one output per token: layer 'target' sees {MAXLEN // 2} timesteps for maxlen "
               f"{MAXLEN} (layer 'pool' (MaxPooling1D) changes the time axis")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(PipelineOptions([str(a) for a in argv]))
    with pytest.raises(recurrent.ModelError, match="use --mode final or states"):
        Embedder(model, "target", "sequence", MAXLEN, padding="pre")
    config = resolve(PipelineOptions([str(a) for a in argv[:-4]] + ["--maxlen", str(MAXLEN), "--mode", "final"]))
    assert config.mode == "final"
    seqs = _sequences(13, 9, vocab=100)
    for mode in ("final", "states"):
        out = Embedder(model, "target", mode, MAXLEN, padding="pre").embed(seqs)
        helpers.assert_embedded_equals_keras(out, model, "target", mode, seqs, "pre", MAXLEN)


def test_sequence_mode_on_a_pooled_time_axis_exits_2_before_any_work(small_job, tmp_path):
    _conv_model(True).save(tmp_path / "conv.keras")
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", helpers.corpus(5))
    proc = subprocess.run([sys.executable, "-m", "beam_pipeline", "--input", corpus, "--model",
                           str(tmp_path / "conv.keras"), "--tokenizer", small_job.tokenizer, "--output",
                           str(tmp_path / "out" / "emb"), "--padding", "pre", "--truncating", "pre",
                           "--mode", "sequence"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: --mode sequence needs one output per token" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was written"


def test_sequence_mode_on_a_same_padded_conv_keeps_one_vector_per_token():
    keras.utils.set_random_seed(14)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.Conv1D(5, 3, padding="same")(L.Embedding(50, 6)(inp))
    model = keras.Model(inp, L.LSTM(4, name="target")(x))
    _randomize(model, 14)
    seqs = _sequences(15, 8)
    out = Embedder(model, "target", "sequence", MAXLEN, padding="post").embed(seqs)
    helpers.assert_embedded_equals_keras(out, model, "target", "sequence", seqs, "post", MAXLEN)


# --- 4. Bidirectional halves that differ: not one ONNX op --------------------------------------------------------

HALVES = {
    "gru_reset_after": (lambda: L.GRU(4), lambda: L.GRU(4, reset_after=False, go_backwards=True), "reset_after"),
    "lstm_activation": (lambda: L.LSTM(4), lambda: L.LSTM(4, activation="relu", go_backwards=True), "activation"),
    "lstm_recurrent_activation": (lambda: L.LSTM(4), lambda: L.LSTM(4, recurrent_activation="hard_sigmoid",
                                                                    go_backwards=True), "recurrent_activation"),
    "rnn_use_bias": (lambda: L.SimpleRNN(4), lambda: L.SimpleRNN(4, use_bias=False, go_backwards=True), "use_bias"),
}


def _bidirectional(forward, backward, seed: int):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.Embedding(100, 6, mask_zero=True)(inp)
    x = L.Bidirectional(forward(), backward_layer=backward(), name="target")(x)
    model = keras.Model(inp, L.Dense(1)(x))
    _randomize(model, seed)
    return model


@pytest.mark.parametrize("case", sorted(HALVES))
def test_bidirectional_with_differing_halves_is_declined_by_onnx_and_auto_equals_keras(case, small_job, tmp_path):
    forward, backward, key = HALVES[case]
    model = _bidirectional(forward, backward, seed=16)
    ctx = engines.context_for(model, model.get_layer("target"), "final", MAXLEN, "post")
    reason = onnx_rt.OnnxEngine.why_not(ctx)
    assert reason and f"differ in {key}" in reason
    model.save(tmp_path / "bi.keras")
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", helpers.corpus(5))
    with pytest.raises(ConfigError, match=f"--engine onnx cannot run layer 'target' exactly.*differ in {key}"):
        resolve(PipelineOptions(["--input", corpus, "--model", str(tmp_path / "bi.keras"), "--tokenizer",
                                 small_job.tokenizer, "--output", str(tmp_path / "o"), "--truncating", "pre",
                                 "--engine", "onnx", "--maxlen", str(MAXLEN)]))
    seqs = _sequences(17, 20)
    embedder = Embedder(model, "target", "final", MAXLEN, padding="post", engine="auto")
    out = embedder.embed(seqs)
    assert embedder.engine.name != "onnx" and "declined" in embedder.engine_report["onnx"]
    helpers.assert_embedded_equals_keras(out, model, "target", "final", seqs, "post", MAXLEN)


def test_bidirectional_with_a_mirrored_custom_backward_layer_still_runs_on_onnx():
    model = _bidirectional(lambda: L.GRU(4, reset_after=False),
                           lambda: L.GRU(4, reset_after=False, go_backwards=True), seed=18)
    seqs = _sequences(19, 20)
    embedder = Embedder(model, "target", "final", MAXLEN, padding="post", engine="onnx")
    out = embedder.embed(seqs)
    assert embedder.engine.name == "onnx"
    helpers.assert_embedded_equals_keras(out, model, "target", "final", seqs, "post", MAXLEN)


# --- 5. Models with more than one input: the target's own input, or a clear error ---------------------------------

def _seq2seq(seed: int):
    """A seq2seq training model: encoder ids -> Embedding(mask_zero) -> LSTM(return_state); decoder ids ->
    Embedding -> LSTM started from the encoder's states -> Dense. Users want the encoder's states."""
    keras.utils.set_random_seed(seed)
    enc_in = keras.Input((MAXLEN,), dtype="int32", name="encoder_ids")
    dec_in = keras.Input((MAXLEN,), dtype="int32", name="decoder_ids")
    _, h, c = L.LSTM(5, return_state=True, name="encoder")(L.Embedding(50, 6, mask_zero=True)(enc_in))
    dec = L.LSTM(5, return_sequences=True, name="decoder")(L.Embedding(50, 6, mask_zero=True)(dec_in),
                                                            initial_state=[h, c])
    model = keras.Model([enc_in, dec_in], L.Dense(50)(dec))
    _randomize(model, seed)
    return model, enc_in


@pytest.mark.parametrize("mode", ["final", "states"])
def test_seq2seq_encoder_is_embedded_from_its_own_input(mode, tmp_path):
    model, enc_in = _seq2seq(31)
    docs = helpers.corpus(40, seed=31)
    tok = helpers.legacy_tokenizer([t for _, t in docs], num_words=50)
    path, tok_path, corpus = _files(tmp_path, model, docs, tok)
    helpers.run_job(["--input", corpus, "--model", path, "--tokenizer", tok_path, "--output", tmp_path / "out",
                     "--layer", "encoder", "--mode", mode, "--truncating", "pre"])
    table = helpers.read_output(str(tmp_path / "out"))
    seqs = tok.texts_to_sequences([t for _, t in docs])
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post", truncating="pre")
    encoder = keras.Model(enc_in, model.get_layer("encoder").output)  # Keras' own encoder, by the test
    want = helpers.reference(encoder, "encoder", mode, padded)
    columns = table.column_names[2:]
    assert len(columns) == len(want)
    for name, ref in zip(columns, want):
        got = _by_id(table, name)
        np.testing.assert_allclose(np.stack([got[d] for d, _ in docs]), ref, atol=TOL, rtol=0)


def test_a_second_numeric_input_that_does_not_reach_the_target_is_left_out(tmp_path):
    keras.utils.set_random_seed(32)
    numbers = keras.Input((3,), name="numbers")  # listed first on purpose
    ids = keras.Input((MAXLEN,), dtype="int32", name="ids")
    x = L.LSTM(4, name="target")(L.Embedding(50, 6)(ids))
    model = keras.Model([numbers, ids], L.Dense(1)(L.Concatenate()([x, numbers])))
    _randomize(model, 32)
    seqs = _sequences(32, 20)
    out = Embedder(model, "target", "final", MAXLEN, padding="pre").embed(seqs)
    view = keras.Model(ids, model.get_layer("target").output)
    helpers.assert_embedded_equals_keras(out, view, "target", "final", seqs, "pre", MAXLEN)


def test_a_target_that_reads_two_inputs_is_a_config_error(small_job, tmp_path):
    keras.utils.set_random_seed(33)
    a, b = keras.Input((MAXLEN,), dtype="int32"), keras.Input((MAXLEN,), dtype="int32")
    x = L.Add()([L.Embedding(50, 6)(a), L.Embedding(50, 6)(b)])
    model = keras.Model([a, b], L.LSTM(3, name="target")(x))
    model.save(tmp_path / "two.keras")
    with pytest.raises(ConfigError, match="depends on 2 of the model's 2 inputs"):
        resolve(PipelineOptions(["--input", helpers.write_jsonl(tmp_path / "c.jsonl", helpers.corpus(3)),
                                 "--model", str(tmp_path / "two.keras"), "--tokenizer", small_job.tokenizer,
                                 "--output", str(tmp_path / "o"), "--padding", "pre", "--truncating", "pre"]))
