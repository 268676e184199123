"""ONNX Runtime engine: an ONNX graph built from the Keras layers' weights, up to the target.

``Gather`` for the ``Embedding``, one ONNX ``LSTM`` / ``GRU`` / ``RNN`` op per recurrent layer
(``direction="bidirectional"`` for ``Bidirectional``), with the activations the layer uses and the
weights re-ordered to ONNX's gate order (LSTM: Keras i,f,c,o -> ONNX i,o,f,c; GRU: z,r,h in both,
``linear_before_reset`` = ``reset_after``). Dropout-like layers are the identity at inference.

- Masked models (``Embedding(mask_zero=True)``): batches are right-padded, so the mask is a length
  per document, fed as ``sequence_lens``: the forward direction stops at the last real token, the
  backward one starts there, as Keras' masked loop does.
- Unmasked models padded ``pre``, every recurrent layer unidirectional: every document's states
  after ``k`` leading padding steps are the same, so the states after ``0..maxlen`` padding steps are
  computed once; each document is then read from the states its padding reaches, over its real
  tokens only (exact: the same steps, started where Keras would be after the padding).

Anything else (a Masking layer, custom or subclassed layers and cells, activations ONNX has no
exact op for, ``go_backwards``, one-hot or text inputs, other layers between) is declined.
"""

from __future__ import annotations

import numpy as np

from beam_pipeline.engines import Context, Engine, in_length_sorted_chunks

OPSET = 17
# Documents run together: a batch is cut into chunks of this many documents, sorted by length, each run
# only as wide as its longest document. Smaller chunks keep ORT's per-step tensors in cache: on the masked
# stacked Bi-LSTM of bench/engines.py, batches of 512 ran 32-34k docs/s in chunks of 128 against 27-28k
# whole (96: 31.8k, 160: 31.9k, 256: 31.4k; 2 cores, 2026-11-25).
MASKED_CHUNK = 128
PREFIX_CHUNK = 128  # documents read together from their padding-prefix states, sorted by length
_IDENTITY = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
             "ActivityRegularization")  # the identity at inference


def _keras():
    import keras

    return keras


def _activation(fn) -> tuple[str, float | None, float | None] | None:
    """(ONNX activation, alpha, beta) computing exactly what the Keras activation does, else None."""
    a = _keras().activations
    table = {
        a.sigmoid: ("Sigmoid", None, None),
        a.tanh: ("Tanh", None, None),
        a.relu: ("Relu", None, None),
        a.hard_sigmoid: ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
        a.linear: ("Affine", 1.0, 0.0),
    }
    for known, onnx_name in table.items():
        if fn is known:
            return onnx_name
    return None


def _rnn_kind(rnn) -> str | None:
    """"LSTM" / "GRU" / "RNN" for Keras' own layer classes with their own cells, else None."""
    layers = _keras().layers
    kinds = ((layers.LSTM, layers.LSTMCell, "LSTM"), (layers.GRU, layers.GRUCell, "GRU"),
             (layers.SimpleRNN, layers.SimpleRNNCell, "RNN"))
    for layer_cls, cell_cls, kind in kinds:
        if type(rnn) is layer_cls and type(rnn.cell) is cell_cls:
            return kind
    return None


def chain_of(model, layer) -> tuple[list, str | None]:
    """(layers from the Embedding up to the target, None) or ([], why the engine declines)."""
    from beam_pipeline import recurrent

    keras = _keras()
    chain, current = [], layer
    while True:
        try:
            args, kwargs = recurrent.inbound_call(current, model)
        except recurrent.ModelError as e:
            return [], str(e)
        below = args[0]._keras_history.operation
        chain.append(current)
        if isinstance(below, keras.layers.InputLayer):
            break
        current = below
    chain.reverse()
    if type(chain[0]) is not keras.layers.Embedding:
        return [], f"the layer reading the input is a {type(chain[0]).__name__}, not an Embedding"
    return chain, None


def _check_rnn(rnn, is_target: bool, backward: bool = False) -> str | None:
    """Why one recurrent layer (``backward``: the backward half of a Bidirectional) cannot be run."""
    kind = _rnn_kind(rnn)
    if kind is None:
        return f"layer {rnn.name!r} is a {type(rnn).__name__} with a {type(rnn.cell).__name__} (not Keras' own)"
    if rnn.go_backwards != backward:
        return f"layer {rnn.name!r} has go_backwards={rnn.go_backwards}"
    if not is_target and not rnn.return_sequences:
        return f"layer {rnn.name!r} below the target does not return sequences"
    cell = rnn.cell
    fns = [cell.activation] + ([cell.recurrent_activation] if kind != "RNN" else [])
    for fn in fns:
        if _activation(fn) is None:
            return f"layer {rnn.name!r} uses the activation {getattr(fn, '__name__', fn)!r}, which has no exact ONNX op"
    return None


