"""Everything the job knows about Keras models, separate from Beam.

Finding the target recurrent layer (loading is ``beam_pipeline.model``), and building the
truncated sub-model that computes what that layer computes in the trained model: a functional
clone of the layer with ``return_sequences`` / ``return_state`` set for the requested mode, called
on the same input tensor *and the same mask* as the original, with the trained weights copied. Nothing is retrained.

Shapes, for a batch of ``B`` documents padded to ``T`` timesteps and a layer of ``U`` units:

- ``final``: ``(B, D)``: what the layer returns with ``return_sequences=False``. ``D`` is ``U``,
  or ``2U`` for a ``Bidirectional`` layer with ``merge_mode`` ``"concat"`` or ``None``.
- ``sequence``: ``(B, T, D)``: the per-timestep outputs.
- ``states``: ``h`` and ``c`` of shape ``(B, U)`` for an LSTM, ``h`` only for GRU / SimpleRNN;
  ``h_fw, c_fw, h_bw, c_bw`` for a ``Bidirectional`` LSTM.

LSTM weights, for an input of ``F`` features: ``kernel (F, 4U)``, ``recurrent_kernel (U, 4U)``,
``bias (4U,)``, the four column blocks being the gates in the order i (input), f (forget),
c (cell candidate), o (output). GRU has 3 blocks (z, r, h); SimpleRNN one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODES = ("final", "sequence", "states")

_GATES = {"LSTM": ("i", "f", "c", "o"), "GRU": ("z", "r", "h"), "SimpleRNN": ("h",)}


class ModelError(ValueError):
    """A model, layer or mode that the job cannot use, with a message that says what to do."""


def _keras():
    import keras

    return keras


def _is_rnn(layer) -> bool:
    keras = _keras()
    return isinstance(layer, keras.layers.RNN)


def is_recurrent(layer) -> bool:
    """True for an RNN layer (LSTM, GRU, SimpleRNN, RNN(cell)) or a Bidirectional wrapper of one."""
    keras = _keras()
    if isinstance(layer, keras.layers.Bidirectional):
        return _is_rnn(layer.forward_layer)
    return _is_rnn(layer)


def _base_class_name(layer) -> str:
    keras = _keras()
    for cls in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN, keras.layers.Bidirectional):
        if isinstance(layer, cls):
            return cls.__name__
    return type(layer).__name__


def recurrent_layers(model) -> list[tuple[int, Any]]:
    """The model's recurrent layers as (index in ``model.layers``, layer), in order."""
    return [(i, layer) for i, layer in enumerate(model.layers) if is_recurrent(layer)]


def find_layer(model, spec: str | int | None):
    """The target layer: by name, by index into ``model.layers``, or (None) the last recurrent one."""
    candidates = recurrent_layers(model)
    listing = ", ".join(f"{i}:{layer.name} ({_base_class_name(layer)})" for i, layer in candidates) or "none"
    if spec is None or spec == "":
        if not candidates:
            raise ModelError("the model has no recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional). Layers: "
                             + ", ".join(f"{i}:{layer.name}" for i, layer in enumerate(model.layers)))
        return candidates[-1][1]
    layer = None
    if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
        index = int(spec)
        if -len(model.layers) <= index < len(model.layers):
            layer = model.layers[index]
    if layer is None:
        layer = next((layer for layer in model.layers if layer.name == spec), None)
    if layer is None:
        raise ModelError(f"layer {spec!r} not found. Recurrent layers (index:name): {listing}")
    if not is_recurrent(layer):
        raise ModelError(
            f"layer {spec!r} is a {type(layer).__name__}, not a recurrent layer. "
            f"Recurrent layers (index:name): {listing}"
        )
    return layer


