"""Tests for beam_pipeline.batch_tokenizer: the batch path row by row against the per-document tokenizer.

``KerasTokenizer.text_to_sequence`` is the exact slow path the batch path replaces (itself compared
with tf_keras' legacy ``Tokenizer`` in test_tokenizer.py); one test here also anchors the batch path
directly in tf_keras.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline import python_lower, word_table
from beam_pipeline.batch_tokenizer import BatchTokenizer, truncate
from beam_pipeline.keras_tokenizer import DEFAULT_FILTERS, KerasTokenizer
from beam_pipeline.keras_tokenizer import truncate as truncate_one
from beam_pipeline.python_lower import lowering_differences

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words of the vocabulary: 8-byte boundaries (8, 9, 16, 17 bytes, two 16-byte words equal in their
# first 8 bytes), non-ASCII words, words holding a split or filter string of some settings below.
VOCAB = [
    "<unk>", "the", "a", "b", "ab", "ba", "abab", "x", "k", "é", "straße", "ß", "i̇stanbul", "istanbul", "σ", "ς",
    "σίσυφος", "σίσυφοσ", "中", "🍕", "·", "a·b", "café", "A", "THE", "abcdefgh", "abcdefghi", "longwordlongword",
    "longwordlongwore", "longwordlongwordx", "ⱥ", "\u0307", "ꞔ", "x\u00a0y", "tab\tin", ", ", "\\",
]  # fmt: skip
# What texts are made of: vocabulary words and their capitals, every ASCII control and whitespace
# character, the default filters, NBSP and other Unicode spaces, multi-byte characters, and the
# characters Arrow and Python lower differently (İ, Σ, letters newer than Python 3.11's Unicode).
PIECES = (
    VOCAB
    + ["The", "ABAB", "STRASSE", "Straße", "İstanbul", "ΣΊΣΥΦΟΣ", "Σ", "CAFÉ", "ABCDEFGHI", "LongWordLongWord"]
    + [chr(c) for c in range(32)]
    + [" ", " ", " ", "\x7f", "'", "\u00a0", "\u3000", "\u2028", "\x85", "\u200b"]
    + list(DEFAULT_FILTERS)
    + ["İ", "\u212a", "\u212b", "\u2126", "\u1e9e", "\u023a", "É", "Ä", "ж", "Ж", "中", "🍕", "·", "\u0307"]
    + ["\ua7cb", "\U00010d50", "\U00016ea0", "\u1c89"]  # newer than Python 3.11's Unicode 14
    + ["\u00ad", "\u0345", "\u02b0", "ǅ", "ª", "ΑΣ", "ΑΣ'", "ς", "Σ"]  # around a sigma: ignorable, cased
)
CHARS = sorted({c for p in PIECES for c in p})
CHAR_VOCAB = ["<unk>"] + [c for c in CHARS if ord(c) % 3] + ["ab", "i̇"]

texts_strategy = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)
batches = st.lists(texts_strategy, min_size=1, max_size=24)


def word_index(words: list[str]) -> dict[str, int]:
    return {w: i for i, w in enumerate(dict.fromkeys(words), start=1)}


def rows(offsets: np.ndarray, tokens: np.ndarray) -> list[list[int]]:
    assert offsets.dtype == np.int64 and tokens.dtype == np.int32
    assert offsets[0] == 0 and offsets[-1] == tokens.size and np.all(np.diff(offsets) >= 0)
    return [tokens[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def assert_rows_match(tokenizer: KerasTokenizer, texts: list[str], array: pa.Array | None = None) -> BatchTokenizer:
    batch = BatchTokenizer(tokenizer)
    offsets, tokens = batch.encode(pa.array(texts, pa.string()) if array is None else array)
    assert len(offsets) == len(texts) + 1
    assert rows(offsets, tokens) == [tokenizer.text_to_sequence(t) for t in texts]
    return batch


WORD_SETTINGS = {
    "default": {},
    "oov": {"oov_token": "<unk>"},
    "num_words": {"num_words": 6},
    "num_words_oov": {"num_words": 6, "oov_token": "<unk>"},
    "ascii_filters": {"filters": "ab!'\x00", "oov_token": "<unk>"},
    "non_ascii_filters": {"filters": "é·σΣ\u0307\u00a0,A", "oov_token": "<unk>"},
    "no_filters": {"filters": ""},
    "tab_split": {"split": "\t", "oov_token": "<unk>"},
    "upper_split": {"split": "X"},
    "two_char_split": {"split": "ab", "oov_token": "<unk>"},
    "comma_space_split": {"split": ", "},
    "overlapping_split": {"split": "aa", "filters": "b!"},
    "non_ascii_split": {"split": "·", "oov_token": "<unk>"},
    "backslash_split": {"split": "\\", "filters": ",.\\"},
    "no_lower": {"lower": False, "oov_token": "<unk>"},
    "no_lower_non_ascii_split": {"lower": False, "split": "·", "filters": "é,"},
}


@pytest.mark.parametrize("config", WORD_SETTINGS.values(), ids=WORD_SETTINGS.keys())
@PROPERTY_SETTINGS
@given(texts=batches)
def test_word_level_matches_text_to_sequence_row_by_row(config, texts):
    assert_rows_match(KerasTokenizer(word_index(VOCAB), **config), texts)


CHAR_SETTINGS = {
    "char": {},
    "char_oov": {"oov_token": "<unk>"},
    "char_num_words_oov": {"num_words": 20, "oov_token": "<unk>"},
    "char_no_lower": {"lower": False},
}


@pytest.mark.parametrize("config", CHAR_SETTINGS.values(), ids=CHAR_SETTINGS.keys())
@PROPERTY_SETTINGS
@given(texts=batches)
def test_char_level_matches_text_to_sequence_row_by_row(config, texts):
    assert_rows_match(KerasTokenizer(word_index(CHAR_VOCAB), char_level=True, **config), texts)


@pytest.mark.parametrize("config", [{}, {"split": "·"}, {"char_level": True}], ids=["byte", "pattern", "char"])
@settings(max_examples=50, deadline=None)
@given(texts=batches, data=st.data())
def test_sliced_and_large_string_arrays(config, texts, data):
    tokenizer = KerasTokenizer(word_index(VOCAB + CHAR_VOCAB), oov_token="<unk>", **config)
    start = data.draw(st.integers(0, len(texts)))
    stop = data.draw(st.integers(start, len(texts)))
    padded = pa.array(["x", "y z", "x"] + texts + ["y"], pa.string())
    assert_rows_match(tokenizer, texts[start:stop], padded.slice(3 + start, stop - start))
    assert_rows_match(tokenizer, texts, pa.array(texts, pa.large_string()))


@pytest.fixture(scope="module")
def large_vocabulary() -> list[str]:
    """60k words, most sharing their first 8 bytes with many others: the hash table's probing and byte checks."""
    suffixes = ["".join(p) for n in range(9) for p in itertools.product("abcé", repeat=n)][:15000]
    return [stem + suffix for suffix in suffixes for stem in ("prefixed", "abcdefgh", "ééééé", "x")]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), oov=st.booleans())
