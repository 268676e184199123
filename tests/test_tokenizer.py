"""Tests for beam_pipeline.keras_tokenizer.

Parity tests compare against the real legacy tokenizer
(``tf_keras.preprocessing.text.Tokenizer``) and ``keras.utils.pad_sequences``;
they are skipped when those packages are missing.  The remaining tests need
only numpy and hypothesis.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline.keras_tokenizer import (
    DEFAULT_FILTERS,
    KerasTokenizer,
    pad_sequences,
    truncate,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK brown fox; the dog didn't care!!! (really)",
    "e-mail me at someone@example.com -- or call 555-1234",
    "tabs\tand\nnewlines\r\nand carriage returns",
    "Café crème brûlée, naïve façade — résumé à la carte",
    "Съешь же ещё этих мягких французских булок, да выпей чаю",
    "Привет мир! Привет снова, МИР.",
    "مرحبا بالعالم، هذا نص عربي للاختبار",
    "I love pizza 🍕🍕 and cats 🐱 so much ❤️",
    "我爱自然语言处理。自然语言很有趣！",
    "the the the dog dog fox",
    "non\u00a0breaking\u00a0space and ideographic\u3000space",
    "İstanbul ǅemal ΣΊΣΥΦΟΣ straße",
    "x|y|z pipes|and spaces | mixed",
]

UNSEEN = [
    "The dog jumps!!! over THE fox?",
    "Unknown words: zebra, quokka & axolotl.",
    "café CRÈME naive facade résumé",
    "привет МИР, пока мир",
    "مرحبا يا عالم",
    "🍕 pizza🍕 🐱🐱 ❤️❤️",
    "我爱语言。你爱什么？",
    "carriage\rreturn\r\nline and\u00a0nbsp",
    "x|y|q  pipes||and",
    "ISTANBUL İstanbul straße STRASSE ς Σ",
    "",
    " ",
    "   \t\n  ",
    "!!!...,,,",
    "\u3000\u00a0",
]


@pytest.fixture(scope="session")
def keras_pad_sequences():
    keras = pytest.importorskip("keras")
    return keras.utils.pad_sequences


def fit_pair(legacy_cls, corpus=CORPUS, **kwargs):
    """Fit the legacy tokenizer and load its JSON with ours."""
    legacy = legacy_cls(**kwargs)
    legacy.fit_on_texts(corpus)
    return legacy, KerasTokenizer.from_json(legacy.to_json())


def assert_parity(legacy, ours, texts=UNSEEN + CORPUS):
    expected = legacy.texts_to_sequences(texts)
    assert ours.texts_to_sequences(texts) == expected
    assert [ours.text_to_sequence(t) for t in texts] == expected


# --------------------------------------------------------------------------
# Parity with the legacy tokenizer on hand-picked configurations
# --------------------------------------------------------------------------


def test_default_filters_remove_punctuation_like_legacy(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls)
    assert ours.filters == DEFAULT_FILTERS
    assert_parity(legacy, ours)
    # The apostrophe is not a default filter, so "didn't" stays one word.
    assert ours.text_to_sequence("didn't") == [ours.word_index["didn't"]]
    assert ours.text_to_sequence("(dog)...dog!") == [ours.word_index["dog"]] * 2


@pytest.mark.parametrize(
    "filters",
    ["", "!?", "aeiou", "]^-\\[", ".,;:!?()'\"—、。！？", "Éé€\u00a0"],
    ids=[
        "none",
        "bang-question",
        "vowels",
        "regex-specials",
        "mixed-unicode",
        "non-ascii",
    ],
)
def test_custom_filters_match_legacy(legacy_tokenizer_cls, filters):
    legacy, ours = fit_pair(legacy_tokenizer_cls, filters=filters)
    assert_parity(legacy, ours)


@pytest.mark.parametrize("lower", [True, False])
def test_lower_setting_matches_legacy(legacy_tokenizer_cls, lower):
    legacy, ours = fit_pair(legacy_tokenizer_cls, lower=lower)
    assert_parity(legacy, ours)


def test_lower_false_keeps_case_distinct(legacy_tokenizer_cls):
    _, ours = fit_pair(legacy_tokenizer_cls, lower=False)
    assert ours.text_to_sequence("The") != ours.text_to_sequence("the")
    assert ours.text_to_sequence("The") == [ours.word_index["The"]]


def test_lower_true_folds_case(legacy_tokenizer_cls):
    _, ours = fit_pair(legacy_tokenizer_cls)
    assert ours.text_to_sequence("THE The the") == [ours.word_index["the"]] * 3
    assert "The" not in ours.word_index


@pytest.mark.parametrize(
    "text",
    [
        "café crème brûlée naïve",
        "привет мир ещё булок",
        "مرحبا بالعالم عربي",
        "🍕🍕 pizza 🐱 ❤️",
        "我爱自然语言处理",
        "İstanbul ΣΊΣΥΦΟΣ straße ǅemal",
    ],
    ids=["accents", "cyrillic", "arabic", "emoji", "chinese", "special-casing"],
)
@pytest.mark.parametrize("char_level", [False, True], ids=["word", "char"])
def test_unicode_text_matches_legacy(legacy_tokenizer_cls, text, char_level):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls, char_level=char_level, oov_token="<OOV>"
    )
    assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0]


def test_chinese_char_level_gives_one_id_per_character(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, char_level=True)
    text = "我爱语言。"
    assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0]
    assert ours.text_to_sequence(text) == [ours.word_index[c] for c in text]


def test_non_ascii_words_are_found_in_vocabulary(legacy_tokenizer_cls):
    _, ours = fit_pair(legacy_tokenizer_cls)
    for word in ("café", "привет", "мир", "مرحبا", "🍕🍕"):
        assert ours.text_to_sequence(word) == [ours.word_index[word]]


@pytest.mark.parametrize("num_words", [0, 1, 2, 5, 20, 10_000])
def test_num_words_without_oov_drops_rare_words_like_legacy(
    legacy_tokenizer_cls, num_words
):
    legacy, ours = fit_pair(legacy_tokenizer_cls, num_words=num_words)
    assert_parity(legacy, ours)
    for seq in ours.texts_to_sequences(UNSEEN):
        assert all(not num_words or i < num_words for i in seq)


@pytest.mark.parametrize("num_words", [0, 1, 2, 5, 20, 10_000])
def test_num_words_with_oov_maps_rare_words_to_oov_like_legacy(
    legacy_tokenizer_cls, num_words
):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls, num_words=num_words, oov_token="<OOV>"
    )
    assert_parity(legacy, ours)
    oov = ours.word_index["<OOV>"]
    assert oov == 1
    rare = max(ours.word_index, key=ours.word_index.get)
    if num_words and ours.word_index[rare] >= num_words:
        assert ours.text_to_sequence(rare) == [oov]


def test_num_words_zero_means_unlimited(legacy_tokenizer_cls):
    _, unlimited = fit_pair(legacy_tokenizer_cls)
    _, zero = fit_pair(legacy_tokenizer_cls, num_words=0)
    assert zero.texts_to_sequences(UNSEEN) == unlimited.texts_to_sequences(UNSEEN)


def test_num_words_one_keeps_no_word(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, num_words=1)
    assert (
        ours.text_to_sequence("the dog")
        == []
        == legacy.texts_to_sequences(["the dog"])[0]
    )
    legacy, ours = fit_pair(legacy_tokenizer_cls, num_words=1, oov_token="<OOV>")
    assert ours.text_to_sequence("the dog zebra") == [1, 1, 1]


def test_oov_token_alone_maps_unknown_words_to_oov_id(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, oov_token="[UNK]")
    assert_parity(legacy, ours)
    the = ours.word_index["the"]
    assert ours.text_to_sequence("the zebra the") == [the, 1, the]


def test_oov_token_text_filtered_before_lookup(legacy_tokenizer_cls):
    # "<OOV>" in the text is filtered to "oov", an unknown word -> OOV id anyway.
    legacy, ours = fit_pair(legacy_tokenizer_cls, oov_token="<OOV>")
    assert (
        ours.text_to_sequence("<OOV>") == legacy.texts_to_sequences(["<OOV>"])[0] == [1]
    )


def test_oov_token_that_is_also_a_corpus_word_takes_the_later_id(legacy_tokenizer_cls):
    # Legacy quirk: word_index = dict(zip([oov] + sorted_words, ...)), so a
    # corpus word equal to the OOV token overwrites id 1.
    legacy, ours = fit_pair(legacy_tokenizer_cls, oov_token="dog", num_words=3)
    assert ours.word_index["dog"] != 1
    assert 1 not in ours.word_index.values()
    assert_parity(legacy, ours)
    assert ours.max_id() == ours.word_index["dog"]


def test_char_level_ignores_filters_and_split_but_lowercases(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, char_level=True, split="|")
    assert_parity(legacy, ours)
    text = "A b!|"
    assert ours.text_to_sequence(text) == [ours.word_index[c] for c in "a b!|"]


@pytest.mark.parametrize("oov_token", [None, "<OOV>"])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("num_words", [None, 10])
def test_char_level_matches_legacy(legacy_tokenizer_cls, oov_token, lower, num_words):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls,
        char_level=True,
        oov_token=oov_token,
        lower=lower,
        num_words=num_words,
    )
    assert_parity(legacy, ours)


@pytest.mark.parametrize("split", ["|", ",", "·", "<>", "\\", "\t", "a"])
def test_custom_split_matches_legacy(legacy_tokenizer_cls, split):
    legacy, ours = fit_pair(legacy_tokenizer_cls, split=split, oov_token="<OOV>")
    assert_parity(legacy, ours)


def test_split_char_is_the_only_separator(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, split="|", filters="")
    assert ours.text_to_sequence("x|y") == [ours.word_index["x"], ours.word_index["y"]]
    # With split="|", spaces are part of words.
    assert ours.text_to_sequence("x y") == legacy.texts_to_sequences(["x y"])[0] == []


def test_whitespace_other_than_split_is_not_a_separator(legacy_tokenizer_cls):
    # Default split is " " and default filters only cover \t and \n, so
    # "\r", NBSP and ideographic spaces stay inside words (legacy quirk).
    legacy, ours = fit_pair(legacy_tokenizer_cls)
    for text in ("the\rdog", "the\u00a0dog", "the\u3000dog", "the\x0bdog"):
        assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0] == []
    assert ours.text_to_sequence("the\tdog\nfox") == [
        ours.word_index["the"],
        ours.word_index["dog"],
        ours.word_index["fox"],
    ]


@pytest.mark.parametrize("filters", [DEFAULT_FILTERS, "", "!.\x1c\r", "\t"])
@pytest.mark.parametrize("oov_token", [None, "<unk>"])
def test_ascii_texts_with_every_ascii_whitespace_match_legacy(legacy_tokenizer_cls, filters, oov_token):
    """ASCII texts take a fast path (bytes filter table, str.split()) unless the filtered text holds
    whitespace str.split() would split on but legacy does not: random texts over every ASCII
    whitespace and control character, words of the vocabulary among them, equal legacy's ids."""
    rng = np.random.default_rng(len(filters) + (oov_token is None))
    alphabet = list("ab cd!.,-AB") + ["  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f",
                                      "\x00", "\x7f"]
    corpus = ["ab cd a b", "ab\rcd c\x1cd", "d\x0bd ab", "AB.cd"]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 25)))) for _ in range(3000)]
    legacy, ours = fit_pair(legacy_tokenizer_cls, corpus=corpus, filters=filters, oov_token=oov_token)
    assert_parity(legacy, ours, texts)


