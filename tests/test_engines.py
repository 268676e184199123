"""Inference engines against Keras: every layer kind the ONNX Runtime engine accepts equals what
Keras computes (golden values from a Keras clone of the layer, ``helpers.reference``), models it
would compute differently are declined, and the calibration keeps only verified engines.

Tolerance 1e-5 everywhere: the ONNX ops run the same recurrences step by step as Keras, only the
GEMM kernels differ (observed differences are ~1e-8)."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from beam_pipeline import engines
from beam_pipeline.engines import keras_graph, onnx_rt
from beam_pipeline.inference import Embedder
from tests import helpers

MAXLEN = 14
L = keras.layers


@pytest.fixture(autouse=True)
def calibrate_on_the_first_batch(monkeypatch):
    """These tests look at the calibration itself: it happens on the first batch here."""
    from beam_pipeline import inference

    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", 0)


def _sequences(seed: int, n: int = 37, vocab: int = 50) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(1, MAXLEN + 1))).tolist() for _ in range(n)]


def _model(body, mask_zero=True, seed=0, input_dtype="int32", vocab=50):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((MAXLEN,), dtype=input_dtype)
    x = L.Embedding(vocab, 6, mask_zero=mask_zero)(inp)
    x = body(x)
    if isinstance(x, (list, tuple)):  # Bidirectional(merge_mode=None) returns both directions
        x = L.Concatenate()(x)
    if len(x.shape) == 3:
        x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inp, L.Dense(1)(x))


def _check(model, mode, padding, engine="onnx", layer="target", seqs=None):
    """Runs the job's Embedder with ``engine`` forced and compares with Keras' own clone; returns it."""
    seqs = seqs or _sequences(1)
    embedder = Embedder(model, layer, mode, MAXLEN, padding=padding, engine=engine)
    out = embedder.embed(seqs)
    assert embedder.engine.name == engine
    helpers.assert_embedded_equals_keras(out, model, layer, mode, seqs, padding, MAXLEN)
    return embedder


ACCEPTED = {
    "lstm": lambda x: L.LSTM(5, name="target")(x),
    "gru_reset_after": lambda x: L.GRU(5, name="target")(x),
    "gru_reset_before": lambda x: L.GRU(5, reset_after=False, name="target")(x),
    "simple_rnn": lambda x: L.SimpleRNN(5, name="target")(x),
    "lstm_no_bias_hard_sigmoid_relu": lambda x: L.LSTM(5, use_bias=False, recurrent_activation="hard_sigmoid",
                                                       activation="relu", name="target")(x),
    "gru_linear_sigmoid": lambda x: L.GRU(5, activation="linear", recurrent_activation="sigmoid", name="target")(x),
    "simple_rnn_relu": lambda x: L.SimpleRNN(5, activation="relu", name="target")(x),
    "dropouts_between": lambda x: L.LSTM(4, name="target")(
        L.Dropout(0.5)(L.GRU(3, return_sequences=True, dropout=0.2, recurrent_dropout=0.2)(
            L.SpatialDropout1D(0.3)(x)))),
    "stacked_lstm_gru_rnn": lambda x: L.SimpleRNN(4, name="target")(
        L.GRU(3, return_sequences=True)(L.LSTM(5, return_sequences=True)(x))),
    "stacked_bidirectional_lstm": lambda x: L.Bidirectional(L.LSTM(3), name="target")(
        L.Bidirectional(L.LSTM(4, return_sequences=True))(L.Bidirectional(L.LSTM(4, return_sequences=True))(x))),
    "bidirectional_gru_below_sum": lambda x: L.Bidirectional(L.GRU(3), name="target")(
        L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum")(x)),
    "bidirectional_rnn_below_mul_ave": lambda x: L.Bidirectional(L.SimpleRNN(3), name="target")(
        L.Bidirectional(L.SimpleRNN(4, return_sequences=True), merge_mode="ave")(
            L.Bidirectional(L.SimpleRNN(4, return_sequences=True), merge_mode="mul")(x))),
}


@pytest.mark.parametrize("mask_zero", [True, False])
@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_onnx_engine_equals_keras_on_every_accepted_layer_kind(kind, mask_zero):
    """Masked: batches are right-padded whatever --padding says, so one padding covers both.
    Unmasked: ``pre`` runs the padding-prefix cache (unidirectional chains), ``post`` every step."""
    model = _model(ACCEPTED[kind], mask_zero=mask_zero)
    for mode in ("final", "sequence", "states"):
        for padding in ("post",) if mask_zero else ("pre", "post"):
            embedder = _check(model, mode, padding)
            assert embedder.engine.prefix == (not mask_zero and padding == "pre" and "bidirectional" not in kind)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("mask_zero", [True, False])
def test_onnx_engine_every_bidirectional_merge_mode_of_the_target(merge_mode, mask_zero):
    model = _model(lambda x: L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode=merge_mode,
                                             name="target")(x), mask_zero=mask_zero)
    for mode in ("final", "sequence", "states"):
        _check(model, mode, "post")


def test_float_input_ids_are_cast_as_keras_casts_them():
    model = _model(ACCEPTED["lstm"], input_dtype="float32")
    _check(model, "final", "pre")


def test_prefix_cache_reads_length_sorted_chunks_with_full_length_and_single_token_documents(monkeypatch):
    monkeypatch.setattr(onnx_rt, "PREFIX_CHUNK", 4)  # several chunks, each as wide as its longest document
    model = _model(ACCEPTED["stacked_lstm_gru_rnn"], mask_zero=False)
    seqs = [list(range(1, MAXLEN + 1)), [7], [3, 4]] + _sequences(9, n=10)
    for mode in ("final", "sequence", "states"):
        assert _check(model, mode, "pre", seqs=seqs).engine.prefix


def test_masked_batches_run_in_length_sorted_chunks_each_as_wide_as_its_longest_document(monkeypatch):
    """A masked batch is cut into chunks of ``MASKED_CHUNK`` documents sorted by length; each runs only to
    its longest document, and every row lands back in its place with Keras' values (Y past a document's
    end included, in ``sequence`` mode)."""
    monkeypatch.setattr(onnx_rt, "MASKED_CHUNK", 4)
    model = _model(ACCEPTED["stacked_bidirectional_lstm"], mask_zero=True)
    seqs = [list(range(1, n + 1)) for n in (3, 9, 1, 12, 5, 2, 7, 11, 4, 6, 10, 8)]
    for mode in ("final", "sequence", "states"):
        embedder = _check(model, mode, "post", seqs=seqs)
        assert not embedder.engine.prefix
    assert embedder.embed(seqs).padded_timesteps == 4 * (4 + 8 + 12)  # chunks of lengths 1..4, 5..8, 9..12


@pytest.mark.parametrize("engine", ["onnx", "table"])
def test_padding_prefix_engines_count_the_timesteps_they_run_not_the_padded_batch(engine, monkeypatch):
    """The job's ``padded_timesteps`` metric (and its "per token" line) is what the model computed: an
    engine that starts each document from its padding prefix's state runs each length-sorted chunk only
    as wide as its longest document. Here: 3 chunks of 4 documents, of lengths 1..4, 5..8 and 9..12."""
    from beam_pipeline.engines import table

    monkeypatch.setattr(onnx_rt, "PREFIX_CHUNK", 4)
    monkeypatch.setattr(table, "PREFIX_CHUNK", 4)
    model = _model(ACCEPTED["lstm"], mask_zero=False)
    seqs = [list(range(1, n + 1)) for n in (3, 9, 1, 12, 5, 2, 7, 11, 4, 6, 10, 8)]
    embedder = _check(model, "final", "pre", engine=engine, seqs=seqs)
    out = embedder.embed(seqs)
    assert embedder.engine.prefix
    assert out.padded_timesteps == 4 * (4 + 8 + 12) < len(seqs) * MAXLEN
    keras_graph = Embedder(model, "target", "final", MAXLEN, padding="pre", engine="keras")
    assert keras_graph.embed(seqs).padded_timesteps == len(seqs) * MAXLEN  # it runs the padded batch


@keras.saving.register_keras_serializable("test_engines")
class _Cell(L.Layer):
    """A custom recurrent cell (Keras' RNN API), which no engine but Keras' may run."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size = units, units

    def get_config(self):
        return {**super().get_config(), "units": self.units}

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs, states):
        h = keras.ops.tanh(keras.ops.matmul(inputs, self.kernel) + states[0])
        return h, [h]


