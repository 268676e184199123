"""``--model_fn``: the user's own code that builds the model a weights-only file belongs to.

Running it is the user's decision, as ``--unsafe_deserialization`` is: nothing is imported unless
``--model_fn`` names it, and only what it names.

- ``MODULE:FUNCTION``: an importable module (installed, or shipped to the workers with
  ``--setup_file`` / a custom container). Works on every runner.
- ``path/to/file.py:FUNCTION``: that one file, imported by path (its folder is *not* put on
  ``sys.path``: the file may import installed packages only). Works where the workers read the
  same file system as the launcher: the DirectRunner, and a Flink or Spark cluster on this
  machine. Its sha256 is recorded at launch, and a worker that reads another file refuses it.

``FUNCTION`` takes no required argument and returns an uncompiled Keras 3 model, built (with an
``Input``), whose weights the weights file then fills.

Layer names: code that leaves them to Keras gets ``lstm``, ``lstm_1``... from counters Keras keeps per
thread, which go on from one build to the next in a process (the launcher, then in-process workers,
or several jobs: ``lstm_2``, ``lstm_3``). ``build`` imports the module and calls the function with those
counters as in a new process (a module imported once per process: as right after its import), so every
build, in every process, names the layers as the user's own script does (and as ``inspect`` prints
them); the counters then go on past every name the build took, so that names made later in the
process never repeat them.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from beam_pipeline.recurrent import ModelError

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Builder:
    """A parsed ``--model_fn``: a module or a ``.py`` path, and the function in it."""

    spec: str  # as given
    function: str
    module: str | None = None
    path: str | None = None

    @property
    def sha256(self) -> str | None:
        """The sha256 of the file (path form), else None."""
        if self.path is None:
            return None
        with open(self.path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


def parse(spec: str) -> Builder:
    """``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``; raises ``ModelError`` saying which form is expected."""
    where, _, function = spec.rpartition(":")
    usage = ("--model_fn takes MODULE:FUNCTION (an importable module) or path/to/file.py:FUNCTION, "
             f"got {spec!r}")
    if not where or not _FUNCTION.fullmatch(function):
        raise ModelError(usage)
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ModelError(f"--model_fn {spec}: file not found: {where} (a path works where the workers read the "
                             "launcher's files; elsewhere ship the code as a module and use MODULE:FUNCTION)")
        return Builder(spec, function, path=where)
    if not _MODULE.fullmatch(where):
        raise ModelError(usage)
    return Builder(spec, function, module=where)


def build(builder: Builder):
    """Imports the builder, calls it, and returns the Keras 3 model it builds. Raises ``ModelError``
    when it cannot be imported, fails, or does not return a built Keras 3 model."""
    import keras

    with fresh_names(_AFTER_IMPORT.get(builder.module or "")) as counters:
        try:
            if builder.path is not None:  # executed on every build
                name = "beam_pipeline_model_fn_" + re.sub(r"\W", "_", os.path.basename(builder.path)[:-3])
                module_spec = importlib.util.spec_from_file_location(name, builder.path)
                module = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(module)
            else:  # executed once per process: what its first import named is remembered for the next builds
                imported = builder.module in sys.modules
                module = importlib.import_module(builder.module)
                if not imported:
                    _AFTER_IMPORT[builder.module] = dict(counters)
        except Exception as e:
            raise ModelError(f"--model_fn {builder.spec}: cannot import {builder.path or builder.module}: "
                             f"{type(e).__name__}: {e}") from e
        function = getattr(module, builder.function, None)
        if not callable(function):
            raise ModelError(f"--model_fn {builder.spec}: {builder.path or builder.module} has no function "
                             f"{builder.function!r}")
        try:
            model = function()
        except Exception as e:
            raise ModelError(f"--model_fn {builder.spec}: the function raised {type(e).__name__}: {e}") from e
    if not isinstance(model, keras.Model):
        raise ModelError(f"--model_fn {builder.spec}: returned a {type(model).__module__}.{type(model).__name__}, "
                         "not a Keras 3 model (build it with `import keras`, Keras 3; a tf_keras model cannot run "
                         "here)")
    if not model.built or not getattr(model, "inputs", None):
        raise ModelError(f"--model_fn {builder.spec}: the model is not built; give it an Input "
                         "(keras.Input(shape) as the first layer or the functional model's input)")
    return model


_UIDS = "object_name_uids"  # Keras 3's automatic-name counters, in keras.src.backend.common.global_state
# A builder module's counters right after its first import in this process (the names its module-level
# layers took), where each later build of it starts: as the user's script, which imports it, then builds.
_AFTER_IMPORT: dict[str, dict[str, int]] = {}


@contextlib.contextmanager
def fresh_names(start: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Keras' automatic layer names, inside the block, as in a new process (``lstm``, ``lstm_1``, ...), or
    from the counters ``start``; yields those counters. After the block, each counter is at the larger of
    its value before and the block's, so that no automatic name is given twice in the process."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute(_UIDS) or {}
    counters = collections.defaultdict(int, start or {})
    global_state.set_global_attribute(_UIDS, counters)
    try:
        yield counters
    finally:
        merged = collections.defaultdict(int, before)
        for prefix, count in (global_state.get_global_attribute(_UIDS) or {}).items():
            merged[prefix] = max(merged[prefix], count)
        global_state.set_global_attribute(_UIDS, merged)
