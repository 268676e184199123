"""Token ids of a batch of documents as two flat arrays, never a Python list per document."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class Ragged:
    """Token ids of a batch of documents without a Python list per document: document ``i`` is
    ``values[offsets[i]:offsets[i + 1]]`` (``offsets`` int64 of ``B + 1``, ``values`` int32)."""

    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def from_lists(cls, seqs: list) -> Ragged:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(offsets[-1]))
        return cls(offsets, values)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, index: np.ndarray) -> Ragged:
        """The documents at ``index``, in that order (vectorized gather of their tokens)."""
        return Ragged(*take_ragged(self.offsets, self.values, index))

    def to_lists(self) -> list[list[int]]:
        return [self.values[a:b].tolist() for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]


def take_ragged(offsets: np.ndarray, values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, values)`` of the rows at ``index`` of a ragged array, in that order, without a
    Python loop over rows: the gathered positions are ``starts`` repeated plus a running count."""
    index = np.asarray(index, dtype=np.int64)
    starts = offsets[:-1][index]
    lengths = offsets[1:][index] - starts
    new_offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    if total == 0:
        return new_offsets, values[:0]
    positions = np.arange(total, dtype=np.int64) + np.repeat(starts - new_offsets[:-1], lengths)
    return new_offsets, values[positions]
