"""Keras 2 -> Keras 3: the differences the loader translates, one ``Rule`` each in ``TABLE``.

A model that comes from Keras 2 (an ``.h5`` whose ``keras_version`` attribute starts with ``2``,
or a TF SavedModel folder, which only tf.keras / Keras 2 writes) is loaded from its config by
Keras 3. Where Keras 3 reads a config value differently from Keras 2, the same config would
compute other numbers, or not load at all; each such difference is a rule here that rewrites the
layer config before Keras 3 sees it, and is reported in the model's provenance.

How the table was found: ``tests/test_legacy_translation.py`` evaluates every activation name
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
    apply: Callable[[dict], list[str]]  # rewrites one layer's config in place; returns what it changed


def _drop_time_major(config: dict) -> list[str]:
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

    def apply(config: dict) -> list[str]:
        changed = []
        for key in ACTIVATION_KEYS:
            value = config.get(key)
            if isinstance(value, dict) and value.get("class_name") == "function":  # tf_keras' dict form
                value = value.get("config")
            if value == keras2_name:
                config[key] = dict(serialized)
                changed.append(f"{key}={keras2_name!r} -> {registered!r}")
        return changed

    return apply


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
)


def layer_configs(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every layer config below ``node`` (a serialized model or layer), with its name path
    (``outer/inner`` for a layer wrapped in another, such as a Bidirectional's LSTM)."""
    if isinstance(node, dict):
        inner = node.get("config")
        if isinstance(node.get("class_name"), str) and isinstance(inner, dict):
            name = inner.get("name") or node.get("name") or node["class_name"]
            path = f"{path}/{name}" if path else str(name)
            yield path, inner
            node = inner
        for value in node.values():
            yield from layer_configs(value, path)
    elif isinstance(node, list):
        for value in node:
            yield from layer_configs(value, path)


def translate(config: dict) -> list[dict[str, str]]:
    """Applies every rule of ``TABLE`` to every layer config in ``config`` (in place).

    Returns one ``{"layer", "rule", "change"}`` entry per rewrite made, in model order."""
    applied = []
    for path, layer_config in layer_configs(config.get("config", config)):  # paths start below the model
        for rule in TABLE:
            for change in rule.apply(layer_config):
                applied.append({"layer": path, "rule": rule.name, "change": change})
    return applied
