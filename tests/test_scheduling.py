"""A job a scheduler can trust (issue 21): ``--max_dead_letters N`` or ``P%`` fails a run with too
much bad input (exit status 3, no summary, dead letters kept), a run within it commits and warns;
``--engine auto`` decides at a fixed point of a worker's batches, never after a span of wall clock."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import dead_letters
from tests import helpers

REPO = Path(__file__).resolve().parent.parent
GOOD, BAD = 40, 10  # records of the corpus: 10 of 50 (20%) are dead letters


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """50 JSONL records: 40 documents, 8 lines that are not JSON and 2 records without a text field."""
    from beam_pipeline.demo import sample_corpus

    path = tmp_path_factory.mktemp("scheduling") / "corpus.jsonl"
    lines = [json.dumps({"id": d["id"], "text": d["text"]}) for d in sample_corpus(GOOD, seed=21)]
    lines += [f'{{"id": "bad{i}", "text": ' for i in range(8)]
    lines += [json.dumps({"id": f"notext{i}"}) for i in range(2)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cli(*args) -> subprocess.CompletedProcess:
    """``python -m beam_pipeline`` in a subprocess, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "beam_pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)


def _error_records(prefix: Path, kind: str = "errors") -> list[dict]:
    """The dead letters at ``prefix``: ``errors`` of a committed run, ``rejected-errors`` of a rejected one."""
    files = sorted(prefix.parent.glob(f"{prefix.name}-{kind}-*.jsonl"))
    assert files, f"no dead-letter files at {prefix}"
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.mark.parametrize("value, read, most", [("0", 50, 0), ("10", 50, 10), ("20%", 50, 10), ("19.9%", 50, 9),
                                               ("0.5%", 2000, 10), ("100%", 7, 7), ("0.29%", 10000, 29)])
def test_limit_is_a_count_or_a_share_of_the_records_read(value, read, most):
    assert dead_letters.allowed(dead_letters.parse_limit(value), read) == most


@pytest.mark.parametrize("value", ["-1", "ten", "101%", "5%%", "%", "1e3", ""])
def test_a_wrong_limit_is_refused_saying_what_is_expected(value):
    with pytest.raises(argparse.ArgumentTypeError, match="count of dead letters"):
        dead_letters.parse_limit(value)


def test_message_names_count_limit_top_reasons_and_the_files():
    with pytest.raises(dead_letters.DeadLetterLimitExceeded) as caught:
        dead_letters.check("1%", 1000, {"invalid_json": 7, "missing_text": 5, "empty": 1, "other": 1},
                           ["out-errors-00000-of-00001.jsonl"])
    message = str(caught.value)
    assert message.startswith(dead_letters.MARKER)
    assert "14 of 1000 records" in message and "--max_dead_letters 1% (10 allowed)" in message
    assert "top reasons: invalid_json 7, missing_text 5, empty 1." in message  # 3 reasons, ties by name
    assert "out-errors-00000-of-00001.jsonl" in message
    wrapped = RuntimeError(f"Pipeline failed in state FAILED: Traceback ...\n  {message} [while running 'Finalize']\n")
    assert dead_letters.find_message(wrapped) == message
    assert dead_letters.find_message(RuntimeError("worker lost")) is None


def test_over_a_count_the_run_exits_3_writes_no_summary_and_keeps_the_dead_letters(small_job, corpus, tmp_path):
    prefix = tmp_path / "out"
    done = _cli(*small_job.argv(corpus, prefix, "--max_dead_letters", "9"))
    assert done.returncode == 3, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{BAD} of {GOOD + BAD} records read were dead-lettered (20.00%)" in errors[0]
    assert "over --max_dead_letters 9 (9 allowed)" in errors[0]
    assert "top reasons: invalid_json 8, missing_text 2" in errors[0], errors[0]
    assert not (tmp_path / "out-summary.json").exists() and (tmp_path / "out-rejected.json").exists()
    assert len(_error_records(prefix, "rejected-errors")) == BAD
    assert not list(tmp_path.glob("out-errors-*")), "moved out of the sinks' reach"


