"""Differential matrix: models over every option that changes values, saved in every form users
have, run through the real pipeline in every mode, each value compared with what the framework
that BUILT the model computes (tf_keras for Keras 2 artifacts, Keras 3 otherwise) to 1e-5.

Options (factors): recurrent cell (LSTM, GRU reset_after=True, GRU reset_after=False, SimpleRNN),
activations (defaults, hard_sigmoid as recurrent_activation, hard_sigmoid as activation), the
layer's direction (forward, go_backwards, Bidirectional with each merge_mode), use_bias, masked or
not, padding and truncating (the corpus has documents longer than maxlen), a single layer or a
stack with the middle layer as target, the saved form (tf_keras .h5, tf_keras SavedModel folder,
Keras 3 .keras, Keras 3 .h5) and the mode. All pairs of option values are covered by a pairwise
design built greedily from a fixed seed (``pairwise_cases``); every case is one model, one saved
form, one Beam job.

Weights are random (not trained), biases included, so that every gate and every activation is
exercised over a wide range of inputs. ``sequence`` vectors are compared in document order: vector
k is the layer's output right after it read token k (see ``helpers.in_document_order``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import pytest

from tests import helpers

TOL = 1e-5  # same computation order as the building framework (the Keras 2 hard_sigmoid formula included)
MAXLEN = 8
SEED = 20261124

FACTORS: dict[str, tuple] = {
    "cell": ("LSTM", "GRU", "GRU_reset_before", "SimpleRNN"),
    "act": ("default", "hard_sigmoid_recurrent", "hard_sigmoid_activation"),
    "direction": ("forward", "go_backwards", "bi_concat", "bi_sum", "bi_mul", "bi_ave", "bi_None"),
    "use_bias": (True, False),
    "masked": (True, False),
    "padding": ("pre", "post"),
    "truncating": ("pre", "post"),
    "stacked": (False, True),
    "form": ("tf_keras_h5", "tf_keras_savedmodel", "keras3_keras", "keras3_h5"),
    "mode": ("final", "sequence", "states"),
}

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def pairwise_cases(seed: int = SEED, candidates: int = 60) -> list[dict]:
    """A small set of option combinations covering every pair of values of any two factors."""
    names = list(FACTORS)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2) for va in FACTORS[a] for vb in FACTORS[b]}
    rng = random.Random(seed)
    cases = []
    while uncovered:
        a, va, b, vb = min(uncovered, key=repr)  # the next pair to cover, chosen deterministically
        best, best_gain = None, -1
        for _ in range(candidates):
            case = {n: rng.choice(FACTORS[n]) for n in names}
            case[a], case[b] = va, vb
            gain = sum((x, case[x], y, case[y]) in uncovered for x, y in itertools.combinations(names, 2))
            if gain > best_gain:
                best, best_gain = case, gain
        cases.append(best)
        uncovered -= {(x, best[x], y, best[y]) for x, y in itertools.combinations(names, 2)}
    return cases


CASES = pairwise_cases()


def case_id(case: dict) -> str:
    return "-".join([case["form"], case["cell"], case["act"], case["direction"],
                     "bias" if case["use_bias"] else "nobias", "masked" if case["masked"] else "unmasked",
                     f"pad{case['padding']}", f"trunc{case['truncating']}",
                     "stacked" if case["stacked"] else "single", case["mode"]])


@dataclass
class Corpus:
    path: str
    tokenizer_path: str
    docs: list
    sequences: list
    vocab: int


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Every document non-empty, known words only; lengths 1 to 15 tokens around maxlen 8."""
    folder = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(SEED)
    lengths = [1, 2, 3, 5, 7, 8, 9, 11, 13, 15, 4, 12]
    docs = [(f"m{i:02d}", " ".join(rng.choice(WORDS, size=n))) for i, n in enumerate(lengths)]
    tok = helpers.legacy_tokenizer(WORDS)
    tok_path = folder / "tokenizer.json"
    tok_path.write_text(tok.to_json(), encoding="utf-8")
    sequences = tok.texts_to_sequences([t for _, t in docs])
    assert all(sequences)
    return Corpus(helpers.write_jsonl(folder / "corpus.jsonl", docs), str(tok_path), docs, sequences,
                  len(tok.word_index) + 1)