def test_filters_apply_after_lowercasing(legacy_tokenizer_cls):
    # Legacy quirk: lower() runs before filtering, so an upper-case filter
    # character never matches when lower=True.
    legacy, ours = fit_pair(legacy_tokenizer_cls, filters="T")
    assert ours.text_to_sequence("The") == legacy.texts_to_sequences(["The"])[0]
    assert ours.text_to_sequence("The") == [ours.word_index["the"]]
    legacy, ours = fit_pair(legacy_tokenizer_cls, filters="T", lower=False)
    assert ours.text_to_sequence("The") == legacy.texts_to_sequences(["The"])[0]


@pytest.mark.parametrize("oov_token", [None, "<OOV>"])
@pytest.mark.parametrize("char_level", [False, True])
def test_empty_and_whitespace_only_texts_match_legacy(
    legacy_tokenizer_cls, oov_token, char_level
):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls, oov_token=oov_token, char_level=char_level
    )
    texts = ["", " ", "  ", "\t", "\n\n", " \t \n ", "\r", "\u00a0"]
    assert_parity(legacy, ours, texts)


def test_empty_and_whitespace_only_texts_give_empty_sequence_in_word_mode(
    legacy_tokenizer_cls,
):
    _, ours = fit_pair(legacy_tokenizer_cls, oov_token="<OOV>")
    for text in ("", " ", "   ", "\t\n", "!!! ..."):
        assert ours.text_to_sequence(text) == []


