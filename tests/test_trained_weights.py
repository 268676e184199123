"""Weights as training scripts write them, loaded into a builder that leaves layer names to Keras.

A user's script (run here in its own process, as users run it) builds the network with no layer
names, compiles it, fits it and calls ``save_weights``: Keras 3's ``.weights.h5`` then holds the
optimizer's variables beside the model's, and tf_keras writes its Keras 2 HDF5. The job loads what
Keras' own ``load_weights`` loads, and the names ``inspect`` prints (the script's own: ``lstm_1``),
index paths and the default layer name the same layer however many times the model is built in one
process (launcher, in-process workers, several jobs). Golden values: the framework that wrote the
weights, loading them with its own ``load_weights``, and a clone of the layer (``helpers.reference``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline import nested
from beam_pipeline.model import builder, load_model
from beam_pipeline.options import ConfigError
from beam_pipeline.recurrent import ModelError
from tests import helpers

REPO = Path(__file__).resolve().parent.parent
MAXLEN = 12
VOCAB = 60
MODULE = "names_left_to_keras"  # the user's builder module

BUILDER = f'''
import keras


def build():
    """No layer is named: Keras names them (embedding, dropout, lstm, lstm_1, dense in a new process)."""
    return keras.Sequential([
        keras.Input(({MAXLEN},), dtype="int32"),
        keras.layers.Embedding({VOCAB}, 8, mask_zero=True),
        keras.layers.Dropout(0.1),
        keras.layers.LSTM(6, return_sequences=True),
        keras.layers.LSTM(UNITS),
        keras.layers.Dense(1),
    ])
'''

TRAIN = f'''
"""The user's training script: the Keras 3 builder, and the same network as a Keras 2 (tf_keras)
script built it; each compiled, fitted one epoch, saved with save_weights (and whole)."""
import json
import sys

import numpy as np


def keras2_model():
    import tf_keras

    return tf_keras.Sequential([
        tf_keras.Input(({MAXLEN},), dtype="int32"),
        tf_keras.layers.Embedding({VOCAB}, 8, mask_zero=True),
        tf_keras.layers.Dropout(0.1),
        tf_keras.layers.LSTM(6, return_sequences=True),
        tf_keras.layers.LSTM(5),
        tf_keras.layers.Dense(1),
    ])


def main(folder):
    import keras
    import tf_keras

    from {MODULE} import build

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, {VOCAB}, size=(64, {MAXLEN})), rng.normal(size=(64, 1))
    keras.utils.set_random_seed(3)
    model = build()
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save_weights(folder + "/trained.weights.h5")
    model.save(folder + "/trained.keras")
    tf_keras.utils.set_random_seed(3)
    legacy = keras2_model()
    legacy.compile("adam", "mse")
    legacy.fit(x, y, batch_size=16, epochs=1, verbose=0)
    legacy.save_weights(folder + "/trained_keras2.h5")
    legacy.save(folder + "/trained_keras2_whole.h5")
    print(json.dumps({{"keras 3": [layer.name for layer in model.layers],
                      "keras 2": [layer.name for layer in legacy.layers]}}))


if __name__ == "__main__":
    main(sys.argv[1])
'''


def _env(folder: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), folder, env.get("PYTHONPATH", "")])
    return env


def _python(folder: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=_env(folder), cwd=folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The training script run in its own process; the folder, the names it printed, a corpus and tokenizer."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(BUILDER.replace("UNITS", "5")), encoding="utf-8")
    (folder / "wrong_units.py").write_text(textwrap.dedent(BUILDER.replace("UNITS", "7")), encoding="utf-8")
    (folder / "training_script.py").write_text(textwrap.dedent(TRAIN), encoding="utf-8")
    proc = _python(str(folder), "training_script.py", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    docs = helpers.corpus(40, seed=9)
    tokenizer = helpers.legacy_tokenizer([t for _, t in docs], num_words=VOCAB)
    (folder / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    helpers.write_jsonl(folder / "corpus.jsonl", docs)
    return folder, names, docs, tokenizer


@pytest.fixture
def on_path(trained, monkeypatch):
    folder = trained[0]
    monkeypatch.syspath_prepend(str(folder))  # importable, as --setup_file makes it on workers
    return folder


def _padded(trained) -> tuple[np.ndarray, np.ndarray]:
    """The corpus as the model was trained on it: tf_keras' Tokenizer, pad_sequences' defaults (pre, pre);
    and which documents hold a token."""
    _, _, docs, tokenizer = trained
    seqs = tokenizer.texts_to_sequences([t for _, t in sorted(docs)])
    return keras.utils.pad_sequences(seqs, maxlen=MAXLEN), np.array([len(s) > 0 for s in seqs])


def _golden(trained, weights: str, mode: str) -> list[np.ndarray]:
    """The second LSTM (index 3) as the framework that wrote ``weights`` computes it, its own
    ``load_weights`` filling the model its own code builds."""
    folder = trained[0]
    padded, _ = _padded(trained)
    if weights.endswith(".weights.h5"):
        module = __import__(MODULE)
        model = module.build()
        model.load_weights(str(folder / weights))
        return helpers.reference(model, model.layers[3].name, mode, padded)
    import training_script

    legacy = training_script.keras2_model()
    legacy.load_weights(str(folder / weights))
    return helpers.tf_keras_reference(legacy, legacy.layers[3].name, mode, padded)


def _assert_output_is(trained, out: str, golden: list[np.ndarray], columns: tuple[str, ...]) -> None:
    _, real = _padded(trained)
    table = helpers.read_output(out).sort_by("doc_id")
    for column, want in zip(columns, golden):
        got = np.stack(table[column].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)


def _argv(folder, weights: str, out, layer: str | None, module: str | None = MODULE) -> list[str]:
    return ["--input", folder / "corpus.jsonl", "--tokenizer", folder / "tokenizer.json", "--output", out,
            "--model", folder / weights, "--truncating", "pre", *(["--model_fn", f"{module}:build"] if module else []),
            *(["--layer", layer] if layer is not None else [])]


def test_the_training_scripts_files_hold_the_optimizer_and_its_names_are_keras_defaults(trained):
    import h5py

    folder, names, _, _ = trained
    assert names["keras 3"] == ["embedding", "dropout", "lstm", "lstm_1", "dense"]
    assert names["keras 2"] == names["keras 3"]
    with h5py.File(folder / "trained.weights.h5", "r") as f:
        assert "optimizer" in f and len(f["optimizer/vars"]) > 2  # the step, the rate, Adam's slots
    with h5py.File(folder / "trained_keras2_whole.h5", "r") as f:
        assert "optimizer_weights" in f


def test_every_build_in_a_process_names_the_layers_as_the_training_script(trained, on_path):
    folder, names, _, _ = trained
    for weights in ("trained.weights.h5", "trained_keras2.h5", "trained_keras2.h5", "trained.weights.h5"):
        keras.layers.LSTM(3)  # automatic names taken between builds do not shift the builder's
        model = load_model(str(folder / weights), model_fn=f"{MODULE}:build").model
        assert [layer.name for layer in model.layers] == names["keras 3"]
    assert keras.layers.LSTM(3).name not in names["keras 3"]  # nor do the builds' names come back after them


def test_inspect_prints_the_training_scripts_names(trained):
    folder, names, _, _ = trained
    proc = _python(str(folder), "-m", "beam_pipeline.inspect", "--model", "trained.weights.h5", "--model_fn",
                   f"{MODULE}:build", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["default_layer"] == "lstm_1" == names["keras 3"][3]
    assert [(t["index"], t["name"]) for t in report["recurrent_layers"]] == [(2, "lstm"), (3, "lstm_1")]


@pytest.mark.parametrize("weights", ["trained.weights.h5", "trained_keras2.h5"])
def test_several_jobs_in_one_process_embed_the_layer_inspect_names(trained, on_path, tmp_path, weights):
    """The launcher and the DirectRunner's workers build the model in this process, job after job."""
    folder = trained[0]
    golden = _golden(trained, weights, "states")
    for k, layer in enumerate(("lstm_1", "3", None, "lstm_1")):
        out = tmp_path / f"emb{k}"
        summary = helpers.run_job([*_argv(folder, weights, out, layer), "--mode", "states"])
        assert summary["accounted"] and summary["embedded"] == len(trained[2])
        _assert_output_is(trained, str(out), golden, ("h", "c"))