def test_within_a_share_the_run_commits_and_warns_once_with_the_count(small_job, corpus, tmp_path):
    prefix = tmp_path / "out"
    done = _cli(*small_job.argv(corpus, prefix, "--max_dead_letters", "20%"))
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {BAD} of {GOOD + BAD} records dead-lettered (within --max_dead_letters 20%)"]
    summary = json.loads((tmp_path / "out-summary.json").read_text())
    assert summary["dead_lettered"] == BAD and summary["max_dead_letters"] == "20%"
    assert helpers.read_output(str(prefix)).num_rows == GOOD


def test_over_a_share_the_run_is_rejected_and_a_rerun_within_the_limit_commits(small_job, corpus, tmp_path):
    """In process on the DirectRunner: ``run`` raises DeadLetterLimitExceeded, PREFIX-rejected.json
    says why; the next run at the prefix, within its limit, removes it and commits."""
    prefix = tmp_path / "out"
    with pytest.raises(dead_letters.DeadLetterLimitExceeded, match=r"over --max_dead_letters 19\.9% \(9 allowed\)"):
        helpers.run_job(small_job.argv(corpus, prefix, "--max_dead_letters", "19.9%"))
    assert not (tmp_path / "out-summary.json").exists()
    assert len(_error_records(prefix, "rejected-errors")) == BAD
    rejected = json.loads((tmp_path / "out-rejected.json").read_text())
    assert rejected["error_files"] == [str(tmp_path / "out-rejected-errors-00000-of-00001.jsonl")]
    assert rejected["rejected"].startswith(dead_letters.MARKER)
    assert (rejected["read"], rejected["dead_lettered"], rejected["max_dead_letters"]) == (GOOD + BAD, BAD, "19.9%")
    assert rejected["errors_by_reason"] == {"invalid_json": 8, "missing_text": 2}
    summary = helpers.run_job(small_job.argv(corpus, prefix, "--max_dead_letters", "20%"))
    assert summary["dead_lettered"] == BAD and (tmp_path / "out-summary.json").exists()
    assert not (tmp_path / "out-rejected.json").exists() and not list(tmp_path.glob("out-rejected-errors-*"))
    assert len(_error_records(prefix)) == BAD


def test_within_a_count_the_summary_is_written(small_job, corpus, tmp_path):
    summary = helpers.run_job(small_job.argv(corpus, tmp_path / "out", "--max_dead_letters", str(BAD)))
    assert summary["accounted"] and summary["dead_lettered"] == BAD and summary["embedded"] == GOOD
    assert (tmp_path / "out-summary.json").exists()


@pytest.fixture(scope="module")
def lstm_model():
    """Embedding(mask_zero) -> LSTM -> Dense, random weights: every engine can run it."""
    import keras

    keras.utils.set_random_seed(21)
    inp = keras.Input((12,), dtype="int32")
    x = keras.layers.Embedding(40, 6, mask_zero=True)(inp)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(5, name="target")(x)))


@pytest.mark.parametrize("seconds_per_tick", [1e-6, 1000.0])
def test_auto_calibrates_on_the_first_full_batch_after_a_fixed_number_of_documents(
        lstm_model, monkeypatch, seconds_per_tick):
    """The batch that calibrates follows from the batches alone: after CALIBRATE_AFTER_DOCS (64)
    documents on the Keras graph, a partial batch (20 < 32 rows) still runs there, the next full one
    calibrates, whether the clock says the graph's batches took microseconds or hours."""
    import itertools
    from types import SimpleNamespace

    from beam_pipeline import inference

    ticks = itertools.count()
    monkeypatch.setattr(inference, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * seconds_per_tick))
    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", 64)
    rng = np.random.default_rng(5)
    embedder = inference.Embedder(lstm_model, "target", "final", 12, jit=False)
    engines_seen = []
    for rows in (32, 32, 20, 20, 32, 32):
        embedder.embed([rng.integers(1, 40, size=int(n)).tolist() for n in rng.integers(1, 13, size=rows)])
        engines_seen.append(embedder.engine)
    assert engines_seen[:4] == [None] * 4, "the Keras graph runs 64 documents and then the partial batches"
    assert engines_seen[4] is not None and engines_seen[5] is engines_seen[4], embedder.engine_report
    assert set(embedder.engine_report) >= {"keras", "onnx"}