def test_texts_to_sequences_accepts_any_iterable(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls)
    assert ours.texts_to_sequences(t for t in UNSEEN) == legacy.texts_to_sequences(
        UNSEEN
    )
    assert ours.texts_to_sequences([]) == []


def test_unfitted_legacy_tokenizer_json_emits_nothing(legacy_tokenizer_cls):
    ours = KerasTokenizer.from_json(legacy_tokenizer_cls().to_json())
    assert ours.vocab_size == 0
    assert ours.max_id() == 0
    assert ours.texts_to_sequences(["anything at all"]) == [[]]


def test_from_json_reads_all_config_fields(legacy_tokenizer_cls):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls,
        num_words=7,
        filters="!?",
        lower=False,
        split="|",
        char_level=False,
        oov_token="<U>",
    )
    assert (ours.num_words, ours.filters, ours.lower, ours.split) == (
        7,
        "!?",
        False,
        "|",
    )
    assert (ours.char_level, ours.oov_token) == (False, "<U>")
    assert ours.word_index == legacy.word_index


def test_from_json_accepts_to_json_kwargs_output(legacy_tokenizer_cls):
    legacy = legacy_tokenizer_cls(oov_token="<OOV>")
    legacy.fit_on_texts(CORPUS)
    ours = KerasTokenizer.from_json(legacy.to_json(indent=2, ensure_ascii=False))
    assert_parity(legacy, ours)