@dataclass(frozen=True)
class LayerInfo:
    """What the job needs to know about the target layer, and what it will write."""

    name: str
    class_name: str  # LSTM, GRU, SimpleRNN, Bidirectional, or the RNN subclass name
    cell_class: str  # LSTM / GRU / SimpleRNN (the wrapped one for Bidirectional)
    units: int
    bidirectional: bool
    merge_mode: str | None
    masked: bool  # the layer receives a mask in the trained graph
    input_dim: int  # features per timestep reaching the layer
    state_names: tuple[str, ...] = field(default=())
    # The mask is exactly ``ids != 0`` (an Embedding with mask_zero=True, passed on unchanged): it hides the
    # padding and nothing else, so the padding side and the batch width change no value. A mask computed from
    # the values (a Masking layer) is not: such a model is padded exactly as trained, like an unmasked one.
    mask_is_padding: bool = False
    mask_source: str = ""  # what computes the mask, in words ("" when the layer receives none)

    @property
    def output_dim(self) -> int:
        if self.bidirectional and self.merge_mode in ("concat", None):
            return 2 * self.units
        return self.units

    def columns(self, mode: str) -> list[tuple[str, int]]:
        """(column name, vector width) of the embedding columns written for ``mode``."""
        if mode == "final":
            return [("vector", self.output_dim)]
        if mode == "sequence":
            return [("vectors", self.output_dim)]
        if mode == "states":
            return [(name, self.units) for name in self.state_names]
        raise ModelError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _rnn_of(layer):
    keras = _keras()
    return layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer


def _graph(model):
    """The functional graph of a model (a Sequential keeps one inside)."""
    return getattr(model, "_functional", None) or model


def _call_node(layer, model=None):
    """The one node (call) of ``layer`` in ``model``'s graph."""
    nodes = list(getattr(layer, "_inbound_nodes", []))
    if model is not None and len(nodes) > 1:
        in_graph = {id(n) for group in getattr(_graph(model), "_nodes_by_depth", {}).values() for n in group}
        nodes = [n for n in nodes if id(n) in in_graph]
    if len(nodes) != 1:
        raise ModelError(
            f"layer {layer.name!r} is called {len(nodes)} times in the model; the job needs a layer used exactly once."
        )
    return nodes[0]


def inbound_call(layer, model=None):
    """(args, kwargs) with which ``layer`` is called in ``model``'s graph, mask included."""
    args = _call_node(layer, model).arguments
    if len(args.args) != 1 or args.kwargs.get("initial_state") is not None:
        raise ModelError(f"layer {layer.name!r} is called with an initial state or several inputs; not supported.")
    return args.args, dict(args.kwargs)


def single_input_view(model, layer):
    """``model`` itself when it has one input; else the functional model from the one input ``layer``
    depends on to ``layer``'s output (a seq2seq model's encoder reads the encoder input only; a second,
    numeric input feeding the head does not reach a recurrent layer below it). A layer that depends on
    several inputs cannot be fed token ids alone: ``ModelError``."""
    keras = _keras()
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) <= 1:
        return model
    reached = {id(operation) for operation in layers_up_to(model, layer)}
    used = [t for t in inputs if id(getattr(t, "_keras_history", (None,))[0]) in reached]
    names = ", ".join(f"{t.name} {tuple(t.shape)}" for t in inputs)
    if len(used) != 1:
        raise ModelError(
            f"layer {layer.name!r} depends on {len(used)} of the model's {len(inputs)} inputs ({names}); this job "
            "feeds one input, the token ids. Target a recurrent layer that reads the text input only.")
    outputs = _call_node(layer, model).outputs  # this model's call of a layer called elsewhere too (nested)
    outputs = outputs[0] if len(outputs) == 1 else outputs
    return keras.Model(used[0], outputs, name=f"{model.name}__{used[0].name}")


def describe_layer(layer, model=None) -> LayerInfo:
    """Facts about a recurrent layer of a built model."""
    keras = _keras()
    rnn = _rnn_of(layer)
    cell_class = _base_class_name(rnn)
    if not isinstance(rnn, (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)):
        cell_class = type(rnn.cell).__name__.replace("Cell", "")
    state_size = rnn.cell.state_size
    n_states = len(state_size) if isinstance(state_size, (list, tuple)) else 1
    units = int(rnn.cell.units)
    base = ("h", "c")[:n_states] if n_states <= 2 else tuple(f"s{i}" for i in range(n_states))
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    names = tuple(f"{n}_{d}" for d in ("fw", "bw") for n in base) if bidirectional else base
    args, kwargs = inbound_call(layer, model)
    mask = kwargs.get("mask")
    mask_is_padding, mask_source = _mask_origin(mask, model) if mask is not None else (False, "")
    return LayerInfo(
        name=layer.name,
        class_name=_base_class_name(layer),
        cell_class=cell_class,
        units=units,
        bidirectional=bidirectional,
        merge_mode=layer.merge_mode if bidirectional else None,
        masked=mask is not None,
        input_dim=int(args[0].shape[-1]),
        state_names=names,
        mask_is_padding=mask_is_padding,
        mask_source=mask_source,
    )


