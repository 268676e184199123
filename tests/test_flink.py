"""The job on a real Flink 1.19 cluster on loopback (one JobManager, two TaskManager processes with
4 slots each; tests/flink_cluster.py), submitted through Beam's Flink job server with
``--runner=FlinkRunner --parallelism=4 --environment_type=PROCESS``: the same rows and dead letters as
the DirectRunner, a TaskManager killed mid-job, and the model loaded once per SDK worker process."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests import helpers

JOB_FLAGS = ["--padding", "post", "--truncating", "post", "--batch_size", "32"]
BAD_LINES = ['{"id": "broken", "text": ', '{"text": "no id here"}', '{"id": "blank", "text": "   "}',
             '{"id": "punct", "text": "!!! ... ???"}']
EXPECTED_DEAD = {"invalid_json", "missing_id"}
NO_TOKEN = {"blank", "punct"}  # documents with no token: rows with num_tokens = 0, not dead letters


def _rows(prefix: str) -> dict:
    table = helpers.read_output(prefix)
    ids = table.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)), "a document written twice"
    columns = [c for c in table.column_names if c not in ("doc_id", "num_tokens")]
    return {i: [table.column(c)[k].as_py() for c in columns] + [table.column("num_tokens")[k].as_py()]
            for k, i in enumerate(ids)}


def _dead_letters(prefix: str) -> list[tuple]:
    out = []
    for path in glob.glob(f"{prefix}-errors-*.jsonl"):
        with open(path, encoding="utf-8") as f:
            out += [(r["doc_id"], r["stage"], r["reason"]) for r in map(json.loads, f) if r]
    return sorted(out, key=repr)


def _assert_same_rows(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for doc_id, values in want.items():
        for g, w in zip(got[doc_id], values, strict=True):
            if isinstance(w, list):
                np.testing.assert_allclose(np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64),
                                           atol=1e-6, err_msg=doc_id)
            else:
                assert g == w, doc_id


@pytest.fixture(scope="module")
def flink_corpus(tmp_path_factory):
    """The demo corpus in 4 files (so the read splits over several subtasks) plus lines the job must
    dead-letter (broken JSON, a record without id) and documents with no token (a blank text, a text
    of punctuation only), which get rows with ``num_tokens = 0``."""
    from beam_pipeline.demo import sample_corpus

    folder = tmp_path_factory.mktemp("flink_corpus")
    docs = [(d["id"], d["text"]) for d in sample_corpus(400, seed=12)]
    paths = [helpers.write_jsonl(folder / f"part{k}.jsonl", docs[k::4]) for k in range(4)]
    with open(paths[0], "a", encoding="utf-8") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    return paths, docs


@pytest.fixture(scope="module")
def unmasked_model(small_job, tmp_path_factory):
    """Embedding (no mask) -> GRU -> Dense, untrained, with the small job's tokenizer."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(small_job.vocab, 8)(inp)
    x = keras.layers.GRU(5, name="gru")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    path = tmp_path_factory.mktemp("unmasked") / "model.keras"
    model.save(path)
    return str(path)


# Each output mode once, masked and unmasked models both (every mode x mask pair against Keras: the
# DirectRunner tests; here the question is whether the cluster writes what the DirectRunner writes).
@pytest.mark.parametrize("masked, mode", [(True, "final"), (True, "sequence"), (False, "states")],
                         ids=["masked-final", "masked-sequence", "unmasked-states"])
