"""Ways to run the truncated sub-model over one padded batch, behind one small interface.

An engine takes the batch ``Embedder.pad`` builds (``(B, T)`` token ids, right-padded for models
masked by ``ids != 0`` (``T`` <= maxlen when trimmed), padded as trained to ``maxlen`` otherwise)
and returns the same list of arrays as the Keras sub-model (``recurrent.build_submodel``):
``[vector]``, ``[sequence]`` or the states.

- ``keras``: the sub-model as a TensorFlow graph function (the reference every other engine is
  checked against);
- ``xla``: the same function XLA-compiled, per batch shape, once the shape has spent on the graph
  function what its compile cost at calibration (ski rental);
- ``onnx``: an ONNX graph built from the layers' weights (``Gather`` for the Embedding, ONNX
  ``LSTM`` / ``GRU`` / ``RNN`` ops, ``sequence_lens`` as the mask) run by ONNX Runtime; for unmasked
  pre-padded unidirectional models it starts every document from the cached state its padding
  prefix reaches and reads only its real tokens;
- ``table``: for one recurrent layer fed by an Embedding, the input projection precomputed per
  vocabulary row (``E @ W + b``) and gathered in an XLA-compiled time loop.

Each engine says why it cannot run a model exactly (``why_not``) and then is not tried. With
``--engine auto``, ``choose`` runs every eligible engine on the first real batch, drops any whose
outputs differ from the Keras graph by more than ``TOLERANCE``, and keeps the fastest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

TOLERANCE = 1e-5  # largest absolute difference from the Keras graph an engine may show at calibration
CHOICES = ("auto", "keras", "xla", "onnx", "table")


class EngineError(RuntimeError):
    """A forced engine that cannot run the model, or computes it differently from Keras."""


@dataclass
class Context:
    """What an engine may look at: the model, the target layer and how batches are padded."""

    model: Any
    layer: Any
    info: Any  # recurrent.LayerInfo
    mode: str
    maxlen: int
    padding: str  # how batches are padded, unless the mask is ids != 0 (then always right-padded)
    device: str  # "cpu" or "gpu"
    input_dtype: str  # dtype of the padded batch
    model_dtype: str
    one_hot_depth: int | None
    text_input: bool
    input_shape: tuple
    jit: bool  # --jit auto: XLA may be tried
    submodel: Any = None
    trimmed: bool = False  # batches may be narrower than maxlen (length bucketing of an ids != 0 mask)
    extra: dict = field(default_factory=dict)  # shared between engines (the graph function)


def in_length_sorted_chunks(batch: np.ndarray, lengths: np.ndarray, chunk: int, read) -> list[np.ndarray]:
    """Runs ``read(rows of batch, their lengths)`` over the documents sorted by length, ``chunk`` at a
    time, and puts each output row back in the batch's order."""
    order = np.argsort(lengths, kind="stable")
    result: list[np.ndarray] | None = None
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        part = read(batch[rows], lengths[rows])
        if result is None:
            result = [np.empty((len(batch), *p.shape[1:]), np.float32) for p in part]
        for full, p in zip(result, part):
            full[rows] = p
    return result


def as_arrays(outputs) -> list[np.ndarray]:
    """A model's outputs as a list of NumPy arrays (a one-output model returns a bare tensor)."""
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(t) for t in outputs]
    return [np.asarray(outputs)]


class Engine:
    """Runs padded batches; ``why_not`` says (as a sentence) why a model cannot be run exactly."""

    name = ""
    # Timesteps the last ``run`` computed (rows x steps), set by engines that do not run the padded
    # batch as it is (the padding-prefix start reads each document's tokens only); None: the batch's size.
    timesteps_run: int | None = None

    @classmethod
    def why_not(cls, ctx: Context) -> str | None:
        return None

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def warm_up(self, batch: np.ndarray) -> list[np.ndarray]:
        """The first run on a batch shape (tracing, compiling); returns its outputs."""
        return self.run(batch)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


def context_for(model, layer, mode: str, maxlen: int, padding: str, device: str = "cpu", jit: bool = True) -> Context:
    """The Context ``Embedder`` builds, for checking a forced engine before any worker starts."""
    from beam_pipeline import recurrent

    depth = recurrent.one_hot_depth(model)
    model_dtype = str(model.inputs[0].dtype)
    return Context(model=model, layer=layer, info=recurrent.describe_layer(layer, model), mode=mode, maxlen=maxlen,
                   padding=padding, device=device, input_dtype="int32" if depth else model_dtype,
                   model_dtype=model_dtype, one_hot_depth=depth, text_input=recurrent.takes_text(model),
                   input_shape=tuple(model.inputs[0].shape[1:]), jit=jit)


# Every engine's name, in a fixed order, and "reused" for rows copied from --previous (transforms/reuse.py):
# a batch's rows carry where each came from as its index here (uint8 codes: counted with one bincount,
# carried through takes without Python strings).
NAMES = ("keras", "xla", "onnx", "table", "reused")


def codes(name: str, n: int) -> np.ndarray:
    """``(n,)`` uint8: ``name``'s code, once per row."""
    return np.full(n, NAMES.index(name), dtype=np.uint8)


def count_codes(row_engines: np.ndarray) -> dict[str, int]:
    """Documents per engine name in an array of codes (engines with none left out)."""
    counts = np.bincount(row_engines, minlength=len(NAMES))
    return {name: int(n) for name, n in zip(NAMES, counts) if n}


