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

    @property
    def nbytes(self) -> int:
        """The bytes of its arrays (what Beam's size estimate gets: ``transforms/coders.py``)."""
        arrays = (self.ids, self.texts, self.offsets, self.tokens, self.text_hash)
        return sum(a.nbytes for a in arrays if a is not None)

    def lengths(self) -> np.ndarray:
        """Tokens per document (int64); requires ``offsets``."""
        return np.diff(self.offsets)

    def token_lists(self) -> list[list[int]]:
        """Per-document token lists (for tests and the slow paths only: Python objects per document)."""
        return [self.tokens[a:b].tolist() for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]

    def slice(self, start: int, stop: int) -> DocBatch:
        """Documents ``start`` to ``stop - 1``: NumPy views, Arrow arrays copied compact (a sliced
        Arrow array pickles its parent's whole buffers, and Beam encodes elements it sizes or shuffles)."""
        offsets = tokens = None
        if self.offsets is not None:
            offsets = self.offsets[start:stop + 1] - self.offsets[start]
            tokens = self.tokens[self.offsets[start]:self.offsets[stop]]
        return DocBatch(
            pa.concat_arrays([self.ids.slice(start, stop - start)]),
            None if self.texts is None else pa.concat_arrays([self.texts.slice(start, stop - start)]),
            offsets,
            tokens,
            None if self.text_hash is None else self.text_hash[start:stop],
        )

    def take(self, index: np.ndarray) -> DocBatch:
        """The documents at ``index``, in that order (columns gathered, no per-document objects)."""
        from beam_pipeline.ragged import take_ragged

        index = np.asarray(index, dtype=np.int64)
        offsets = tokens = None
        if self.offsets is not None:
            offsets, tokens = take_ragged(self.offsets, self.tokens, index)
        positions = pa.array(index, type=pa.int64())
        return DocBatch(
            self.ids.take(positions),
            None if self.texts is None else self.texts.take(positions),
            offsets,
            tokens,
            None if self.text_hash is None else self.text_hash[index],
        )


def concat(parts: list[DocBatch]) -> DocBatch:
    """One batch holding ``parts``' documents in order (every part has the same columns set)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    offsets = tokens = None
    if first.offsets is not None:
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate([p.tokens for p in parts])
    return DocBatch(
        pa.concat_arrays([p.ids for p in parts]),
        None if first.texts is None else pa.concat_arrays([p.texts for p in parts]),
        offsets,
        tokens,
        None if first.text_hash is None else np.concatenate([p.text_hash for p in parts]),
    )


def binary_views(values: pa.Array):
    """An iterator of a ``memoryview`` of each value's bytes of a ``string``/``binary`` array (large ones
    too), in place: no Python ``bytes`` copy per value (hashing ~40% faster than through ``to_pylist``), and
    one view alive at a time when consumed by ``map`` (a list of views would outweigh short ids' bytes).
    Nulls read as empty."""
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        binary, offset_type = values.cast(pa.large_binary()), np.int64
    else:
        binary, offset_type = values.cast(pa.binary()), np.int32
    n = len(binary)
    if not n:
        return iter(())
    offsets = np.frombuffer(binary.buffers()[1], dtype=offset_type)[binary.offset:binary.offset + n + 1].tolist()
    data = binary.buffers()[2]
    buf = memoryview(data) if data is not None else memoryview(b"")
    return (buf[a:b] for a, b in zip(offsets[:-1], offsets[1:]))


def hash_texts(texts: pa.Array) -> np.ndarray:
    """``(B, 16)`` uint8: XXH3-128 of each text's UTF-8 bytes (its canonical big-endian digest, as
    ``xxhash.xxh3_128_digest`` gives it; the algorithm is frozen since xxHash 0.8.0). A
    non-cryptographic hash: it tells an edited text from the one before, it is no defence against
    texts crafted to collide. ~0.3 µs per 300-byte text (blake2b, measured the same way: 0.8)."""
    import xxhash

    digests = b"".join(map(xxhash.xxh3_128_digest, binary_views(texts)))
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), 16).copy()


def _register_coder() -> None:
    import apache_beam as beam

    from transforms.coders import DocBatchCoder

    beam.coders.registry.register_coder(DocBatch, DocBatchCoder)


_register_coder()