def test_large_vocabulary_with_shared_prefixes(large_vocabulary, seed, oov):
    words = large_vocabulary
    tokenizer = KerasTokenizer(word_index(["<unk>"] + words), oov_token="<unk>" if oov else None, num_words=40000)
    misses = [w + "a" for w in words[:300]] + [w[:-1] for w in words[:300]] + [w.upper() for w in words[-300:]]
    picks = np.random.default_rng(seed).choice(words[:5000] + words[-5000:] + misses, size=4000).tolist()
    texts = [" ".join(picks[i : i + 40]) for i in range(0, len(picks), 40)]
    assert_rows_match(tokenizer, texts)


def test_lookup_is_exact_when_every_hash_collides(monkeypatch, large_vocabulary):
    # with a hash that is always 0 every word probes one chain: only the byte checks tell words apart
    monkeypatch.setattr(word_table, "_mix", lambda x: x & np.uint64(0))
    words = large_vocabulary[:200] + large_vocabulary[-200:]
    tokenizer = KerasTokenizer(word_index(["<unk>"] + words), oov_token="<unk>")
    misses = [w + "a" for w in words[::7]] + [w[:-1] + "b" for w in words[::5]]
    picks = np.random.default_rng(0).choice(words + misses, size=600).tolist()
    assert_rows_match(tokenizer, [" ".join(picks[i : i + 30]) for i in range(0, len(picks), 30)])


