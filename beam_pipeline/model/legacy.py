"""Keras 2 -> Keras 3: the differences the loader translates, one ``Rule`` each in ``TABLE``.

A model that comes from Keras 2 (an ``.h5`` whose ``keras_version`` attribute starts with ``2``,
or a TF SavedModel folder, which only tf.keras / Keras 2 writes) is loaded from its config by
Keras 3. Where Keras 3 reads a config value differently from Keras 2, the same config would
compute other numbers, or not load at all; each such difference is a rule here that rewrites the
layer config before Keras 3 sees it, and is reported in the model's provenance.

How the activation rule was found: ``tests/test_model_loading.py`` evaluates every activation name
tf_keras 2.21 accepts in both tf_keras and Keras 3.15 on a grid of inputs, and fails if the set of
names that differ is not the set translated here. Adding the next incompatibility found in the
wild is one ``Rule`` in ``TABLE`` plus one test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from beam_pipeline.recurrent import ModelError

ACTIVATION_KEYS = ("activation", "recurrent_activation")
PACKAGE = "beam_pipeline"


@keras.saving.register_keras_serializable(package=PACKAGE, name="keras2_hard_sigmoid")
def keras2_hard_sigmoid(x):
    """tf.keras / Keras 2 ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)``, in tf_keras' operation order."""
    return keras.ops.clip(keras.ops.add(keras.ops.multiply(x, 0.2), 0.5), 0.0, 1.0)


@dataclass(frozen=True)
class Rule:
    """One Keras 2 -> 3 difference: what Keras 2 meant, what Keras 3 would do, and the rewrite."""

    name: str
    keras2: str  # what the config means in Keras 2
    keras3: str  # what Keras 3 does with the same config, unchanged
    fix: str  # what the loader writes instead
    apply: Callable[[dict], list[str]]  # rewrites one layer entry ({"class_name", "config"}) in place; returns
    # what it changed


def _drop_time_major(node: dict) -> list[str]:
    config = node["config"]
    if "time_major" not in config:
        return []
    if config["time_major"]:
        raise ModelError(f"layer {config.get('name')!r} was saved with time_major=True, which Keras 3 cannot "
                         "reproduce; re-save the model with time_major=False.")
    del config["time_major"]
    return ["time_major=False removed"]


def _activation(keras2_name: str, function: Callable) -> Callable[[dict], list[str]]:
    registered = keras.saving.get_registered_name(function)
    serialized = keras.activations.serialize(function)  # the form Keras 3 resolves through its registry

    def apply(node: dict) -> list[str]:
        config, changed = node["config"], []
        for key in ACTIVATION_KEYS:
            value = config.get(key)
            if isinstance(value, dict) and value.get("class_name") == "function":  # tf_keras' dict form
                value = value.get("config")
            if value == keras2_name:
                config[key] = dict(serialized)
                changed.append(f"{key}={keras2_name!r} -> {registered!r}")
        return changed

    return apply


SPATIAL_DROPOUT = ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")


def _spatial_dropout_keys(node: dict) -> list[str]:
    if node.get("class_name") not in SPATIAL_DROPOUT:
        return []
    dropped = [key for key in ("trainable", "noise_shape") if key in node["config"]]
    for key in dropped:
        del node["config"][key]
    return [f"{key} removed" for key in dropped]


def _gru_reset_after(node: dict) -> list[str]:
    if node.get("class_name") != "GRU" or "reset_after" in node["config"]:
        return []
    node["config"]["reset_after"] = False  # Keras before 2.1.3 had only the reset-before GRU
    return ["reset_after=False added (the Keras 2 GRU without the key)"]


# CuDNN layers as tf.keras / Keras 2 defined them: the plain layer with these settings computes the same.
CUDNN = {
    "CuDNNLSTM": ("LSTM", {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True}),
    "CuDNNGRU": ("GRU", {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
                         "reset_after": True}),
}


