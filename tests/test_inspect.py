"""``python -m beam_pipeline.inspect`` on real (small, untrained) Keras models saved as ``.keras``.

Expected shapes come from Keras itself (the layers' own weights and output shapes); the text and
the ``--json`` document must both carry them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from beam_pipeline.demo import fit_tokenizer_json, sample_corpus
from beam_pipeline.inspect import main

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Saved:
    path: str
    model: object


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Saved:
    """Sequential Embedding(30, 8) -> LSTM(20) -> Dense(2), unmasked."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32", name="ids"),
            keras.layers.Embedding(30, 8, name="emb"),
            keras.layers.LSTM(20, name="lstm"),
            keras.layers.Dense(2, name="head"),
        ],
        name="seq",
    )
    path = tmp_path_factory.mktemp("inspect") / "sequential.keras"
    model.save(path)
    return Saved(str(path), model)


@pytest.fixture(scope="module")
def functional(tmp_path_factory) -> Saved:
    """Embedding(mask_zero) -> Bidirectional(LSTM(6, return_sequences)) -> GRU(5) -> Dense(3)."""
    import keras

    inp = keras.Input((10,), dtype="int32", name="ids")
    x = keras.layers.Embedding(50, 8, mask_zero=True, name="emb")(inp)
    x = keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True), name="bilstm")(x)
    x = keras.layers.GRU(5, name="gru")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x), name="fn")
    path = tmp_path_factory.mktemp("inspect") / "functional.keras"
    model.save(path)
    return Saved(str(path), model)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> dict:
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    return json.loads(out)


def fmt(shape) -> str:
    dims = tuple(int(d) for d in shape)
    return str(dims)


def test_lstm_weights_are_explained_with_keras_shapes_and_gate_order(capsys, sequential):
    code, out, _ = run(capsys, "--model", sequential.path)
    assert code == 0
    lstm = sequential.model.get_layer("lstm")
    shapes = [fmt(w.shape) for w in lstm.weights]
    assert shapes == ["(8, 80)", "(20, 80)", "(80,)"]  # Keras: kernel (F, 4U), recurrent (U, 4U), bias (4U,)
    for shape in shapes:
        assert shape in out
    assert "(input features 8, 4*units=4x20); column blocks: i, f, c, o" in out
    assert "(units 20, 4*units=4x20); column blocks: i, f, c, o" in out


def test_layers_are_listed_in_order_with_class_and_output_shape(capsys, sequential):
    report = run_json(capsys, "--model", sequential.path)
    listed = [(layer["index"], layer["name"], layer["class_name"]) for layer in report["layers"]]
    assert listed == [(i, layer.name, type(layer).__name__) for i, layer in enumerate(sequential.model.layers)]
    for entry, layer in zip(report["layers"], sequential.model.layers):
        assert entry["output_shapes"] == [list(layer.output.shape)]
    assert [layer["receives_mask"] for layer in report["layers"]] == [False, False, False]


def test_default_layer_is_the_last_recurrent_one(capsys, sequential, functional):
    _, out, _ = run(capsys, "--model", sequential.path)
    assert "default layer (no --layer): lstm" in out
    _, out, _ = run(capsys, "--model", functional.path)
    assert "targetable layers (recurrent): 2:bilstm, 3:gru" in out
    assert "default layer (no --layer): gru" in out


def test_columns_per_mode_for_a_bidirectional_concat_layer(capsys, functional):
    bilstm = functional.model.get_layer("bilstm")
    assert bilstm.output.shape[-1] == 12  # Keras: concat of two 6-unit directions
    _, out, _ = run(capsys, "--model", functional.path)
    assert "--mode final    vector: fixed_size_list<float32>[12] (dim 12)" in out
    assert "--mode sequence vectors: list<fixed_size_list<float32>[12]> (dim 12)" in out
    states = ", ".join(f"{n}: fixed_size_list<float32>[6] (dim 6)" for n in ("h_fw", "c_fw", "h_bw", "c_bw"))
    assert f"--mode states   {states}" in out

    report = run_json(capsys, "--model", functional.path)
    by_name = {layer["name"]: layer for layer in report["recurrent_layers"]}
    columns = by_name["bilstm"]["columns"]
    assert [(c["name"], c["dim"]) for c in columns["final"]] == [("vector", 12)]
    assert [(c["name"], c["dim"]) for c in columns["sequence"]] == [("vectors", 12)]
    assert [(c["name"], c["dim"]) for c in columns["states"]] == [
        ("h_fw", 6), ("c_fw", 6), ("h_bw", 6), ("c_bw", 6)
    ]
    assert [(c["name"], c["dim"]) for c in by_name["gru"]["columns"]["states"]] == [("h", 5)]