@keras.saving.register_keras_serializable("test_engines")
def _swish_like(x):
    return x * keras.ops.sigmoid(x)


DECLINED = {
    "masking layer": (lambda: _masking_model(), "Masking"),
    "go_backwards": (lambda: _model(lambda x: L.LSTM(4, go_backwards=True, name="target")(x)), "go_backwards"),
    "custom activation": (lambda: _model(lambda x: L.LSTM(4, activation=_swish_like, name="target")(x)), "activation"),
    "softplus activation": (lambda: _model(lambda x: L.SimpleRNN(4, activation="softplus", name="target")(x)),
                            "softplus"),
    "custom cell": (lambda: _model(lambda x: L.RNN(_Cell(4), name="target")(x)), "_Cell"),
    "dense between": (lambda: _model(lambda x: L.LSTM(4, name="target")(L.Dense(3)(x))), "Dense"),
    "conv between": (lambda: _model(lambda x: L.LSTM(4, name="target")(L.Conv1D(3, 2, padding="same")(x)),
                                    mask_zero=False), "Conv1D"),
}


def _masking_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.Masking(0.0)(L.Embedding(50, 6)(inp))
    return keras.Model(inp, L.Dense(1)(L.LSTM(4, name="target")(x)))


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_models_onnx_would_compute_differently_are_declined_and_run_on_keras(case):
    build, named = DECLINED[case]
    model = build()
    embedder = Embedder(model, "target", "final", MAXLEN, padding="post", engine="auto", jit=False)
    reason = onnx_rt.OnnxEngine.why_not(embedder.engine_context)
    assert reason and named in reason
    with pytest.raises(engines.EngineError, match="cannot run"):
        Embedder(model, "target", "final", MAXLEN, padding="post", engine="onnx").embed(_sequences(2))
    out = embedder.embed(_sequences(2))  # auto: another engine (the Keras graph, or the table) runs it
    assert embedder.engine.name != "onnx" and "declined" in embedder.engine_report["onnx"]
    ref = helpers.reference(model, "target", "final", keras.utils.pad_sequences(_sequences(2), MAXLEN, padding="post"))
    np.testing.assert_allclose(out.columns["vector"], ref[0], atol=1e-5, rtol=0)


