"""Runs the truncated sub-model over batches of token ids; no Beam here.

A batch is padded the way the model needs it:

- unmasked models: exactly as trained, to ``maxlen`` with ``--padding`` (padding timesteps are
  part of what the layer computes, so they must stay);
- masked models (the layer receives a mask: ``mask_zero=True`` or ``Masking``) with length
  bucketing on: right-padded to the batch's own longest document. Masked timesteps leave the state
  untouched, so the values equal those of fixed ``maxlen`` padding on either side, with far fewer
  timesteps; right padding is also what cuDNN needs on a GPU.

``sequence`` outputs keep only the real-token positions, so where padding went never shows.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np

from beam_pipeline import engines, recurrent

LOG = logging.getLogger(__name__)

WIDTH_STEP = 8  # trimmed batches are padded to a multiple of this many timesteps


@dataclass
class EmbeddedBatch:
    """Outputs for one batch: per column either a ``(B, D)`` array or, for ``sequence``, a flat
    ``(sum(lengths), D)`` array with ``offsets`` (``B + 1``) delimiting each document's rows."""

    lengths: np.ndarray  # (B,) int32 tokens per document that reached the model
    columns: dict[str, np.ndarray]
    offsets: np.ndarray | None
    padded_timesteps: int
    seconds: float
    windows: np.ndarray | None = None  # (B,) int32 windows read per document (--long_docs carry)


