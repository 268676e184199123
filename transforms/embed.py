"""Embed: ``(doc_id, ids)`` -> one ``Rows`` per batch (ids, num_tokens, vectors in columns), and dead letters.

``EmbedBatches`` batches the documents itself (``--batch_size``) and hands each full batch to the
worker process's one inference thread, then goes on reading, tokenizing and writing while the batch
runs: ONNX Runtime, TensorFlow and XLA release the GIL, so the model and the Python side of the job
keep both cores busy. At most one batch runs while the next fills; its rows are emitted when the
next one is handed over (``finish_bundle`` drains the rest), so memory stays bounded.

The model is loaded once per worker process (``shared.Shared``: every DoFn instance of the process,
every bundle, uses the same ``Embedder`` and thread): the model file is copied from gs:// if needed,
loaded with Keras ``safe_mode``, truncated at the target layer, and its engine chosen (see
``beam_pipeline.engines``). Every document gets a row: one with no token gets the model's value for
padding alone (``Embedder.empty_value``), computed apart from the batch. A batch whose inference
raises becomes one ``inference_failed`` dead letter per document.

This replaces Beam's ``RunInference``, which runs each batch synchronously on the bundle's thread
(the model and the Python stages took turns on one core) and pickles every batch's keys to count
their bytes (``KeyedModelHandler.get_num_bytes``, ~3 µs per document).

For masked models, ``SortByLength`` first orders documents by length within a bounded buffer, so
that each batch holds documents of similar length and is padded only to its own longest one.
Beam's ``SortAndBatchElements`` does the same sort but buffers a whole bundle (the whole input on
the DirectRunner), and the length buckets of ``RunInference`` need ``max_batch_duration_secs``
(stateful, streaming-oriented batching); a bounded buffer keeps memory flat in corpus size.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.options import JobConfig
from transforms.errors import ERRORS, NAMESPACE, dead_letter
from transforms.write import Rows

LOG = logging.getLogger("beam_pipeline.embed")  # shown at INFO whatever --log_level (see __main__)
_IMPORTED = time.time()


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _IMPORTED


def load_embedder(config: JobConfig):
    """The truncated sub-model of ``config.model`` wrapped in an ``Embedder`` (once per worker process)."""
    from beam_pipeline import inference
    from beam_pipeline.model import load_model

    device = inference.configure_device(config.device)
    model = load_model(config.model, unsafe_deserialization=config.unsafe_deserialization).model
    # One line per load: the Flink test counts them per SDK worker process (pid).
    LOG.info("model loaded in process %d: %s", os.getpid(), config.model)
    return inference.Embedder(
        model,
        config.layer,
        config.mode,
        config.maxlen,
        padding=config.padding,
        truncating=config.truncating,
        length_bucketing=config.length_bucketing,
        device=device,
        jit=config.jit,
        long_docs=config.long_docs,
        engine=config.engine,
    )


def _error_detail(exception: BaseException, keep: int = 600) -> str:
    """The exception for a dead letter: its type, first line and end. TensorFlow puts the graph's
    Python traceback between its first line and the cause (``indices[2,1] = 5000 is not in [0, 100)``),
    which a dead letter's 1000 characters would otherwise cut; the worker log has it whole."""
    text = str(exception).strip()
    if len(text) > 2 * keep:
        first = text.split("\n", 1)[0][:keep]
        text = f"{first} ... {text[-keep:]}"
    return f"{type(exception).__name__}: {text}"


class _Worker:
    """One per worker process: the Embedder and the single thread its batches run on (one batch at a
    time per process, whatever number of DoFn instances Beam runs there)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.first_batch_logged = False

    def run(self, seqs: list):
        """Runs on ``pool``'s one thread only, so batches never overlap."""
        out = self.embedder.embed(seqs)
        if not self.first_batch_logged:
            self.first_batch_logged = True
            LOG.info("first batch embedded in process %d, %.2f s after the process started (%d documents)",
                     os.getpid(), process_age_s(), len(seqs))
        return out