@pytest.mark.parametrize("weights,layer", [("trained.weights.h5", "lstm_1"), ("trained_keras2.h5", "3"),
                                           ("trained.weights.h5", None)])
def test_the_command_line_embeds_the_layer_inspect_names(trained, on_path, tmp_path, weights, layer):
    folder = trained[0]
    out = tmp_path / "emb"
    proc = _python(str(folder), "-m", "beam_pipeline", *_argv(folder, weights, out, layer))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_output_is(trained, str(out), _golden(trained, weights, "final"), ("vector",))


def test_a_trained_keras_file_runs_as_its_weights_do(trained, on_path, tmp_path):
    """A whole .keras saved after fit (the optimizer inside) needs no builder: the same values."""
    folder = trained[0]
    out = tmp_path / "emb"
    helpers.run_job(_argv(folder, "trained.keras", out, "lstm_1", module=None))
    _assert_output_is(trained, str(out), _golden(trained, "trained.weights.h5", "final"), ("vector",))


def test_a_whole_trained_tf_keras_h5_gives_what_tf_keras_loads(trained, on_path):
    import training_script

    folder = trained[0]
    legacy = training_script.keras2_model()
    legacy.load_weights(str(folder / "trained_keras2_whole.h5"))
    loaded = load_model(str(folder / "trained_keras2_whole.h5"), model_fn=f"{MODULE}:build")
    assert loaded.provenance.weights["weights_matched"] == "by topological order"
    for got, want in zip(loaded.model.get_weights(), legacy.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_real_shape_mismatch_beside_an_optimizer_exits_2_naming_the_layer_and_shapes(trained, tmp_path):
    folder = trained[0]
    out = tmp_path / "out" / "emb"
    proc = _python(str(folder), "-m", "beam_pipeline", *_argv(folder, "trained.weights.h5", out, None, "wrong_units"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert "nothing was loaded" in error and ("layer 'lstm_1/lstm_cell' (variable 0, layers/lstm_1/cell/vars/0): the "
                                              "model has shape (6, 28), the file (6, 20)" in error), error
    assert "adam" not in error and "optimizer" not in error
    assert not (tmp_path / "out").exists()


def test_a_real_shape_mismatch_in_keras2_weights_is_refused_naming_the_layer_and_shapes(trained, on_path, tmp_path):
    folder = trained[0]
    with pytest.raises(ConfigError, match=r"layer 'lstm_1', weight lstm_1/lstm_cell/kernel:0: the model has shape "
                                          r"\(6, 28\), the file \(6, 20\)"):
        helpers.run_job(_argv(folder, "trained_keras2.h5", tmp_path / "emb", None, "wrong_units"))
    assert not os.listdir(tmp_path)


# --- any architecture, built again and again -------------------------------------------------------------------

RECURRENT = {"lstm": "keras.layers.LSTM(3{seq})", "gru": "keras.layers.GRU(3{seq})",
             "simple": "keras.layers.SimpleRNN(3{seq})", "bi": "keras.layers.Bidirectional(keras.layers.LSTM(2{seq}))"}


def _source(kinds: list[str], nested_at: int | None) -> str:
    """A builder with no layer names: Embedding, the recurrent layers (the ones from ``nested_at`` on inside a
    nested Sequential), Dense."""
    layers = [RECURRENT[k].format(seq="" if i == len(kinds) - 1 else ", return_sequences=True")
              for i, k in enumerate(kinds)]
    if nested_at is not None:
        width = 8 if nested_at == 0 else (4 if kinds[nested_at - 1] == "bi" else 3)
        inner = ", ".join(layers[nested_at:])
        layers = layers[:nested_at] + [f"keras.Sequential([keras.Input(({MAXLEN}, {width})), {inner}])"]
    return (f"import keras\n\n\ndef build():\n    return keras.Sequential([keras.Input(({MAXLEN},), dtype='int32'), "
            f"keras.layers.Embedding(20, 8), {', '.join(layers)}, keras.layers.Dense(1)])\n")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(RECURRENT)), min_size=1, max_size=3), data=st.data())
