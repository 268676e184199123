"""Weights-only files, loaded into the model ``--model_fn`` builds. Nothing is assigned until every
weight of the file has found its place in the model with its shape: a layer missing, extra or of
another shape is a ``ModelError`` naming the layer and both shapes, never a partial load.

- Keras 3 ``.weights.h5`` (``model.save_weights``): its groups follow the model's structure
  (``layers/lstm/cell/vars/0``). Checked against the file Keras 3 writes for the built model (same
  paths, same shapes), then loaded by Keras 3 itself. The optimizer's variables, which the file of a
  compiled (trained) model holds too, are not the model's: ignored, as Keras' ``load_weights`` does.
- Keras 2 / tf.keras ``save_weights`` HDF5 (``layer_names``, ``weight_names`` and
  ``keras_version`` attributes; ``ModelCheckpoint(save_weights_only=True)``): matched to the model's
  layers that hold weights *by topological order*, as Keras 2's ``load_weights`` does by default,
  or, when that does not fit, *by name* where both hold the same layer names; weights in the legacy
  order (trainable, then non-trainable, as both Kerases write them).
- TensorFlow-format checkpoints (``ckpt.index`` + ``ckpt.data-*``): Keras 3 cannot read them;
  refused, with how to convert one.

Keras 2 weights under Keras 3 code: the code may rely on a default that Keras 3 changed. The file
cannot say what the original code set, so ``keras2_warnings`` says, per layer, what Keras 2 would
have computed with its defaults and what to change to get it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from beam_pipeline.recurrent import ModelError

_CONVERT_CKPT = ("Keras 3 cannot read TensorFlow-format checkpoints. Convert it once with the Keras that wrote it: "
                 "build the model with the same code under tf.keras (`import tf_keras` or TF 2.15's tf.keras), "
                 "`model.load_weights('{prefix}')`, then `model.save_weights('model.weights.h5')` (an HDF5 file), "
                 "and pass that file as --model.")


def checkpoint_prefix(path: str) -> str | None:
    """The prefix of a TensorFlow-format checkpoint at ``path`` (the prefix itself, its ``.index``
    or a ``.data-*`` file, or a folder with a ``checkpoint`` file), else None."""
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            with open(state, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("model_checkpoint_path:"):
                        return os.path.join(path, line.split(":", 1)[1].strip().strip('"'))
        return None
    for marker in (".index", ".data-"):
        if marker in os.path.basename(path):
            return path[:path.rindex(marker)]
    return path if os.path.isfile(path + ".index") else None


def refuse_checkpoint(path: str, prefix: str) -> ModelError:
    return ModelError(f"--model {path}: a TensorFlow-format checkpoint ({prefix}.index + {prefix}.data-*). "
                      + _CONVERT_CKPT.format(prefix=prefix))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def file_kind(path: str) -> tuple[str, str]:
    """(``"keras3"`` or ``"legacy"``, the keras_version the file records or "") of an HDF5 weights file."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" in group.attrs:
            return "legacy", _text(group.attrs.get("keras_version", f.attrs.get("keras_version", "")))
        if "vars" in f or "layers" in f:
            return "keras3", ""
    raise ModelError(f"{path}: an HDF5 file, but not a Keras weights file (neither Keras 3's .weights.h5 groups nor "
                     "the layer_names of a Keras 2 save_weights file)")


def load(model, path: str) -> tuple[str, str, str]:
    """Fills ``model``'s weights from the weights file at local ``path``.

    Returns (framework, keras_version the file records, how weights were matched to layers)."""
    kind, version = file_kind(path)
    if kind == "keras3":
        _load_keras3(model, path)
        return "keras 3", version, "by structure (Keras 3 .weights.h5)"
    matched = _load_legacy(model, path)
    return ("keras 2" if not version.startswith("3.") else "keras 3"), version, matched


