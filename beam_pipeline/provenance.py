"""What computed the values: the one definition of "the same job's output".

Two outputs may share rows (``--previous``), and an existing ``--output`` may be written over without
``--overwrite``, only when every field of ``VALUE_FIELDS`` is equal in their ``embedding_job``
provenance. The model enters through ``submodel_sha256``: a digest of the truncated sub-model itself
(every operation from the input up to the target layer: its class, its config with layer names
replaced by their position, its weights' bytes, and the source of classes that are not Keras' own),
the loader's translations and the Keras version, so that a builder (``--model_fn``) whose code changes
a value changes the digest in every form (``module:function`` or ``path.py:function``), while the same
model saved in another file, format or folder, or built with other automatic layer names, does not.

Prefixes are compared after ``normalize_prefix``.
"""

from __future__ import annotations

import hashlib
import inspect as _inspect
import json
import os
import posixpath
from typing import Any

# The provenance fields (``embedding_job``) that decide a value; all equal: the same job's output.
# Not compared: paths (``model``, ``tokenizer``: the same file may move), ``model_sha256`` (the bytes of the
# file given: a weights-only file with other builder code computes other values, the same model re-saved the
# same ones; ``submodel_sha256`` says which), ``layer`` (a name Keras may number differently in another
# process; the digest holds the target), ``version`` (a release that changes values changes one of these).
VALUE_FIELDS = ("submodel_sha256", "mode", "columns", "dtype", "maxlen", "padding", "truncating", "long_docs",
                "input", "tokenizer_sha256", "engine", "engine_tolerance")


def differing_fields(previous: dict, current: dict) -> list[str]:
    """The ``VALUE_FIELDS`` whose values differ between two ``embedding_job`` provenances."""
    return [k for k in VALUE_FIELDS if previous.get(k) != current.get(k)]


def value_fields(provenance: dict) -> dict:
    return {k: provenance.get(k) for k in VALUE_FIELDS}


def normalize_prefix(prefix: str) -> str:
    """One spelling per prefix: local ones absolute, without ``.``, ``..``, ``//`` or a trailing ``/``;
    ``scheme://bucket/path`` with the same rules applied to the path."""
    if "://" in prefix:
        scheme, rest = prefix.split("://", 1)
        bucket, _, path = rest.partition("/")
        path = posixpath.normpath("/" + path).lstrip("/") if path.strip("/") else ""
        return f"{scheme}://{bucket}/{path}" if path else f"{scheme}://{bucket}"
    return os.path.normpath(os.path.abspath(prefix))


def _keras():
    import keras

    return keras


def _names(operations: list) -> dict[str, str]:
    """Every layer name inside ``operations`` (nested models' layers too) -> ``#k`` by first appearance."""
    names: dict[str, str] = {}
    for op in operations:
        inner = op._flatten_layers() if hasattr(op, "_flatten_layers") else [op]
        for layer in [op, *inner]:
            name = getattr(layer, "name", None)
            if isinstance(name, str) and name not in names:
                names[name] = f"#{len(names)}"
    return names


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_renamed(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def _class_source(cls: type) -> str:
    """The source of a class that is not Keras' own (a user's layer: its ``call`` decides values)."""
    module = getattr(cls, "__module__", "") or ""
    if module.startswith(("keras.", "keras_", "tf_keras.", "tensorflow.")):
        return ""
    try:
        return _inspect.getsource(cls)
    except (OSError, TypeError):
        return "<source unavailable>"


def _config(op) -> Any:
    try:
        return op.get_config()
    except Exception as e:  # an operation that cannot say its config: its class and source stand for it
        return {"unserializable": type(e).__name__}


def submodel_digest(model, layer, translations: list | tuple = ()) -> str:
    """sha256 of what computes ``layer``'s values in ``model`` (see the module docstring)."""
    from beam_pipeline import recurrent

    keras = _keras()
    operations = recurrent.layers_up_to(model, layer)
    names = _names(operations)
    digest = hashlib.sha256()
    header = {"keras": ".".join(keras.__version__.split(".")[:2]), "translations": list(translations)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for op in operations:
        cls = type(op)
        config = _config(op)
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k != "name"}
        part = {"class": f"{cls.__module__}.{cls.__qualname__}", "config": _renamed(config, names),
                "source": hashlib.sha256(_class_source(cls).encode()).hexdigest()}
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        for weight in getattr(op, "weights", []):
            value = keras.ops.convert_to_numpy(weight)
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()