def _cudnn_layer(node: dict) -> list[str]:
    name = node.get("class_name")
    if name not in CUDNN:
        return []
    plain, settings = CUDNN[name]
    node["class_name"] = plain
    node["config"].update(settings, dropout=0.0, recurrent_dropout=0.0, unroll=False)
    return [f"{name} -> {plain}({', '.join(f'{k}={v!r}' for k, v in settings.items())}); weights converted"]


def _module_of_revived_layer(node: dict) -> list[str]:
    """tf_keras writes a Bidirectional's ``backward_layer`` without the ``module`` its ``layer`` has
    when the model was revived from a SavedModel; Keras 3 then cannot resolve the class. A built-in
    layer's module is ``keras.layers``."""
    if node.get("class_name") != "Bidirectional":
        return []
    changed = []
    for key in ("layer", "backward_layer"):
        inner = node["config"].get(key)
        if (isinstance(inner, dict) and inner.get("module") is None
                and hasattr(keras.layers, str(inner.get("class_name")))):
            inner["module"] = "keras.layers"
            inner.setdefault("registered_name", None)
            changed.append(f"{key}: module keras.layers added ({inner['class_name']})")
    return changed


TABLE: tuple[Rule, ...] = (
    Rule(
        name="time_major",
        keras2="recurrent layers saved a time_major flag (False unless the input was (timesteps, batch, ...))",
        keras3="the key is unknown: the layer refuses the config",
        fix="time_major=False is removed (same computation); time_major=True is refused with a message",
        apply=_drop_time_major,
    ),
    Rule(
        name="hard_sigmoid",
        keras2="hard_sigmoid(x) = clip(0.2x + 0.5, 0, 1)",
        keras3="hard_sigmoid(x) = relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1): other values for every |x| < 3",
        fix="the registered function beam_pipeline>keras2_hard_sigmoid, the Keras 2 formula",
        apply=_activation("hard_sigmoid", keras2_hard_sigmoid),
    ),
    Rule(
        name="cudnn_layer",
        keras2="CuDNNLSTM / CuDNNGRU: LSTM with sigmoid, GRU reset_after with sigmoid, on cuDNN; biases (8u,) / (6u,),"
               " kernels in cuDNN's layout",
        keras3="no such layer: the model does not load",
        fix="the plain LSTM / GRU with those settings, and its weights converted as tf.keras converts them "
            "when it loads a CuDNN layer's weights into the plain layer",
        apply=_cudnn_layer,
    ),
    Rule(
        name="spatial_dropout_keys",
        keras2="SpatialDropout1D/2D/3D configs hold trainable and noise_shape",
        keras3="the constructor takes neither: the model does not load",
        fix="both keys removed (a dropout layer computes nothing at inference)",
        apply=_spatial_dropout_keys,
    ),
    Rule(
        name="gru_reset_after",
        keras2="a GRU config without reset_after (Keras before 2.1.3) is the reset-before GRU, bias (3u,)",
        keras3="the missing key means reset_after=True: the weights do not fit, or the values differ",
        fix="reset_after=False written into the config",
        apply=_gru_reset_after,
    ),
    Rule(
        name="revived_module",
        keras2="a Bidirectional revived from a SavedModel is written with no module for its backward_layer",
        keras3="no module: the class is not found",
        fix="module keras.layers for a built-in layer",
        apply=_module_of_revived_layer,
    ),
)