def test_one_hot_and_text_inputs_are_declined():
    keras.utils.set_random_seed(0)
    one_hot = keras.Model(inp := keras.Input((MAXLEN, 20)), L.LSTM(3, name="target")(inp))
    ctx = engines.context_for(one_hot, one_hot.get_layer("target"), "final", MAXLEN, "post")
    assert "one-hot" in onnx_rt.OnnxEngine.why_not(ctx)
    ctx.text_input, ctx.one_hot_depth = True, None
    assert "raw text" in onnx_rt.OnnxEngine.why_not(ctx)
    assert "string" in keras_graph.XlaEngine.why_not(ctx)


def test_an_engine_that_differs_from_keras_is_dropped_at_calibration(monkeypatch, caplog):
    """Verification before trust: outputs off by 1e-3 are never used, whatever their speed."""
    from beam_pipeline.engines.table import TableEngine

    original = onnx_rt.OnnxEngine.run
    monkeypatch.setattr(onnx_rt.OnnxEngine, "run", lambda self, batch: [a + 1e-3 for a in original(self, batch)])
    monkeypatch.setattr(TableEngine, "why_not", classmethod(lambda cls, ctx: "not under test"))
    model = _model(ACCEPTED["lstm"])
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(model, "target", "final", MAXLEN, padding="post", jit=False)
        embedder.embed(_sequences(3))
    assert embedder.engine.name == "keras"
    assert "differs from the Keras graph" in embedder.engine_report["onnx"]["dropped"]
    assert any("dropped" in r.message for r in caplog.records)
    # Forced, it gives way to the Keras graph too (values first), with the reason in the report.
    forced = Embedder(model, "target", "final", MAXLEN, padding="post", engine="onnx")
    out = forced.embed(_sequences(3))
    assert forced.engine.name == "keras" and "differs" in forced.engine_report["onnx"]["dropped"]
    want = helpers.reference(model, "target", "final", keras.utils.pad_sequences(_sequences(3), MAXLEN, padding="post"))
    np.testing.assert_allclose(out.columns["vector"], want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ["onnx", "auto"])
