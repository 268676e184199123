"""The legacy Keras ``Tokenizer`` over a whole batch of texts at once, on the Arrow value buffer.

:class:`BatchTokenizer` gives, for every row of a ``pa.string()`` array, exactly the ids
:meth:`KerasTokenizer.text_to_sequence` gives for that text, as one flat ``tokens`` array with
``offsets`` (the layout of :class:`transforms.batch.DocBatch`), with NumPy and Arrow kernels instead
of Python work per document. The legacy steps, done batch-wide:

1. lowering (``lower=True``): a byte table for ASCII text; :func:`python_lower.lower_like_python`
   (``pyarrow.compute.utf8_lower`` made to agree with ``str.lower``) once the batch holds other
   text. A row whose lowering Arrow cannot give (a letter newer than Python's Unicode version) is
   tokenized by :meth:`KerasTokenizer.text_to_sequence` instead and spliced back;
2. filters to ``split``: ASCII filter characters in the same byte table when ``split`` is one ASCII
   character, the others with one ``replace_substring_regex``;
3. splitting on the literal ``split`` (never on other whitespace), empty pieces dropped: byte masks
   when ``split`` is one ASCII character, ``pyarrow.compute.split_pattern`` otherwise;
4. the vocabulary (``word_index`` after ``num_words``, as the per-document tokenizer applies it)
   in an open-addressing hash table of 64-bit hashes of the UTF-8 bytes, each hit checked byte for
   byte, so the result is exact whatever the hashes do; misses become the OOV id or are dropped.

With ``char_level=True`` every code point of the (lowered) text is a token, looked up in a table
indexed by code point.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipeline.keras_tokenizer import KerasTokenizer
from beam_pipeline.python_lower import code_points, lower_like_python
from beam_pipeline.word_table import PAD, WordTable, padded

__all__ = ["BatchTokenizer", "truncate"]

_ASCII_LOWER = bytes(range(65)) + bytes(range(97, 123)) + bytes(range(91, 256))


def _value_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a non-empty string array: offsets int64 of ``len + 1`` from 0, data the rows' UTF-8."""
    _, offset_buf, data_buf = texts.buffers()
    dtype = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(offset_buf, dtype, count=len(texts) + 1, offset=texts.offset * np.dtype(dtype).itemsize)
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buf, np.uint8)[start:end] if data_buf is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64) - start, data


