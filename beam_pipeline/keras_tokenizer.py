"""Dependency-free reproduction of the legacy Keras ``Tokenizer`` at inference time.

The legacy tokenizer (``keras_preprocessing.text.Tokenizer``, also shipped as
``tf_keras.preprocessing.text.Tokenizer``) is pure Python, but importing it drags
in TensorFlow.  This module re-implements exactly what ``texts_to_sequences``
does for a tokenizer saved with ``Tokenizer.to_json()``, using only the standard
library and numpy, so that Beam workers can tokenize without TensorFlow.

Legacy behaviour reproduced here (word mode, ``char_level=False``):

1. ``text.lower()`` if ``lower`` (lowering happens *before* filtering, so an
   upper-case filter character never matches when ``lower=True``);
2. every character of ``filters`` is replaced by ``split``;
3. ``text.split(split)``, dropping empty strings.  Only ``split`` separates
   words: with the default ``split=" "``, characters such as ``"\\r"``, the
   no-break space or ``"\\u3000"`` are *not* separators (the default filters
   only cover ``"\\t"`` and ``"\\n"``);
4. each word is looked up in ``word_index``:

   * found with id ``i`` and ``num_words and i >= num_words``: the OOV id if an
     ``oov_token`` is set, otherwise the word is dropped;
   * found otherwise: ``i``;
   * not found: the OOV id if an ``oov_token`` is set, otherwise dropped.

With ``char_level=True`` the text is only lowered (if ``lower``); ``filters``
and ``split`` are ignored and every code point (spaces and punctuation
included) is a token, looked up with the same rules.

``num_words`` keeps ids ``1 .. num_words - 1`` (i.e. ``num_words - 1`` words,
the OOV token included when it has id 1); ``num_words`` of ``None`` or ``0``
means no limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["DEFAULT_FILTERS", "KerasTokenizer", "pad_sequences", "truncate"]

#: Default ``filters`` of the legacy Keras ``Tokenizer``.
DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'

_VALID_SIDES = ("pre", "post")


class KerasTokenizer:
    """Inference-only clone of the legacy Keras ``Tokenizer``.

    ``text_to_sequence`` / ``texts_to_sequences`` return exactly what the legacy
    ``Tokenizer.texts_to_sequences`` returns for ``str`` inputs (see the module
    docstring for the rules).  Build one with :meth:`from_json` from the output
    of the legacy ``Tokenizer.to_json()``.  Instances are immutable in
    practice (derived lookup tables are computed once in ``__init__``) and
    picklable.

    Deliberate deviation: if ``oov_token`` is set but missing from
    ``word_index`` (an unfitted or hand-edited tokenizer), the legacy class
    would emit ``None`` for unknown words; this class raises ``ValueError`` at
    construction instead.
    """

    num_words: int | None
    filters: str
    lower: bool
    split: str
    char_level: bool
    oov_token: str | None
    word_index: dict[str, int]

    def __init__(
        self,
        word_index: Mapping[str, int],
        num_words: int | None = None,
        filters: str = DEFAULT_FILTERS,
        lower: bool = True,
        split: str = " ",
        char_level: bool = False,
        oov_token: str | None = None,
    ) -> None:
        """Validate the configuration and precompute the lookup tables.

        Raises ``TypeError`` for wrongly typed settings (non-``str`` words or
        non-``int`` ids in ``word_index``, a non-integer ``num_words``, ...) and
        ``ValueError`` for an empty ``split`` in word mode (legacy
        ``str.split("")`` would fail on every text) or an ``oov_token`` absent
        from ``word_index``.
        """
        if not isinstance(word_index, Mapping):
            raise TypeError(
                "word_index must be a mapping of str to int, "
                f"got {type(word_index).__name__}"
            )
        for word, idx in word_index.items():
            if (
                not isinstance(word, str)
                or isinstance(idx, bool)
                or not isinstance(idx, int)
            ):
                raise TypeError(
                    f"word_index must map str to int, found {word!r}: {idx!r}"
                )
        if num_words is not None and (
            isinstance(num_words, bool) or not isinstance(num_words, int)
        ):
            raise TypeError(f"num_words must be an int or None, got {num_words!r}")
        if not isinstance(filters, str):
            # The legacy class iterates over `filters`, so a list of single
            # characters behaves like their concatenation.
            if isinstance(filters, (list, tuple)) and all(
                isinstance(c, str) and len(c) == 1 for c in filters
            ):
                filters = "".join(filters)
            else:
                raise TypeError(
                    f"filters must be a str (or a list of characters), got {filters!r}"
                )
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {split!r}")
        if not char_level and not split:
            raise ValueError("split must be a non-empty string when char_level=False")
        if not isinstance(lower, bool) or not isinstance(char_level, bool):
            raise TypeError(
                f"lower and char_level must be bools, got {lower!r} and {char_level!r}"
            )
        if oov_token is not None and not isinstance(oov_token, str):
            raise TypeError(f"oov_token must be a str or None, got {oov_token!r}")

        self.word_index = dict(word_index)
        self.num_words = num_words
        self.filters = filters
        self.lower = lower
        self.split = split
        self.char_level = char_level
        self.oov_token = oov_token

        # Id emitted for out-of-vocabulary words (and for words cut by
        # num_words), or None when such words are dropped.
        if oov_token is None:
            oov_id = None
        else:
            oov_id = self.word_index.get(oov_token)
            if oov_id is None:
                raise ValueError(
                    f"oov_token {oov_token!r} is not in word_index; the legacy "
                    "Tokenizer would emit None for unknown words"
                )
        self._oov_id: int | None = oov_id

        # word -> emitted id, with the num_words rule already applied.  The
        # empty string is never looked up by the legacy class (empty split
        # results are dropped, characters are never empty), so drop it.
        lookup: dict[str, int] = {}
        for word, idx in self.word_index.items():
            if num_words and idx >= num_words:
                if oov_id is not None:
                    lookup[word] = oov_id
            else:
                lookup[word] = idx
        lookup.pop("", None)
        self._lookup = lookup

        # Filtering: str.translate with a dict is slow, so ASCII text goes
        # through a list-indexed table (CPython's fast path) and other text
        # through one regex substitution; both equal
        # `text.translate(str.maketrans({c: split for c in filters}))`.
        if filters and not char_level:
            table = [chr(i) for i in range(128)]
            for ch in filters:
                if ord(ch) < 128:
                    table[ord(ch)] = split
            self._ascii_table: list[str] | None = table
            self._filter_re: re.Pattern[str] | None = re.compile(
                "[" + "".join(re.escape(ch) for ch in dict.fromkeys(filters)) + "]"
            )
            # Escape backslashes so `split` is used literally as replacement.
            self._filter_repl = split.replace("\\", "\\\\")
        else:
            self._ascii_table = None
            self._filter_re = None
            self._filter_repl = split

        # Fast path for ASCII text split on " ": the filters as a bytes table, then str.split() with no
        # argument, which equals split(" ") with empty pieces dropped as long as the filtered text holds
        # no other ASCII whitespace (str.split() also splits on \t \n \r \x0b \x0c \x1c-\x1f; legacy
        # splits on " " only). Texts holding any of those take the general path.
        self._ascii_bytes: bytes | None = None
        self._other_ascii_space: re.Pattern[str] | None = None
        if split == " " and not char_level:
            table_bytes = bytearray(range(128))
            if self._ascii_table is not None:
                for i, ch in enumerate(self._ascii_table):
                    table_bytes[i] = ord(ch)
            self._ascii_bytes = bytes(table_bytes) + bytes(range(128, 256))
            others = [c for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f" if chr(self._ascii_bytes[ord(c)]) != " "]
            self._other_ascii_space = re.compile("[" + re.escape("".join(others)) + "]") if others else None

    @classmethod
    def from_json(cls, json_string: str) -> KerasTokenizer:
        """Build a tokenizer from the JSON written by legacy ``Tokenizer.to_json()``.

        The expected document is ``{"class_name": "Tokenizer", "config": {...}}``
        where ``config["word_index"]`` is itself a JSON-encoded object (a plain
        object is accepted too).  Missing optional settings take the legacy
        defaults; the legacy ``nb_words`` key is honoured; counts
        (``word_counts``, ``word_docs``, ...) are ignored.  Raises
        ``ValueError`` (never ``TypeError``) if the input is not a valid Keras
        tokenizer JSON.
        """
        try:
            doc = json.loads(json_string)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tokenizer JSON could not be decoded: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("class_name") != "Tokenizer":
            raise ValueError(
                'not a Keras tokenizer JSON: expected an object with "class_name": '
                '"Tokenizer" (as written by Tokenizer.to_json())'
            )
        config = doc.get("config")
        if not isinstance(config, dict):
            # ValueError on purpose: from_json reports any malformed input so.
            raise ValueError(  # noqa: TRY004
                'not a Keras tokenizer JSON: "config" must be an object'
            )
        if "word_index" not in config:
            raise ValueError('not a Keras tokenizer JSON: "config" has no "word_index"')
        word_index: Any = config["word_index"]
        if isinstance(word_index, str):
            try:
                word_index = json.loads(word_index)
            except ValueError as exc:
                raise ValueError(f"config.word_index is not valid JSON: {exc}") from exc
        if not isinstance(word_index, dict):
            raise ValueError(  # noqa: TRY004
                "config.word_index must encode a JSON object"
            )
        num_words = config.get("num_words", config.get("nb_words"))
        try:
            return cls(
                word_index=word_index,
                num_words=num_words,
                filters=config.get("filters", DEFAULT_FILTERS),
                lower=config.get("lower", True),
                split=config.get("split", " "),
                char_level=config.get("char_level", False),
                oov_token=config.get("oov_token"),
            )
        except TypeError as exc:
            raise ValueError(f"invalid Keras tokenizer config: {exc}") from exc

    def text_to_sequence(self, text: str) -> list[int]:
        """Return the ids of one text, as legacy ``texts_to_sequences([text])[0]``.

        Never raises for any ``str`` (lone surrogates included); unknown words
        become the OOV id or are dropped.
        """
        if self.lower:
            text = text.lower()
        get = self._lookup.get
        oov = self._oov_id
        if self.char_level:
            if oov is None:
                return [i for ch in text if (i := get(ch)) is not None]
            return [get(ch, oov) for ch in text]
        if self._ascii_bytes is not None and text.isascii():
            text = text.encode("ascii").translate(self._ascii_bytes).decode("ascii")
            if self._other_ascii_space is None or not self._other_ascii_space.search(text):
                words = text.split()
                if oov is None:
                    return [i for i in map(get, words) if i is not None]
                return list(map(get, words, repeat(oov, len(words))))
            # filtered already; split on " " only, below
        elif self._ascii_table is not None:
            if text.isascii():
                text = text.translate(self._ascii_table)
            else:
                text = self._filter_re.sub(self._filter_repl, text)
        words = text.split(self.split)
        if oov is None:
            # "" is not a key of the lookup, so empty pieces drop out here.
            return [i for w in words if (i := get(w)) is not None]
        return [get(w, oov) for w in words if w]

    def texts_to_sequences(self, texts: Iterable[str]) -> list[list[int]]:
        """Return ``[self.text_to_sequence(t) for t in texts]``, as legacy does."""
        to_seq = self.text_to_sequence
        return [to_seq(t) for t in texts]

    def max_id(self) -> int:
        """Largest id ``text_to_sequence`` can emit (0 if it can emit none).

        Accounts for ``num_words`` (ids ``>= num_words`` are never emitted as
        such) and for the OOV id.  An embedding fed by this tokenizer needs
        ``input_dim >= max_id() + 1``.
        """
        ids = list(self._lookup.values())
        if self._oov_id is not None:
            ids.append(self._oov_id)
        return max(ids, default=0)

    @property
    def vocab_size(self) -> int:
        """Number of ``word_index`` entries (OOV token included, num_words ignored)."""
        return len(self.word_index)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"num_words={self.num_words!r}, lower={self.lower!r}, "
            f"split={self.split!r}, char_level={self.char_level!r}, "
            f"oov_token={self.oov_token!r})"
        )


def _check_side(name: str, side: str) -> None:
    if side not in _VALID_SIDES:
        raise ValueError(f"{name} must be 'pre' or 'post', got {side!r}")


def truncate(seq: Sequence[int], maxlen: int, truncating: str) -> list[int]:
    """Return at most ``maxlen`` ids of ``seq`` as a new list.

    ``truncating="post"`` keeps the first ``maxlen`` ids, ``"pre"`` keeps the
    last ``maxlen`` ids (the Keras ``pad_sequences`` convention).  Raises
    ``ValueError`` for another ``truncating`` value or a negative ``maxlen``.
    """
    _check_side("truncating", truncating)
    if maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, got {maxlen!r}")
    if len(seq) <= maxlen:
        return list(seq)
    if truncating == "post":
        return list(seq[:maxlen])
    return list(seq[len(seq) - maxlen :])


def pad_sequences(
    sequences: Iterable[Sequence[int]],
    maxlen: int,
    padding: str = "pre",
    truncating: str = "pre",
    value: int = 0,
) -> np.ndarray:
    """Pad/truncate int sequences into an ``(n, maxlen)`` int32 array.

    Same result as ``keras.utils.pad_sequences(sequences, maxlen=maxlen,
    padding=padding, truncating=truncating, value=value)`` for int sequences:
    sequences longer than ``maxlen`` lose ids at the start (``truncating="pre"``)
    or the end (``"post"``); shorter ones are filled with ``value`` before
    (``padding="pre"``) or after (``"post"``) them.  Unlike Keras, ``padding``
    and ``truncating`` are validated up front (``ValueError``; a non-int
    ``maxlen`` is a ``TypeError``, a negative one a ``ValueError``), and
    ``maxlen=0`` gives an ``(n, 0)`` array for every mode (Keras raises with
    ``truncating="pre"`` there because ``s[-0:]`` is the whole sequence).
    """
    _check_side("padding", padding)
    _check_side("truncating", truncating)
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)):
        raise TypeError(f"maxlen must be an int, got {maxlen!r}")
    if maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, got {maxlen!r}")
    maxlen = int(maxlen)
    seqs = list(sequences)
    out = np.full((len(seqs), maxlen), value, dtype=np.int32)
    if maxlen == 0:
        return out
    pre_pad = padding == "pre"
    pre_trunc = truncating == "pre"
    for row, seq in enumerate(seqs):
        n = len(seq)
        if not n:
            continue
        if n > maxlen:
            seq = seq[n - maxlen :] if pre_trunc else seq[:maxlen]
            n = maxlen
        if pre_pad:
            out[row, maxlen - n :] = seq
        else:
            out[row, :n] = seq
    return out
