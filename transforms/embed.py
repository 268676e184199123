"""Embed: ``DocBatch``es of token ids -> one ``Rows`` per model batch (ids, num_tokens, vectors), and dead letters.

``EmbedBatches`` batches the documents itself (``--batch_size``) and hands each full batch to the
worker process's one inference thread, then goes on reading, tokenizing and writing while the batch
runs: ONNX Runtime, TensorFlow and XLA release the GIL, so the model and the Python side of the job
keep both cores busy. A bounded queue of batches waits for that thread; finished batches' rows are
emitted as the next documents arrive (``finish_bundle`` drains the rest), so memory stays bounded.

The model is loaded once per worker process (``shared.Shared``: every DoFn instance of the process,
every bundle, uses the same ``Embedder`` and thread): the model file is copied from gs:// if needed,
loaded with Keras ``safe_mode``, truncated at the target layer, and its engine chosen (see
``beam_pipeline.engines``). Every document gets a row: one with no token gets the model's value for
padding alone (``Embedder.empty_value``), computed apart from the batch. A batch whose inference
raises becomes one ``inference_failed`` dead letter per document.

This replaces Beam's ``RunInference``, which runs each batch synchronously on the bundle's thread
(the model and the Python stages took turns on one core) and pickles every batch's keys to count
their bytes (``KeyedModelHandler.get_num_bytes``, ~3 µs per document).

With length bucketing (masked models, and unmasked ones padded ``pre``), ``EmbedBatches`` orders the
documents by length within a bounded buffer of 32 batches, so that each batch holds documents of similar
length (a masked batch is padded only to its own longest one; the padding-prefix engines run like lengths
together) and queues the buffer's batches at once.
Beam's ``SortAndBatchElements`` does the same sort but buffers a whole bundle (the whole input on
the DirectRunner), and the length buckets of ``RunInference`` need ``max_batch_duration_secs``
(stateful, streaming-oriented batching); a bounded buffer keeps memory flat in corpus size.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.engines import count_codes
from beam_pipeline.options import JobConfig
from beam_pipeline.ragged import Ragged
from transforms.batch import BATCH_DOCS, DocBatch, concat
from transforms.errors import ERRORS, NAMESPACE, dead_letter
from transforms.write import Rows

SORT_BATCHES = 32  # length bucketing sorts documents this many batches at a time
# ... or, when documents trickle in (a --previous night embeds a few % of each input batch), the whole
# batches of what this many elements brought: the inference thread works while the bundle reads on,
# instead of waiting for a sort buffer that fills only near the end (measured, a 1M-document night of
# LSTM64 pre: the bundle's end waited 1.1 s for the 16k documents handed over there)
TRICKLE_ELEMENTS = 16
LOG = logging.getLogger("beam_pipeline.embed")  # shown at INFO whatever --log_level (see __main__)
_IMPORTED = time.time()


def process_age_s() -> float:
    """Seconds since this process started (Linux: its start time in clock ticks after boot against
    ``/proc/uptime``, both to 1/100 s; ``btime`` of ``/proc/stat`` is whole seconds and could add up to one;
    elsewhere: since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED


def load_embedder(config: JobConfig):
    """The truncated sub-model of ``config.model`` wrapped in an ``Embedder`` (once per worker process)."""
    from beam_pipeline import inference
    from beam_pipeline.model import load_model

    device = inference.configure_device(config.device)
    loaded = load_model(config.model, unsafe_deserialization=config.unsafe_deserialization, model_fn=config.model_fn)
    for key in ("builder_sha256", "weights_matched"):  # the worker's build must be the launcher's
        if config.model_origin.get(key) != loaded.provenance.weights.get(key):
            raise RuntimeError(f"--model_fn {config.model_fn}: {key} is {loaded.provenance.weights.get(key)!r} on "
                               f"this worker, {config.model_origin.get(key)!r} at launch: the worker builds another "
                               "model; ship the builder as a module (MODULE:FUNCTION) that builds the same one")
    model = loaded.model
    # One line per load: the Flink test counts them per SDK worker process (pid).
    LOG.info("model loaded in process %d: %s", os.getpid(), config.model)
    embedder = inference.Embedder(
        model,
        config.layer_index or config.layer,  # the index path: the same layer in every build, whatever its name
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
    _check_same_layer(config, embedder.info)
    return embedder


def _check_same_layer(config: JobConfig, info) -> None:
    """The worker's target is the launcher's: the same facts (name, class, units, mask...) as at launch."""
    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    differ = [f"{key} {plain(value)!r} here, {plain(config.layer_info.get(key))!r} at launch"
              for key, value in dataclasses.asdict(info).items() if plain(value) != plain(config.layer_info.get(key))]
    if differ:
        raise RuntimeError(f"layer {config.layer_index or config.layer} of --model {config.model} on this worker is "
                           f"not the one the launcher resolved: {'; '.join(differ)}. The worker builds or reads "
                           "another model" + (" (ship the --model_fn builder as a module that builds the same one)"
                                              if config.model_fn else ""))


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
        # TensorFlow and Keras leave ~400k objects behind at start-up, which every full collection
        # would walk again: what is alive now is never garbage, so the collector stops looking at it.
        gc.collect()
        gc.freeze()

    def run(self, seqs):
        """Runs on ``pool``'s one thread only, so batches never overlap."""
        out = self.embedder.embed(seqs)
        if not self.first_batch_logged:
            self.first_batch_logged = True
            LOG.info("first batch embedded in process %d, %.2f s after the process started (%d documents)",
                     os.getpid(), process_age_s(), len(seqs))
        return out


class EmbedBatches(beam.DoFn):
    """``DocBatch``es in (token ids, or raw texts for a model that tokenizes itself), cut into model
    batches of ``--batch_size`` documents that run on the worker's inference thread while the bundle
    goes on; outputs one ``Rows`` per model batch (tag ``errors``: dead letters).

    ``sort_buffer`` > 0 (length bucketing): documents are gathered ``sort_buffer`` at a time, ordered by
    length (a stable argsort of the buffer's lengths) and cut into batches, which are all queued at
    once: the inference thread works through them while the bundle thread reads and tokenizes the next
    buffer. Without it, every full batch is queued as soon as it is complete. At most ``max_pending``
    batches are queued; a finished batch's rows are emitted at the next element that arrives (or when
    the queue is full, or at ``finish_bundle``), so memory stays bounded: one buffer filling and at most
    ``max_pending`` batches queued or done."""

    def __init__(self, config: JobConfig, sort_buffer: int = 0):
        self.config = config
        self.batch_size = config.batch_size
        self.sort_buffer = sort_buffer
        # A whole sort buffer's batches (unsorted: a whole incoming element's) queue at once, and two more
        # may wait while the next fills: the bundle thread goes back to reading while they run.
        self.max_pending = -(-max(sort_buffer, BATCH_DOCS) // self.batch_size) + 2
        self._shared = shared.Shared()

    def setup(self):
        self._worker = self._shared.acquire(lambda: _Worker(load_embedder(self.config)))

    def start_bundle(self):
        self._buffer: list[DocBatch] = []  # documents not yet handed over
        self._buffered = 0
        self._elements = 0  # elements buffered since the last hand-over
        self._pending: collections.deque[tuple[DocBatch, Future]] = collections.deque()

    def process(self, element: DocBatch):
        self._buffer.append(element)
        self._buffered += len(element)
        self._elements += 1
        if self._buffered >= (self.sort_buffer or self.batch_size):
            yield from self._flush(whole=bool(self.sort_buffer))
        elif self._elements >= TRICKLE_ELEMENTS and self._buffered >= self.batch_size:
            yield from self._flush(whole=False)
        while self._pending and self._pending[0][1].done():
            yield from self._outputs(*self._pending.popleft())

    def finish_bundle(self):
        window = GlobalWindow()
        for out in self._drain():
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, window.max_timestamp(), [window]))
            else:
                yield WindowedValue(out, window.max_timestamp(), [window])

    def _drain(self):
        yield from self._flush(whole=True)
        while self._pending:
            yield from self._outputs(*self._pending.popleft())

    def _flush(self, whole: bool):
        """Hands the buffered documents over in batches (ordered by length first, with a sort buffer);
        unless ``whole``, a last incomplete batch stays buffered."""
        if not self._buffered:
            return
        docs = concat(self._buffer)
        self._buffer, self._buffered, self._elements = [], 0, 0
        if self.sort_buffer:
            docs = docs.take(np.argsort(docs.lengths(), kind="stable"))  # only token-id models are sorted
        n = len(docs)
        end = n if whole else n - n % self.batch_size
        for start in range(0, end, self.batch_size):
            while len(self._pending) >= self.max_pending:  # the queue is full: wait for its oldest batch
                yield from self._outputs(*self._pending.popleft())
            batch = docs.slice(start, min(start + self.batch_size, end))
            seqs = batch.texts.to_pylist() if batch.offsets is None else Ragged(batch.offsets, batch.tokens)
            self._pending.append((batch, self._worker.pool.submit(self._worker.run, seqs)))
        if end < n:
            self._buffer, self._buffered = [docs.slice(end, n)], n - end

    def _outputs(self, batch: DocBatch, future: Future):
        try:
            out = future.result()
        except Exception as exception:  # the batch's documents become dead letters; the job goes on
            Metrics.counter(NAMESPACE, "failed_batches").inc()
            LOG.warning("inference failed on a batch of %d documents: %s", len(batch), exception)
            detail = _error_detail(exception)
            inputs = batch.texts.to_pylist() if batch.offsets is None else batch.token_lists()
            for doc_id, ids in zip(batch.ids.to_pylist(), inputs):
                yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                    doc_id, "embed", "inference_failed", {"doc_id": doc_id, "input": ids}, detail))
            return
        Metrics.counter(NAMESPACE, "batches").inc()
        ran = count_codes(out.engines[out.lengths > 0])  # rows with no token take Keras' padding-only value
        for name in ran or ("keras",):
            Metrics.counter(NAMESPACE, f"batches_{name}").inc()
        Metrics.counter(NAMESPACE, "tokens").inc(int(out.lengths.sum()))
        Metrics.counter(NAMESPACE, "padded_timesteps").inc(out.padded_timesteps)
        Metrics.distribution(NAMESPACE, "inference_ms").update(int(out.seconds * 1000))
        yield Rows(batch.ids, out.lengths, list(out.columns.values()), out.offsets, out.windows, batch.text_hash,
                   out.engines)


class Embed(beam.PTransform):
    """``DocBatch``es -> ``Rows`` (one per model batch, columns in the order of the job's columns), and
    the dead letters of batches whose inference failed."""

    def __init__(self, config: JobConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        sort_buffer = SORT_BATCHES * self.config.batch_size if self.config.length_bucketing else 0
        out = docs | "EmbedBatches" >> beam.ParDo(EmbedBatches(self.config, sort_buffer)).with_output_types(
            Rows).with_outputs(ERRORS, main="embedded")
        return out.embedded, out[ERRORS]
