"""Python's ``str.lower`` of every row of an Arrow string array, batch-wide, or the rows it cannot give.

``pyarrow.compute.utf8_lower`` lowers each code point alone (utf8proc's simple mappings); CPython
lowers each code point alone too (its full mappings), except the capital sigma. What differs is
found at start-up from this Python and this pyarrow, never hard-coded:

- code points the two lower differently (:func:`lowering_differences`): ``İ`` (Python gives ``i``
  and U+0307), the letters newer than Python's Unicode version (Arrow lowers them, Python keeps
  them). Those Python lowers to text Arrow keeps as it is (``İ``) are replaced by Python's lowering
  before Arrow lowers; a row holding any other is left to the caller (to lower in Python);
- ``Σ``: CPython lowers it to ``ς`` where it ends a word (preceded by a cased character and not
  followed by one, case-ignorable characters skipped: Unicode's Final_Sigma), else to ``σ``. Each
  ``Σ`` is decided here with the Cased and Case_Ignorable properties of CPython's own tables, read
  off its lowering of ``Σ`` after every character, and those ending a word become ``ς`` before
  Arrow lowers.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["code_points", "lower_like_python", "lowering_differences", "prepare"]

_SIGMA = 0x3A3
_FINAL_SIGMA_UTF8 = np.frombuffer("ς".encode(), np.uint8)  # as long as "Σ" in UTF-8 (2 bytes)


def _all_code_points() -> np.ndarray:
    """Every code point but the surrogates, as ``<u4``."""
    return np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)]).astype("<u4")


@functools.cache
def lowering_differences() -> np.ndarray:
    """Bool table of length ``0x110000``: True where Arrow's lowering of a row cannot be Python's as it is.

    That is every code point (surrogates excepted) where ``pyarrow.compute.utf8_lower`` and Python's
    ``str.lower`` of the character alone differ, and U+03A3 (``Σ``), the one character CPython lowers
    by its context. Computed once per process (under a second).
    """
    cps = _all_code_points()
    chars = cps.tobytes().decode("utf-32-le")
    python_lower = pa.array(list(map(str.lower, chars)), pa.string())
    utf8_lengths = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    offsets = np.zeros(cps.size + 1, np.int32)
    np.cumsum(utf8_lengths, out=offsets[1:])
    arrow_chars = pa.StringArray.from_buffers(cps.size, pa.py_buffer(offsets), pa.py_buffer(chars.encode()))
    differ = pc.not_equal(pc.utf8_lower(arrow_chars), python_lower).to_numpy(zero_copy_only=False)
    table = np.zeros(0x110000, dtype=bool)
    table[cps[differ]] = True
    table[_SIGMA] = True
    return table


@functools.cache
def _lowered_first() -> dict[int, str]:
    """``{code point: Python's lowering}`` for the code points of :func:`lowering_differences` Arrow
    lowers right once replaced by Python's lowering (``İ`` -> ``i̇``, which Arrow keeps as it is)."""
    chars = [chr(c) for c in np.flatnonzero(lowering_differences()) if c != _SIGMA]
    python = [c.lower() for c in chars]
    arrow = pc.utf8_lower(pa.array(python, pa.string())).to_pylist()
    return {ord(c): low for c, low, again in zip(chars, python, arrow) if again == low}


@functools.cache
def _suspect_prefixes() -> np.ndarray:
    """Bool table over ``first_byte << 8 | second_byte``: True for the first two UTF-8 bytes of a code point
    of :func:`lowering_differences` (so that only those few sequences are decoded)."""
    table = np.zeros(1 << 16, dtype=bool)
    for cp in np.flatnonzero(lowering_differences()).tolist():
        utf8 = chr(cp).encode()
        table[utf8[0] << 8 | utf8[1]] = True
    return table


@functools.cache
def _sigma_context() -> tuple[np.ndarray, np.ndarray]:
    """``(ignorable, cased)``: bool tables over code points, CPython's Case_Ignorable and Cased as its
    lowering of ``Σ`` reads them (``cased`` is only meaningful where not ignorable).

    Read off CPython itself: in ``"A" + c + "Σ"`` the sigma is final iff ``c`` is ignorable or cased,
    in ``"1" + c + "Σ"`` iff ``c`` is cased and not ignorable. All groups are lowered as one string,
    each followed by ``"1"`` (neither cased nor ignorable, so groups do not see each other).
    """
    cps = _all_code_points()
    differ = lowering_differences()[cps]
    lower_len = np.ones(cps.size, np.int64)  # Arrow's lowering is one code point for one
    lower_len[differ] = [len(chr(c).lower()) for c in cps[differ].tolist()]
    group_len = 3 + lower_len
    sigma_at = np.cumsum(group_len) - group_len + 1 + lower_len
    final = []
    for before in ("A", "1"):
        groups = np.empty((cps.size, 4), "<u4")
        groups[:] = [ord(before), 0, _SIGMA, ord("1")]
        groups[:, 1] = cps
        lowered = groups.tobytes().decode("utf-32-le").lower().encode("utf-32-le")
        final.append(np.frombuffer(lowered, "<u4")[sigma_at] == ord("ς"))
    ignorable = np.zeros(0x110000, dtype=bool)
    cased = np.zeros(0x110000, dtype=bool)
    ignorable[cps] = final[0] & ~final[1]
    cased[cps] = final[1]
    return ignorable, cased


def prepare() -> None:
    """Build this process's tables now (about a second of CPU, once), not in the first batch that needs them."""
    _lowered_first()
    _suspect_prefixes()
    _sigma_context()


def code_points(data: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """Code points (int32) of the UTF-8 sequences starting at byte positions ``leads`` of valid UTF-8 ``data``."""
    b0 = data[leads].astype(np.int32)
    b1, b2, b3 = (data.take(leads + k, mode="clip").astype(np.int32) & 0x3F for k in (1, 2, 3))
    return np.where(
        b0 < 0x80,
        b0,
        np.where(
            b0 < 0xE0,
            ((b0 & 0x1F) << 6) | b1,
            np.where(
                b0 < 0xF0,
                ((b0 & 0x0F) << 12) | (b1 << 6) | b2,
                ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3,
            ),
        ),
    )


def _final_sigmas(offsets: np.ndarray, data: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Byte positions, of those of ``Σ`` in ``sigmas``, where CPython lowers ``Σ`` to ``ς``: the nearest
    character before it not ignorable is cased, and the nearest after it (in its row, if any) is not.

    Walks from each sigma one character at a time, ignorable characters only (usually none).
    """
    ignorable, cased = _sigma_context()
    row = np.searchsorted(offsets, sigmas, side="right") - 1
    first, end = offsets[row], offsets[row + 1]
    final = np.zeros(sigmas.size, bool)
    todo, at = np.arange(sigmas.size), sigmas
    while todo.size:
        at = at - 1
        for _ in range(3):  # back to the first byte of that character
            at = at - ((at >= first[todo]) & ((data[np.maximum(at, 0)] & 0xC0) == 0x80))
        inside = at >= first[todo]
        todo, at = todo[inside], at[inside]
        cp = code_points(data, at)
        stop = ~ignorable[cp]
        final[todo[stop]] = cased[cp[stop]]
        todo, at = todo[~stop], at[~stop]
    todo = np.flatnonzero(final)
    at = sigmas[todo] + 2  # "Σ" is 2 bytes
    while todo.size:
        inside = at < end[todo]
        todo, at = todo[inside], at[inside]
        cp = code_points(data, at)
        stop = ~ignorable[cp]
        final[todo[stop]] = ~cased[cp[stop]]
        lead = data[at[~stop]]
        todo, at = todo[~stop], at[~stop] + 1 + (lead >= 0xC0) + (lead >= 0xE0) + (lead >= 0xF0)
    return sigmas[final]


def lower_like_python(texts: pa.Array, offsets: np.ndarray, data: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """``(lowered, rows)``: ``texts`` lowered by Arrow exactly as ``str.lower`` lowers each row, but for
    ``rows`` (sorted int64 row indices), whose lowering Arrow cannot give: lower those in Python.

    ``offsets`` (int64, from 0) and ``data`` are the value buffers of ``texts``; a row of ``lowered``
    may differ in bytes from its text's length (``İ`` -> ``i̇``).
    """
    leads = np.flatnonzero(data >= 0xC0)  # ASCII lowers alike in both
    leads = leads[_suspect_prefixes()[data[leads].astype(np.int32) << 8 | data[leads + 1]]]
    cps = code_points(data, leads)
    differ = np.flatnonzero(lowering_differences()[cps])
    if not differ.size:
        return pc.utf8_lower(texts), np.zeros(0, np.int64)
    sigma = cps[differ] == _SIGMA
    if sigma.any():
        final = _final_sigmas(offsets, data, leads[differ[sigma]])
        if final.size:
            patched = data.copy()
            patched[final[:, None] + np.arange(2)] = _FINAL_SIGMA_UTF8
            texts = pa.LargeStringArray.from_buffers(len(texts), pa.py_buffer(offsets), pa.py_buffer(patched))
    replace = _lowered_first()
    fixable = np.isin(cps[differ], list(replace))
    for cp in np.unique(cps[differ[fixable]]).tolist():
        texts = pc.replace_substring(texts, chr(cp), replace[cp])
    rows = np.unique(np.searchsorted(offsets, leads[differ[~fixable & ~sigma]], side="right") - 1)
    return pc.utf8_lower(texts), rows