def test_rows_arrow_cannot_lower_fall_back_and_still_match():
    tokenizer = KerasTokenizer(word_index(VOCAB), oov_token="<unk>")
    texts = ["ΣΊΣΥΦΟΣ Σ σ", "plain text", "İstanbul straße", "café CRÈME жЖ 中", "\ua7cb ok", "", "\U00010d50"]
    batch = assert_rows_match(tokenizer, texts)
    # letters of Unicode 16: Arrow lowers them, Python 3.11 does not know them (an environment whose
    # Python and pyarrow agree on them has nothing to fall back)
    newer = lowering_differences()[0xA7CB] and lowering_differences()[0x10D50]
    assert batch.last_fallback.tolist() == ([4, 6] if newer else [])
    batch.encode(pa.array(["the", "\ua7cb"]))
    assert batch.last_fallback.tolist() == ([1] if newer else [])
    assert batch.fallback_rows == (3 if newer else 0)


SIGMA_TEXTS = [
    "ΟΔΥΣΣΕΥΣ ΣΊΣΥΦΟΣ", "Σ", "ΑΣ", "ΑΣ'", "Α'Σ", "ΑΣ.Β", "1Σ", "ΑΣ\u0307", "ΑΣ\u0307Β", "ΑΣ ΑΣ", "ΣΑ", "aΣ1",
    "ǅΣ", "\u02b0Σ", "ªΣ", "Α\u00adΣ", "ΣΣ", "ΑΣΣ", "İΣ", "Σİ", "Α\u0345Σ", "ΑΣ\u0345", "Α", "Σ\u0307", "\u0307Σ",
]  # fmt: skip


@pytest.mark.parametrize("split", [" ", "·"])
def test_final_sigma_is_lowered_as_python_does_without_falling_back(split):
    # every word as Python lowers it is in the vocabulary: a sigma lowered the other way is another id
    vocabulary = ["<unk>"] + [w for t in SIGMA_TEXTS for w in t.lower().split()]
    tokenizer = KerasTokenizer(word_index(vocabulary), oov_token="<unk>", filters="", split=split)
    texts = SIGMA_TEXTS + [split.join(SIGMA_TEXTS), "".join(SIGMA_TEXTS)]
    batch = assert_rows_match(tokenizer, texts)
    assert batch.last_fallback.size == 0


def test_sigma_context_tables_are_cpythons():
    ignorable, cased = python_lower._sigma_context()
    assert ignorable[[ord("'"), ord("."), ord(":"), 0x0307, 0x00AD, 0x0345, 0x02B0]].all()
    assert not ignorable[[ord("A"), ord("a"), ord("1"), ord(" "), 0x3A3, 0x3C2, 0x01C5]].any()
    assert cased[[ord("A"), ord("a"), 0x3A3, 0x3C2, 0x01C5, 0x00AA]].all()
    assert not cased[[ord("1"), ord(" "), ord("中")]].any()


def test_ordinary_text_does_not_fall_back():
    tokenizer = KerasTokenizer(word_index(VOCAB), oov_token="<unk>")
    texts = ["The café, CRÈME brûlée.", "Straße über Ärger", "Привет, МИР!", "我爱自然语言处理。", "σίσυφος ζωή"]
    texts.append("\u212a \u212b \u2126")  # Kelvin, Angstrom and Ohm signs lower alike in both
    batch = assert_rows_match(tokenizer, texts)
    assert batch.last_fallback.size == 0


def test_without_lowering_nothing_falls_back():
    tokenizer = KerasTokenizer(word_index(VOCAB), lower=False)
    batch = assert_rows_match(tokenizer, ["İstanbul ΣΊΣΥΦΟΣ", "\ua7cb"])
    assert batch.fallback_rows == 0