def test_bidirectional_and_gru_weights_are_explained(capsys, functional):
    report = run_json(capsys, "--model", functional.path)
    by_name = {layer["name"]: layer for layer in report["recurrent_layers"]}
    bilstm = functional.model.get_layer("bilstm")
    weights = by_name["bilstm"]["weights"]
    assert [w["shape"] for w in weights] == [list(w.shape) for w in bilstm.weights]
    assert [w["direction"] for w in weights] == ["forward"] * 3 + ["backward"] * 3
    assert weights[0]["shape"] == [8, 24]
    assert "column blocks: i, f, c, o" in weights[0]["meaning"]
    gru = by_name["gru"]["weights"]
    assert gru[0]["shape"] == [12, 15]  # input is the 12-wide concat, 3 gates x 5 units
    assert "column blocks: z, r, h" in gru[0]["meaning"]


def test_mask_reaching_each_layer_is_reported(capsys, functional):
    report = run_json(capsys, "--model", functional.path)
    masks = {layer["name"]: layer["receives_mask"] for layer in report["layers"]}
    assert masks == {"ids": False, "emb": False, "bilstm": True, "gru": True, "head": False}
    supports = {layer["name"]: layer["supports_masking"] for layer in report["layers"]}
    assert supports["bilstm"] and supports["gru"]
    assert all(layer["masked"] for layer in report["recurrent_layers"])


def test_tokenizer_with_ids_beyond_the_embedding_is_warned_about(capsys, sequential, tmp_path):
    texts = [d["text"] for d in sample_corpus(100)]
    too_big = tmp_path / "too_big.json"
    too_big.write_text(fit_tokenizer_json(texts, oov_token="<unk>"))
    code, out, _ = run(capsys, "--model", sequential.path, "--tokenizer", str(too_big))
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "input_dim=30" in warnings[0]

    fitting = tmp_path / "fitting.json"
    fitting.write_text(fit_tokenizer_json(texts, num_words=30, oov_token="<unk>"))
    report = run_json(capsys, "--model", sequential.path, "--tokenizer", str(fitting))
    assert report["warnings"] == []
    tokenizer = report["tokenizer"]
    assert tokenizer["num_words"] == 30
    assert tokenizer["max_id"] == 29
    assert tokenizer["embedding_input_dim"] == 30
    assert tokenizer["vocab_size"] > 30
    _, out, _ = run(capsys, "--model", sequential.path, "--tokenizer", str(fitting))
    assert "num_words 30" in out
    assert "WARNING" not in out


def test_json_is_one_document_with_the_text_content(capsys, functional):
    code, out, _ = run(capsys, "--model", functional.path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["default_layer"] == "gru"
    assert report["model"]["inputs"] == [{"name": "ids", "shape": [None, 10], "dtype": "int32"}]
    assert [layer["name"] for layer in report["recurrent_layers"]] == ["bilstm", "gru"]


def test_model_without_recurrent_layer_is_reported_as_unusable(capsys, tmp_path):
    import keras

    inp = keras.Input((4,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 3)(inp))
    path = tmp_path / "pooled.keras"
    keras.Model(inp, keras.layers.Dense(1)(x)).save(path)
    code, out, _ = run(capsys, "--model", str(path))
    assert code == 0
    assert "targetable layers (recurrent): none" in out
    assert "WARNING: the model has no recurrent layer" in out


def test_missing_files_exit_2_with_a_message_on_stderr(capsys, sequential, tmp_path):
    missing = tmp_path / "nope.keras"
    code, out, err = run(capsys, "--model", str(missing))
    assert (code, out) == (2, "")
    assert f"--model file not found: {missing}" in err

    code, out, err = run(capsys, "--model", sequential.path, "--tokenizer", str(tmp_path / "nope.json"))
    assert (code, out) == (2, "")
    assert "--tokenizer file not found" in err


def test_unreadable_tokenizer_exits_2(capsys, sequential, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"class_name": "NotATokenizer"}')
    code, _, err = run(capsys, "--model", sequential.path, "--tokenizer", str(bad))
    assert code == 2
    assert "not a Keras tokenizer JSON" in err