def _datasets(path: str) -> tuple[dict[str, tuple], dict[str, str]]:
    """(dataset path -> shape, vars group path -> the layer name Keras 3 recorded for it)."""
    import h5py

    shapes, names = {}, {}
    with h5py.File(path, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                shapes[name] = tuple(item.shape)
            elif name.endswith("vars") and "name" in item.attrs:
                names[name] = _text(item.attrs["name"])
        f.visititems(visit)
    return shapes, names


def _layer_of(dataset: str, names: dict[str, str]) -> str:
    """``encoder/lstm_1/lstm_cell`` (variable 1) for ``layers/sequential/layers/lstm/cell/vars/1``."""
    parts = dataset.split("/")
    chain = [names[p] for p in ("/".join([*parts[:i], "vars"]) for i in range(1, len(parts) - 1)) if p in names]
    label = "/".join(chain) or "the model"
    return f"layer {label!r} (variable {parts[-1]}, {dataset})"


# The groups of a Keras 3 .weights.h5 that hold the model: its layers' variables and its own. A compiled
# model's file holds its optimizer's variables too (``optimizer/vars/...``: the step count, the learning
# rate, a slot per weight), which an inference job never uses and Keras' own ``load_weights`` into an
# uncompiled model skips.
MODEL_GROUPS = ("layers", "vars")


def _model_datasets(path: str) -> tuple[dict[str, tuple], dict[str, str]]:
    """``_datasets`` of the groups that hold the model (``MODEL_GROUPS``); the optimizer's are left out."""
    shapes, names = _datasets(path)
    return {d: s for d, s in shapes.items() if d.split("/", 1)[0] in MODEL_GROUPS}, names


def _load_keras3(model, path: str) -> None:
    from keras.src.saving import saving_lib

    temp = tempfile.mkdtemp()
    try:
        expected = os.path.join(temp, "expected.weights.h5")
        model.save_weights(expected)
        want, want_names = _model_datasets(expected)
        got, got_names = _model_datasets(path)
        problems = [f"{_layer_of(d, want_names)}: the model has shape {want[d]}, the file {got[d]}"
                    for d in want if d in got and want[d] != got[d]]
        problems += [f"{_layer_of(d, want_names)}: the model has shape {want[d]}, the file has no such weight"
                     for d in want if d not in got]
        problems += [f"{_layer_of(d, got_names)}: the file has shape {got[d]}, the model has no such weight"
                     for d in got if d not in want]
        if problems:
            raise _mismatch(path, problems)
        local = path
        if not path.endswith(".weights.h5"):  # Keras 3 reads its format under that name only
            local = os.path.join(temp, "given.weights.h5")
            shutil.copyfile(path, local)
        optimizer = getattr(model, "optimizer", None)  # a builder that compiles: its optimizer is not loaded
        saving_lib.load_weights_only(model, local, objects_to_skip=[optimizer] if optimizer is not None else None)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _mismatch(path: str, problems: list[str]) -> ModelError:
    shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
    return ModelError(f"--model {path}: the weights do not fit the model --model_fn builds; nothing was loaded. "
                      + "; ".join(shown) + ". Build the model exactly as the one that saved the weights "
                      "(layer classes, units, input features, GRU reset_after).")


def _legacy_weights(layer) -> list:
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _load_legacy(model, path: str) -> str:
    """Topological order, as Keras 2's ``load_weights`` by default, when it fits; else by name, when the
    file and the model hold the same layer names and that fits (the order does not depend on the names
    Keras generates, which differ from one build to the next in one process). Returns which."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        saved: dict[str, list[tuple[str, np.ndarray]]] = {}
        for name in (_text(n) for n in group.attrs["layer_names"]):
            weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
            if weight_names:
                saved[name] = [(w, np.asarray(group[name][w])) for w in weight_names]
    layers = [layer for layer in model.layers if _legacy_weights(layer)]
    names = [layer.name for layer in layers]
    if len(layers) == len(saved):
        assign, problems = _pair(list(zip(layers, saved)), saved)
        if not problems:
            _assign(assign)
            return "by topological order"
    else:
        problems = [f"the model has {len(layers)} layers with weights ({', '.join(names)}), the file {len(saved)} "
                    f"({', '.join(saved)})"]
    if set(names) == set(saved) and len(set(names)) == len(names):
        assign, by_name = _pair([(layer, layer.name) for layer in layers], saved)
        if not by_name:
            _assign(assign)
            return "by name"
        problems = by_name
    raise _mismatch(path, problems)


def _pair(pairs: list, saved: dict) -> tuple[list, list[str]]:
    """(variable, value) for every weight of the (model layer, file layer name) pairs, and the problems."""
    problems, assign = [], []
    for layer, saved_name in pairs:
        variables, values = _legacy_weights(layer), saved[saved_name]
        label = f"layer {layer.name!r}" + ("" if saved_name == layer.name else f" (file layer {saved_name!r})")
        if len(variables) != len(values):
            problems.append(f"{label}: the model has {len(variables)} weights "
                            f"{[tuple(v.shape) for v in variables]}, the file {len(values)} "
                            f"{[v.shape for _, v in values]}")
            continue
        for variable, (weight_name, value) in zip(variables, values):
            if tuple(variable.shape) != value.shape:
                problems.append(f"{label}, weight {weight_name}: the model has shape {tuple(variable.shape)}, "
                                f"the file {value.shape}" + _gru_hint(layer, value.shape))
            assign.append((variable, value))
    return assign, problems


def _assign(assign: list) -> None:
    for variable, value in assign:
        variable.assign(value)


def _gru_hint(layer, shape: tuple) -> str:
    import keras

    rnn = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    if isinstance(rnn, keras.layers.GRU) and len(shape) in (1, 2) and shape[-1] == 3 * rnn.units:
        flag = "False" if len(shape) == 1 else "True"
        return f" (a GRU bias of this shape is reset_after={flag}: build the GRU with reset_after={flag})"
    return ""


def keras2_defaults(version: str) -> tuple[str, str, bool]:
    """(who wrote a file of this keras_version, in words; its LSTM/GRU recurrent_activation default; its GRU
    reset_after default). Standalone Keras up to 2.3 and tf.keras of TF 1.x: hard_sigmoid, False; tf.keras
    2.x: sigmoid, True. ``2.2.4-tf`` was written by TF 1.13-1.15 and by TF 2.0-2.1 alike: the older defaults
    are assumed (the warning says both)."""
    numbers = [int(p) for p in version.split("-")[0].split(".")[:3] if p.isdigit()]
    if "-tf" not in version and numbers < [2, 4]:
        return f"standalone Keras {version or '(version not recorded)'}", "hard_sigmoid", False
    if "-tf" in version and numbers < [2, 2, 4]:
        return f"tf.keras {version} (TF 1.x)", "hard_sigmoid", False
    if "-tf" in version and numbers == [2, 2, 4]:
        return (f"tf.keras {version} (TF 1.13-1.15, whose defaults these are; TF 2.0-2.1 wrote the same version "
                "with sigmoid and reset_after=True)"), "hard_sigmoid", False
    return f"tf.keras {version}", "sigmoid", True


def _recurrent_layers(model) -> list:
    """Every recurrent layer of ``model``, nested models and both halves of a Bidirectional included."""
    import keras

    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.RNN) and not isinstance(layer, keras.layers.Bidirectional):
            found.append(layer)
    return found


def keras2_warnings(model, version: str) -> list[str]:
    """What a Keras 2 weights file run under the Keras 3 code of ``model`` may compute differently from
    Keras 2: each LSTM/GRU setting that is Keras 3's default where the Keras that wrote the file
    defaulted to another, and every Keras 3 ``hard_sigmoid`` (a formula other than Keras 2's)."""
    import keras

    writer, activation, reset_after = keras2_defaults(version)
    keras2_fn = ("beam_pipeline.model.legacy.keras2_hard_sigmoid (registered as "
                 "'beam_pipeline>keras2_hard_sigmoid')")
    warnings = []
    for rnn in _recurrent_layers(model):
        cell = rnn.cell
        kind = type(rnn).__name__
        if isinstance(rnn, (keras.layers.LSTM, keras.layers.GRU)):
            if cell.recurrent_activation is keras.activations.sigmoid and activation == "hard_sigmoid":
                warnings.append(
                    f"layer {rnn.name!r} ({kind}): recurrent_activation='sigmoid' is Keras 3's default, but {writer}, "
                    "which wrote the weights, defaulted to 'hard_sigmoid' (clip(0.2x + 0.5, 0, 1)). If the original "
                    f"code did not set it, Keras 2 computed other values: build the layer with "
                    f"recurrent_activation={keras2_fn}")
        if isinstance(rnn, keras.layers.GRU) and cell.reset_after and not reset_after:
            warnings.append(
                f"layer {rnn.name!r} (GRU): reset_after=True is Keras 3's default, but {writer}, which wrote the "
                "weights, defaulted to reset_after=False: if the original code did not set it, build the GRU with "
                "reset_after=False")
        for key in ("activation", "recurrent_activation"):
            if getattr(cell, key, None) is keras.activations.hard_sigmoid:
                warnings.append(
                    f"layer {rnn.name!r} ({kind}): {key}='hard_sigmoid' is Keras 3's relu6(x + 3) / 6, not Keras 2's "
                    f"clip(0.2x + 0.5, 0, 1), which {writer} computed: for Keras 2's values use {keras2_fn}")
    return warnings
