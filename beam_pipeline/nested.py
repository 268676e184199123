"""Recurrent layers inside nested models: a ``Sequential`` or functional model used as a layer (the
shared encoder of a siamese network, a seq2seq encoder, a text tower beside a numeric one).

``--layer`` names them by path: ``encoder/lstm_1``, each step a layer name or an index into that
model's ``layers`` (``2/1``; the two mix: ``encoder/1``). A plain name that is not a layer of the
outer model but names exactly one nested recurrent layer finds it too.

``locate`` returns the model the job then works on: for a nested target, a functional *view* of
the outer model in which every nested model on the path is inlined, its layers called one by one
on the outer tensors (the same layer objects, so the same weights) from the outer input up to the
target. The rest of the job (masks, ``mask_is_padding``, the truncated sub-model, the engines) sees
the target as a layer of a flat graph, as today. A nested model called more than once (a siamese
encoder, on each of its inputs) computes the same function of each input: its first call is the
one inlined. Masks reach the inlined layers as Keras passes them into a nested model at run time
(the mask of the nested model's input, set on the tensor its first layers read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beam_pipeline import recurrent
from beam_pipeline.recurrent import ModelError


@dataclass(frozen=True)
class Target:
    """A recurrent layer the job can target, and how ``--layer`` names it."""

    path: str  # names: "encoder/lstm_1" (a top-level layer: its name)
    index_path: str  # indexes into each model's ``layers``: "2/1"
    layer: Any
    chain: tuple  # the nested models on the way, outermost first, then the layer


def _keras():
    import keras

    return keras


def _is_model(layer) -> bool:
    return isinstance(layer, _keras().Model)


def targets(model) -> list[Target]:
    """Every recurrent layer of ``model`` and of the models nested in it, in layer order (depth first)."""
    found = []

    def walk(current, names, indexes, chain):
        for i, layer in enumerate(current.layers):
            here = ([*names, layer.name], [*indexes, str(i)], (*chain, layer))
            if recurrent.is_recurrent(layer):
                found.append(Target("/".join(here[0]), "/".join(here[1]), layer, here[2]))
            elif _is_model(layer):
                walk(layer, *here)

    walk(model, [], [], ())
    return found


def listing(model) -> str:
    return ", ".join(f"{t.index_path}:{t.path} ({type(t.layer).__name__})" for t in targets(model)) or "none"


def index_path(model, layer) -> str:
    """The index path (``"3"``, ``"2/1"``) of ``layer``, a targetable layer of ``model``: what names the same
    layer in every build of the model, whatever names Keras gave its layers in that build."""
    return next(t.index_path for t in targets(model) if t.layer is layer)


def _step(model, part: str):
    if part.lstrip("-").isdigit():
        index = int(part)
        return model.layers[index] if -len(model.layers) <= index < len(model.layers) else None
    return next((layer for layer in model.layers if layer.name == part), None)


def _chain(model, spec: str) -> tuple | None:
    """The layers a path goes through, outermost first, or None."""
    chain, current = [], model
    parts = spec.split("/")
    for k, part in enumerate(parts):
        layer = _step(current, part)
        if layer is None or (k < len(parts) - 1 and not _is_model(layer)):
            return None
        chain.append(layer)
        current = layer
    return tuple(chain)


def locate(model, spec: str | int | None) -> tuple[Any, Any, str]:
    """(the model to run: ``model`` or, for a nested target, the inlined view; the target layer; how
    the job names it: its name, or its name path when nested). ``spec``: a name, an index into
    ``model.layers``, a path, or None (the last recurrent layer of the outer model; when it has none,
    the last nested one). Raises ``ModelError`` listing the targetable layers."""
    found = targets(model)
    if spec is None or spec == "":
        top = [t for t in found if len(t.chain) == 1]
        if not (top or found):
            return model, recurrent.find_layer(model, None), ""  # raises, listing the layers
        chosen = (top or found)[-1]
    else:
        spec = str(spec)
        chain = _chain(model, spec)
        if chain is None and "/" not in spec:
            named = [t for t in found if t.layer.name == spec]
            chain = named[0].chain if len(named) == 1 else None
        if chain is None:
            raise ModelError(f"layer {spec!r} not found. Recurrent layers (index path:name path): {listing(model)}")
        if not recurrent.is_recurrent(chain[-1]):
            raise ModelError(f"layer {spec!r} is a {type(chain[-1]).__name__}, not a recurrent layer. "
                             f"Recurrent layers (index path:name path): {listing(model)}")
        chosen = next(t for t in found if t.chain == chain) if len(chain) > 1 else Target(
            chain[0].name, spec, chain[0], chain)
    if len(chosen.chain) == 1:
        return model, chosen.layer, chosen.layer.name
    return inline(model, chosen.chain), chosen.layer, chosen.path


def _graph(model):
    return getattr(model, "_functional", None) or model


def _node_in(operation, graph):
    """The first node of ``operation`` in ``graph`` (its first call there)."""
    in_graph = {id(n) for group in graph._nodes_by_depth.values() for n in group}
    nodes = [n for n in operation._inbound_nodes if id(n) in in_graph]
    if not nodes:
        raise ModelError(f"layer {operation.name!r} is not called in model {graph.name!r}")
    return nodes[0]


def _ancestors(node, graph) -> list:
    """The nodes of ``graph`` that ``node``'s inputs depend on, deepest first (an order they can run in)."""
    keras = _keras()
    depth = {id(n): d for d, group in graph._nodes_by_depth.items() for n in group}
    seen, todo, found = set(), [node], []
    while todo:
        current = todo.pop()
        for tensor in keras.tree.flatten((current.arguments.args, current.arguments.kwargs)):
            if not isinstance(tensor, keras.KerasTensor):
                continue
            operation, index, _ = tensor._keras_history
            below = operation._inbound_nodes[index]
            if id(below) not in seen:
                seen.add(id(below))
                found.append(below)
                todo.append(below)
    return sorted(found, key=lambda n: -depth.get(id(n), 0))