def _recurrent(K, case: dict, return_sequences: bool, name: str):
    activation, recurrent_activation = "tanh", "sigmoid"
    if case["act"] == "hard_sigmoid_activation" or (case["act"] == "hard_sigmoid_recurrent"
                                                     and case["cell"] == "SimpleRNN"):
        activation = "hard_sigmoid"
    elif case["act"] == "hard_sigmoid_recurrent":
        recurrent_activation = "hard_sigmoid"
    common = dict(units=3, activation=activation, use_bias=case["use_bias"], return_sequences=return_sequences,
                  go_backwards=case["direction"] == "go_backwards", name=name)
    if case["cell"] == "SimpleRNN":
        return K.layers.SimpleRNN(**common)
    if case["cell"] == "LSTM":
        return K.layers.LSTM(recurrent_activation=recurrent_activation, **common)
    return K.layers.GRU(recurrent_activation=recurrent_activation, reset_after=case["cell"] == "GRU", **common)


def build(K, case: dict, vocab: int, seed: int):
    """The case's model, built with ``K`` (tf_keras or keras), with random weights and biases."""
    inp = K.Input((MAXLEN,), dtype="int32")
    x = K.layers.Embedding(vocab, 4, mask_zero=case["masked"])(inp)
    if case["stacked"]:
        x = K.layers.LSTM(4, return_sequences=True, name="below")(x)
    layer = _recurrent(K, case, case["stacked"], "target")
    if case["direction"].startswith("bi_"):
        merge = case["direction"][3:]
        layer = K.layers.Bidirectional(_recurrent(K, case, case["stacked"], "inner"),
                                       merge_mode=None if merge == "None" else merge, name="target")
    x = layer(x)
    if isinstance(x, (list, tuple)):
        x = K.layers.Concatenate()(list(x))
    if case["stacked"]:
        x = K.layers.GRU(2, name="above")(x)
    model = K.Model(inp, K.layers.Dense(1, name="head")(x))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.7, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def save(model, case: dict, folder) -> str:
    if case["form"] == "tf_keras_savedmodel":
        path = folder / "model_savedmodel"
        model.save(str(path), save_format="tf")
    elif case["form"] == "keras3_keras":
        path = folder / "model.keras"
        model.save(path)
    else:
        path = folder / "model.h5"
        model.save(str(path))
    return str(path)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_pipeline_matches_building_framework(case, corpus, tmp_path):
    keras2 = case["form"].startswith("tf_keras")
    if keras2:
        import tf_keras as K
    else:
        import keras as K
    K.utils.set_random_seed(SEED)
    model = build(K, case, corpus.vocab, seed=CASES.index(case))
    model_path = save(model, case, tmp_path)
    out = tmp_path / "out"
    helpers.run_job(["--input", corpus.path, "--model", model_path, "--tokenizer", corpus.tokenizer_path,
                     "--output", out, "--layer", "target", "--mode", case["mode"], "--maxlen", MAXLEN,
                     "--padding", case["padding"], "--truncating", case["truncating"]])
    table = helpers.read_output(str(out))

    import keras

    padded = keras.utils.pad_sequences(corpus.sequences, maxlen=MAXLEN, padding=case["padding"],
                                       truncating=case["truncating"])
    reference = helpers.tf_keras_reference if keras2 else helpers.reference
    want = reference(model, "target", case["mode"], padded)
    if case["mode"] != "states" and case["direction"] == "bi_None":  # written as forward, backward concatenated
        want = [np.concatenate(want, axis=-1)]
    if case["mode"] == "sequence":
        want = [helpers.in_document_order(want[0], case["direction"] == "go_backwards")]

    rows = {doc_id: i for i, doc_id in enumerate(table.column("doc_id").to_pylist())}
    assert sorted(rows) == sorted(d for d, _ in corpus.docs) and table.num_rows == len(corpus.docs)
    names = table.column_names[2:]
    assert len(names) == len(want)
    for j, (doc_id, _) in enumerate(corpus.docs):
        row = rows[doc_id]
        n = min(len(corpus.sequences[j]), MAXLEN)
        assert table.column("num_tokens")[row].as_py() == n
        for k, name in enumerate(names):
            got = np.asarray(table.column(name)[row].as_py(), dtype=np.float32)
            expected = want[k][j]
            if case["mode"] == "sequence":
                expected = expected[helpers.real_positions(padded[j], n, case["padding"], MAXLEN)]
            assert got.shape == expected.shape, f"{doc_id} {name}"
            np.testing.assert_allclose(got, expected, atol=TOL, rtol=0, err_msg=f"{doc_id} {name}")


def test_pairwise_design_covers_every_pair_of_option_values():
    names = list(FACTORS)
    for a, b in itertools.combinations(names, 2):
        seen = {(c[a], c[b]) for c in CASES}
        assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)