def test_flink_cluster_writes_the_direct_runners_rows_and_dead_letters(
        flink_cluster, small_job, unmasked_model, flink_corpus, tmp_path, mode, masked):
    paths, docs = flink_corpus
    model = small_job.model if masked else unmasked_model
    base = ["--input", *paths, "--model", model, "--tokenizer", small_job.tokenizer, "--mode", mode, *JOB_FLAGS]
    direct = helpers.run_job([*base, "--output", tmp_path / "direct" / "emb"])
    flink = helpers.run_job([*base, "--output", tmp_path / "flink" / "emb", *flink_cluster.runner_args()])

    rows = _rows(str(tmp_path / "flink" / "emb"))
    _assert_same_rows(rows, _rows(str(tmp_path / "direct" / "emb")))
    assert all(rows[i][-1] == 0 for i in NO_TOKEN), "documents with no token are rows with num_tokens = 0"
    assert _dead_letters(str(tmp_path / "flink" / "emb")) == _dead_letters(str(tmp_path / "direct" / "emb"))
    assert {r for _, _, r in _dead_letters(str(tmp_path / "flink" / "emb"))} == EXPECTED_DEAD
    for key in ("read", "embedded", "dead_lettered", "errors_by_reason", "accounted"):
        assert flink[key] == direct[key], key
    assert flink["accounted"] and flink["read"] == flink["embedded"] + flink["dead_lettered"]
    assert flink["embedded"] == len(docs) + len(NO_TOKEN)  # the malformed lines are the dead letters
    # it ran on the cluster: the latest finished job there read the corpus in parallel subtasks
    job = max(flink_cluster.jobs(), key=lambda j: j["start-time"])
    assert job["state"] == "FINISHED"
    embed = [s for s in flink_cluster.subtasks(job["jid"]) if "Embed" in s["vertex"]]
    assert len(embed) == 4 and len({s["taskmanager"] for s in embed}) == 2


@pytest.mark.parametrize("limit, status", [("1", 3), ("1%", 0)])
def test_flink_dead_letter_limit_fails_the_job_or_commits_it(flink_cluster, small_job, flink_corpus, tmp_path,
                                                             limit, status):
    """The corpus has 2 dead letters in 404 records. ``--max_dead_letters 1``: the job fails on the
    cluster, the command exits 3 naming count, limit and reasons, no summary, the dead letters are
    kept (as PREFIX-rejected-errors-*: Flink restarts the failed part of the job, whose sinks' pre-finalize
    then deletes what the first attempt finalized, and fails in the Parquet sink's finalize; the launcher
    knows the cause from PREFIX-rejected.json). ``1%`` (4 allowed): the job commits and the command warns
    once with the count."""
    paths, docs = flink_corpus
    read = len(docs) + len(BAD_LINES)
    prefix = tmp_path / "emb"
    argv = ["--input", *paths, "--model", small_job.model, "--tokenizer", small_job.tokenizer, "--output", prefix,
            *JOB_FLAGS, "--max_dead_letters", limit, *flink_cluster.runner_args()]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", *map(str, argv)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == status, done.stderr[-4000:]
    assert len(_dead_letters(str(prefix) + ("-rejected" if status == 3 else ""))) == 2
    job = max(flink_cluster.jobs(), key=lambda j: j["start-time"])
    if status == 3:
        assert job["state"] == "FAILED"
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"2 of {read} records read were dead-lettered" in errors[0], done.stderr[-4000:]
        assert "over --max_dead_letters 1 (1 allowed)" in errors[0]
        assert "top reasons: invalid_json 1, missing_id 1" in errors[0]
        assert not os.path.exists(f"{prefix}-summary.json")
        assert json.loads(open(f"{prefix}-rejected.json").read())["dead_lettered"] == 2
    else:
        assert job["state"] == "FINISHED"
        warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
        assert warnings == [f"warning: 2 of {read} records dead-lettered (within --max_dead_letters 1%)"]
        assert json.loads(open(f"{prefix}-summary.json").read())["dead_lettered"] == 2


def _log_sizes(cluster) -> dict[str, int]:
    return {p: os.path.getsize(p) for p in glob.glob(os.path.join(cluster.folder, "taskmanager*.log"))}


def test_flink_model_loaded_once_per_sdk_worker_process(flink_cluster, small_job, flink_corpus, tmp_path):
    """Each TaskManager starts its own SDK worker processes (PROCESS environment); their log lines
    reach the TaskManager's log through Beam's logging service. Every SDK worker process that embeds
    logs "model loaded in process PID" once, however many bundles and batches it runs."""
    paths, _ = flink_corpus
    before = _log_sizes(flink_cluster)
    summary = helpers.run_job(["--input", *paths, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
                               "--output", tmp_path / "emb", *JOB_FLAGS, *flink_cluster.runner_args()])
    loads: dict[str, list[int]] = {}
    for path in _log_sizes(flink_cluster):
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(before.get(path, 0))
            loads[path] = [int(m) for m in re.findall(r"model loaded in process (\d+)", f.read())]
    pids = [pid for found in loads.values() for pid in found]
    assert len(pids) == len(set(pids)), f"a process loaded the model twice: {loads}"
    assert sum(bool(found) for found in loads.values()) == 2, f"not both TaskManagers' workers embedded: {loads}"
    job = max(flink_cluster.jobs(), key=lambda j: j["start-time"])
    embed = [s for s in flink_cluster.subtasks(job["jid"]) if "Embed" in s["vertex"]]
    assert len([s for s in embed if s["records_in"] > 0]) >= 2, embed
    assert summary["metrics"]["batches"] > len(pids)
    assert summary["metrics"]["embedded"] == summary["embedded"]