def _produced_by(tensor):
    """(operation, its call's arguments) that produced a symbolic tensor, or (None, None)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, None
    operation, node_index = history[0], history[1]
    nodes = getattr(operation, "_inbound_nodes", [])
    if node_index >= len(nodes):
        return operation, None
    return operation, nodes[node_index].arguments


def _is_zero(value) -> bool:
    import numpy as np

    try:
        return np.ndim(value) == 0 and float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _not_equal_zero(tensor):
    """The tensor ``x`` when ``tensor`` is ``not_equal(x, 0)`` (either order), else None."""
    keras = _keras()
    operation, arguments = _produced_by(tensor)
    if type(operation).__name__ != "NotEqual" or arguments is None or arguments.kwargs or len(arguments.args) != 2:
        return None
    a, b = arguments.args
    if isinstance(a, keras.KerasTensor) and _is_zero(b):
        return a
    if isinstance(b, keras.KerasTensor) and _is_zero(a):
        return b
    return None


def _mask_origin(mask, model) -> tuple[bool, str]:
    """(the mask is exactly ``ids != 0``, what computes it in words), decided from the trained graph.

    ``ids != 0`` is what an ``Embedding(mask_zero=True)`` reading the model's token ids computes
    (``not_equal(ids, 0)``); the layers between it and the target (dropout, recurrent layers with
    return_sequences, ...) pass that very tensor on. A ``Masking(0.0)`` straight on a one-hot input
    (``any(x != 0, axis=-1)``) is the same mask: the job feeds padding as the all-zero vector. Any other
    mask (a Masking layer on embedded values, a mask a layer recomputes or combines) depends on the values,
    not on the padding alone."""
    keras = _keras()
    inputs = list(getattr(model, "inputs", None) or [])
    ids = inputs[0] if len(inputs) == 1 else None
    if ids is not None and takes_text(model):
        try:
            ids = text_vectorization(model).output  # the ids the model's own TextVectorization pads
        except ModelError:
            ids = None
    operation, arguments = _produced_by(mask)
    if ids is not None and one_hot_depth(model) is None and _not_equal_zero(mask) is ids:
        return True, "ids != 0 (Embedding mask_zero=True)"
    if type(operation).__name__ != "Any" or arguments is None or len(arguments.args) != 1:
        if isinstance(operation, keras.layers.Layer):
            return False, f"a mask computed by layer {operation.name!r} ({type(operation).__name__})"
        return False, f"a mask computed by {type(operation).__name__} from the values, not the padding ids alone"
    axis = getattr(operation, "axis", None)
    axis = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if (ids is not None and one_hot_depth(model) is not None and _not_equal_zero(arguments.args[0]) is ids
            and axis in ([-1], [len(ids.shape) - 1]) and not getattr(operation, "keepdims", False)):
        return True, "ids != 0 (Masking(0.0) on the one-hot input, whose padding is the all-zero vector)"
    compared, inner = _produced_by(arguments.args[0])
    values = inner.args[0] if type(compared).__name__ == "NotEqual" and inner is not None and inner.args else None
    for candidate in model.layers:
        if isinstance(candidate, keras.layers.Masking) and values is not None and any(
                values is t for node in candidate._inbound_nodes for t in keras.tree.flatten(node.arguments.args)):
            return False, (f"a Masking layer {candidate.name!r} (mask_value={candidate.mask_value}): it masks the "
                           "timesteps whose values all equal mask_value, which need not be exactly the padding")
    return False, "a mask computed from the values (any(x != v)), not the padding ids alone"


def layers_up_to(model, layer) -> list:
    """Every operation (layers, and the ``keras.ops`` of a functional graph) that ``layer``'s output
    depends on, ``layer`` itself first, then the ones below it (nested layers not unwrapped)."""
    keras = _keras()
    found, seen = [layer], {id(layer)}
    args, kwargs = inbound_call(layer, model)
    todo = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
    while todo:
        operation, arguments = _produced_by(todo.pop())
        if operation is None or id(operation) in seen:
            continue
        seen.add(id(operation))
        found.append(operation)
        if arguments is not None:
            todo += [t for t in keras.tree.flatten((arguments.args, arguments.kwargs))
                     if isinstance(t, keras.KerasTensor)]
    return found


def needs_static_time_axis(model, layer) -> list[str]:
    """The layers up to ``layer`` that compute other values (or fail) unless the time axis is the
    trained, static one: ``TimeDistributed`` (Keras 3 loops over the static time axis, and over the
    batch when it is unknown), recurrent layers with ``unroll=True`` (no loop without a static length),
    ``Reshape`` / ``Flatten`` (the time axis is part of their shapes). A model with one always runs
    ``maxlen`` wide, with a static time axis. Returns "name (why)" per such layer, empty when none."""
    keras = _keras()
    reasons = []
    for operation in layers_up_to(model, layer):
        rnns = [operation.forward_layer, operation.backward_layer] if isinstance(
            operation, keras.layers.Bidirectional) else [operation]
        if isinstance(operation, keras.layers.TimeDistributed):
            reasons.append(f"{operation.name} (TimeDistributed)")
        elif any(isinstance(r, keras.layers.RNN) and getattr(r, "unroll", False) for r in rnns):
            reasons.append(f"{operation.name} (unroll=True)")
        elif isinstance(operation, (keras.layers.Reshape, keras.layers.Flatten)):
            reasons.append(f"{operation.name} ({type(operation).__name__})")
    return reasons


def timesteps_seen(model, layer, maxlen: int) -> tuple[int | None, str]:
    """(the length of the time axis ``layer`` reads when the model's input is ``maxlen`` steps long,
    the layer nearest the input whose output differs from ``maxlen`` steps, in words, or "").

    From the trained graph's static shapes; for a model whose input length is not fixed, from the
    shapes Keras infers for an input ``maxlen`` steps long (nothing is computed)."""
    keras = _keras()
    args, _ = inbound_call(layer, model)
    path, tensor = [], args[0]  # the target's input and the tensors below it, along the first inputs
    while True:
        operation, arguments = _produced_by(tensor)
        if operation is None or isinstance(operation, keras.layers.InputLayer) or arguments is None:
            break
        path.append((operation, tensor))
        below = [t for t in keras.tree.flatten(arguments.args) if isinstance(t, keras.KerasTensor)]
        if not below:
            break
        tensor = below[0]
    path.reverse()  # from the input up to the target's input
    shapes = [tuple(t.shape) for _, t in path]
    inputs = list(model.inputs)
    if (any(len(shape) < 2 or shape[1] is None for shape in shapes) and len(inputs) == 1
            and len(inputs[0].shape) >= 2 and inputs[0].shape[1] is None):
        try:
            probe = keras.Model(inputs, [t for _, t in path])
            spec = keras.KerasTensor((1, maxlen, *inputs[0].shape[2:]), dtype=inputs[0].dtype)
            shapes = [tuple(o.shape) for o in keras.tree.flatten(probe.compute_output_spec(spec))]
        except Exception:  # shapes Keras cannot infer: the time axis stays unknown
            pass
    seen = shapes[-1][1] if shapes and len(shapes[-1]) >= 2 else None
    for (operation, _), shape in zip(path, shapes):
        if len(shape) < 2 or shape[1] != maxlen:
            return seen, f"{operation.name!r} ({type(operation).__name__})"
    return seen, ""


def check_sequence_mode(model, layer, maxlen: int) -> None:
    """``--mode sequence`` writes one vector per real token, the layer's output at that token's
    position: the layer must read one timestep per input position. Raises ModelError otherwise."""
    seen, changed_by = timesteps_seen(model, layer, maxlen)
    if seen is not None and seen != maxlen:
        raise ModelError(
            f"--mode sequence needs one output per token: layer {layer.name!r} sees {seen} timesteps for maxlen "
            f"{maxlen} (layer {changed_by} changes the time axis, as Conv1D with padding='valid' or pooling "
            "do); use --mode final or states")


def _clone_for_mode(layer, mode: str):
    keras = _keras()
    config = layer.get_config()
    flags = {"return_sequences": mode == "sequence", "return_state": mode == "states", "stateful": False}
    if isinstance(layer, keras.layers.Bidirectional):
        for key in ("layer", "backward_layer"):
            if config.get(key) is not None:
                config[key]["config"].update(flags)
    else:
        config.update(flags)
    config["name"] = f"{layer.name}__{mode}"
    return layer.__class__.from_config(config)


def build_submodel(model, layer, mode: str):
    """A model from the original inputs to what ``layer`` computes in ``mode``.

    Returns a Keras model whose outputs are a list of arrays: ``[vector]`` for ``final``,
    ``[sequence]`` for ``sequence``, and the states in ``LayerInfo.state_names`` order for
    ``states``. The clone receives the same input tensor and mask as the trained layer.
    """
    keras = _keras()
    info = describe_layer(layer, model)
    args, kwargs = inbound_call(layer, model)
    kwargs["training"] = False
    clone = _clone_for_mode(layer, mode)
    out = clone(*args, **kwargs)
    clone.set_weights(layer.get_weights())
    outputs = list(out) if isinstance(out, (list, tuple)) else [out]
    if mode == "states":  # [output (two with merge_mode=None), *states] -> the states
        outputs = outputs[-len(info.state_names):]
    elif mode in ("final", "sequence") and info.bidirectional and info.merge_mode is None:
        outputs = [keras.layers.Concatenate(axis=-1)(outputs)]
    vectorizer = text_vectorization(model)
    if vectorizer is not None:  # raw-text models also return the token ids, to count and place tokens
        outputs.append(vectorizer.output)
    return keras.Model(model.inputs, outputs, name=f"{model.name}__{layer.name}__{mode}")


def takes_text(model) -> bool:
    """True for a model whose input is a string tensor (an in-model TextVectorization)."""
    return "string" in str(model.inputs[0].dtype)


def text_vectorization(model):
    """The model's ``TextVectorization`` layer (int output) when it takes raw text, else None."""
    if not takes_text(model):
        return None
    keras = _keras()
    found = [layer for layer in model.layers if isinstance(layer, keras.layers.TextVectorization)]
    if len(found) != 1 or found[0].get_config().get("output_mode") != "int":
        raise ModelError("a model with a string input needs exactly one TextVectorization layer with "
                         "output_mode='int' between its input and the recurrent layer.")
    return found[0]