def registry() -> dict[str, type[Engine]]:
    from beam_pipeline.engines.keras_graph import KerasEngine, XlaEngine
    from beam_pipeline.engines.onnx_rt import OnnxEngine
    from beam_pipeline.engines.table import TableEngine

    return {cls.name: cls for cls in (KerasEngine, XlaEngine, OnnxEngine, TableEngine)}


def eligible(ctx: Context) -> dict[str, str | None]:
    """Every engine's name -> None when it may run the model, else the reason it declines."""
    return {name: cls.why_not(ctx) for name, cls in registry().items()}


def max_difference(got: list[np.ndarray], want: list[np.ndarray], compare: np.ndarray | None) -> float:
    """Largest absolute difference; ``compare`` (``(B, T)`` bool) limits sequence outputs to the
    positions the job writes (masked positions are never written, and engines may leave them zero)."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return float("inf")
        if compare is not None and g.ndim == 3:
            g, w = g[compare], w[compare]
        if g.size:
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
    return worst


def _timed(engine: Engine, batch: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        engine.run(batch)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Choice:
    engine: Engine
    report: dict  # name -> {"seconds", "startup_s", "max_diff"} or {"declined"} / {"dropped"}
    reference: Engine  # the Keras graph (the engine itself when it was chosen)


def choose(ctx: Context, requested: str, batch: np.ndarray, compare: np.ndarray | None = None,
           repeat: int = 2, only: tuple[str, ...] | None = None, prebuilt: dict[str, Engine] | None = None,
           reference: Engine | None = None) -> Choice:
    """Builds, verifies and times the engines on ``batch``; returns the fastest exact one.

    ``requested`` is ``auto`` or one engine's name (which then must accept the model, else
    ``EngineError``; one that fails to build or differs from Keras is dropped with a warning, and the
    Keras graph runs instead). The Keras graph is always built: it is the reference (``reference``: the
    one built before). With ``auto``: ``only`` limits the engines tried; ``prebuilt`` (name -> engine) are
    engines built before, verified and timed again here, not rebuilt."""
    engines = registry()
    if requested != "auto" and requested not in engines:
        raise EngineError(f"unknown engine {requested!r}; choose one of {', '.join(CHOICES)}")
    report: dict[str, dict] = {}
    reference = reference if reference is not None else engines["keras"](ctx)
    start = time.perf_counter()
    want = reference.warm_up(batch)
    startup = time.perf_counter() - start
    names = [n for n in engines if n != "keras" and (only is None or n in only)] if requested == "auto" \
        else [requested]
    prebuilt = prebuilt or {}
    if requested == "keras" or (requested == "auto" and not any(
            engines[n].why_not(ctx) is None for n in names)):
        report["keras"] = {"startup_s": round(startup, 4)}
        reasons = {n: engines[n].why_not(ctx) for n in engines if n != "keras"}
        report.update({n: {"declined": reason} for n, reason in reasons.items() if reason})
        LOG.info("engine keras for layer %s (%s): %s", ctx.info.name,
                 "forced" if requested == "keras" else "the only eligible one", report)
        return Choice(reference, report, reference)
    timed: dict[str, float] = {"keras": _timed(reference, batch, repeat)}
    report["keras"] = {"seconds": round(timed["keras"], 5), "startup_s": round(startup, 4), "max_diff": 0.0}
    built: dict[str, Engine] = {"keras": reference}
    for name in names:
        reason = engines[name].why_not(ctx)
        if reason is not None:
            if requested != "auto":
                raise EngineError(f"--engine {name} cannot run layer {ctx.info.name!r} exactly: {reason}")
            report[name] = {"declined": reason}
            continue
        try:
            start = time.perf_counter()
            engine = prebuilt[name] if name in prebuilt else engines[name](ctx)
            got = engine.run(batch) if name in prebuilt else engine.warm_up(batch)
            startup = time.perf_counter() - start
        except Exception as e:  # an engine that fails to build is dropped, never fatal
            LOG.warning("engine %s dropped: it failed to build: %s%s", name, e,
                        "" if requested == "auto" else "; the Keras graph runs this model instead")
            report[name] = {"dropped": f"build failed: {e}"}
            continue
        diff = max_difference(got, want, compare)
        if not diff <= TOLERANCE:
            message = (f"engine {name} differs from the Keras graph by {diff:.3g} > {TOLERANCE:g} "
                       "on the calibration batch")
            # Never fatal: a forced engine too gives way to the Keras graph, whose values are the exact ones.
            LOG.warning("%s: dropped%s", message, "" if requested == "auto" else
                        "; the Keras graph runs this model instead of the forced engine")
            report[name] = {"dropped": message, "max_diff": diff}
            continue
        timed[name] = _timed(engine, batch, repeat)
        report[name] = {"seconds": round(timed[name], 5), "startup_s": round(startup, 4), "max_diff": diff}
        built[name] = engine
    if requested == "auto":
        best = min(timed, key=timed.get)
    else:
        best = requested if requested in built else "keras"
    LOG.info("engine %s chosen for layer %s on a %s calibration batch: %s", best, ctx.info.name,
             "x".join(map(str, batch.shape)), report)
    if best == "xla":
        built[best].rent_until_compiled(startup_s=report["xla"]["startup_s"] - timed["xla"])
    return Choice(built[best], report, reference)