def test_flink_taskmanager_killed_mid_job_is_restarted_and_every_document_written_once(
        flink_cluster, small_job, tmp_path):
    """The cluster's restart strategy is fixed-delay (3 attempts, 2 s): a TaskManager killed while the
    job embeds fails its tasks, Flink restarts them on the surviving TaskManager's slots, and the job
    completes with every document exactly once (Beam's file sinks finalize only the successful
    attempt's files). The killed TaskManager is replaced afterwards, for the tests that follow."""
    from beam_pipeline.demo import sample_corpus

    docs = [(f"k{i}", d["text"]) for i, d in enumerate(sample_corpus(6000, seed=8))]
    paths = [helpers.write_jsonl(tmp_path / f"big{k}.jsonl", docs[k::4]) for k in range(4)]
    out = tmp_path / "out" / "emb"
    before = {j["jid"] for j in flink_cluster.jobs()}
    killed: list[str] = []
    done = threading.Event()

    logs_before = _log_sizes(flink_cluster)

    def embedding_taskmanager() -> str | None:
        """The name of a live TaskManager one of whose SDK workers has loaded the model for this job (the
        embed stage's DoFn is set up there: its tasks are running), from the TaskManagers' logs. The
        logs, not the REST API's records_in: those metrics refresh every 10 s, and the job can end
        before a refresh shows anything."""
        for name, proc in flink_cluster.processes.items():
            path = os.path.join(flink_cluster.folder, f"{name}.log")
            if not name.startswith("taskmanager") or proc.poll() is not None or not os.path.exists(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(logs_before.get(path, 0))
                if "model loaded in process" in f.read():
                    return name
        return None

    def kill_an_embedding_taskmanager():
        """Kills the TaskManager of an SDK worker that has loaded the model, while the job runs."""
        while not done.is_set():
            name = embedding_taskmanager()
            if name is not None:
                with open(os.path.join(flink_cluster.folder, f"{name}.log"), encoding="utf-8", errors="replace") as f:
                    log = f.read()
                killed.extend(tm["id"] for tm in flink_cluster.taskmanagers() if tm["id"] in log)  # its REST id
                flink_cluster.kill(name)
                killed.append(name)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_an_embedding_taskmanager, daemon=True)
    watcher.start()
    try:
        summary = helpers.run_job(["--input", *paths, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
                                   "--output", out, "--mode", "sequence", *JOB_FLAGS, *flink_cluster.runner_args()])
    finally:
        done.set()
        watcher.join(30)
        if killed:  # a replacement, as a cluster manager would start, for the tests that follow
            flink_cluster.start_taskmanager()
            flink_cluster.wait_for_taskmanagers(2, excluding=tuple(killed))
    assert killed, "the job ended before a TaskManager could be killed"
    job = next(j for j in flink_cluster.jobs() if j["jid"] not in before)
    assert job["state"] == "FINISHED"
    failures = flink_cluster.rest(f"/jobs/{job['jid']}/exceptions")["exceptionHistory"]["entries"]
    assert failures, "the kill did not hit the job"
    ids = helpers.read_output(str(out)).column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)) == summary["embedded"] == len(docs)
    assert set(ids) == {d for d, _ in docs} and summary["accounted"]


BUILDER_MODULE = "flink_siamese_builder"