def one_hot_depth(model) -> int | None:
    """The vocabulary size of a model fed one-hot sequences ``(timesteps, vocab)``, else None."""
    shape = model.inputs[0].shape
    dtype = str(model.inputs[0].dtype)
    if len(shape) == 3 and shape[-1] is not None and "float" in dtype:
        return int(shape[-1])
    return None


def embedding_input_dim(model, layer) -> int | None:
    """input_dim of the first Embedding layer before the target, if any."""
    keras = _keras()
    for candidate in model.layers:
        if candidate is layer:
            break
        if isinstance(candidate, keras.layers.Embedding):
            return int(candidate.input_dim)
    return None


_PER_TIMESTEP = ("Embedding", "Masking", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                 "TimeDistributed", "Dense", "Activation")


def carry_chain(model, layer) -> list:
    """The layers from the model's input up to and including ``layer``, checked for
    ``--long_docs carry``: windows read one after another with the states carried equal one pass
    over the whole document only if every layer below the target treats timesteps one by one, or is
    a unidirectional recurrent layer with ``return_sequences=True`` (which then carries its own
    states too). Raises ModelError naming the first layer that breaks this."""
    keras = _keras()
    if isinstance(layer, keras.layers.Bidirectional):
        raise ModelError(
            f"--long_docs carry cannot run the Bidirectional layer {layer.name!r} window by window: its backward "
            "direction needs the end of the document first. Use --long_docs truncate, or target a unidirectional layer."
        )
    if getattr(layer, "go_backwards", False):
        raise ModelError(f"--long_docs carry: layer {layer.name!r} reads backwards (go_backwards=True); not supported.")
    chain = [layer]
    current = layer
    while True:
        args, _ = inbound_call(current, model)
        below = args[0]._keras_history.operation
        if isinstance(below, keras.layers.InputLayer):
            break
        name = f"{below.name!r} ({type(below).__name__})"
        if _is_rnn(below):
            if not below.return_sequences or below.go_backwards:
                raise ModelError(f"--long_docs carry: recurrent layer {name} below the target must be unidirectional "
                                 "with return_sequences=True.")
        elif type(below).__name__ not in _PER_TIMESTEP:
            raise ModelError(
                f"--long_docs carry: layer {name} below the target mixes timesteps or is not per-timestep; carry "
                f"needs per-timestep layers ({', '.join(_PER_TIMESTEP)}) or unidirectional recurrent layers with "
                "return_sequences=True. Use --long_docs truncate."
            )
        chain.append(below)
        current = below
    return chain[::-1]