def configure_device(device: str) -> str:
    """Makes TensorFlow use the requested device; returns ``"gpu"`` or ``"cpu"``.

    ``auto`` uses a GPU when TensorFlow sees one. GPU memory growth is turned on so that one
    model per process does not reserve the whole card.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # already initialized in this process
            pass
        return "cpu"
    if device == "gpu" and not gpus:
        raise RuntimeError("--device gpu was requested but TensorFlow sees no GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    return "gpu" if gpus else "cpu"


def kernel_path(info: recurrent.LayerInfo, layer, device: str) -> str:
    """Which implementation Keras will run for the layer, for the log line."""
    rnn = layer.forward_layer if info.bidirectional else layer
    if device != "gpu":
        return "cpu (generic while_loop kernel)"
    if info.cell_class not in ("LSTM", "GRU"):
        return "gpu (generic kernel: SimpleRNN has no cuDNN path)"
    reasons = []
    if getattr(rnn, "recurrent_dropout", 0):
        reasons.append("recurrent_dropout")
    if getattr(rnn, "unroll", False):
        reasons.append("unroll")
    if getattr(rnn, "use_cudnn", "auto") is False:
        reasons.append("use_cudnn=False")
    if reasons:
        return "gpu (generic kernel, cuDNN disabled by " + ", ".join(reasons) + ")"
    return "gpu (cuDNN kernel, right-padded masks)"


_as_arrays = engines.as_arrays


class Embedder:
    """The loaded sub-model plus the padding rules; ``embed`` turns token-id lists into vectors."""

    def __init__(
        self,
        model,
        layer_spec: str | None,
        mode: str,
        maxlen: int,
        padding: str = "pre",
        truncating: str = "pre",
        length_bucketing: bool = True,
        device: str = "cpu",
        jit: bool = True,
        long_docs: str = "truncate",
        engine: str = "auto",
    ):
        self.model_for_windows = model
        self.layer = recurrent.find_layer(model, layer_spec)
        self.info = recurrent.describe_layer(self.layer, model)
        self.mode = mode
        self.maxlen = maxlen
        self.padding = padding
        self.truncating = truncating
        self.trim = bool(length_bucketing and self.info.masked)
        self.submodel = recurrent.build_submodel(model, self.layer, mode)
        # A model fed one-hot sequences gets token ids too: the one-hot tensor is built inside the
        # compiled step, padding (id 0) as the all-zero vector.
        self.one_hot_depth = recurrent.one_hot_depth(model)
        self.model_dtype = str(model.inputs[0].dtype)
        self.input_dtype = "int32" if self.one_hot_depth else self.model_dtype
        # A model that takes raw text tokenizes it itself (in-model TextVectorization): the batch is
        # the texts, padded by the model; its token ids come back as the sub-model's last output.
        self.text_input = recurrent.takes_text(model)
        self.input_shape = tuple(model.inputs[0].shape[1:])
        if self.text_input:
            self.trim = False
        self.column_names = [name for name, _ in self.info.columns(mode)]
        self.carry = long_docs == "carry"
        if self.carry:
            self.trim = False  # every window is maxlen wide; the states carry the document across them
            self._window_fn, self._state_sizes, self._n_target = self._compile_window()
        # The engine (keras graph, XLA, ONNX Runtime) is chosen on the first batch: see engines.choose.
        self.engine_context = engines.Context(
            model=model, layer=self.layer, info=self.info, mode=mode, maxlen=maxlen, padding=padding, device=device,
            input_dtype=self.input_dtype, model_dtype=self.model_dtype, one_hot_depth=self.one_hot_depth,
            text_input=self.text_input, input_shape=self.input_shape, jit=bool(jit), submodel=self.submodel)
        self.engine_request = engine
        self.engine: engines.Engine | None = None
        self.engine_report: dict = {}
        self.kernel = kernel_path(self.info, self.layer, device)
        LOG.info(
            "embedding layer %s (%s) mode=%s masked=%s length_bucketing=%s kernel path: %s; engine %s",
            self.info.name, self.info.class_name, mode, self.info.masked, self.trim, self.kernel, engine,
        )

    def _compile_window(self):
        """The one-window step of ``--long_docs carry`` as a traced function of (ids, *states)."""
        import tensorflow as tf

        window_model, sizes, n_target = recurrent.build_window_model(self.model_for_windows, self.layer, self.mode)
        specs = [tf.TensorSpec([None, None], tf.dtypes.as_dtype(self.input_dtype))]
        specs += [tf.TensorSpec([None, n], tf.float32) for n in sizes]

        def step(x, *states):
            if self.one_hot_depth:
                real = tf.cast(tf.not_equal(x, 0), self.model_dtype)[..., None]
                x = tf.one_hot(x, self.one_hot_depth, dtype=self.model_dtype) * real
            return window_model([x, *states], training=False)

        return tf.function(step, input_signature=specs, reduce_retracing=True), sizes, n_target

    def _embed_carry(self, seqs: list[list[int]]) -> EmbeddedBatch:
        """Reads each document window by window, every recurrent layer starting from the states it
        ended the previous window in: one pass over the whole document, in ``maxlen`` pieces.

        Masked models: windows are the document's tokens in order, the last right-padded (masked).
        Unmasked models: the document is padded to whole windows with ``--padding``, as trained."""
        w = self.maxlen
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
        windows = np.maximum(1, -(-lengths // w)).astype(np.int32)
        full, real_full = [], []
        for ids, n in zip(seqs, windows):
            width = int(n) * w
            padded = np.zeros(width, dtype=self.input_dtype)
            real = np.zeros(width, dtype=bool)
            start = width - len(ids) if (not self.info.masked and self.padding == "pre") else 0
            padded[start:start + len(ids)] = ids
            real[start:start + len(ids)] = True
            full.append(padded)
            real_full.append(real)
        states = [np.zeros((len(seqs), n), dtype=np.float32) for n in self._state_sizes]
        finals: list = [None] * len(seqs)
        pieces: list[list[np.ndarray]] = [[] for _ in seqs]
        padded_timesteps, seconds = 0, 0.0
        for k in range(int(windows.max(initial=0))):
            active = np.flatnonzero(windows > k)
            batch = np.stack([full[i][k * w:(k + 1) * w] for i in active])
            start = time.perf_counter()
            out = _as_arrays(self._window_fn(batch, *[st[active] for st in states]))
            seconds += time.perf_counter() - start
            padded_timesteps += batch.size
            target, new_states = out[:self._n_target], out[self._n_target:]
            for st, new in zip(states, new_states):
                st[active] = new
            for row, i in enumerate(active):
                if self.mode == "sequence":
                    pieces[i].append(target[0][row][real_full[i][k * w:(k + 1) * w]])
                elif k == windows[i] - 1:
                    finals[i] = [t[row] for t in target]
        offsets = None
        if self.mode == "sequence":
            columns = {self.column_names[0]: np.ascontiguousarray(
                np.concatenate([np.concatenate(p) for p in pieces]), dtype=np.float32)}
            offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
        else:
            columns = {name: np.stack([f[j] for f in finals]).astype(np.float32)
                       for j, name in enumerate(self.column_names)}
        return EmbeddedBatch(lengths, columns, offsets, padded_timesteps, seconds, windows)

    def _one_hot_numpy(self, batch: np.ndarray) -> np.ndarray:
        if not self.one_hot_depth:
            return batch
        eye = np.eye(self.one_hot_depth, dtype=self.model_dtype)
        eye[0] = 0
        return eye[batch]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Runs a padded batch on the engine, chosen (verified and timed) on the first batch."""
        if self.engine is None:
            compare = (batch != 0) if (self.mode == "sequence" and not self.text_input) else None
            choice = engines.choose(self.engine_context, self.engine_request, batch, compare)
            self.engine, self.engine_report = choice.engine, choice.report
        return self.engine.run(batch)

    def pad(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(padded batch, lengths, boolean mask of real-token positions) for truncated sequences."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
        if self.trim:  # the batch's longest document, rounded up so that batch shapes repeat
            width = min(-(-max(int(lengths.max(initial=0)), 1) // WIDTH_STEP) * WIDTH_STEP, self.maxlen)
        else:
            width = self.maxlen
        positions = np.arange(width, dtype=np.int32)[None, :]
        if self.info.masked or self.padding == "post":  # masked: right padding is exact, and what cuDNN needs
            real = positions < lengths[:, None]
        else:
            real = positions >= (width - lengths)[:, None]
        batch = np.zeros((len(seqs), width), dtype=self.input_dtype)
        total = int(lengths.sum())
        batch[real] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=self.input_dtype, count=total)
        return batch, lengths, real

    def embed(self, seqs: list) -> EmbeddedBatch:
        """Vectors for token-id sequences, each ``1 <= len <= maxlen`` (any length with carry), or
        for raw texts when the model tokenizes itself (``num_tokens`` may then be 0)."""
        if self.carry:
            return self._embed_carry(seqs)
        if self.text_input:
            batch = np.asarray(seqs, dtype=object).reshape((len(seqs), *self.input_shape))
        else:
            batch, lengths, real = self.pad(seqs)
        start = time.perf_counter()
        outputs = self._run(batch)
        seconds = time.perf_counter() - start
        if self.text_input:  # the model's own padding: id 0 (TextVectorization's mask token)
            ids, outputs = outputs[-1], outputs[:-1]
            real = ids != 0
            lengths = real.sum(axis=1).astype(np.int32)
            batch = ids
        offsets = None
        if self.mode == "sequence":
            columns = {self.column_names[0]: np.ascontiguousarray(outputs[0][real], dtype=np.float32)}
            offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
        else:
            columns = {name: np.asarray(out, dtype=np.float32) for name, out in zip(self.column_names, outputs)}
        return EmbeddedBatch(lengths, columns, offsets, int(batch.size), seconds)