def test_names_index_paths_and_the_default_name_one_layer_in_every_build(tmp_path, kinds, data):
    nested_at = data.draw(st.one_of(st.none(), st.integers(0, len(kinds) - 1)))
    path = tmp_path / f"arch_{abs(hash((tuple(kinds), nested_at)))}.py"
    path.write_text(_source(kinds, nested_at), encoding="utf-8")
    spec = builder.parse(f"{path}:build")
    first = builder.build(spec)
    targets = nested.targets(first)
    _, default, _ = nested.locate(first, None)
    for _ in range(3):
        keras.layers.LSTM(3)
        keras.layers.Bidirectional(keras.layers.GRU(2))  # automatic names taken between builds
        again = builder.build(spec)
        assert [t.path for t in nested.targets(again)] == [t.path for t in targets]
        for target in targets:
            by_name = nested.locate(again, target.path)[1]
            by_index = nested.locate(again, nested.index_path(first, target.layer))[1]
            assert by_name is by_index and nested.index_path(again, by_name) == target.index_path
        assert nested.index_path(again, nested.locate(again, None)[1]) == nested.index_path(first, default)


def test_a_model_fn_that_fails_still_restores_the_names(tmp_path):
    path = tmp_path / "fails.py"
    path.write_text("import keras\n\n\ndef build():\n    keras.layers.LSTM(2)\n    raise RuntimeError('no')\n")
    before = keras.layers.LSTM(2).name
    with pytest.raises(ModelError, match="the function raised RuntimeError: no"):
        builder.build(builder.parse(f"{path}:build"))
    after = keras.layers.LSTM(2).name
    assert after not in (before, "lstm")


def test_a_module_level_layer_keeps_its_name_and_the_builds_number_after_it(tmp_path, monkeypatch):
    """As the training script that imports the module, then builds: the module's own layer is ``lstm``,
    the built one ``lstm_1``, in every build, the module imported once (MODULE:FUNCTION) or run each time
    (a path)."""
    (tmp_path / "shared_layer_builder.py").write_text(textwrap.dedent(f'''
        import keras

        SHARED = keras.layers.LSTM(4, return_sequences=True)  # created on import, named by Keras


        def build():
            return keras.Sequential([keras.Input(({MAXLEN}, 3)), SHARED, keras.layers.LSTM(2)])
        '''), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = _python(str(tmp_path), "-c", "import shared_layer_builder as b; print([x.name for x in b.build().layers])")
    assert fresh.stdout.strip() == "['lstm', 'lstm_1']", fresh.stderr[-2000:]
    for spec in ("shared_layer_builder:build", f"{tmp_path / 'shared_layer_builder.py'}:build") * 2:
        keras.layers.LSTM(3)
        model = builder.build(builder.parse(spec))
        assert [layer.name for layer in model.layers] == ["lstm", "lstm_1"], spec