# Settings of a recurrent layer that change nothing the ONNX op computes at inference: the rest of the config
# (activation, recurrent_activation, use_bias, reset_after, ...) must be the same in both halves of a
# Bidirectional layer, as the op has one ``linear_before_reset`` and this graph one setting per attribute.
_NOT_COMPUTED = {"name", "trainable", "go_backwards", "return_sequences", "return_state", "stateful", "unroll",
                 "use_cudnn", "implementation", "dropout", "recurrent_dropout", "seed", "time_major",
                 "zero_output_for_mask", "unit_forget_bias"}


def _halves_differ(layer) -> str | None:
    """Why a Bidirectional layer's two halves cannot be one ONNX op: a setting that differs between them."""
    fw, bw = layer.forward_layer.get_config(), layer.backward_layer.get_config()
    for key in sorted(set(fw) | set(bw)):
        if key in _NOT_COMPUTED or key.endswith(("_initializer", "_regularizer", "_constraint")):
            continue
        if fw.get(key) != bw.get(key):
            return (f"Bidirectional {layer.name!r}: its forward and backward layers differ in {key} "
                    f"({fw.get(key)!r} and {bw.get(key)!r}); the ONNX op runs both directions with one setting")
    return None


def why_not(ctx: Context) -> str | None:
    keras = _keras()
    if ctx.device != "cpu":
        return "on a GPU the cuDNN kernel is the fast path"
    if ctx.text_input:
        return "the model tokenizes raw text itself"
    if ctx.one_hot_depth:
        return "the model takes one-hot sequences"
    chain, reason = chain_of(ctx.model, ctx.layer)
    if reason:
        return reason
    embedding = chain[0]
    if getattr(embedding, "quantization_mode", None) or getattr(embedding, "lora_enabled", False):
        return f"the Embedding {embedding.name!r} is quantized or has LoRA weights"
    if ctx.info.masked and not (ctx.info.mask_is_padding and embedding.mask_zero):
        return (f"the mask is {ctx.info.mask_source or 'not ids != 0'}, not ids != 0 from Embedding(mask_zero=True): "
                "it cannot be sequence lengths")
    for below in chain:
        if below.dtype_policy.compute_dtype != "float32":
            return f"layer {below.name!r} computes in {below.dtype_policy.compute_dtype}, not float32"
    for below in chain[1:]:
        is_target = below is ctx.layer
        if type(below).__name__ in _IDENTITY:
            continue
        if type(below) is keras.layers.Bidirectional:
            fw, bw = below.forward_layer, below.backward_layer
            if type(fw) is not type(bw) or fw.cell.units != bw.cell.units:
                return f"Bidirectional {below.name!r} has different forward and backward layer kinds"
            reason = _check_rnn(fw, is_target) or _check_rnn(bw, is_target, backward=True) or _halves_differ(below)
            if reason:
                return reason
            if not is_target and below.merge_mode is None:
                return f"Bidirectional {below.name!r} below the target returns two outputs (merge_mode=None)"
            continue
        if isinstance(below, keras.layers.RNN):
            reason = _check_rnn(below, is_target)
            if reason:
                return reason
            continue
        return f"layer {below.name!r} ({type(below).__name__}) has no ONNX translation here"
    return None


def _numpy(variable) -> np.ndarray:
    return np.asarray(_keras().ops.convert_to_numpy(variable), dtype=np.float32)