def test_the_engine_is_checked_again_on_documents_longer_than_it_was_checked_on(engine):
    """Round-off between two implementations grows with the steps: a GRU with a tanh update gate
    (random weights) stays within 1e-5 of Keras on documents of 4 tokens under ONNX Runtime, but
    not on documents of 24. Calibrated on short documents (what length bucketing puts in the first
    batch), the engine is checked again on the first longer ones, dropped, and the batch rerun on
    the Keras graph: every value written stays within 1e-5 of Keras."""
    maxlen, rng = 24, np.random.default_rng(28)
    keras.utils.set_random_seed(28)
    inp = keras.Input((maxlen,), dtype="int32")
    x = L.Embedding(60, 8, mask_zero=True)(inp)
    model = keras.Model(inp, L.Dense(2)(L.GRU(6, reset_after=False, recurrent_activation="tanh", name="target")(x)))
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    embedder = Embedder(model, "target", "final", maxlen, engine=engine, jit=False)
    embedder.calibrate_after_docs = 0
    short = [list(rng.integers(1, 60, size=int(n))) for n in rng.integers(1, 5, size=32)]
    long = [list(rng.integers(1, 60, size=maxlen)) for _ in range(32)]
    first = embedder.embed(short)
    chosen = embedder.engine.name
    assert chosen != "keras" and (engine == "auto" or chosen == engine), embedder.engine_report
    second = embedder.embed(long)
    if engine == "onnx":  # auto may have chosen another engine; its values are checked below all the same
        assert embedder.engine.name == "keras" and "documents of 24 tokens" in embedder.engine_report["onnx"]["dropped"]
    for seqs, out in ((short, first), (long, second)):
        want = helpers.reference(model, "target", "final", keras.utils.pad_sequences(seqs, maxlen, padding="post"))
        np.testing.assert_allclose(out.columns["vector"], want[0], atol=1e-5, rtol=0)


