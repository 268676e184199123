"""Exact ``bytes -> id`` lookup of many words per call, in NumPy: the vocabulary of the batch tokenizer.

``pyarrow.compute.index_in`` hashes its whole value set on every call: about 0.1 s per batch of
4096 documents for a 400k-word vocabulary (25 us per document), where :class:`WordTable`, built
once, takes under 0.1 us per word. Words are byte ranges of one buffer (``starts``, ``lengths``),
read 8 bytes at a time as little-endian uint64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PAD", "WordTable", "padded"]

# hash constants (splitmix64's)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
#: Zero bytes a word buffer needs after its last word: bytes 8-15 of every word are read.
PAD = 16


def padded(data: np.ndarray | bytes) -> np.ndarray:
    """``data`` as a uint8 array followed by ``PAD`` zero bytes, so that the loads of :func:`_keys` stay in it."""
    src = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    out = np.zeros(src.size + PAD, np.uint8)
    out[: src.size] = src
    return out


def _words64(buf: np.ndarray) -> np.ndarray:
    """Little-endian uint64 loads at every byte position of a :func:`padded` buffer (a strided view)."""
    return np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))


def _chunk(view: np.ndarray, starts: np.ndarray, lengths: np.ndarray, j: int) -> np.ndarray:
    """Bytes ``8j .. 8j+7`` of each word as uint64, zeros past the word's end (all zeros for a word of ``8j`` or less).

    NumPy's ``>>`` gives 0 for a shift of 64, the mask of a word with no byte there.
    """
    rest = np.minimum(np.maximum(lengths - 8 * j, 0), 8).astype(np.uint64)  # (np.clip is ~20x slower)
    return view[starts + 8 * j] & (_ALL >> (np.uint64(64) - np.uint64(8) * rest))


def _mix(x: np.ndarray) -> np.ndarray:
    x ^= x >> np.uint64(32)
    return x * _K2


def _keys(view: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, second, hash)``, uint64 each: bytes 0-7 and 8-15 and a hash of each word (lengths >= 1)."""
    first = _chunk(view, starts, lengths, 0)
    second = _chunk(view, starts, lengths, 1)
    hashes = _mix(_mix(first ^ (lengths.astype(np.uint64) * _K1)) ^ second)
    rows = np.flatnonzero(lengths > 16)
    j = 2
    while rows.size:
        hashes[rows] = _mix(hashes[rows] ^ _chunk(view, starts[rows], lengths[rows], j))
        rows = rows[lengths[rows] > 8 * (j + 1)]
        j += 1
    return first, second, hashes


class WordTable:
    """Exact ``bytes -> id`` lookup of many words per call, in NumPy.

    Open addressing with linear probing over ``2**k >= 2 * len(words)`` slots; a slot holds its
    word's length, first 16 bytes, hash and id. A word matches a slot when length and bytes are
    equal (the bytes past the first 16 compared only where the hashes agree), so the result is exact
    whatever the hashes do; they only decide how far a probe goes.
    """

    def __init__(self, words: list[bytes], ids: np.ndarray) -> None:
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        self._buf = padded(b"".join(words))
        self._view = _words64(self._buf)
        starts = np.zeros(len(words), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        self._max_len = int(lengths.max(initial=0))
        bits = max(3, (2 * len(words)).bit_length())
        self._shift = np.uint64(64 - bits)
        self._mask = (1 << bits) - 1
        self._slot_len = np.zeros(1 << bits, np.int32)  # 0: empty (no word is empty)
        self._slot_first = np.zeros(1 << bits, np.uint64)
        self._slot_second = np.zeros(1 << bits, np.uint64)
        self._slot_hash = np.zeros(1 << bits, np.uint64)
        self._slot_start = np.zeros(1 << bits, np.int64)  # of the word's bytes in self._buf
        self._slot_id = np.zeros(1 << bits, np.int32)
        first, second, hashes = _keys(self._view, starts, lengths)
        pending = np.arange(len(words))
        slots = (hashes >> self._shift).astype(np.int64)
        while pending.size:
            free = np.flatnonzero(self._slot_len[slots] == 0)
            # of the words wanting one free slot the first (the more frequent: word_index order) takes it
            taken, first_of = np.unique(slots[free], return_index=True)
            placed = pending[free[first_of]]
            self._slot_len[taken] = lengths[placed]
            self._slot_first[taken] = first[placed]
            self._slot_second[taken] = second[placed]
            self._slot_hash[taken] = hashes[placed]
            self._slot_start[taken] = starts[placed]
            self._slot_id[taken] = ids[placed]
            keep = np.ones(pending.size, bool)
            keep[free[first_of]] = False
            pending, slots = pending[keep], (slots[keep] + 1) & self._mask

    def lookup(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Ids (int32) of the words ``buf[starts[i] : starts[i] + lengths[i]]``, -1 where not in the table.

        ``buf`` is a :func:`padded` buffer; every length is >= 1.
        """
        out = np.full(starts.size, -1, np.int32)
        if not starts.size:
            return out
        cand = np.flatnonzero(lengths <= self._max_len) if lengths.max() > self._max_len else None
        if cand is not None:
            starts, lengths = starts[cand], lengths[cand]
        view = _words64(buf)
        first, second, hashes = _keys(view, starts, lengths)
        slot = (hashes >> self._shift).astype(np.int64)
        # first probe on every word at once; the words whose home slot holds another word probe on
        entry_len = self._slot_len[slot]
        match = self._matches(view, starts, lengths, (first, second, hashes), slot, entry_len)
        found = np.where(match, self._slot_id[slot], -1)
        rows = np.flatnonzero((entry_len != 0) & ~match)
        slot = (slot[rows] + 1) & self._mask
        while rows.size:
            entry_len = self._slot_len[slot]
            keys = (first[rows], second[rows], hashes[rows])
            match = self._matches(view, starts[rows], lengths[rows], keys, slot, entry_len)
            found[rows[match]] = self._slot_id[slot[match]]
            go_on = np.flatnonzero((entry_len != 0) & ~match)
            rows, slot = rows[go_on], (slot[go_on] + 1) & self._mask
        if cand is None:
            return found
        out[cand] = found
        return out

    def _matches(
        self,
        view: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        keys: tuple[np.ndarray, np.ndarray, np.ndarray],
        slot: np.ndarray,
        entry_len: np.ndarray,
    ) -> np.ndarray:
        """Whether each word (its :func:`_keys`) equals the word in its ``slot`` (of length ``entry_len``, 0: none)."""
        first, second, hashes = keys
        match = (entry_len == lengths) & (self._slot_first[slot] == first) & (self._slot_second[slot] == second)
        longer = np.flatnonzero(match & (lengths > 16))
        if longer.size:
            match[longer] = self._same_rest(view, starts[longer], lengths[longer], hashes[longer], slot[longer])
        return match

    def _same_rest(
        self, view: np.ndarray, starts: np.ndarray, lengths: np.ndarray, hashes: np.ndarray, slots: np.ndarray
    ) -> np.ndarray:
        """Whether words longer than 16 bytes (first 16 equal to their slot's) equal their slot's word."""
        same = self._slot_hash[slots] == hashes
        entry_starts = self._slot_start[slots]
        rows = np.flatnonzero(same)
        j = 2
        while rows.size:
            n = lengths[rows]
            equal = _chunk(view, starts[rows], n, j) == _chunk(self._view, entry_starts[rows], n, j)
            same[rows[~equal]] = False
            rows = rows[equal & (n > 8 * (j + 1))]
            j += 1
        return same
