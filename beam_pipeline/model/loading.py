"""Loading a trained model from any form users have, with where it came from.

Formats (``format`` in the provenance):

- ``keras``: a Keras 3 ``.keras`` zip. Loaded as is.
- ``h5``: an ``.h5`` / ``.hdf5`` with the whole model. Its ``keras_version`` attribute says who
  wrote it. Keras 2 / tf.keras files go through the translation table of ``legacy.py``. Keras 3
  files have their *op layers* resolved: Keras 3 writes the ``keras.ops`` calls of a functional
  graph (``NotEqual`` for ``mask_zero`` masks, ``Any`` for a ``Masking`` layer, ``Add``,
  ``Multiply``, ``Tanh``... for arithmetic on tensors) into the ``.h5`` config without the module
  they come from, and then cannot read them back (``Unknown layer: 'NotEqual'``), or would read
  ``Add`` / ``Multiply`` as the merge *layers* of the same name. An entry whose config has no
  ``trainable`` key (every Keras layer writes one, an operation never does) is resolved to the
  ``keras.ops`` operation of that name, as the ``.keras`` format records it.
- ``savedmodel``: a TF SavedModel folder written by tf.keras (``model.save("dir")`` in TF 2.x).
  tf_keras reads it (its ``keras_metadata.pb`` holds the Keras config), writes it to a temporary
  Keras 2 ``.h5``, and that file goes through the ``h5`` path above, translations included:
  config and weights are the ones tf_keras read, so the values equal those of the ``.h5`` of the
  same model. A folder holding a ``Lambda`` layer is refused unless ``unsafe_deserialization``.

- ``weights.h5`` / ``h5 weights``: with ``model_fn`` (``--model_fn``), a weights-only file (Keras 3
  ``.weights.h5``, or a Keras 2 / tf.keras ``save_weights`` HDF5) loaded into the model the user's
  code builds (``builder.py``, ``weights.py``). The provenance records the weights file's sha256
  and Keras version, the builder, how the weights were matched to layers, and the warnings about
  Keras 2 defaults (``weights.keras2_warnings``).

Keras' ``safe_mode`` stays on unless ``unsafe_deserialization`` is set.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

from beam_pipeline import files
from beam_pipeline.model.checks import UnreadableModel, check_model_file
from beam_pipeline.recurrent import ModelError

FORMATS = ("keras", "h5", "savedmodel", "weights.h5", "h5 weights")
_UNSAFE = ("Only if you trust this file, pass --unsafe_deserialization to load it.")


@dataclass(frozen=True)
class Provenance:
    """Where a model came from and what the loader changed to run it under Keras 3."""

    framework: str  # "keras 2" (tf.keras / Keras 2) or "keras 3"
    framework_version: str  # the keras_version the file records ("" when it records none)
    format: str  # one of FORMATS
    translations: tuple[dict[str, str], ...] = field(default=())  # {"layer", "rule", "change"} per rewrite
    # With --model_fn: weights_sha256, builder (MODULE:FUNCTION or path:FUNCTION), builder_sha256 (path form),
    # weights_matched (by name / by topological order / by structure), warnings (Keras 2 defaults).
    weights: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "framework_version": self.framework_version, "format": self.format,
                "translations": [dict(t) for t in self.translations], **self.weights}


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # the Keras 3 model
    provenance: Provenance


def load_model(path: str, unsafe_deserialization: bool = False, model_fn: str | None = None) -> LoadedModel:
    """Loads a ``.keras``, ``.h5`` or SavedModel folder, local or ``gs://``, for inference; with
    ``model_fn`` (``MODULE:FUNCTION`` or ``path.py:FUNCTION``), the model that function builds, its
    weights read from the weights-only file at ``path``.

    Raises ``ModelError`` (naming ``path``) for a missing, unsupported or refused model."""
    if model_fn:
        return _load_weights_only(path, model_fn)
    if not files.exists_file_or_folder(path):
        raise ModelError(f"model file not found: {path}")
    with files.local_file_or_folder(path) as local:
        try:
            if not os.path.isdir(local):
                check_model_file(local)
            return _load_local(local, unsafe_deserialization)
        except UnreadableModel:
            raise
        except ModelError as e:
            raise ModelError(str(e).replace(local, path)) from e


def _load_weights_only(path: str, model_fn: str) -> LoadedModel:
    from beam_pipeline.model import builder, weights

    spec = builder.parse(model_fn)
    if path.endswith(".keras") or (not files.is_remote(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))):
        raise ModelError(f"--model {path} is a whole model: it needs no --model_fn (which is for weights-only files)")
    if not files.is_remote(path):
        prefix = weights.checkpoint_prefix(path)
        if prefix is not None:
            raise weights.refuse_checkpoint(path, prefix)
    if not files.exists(path):
        raise ModelError(f"--model weights file not found: {path}")
    model = builder.build(spec)
    with files.local_file_or_folder(path) as local:
        try:
            check_model_file(local, weights_only=True)
            framework, version, matched = weights.load(model, local)
        except ModelError as e:
            raise ModelError(str(e).replace(local, path)) from e
        sha = files.sha256_of_file_or_folder(local)
    warnings = weights.keras2_warnings(model, version) if framework == "keras 2" else []
    origin = {"weights_sha256": sha, "builder": spec.spec, "weights_matched": matched, "warnings": warnings}
    if spec.path is not None:
        origin["builder_sha256"] = spec.sha256
    fmt = "weights.h5" if matched.startswith("by structure") else "h5 weights"
    return LoadedModel(model, Provenance(framework, version, fmt, (), origin))


def _load_local(path: str, unsafe: bool) -> LoadedModel:
    if os.path.isdir(path):
        return _load_savedmodel(path, unsafe)
    if path.endswith((".h5", ".hdf5")):
        return _load_h5(path, unsafe)
    if path.endswith(".keras"):
        version = _keras_zip_version(path)
        return LoadedModel(_keras_load(path, unsafe), Provenance("keras 3", version, "keras"))
    raise ModelError(f"{path}: unsupported model format; use a .keras file (Keras 3), an .h5 file (Keras 2 or 3) "
                     "or a TF SavedModel folder (tf.keras).")


def _keras_load(path: str, unsafe: bool):
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except ValueError as e:
        if "safe_mode" in str(e) or "arbitrary code" in str(e):
            raise ModelError(f"{path}: the model holds Python code (a Lambda layer) and was refused by Keras "
                             f"safe_mode. {_UNSAFE}") from e
        raise _cannot_build(path, e) from e
    except Exception as e:  # a config Keras 3 cannot build: say so, with the file, not a stack trace
        raise _cannot_build(path, e) from e


def _cannot_build(path: str, e: Exception) -> ModelError:
    import keras

    lines = [line for line in str(e).strip().splitlines() if line.strip()]  # Keras repeats the whole config
    detail = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    detail = detail if len(detail) <= 500 else detail[:500] + " ..."
    return ModelError(f"{path}: Keras {keras.__version__} cannot build this model from its config "
                      f"({type(e).__name__}: {detail}). A custom layer cannot be loaded by this job; for a "
                      "built-in one, please report the layer named here.")


def _keras_zip_version(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            version = str(json.loads(z.read("metadata.json")).get("keras_version", ""))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ModelError(f"{path}: not a .keras file ({e})") from e
    if version.startswith(("1.", "2.")):
        raise ModelError(f"{path}: a .keras file written by tf.keras / Keras {version}; save it as .h5 "
                         "(model.save('model.h5')) or as a SavedModel folder, which this job translates.")
    return version


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _load_h5(path: str, unsafe: bool, version: str | None = None, fmt: str = "h5") -> LoadedModel:
    """An .h5 model; ``version`` overrides the file's keras_version (a SavedModel re-written as .h5)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        saved_version = _text(f.attrs.get("keras_version", ""))
    if raw is None:
        raise ModelError(f"{path}: this .h5 file holds weights only, no model config; save the whole model.")
    config = json.loads(_text(raw))
    version = saved_version if version is None else version
    if version.startswith("3."):
        framework, translations = "keras 3", resolve_op_layers(config)
    else:  # tf.keras / Keras 2 (and files too old to say: Keras 1 wrote no keras_version)
        from beam_pipeline.model import legacy

        try:
            framework, translations = "keras 2", legacy.translate(config)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from e
    to_load = path
    if translations:
        fd, to_load = tempfile.mkstemp(suffix=".h5")
        os.close(fd)
        shutil.copyfile(path, to_load)
        with h5py.File(to_load, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
            if framework == "keras 2":
                legacy.convert_cudnn_weights(f, translations)  # imported above, with the Keras 2 translation
    try:
        model = _keras_load(to_load, unsafe)
    except ModelError as e:
        raise ModelError(str(e).replace(to_load, path)) from e
    finally:
        if to_load != path:
            os.unlink(to_load)
    return LoadedModel(model, Provenance(framework, version, fmt, tuple(translations)))


@functools.cache
def _operations() -> dict[str, str]:
    """Class name -> module of every Keras 3 operation (``keras.ops``) that is not a layer."""
    import importlib
    import inspect
    import pkgutil

    import keras.src.ops as ops
    from keras.src.layers import Layer
    from keras.src.ops.operation import Operation

    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(ops.__path__):
        if info.name.endswith("_test"):
            continue
        module = importlib.import_module(f"{ops.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Operation) and not issubclass(obj, Layer)
                    and obj.__module__ == module.__name__):
                found.setdefault(name, module.__name__)
    return found


def resolve_op_layers(config: dict) -> list[dict[str, str]]:
    """Gives every operation entry of a Keras 3 ``.h5`` functional config the module Keras 3's own
    ``.keras`` format records for it (in place). Returns one entry per operation resolved."""
    operations = _operations()
    resolved = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            layers = node.get("layers")
            if isinstance(layers, list):
                for entry in layers:
                    if (isinstance(entry, dict) and "module" not in entry and isinstance(entry.get("config"), dict)
                            and "trainable" not in entry["config"] and entry.get("class_name") in operations):
                        module = operations[entry["class_name"]]
                        entry["module"], entry["registered_name"] = module, entry["class_name"]
                        resolved.append({"layer": str(entry.get("name")), "rule": "keras3_h5_operation",
                                         "change": f"{entry['class_name']} -> {module}.{entry['class_name']}"})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return resolved


def _savedmodel_metadata(path: str) -> list[dict]:
    """The Keras metadata of every object in a SavedModel folder (the root model first)."""
    metadata = os.path.join(path, "keras_metadata.pb")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelError(f"{path}: a folder, but not a TensorFlow SavedModel (no saved_model.pb).")
    if not os.path.exists(metadata):
        raise ModelError(f"{path}: a SavedModel not written by Keras (no keras_metadata.pb): it holds no Keras "
                         "layers to truncate. Save the Keras model itself (model.save).")
    from tf_keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    with open(metadata, "rb") as f:
        proto.ParseFromString(f.read())
    return [json.loads(node.metadata) for node in proto.nodes if node.metadata]


def _load_savedmodel(path: str, unsafe: bool) -> LoadedModel:
    nodes = _savedmodel_metadata(path)
    version = str(nodes[0].get("keras_version", "")) if nodes else ""
    if not unsafe and any(node.get("class_name") == "Lambda" for node in nodes):
        raise ModelError(f"{path}: the model holds Python code (a Lambda layer); it is refused in safe mode. "
                         + _UNSAFE)
    import tf_keras

    try:
        legacy_model = tf_keras.models.load_model(path, compile=False)
    except Exception as e:  # tf_keras raises many types for unreadable folders
        raise ModelError(f"{path}: tf_keras could not load this SavedModel: {e}") from e
    if not isinstance(legacy_model, tf_keras.Model):
        raise ModelError(f"{path}: the SavedModel does not hold a Keras model.")
    temp = tempfile.mkdtemp()
    try:
        h5 = os.path.join(temp, "model.h5")
        try:
            legacy_model.save(h5, save_format="h5")
        except Exception as e:  # e.g. a custom layer tf_keras revived without its config
            raise ModelError(f"{path}: this SavedModel cannot be re-read as a Keras model config: {e}") from e
        try:
            return _load_h5(h5, unsafe, version=version, fmt="savedmodel")
        except ModelError as e:
            raise ModelError(str(e).replace(h5, path)) from e
    finally:
        shutil.rmtree(temp, ignore_errors=True)