# --------------------------------------------------------------------------
# max_id / vocab_size / pickling
# --------------------------------------------------------------------------


@pytest.mark.parametrize("oov_token", [None, "<OOV>"])
@pytest.mark.parametrize("num_words", [None, 0, 1, 2, 10, 10_000])
def test_max_id_is_largest_emittable_id(legacy_tokenizer_cls, oov_token, num_words):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls, num_words=num_words, oov_token=oov_token
    )
    n = len(legacy.word_index)
    if num_words:
        expected = min(n, num_words - 1)
        if oov_token is not None:
            expected = max(expected, 1)
    else:
        expected = n
    assert ours.max_id() == expected
    # Every id emitted on the training corpus is <= max_id and max_id is reached.
    emitted = [i for seq in ours.texts_to_sequences(CORPUS + UNSEEN) for i in seq]
    assert max(emitted, default=0) == ours.max_id()


def test_vocab_size_counts_word_index_entries(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, num_words=3, oov_token="<OOV>")
    assert ours.vocab_size == len(legacy.word_index)
    assert ours.vocab_size > ours.max_id()


def test_tokenizer_survives_pickling(legacy_tokenizer_cls):
    legacy, ours = fit_pair(legacy_tokenizer_cls, oov_token="<OOV>", num_words=20)
    clone = pickle.loads(pickle.dumps(ours))
    assert clone.texts_to_sequences(UNSEEN) == legacy.texts_to_sequences(UNSEEN)


def test_direct_construction_without_tensorflow():
    tok = KerasTokenizer(
        {"<OOV>": 1, "hello": 2, "world": 3}, num_words=3, oov_token="<OOV>"
    )
    assert tok.text_to_sequence("Hello, WORLD! bye") == [2, 1, 1]
    assert tok.max_id() == 2
    assert tok.vocab_size == 3


def test_empty_string_key_in_word_index_is_never_emitted():
    tok = KerasTokenizer({"": 1, "a": 2})
    assert tok.text_to_sequence("  a  ") == [2]
    assert tok.max_id() == 2


