"""Embed: ``(doc_id, ids)`` -> ``(doc_id, (num_tokens, arrays))`` through Beam's ``RunInference``.

``RecurrentModelHandler`` is a Beam ``ModelHandler``: ``load_model`` runs once per worker process
(the model file is copied from gs:// if needed, loaded with Keras ``safe_mode``, truncated at the
target layer and compiled once); ``run_inference`` pads a batch as the model needs and runs it.
Every document gets a row: one with no token gets the model's value for padding alone
(``Embedder.empty_value``), computed apart from the batch.
``KeyedModelHandler`` carries the document ids through ``RunInference``'s own ``BatchElements``.

For masked models, ``SortByLength`` first orders documents by length within a bounded buffer, so
that each batch holds documents of similar length and is padded only to its own longest one.
Beam's ``SortAndBatchElements`` does the same sort but buffers a whole bundle (the whole input on
the DirectRunner), and the length buckets of ``RunInference`` need ``max_batch_duration_secs``
(stateful, streaming-oriented batching); a bounded buffer keeps memory flat in corpus size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from beam_pipeline.options import JobConfig
from transforms.errors import NAMESPACE, dead_letter

LOG = logging.getLogger(__name__)


class RecurrentModelHandler(ModelHandler):
    """Loads the truncated recurrent sub-model once per worker and embeds batches of token ids."""

    def __init__(self, config: JobConfig):
        super().__init__(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        self.config = config

    def load_model(self):
        from beam_pipeline import inference
        from beam_pipeline.model import load_model

        device = inference.configure_device(self.config.device)
        model = load_model(self.config.model, unsafe_deserialization=self.config.unsafe_deserialization).model
        # One line per load: the Flink test counts them per SDK worker process (pid).
        LOG.info("model loaded in process %d: %s", os.getpid(), self.config.model)
        return inference.Embedder(
            model,
            self.config.layer,
            self.config.mode,
            self.config.maxlen,
            padding=self.config.padding,
            truncating=self.config.truncating,
            length_bucketing=self.config.length_bucketing,
            device=device,
            jit=self.config.jit,
            long_docs=self.config.long_docs,
            engine=self.config.engine,
        )

    def run_inference(self, batch: Sequence[list[int]], model, inference_args=None) -> Iterable[tuple]:
        out = model.embed(batch)
        Metrics.counter(NAMESPACE, "batches").inc()
        Metrics.counter(NAMESPACE, f"batches_{model.engine.name if model.engine else 'keras'}").inc()
        Metrics.counter(NAMESPACE, "tokens").inc(int(out.lengths.sum()))
        Metrics.counter(NAMESPACE, "padded_timesteps").inc(out.padded_timesteps)
        Metrics.distribution(NAMESPACE, "inference_ms").update(int(out.seconds * 1000))
        columns = list(out.columns.values())
        lengths = out.lengths.tolist()
        windows = out.windows.tolist() if out.windows is not None else [None] * len(lengths)
        return self._rows(out, columns, lengths, windows)

    @staticmethod
    def _rows(out, columns, lengths, windows) -> list[tuple]:
        if out.offsets is not None:
            flat = columns[0]
            offsets = out.offsets.tolist()
            return [(n, (flat[offsets[i]:offsets[i + 1]],), windows[i]) for i, n in enumerate(lengths)]
        return [(n, tuple(col[i] for col in columns), windows[i]) for i, n in enumerate(lengths)]

    def get_num_bytes(self, batch: Sequence[list[int]]) -> int:
        return 4 * sum(len(ids) for ids in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def share_model_across_processes(self) -> bool:
        return False


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
    """``(doc_id, ids)`` -> ``(doc_id, (num_tokens, tuple of arrays, windows or None))``, arrays in
    the order of the columns,
    and the dead letters of batches whose inference failed."""

    def __init__(self, config: JobConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        if self.config.length_bucketing:
            docs = docs | "SortByLength" >> beam.ParDo(SortByLength(32 * self.config.batch_size))
        handler = KeyedModelHandler(RecurrentModelHandler(self.config))
        embedded, failures = docs | "RunInference" >> RunInference(handler).with_exception_handling()
        failed = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(_dead_letters_of_batch)
        return embedded, failed


def _dead_letters_of_batch(failure):
    """One dead letter per document of a batch whose inference raised."""
    batch, exception = failure
    if isinstance(exception, tuple):  # (type, repr, traceback lines) as RunInference reports it
        exception = exception[1]
    detail = str(exception)
    return [dead_letter(doc_id, "embed", "inference_failed",
                        {"doc_id": doc_id, "input": ids if isinstance(ids, str) else list(ids)}, detail)
            for doc_id, ids in batch]