def test_flink_model_fn_module_shipped_with_setup_file(flink_cluster, small_job, flink_corpus, tmp_path, monkeypatch):
    """``--model_fn MODULE:FUNCTION`` with a weights-only file on the cluster, the module shipped as
    docs/weights-and-nested.md says: a package with a setup.py, ``--setup_file``; each SDK worker installs what
    Beam staged (tests/flink_sdk_worker.py, as Beam's boot does). The module is nowhere else on the
    workers' path. The rows equal the DirectRunner's (whose values tests/test_weights_only.py checks
    against Keras)."""
    import keras

    package = tmp_path / "builder_package"
    package.mkdir()
    (package / "setup.py").write_text(
        f'from setuptools import setup\n\nsetup(name="flink-siamese-builder", version="0.1", '
        f'py_modules=["{BUILDER_MODULE}"])\n', encoding="utf-8")
    (package / f"{BUILDER_MODULE}.py").write_text(f'''import keras


def build():
    encoder = keras.Sequential([keras.Input((32,), dtype="int32"), keras.layers.Embedding({small_job.vocab}, 8,
                                mask_zero=True), keras.layers.LSTM(6, name="lstm_1")], name="encoder")
    a, b = keras.Input((32,), dtype="int32"), keras.Input((32,), dtype="int32")
    return keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Subtract()([encoder(a), encoder(b)])))
''', encoding="utf-8")
    monkeypatch.syspath_prepend(str(package))  # the launcher imports it too: it checks the weights before the run
    builder = __import__(BUILDER_MODULE)
    keras.utils.set_random_seed(17)
    weights = tmp_path / "siamese.weights.h5"
    builder.build().save_weights(weights)
    paths, docs = flink_corpus
    base = ["--input", *paths, "--model", weights, "--model_fn", f"{BUILDER_MODULE}:build", "--tokenizer",
            small_job.tokenizer, "--layer", "encoder/lstm_1", "--mode", "states", *JOB_FLAGS]
    direct = helpers.run_job([*base, "--output", tmp_path / "direct" / "emb"])
    flink = helpers.run_job([*base, "--output", tmp_path / "flink" / "emb", "--setup_file", package / "setup.py",
                             *flink_cluster.runner_args()])
    _assert_same_rows(_rows(str(tmp_path / "flink" / "emb")), _rows(str(tmp_path / "direct" / "emb")))
    assert flink["accounted"] and flink["embedded"] == direct["embedded"] == len(docs) + len(NO_TOKEN)
    assert flink["embedding_job"]["model_origin"]["builder"] == f"{BUILDER_MODULE}:build"
    job = max(flink_cluster.jobs(), key=lambda j: j["start-time"])
    assert job["state"] == "FINISHED"


def test_flink_incremental_run_copies_unchanged_rows(flink_cluster, small_job, flink_corpus, tmp_path):
    """``--previous`` on the cluster (the lookup join, what a small previous output gets): the previous keys
    as a side input, the lookup and the row-group copies run as Flink tasks; the output equals the
    DirectRunner's full run over the day's corpus, and the
    unchanged rows are the previous output's, bit for bit."""
    paths, docs = flink_corpus
    base = ["--model", small_job.model, "--tokenizer", small_job.tokenizer, *JOB_FLAGS]
    helpers.run_job(["--input", *paths, *base, "--output", tmp_path / "day1" / "emb"])
    day2 = [(d, t + " again" if k < 7 else t) for k, (d, t) in enumerate(docs[12:])] + [("fresh", docs[0][1])]
    day2_path = helpers.write_jsonl(tmp_path / "day2.jsonl", day2)
    flink = helpers.run_job(["--input", day2_path, *base, "--output", tmp_path / "flink" / "emb",
                             "--previous", tmp_path / "day1" / "emb", *flink_cluster.runner_args()])
    helpers.run_job(["--input", day2_path, *base, "--output", tmp_path / "full" / "emb"])
    counts = (flink["reused"], flink["new"], flink["changed"], flink["removed"])
    assert counts == (len(day2) - 8, 1, 7, 12 + len(NO_TOKEN))
    assert flink["accounted"] and flink["written"] == len(day2)
    rows, before = _rows(str(tmp_path / "flink" / "emb")), _rows(str(tmp_path / "day1" / "emb"))
    _assert_same_rows(rows, _rows(str(tmp_path / "full" / "emb")))
    for doc_id, _ in day2[7:-1]:
        assert rows[doc_id] == before[doc_id], doc_id
    job = max(flink_cluster.jobs(), key=lambda j: j["start-time"])
    assert job["state"] == "FINISHED"
    vertices = {s["vertex"] for s in flink_cluster.subtasks(job["jid"])}
    for step in ("Reuse/UnionSeen", "Reuse/GroupByRowGroup"):  # the lookup's ids seen and the copies ran as Flink tasks
        assert any(step in v for v in vertices), (step, vertices)
