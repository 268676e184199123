"""Tokenize: ``(doc_id, text)`` -> ``(doc_id, ids)``, ids exactly as the legacy Keras Tokenizer
gives them, truncated to ``maxlen`` as ``keras.utils.pad_sequences`` would (``pre``: keep the
last ``maxlen`` ids, ``post``: the first). Padding is left to the embed stage, which knows how
the model needs it.

A document with no token left (empty, every word filtered out, or unknown to a tokenizer without an
``oov_token``) goes on with no ids: Keras computes a value for it too (the model's output on
padding alone), and the embed stage writes it with ``num_tokens = 0``.
"""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline import files
from beam_pipeline.keras_tokenizer import KerasTokenizer, truncate
from transforms.errors import tagged

STAGE = "tokenize"


class Tokenize(beam.DoFn):
    def __init__(self, tokenizer_path: str, maxlen: int | None, truncating: str):
        """``maxlen=None`` keeps every token (``--long_docs carry``)."""
        self.tokenizer_path = tokenizer_path
        self.maxlen = maxlen
        self.truncating = truncating
        self._to_ids = None

    def setup(self):
        tokenizer = KerasTokenizer.from_json(files.read_bytes(self.tokenizer_path).decode("utf-8"))
        self._to_ids = tokenizer.text_to_sequence

    def process(self, element):
        doc_id, text = element
        try:
            ids = self._to_ids(text)
        except Exception as e:  # a record must never take the job down: dead-letter it
            yield tagged(doc_id, STAGE, "tokenize_failed", text, f"{type(e).__name__}: {e}")
            return
        if self.maxlen is not None and len(ids) > self.maxlen:
            ids = truncate(ids, self.maxlen, self.truncating)
        yield doc_id, ids
