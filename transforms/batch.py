"""The Beam element of the job: a batch of documents in columns, never one document.

From the reader to the writer, one element carries a few thousand documents as Arrow arrays and
NumPy buffers, so Beam's per-element cost, the interpreter and the garbage collector see a batch,
not a document:

- ``ids``: ``pa.string()`` array, one document id per row;
- ``texts``: ``pa.string()`` array (or ``pa.large_string()``) of the documents' texts, as read;
  dropped once tokenized, unless the model tokenizes raw text itself;
- ``offsets`` / ``tokens``: the token ids of row ``i`` are ``tokens[offsets[i]:offsets[i + 1]]``
  (``offsets`` int64 of ``B + 1``, ``tokens`` int32), set by the tokenize stage;
- ``text_hash``: ``(B, 16)`` uint8, a 128-bit hash of each text's UTF-8 bytes (incremental runs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

# Documents per element the readers aim for: Beam's cost per element is then negligible and
# per-batch work (vocabulary lookups, padding) amortises; small enough that a few in flight per
# stage keep memory low.
BATCH_DOCS = 4096


@dataclasses.dataclass
class DocBatch:
    ids: pa.Array
    texts: pa.Array | None = None
    offsets: np.ndarray | None = None
    tokens: np.ndarray | None = None
    text_hash: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """Tokens per document (int64); requires ``offsets``."""
        return np.diff(self.offsets)

    def token_lists(self) -> list[list[int]]:
        """Per-document token lists (for tests and the slow paths only: Python objects per document)."""
        return [self.tokens[a:b].tolist() for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]

    @property
    def nbytes(self) -> int:
        size = self.ids.nbytes
        for part in (self.texts, self.offsets, self.tokens, self.text_hash):
            if part is not None:
                size += part.nbytes
        return size