def _direction_weights(rnn, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, R, B) of one direction in ONNX layout: W (G*H, F), R (G*H, H), B (2*G*H,)."""
    cell = rnn.cell
    units = cell.units
    kernel, recurrent = _numpy(cell.kernel), _numpy(cell.recurrent_kernel)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    if cell.use_bias:
        bias = _numpy(cell.bias)
    else:
        bias = np.zeros((gates * units,), np.float32)
    if kind == "GRU" and bias.ndim == 2:  # reset_after: (input bias, recurrent bias)
        wb, rb = bias[0], bias[1]
    else:
        wb, rb = bias, np.zeros_like(bias)
    if kind == "LSTM":  # Keras i, f, c, o -> ONNX i, o, f, c
        order = [0, 3, 1, 2]

        def reorder(a):
            blocks = np.split(a, 4, axis=-1)
            return np.concatenate([blocks[i] for i in order], axis=-1)

        kernel, recurrent, wb, rb = reorder(kernel), reorder(recurrent), reorder(wb), reorder(rb)
    return kernel.T.copy(), recurrent.T.copy(), np.concatenate([wb, rb])


class _GraphBuilder:
    def __init__(self):
        self.nodes, self.initializers, self.counter = [], [], 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper

        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs


def _recurrent_node(g: _GraphBuilder, layer, x: str, seq_lens: str, initial: list[str] | None, want_y: bool):
    """Adds one recurrent op; returns (Y (T, dirs, B, H), [Y_h, (Y_c)] each (dirs, B, H), kind)."""
    keras = _keras()
    bidirectional = type(layer) is keras.layers.Bidirectional
    rnns = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    kind = _rnn_kind(rnns[0])
    ws, rs, bs = zip(*(_direction_weights(r, kind) for r in rnns))
    acts, alphas, betas = [], [], []
    for r in rnns:
        fns = [r.cell.recurrent_activation, r.cell.activation, r.cell.activation] if kind == "LSTM" else (
            [r.cell.recurrent_activation, r.cell.activation] if kind == "GRU" else [r.cell.activation])
        for fn in fns:
            name, alpha, beta = _activation(fn)
            acts.append(name)
            alphas.append(alpha)
            betas.append(beta)
    attrs = {"hidden_size": int(rnns[0].cell.units), "activations": acts,
             "direction": "bidirectional" if bidirectional else "forward"}
    if any(a is not None for a in alphas):  # ONNX reads alpha/beta in order for the activations that take them
        attrs["activation_alpha"] = [a for a in alphas if a is not None]
        attrs["activation_beta"] = [b for b in betas if b is not None]
    if kind == "GRU":
        attrs["linear_before_reset"] = int(bool(rnns[0].cell.reset_after))
    inputs = [x, g.const("W", np.stack(ws)), g.const("R", np.stack(rs)), g.const("B", np.stack(bs)), seq_lens]
    inputs += initial or []
    n_out = 3 if kind == "LSTM" else 2
    outs = g.node(kind, inputs, n_out=n_out, **attrs)
    if not want_y:  # an omitted optional output is never written
        outs[0] = ""
        g.nodes[-1].output[0] = ""
    return outs[0], outs[1:], kind


def _next_input(g: _GraphBuilder, layer, y: str) -> str:
    """The (T, B, F) input of the next layer from a recurrent op's Y (T, dirs, B, H)."""
    keras = _keras()
    if type(layer) is not keras.layers.Bidirectional:
        return g.node("Squeeze", [y, g.const("axes", np.array([1], np.int64))])[0]
    merge = layer.merge_mode
    if merge == "concat":
        t = g.node("Transpose", [y], perm=[0, 2, 1, 3])[0]
        return g.node("Reshape", [t, g.const("shape", np.array([0, 0, -1], np.int64))])[0]
    fw, bw = g.node("Split", [y], n_out=2, axis=1)
    fw = g.node("Squeeze", [fw, g.const("axes", np.array([1], np.int64))])[0]
    bw = g.node("Squeeze", [bw, g.const("axes", np.array([1], np.int64))])[0]
    if merge == "sum":
        return g.node("Add", [fw, bw])[0]
    if merge == "mul":
        return g.node("Mul", [fw, bw])[0]
    total = g.node("Add", [fw, bw])[0]  # ave
    return g.node("Div", [total, g.const("two", np.array(2.0, np.float32))])[0]


def _merge(fw: np.ndarray, bw: np.ndarray, merge: str | None) -> np.ndarray:
    if merge in ("concat", None):
        return np.concatenate([fw, bw], axis=-1)
    if merge == "sum":
        return fw + bw
    if merge == "mul":
        return fw * bw
    return (fw + bw) / 2


_ONNX_INT = {"int32": 6, "int64": 7, "float32": 1, "float64": 11, "int16": 5, "uint8": 2, "int8": 3}