# --------------------------------------------------------------------------
# from_json / constructor validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "not json at all",
        "[]",
        "null",
        json.dumps({"class_name": "Sequential", "config": {}}),
        json.dumps({"config": {"word_index": "{}"}}),
        json.dumps({"class_name": "Tokenizer"}),
        json.dumps({"class_name": "Tokenizer", "config": "oops"}),
        json.dumps({"class_name": "Tokenizer", "config": {"num_words": 3}}),
        json.dumps({"class_name": "Tokenizer", "config": {"word_index": "{bad"}}),
        json.dumps({"class_name": "Tokenizer", "config": {"word_index": "[1, 2]"}}),
        json.dumps({"class_name": "Tokenizer", "config": {"word_index": '{"a": "1"}'}}),
        json.dumps(
            {"class_name": "Tokenizer", "config": {"word_index": '{"a": true}'}}
        ),
        json.dumps(
            {
                "class_name": "Tokenizer",
                "config": {"word_index": '{"a": 1}', "num_words": "5"},
            }
        ),
        json.dumps(
            {
                "class_name": "Tokenizer",
                "config": {"word_index": '{"a": 1}', "oov_token": "<U>"},
            }
        ),
        json.dumps(
            {
                "class_name": "Tokenizer",
                "config": {"word_index": '{"a": 1}', "split": ""},
            }
        ),
    ],
    ids=[
        "not-json",
        "array",
        "null",
        "wrong-class",
        "no-class",
        "no-config",
        "config-not-object",
        "no-word-index",
        "word-index-bad-json",
        "word-index-not-object",
        "id-not-int",
        "id-bool",
        "num-words-str",
        "oov-not-in-vocab",
        "empty-split",
    ],
)
def test_from_json_rejects_non_tokenizer_json_with_value_error(payload):
    with pytest.raises(ValueError):
        KerasTokenizer.from_json(payload)


def test_from_json_rejects_wrong_class_name_with_clear_message():
    with pytest.raises(ValueError, match="Tokenizer"):
        KerasTokenizer.from_json(json.dumps({"class_name": "Other", "config": {}}))


def test_from_json_honours_legacy_nb_words_key():
    payload = {
        "class_name": "Tokenizer",
        "config": {"word_index": json.dumps({"a": 1, "b": 2, "c": 3}), "nb_words": 3},
    }
    tok = KerasTokenizer.from_json(json.dumps(payload))
    assert tok.num_words == 3
    assert tok.text_to_sequence("a b c") == [1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"word_index": [("a", 1)]},
        {"word_index": {"a": 1.0}},
        {"word_index": {1: 1}},
        {"word_index": {}, "num_words": 2.0},
        {"word_index": {}, "lower": None},
        {"word_index": {}, "split": None},
        {"word_index": {}, "filters": None},
        {"word_index": {}, "oov_token": 1},
    ],
    ids=[
        "list",
        "float-id",
        "int-key",
        "float-num-words",
        "lower-none",
        "split-none",
        "filters-none",
        "oov-int",
    ],
)
def test_constructor_rejects_wrongly_typed_settings_with_type_error(kwargs):
    with pytest.raises(TypeError):
        KerasTokenizer(**kwargs)


def test_constructor_rejects_oov_token_missing_from_word_index():
    with pytest.raises(ValueError, match="oov_token"):
        KerasTokenizer({"a": 1}, oov_token="<OOV>")


def test_filters_given_as_list_of_characters_act_like_their_concatenation():
    as_list = KerasTokenizer({"a": 1, "b": 2}, filters=["!", "?"])
    assert as_list.filters == "!?"
    assert as_list.text_to_sequence("a!b?a") == [1, 2, 1]


def test_empty_split_is_allowed_in_char_level():
    tok = KerasTokenizer({"a": 1}, split="", char_level=True)
    assert tok.text_to_sequence("aba") == [1, 1]


# --------------------------------------------------------------------------
# pad_sequences / truncate
# --------------------------------------------------------------------------

PAD_SEQUENCES = [
    [],
    [1],
    [1, 2, 3],
    [4, 5, 6, 7, 8, 9, 10],
    [11, 12],
    list(range(1, 21)),
]


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [1, 2, 3, 5, 7, 25])
@pytest.mark.parametrize("value", [0, -1, 99])
def test_pad_sequences_matches_keras_for_all_modes(
    keras_pad_sequences, padding, truncating, maxlen, value
):
    expected = keras_pad_sequences(
        PAD_SEQUENCES,
        maxlen=maxlen,
        padding=padding,
        truncating=truncating,
        value=value,
    )
    got = pad_sequences(
        PAD_SEQUENCES,
        maxlen=maxlen,
        padding=padding,
        truncating=truncating,
        value=value,
    )
    assert got.dtype == np.int32 == expected.dtype
    assert got.shape == (len(PAD_SEQUENCES), maxlen)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_pad_sequences_handles_only_empty_and_no_sequences(
    keras_pad_sequences, padding, truncating
):
    for seqs in ([], [[]], [[], []]):
        expected = keras_pad_sequences(
            seqs, maxlen=4, padding=padding, truncating=truncating
        )
        got = pad_sequences(seqs, maxlen=4, padding=padding, truncating=truncating)
        assert got.shape == expected.shape == (len(seqs), 4)
        np.testing.assert_array_equal(got, expected)


