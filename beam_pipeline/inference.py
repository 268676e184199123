"""Runs the truncated sub-model over batches of token ids; no Beam here.

A batch is padded the way the model needs it:

- unmasked models: exactly as trained, to ``maxlen`` with ``--padding`` (padding timesteps are
  part of what the layer computes, so they must stay);
- models whose mask is exactly ``ids != 0`` (``Embedding(mask_zero=True)``, passed on unchanged)
  with length bucketing on: right-padded to the batch's own longest document. Masked timesteps leave
  the state untouched, so the values equal those of fixed ``maxlen`` padding on either side, with far
  fewer timesteps; right padding is also what cuDNN needs on a GPU. A mask computed from the values
  (a ``Masking`` layer) need not hide exactly the padding: such models are padded as unmasked ones;
- models with a layer that needs the trained, static time axis (``TimeDistributed``, ``unroll=True``,
  ``Reshape``; ``recurrent.needs_static_time_axis``) always run ``maxlen`` wide.

``sequence`` outputs keep only the real-token positions, so where padding went never shows. Vector
*k* of a document is the layer's output right after it has read token *k*; for a ``go_backwards``
layer, which reads the document from its end and returns its outputs in reading order, the
outputs are reversed back into document order (the alignment Keras gives the backward half of a
``Bidirectional`` layer).

A document with no token (``num_tokens = 0``) never enters a batch: its value is the model's
output on a row of padding alone (for a masked model, a fully masked row, which the cuDNN kernel
rejects), the same for every such document, so it is computed once per loaded model, eagerly on the
CPU, and reused. ``sequence`` gives it no vector.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from beam_pipeline import engines, nested, recurrent
from beam_pipeline.ragged import Ragged

LOG = logging.getLogger(__name__)

WIDTH_STEP = 8  # trimmed batches are padded to a multiple of this many timesteps


@dataclass
class EmbeddedBatch:
    """Outputs for one batch: per column either a ``(B, D)`` array or, for ``sequence``, a flat
    ``(sum(lengths), D)`` array with ``offsets`` (``B + 1``) delimiting each document's rows."""

    lengths: np.ndarray  # (B,) int32 tokens per document that reached the model
    columns: dict[str, np.ndarray]
    offsets: np.ndarray | None
    padded_timesteps: int  # timesteps the model computed: rows x width, or what a padding-prefix engine ran
    seconds: float
    windows: np.ndarray | None = None  # (B,) int32 windows read per document (--long_docs carry)
    engines: np.ndarray | None = None  # (B,) uint8: each document's engine (engines.NAMES; padding-only: keras)


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


def describe_mask(info: recurrent.LayerInfo) -> str:
    """The layer's mask and what it means for padding, in words (log line, inspect)."""
    if not info.masked:
        return "none: padding required (the padding timesteps go through the layer)"
    if info.mask_is_padding:
        return f"{info.mask_source}: hides exactly the padding, whose side changes no value"
    return f"{info.mask_source}: padding required, batches padded exactly as trained"