class OnnxEngine(Engine):
    """The layers up to the target as one ONNX graph run by ONNX Runtime (see the module doc)."""

    name = "onnx"

    @classmethod
    def why_not(cls, ctx: Context) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"onnx / onnxruntime not installed ({e})"
        if ctx.input_dtype not in _ONNX_INT:
            return f"input dtype {ctx.input_dtype} has no ONNX mapping here"
        return why_not(ctx)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        keras = _keras()
        self.chain, _ = chain_of(ctx.model, ctx.layer)
        recurrent_layers = [x for x in self.chain[1:] if type(x).__name__ not in _IDENTITY]
        self.masked = bool(ctx.info.masked)
        self.prefix = (not self.masked and ctx.padding == "pre"
                       and not any(type(x) is keras.layers.Bidirectional for x in recurrent_layers))
        self.kinds = [_rnn_kind(x.forward_layer if type(x) is keras.layers.Bidirectional else x)
                      for x in recurrent_layers]
        self.units = [int((x.forward_layer if type(x) is keras.layers.Bidirectional else x).cell.units)
                      for x in recurrent_layers]
        self.target = ctx.layer
        self.bidirectional = type(ctx.layer) is keras.layers.Bidirectional
        self.session, self.output_names = self._session(recurrent_layers)
        self.tables: list[list[np.ndarray]] = []
        if self.prefix:
            self.tables = self._padding_tables()

    def _session(self, recurrent_layers):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        g = _GraphBuilder()
        ids_dtype = _ONNX_INT[self.ctx.input_dtype]
        graph_inputs = [helper.make_tensor_value_info("ids", ids_dtype, ["B", "T"])]
        ids = g.node("Transpose", ["ids"], perm=[1, 0])[0]
        if ids_dtype not in (6, 7):
            ids = g.node("Cast", [ids], to=TensorProto.INT32)[0]
        embedding = self.chain[0]
        x = g.node("Gather", [g.const("E", _numpy(embedding.embeddings)), ids], axis=0)[0]
        seq_lens = ""
        if self.masked or self.prefix:
            seq_lens = "seq_lens"
            graph_inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["B"]))
        target_outputs, below_states = [], []
        for i, layer in enumerate(recurrent_layers):
            initial = None
            if self.prefix:
                initial = [f"h0_{i}"] + ([f"c0_{i}"] if self.kinds[i] == "LSTM" else [])
                graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", self.units[i]])
                                 for n in initial]
            is_target = layer is self.target
            y, states, _ = _recurrent_node(g, layer, x, seq_lens, initial,
                                           want_y=not is_target or self.ctx.mode == "sequence")
            if is_target:
                target_outputs = [y, *states] if self.ctx.mode == "sequence" else states
            else:
                x = _next_input(g, layer, y)
                if self.prefix:
                    below_states += states
        # Graph outputs: the target's (Y,) states, then (prefix) the states of every layer below it.
        rename = {out: f"out{k}" for k, out in enumerate(target_outputs + below_states)}
        y_out = self.ctx.mode == "sequence"  # Y is (T, dirs, B, H), the states (dirs, B, H)
        for node in g.nodes:
            node.output[:] = [rename.get(o, o) for o in node.output]
        graph = helper.make_graph(
            g.nodes, "recurrent_submodel", graph_inputs,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}_{d}" for d in range(4 if k == 0 and y_out
                                                                                               else 3)])
             for k, n in enumerate(rename.values())], g.initializers,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        proto.ir_version = min(proto.ir_version, 10)
        onnx.checker.check_model(proto)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's intra-op threads spin between runs by default; the job reads, tokenizes and writes on
        # another thread meanwhile, which the spinning slows. Off: same wall time, 10-20% less CPU
        # (300000 documents, unmasked LSTM and masked Bi-LSTM stack, 2 cores; 2026-11-24).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session, list(rename.values())

    def _feeds(self, ids: np.ndarray, lengths: np.ndarray | None, initial: list[np.ndarray] | None) -> dict:
        feeds = {"ids": ids}
        if lengths is not None:
            feeds["seq_lens"] = lengths.astype(np.int32)
        if initial is not None:
            names = [n.name for n in self.session.get_inputs() if n.name.startswith(("h0_", "c0_"))]
            feeds.update(dict(zip(names, initial)))
        return feeds

    def _state_count(self, kind: str) -> int:
        return 2 if kind == "LSTM" else 1

    def _split(self, out: list[np.ndarray]) -> tuple[np.ndarray | None, list[np.ndarray], list[np.ndarray]]:
        """(target Y or None, target states, states of the layers below) from the session's outputs."""
        y = None
        if self.ctx.mode == "sequence":
            y, out = out[0], out[1:]
        n = self._state_count(self.kinds[-1])
        return y, list(out[:n]), list(out[n:])

    def _padding_tables(self) -> list[np.ndarray]:
        """Per state input (chain order): (maxlen + 1, H) states after 0..maxlen padding steps."""
        t = self.ctx.maxlen
        ids = np.zeros((t, t), dtype=self.ctx.input_dtype)
        lengths = np.arange(1, t + 1, dtype=np.int32)
        initial = []
        for kind, units in zip(self.kinds, self.units):
            initial += [np.zeros((1, t, units), np.float32)] * self._state_count(kind)
        out = self.session.run(None, self._feeds(ids, lengths, initial))
        _, target_states, below_states = self._split(out)
        tables = []
        for states in (*below_states, *target_states):  # chain order: the layers below, the target last
            table = np.zeros((t + 1, states.shape[-1]), np.float32)
            table[1:] = states[0]
            tables.append(table)
        return tables

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.timesteps_run = None
        nonzero = batch != 0
        lengths = nonzero.sum(axis=1).astype(np.int32)
        width = batch.shape[1]
        positions = np.arange(width)[None, :]
        if self.masked or self.prefix:
            expected = positions < lengths[:, None] if self.masked else positions >= (width - lengths)[:, None]
            if not lengths.all() or not np.array_equal(nonzero, expected) or (self.prefix and width != self.ctx.maxlen):
                from beam_pipeline.engines.keras_graph import KerasEngine

                return KerasEngine(self.ctx).run(batch)  # an empty row or an id 0 among the tokens
        if self.prefix:
            return self._run_from_prefix(batch, lengths)
        if self.masked:
            self.timesteps_run = 0
            return in_length_sorted_chunks(batch, lengths, MASKED_CHUNK, self._masked_chunk)
        y, states, _ = self._split(self.session.run(None, self._feeds(batch, None, None)))
        return self._outputs(y, states)

    def _masked_chunk(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """A chunk of right-padded documents, run only as wide as its longest one (Y past a document's
        length is zeros, as ONNX's op writes it)."""
        width = batch.shape[1]
        steps = int(lengths.max())
        self.timesteps_run += len(batch) * steps
        y, states, _ = self._split(self.session.run(None, self._feeds(batch[:, :steps], lengths, None)))
        if y is not None and steps < width:
            y = np.concatenate([y, np.zeros((width - steps, *y.shape[1:]), y.dtype)])
        return self._outputs(y, states)

    def _run_from_prefix(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Documents sorted by length and read in chunks of ``PREFIX_CHUNK``, each chunk only as
        wide as its longest document: the real tokens, from the states their padding reaches."""
        self.timesteps_run = 0
        return in_length_sorted_chunks(batch, lengths, PREFIX_CHUNK, self._prefix_chunk)

    def _prefix_chunk(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        width = batch.shape[1]
        steps = int(lengths.max())
        self.timesteps_run += len(batch) * steps
        skip = width - lengths  # leading padding steps of each document
        left = np.zeros((len(batch), steps), batch.dtype)
        left[np.arange(steps)[None, :] < lengths[:, None]] = batch[batch != 0]
        initial = [table[skip][None] for table in self.tables]
        y, states, _ = self._split(self.session.run(None, self._feeds(left, lengths, initial)))
        if self.ctx.mode == "sequence":  # back to the trained positions, padding steps from the table
            h_table = self.tables[-self._state_count(self.kinds[-1])]
            source = np.arange(width)[None, :] - skip[:, None]  # (B, T): step in the real tokens, < 0 for padding
            full = np.empty((len(batch), width, y.shape[-1]), np.float32)
            pad = source < 0
            rows = np.nonzero(~pad)
            full[rows] = y[source[rows], 0, rows[0]]
            full[pad] = h_table[np.nonzero(pad)[1] + 1]
            return [full]
        return self._outputs(None, states)

    def _outputs(self, y: np.ndarray | None, states: list[np.ndarray]) -> list[np.ndarray]:
        """The sub-model's outputs for the mode from the target op's Y (T, dirs, B, H) and states (dirs, B, H)."""
        mode, merge = self.ctx.mode, getattr(self.target, "merge_mode", None)
        if mode == "sequence":
            y = y.transpose(2, 0, 1, 3)  # (B, T, dirs, H)
            if self.bidirectional:
                return [_merge(y[:, :, 0], y[:, :, 1], merge)]
            return [np.ascontiguousarray(y[:, :, 0])]
        h = states[0]
        if mode == "final":
            return [_merge(h[0], h[1], merge) if self.bidirectional else h[0]]
        dirs = range(2 if self.bidirectional else 1)
        return [s[d] for d in dirs for s in states]