def test_pad_sequences_accepts_numpy_rows_and_generators(keras_pad_sequences):
    rows = [np.arange(1, n + 1) for n in (0, 2, 6)]
    expected = keras_pad_sequences(rows, maxlen=4)
    np.testing.assert_array_equal(pad_sequences(iter(rows), maxlen=4), expected)


def test_pad_sequences_maxlen_zero_gives_empty_rows():
    for truncating in ("pre", "post"):
        out = pad_sequences([[1, 2], []], maxlen=0, truncating=truncating)
        assert out.shape == (2, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "middle"},
        {"truncating": "end"},
        {"padding": "PRE"},
        {"maxlen": -1},
    ],
)
def test_pad_sequences_rejects_invalid_arguments_with_value_error(kwargs):
    args = {"maxlen": 3, **kwargs}
    with pytest.raises(ValueError):
        pad_sequences([[1, 2]], **args)


@pytest.mark.parametrize("maxlen", [2.5, None, "3", True])
def test_pad_sequences_rejects_non_int_maxlen_with_type_error(maxlen):
    with pytest.raises(TypeError):
        pad_sequences([[1, 2]], maxlen=maxlen)


def test_pad_sequences_validates_modes_even_when_all_sequences_are_empty():
    with pytest.raises(ValueError, match="padding"):
        pad_sequences([[]], maxlen=3, padding="both")


@given(
    seqs=st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=12), max_size=8),
    maxlen=st.integers(1, 15),
    padding=st.sampled_from(["pre", "post"]),
    truncating=st.sampled_from(["pre", "post"]),
    value=st.integers(-(2**31), 2**31 - 1),
)
@PROPERTY_SETTINGS
def test_pad_sequences_property_matches_keras(
    keras_pad_sequences, seqs, maxlen, padding, truncating, value
):
    expected = keras_pad_sequences(
        seqs, maxlen=maxlen, padding=padding, truncating=truncating, value=value
    )
    got = pad_sequences(
        seqs, maxlen=maxlen, padding=padding, truncating=truncating, value=value
    )
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_truncate_pre_keeps_last_ids():
    assert truncate([1, 2, 3, 4, 5], 2, "pre") == [4, 5]


def test_truncate_post_keeps_first_ids():
    assert truncate([1, 2, 3, 4, 5], 2, "post") == [1, 2]


def test_truncate_short_sequence_returns_equal_copy():
    seq = [1, 2]
    for truncating in ("pre", "post"):
        out = truncate(seq, 5, truncating)
        assert out == seq and out is not seq


def test_truncate_maxlen_zero_returns_empty_list():
    assert truncate([1, 2, 3], 0, "pre") == []
    assert truncate([1, 2, 3], 0, "post") == []


def test_truncate_rejects_invalid_mode_and_negative_maxlen():
    with pytest.raises(ValueError, match="truncating"):
        truncate([1, 2], 1, "middle")
    with pytest.raises(ValueError, match="maxlen"):
        truncate([1, 2], -1, "pre")


@given(
    seq=st.lists(st.integers(1, 1000), max_size=30),
    maxlen=st.integers(1, 20),
    truncating=st.sampled_from(["pre", "post"]),
)
@PROPERTY_SETTINGS
def test_truncate_then_post_pad_equals_pad_sequences(seq, maxlen, truncating):
    kept = truncate(seq, maxlen, truncating)
    assert len(kept) == min(len(seq), maxlen)
    row = pad_sequences([seq], maxlen=maxlen, padding="post", truncating=truncating)[0]
    assert row[: len(kept)].tolist() == kept
    assert not row[len(kept) :].any()


# --------------------------------------------------------------------------
# Property tests: robustness and parity on arbitrary text
# --------------------------------------------------------------------------

CONFIGS = [
    {},
    {"oov_token": "<OOV>"},
    {"num_words": 15, "oov_token": "<OOV>"},
    {"num_words": 15},
    {"lower": False, "filters": "!?.,"},
    {"split": "|", "oov_token": "<OOV>"},
    {"char_level": True, "oov_token": "<OOV>"},
    {"char_level": True, "num_words": 30},
]
CONFIG_IDS = [
    "default",
    "oov",
    "num_words-oov",
    "num_words",
    "case-custom-filters",
    "pipe-split",
    "char-oov",
    "char-num_words",
]