def _char_class(chars: str) -> str | None:
    """An RE2 class matching any character of ``chars`` (None for none), each written as ``\\x{HEX}``."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in dict.fromkeys(chars)) + "]" if chars else None


def _check_texts(texts: pa.Array) -> None:
    if not isinstance(texts, pa.Array) or not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise TypeError(
            "texts must be a pyarrow string or large_string Array (a ChunkedArray: call .combine_chunks() first), "
            f"got {type(texts).__name__} of {getattr(texts, 'type', None)}"
        )
    if texts.null_count:
        raise ValueError(
            f"texts holds {texts.null_count} null(s): a document without text must be dead-lettered "
            "(or given an empty string) before tokenizing"
        )


class BatchTokenizer:
    """Tokenizes a batch of texts exactly as ``tokenizer.text_to_sequence`` does each text, vectorized.

    ``encode(texts)`` takes a ``pa.string()`` or ``pa.large_string()`` array of ``B`` texts (no nulls)
    and returns ``(offsets, tokens)``: ``offsets`` int64 of ``B + 1`` starting at 0, ``tokens`` int32,
    with ``tokens[offsets[i]:offsets[i + 1]] == tokenizer.text_to_sequence(texts[i])`` for every row
    and every tokenizer setting. Rows the vectorized path cannot lower exactly (see the module
    docstring) are tokenized by ``tokenizer`` itself: ``last_fallback`` holds their row indices in
    the last batch, ``fallback_rows`` counts them over every batch. One instance per thread (it
    keeps those two counters); the tables are built in ``__init__`` (the Unicode ones once per process,
    about a second, for a tokenizer that lowers).
    """

    def __init__(self, tokenizer: KerasTokenizer) -> None:
        self.tokenizer = tokenizer
        self.fallback_rows = 0
        self.last_fallback = np.zeros(0, np.int64)
        # The per-document tokenizer's own table (word -> emitted id, num_words applied) and OOV id,
        # so that both paths share one rule.
        lookup: dict[str, int] = tokenizer._lookup
        self._oov: int | None = tokenizer._oov_id
        # The Unicode lowering tables (python_lower, ~1 s of CPU) are built by the first batch holding
        # text that is not ASCII: an ASCII corpus never pays for them, and start-up is not delayed.
        if tokenizer.char_level:
            singles = {ord(ch): i for ch, i in lookup.items() if len(ch) == 1}
            # indexed by code point; the last entry (-1) is where np.take clips every larger one
            self._char_ids = np.full(max(singles, default=-1) + 2, -1, np.int32)
            self._char_ids[list(singles)] = list(singles.values())
            return
        self._words = WordTable([w.encode() for w in lookup], np.fromiter(lookup.values(), np.int64, len(lookup)))
        split, filters = tokenizer.split, tokenizer.filters
        self._split_byte = ord(split) if len(split) == 1 and ord(split) < 0x80 else None
        self._repl = split.replace("\\", "\\\\")  # replace_substring_regex: "\\" is one backslash
        if self._split_byte is None:
            self._filter_re = _char_class(filters)
            return
        self._filter_re = _char_class("".join(c for c in filters if ord(c) >= 0x80))
        self._filter_table = np.arange(256, dtype=np.uint8)
        self._filter_table[[ord(c) for c in filters if ord(c) < 0x80]] = self._split_byte
        self._lower_filter_table = self._filter_table[np.frombuffer(_ASCII_LOWER, np.uint8)]

    def encode(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets int64 (B + 1,), tokens int32)`` of ``B`` texts; see the class docstring."""
        _check_texts(texts)
        self.last_fallback = np.zeros(0, np.int64)
        if not len(texts):
            return np.zeros(1, np.int64), np.zeros(0, np.int32)
        offsets, data = _value_buffers(texts)
        ascii_only = not data.size or int(data.max()) < 0x80
        lower = self.tokenizer.lower
        fallback = np.zeros(0, np.int64)
        lowered = texts
        if lower and not ascii_only:
            lowered, fallback = lower_like_python(texts, offsets, data)
        ascii_lower = lower and ascii_only  # left to the byte tables below
        if self.tokenizer.char_level:
            word_offsets, ids = self._chars(lowered, ascii_lower)
        elif self._split_byte is not None:
            word_offsets, ids = self._words_on_byte(lowered, ascii_lower, ascii_only)
        else:
            word_offsets, ids = self._words_on_pattern(pc.ascii_lower(lowered) if ascii_lower else lowered)
        if self._oov is not None:
            ids[ids < 0] = self._oov
        elif ids.size and ids.min() < 0:
            kept = ids >= 0
            before = np.zeros(kept.size + 1, np.int64)
            np.cumsum(kept, out=before[1:])
            word_offsets, ids = before[word_offsets], ids[kept]
        self.last_fallback = fallback
        self.fallback_rows += fallback.size
        if fallback.size:
            word_offsets, ids = self._splice(texts, fallback, word_offsets, ids)
        return word_offsets, ids

    def _chars(self, texts: pa.Array, ascii_lower: bool) -> tuple[np.ndarray, np.ndarray]:
        offsets, data = _value_buffers(texts)
        if ascii_lower:
            data = np.frombuffer(_ASCII_LOWER, np.uint8)[data]
        leads = np.flatnonzero((data & 0xC0) != 0x80)
        if leads.size == data.size:  # ASCII: a byte is a code point
            return offsets, self._char_ids.take(data, mode="clip")
        return np.searchsorted(leads, offsets), self._char_ids.take(code_points(data, leads), mode="clip")

    def _words_on_byte(self, texts: pa.Array, ascii_lower: bool, ascii_only: bool) -> tuple[np.ndarray, np.ndarray]:
        """Words of texts (lowered already unless ``ascii_lower``) when ``split`` is one ASCII byte."""
        if self._filter_re is not None and not ascii_only:
            texts = pc.replace_substring_regex(texts, self._filter_re, self._repl)
        offsets, data = _value_buffers(texts)
        n = data.size
        mapped = np.zeros(n + PAD, np.uint8)
        table = self._lower_filter_table if ascii_lower else self._filter_table
        np.take(table, data, out=mapped[:n], mode="clip")
        sep = mapped[:n] == self._split_byte
        word = ~sep
        # a word starts after a separator or at its row's start, and ends before one or at its row's end
        first = word.copy()
        first[1:] &= sep[:-1]
        row_starts = offsets[:-1][offsets[:-1] < n]
        first[row_starts] = word[row_starts]
        last = word
        last[:-1] &= sep[1:]
        row_ends = offsets[1:][offsets[1:] > offsets[:-1]] - 1
        last[row_ends] = ~sep[row_ends]
        starts = np.flatnonzero(first)
        ends = np.flatnonzero(last) + 1
        return np.searchsorted(starts, offsets), self._words.lookup(mapped, starts, ends - starts)

    def _words_on_pattern(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Words of lowered texts for any other ``split``: Arrow's literal split, empty pieces dropped."""
        if self._filter_re is not None:
            texts = pc.replace_substring_regex(texts, self._filter_re, self._repl)
        pieces = pc.split_pattern(texts, self.tokenizer.split)
        piece_offsets = pieces.offsets.to_numpy()
        offsets, data = _value_buffers(pieces.values)
        lengths = np.diff(offsets)
        nonempty = lengths > 0
        before = np.zeros(nonempty.size + 1, np.int64)
        np.cumsum(nonempty, out=before[1:])
        keep = np.flatnonzero(nonempty)
        return before[piece_offsets], self._words.lookup(padded(data), offsets[keep], lengths[keep])

    def _splice(
        self, texts: pa.Array, rows: np.ndarray, offsets: np.ndarray, tokens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Replace the tokens of ``rows`` with those of the per-document tokenizer."""
        seqs = [self.tokenizer.text_to_sequence(t) for t in texts.take(rows).to_pylist()]
        lengths = np.diff(offsets)
        is_fallback = np.zeros(lengths.size, bool)
        is_fallback[rows] = True
        new_lengths = lengths.copy()
        new_lengths[rows] = [len(s) for s in seqs]
        new_offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(new_lengths, out=new_offsets[1:])
        out = np.empty(new_offsets[-1], np.int32)
        from_fallback = np.repeat(is_fallback, new_lengths)
        out[~from_fallback] = tokens[~np.repeat(is_fallback, lengths)]
        out[from_fallback] = [i for s in seqs for i in s]
        return new_offsets, out


def truncate(offsets: np.ndarray, tokens: np.ndarray, maxlen: int, truncating: str) -> tuple[np.ndarray, np.ndarray]:
    """At most ``maxlen`` tokens per row, as ``keras.utils.pad_sequences`` cuts: ``(offsets, tokens)``.

    ``truncating="pre"`` keeps each row's last ``maxlen`` tokens, ``"post"`` its first; ``offsets``
    (int64, ``B + 1``, from 0) and ``tokens`` are those of :meth:`BatchTokenizer.encode`. Returns
    the inputs themselves when no row is longer than ``maxlen``. Raises ``ValueError`` for another
    ``truncating`` or a negative ``maxlen``.
    """
    if truncating not in ("pre", "post"):
        raise ValueError(f"truncating must be 'pre' or 'post', got {truncating!r}")
    if maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, got {maxlen!r}")
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, maxlen)
    if np.array_equal(kept, lengths):
        return offsets, tokens
    new_offsets = np.zeros(offsets.size, np.int64)
    np.cumsum(kept, out=new_offsets[1:])
    first = offsets[:-1] + (lengths - kept if truncating == "pre" else 0)
    index = np.arange(new_offsets[-1]) + np.repeat(first - new_offsets[:-1], kept)
    return new_offsets, tokens[index]