def test_auto_runs_the_keras_graph_until_calibration_can_pay_off(monkeypatch):
    """A small job never pays for calibration: batches run on the Keras graph until it has run
    CALIBRATE_AFTER_DOCS documents; the next full batch calibrates, and the values never move."""
    from beam_pipeline import inference

    seqs = _sequences(7)
    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", len(seqs) + 1)
    model = _model(ACCEPTED["lstm"])
    embedder = Embedder(model, "target", "final", MAXLEN, padding="post")
    first = embedder.embed(seqs).columns["vector"]
    assert embedder.engine is None and embedder.engine_report == {}, "no calibration in a small job"
    assert embedder._keras_docs == len(seqs)
    second = embedder.embed(seqs).columns["vector"]
    assert embedder.engine is None, "the graph had run fewer documents than CALIBRATE_AFTER_DOCS"
    third = embedder.embed(seqs).columns["vector"]
    assert embedder.engine is not None and "keras" in embedder.engine_report
    want = helpers.reference(model, "target", "final", keras.utils.pad_sequences(seqs, maxlen=MAXLEN, padding="post"))
    for got in (first, second, third):
        np.testing.assert_allclose(got, want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("slowest", ["xla", "onnx", "keras"])
def test_calibration_keeps_the_fastest_verified_engine(slowest, monkeypatch):
    """The choice follows the measured times (here fixed, to make the test deterministic); an XLA
    engine that measured slower than the graph is not kept, so its ski rental never starts."""
    times = {"keras": 2.0, "xla": 1.0, "onnx": 1.5, "table": 3.0}
    times[slowest] = 9.0
    monkeypatch.setattr(engines, "_timed", lambda engine, batch, repeat: times[engine.name])
    model = _model(ACCEPTED["lstm"])
    embedder = Embedder(model, "target", "final", MAXLEN, padding="post")
    embedder.embed(_sequences(4))
    assert embedder.engine.name == min(times, key=times.get)
    assert set(embedder.engine_report) == {"keras", "xla", "onnx", "table"}
    if slowest == "xla":
        assert not isinstance(embedder.engine, keras_graph.XlaEngine)


@pytest.mark.parametrize("masked", [True, False])
def test_xla_ski_rental_compiles_a_shape_once_its_graph_time_reaches_the_budget(masked):
    """A batch shape that keeps coming back switches to the XLA-compiled function; values must not move."""
    model = _model(lambda x: L.LSTM(5, name="target")(x), mask_zero=masked)
    seqs = _sequences(5, n=16)
    plain = Embedder(model, "target", "sequence", MAXLEN, engine="keras").embed(seqs).columns["vectors"]
    jitted = Embedder(model, "target", "sequence", MAXLEN, engine="xla")
    jitted.embed(_sequences(6, n=3)[:1])  # calibration on another shape
    jitted.engine.rent_until_compiled(1e-9)  # compile from the first repeat on
    calls = []
    original = jitted.engine._xla_fn
    jitted.engine._xla_fn = lambda batch: calls.append(batch.shape) or original(batch)
    runs = [jitted.embed(seqs).columns["vectors"] for _ in range(3)]
    assert len(calls) == 2, "the first batch of a shape runs on the graph function, the repeats on XLA"
    for out in runs:
        np.testing.assert_allclose(out, plain, atol=1e-5, rtol=0)


def test_job_with_engine_onnx_writes_keras_values_and_records_the_engine(tmp_path):
    """End to end on the DirectRunner: --engine onnx, values equal Keras, provenance and metrics say so."""
    import json

    import pyarrow.parquet as pq

    docs = helpers.corpus(40)
    tok = helpers.legacy_tokenizer([t for _, t in docs])
    keras.utils.set_random_seed(0)
    inp = keras.Input((MAXLEN,), dtype="int32")
    x = L.Bidirectional(L.LSTM(4, return_sequences=True))(L.Embedding(len(tok.word_index) + 1, 6, mask_zero=True)(inp))
    model = keras.Model(inp, L.Dense(1)(L.Bidirectional(L.LSTM(3), name="target")(x)))
    model.save(tmp_path / "m.keras")
    (tmp_path / "tok.json").write_text(tok.to_json())
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    summary = helpers.run_job(["--input", corpus, "--output", tmp_path / "out/emb", "--model", tmp_path / "m.keras",
                               "--tokenizer", tmp_path / "tok.json", "--layer", "target", "--maxlen", MAXLEN,
                               "--padding", "post", "--truncating", "post", "--engine", "onnx"])
    table = helpers.read_output(str(tmp_path / "out/emb"))
    assert summary["metrics"].get("batches_onnx", 0) >= 1 and "batches_keras" not in summary["metrics"]
    meta = json.loads(pq.read_schema(sorted((tmp_path / "out").glob("emb-0*.parquet"))[0]).metadata[b"embedding_job"])
    assert meta["engine"] == "onnx" and meta["engine_tolerance"] == 1e-5
    seqs = tok.texts_to_sequences([t for _, t in docs])
    ref = helpers.reference(model, "target", "final", keras.utils.pad_sequences(seqs, MAXLEN, padding="post",
                                                                                truncating="post"))[0]
    by_id = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    got = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    want = ref[[by_id[d] for d in table.column("doc_id").to_pylist()]]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_forced_engine_that_cannot_run_the_model_is_a_config_error(tmp_path):
    from beam_pipeline.options import ConfigError

    docs = helpers.corpus(5)
    tok = helpers.legacy_tokenizer([t for _, t in docs])
    model = _model(lambda x: L.LSTM(4, go_backwards=True, name="target")(x), vocab=1000)
    model.save(tmp_path / "m.keras")
    (tmp_path / "tok.json").write_text(tok.to_json())
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(ConfigError, match="--engine onnx cannot run layer 'target' exactly.*go_backwards"):
        helpers.run_job(["--input", corpus, "--output", tmp_path / "o", "--model", tmp_path / "m.keras",
                         "--tokenizer", tmp_path / "tok.json", "--maxlen", MAXLEN, "--padding", "post",
                         "--truncating", "post", "--engine", "onnx"])


TABLE_ACCEPTED = {
    "lstm": ACCEPTED["lstm"],
    "lstm_no_bias_hard_sigmoid_relu": ACCEPTED["lstm_no_bias_hard_sigmoid_relu"],
    "gru_reset_after": ACCEPTED["gru_reset_after"],
    "gru_reset_before": ACCEPTED["gru_reset_before"],
    "simple_rnn_relu": ACCEPTED["simple_rnn_relu"],
    "dropouts_between": lambda x: L.LSTM(4, name="target")(L.Dropout(0.5)(L.SpatialDropout1D(0.3)(x))),
}


@pytest.mark.parametrize("mask_zero", [True, False])
@pytest.mark.parametrize("kind", sorted(TABLE_ACCEPTED))
def test_projection_table_engine_equals_keras(kind, mask_zero, monkeypatch):
    """``E @ W + b`` gathered per token instead of multiplied: 1e-5 (the sum's order differs by one add).
    Unmasked ``pre``: from the padding-prefix states, in length-sorted chunks (8 documents here)."""
    from beam_pipeline.engines import table

    monkeypatch.setattr(table, "PREFIX_CHUNK", 8)
    model = _model(TABLE_ACCEPTED[kind], mask_zero=mask_zero)
    for mode in ("final", "sequence", "states"):
        for padding in ("post",) if mask_zero else ("pre", "post"):
            embedder = _check(model, mode, padding, engine="table")
            assert embedder.engine.prefix == (not mask_zero and padding == "pre")


@pytest.mark.parametrize("kind", ["stacked_lstm_gru_rnn", "stacked_bidirectional_lstm"])
def test_projection_table_declines_stacks_and_bidirectional_targets(kind):
    model = _model(ACCEPTED[kind])
    ctx = engines.context_for(model, model.get_layer("target"), "final", MAXLEN, "post")
    from beam_pipeline.engines.table import TableEngine

    assert "between the Embedding and the target" in TableEngine.why_not(ctx)


@pytest.mark.parametrize("mask_zero", [True, False])
def test_projection_table_tops_up_a_short_batch_to_the_compiled_row_count(mask_zero):
    model = _model(TABLE_ACCEPTED["lstm"], mask_zero=mask_zero)
    embedder = Embedder(model, "target", "sequence", MAXLEN, padding="post", engine="table")
    embedder.embed(_sequences(1))
    short = _sequences(7, n=5)
    out = embedder.embed(short)
    assert embedder.engine._rows == 37
    ref = helpers.reference(model, "target", "sequence", keras.utils.pad_sequences(short, MAXLEN, padding="post"))[0]
    np.testing.assert_allclose(out.columns["vectors"], np.concatenate([r[:len(s)] for r, s in zip(ref, short)]),
                               atol=1e-5, rtol=0)