def test_lowering_differences_are_where_arrow_and_python_disagree():
    table = lowering_differences()
    assert table.shape == (0x110000,) and table[0x130] and table[0x3A3]
    assert not table[ord("A")] and not table[0x212A]  # the Kelvin sign lowers to "k" in both
    flagged = [chr(c) for c in np.flatnonzero(table) if c != 0x3A3]
    for char, arrow in zip(flagged, pc.utf8_lower(pa.array(flagged)).to_pylist()):
        assert arrow != char.lower()
    agree = [chr(c) for c in range(0x3000) if not table[c] and not 0xD800 <= c < 0xE000]
    assert pc.utf8_lower(pa.array(agree)).to_pylist() == [c.lower() for c in agree]


@pytest.mark.parametrize("config", [{}, {"split": "·"}, {"char_level": True}], ids=["byte", "pattern", "char"])
def test_empty_batch(config):
    offsets, tokens = BatchTokenizer(KerasTokenizer(word_index(VOCAB), **config)).encode(pa.array([], pa.string()))
    assert offsets.tolist() == [0] and offsets.dtype == np.int64 and tokens.size == 0 and tokens.dtype == np.int32


def test_bad_arrays_are_refused_with_what_to_do():
    batch = BatchTokenizer(KerasTokenizer(word_index(VOCAB)))
    with pytest.raises(ValueError, match="null"):
        batch.encode(pa.array(["a", None]))
    with pytest.raises(TypeError, match="combine_chunks"):
        batch.encode(pa.chunked_array([["a"]]))
    with pytest.raises(TypeError, match="string"):
        batch.encode(pa.array([1, 2]))


@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [0, 1, 2, 5, 100])
@settings(max_examples=30, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(1, 1000), max_size=12), max_size=20))
def test_truncate_matches_per_row_truncate(truncating, maxlen, seqs):
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    tokens = np.array([i for s in seqs for i in s], np.int32)
    cut_offsets, cut_tokens = truncate(offsets, tokens, maxlen, truncating)
    assert rows(cut_offsets, cut_tokens) == [truncate_one(s, maxlen, truncating) for s in seqs]


def test_truncate_refuses_bad_arguments():
    offsets, tokens = np.array([0, 2], np.int64), np.array([1, 2], np.int32)
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        truncate(offsets, tokens, 1, "middle")
    with pytest.raises(ValueError, match=">= 0"):
        truncate(offsets, tokens, -1, "pre")


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK brown fox; the dog didn't care!!! (really)",
    "e-mail me at someone@example.com -- or call 555-1234",
    "tabs\tand\nnewlines\r\nand carriage returns",
    "Café crème brûlée, naïve façade — résumé à la carte",
    "Съешь же ещё этих мягких французских булок, да выпей чаю",
    "I love pizza 🍕🍕 and cats 🐱 so much ❤️",
    "我爱自然语言处理。自然语言很有趣！",
    "non\u00a0breaking\u00a0space and ideographic\u3000space",
    "İstanbul ǅemal ΣΊΣΥΦΟΣ straße",
]
UNSEEN = [
    "The dog jumps!!! over THE fox?",
    "café CRÈME naive facade résumé",
    "ISTANBUL İstanbul straße STRASSE ς Σ",
    "carriage\rreturn\r\nline and\u00a0nbsp",
    "",
    "   \t\n  ",
]


@pytest.mark.parametrize(
    "config",
    [{"oov_token": "<unk>"}, {"num_words": 12, "oov_token": "<unk>"}, {"num_words": 12}, {"char_level": True},
     {"split": ", ", "filters": "!."}, {"lower": False}],
    ids=["oov", "num_words_oov", "num_words", "char_level", "split", "no_lower"],
)  # fmt: skip
def test_matches_tf_keras_legacy_tokenizer(legacy_tokenizer_cls, config):
    legacy = legacy_tokenizer_cls(**config)
    legacy.fit_on_texts(CORPUS)
    batch = BatchTokenizer(KerasTokenizer.from_json(legacy.to_json()))
    texts = CORPUS + UNSEEN
    assert rows(*batch.encode(pa.array(texts))) == legacy.texts_to_sequences(texts)