# --engine auto: calibrating costs seconds (an ONNX graph built, XLA and table loops compiled, each
# engine run and timed), which a small job never earns back. The Keras graph runs a worker's first
# documents; calibration comes in two steps, each on the first full batch (as many documents as the
# largest batch the worker has run) after a fixed number of documents:
# - after CALIBRATE_QUICK_AFTER_DOCS, the engines that build in a fraction of a second (QUICK_ENGINES:
#   ONNX, 0.1-0.2 s for the bench's 64-unit LSTMs) are verified and timed (once each) against the graph,
#   and the fastest exact one runs on. 1024 documents: 2 batches of the default 512, ~0.07 s of the Keras
#   graph there on a quiet machine (ski rental: about what building ONNX costs), much more beside a
#   bundle's other threads (its while loop waits on its thread pool at each step: measured, a 1M-document
#   --previous night spent 2.2 s in 11 graph calls). The documents such a night embeds (a few % of its
#   input) run here: on the graph, padded to maxlen, ~70 us each; on ONNX Runtime ~20;
# - after CALIBRATE_AFTER_DOCS, every eligible engine (XLA and table compile for a second or more).
#   32768 documents: 64 batches of the default 512, about 2 s of the Keras graph for the bench's 64-unit
#   LSTMs (what the former 2 s threshold reached there), more for larger models.
# Fixed points in documents, not in seconds: which batches run on which engine follows from the batches
# a worker is given, never from how long they took (only the calibration's own timing decides the engine).
QUICK_ENGINES = ("onnx",)
CALIBRATE_QUICK_AFTER_DOCS = 1024
CALIBRATE_AFTER_DOCS = 32768
# The chosen engine is checked again on this many of a batch's longest documents whenever they are
# longer than any it was checked on (at most maxlen times per worker).
VERIFY_ROWS = 8


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
        model, self.layer, _ = nested.locate(model, layer_spec)  # a nested target: the model inlined up to it
        model = recurrent.single_input_view(model, self.layer)  # a multi-input model: the text input's part
        self.model_for_windows = model
        self.info = recurrent.describe_layer(self.layer, model)
        self.mode = mode
        self.maxlen = maxlen
        self.padding = padding
        self.truncating = truncating
        if mode == "sequence":
            recurrent.check_sequence_mode(model, self.layer, maxlen)
        # Only a mask that is exactly ids != 0 makes the padding side and the batch width change no value.
        self.static_time_axis = recurrent.needs_static_time_axis(model, self.layer)
        self.trim = bool(length_bucketing and self.info.mask_is_padding and not self.static_time_axis)
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
        self.column_dims = dict(self.info.columns(mode))
        # A go_backwards layer returns its sequence in reading order, last token first: reversed
        # back here, so that vector k is the output after reading token k (Bidirectional's alignment).
        self.reverse_sequence = bool(mode == "sequence" and not self.info.bidirectional
                                     and getattr(self.layer, "go_backwards", False))
        self.vectorizer = recurrent.text_vectorization(model) if self.text_input else None
        self._empty_value: list[np.ndarray] | None = None
        self.carry = long_docs == "carry"
        if self.carry:
            self.trim = False  # every window is maxlen wide; the states carry the document across them
            self._window_fn, self._state_sizes, self._n_target = self._compile_window()
        # The engine (keras graph, XLA, ONNX Runtime, table) is chosen by engines.choose: a forced one on
        # the first batch; with auto, in two steps (QUICK_ENGINES, then all: see CALIBRATE_AFTER_DOCS and _run).
        self.engine_context = engines.Context(
            model=model, layer=self.layer, info=self.info, mode=mode, maxlen=maxlen, padding=padding, device=device,
            input_dtype=self.input_dtype, model_dtype=self.model_dtype, one_hot_depth=self.one_hot_depth,
            text_input=self.text_input, input_shape=self.input_shape, jit=bool(jit), submodel=self.submodel,
            trimmed=self.trim)
        self.engine_request = engine
        self.engine: engines.Engine | None = None
        self.engine_report: dict = {}
        self.calibrate_after_docs = CALIBRATE_AFTER_DOCS
        self._keras_docs = 0  # documents run before the last calibration (auto): the graph's, then a quick engine's
        self._quick_done = False  # auto: the quick engines were tried (or the one calibration came)
        self._calibrated = False  # auto: every engine was tried
        self._largest_batch = 0  # rows of the largest batch run so far: a "full" batch
        self._keras_engine: engines.Engine | None = None  # auto, before calibration
        self._last_engine: engines.Engine | None = None  # the one that ran the last batch
        self.kernel = kernel_path(self.info, self.layer, device)
        LOG.info(
            "embedding layer %s (%s) mode=%s mask: %s; batch width %s; kernel path: %s; engine %s",
            self.info.name, self.info.class_name, mode, describe_mask(self.info),
            "trimmed to the longest document (length bucketing)" if self.trim else f"maxlen={maxlen}"
            + (f" (static time axis for {', '.join(self.static_time_axis)})" if self.static_time_axis else ""),
            self.kernel, engine,
        )

    def _compile_window(self):
        """The one-window step of ``--long_docs carry`` as a traced function of (ids, *states)."""
        import tensorflow as tf

        window_model, sizes, n_target = recurrent.build_window_model(self.model_for_windows, self.layer, self.mode,
                                                                     timesteps=self.maxlen)
        specs = [tf.TensorSpec([None, self.maxlen], tf.dtypes.as_dtype(self.input_dtype))]  # windows: maxlen wide
        specs += [tf.TensorSpec([None, n], tf.float32) for n in sizes]

        def step(x, *states):
            if self.one_hot_depth:
                real = tf.cast(tf.not_equal(x, 0), self.model_dtype)[..., None]
                x = tf.one_hot(x, self.one_hot_depth, dtype=self.model_dtype) * real
            return window_model([x, *states], training=False)

        return tf.function(step, input_signature=specs, reduce_retracing=True), sizes, n_target

    def _embed_carry(self, ragged: Ragged) -> EmbeddedBatch:
        """Reads each document window by window, every recurrent layer starting from the states it
        ended the previous window in: one pass over the whole document, in ``maxlen`` pieces.

        Models masked by ``ids != 0``: windows are the document's tokens in order, the last right-padded
        (masked). Other models (unmasked, or a mask computed from the values): the document is padded
        to whole windows with ``--padding``, as trained."""
        w = self.maxlen
        seqs = ragged.to_lists()  # windows of each document are cut in Python: carry is the rare, long-document path
        lengths = ragged.lengths().astype(np.int32)
        windows = np.maximum(1, -(-lengths // w)).astype(np.int32)
        full, real_full = [], []
        for ids, n in zip(seqs, windows):
            width = int(n) * w
            padded = np.zeros(width, dtype=self.input_dtype)
            real = np.zeros(width, dtype=bool)
            start = width - len(ids) if (not self.info.mask_is_padding and self.padding == "pre") else 0
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
        return EmbeddedBatch(lengths, columns, offsets, padded_timesteps, seconds, windows,
                             engines.codes("keras", len(seqs)))

    def _one_hot_numpy(self, batch: np.ndarray) -> np.ndarray:
        if not self.one_hot_depth:
            return batch
        eye = np.eye(self.one_hot_depth, dtype=self.model_dtype)
        eye[0] = 0
        return eye[batch]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Runs a padded batch on the engine. A forced engine is built and verified on the first batch.
        With ``auto``, batches run on the Keras graph until it has run ``CALIBRATE_QUICK_AFTER_DOCS``
        documents; the first batch after them with as many rows as the largest one so far (a full batch,
        not a bundle's remainder) verifies and times the quick engines (``QUICK_ENGINES``), and the
        fastest exact one runs on; after ``calibrate_after_docs`` documents, the next full batch verifies
        and times every eligible engine (``engines.choose``). With ``calibrate_after_docs`` at or below
        the quick step's, there is one calibration, of every engine."""
        rows = len(batch)
        if self.engine is None and self.engine_request != "auto":
            self._calibrate(batch, None)
        elif self.engine_request == "auto" and not self._calibrated:
            quick = min(CALIBRATE_QUICK_AFTER_DOCS, self.calibrate_after_docs)
            due = self.calibrate_after_docs if self._quick_done else quick
            if self._keras_docs >= due and rows >= self._largest_batch:
                self._calibrate(batch, QUICK_ENGINES if due < self.calibrate_after_docs else None)
            else:
                self._keras_docs += rows
                self._largest_batch = max(self._largest_batch, rows)
                if self.engine is None:
                    if self._keras_engine is None:
                        self._keras_engine = engines.registry()["keras"](self.engine_context)
                    self._last_engine = self._keras_engine
                    return self._keras_engine.run(batch)
        self._last_engine = self.engine
        outputs = self.engine.run(batch)
        if self.engine is not self._keras_engine and not self.text_input:
            outputs = self._verify_longer(batch, outputs)
        return outputs

    def _calibrate(self, batch: np.ndarray, only: tuple[str, ...] | None) -> None:
        """``engines.choose`` on ``batch``: among ``only`` (the quick step) or every engine (the quick
        engine already running is timed again, not rebuilt). After the quick step the Keras graph may
        still run (no quick engine eligible, exact and faster): ``self.engine`` stays None."""
        compare = (batch != 0) if (self.mode == "sequence" and not self.text_input) else None
        running = {self.engine.name: self.engine} if self.engine is not None and self.engine is not self._keras_engine \
            else None
        choice = engines.choose(self.engine_context, self.engine_request, batch, compare, repeat=1 if only else 2,
                                only=only, prebuilt=running, reference=self._keras_engine)
        self._keras_engine, self.engine_report = choice.reference, choice.report
        self._quick_done = True
        self._calibrated = only is None
        if only is not None and choice.engine is choice.reference:
            return  # the graph runs on until the full calibration
        self.engine = choice.engine
        self._verified_length = int(np.count_nonzero(batch, axis=1).max(initial=0)) if not self.text_input else 0

    def _verify_longer(self, batch: np.ndarray, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Checks the chosen engine again on the batch's longest documents whenever they are longer than
        any it was checked on: round-off between two implementations grows with the number of steps,
        and with length bucketing the calibration batch holds the shortest documents. An engine off by
        more than ``engines.TOLERANCE`` is dropped for the rest of the run (the Keras graph runs on), and
        this batch is run again on the graph."""
        lengths = np.count_nonzero(batch, axis=1)
        longest = int(lengths.max(initial=0))
        if longest <= self._verified_length:
            return outputs
        rows = np.argsort(lengths, kind="stable")[-VERIFY_ROWS:]
        want = self._keras_engine.run(batch[rows])
        compare = (batch[rows] != 0) if self.mode == "sequence" else None
        diff = engines.max_difference([o[rows] for o in outputs], want, compare)
        if diff <= engines.TOLERANCE:
            self._verified_length = longest
            return outputs
        name = self.engine.name
        message = (f"engine {name} differs from the Keras graph by {diff:.3g} > {engines.TOLERANCE:g} on documents "
                   f"of {longest} tokens (checked up to {self._verified_length}); the Keras graph runs the rest")
        LOG.warning("%s", message)
        self.engine_report.setdefault(name, {})["dropped"] = message
        self.engine = self._last_engine = self._keras_engine
        self._calibrated = True  # no later calibration brings it back
        return self.engine.run(batch)

    def pad(self, seqs: Ragged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(padded batch, lengths, boolean mask of real-token positions) for truncated sequences."""
        lengths = seqs.lengths().astype(np.int32)
        if self.trim:  # the batch's longest document, rounded up so that batch shapes repeat
            width = min(-(-max(int(lengths.max(initial=0)), 1) // WIDTH_STEP) * WIDTH_STEP, self.maxlen)
        else:
            width = self.maxlen
        positions = np.arange(width, dtype=np.int32)[None, :]
        if self.info.mask_is_padding or self.padding == "post":  # ids != 0 mask: right padding is exact (cuDNN's)
            real = positions < lengths[:, None]
        else:
            real = positions >= (width - lengths)[:, None]
        batch = np.zeros((len(seqs), width), dtype=self.input_dtype)
        batch[real] = seqs.values  # row-major order of the True positions is the documents' token order
        return batch, lengths, real

    def embed(self, seqs) -> EmbeddedBatch:
        """Vectors for a batch of documents: token ids as a ``Ragged`` (or a list of id lists), each
        ``len <= maxlen`` (any length with carry), or raw texts when the model tokenizes itself.
        Documents with no token get the model's value for a row of padding alone (see
        ``empty_value``) without ever entering the model's batch."""
        if not self.text_input and not isinstance(seqs, Ragged):
            seqs = Ragged.from_lists(seqs)
        empty = self._empty_rows(seqs)
        if not empty.any():
            return self._embed_batch(seqs)
        return self._merge_empty_rows(seqs, empty)

    def _empty_rows(self, seqs) -> np.ndarray:
        """(B,) bool: the documents with no token. For raw-text models, the model's own
        TextVectorization decides (run alone on the texts first, so that no empty row reaches the
        recurrent layer)."""
        if self.text_input:
            texts = np.asarray(seqs, dtype=object).reshape((len(seqs), *self.input_shape))
            ids = np.asarray(self.vectorizer(texts.astype(str)))
            return ~(ids != 0).reshape(len(seqs), -1).any(axis=1)
        return seqs.lengths() == 0

    def empty_value(self) -> list[np.ndarray]:
        """What the sub-model computes for a document with no token, one ``(D,)`` array per
        column: its output on one row of padding alone, ``maxlen`` wide (``pad_sequences`` of an
        empty sequence; for a raw-text model, the empty text). For a masked model this row is fully
        masked, which the cuDNN kernel rejects: it is computed once, eagerly, on the CPU (Keras'
        generic kernel), and cached. Unused in ``sequence`` mode (no token, no vector)."""
        if self._empty_value is None:
            if self.text_input:
                batch = np.full((1, *self.input_shape), "", dtype=object)
            else:
                batch = np.zeros((1, self.maxlen), dtype=self.input_dtype)
            outputs = self._run_on_cpu(batch)
            if self.text_input:
                outputs = outputs[:-1]
            self._empty_value = [np.asarray(out[0], dtype=np.float32) for out in outputs]
        return self._empty_value

    def _run_on_cpu(self, batch: np.ndarray) -> list[np.ndarray]:
        """The sub-model called eagerly on the CPU (never the cuDNN kernel)."""
        import keras

        x = self._one_hot_numpy(batch)
        if keras.backend.backend() != "tensorflow":
            return _as_arrays(self.submodel.predict_on_batch(x))
        import tensorflow as tf

        with tf.device("/CPU:0"):
            x = tf.constant(x.astype(str)) if self.text_input else tf.constant(x)
            return _as_arrays(self.submodel(x, training=False))

    def _merge_empty_rows(self, seqs, empty: np.ndarray) -> EmbeddedBatch:
        """Embeds the documents with tokens, and gives each empty one ``empty_value`` (``sequence``:
        no vector; ``--long_docs carry``: one window of padding, ``windows = 1``)."""
        keep = np.flatnonzero(~empty)
        if not keep.size:
            out = None
        elif self.text_input:
            out = self._embed_batch([seqs[i] for i in keep])
        else:
            out = self._embed_batch(seqs.take(keep))
        lengths = np.zeros(len(seqs), dtype=np.int32)
        windows = np.ones(len(seqs), dtype=np.int32) if self.carry else None
        offsets = None
        if out is not None:
            lengths[keep] = out.lengths
            if windows is not None:
                windows[keep] = out.windows
        if self.mode == "sequence":
            name = self.column_names[0]
            flat = out.columns[name] if out is not None else np.zeros((0, self.column_dims[name]), np.float32)
            columns = {name: flat}
            offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
        else:
            columns = {}
            for name, value in zip(self.column_names, self.empty_value()):
                column = np.empty((len(seqs), value.shape[-1]), dtype=np.float32)
                column[empty] = value
                if out is not None:
                    column[keep] = out.columns[name]
                columns[name] = column
        # Documents with no token: Keras' value for padding alone, eagerly (see empty_value); none in sequence.
        row_engines = engines.codes("keras", len(seqs))
        if out is not None:
            row_engines[keep] = out.engines
        return EmbeddedBatch(lengths, columns, offsets, out.padded_timesteps if out else 0,
                             out.seconds if out else 0.0, windows, row_engines)

    def _embed_batch(self, seqs) -> EmbeddedBatch:
        """Vectors for documents that all hold at least one token."""
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
            sequence = outputs[0][:, ::-1] if self.reverse_sequence else outputs[0]
            columns = {self.column_names[0]: np.ascontiguousarray(sequence[real], dtype=np.float32)}
            offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
        else:
            columns = {name: np.asarray(out, dtype=np.float32) for name, out in zip(self.column_names, outputs)}
        ran = self._last_engine.timesteps_run if self._last_engine is not None else None
        name = self._last_engine.name if self._last_engine is not None else "keras"
        return EmbeddedBatch(lengths, columns, offsets, int(batch.size) if ran is None else ran, seconds,
                             engines=engines.codes(name, len(seqs)))