def _filled(node, tensors: dict) -> tuple[tuple, dict]:
    """A node's call arguments on the new tensors. A ``mask=None`` recorded where the traced input had no
    mask (a nested model's first layers) is left out, so that Keras fills in the mask the new input
    carries, as it does when it runs the nested model (eagerly, ``mask=None`` is filled in too)."""
    args, kwargs = node.arguments.fill_in(tensors)
    if "mask" in kwargs and kwargs["mask"] is None:
        kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
    return args, kwargs


def _call_through(model, chain: tuple, tensors: dict):
    """Calls, on new tensors (``tensors``: id of ``model``'s tensors -> new ones), what ``chain[-1]``'s
    output depends on in ``model``, inlining the nested models of ``chain``; returns that output."""
    keras = _keras()
    graph = _graph(model)
    head = chain[0]
    node = _node_in(head, graph)
    for below in _ancestors(node, graph):
        if below.is_input:
            continue
        args, kwargs = _filled(below, tensors)
        outputs = below.operation(*args, **kwargs)
        for old, new in zip(below.outputs, keras.tree.flatten(outputs)):
            tensors[id(old)] = new
    args, kwargs = _filled(node, tensors)
    if len(chain) == 1:
        return head(*args, **kwargs)
    inner = _graph(head)
    inputs = keras.tree.flatten(args[0])
    masks = kwargs.get("mask")
    masks = keras.tree.flatten(masks) if masks is not None else [None] * len(inputs)
    if len(inputs) != len(inner.inputs):
        raise ModelError(f"model {head.name!r} is called with {len(inputs)} inputs but has {len(inner.inputs)}")
    inner_tensors = {}
    for old, new, mask in zip(inner.inputs, inputs, masks):
        if mask is not None:  # as Functional.call does with the mask of a nested model's input
            keras.src.backend.set_keras_mask(new, mask)
        inner_tensors[id(old)] = new
    return _call_through(head, chain[1:], inner_tensors)


def inline(model, chain: tuple):
    """A functional model from ``model``'s inputs to the output of ``chain[-1]`` (a layer inside the
    nested models ``chain[:-1]``), with those nested models inlined (see the module docstring)."""
    keras = _keras()
    tensors = {id(t): t for t in model.inputs}
    output = _call_through(model, chain, tensors)
    return keras.Model(model.inputs, output, name=f"{model.name}__{'__'.join(c.name for c in chain)}")
