"""Fixtures shared by the job-level tests."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class SmallJob:
    model: str
    tokenizer: str
    folder: str
    vocab: int

    def argv(self, inputs, output, *extra) -> list[str]:
        return ["--input", *map(str, inputs if isinstance(inputs, list) else [inputs]), "--model", self.model,
                "--tokenizer", self.tokenizer, "--output", str(output), "--padding", "pre", "--truncating", "pre",
                *map(str, extra)]


@pytest.fixture(scope="session")
def small_job(tmp_path_factory) -> SmallJob:
    """A masked Embedding -> LSTM -> Dense model and its tokenizer, saved; untrained weights."""
    import keras

    from beam_pipeline.demo import fit_tokenizer_json, sample_corpus

    folder = tmp_path_factory.mktemp("small_job")
    texts = [d["text"] for d in sample_corpus(200)]
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(fit_tokenizer_json(texts, num_words=100, oov_token="<unk>"))
    keras.utils.set_random_seed(11)
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(100, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(6, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(x))
    path = folder / "model.keras"
    model.save(path)
    return SmallJob(str(path), str(tokenizer), str(folder), 100)