def build_window_model(model, layer, mode: str, timesteps: int | None = None):
    """A model that reads one window: inputs ``[ids, *states_in]``, outputs ``[*target outputs,
    *states_out]``, with one initial-state input (and final-state output) per state of every
    recurrent layer in the chain. The target outputs are as in ``build_submodel`` for ``mode``;
    ``states_out`` is in chain order, the target's own states last. ``timesteps``: the windows' static
    length (which TimeDistributed and ``unroll=True`` layers need), None for any.

    Returns (model, state sizes in input order, number of target outputs)."""
    keras = _keras()
    chain = carry_chain(model, layer)
    info = describe_layer(layer, model)
    shape = (timesteps,) + tuple(model.inputs[0].shape[2:])
    ids = keras.Input(shape, dtype=model.inputs[0].dtype, name="window")
    state_inputs, state_outputs, sizes = [], [], []
    x, mask = ids, None
    for below in chain:
        if not _is_rnn(below):
            # Masks are carried by hand: Keras does not pass them on to a layer called with initial_state.
            x, mask = below(x, training=False), below.compute_mask(x, mask)
            continue
        is_target = below is layer
        config = below.get_config()
        config.update(return_state=True, stateful=False,
                      return_sequences=(mode == "sequence") if is_target else True)
        config["name"] = f"{below.name}__window"
        clone = below.__class__.from_config(config)
        size = below.cell.state_size
        size = list(size) if isinstance(size, (list, tuple)) else [size]
        states_in = [keras.Input((int(n),), name=f"{below.name}__state{i}") for i, n in enumerate(size)]
        out = clone(x, mask=mask, initial_state=states_in if len(states_in) > 1 else states_in[0], training=False)
        clone.set_weights(below.get_weights())
        x, states_out = out[0], list(out[1:])
        state_inputs += states_in
        state_outputs += states_out
        sizes += [int(n) for n in size]
    target_outputs = list(state_outputs[-len(info.state_names):]) if mode == "states" else [x]
    window_model = keras.Model([ids, *state_inputs], [*target_outputs, *state_outputs],
                               name=f"{layer.name}__{mode}__window")
    return window_model, sizes, len(target_outputs)


def weight_table(layer, model=None) -> list[dict[str, Any]]:
    """The layer's weight arrays, with what their shapes mean (gate order for LSTM / GRU)."""
    info = describe_layer(layer, model)
    gates = _GATES.get(info.cell_class, ())
    k = len(gates) or 1
    u = info.units
    rows = []
    for w in layer.weights:
        shape = tuple(int(d) for d in w.shape)
        path = w.path if hasattr(w, "path") else w.name
        direction = "backward" if "backward" in path else ("forward" if info.bidirectional else "")
        leaf = path.split("/")[-1]
        meaning = ""
        if leaf == "kernel":
            meaning = f"(input features {shape[0]}, {k}*units={k}x{u}); column blocks: {', '.join(gates)}"
        elif leaf == "recurrent_kernel":
            meaning = f"(units {u}, {k}*units={k}x{u}); column blocks: {', '.join(gates)}"
        elif leaf == "bias":
            meaning = f"{shape}: per-gate biases in blocks {', '.join(gates)}" + (
                " (GRU reset_after: input and recurrent biases)" if len(shape) == 2 else ""
            )
        rows.append({"name": path, "shape": list(shape), "direction": direction, "meaning": meaning})
    return rows
