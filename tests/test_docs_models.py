"""docs/weights-and-nested.md's examples, run as written: the builder module and the job command of
"Weights-only checkpoints" (one job run, its vectors against Keras: the nested encoder's own output
with the weights Keras loads), and the inspect command of "Nested models" (its listing line)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import keras
import numpy as np

from beam_pipeline import inspect as inspect_cli
from tests import helpers

DOC = Path(__file__).resolve().parents[1] / "docs" / "weights-and-nested.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _command(block: str, program: str) -> tuple[list[str], list[str]]:
    """(argv after ``python -m PROGRAM``, the ``#`` comment lines) of a shell block."""
    lines = block.replace("\\\n", " ").splitlines()
    command = next(line for line in lines if line.startswith(f"python -m {program} "))
    return shlex.split(command)[3:], [line[2:] for line in lines if line.startswith("# ")]


def test_weights_only_and_nested_examples_as_written(tmp_path, monkeypatch):
    from beam_pipeline.demo import fit_tokenizer_json
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    builder = next(b for b in _blocks("python") if b.startswith("# my_model.py"))
    (tmp_path / "my_model.py").write_text(builder, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_model

    keras.utils.set_random_seed(4)
    my_model.build().save_weights("siamese.weights.h5")  # stands for the user's trained weights
    docs = helpers.corpus(30, seed=9)
    Path("tokenizer.json").write_text(fit_tokenizer_json([t for _, t in docs], num_words=100), encoding="utf-8")
    helpers.write_jsonl(tmp_path / "corpus.jsonl", docs)

    job, inspect_commands = [_command(b, p) for b, p in ((_blocks("sh")[0], "beam_pipeline"),
                                                           (_blocks("sh")[1], "beam_pipeline.inspect"))]
    summary = helpers.run_job(job[0])
    assert summary["accounted"] and summary["embedded"] == len(docs)
    table = helpers.read_output("out/emb").sort_by("doc_id")
    golden = my_model.build()
    golden.load_weights("siamese.weights.h5")  # Keras 3 loads the weights itself
    tok = KerasTokenizer.from_json(Path("tokenizer.json").read_text(encoding="utf-8"))
    seqs = tok.texts_to_sequences([t for _, t in sorted(docs)])
    padded = keras.utils.pad_sequences(seqs, maxlen=20, padding="pre", truncating="pre")
    want = golden.get_layer("encoder").predict(padded, verbose=0)
    np.testing.assert_allclose(np.stack(table["vector"].to_numpy(zero_copy_only=False)), want, atol=1e-5, rtol=0)

    argv, expected = inspect_commands
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert inspect_cli.main(argv) == 0
    assert expected and all(line in printed.getvalue() for line in expected)
