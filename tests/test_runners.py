"""Crashes, reruns and process boundaries: output appears only complete, reruns replace, and the
graph runs the same on the multi-process DirectRunner and the portable runner (Flink's path)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from beam_pipeline.demo import sample_corpus
from tests import helpers


def _shards(prefix) -> list[str]:
    return sorted(glob.glob(f"{prefix}-[0-9]*-of-[0-9]*.parquet"))


def _by_id(table) -> dict:
    return dict(zip(table.column("doc_id").to_pylist(), table.column("vector").to_pylist()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.sample_jsonl(tmp_path_factory.mktemp("runners"), 300, seed=5)


@pytest.fixture(scope="module")
def single_process(small_job, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "emb"
    helpers.run_job(small_job.argv(corpus[0], out))
    return _by_id(helpers.read_output(str(out)))


def test_rerun_replaces_shards_and_never_mixes_runs(small_job, corpus, single_process, tmp_path):
    out = tmp_path / "emb"
    helpers.run_job(small_job.argv(corpus[0], out, "--num_shards", "3"))
    assert len(_shards(out)) == 3
    helpers.run_job(small_job.argv(corpus[0], out, "--num_shards", "2"))
    assert [os.path.basename(p) for p in _shards(out)] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
    table = helpers.read_output(str(out))
    assert table.num_rows == len(corpus[1]) and len(set(table.column("doc_id").to_pylist())) == table.num_rows


@pytest.mark.parametrize("argv", [
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK", "--reshuffle", "on"],
    ["--reshuffle", "on"],
], ids=["multi_processing", "portable_loopback", "portable_reshuffled", "reshuffled"])
def test_same_output_across_process_boundaries(small_job, corpus, single_process, tmp_path, argv):
    out = tmp_path / "emb"
    summary = helpers.run_job(small_job.argv(corpus[0], out, *argv))
    got = _by_id(helpers.read_output(str(out)))
    assert summary["accounted"] and summary["embedded"] == len(corpus[1])
    assert sorted(got) == sorted(single_process)
    for doc_id, vector in single_process.items():
        np.testing.assert_allclose(got[doc_id], vector, atol=1e-6)


@pytest.mark.parametrize("argv, expected", [
    ([], False), (["--runner=DirectRunner"], False), (["--runner", "SwitchingDirectRunner"], False),
    (["--runner=DataflowRunner"], True),
    (["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"], True),
    (["--runner=FlinkRunner"], False), (["--runner=PortableRunner"], False),
    (["--runner=DataflowRunner", "--reshuffle", "off"], False), (["--runner=FlinkRunner", "--reshuffle", "on"], True),
    (["--reshuffle", "on"], True),
])
def test_documents_are_reshuffled_before_embedding_on_dataflow(argv, expected):
    """One input file is read by one worker: on Dataflow its documents must spread over the workers
    before the costly stage. Auto leaves the reshuffle out on the local DirectRunner (it would hold the
    whole corpus in memory) and elsewhere (on Flink it is verified by the parity tests only); ``on``
    forces it."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import EmbeddingOptions, reshuffles

    options = PipelineOptions(argv)
    assert reshuffles(options.view_as(EmbeddingOptions).reshuffle, options) is expected


def test_killed_run_leaves_no_final_shards_and_rerun_completes(small_job, tmp_path):
    docs = [(f"k{i}", d["text"]) for i, d in enumerate(sample_corpus(20000, seed=8))]
    corpus = helpers.write_jsonl(tmp_path / "big.jsonl", docs)
    out = tmp_path / "out" / "emb"
    # sequence mode with 1 MiB row groups: the sink opens its first temp shard after ~2500 of the
    # 20000 documents, so the kill below lands while most of the corpus is still to be embedded.
    job = small_job.argv(corpus, out, "--mode", "sequence", "--row_group_mb", "1")
    argv = [sys.executable, "-m", "beam_pipeline", *job]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    # Kill as soon as the Parquet sink has opened its first temp shard: writing has begun.
    while time.time() < deadline and not glob.glob(str(tmp_path / "out" / "beam-temp-emb-*" / "*")):
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _shards(out) == [], "a killed run leaves no final shard"
    assert not os.path.exists(f"{out}-summary.json")
    summary = helpers.run_job(job)
    table = helpers.read_output(str(out))
    ids = table.column("doc_id").to_pylist()
    assert summary["embedded"] == len(docs) == len(ids) == len(set(ids))


def test_overwrite_with_another_model_of_same_size_replaces_every_shard(small_job, corpus, tmp_path):
    """Beam skips renaming a shard over a final file of equal checksum (the size, for local files):
    the job renames anyway, so a rerun never keeps a previous run's file (here the empty dead-letter
    shard, which is equal in size every time, must still be there and listed)."""
    import keras

    model = keras.models.load_model(small_job.model)
    keras.utils.set_random_seed(99)
    for weights in model.weights:
        weights.assign(np.random.default_rng(1).normal(size=weights.shape).astype("float32") * 0.3)
    folder = small_job.folder.rstrip("/")
    other = f"{folder[:-1]}{'Z' if folder[-1] != 'Z' else 'Y'}/model.keras"  # same path length: same file size
    os.makedirs(os.path.dirname(other), exist_ok=True)
    model.save(other)
    reference_out = tmp_path / "reference"
    args = ["--compression", "none", "--num_shards", "1", "--padding", "pre", "--truncating", "pre"]
    helpers.run_job(["--input", corpus[0], "--model", other, "--tokenizer", small_job.tokenizer,
                     "--output", reference_out, *args])
    out = tmp_path / "emb"
    helpers.run_job(small_job.argv(corpus[0], out, *args))
    first = _by_id(helpers.read_output(str(out)))
    summary = helpers.run_job(["--input", corpus[0], "--model", other, "--tokenizer", small_job.tokenizer,
                               "--output", out, "--overwrite", *args])
    got, want = _by_id(helpers.read_output(str(out))), _by_id(helpers.read_output(str(reference_out)))
    assert got == want and got != first
    assert summary["error_files"] and all(os.path.exists(p) for p in summary["error_files"])
