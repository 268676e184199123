"""Tokenize: a ``DocBatch`` of texts -> the same documents as token ids (``offsets`` + ``tokens``),
ids exactly as the legacy Keras Tokenizer gives them, truncated to ``maxlen`` as
``keras.utils.pad_sequences`` would (``pre``: keep the last ``maxlen`` ids, ``post``: the first).
Padding is left to the embed stage, which knows how the model needs it. Every document also gets
its ``text_hash`` here (what an incremental run compares), raw-text models included.

A document with no token left (empty, every word filtered out, or unknown to a tokenizer without an
``oov_token``) goes on with no ids: Keras computes a value for it too (the model's output on
padding alone), and the embed stage writes it with ``num_tokens = 0``.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipeline import files
from beam_pipeline.batch_tokenizer import BatchTokenizer, truncate
from beam_pipeline.keras_tokenizer import KerasTokenizer
from beam_pipeline.ragged import Ragged
from transforms.batch import DocBatch, hash_texts
from transforms.errors import NAMESPACE, tagged

STAGE = "tokenize"


class Tokenize(beam.DoFn):
    """``DocBatch(ids, texts)`` -> ``DocBatch(ids, offsets, tokens, text_hash)`` (texts dropped), or
    with no tokenizer (the model tokenizes raw text itself) the texts kept, with their hashes."""

    def __init__(self, tokenizer_path: str | None, maxlen: int | None, truncating: str):
        """``maxlen=None`` keeps every token (``--long_docs carry``)."""
        self.tokenizer_path = tokenizer_path
        self.maxlen = maxlen
        self.truncating = truncating
        self._tokenizer = None

    def setup(self):
        if self.tokenizer_path:
            self._reference = KerasTokenizer.from_json(files.read_bytes(self.tokenizer_path).decode("utf-8"))
            self._tokenizer = BatchTokenizer(self._reference)

    def process(self, batch: DocBatch):
        text_hash = hash_texts(batch.texts) if batch.text_hash is None else batch.text_hash  # hashed by Reuse
        if self._tokenizer is None:
            yield DocBatch(batch.ids, batch.texts, text_hash=text_hash)
            return
        try:
            offsets, tokens = self._tokenizer.encode(batch.texts)
        except Exception:  # the exact per-document tokenizer finds the documents that fail
            kept, offsets, tokens = yield from self._one_by_one(batch)
            if not kept.size:
                return
            batch, text_hash = batch.take(kept), text_hash[kept]
        else:
            fallback = self._tokenizer.last_fallback.size  # rows the exact per-document tokenizer did
            if fallback:
                Metrics.counter(NAMESPACE, "tokenize_fallback_rows").inc(fallback)
        if self.maxlen is not None:
            offsets, tokens = truncate(offsets, tokens, self.maxlen, self.truncating)
        yield DocBatch(batch.ids, None, offsets, tokens, text_hash)

    def _one_by_one(self, batch: DocBatch):
        """Dead letters for the documents whose tokenizing raises (yielded); returns the positions of
        the others in ``batch`` and their token ids (``offsets``, ``tokens``)."""
        keep, seqs = [], []
        for i, (doc_id, text) in enumerate(zip(batch.ids.to_pylist(), batch.texts.to_pylist())):
            try:
                seqs.append(self._reference.text_to_sequence(text))
            except Exception as e:  # a record must never take the job down: dead-letter it
                yield tagged(doc_id, STAGE, "tokenize_failed", text, f"{type(e).__name__}: {e}")
                continue
            keep.append(i)
        ragged = Ragged.from_lists(seqs)
        return np.array(keep, dtype=np.int64), ragged.offsets, ragged.values.astype(np.int32)
