"""Fixtures shared by the job-level tests."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def legacy_tokenizer_cls():
    """The legacy Keras Tokenizer as tf_keras keeps it: the reference our tokenizers are tested against."""
    text = pytest.importorskip("tf_keras.preprocessing.text")
    return text.Tokenizer


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """One real Flink 1.19 cluster on loopback for the whole session: a JobManager and two
    TaskManager processes with 4 slots each (tests/flink_cluster.py)."""
    from tests.flink_cluster import FlinkCluster, provision

    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        message = (f"the Flink tests need Java 17 and Maven ({', '.join(missing)} not found): they fetch Beam's "
                   "Flink job server with Maven and run a Flink cluster on the JVM")
        if os.environ.get("CI"):  # CI runs them always: a missing tool there is a failure, never a skip
            pytest.fail(message)
        pytest.skip(message + "; CI runs them")
    found = provision()
    cluster = FlinkCluster(found["FLINK_HOME"], found["FLINK_JOB_SERVER_JAR"], str(tmp_path_factory.mktemp("flink")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
