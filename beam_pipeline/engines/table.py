"""Projection-table engine (``table``): for a recurrent layer fed by an ``Embedding`` (through
dropout-like layers only), the input projection of a token is ``E[id] @ W + b``, the same for every
occurrence, so ``P = E @ W + b`` is computed once per vocabulary row and the time loop gathers
``P[id]`` instead of multiplying: only ``h @ R`` stays in the loop, which runs XLA-compiled.

Runs a unidirectional ``LSTM`` / ``GRU`` / ``SimpleRNN`` (Keras' own classes and cells) that is the
only recurrent layer up to the target, masked (``mask_zero=True``) or not, with the layer's own
activation functions. Anything else is declined.
"""

from __future__ import annotations

import numpy as np

from beam_pipeline.engines import Context, Engine, as_arrays, in_length_sorted_chunks
from beam_pipeline.engines.onnx_rt import _IDENTITY, PREFIX_CHUNK, _numpy, _rnn_kind, chain_of


class TableEngine(Engine):
    name = "table"

    @classmethod
    def why_not(cls, ctx: Context) -> str | None:
        import keras

        if keras.backend.backend() != "tensorflow":
            return "the table engine runs on the TensorFlow backend"
        if ctx.device != "cpu":
            return "on a GPU the cuDNN kernel is the fast path"
        if ctx.text_input or ctx.one_hot_depth:
            return "the model does not take token ids"
        chain, reason = chain_of(ctx.model, ctx.layer)
        if reason:
            return reason
        middle = chain[1:-1]
        for below in middle:
            if type(below).__name__ not in _IDENTITY:
                return f"layer {below.name!r} ({type(below).__name__}) sits between the Embedding and the target"
        embedding, rnn = chain[0], ctx.layer
        if _rnn_kind(rnn) is None:
            return f"the target {rnn.name!r} is not a unidirectional Keras LSTM, GRU or SimpleRNN"
        if rnn.go_backwards:
            return f"layer {rnn.name!r} reads backwards (go_backwards=True)"
        if ctx.info.masked and not (ctx.info.mask_is_padding and embedding.mask_zero):
            return f"the mask is {ctx.info.mask_source or 'not ids != 0'}, not ids != 0 from Embedding(mask_zero=True)"
        if getattr(embedding, "quantization_mode", None) or getattr(embedding, "lora_enabled", False):
            return f"the Embedding {embedding.name!r} is quantized or has LoRA weights"
        for layer in (embedding, rnn):
            if layer.dtype_policy.compute_dtype != "float32":
                return f"layer {layer.name!r} computes in {layer.dtype_policy.compute_dtype}, not float32"
        return None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        import tensorflow as tf

        chain, _ = chain_of(ctx.model, ctx.layer)
        cell = ctx.layer.cell
        self.kind = _rnn_kind(ctx.layer)
        embeddings = _numpy(chain[0].embeddings)
        kernel = _numpy(cell.kernel)
        units = int(cell.units)
        bias = _numpy(cell.bias) if cell.use_bias else np.zeros((kernel.shape[1],), np.float32)
        input_bias, recurrent_bias = (bias[0], bias[1]) if bias.ndim == 2 else (bias, None)
        # Keras adds x @ W, h @ R and b in that order; the table holds x @ W + b (float32, ~1 ulp apart)
        table = embeddings @ kernel + input_bias
        self.table = tf.constant(table.astype(np.float32))
        self.recurrent = tf.constant(_numpy(cell.recurrent_kernel))
        self.recurrent_bias = None if recurrent_bias is None else tf.constant(recurrent_bias)
        self.units = units
        self.masked = bool(ctx.info.masked)
        self.sequence = ctx.mode == "sequence"
        self.act, self.rec_act = cell.activation, getattr(cell, "recurrent_activation", None)
        self.reset_after = bool(getattr(cell, "reset_after", False))
        # One compiled shape per row count: ids are always maxlen wide and the loop runs ``steps`` steps.
        ids_spec = tf.TensorSpec([None, ctx.maxlen], tf.dtypes.as_dtype(ctx.input_dtype))
        steps_spec = tf.TensorSpec([], tf.int32)
        self._fn = tf.function(lambda ids, steps: self._loop(ids, steps, hold=self.masked),
                               input_signature=[ids_spec, steps_spec], jit_compile=True)
        # Unmasked, padded "pre": every document starts from the states its padding prefix reaches.
        self.prefix = not self.masked and ctx.padding == "pre"
        self._rows = 0
        if self.prefix:
            n_states = 2 if self.kind == "LSTM" else 1
            state_spec = tf.TensorSpec([None, units], tf.float32)
            self._fn_prefix = tf.function(lambda ids, steps, *s: self._loop(ids, steps, *s, hold=True),
                                          input_signature=[ids_spec, steps_spec] + [state_spec] * n_states,
                                          jit_compile=True)
            self.tables = self._padding_tables()

    def _cell(self, x, states):
        import tensorflow as tf

        h = states[0]
        if self.kind == "LSTM":
            z = x + tf.matmul(h, self.recurrent)
            i, f, g, o = tf.split(z, 4, axis=-1)
            i, f, o = self.rec_act(i), self.rec_act(f), self.rec_act(o)
            c = f * states[1] + i * self.act(g)
            return [o * self.act(c), c]
        if self.kind == "GRU":
            u = self.units
            x_z, x_r, x_h = x[:, :u], x[:, u:2 * u], x[:, 2 * u:]
            if self.reset_after:
                inner = tf.matmul(h, self.recurrent)
                if self.recurrent_bias is not None:
                    inner = inner + self.recurrent_bias
                z = self.rec_act(x_z + inner[:, :u])
                r = self.rec_act(x_r + inner[:, u:2 * u])
                hh = self.act(x_h + r * inner[:, 2 * u:])
            else:
                inner = tf.matmul(h, self.recurrent[:, :2 * u])
                z = self.rec_act(x_z + inner[:, :u])
                r = self.rec_act(x_r + inner[:, u:])
                hh = self.act(x_h + tf.matmul(r * h, self.recurrent[:, 2 * u:]))
            return [z * h + (1 - z) * hh]
        return [self.act(x + tf.matmul(h, self.recurrent))]

    def _loop(self, ids, steps, *initial, hold: bool):
        """The time loop over the first ``steps`` columns of ``ids`` (B, maxlen) from ``initial``
        states (zeros when none); ``hold``: a step on id 0 keeps the states (the mask, or the end of
        a left-aligned document). Sequence outputs are (B, maxlen, units), zero after ``steps``."""
        import tensorflow as tf

        ids = tf.cast(ids, tf.int32)
        batch = tf.shape(ids)[0]
        n_states = 2 if self.kind == "LSTM" else 1
        states = list(initial) or [tf.zeros([batch, self.units], tf.float32) for _ in range(n_states)]
        outputs = tf.zeros([self.ctx.maxlen, batch, self.units], tf.float32) if self.sequence else None

        def body(t, states, outputs):
            token = ids[:, t]
            new = self._cell(tf.gather(self.table, token), states)
            if hold:
                keep = tf.not_equal(token, 0)[:, None]
                new = [tf.where(keep, n, s) for n, s in zip(new, states)]
            if outputs is not None:
                outputs = tf.tensor_scatter_nd_update(outputs, [[t]], new[0][None])
            return t + 1, new, outputs

        loop_vars = (tf.constant(0), states, outputs) if outputs is not None else (tf.constant(0), states)
        result = tf.while_loop(lambda t, *_: t < steps,
                               (lambda t, s, o: body(t, s, o)) if outputs is not None
                               else (lambda t, s: body(t, s, None)[:2]), loop_vars)
        states = result[1]
        if self.sequence:
            return [tf.transpose(result[2], [1, 0, 2])]
        if self.ctx.mode == "final":
            return [states[0]]
        return list(states)

    def _padding_tables(self) -> list[np.ndarray]:
        """Per state: (maxlen + 1, units) states after 0..maxlen padding steps (id 0, unmasked)."""
        import tensorflow as tf

        n_states = 2 if self.kind == "LSTM" else 1
        states = [tf.zeros([1, self.units], tf.float32) for _ in range(n_states)]
        tables = [[np.zeros(self.units, np.float32)] for _ in range(n_states)]
        step = tf.function(lambda s: self._cell(tf.gather(self.table, tf.zeros([1], tf.int32)), s), jit_compile=True)
        for _ in range(self.ctx.maxlen):
            states = step(states)
            for table, state in zip(tables, states):
                table.append(np.asarray(state)[0])
        return [np.stack(t) for t in tables]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.timesteps_run = None
        if not self.prefix:
            n, width = batch.shape
            self._rows = max(self._rows, n)  # a short batch (a bundle's last) is topped up: no new compile
            ids = self._full_width(batch)
            if n < self._rows:
                ids = np.concatenate([ids, np.zeros((self._rows - n, ids.shape[1]), ids.dtype)])
            out = [o[:n] for o in as_arrays(self._fn(ids, np.int32(width)))]
            return [out[0][:, :width]] if self.sequence else out
        lengths = (batch != 0).sum(axis=1)
        width = batch.shape[1]
        if not lengths.all() or not np.array_equal(batch != 0, np.arange(width)[None, :] >= (width - lengths)[:, None]):
            from beam_pipeline.engines.keras_graph import KerasEngine

            return KerasEngine(self.ctx).run(batch)  # an empty row or an id 0 among the tokens
        self.timesteps_run = 0
        return in_length_sorted_chunks(batch, lengths, PREFIX_CHUNK, self._prefix_chunk)

    def _full_width(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == self.ctx.maxlen:
            return batch
        full = np.zeros((len(batch), self.ctx.maxlen), batch.dtype)
        full[:, :batch.shape[1]] = batch
        return full

    def _prefix_chunk(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Left-aligned real tokens, from the states after each document's padding prefix, for as
        many steps as the chunk's longest document. A short chunk is topped up with empty rows to
        ``PREFIX_CHUNK`` so that every chunk has the one compiled shape."""
        n, width = len(batch), batch.shape[1]
        rows = max(n, PREFIX_CHUNK)
        skip = np.full(rows, width)
        skip[:n] = width - lengths
        left = np.zeros((rows, width), batch.dtype)
        left[:n][np.arange(width)[None, :] < lengths[:, None]] = batch[batch != 0]
        self.timesteps_run += rows * int(lengths.max())  # the topped-up rows are computed too
        out = as_arrays(self._fn_prefix(left, np.int32(lengths.max()), *[t[skip] for t in self.tables]))
        out = [o[:n] for o in out]
        if not self.sequence:
            return out
        skip = skip[:n]
        y = out[0]
        source = np.arange(width)[None, :] - skip[:, None]
        full = np.empty((len(batch), width, y.shape[-1]), np.float32)
        pad = source < 0
        rows = np.nonzero(~pad)
        full[rows] = y[rows[0], source[rows]]
        full[pad] = self.tables[0][np.nonzero(pad)[1] + 1]
        return [full]