class EmbedBatches(beam.DoFn):
    """Batches ``(doc_id, ids)`` and embeds each batch on the worker's inference thread while the
    bundle goes on; outputs one ``Rows`` per batch, in order (tag ``errors``: dead letters)."""

    def __init__(self, config: JobConfig, in_flight: int = 1):
        self.config = config
        self.batch_size = config.batch_size
        self.in_flight = in_flight
        self._shared = shared.Shared()

    def setup(self):
        self._worker = self._shared.acquire(lambda: _Worker(load_embedder(self.config)))

    def start_bundle(self):
        self._batch: list = []  # (doc_id, ids) of the batch filling
        self._pending: collections.deque[tuple[list, Future]] = collections.deque()

    def process(self, element):
        self._batch.append(element)
        if len(self._batch) >= self.batch_size:
            done = self._pending.popleft() if len(self._pending) >= self.in_flight else None
            if done is not None:
                done[1].exception()  # wait for it before handing over the next batch
            self._submit()
            if done is not None:
                yield from self._outputs(*done)

    def finish_bundle(self):
        if self._batch:
            self._submit()
        window = GlobalWindow()
        while self._pending:
            for out in self._outputs(*self._pending.popleft()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, window.max_timestamp(), [window]))
                else:
                    yield WindowedValue(out, window.max_timestamp(), [window])

    def _submit(self):
        batch, self._batch = self._batch, []
        self._pending.append((batch, self._worker.pool.submit(self._worker.run, [ids for _, ids in batch])))

    def _outputs(self, batch: list, future: Future):
        try:
            out = future.result()
        except Exception as exception:  # the batch's documents become dead letters; the job goes on
            Metrics.counter(NAMESPACE, "failed_batches").inc()
            LOG.warning("inference failed on a batch of %d documents: %s", len(batch), exception)
            detail = _error_detail(exception)
            for doc_id, ids in batch:
                yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                    doc_id, "embed", "inference_failed",
                    {"doc_id": doc_id, "input": ids if isinstance(ids, str) else list(ids)}, detail))
            return
        embedder = self._worker.embedder
        Metrics.counter(NAMESPACE, "batches").inc()
        Metrics.counter(NAMESPACE, f"batches_{embedder.engine.name if embedder.engine else 'keras'}").inc()
        Metrics.counter(NAMESPACE, "tokens").inc(int(out.lengths.sum()))
        Metrics.counter(NAMESPACE, "padded_timesteps").inc(out.padded_timesteps)
        Metrics.distribution(NAMESPACE, "inference_ms").update(int(out.seconds * 1000))
        yield Rows([doc_id for doc_id, _ in batch], out.lengths, list(out.columns.values()), out.offsets, out.windows)


class SortByLength(beam.DoFn):
    """Emits elements ``(doc_id, ids)`` sorted by ``len(ids)`` within buffers of ``buffer_size``."""

    def __init__(self, buffer_size: int):
        self.buffer_size = buffer_size
        self._buffer: list = []

    def start_bundle(self):
        self._buffer = []

    def process(self, element):
        self._buffer.append(element)
        if len(self._buffer) >= self.buffer_size:
            yield from self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for element in self._flush():
            yield WindowedValue(element, GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _flush(self):
        buffer, self._buffer = self._buffer, []
        buffer.sort(key=lambda element: len(element[1]))
        return buffer


class Embed(beam.PTransform):
    """``(doc_id, ids)`` -> ``Rows`` (one per batch, columns in the order of the job's columns), and
    the dead letters of batches whose inference failed."""

    def __init__(self, config: JobConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        if self.config.length_bucketing:
            docs = docs | "SortByLength" >> beam.ParDo(SortByLength(32 * self.config.batch_size))
        out = docs | "EmbedBatches" >> beam.ParDo(EmbedBatches(self.config)).with_outputs(ERRORS, main="embedded")
        return out.embedded, out[ERRORS]