@pytest.fixture(scope="session")
def fitted_pairs(legacy_tokenizer_cls):
    return [fit_pair(legacy_tokenizer_cls, **cfg) for cfg in CONFIGS]


@pytest.fixture(scope="session")
def ours_only():
    """Tokenizers built without TensorFlow, for robustness tests."""
    words = {
        "<OOV>": 1,
        "the": 2,
        "dog": 3,
        "café": 4,
        "мир": 5,
        "🍕": 6,
        "我": 7,
        "a": 8,
    }
    return [
        KerasTokenizer(words),
        KerasTokenizer(words, oov_token="<OOV>", num_words=5),
        KerasTokenizer(words, char_level=True, oov_token="<OOV>"),
        KerasTokenizer(words, split="|", filters="", lower=False),
        KerasTokenizer(words, split="<>", filters="]^\\-" + DEFAULT_FILTERS),
    ]


def _check_ids(tok: KerasTokenizer, seq: list[int]) -> None:
    assert isinstance(seq, list)
    top = tok.max_id()
    assert all(type(i) is int and 1 <= i <= top for i in seq)


@given(text=st.text())
@PROPERTY_SETTINGS
def test_text_to_sequence_never_raises_on_arbitrary_unicode(ours_only, text):
    for tok in ours_only:
        _check_ids(tok, tok.text_to_sequence(text))


@given(data=st.binary(), errors=st.sampled_from(["replace", "surrogateescape"]))
@PROPERTY_SETTINGS
def test_text_to_sequence_never_raises_on_decoded_arbitrary_bytes(
    ours_only, data, errors
):
    text = data.decode("utf-8", errors=errors)
    for tok in ours_only:
        _check_ids(tok, tok.text_to_sequence(text))


@given(text=st.text())
@PROPERTY_SETTINGS
def test_text_to_sequence_matches_legacy_on_arbitrary_unicode(fitted_pairs, text):
    for legacy, ours in fitted_pairs:
        assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0]


@given(data=st.binary(), errors=st.sampled_from(["replace", "surrogateescape"]))
@PROPERTY_SETTINGS
def test_text_to_sequence_matches_legacy_on_decoded_arbitrary_bytes(
    fitted_pairs, data, errors
):
    text = data.decode("utf-8", errors=errors)
    for legacy, ours in fitted_pairs:
        assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0]


_PIECES = sorted(
    {w for t in CORPUS for w in t.split()} | set(DEFAULT_FILTERS) | {" ", "\r"}
)


@given(pieces=st.lists(st.sampled_from(_PIECES) | st.text(max_size=3), max_size=25))
@PROPERTY_SETTINGS
def test_text_to_sequence_matches_legacy_on_vocabulary_heavy_text(fitted_pairs, pieces):
    text = "".join(pieces)
    for legacy, ours in fitted_pairs:
        assert ours.text_to_sequence(text) == legacy.texts_to_sequences([text])[0]


@given(
    corpus=st.lists(st.text(max_size=40), min_size=1, max_size=8),
    probes=st.lists(st.text(max_size=40), max_size=5),
    num_words=st.none() | st.integers(0, 12),
    oov_token=st.none() | st.sampled_from(["<OOV>", "a", "[UNK]"]),
    lower=st.booleans(),
    char_level=st.booleans(),
    filters=st.sampled_from([DEFAULT_FILTERS, "", "a", "]^-\\", "éЖ ,"])
    | st.text(max_size=5),
    split=st.sampled_from([" ", "|", "ab", "é"]),
)
@PROPERTY_SETTINGS
def test_any_fitted_config_round_trips_through_json_with_parity(
    legacy_tokenizer_cls,
    corpus,
    probes,
    num_words,
    oov_token,
    lower,
    char_level,
    filters,
    split,
):
    legacy, ours = fit_pair(
        legacy_tokenizer_cls,
        corpus=corpus,
        num_words=num_words,
        oov_token=oov_token,
        lower=lower,
        char_level=char_level,
        filters=filters,
        split=split,
    )
    texts = corpus + probes
    assert ours.texts_to_sequences(texts) == legacy.texts_to_sequences(texts)
    emitted = [i for seq in ours.texts_to_sequences(texts) for i in seq]
    assert all(i <= ours.max_id() for i in emitted)