def layer_configs(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every layer entry (``{"class_name", "config", ...}``) below ``node`` (a serialized model or
    layer), with its name path (``outer/inner`` for a layer wrapped in another, such as a
    Bidirectional's LSTM)."""
    if isinstance(node, dict):
        inner = node.get("config")
        if isinstance(node.get("class_name"), str) and isinstance(inner, dict):
            name = inner.get("name") or node.get("name") or node["class_name"]
            path = f"{path}/{name}" if path else str(name)
            yield path, node
            node = inner
        for value in node.values():
            yield from layer_configs(value, path)
    elif isinstance(node, list):
        for value in node:
            yield from layer_configs(value, path)


def translate(config: dict) -> list[dict[str, str]]:
    """Applies every rule of ``TABLE`` to every layer config in ``config`` (in place).

    Returns one ``{"layer", "rule", "change"}`` entry per rewrite made, in model order."""
    applied = _sequential_forms(config)
    for path, entry in layer_configs(config.get("config", config)):  # paths start below the model
        for rule in TABLE:
            for change in rule.apply(entry):
                applied.append({"layer": path, "rule": rule.name, "change": change})
    return applied


def _sequential_forms(config: dict) -> list[dict[str, str]]:
    """Sequential models as Keras 2.0-2.2 wrote them, in the form Keras 3 reads (in place):

    - Keras 2.0 wrote the layer list as the whole config; Keras 3 expects ``{"name", "layers"}``.
    - Keras up to 2.2 wrote no ``InputLayer`` entry: the first layer carries ``batch_input_shape``,
      which Keras 3's legacy loader would turn into an ``input_shape`` *with* the batch axis (one axis
      too many). The input layer tf.keras writes today is inserted instead."""
    applied = []
    for node in [config, *(entry for _, entry in layer_configs(config.get("config", config)))]:
        if not isinstance(node, dict) or node.get("class_name") != "Sequential":
            continue
        name = "sequential"
        if isinstance(node.get("config"), list):
            node["config"] = {"name": name, "layers": node["config"]}
            applied.append({"layer": name, "rule": "sequential_list", "change": "layer list -> {name, layers}"})
        layers = node["config"].get("layers") if isinstance(node.get("config"), dict) else None
        if not layers or not isinstance(layers[0], dict) or layers[0].get("class_name") == "InputLayer":
            continue
        first = layers[0].get("config", {})
        if "batch_input_shape" not in first:
            continue
        shape = first.pop("batch_input_shape")
        input_name = f"{first.get('name', 'layer')}_input"
        layers.insert(0, {"class_name": "InputLayer", "config": {
            "batch_input_shape": shape, "dtype": first.get("dtype") or "float32", "sparse": False, "name": input_name}})
        applied.append({"layer": str(node["config"].get("name", name)), "rule": "sequential_input_layer",
                        "change": f"InputLayer {input_name} with batch_input_shape {shape} inserted"})
    return applied


def convert_cudnn_weights(h5, translations: list[dict[str, str]]) -> None:
    """Rewrites, in the open ``.h5`` file ``h5`` (a temporary copy), the weights of every layer the
    ``cudnn_layer`` rule turned from CuDNNLSTM / CuDNNGRU into LSTM / GRU, as tf.keras converts them
    when it loads a CuDNN layer's weights into the plain layer (``hdf5_format._convert_rnn_weights``):
    each gate's input kernel from cuDNN's to Keras' layout, recurrent kernels transposed per gate,
    LSTM biases (input + recurrent) summed, GRU biases reshaped to ``(2, 3u)``."""
    import numpy as np

    WEIGHTS = ("kernel:0", "recurrent_kernel:0", "bias:0")  # noqa: N806
    names = {}  # weight group name -> the plain layer (a Bidirectional's halves are forward_/backward_NAME)
    for t in translations:
        if t["rule"] == "cudnn_layer":
            for prefix in ("", "forward_", "backward_"):
                names[prefix + t["layer"].rsplit("/", 1)[-1]] = "LSTM" if t["change"].startswith("CuDNNLSTM") else "GRU"
    if not names:
        return

    def visit(group):
        for key, item in group.items():
            if not hasattr(item, "items"):
                continue
            datasets = {k: v for k, v in item.items() if not hasattr(v, "items")}
            if key in names and set(WEIGHTS) <= set(datasets):
                gates = 4 if names[key] == "LSTM" else 3
                kernel, recurrent, bias = (np.asarray(datasets[k]) for k in WEIGHTS)
                kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, gates)])
                recurrent = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
                bias = np.sum(np.split(bias, 2), axis=0) if gates == 4 else bias.reshape(2, -1)
                for k, value in zip(WEIGHTS, (kernel, recurrent, bias)):
                    del item[k]
                    item.create_dataset(k, data=value)
            else:
                visit(item)

    visit(h5["model_weights"] if "model_weights" in h5 else h5)