def test_engine_keras_writes_the_same_bits_twice(small_job, corpus, tmp_path):
    """README "Reproducibility": with --engine keras, the same job on the same machine writes the same
    bits (the same batches run on the same Keras graph), not merely values within 1e-5."""
    tables = []
    for run in ("a", "b"):
        helpers.run_job(small_job.argv(corpus, tmp_path / run / "out", "--engine", "keras"))
        table = helpers.read_output(str(tmp_path / run / "out")).sort_by("doc_id")
        tables.append(table)
    ids = tables[0].column("doc_id").to_pylist()
    assert ids == tables[1].column("doc_id").to_pylist() and len(ids) == GOOD
    first, second = (np.stack(t.column("vector").to_numpy(zero_copy_only=False)) for t in tables)
    assert first.dtype == np.float32 and first.tobytes() == second.tobytes()


def _reference(model, seqs):
    import keras

    return helpers.reference(model, "target", "final", keras.utils.pad_sequences(seqs, 12, padding="post"))[0]


def test_auto_tries_the_quick_engines_first_then_every_engine(lstm_model, monkeypatch):
    """Two fixed points (here 64 and 160 documents): the Keras graph runs the first 64 documents; the next
    full batch tries only the quick engines (ONNX), which then runs; after 160 documents the next full
    batch tries every engine. A partial batch never calibrates. Every batch's values are Keras' own."""
    from beam_pipeline import inference

    monkeypatch.setattr(inference, "CALIBRATE_QUICK_AFTER_DOCS", 64)
    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", 160)
    rng = np.random.default_rng(8)
    embedder = inference.Embedder(lstm_model, "target", "final", 12, jit=False)
    names, reports = [], []
    for rows in (32, 32, 20, 32, 32, 32, 20, 32, 32):
        seqs = [rng.integers(1, 40, size=int(n)).tolist() for n in rng.integers(1, 13, size=rows)]
        got = embedder.embed(seqs).columns["vector"]
        np.testing.assert_allclose(got, _reference(lstm_model, seqs), atol=1e-5, rtol=0)
        names.append(embedder.engine.name if embedder.engine is not None else None)
        reports.append(set(embedder.engine_report))
    assert names[:3] == [None] * 3, "64 documents on the graph, then a partial batch there too"
    assert names[3] == "onnx" and reports[3] == {"keras", "onnx"}, (names, reports)
    assert names[4:7] == ["onnx"] * 3 and reports[6] == {"keras", "onnx"}, "160 documents before the full step"
    assert reports[7] == {"keras", "onnx", "xla", "table"}, reports
    assert names[8] == names[7]


def test_a_quick_engine_dropped_on_longer_documents_stays_dropped(lstm_model, monkeypatch):
    """A quick engine that differs from the graph on longer documents than it was checked on is dropped
    for the rest of the run: the full calibration does not bring it back."""
    from beam_pipeline import engines, inference

    monkeypatch.setattr(inference, "CALIBRATE_QUICK_AFTER_DOCS", 32)
    monkeypatch.setattr(inference, "CALIBRATE_AFTER_DOCS", 96)
    rng = np.random.default_rng(9)
    embedder = inference.Embedder(lstm_model, "target", "final", 12, jit=False)
    short = [rng.integers(1, 40, size=3).tolist() for _ in range(32)]
    embedder.embed(short)
    embedder.embed(short)
    assert embedder.engine.name == "onnx"
    real = engines.registry()["onnx"].run
    monkeypatch.setattr(engines.registry()["onnx"], "run", lambda self, batch: [o + 1e-3 for o in real(self, batch)])
    for _ in range(4):
        seqs = [rng.integers(1, 40, size=12).tolist() for _ in range(32)]
        got = embedder.embed(seqs).columns["vector"]
        np.testing.assert_allclose(got, _reference(lstm_model, seqs), atol=1e-5, rtol=0)
        assert embedder.engine.name == "keras", embedder.engine_report
    assert "documents of 12 tokens" in embedder.engine_report["onnx"]["dropped"]
