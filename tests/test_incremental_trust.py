"""Issue 24: ``--previous`` is never silently wrong. One test per case the issue lists (the weights-only
cases 10 and 11 are in ``test_weights_only.py``), each compared with a fresh full run of the job, the
simplest correct path (itself checked against Keras by the golden tests)."""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.__main__ import main, print_summary
from beam_pipeline.options import ConfigError
from beam_pipeline.provenance import normalize_prefix
from tests import helpers

FLAGS = ["--batch_size", "16", "--num_shards", "2"]


def _rows(prefix) -> dict:
    """doc_id -> (text_hash, {column: float32 array}), columns by name (one row per id here)."""
    table = helpers.read_output(str(prefix), text_hash=True)
    names = [c for c in table.column_names if c not in ("doc_id", "num_tokens", "text_hash")]
    return {d: (table.column("text_hash")[k].as_py(),
                {c: np.asarray(table.column(c)[k].as_py(), dtype=np.float32) for c in names})
            for k, d in enumerate(table.column("doc_id").to_pylist())}


def _assert_same_as(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want)
    for doc_id, (text_hash, columns) in want.items():
        assert got[doc_id][0] == text_hash, doc_id
        assert sorted(got[doc_id][1]) == sorted(columns), doc_id
        for name, value in columns.items():
            np.testing.assert_allclose(got[doc_id][1][name], value, atol=atol, rtol=0, err_msg=f"{doc_id} {name}")


def _main(monkeypatch, argv) -> int:
    monkeypatch.setattr(sys, "argv", ["beam_pipeline", *map(str, argv)])
    return main()


@pytest.fixture(scope="module")
def day1(small_job, tmp_path_factory):
    """A full run over 60 documents in ``states`` mode (columns ``h``, ``c``: a swap would show)."""
    folder = tmp_path_factory.mktemp("day1")
    path, docs = helpers.sample_jsonl(folder, 60, seed=7)
    summary = helpers.run_job(small_job.argv(path, folder / "emb", *FLAGS, "--mode", "states"))
    return folder, path, docs, summary


def _copy_output(day1, to) -> str:
    """A copy of day 1's output at ``to/emb`` (shards and summary, the summary listing the copies)."""
    folder, _, _, summary = day1
    to.mkdir(exist_ok=True)
    shards = []
    for shard in summary["output_files"]:
        shards.append(str(to / os.path.basename(shard)))
        with open(shard, "rb") as src, open(shards[-1], "wb") as dst:
            dst.write(src.read())
    (to / "emb-summary.json").write_text(json.dumps(summary | {"output_files": shards}))
    return str(to / "emb")


def _full(small_job, path, out, *extra) -> dict:
    helpers.run_job(small_job.argv(path, out, *FLAGS, "--mode", "states", *extra))
    return _rows(out)


# 1. Builder code that changes the values (module form of --model_fn) changes the provenance.

BUILDER = '''
import keras


def build():
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(100, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(6, activation="{activation}", name="lstm")(x)
    return keras.Model(inp, keras.layers.Dense(1)(x))
'''


def test_case_1_a_changed_module_builder_reuses_no_row(small_job, tmp_path, monkeypatch):
    import keras

    code = tmp_path / "code"
    code.mkdir()
    (code / "trust_builder.py").write_text(BUILDER.format(activation="tanh"))
    monkeypatch.syspath_prepend(str(code))
    sys.modules.pop("trust_builder", None)
    import trust_builder

    keras.utils.set_random_seed(3)
    weights = tmp_path / "model.weights.h5"
    trust_builder.build().save_weights(weights)
    path, _ = helpers.sample_jsonl(tmp_path, 40, seed=2)

    def argv(out, *extra):
        return ["--input", path, "--model", weights, "--model_fn", "trust_builder:build", "--tokenizer",
                small_job.tokenizer, "--padding", "pre", "--truncating", "pre", "--output", out, *FLAGS, *extra]

    first = helpers.run_job(argv(tmp_path / "v1"))
    (code / "trust_builder.py").write_text(BUILDER.format(activation="sigmoid"))  # same weights, other values
    sys.modules.pop("trust_builder", None)
    second = helpers.run_job(argv(tmp_path / "v2", "--previous", tmp_path / "v1"))
    sys.modules.pop("trust_builder", None)
    helpers.run_job(argv(tmp_path / "full"))
    assert second["reused"] == 0 and second["previous"]["not_reused_because"] == (
        "provenance differs in: submodel_sha256")
    assert first["embedding_job"]["model_sha256"] == second["embedding_job"]["model_sha256"]
    _assert_same_as(_rows(tmp_path / "v2"), _rows(tmp_path / "full"))
    differs = max(float(np.abs(a[1]["vector"] - b[1]["vector"]).max())
                  for a, b in zip(_rows(tmp_path / "v1").values(), _rows(tmp_path / "v2").values()))
    assert differs > 1e-3, "the two builders should compute other values"


def test_the_digest_names_the_computation_not_the_names_or_the_layers_above(small_job):
    """The demo model cloned (other automatic layer names, the same weights): the same digest; another
    value in the head above the target layer: the same digest; in the target's bias: another one."""
    import keras

    from beam_pipeline import nested, provenance

    model = keras.models.load_model(small_job.model)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    digest = provenance.submodel_digest(model, nested.locate(model, None)[1])
    assert provenance.submodel_digest(clone, nested.locate(clone, None)[1]) == digest
    head = clone.get_layer(index=-1)
    head.set_weights([w + 1 for w in head.get_weights()])
    assert provenance.submodel_digest(clone, nested.locate(clone, None)[1]) == digest
    lstm = nested.locate(clone, None)[1]
    kernel, recurrent_kernel, bias = lstm.get_weights()
    lstm.set_weights([kernel, recurrent_kernel, bias + 1e-6])
    assert provenance.submodel_digest(clone, lstm) != digest


# 2. Columns by name.

def _rewrite(path: str, table: pa.Table, checksums: bool = True, metadata: bool = True) -> None:
    original = pq.ParquetFile(path).schema_arrow.metadata
    if metadata:
        table = table.replace_schema_metadata(original)
    else:
        table = table.replace_schema_metadata(None)
    pq.write_table(table, path, write_page_checksum=checksums)


def test_case_2_shards_with_columns_in_another_order_are_read_by_name(small_job, day1, tmp_path):
    folder, path, docs, summary = day1
    prefix = _copy_output(day1, tmp_path / "reordered")
    for shard in json.loads(open(prefix + "-summary.json").read())["output_files"]:
        table = pq.read_table(shard)
        assert table.column_names[2:4] == ["h", "c"]
        _rewrite(shard, table.select(["c", "text_hash", "doc_id", "h", "num_tokens"]))
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix))
    assert got["reused"] == len(docs) and got["previous"]["shards_not_reused"] == {}
    _assert_same_as(_rows(tmp_path / "inc"), _rows(folder / "emb"), atol=0)


@pytest.mark.parametrize("change", ["dropped c", "extra column", "other list size", "no footer", "no checksums"])
def test_case_2_shards_of_another_schema_are_recomputed_with_the_reason(small_job, day1, tmp_path, change):
    folder, path, docs, summary = day1
    prefix = _copy_output(day1, tmp_path / "changed")
    shards = json.loads(open(prefix + "-summary.json").read())["output_files"]
    table = pq.read_table(shards[0])
    if change == "dropped c":
        table = table.drop_columns(["c"])
    elif change == "extra column":
        table = table.append_column("note", pa.array(["x"] * table.num_rows))
    elif change == "other list size":
        short = pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(table.num_rows * 2, np.float32)), 2)
        table = table.set_column(table.column_names.index("c"), "c", short)
    _rewrite(shards[0], table, checksums=change != "no checksums", metadata=change != "no footer")
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix))
    reason = got["previous"]["shards_not_reused"]
    assert list(reason) == [shards[0]]
    expected = {"dropped c": "missing ['c']", "extra column": "extra ['note']", "other list size": "other types ['c']",
                "no footer": "no embedding_job footer metadata", "no checksums": "without page checksums"}[change]
    assert expected in reason[shards[0]]
    assert got["reused"] == len(docs) - pq.ParquetFile(shards[0]).metadata.num_rows
    assert (got["new"], got["changed"], got["removed"]) == (None, None, None)
    _assert_same_as(_rows(tmp_path / "inc"), _rows(folder / "emb"))


# 3. Checked data.

def _flip_in_column(shard: str, column: str, from_end: int) -> None:
    """Flips one bit ``from_end`` bytes before the end of ``column``'s chunk of row group 0: inside its last
    page's data (the page header comes first)."""
    metadata = pq.ParquetFile(shard).metadata
    names = [metadata.schema.column(i).path.split(".")[0] for i in range(metadata.num_columns)]
    chunk = metadata.row_group(0).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(open(shard, "rb").read())
    data[start + chunk.total_compressed_size - from_end] ^= 0x04
    open(shard, "wb").write(bytes(data))


@pytest.mark.parametrize("column, from_end", [("h", 1), ("c", 3), ("text_hash", 2), ("doc_id", 1),
                                              ("num_tokens", 1)])
def test_case_3_a_flipped_byte_is_never_reused(small_job, day1, tmp_path, column, from_end):
    folder, path, docs, summary = day1
    prefix = _copy_output(day1, tmp_path / "flipped")
    shard = json.loads(open(prefix + "-summary.json").read())["output_files"][1]
    _flip_in_column(shard, column, from_end)
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix))
    assert got["accounted"] and got["reused"] == len(docs) - pq.ParquetFile(shard).metadata.num_rows
    assert shard in json.dumps(got["previous"]["shards_not_reused"])
    _assert_same_as(_rows(tmp_path / "inc"), _rows(folder / "emb"))


# 5. (4 is in test_incremental.py.) No commit record for an unaccounted run: see also test_incremental.py.

def test_case_5_an_unaccounted_run_writes_no_summary_and_the_next_run_refuses_it(small_job, day1, tmp_path,
                                                                                monkeypatch):
    from transforms import write

    folder, path, docs, _ = day1
    original = write._RoundRobin.process
    lost = []

    def lose_one(self, rows):
        if not lost and len(rows) > 1:
            lost.append(rows.ids[0].as_py())
            rows = rows.take(np.arange(1, len(rows)))
        yield from original(self, rows)

    monkeypatch.setattr(write._RoundRobin, "process", lose_one)
    out = tmp_path / "lossy"
    assert _main(monkeypatch, small_job.argv(path, out, *FLAGS, "--mode", "states")) == 1
    monkeypatch.setattr(write._RoundRobin, "process", original)
    assert lost
    assert not os.path.exists(f"{out}-summary.json") and os.path.exists(f"{out}-unaccounted.json")
    with pytest.raises(ConfigError, match="not found"):
        helpers.run_job(small_job.argv(path, tmp_path / "next", *FLAGS, "--mode", "states", "--previous", out))


# 7. One prefix, however spelled.

@pytest.mark.parametrize("spelling", ["{d}/./emb", "{d}//emb", "{d}/emb/", "{rel}/emb"])
def test_case_7_the_same_prefix_spelled_another_way_is_the_same_prefix(small_job, day1, tmp_path, monkeypatch,
                                                                        spelling):
    from transforms import reuse

    folder, path, docs, _ = day1
    d = tmp_path / "out"
    prefix = _copy_output(day1, d)
    monkeypatch.chdir(tmp_path)
    other = spelling.format(d=d, rel="out")
    assert normalize_prefix(other) == normalize_prefix(prefix)

    def die(*args, **kwargs):
        raise RuntimeError("killed while copying rows")

    monkeypatch.setattr(reuse.CopyRows, "process", die)
    with pytest.raises(Exception, match="killed while copying rows"):
        helpers.run_job(small_job.argv(path, prefix, *FLAGS, "--mode", "states", "--previous", other))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = helpers.run_job(small_job.argv(path, other, *FLAGS, "--mode", "states", "--previous", prefix))
    assert summary["reused"] == len(docs) and summary["output_prefix"] == normalize_prefix(prefix)
    _assert_same_as(_rows(prefix), _rows(folder / "emb"), atol=0)
    assert sorted(glob.glob(prefix + "-*.parquet")) == summary["output_files"]


# 8. Summaries that work from anywhere.

def test_case_8_a_relative_output_is_reused_from_another_working_directory(small_job, day1, tmp_path, monkeypatch):
    folder, path, docs, _ = day1
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = helpers.run_job(small_job.argv(path, "rel/emb", *FLAGS, "--mode", "states"))
    assert all(os.path.isabs(p) for p in first["output_files"])
    monkeypatch.chdir(tmp_path / "b")
    got = helpers.run_job(small_job.argv(path, "emb", *FLAGS, "--mode", "states", "--previous", "../a/rel/emb"))
    assert got["reused"] == len(docs)


def test_case_8_shards_listed_relative_or_moved_are_found_beside_the_summary(small_job, day1, tmp_path):
    folder, path, docs, summary = day1
    prefix = _copy_output(day1, tmp_path / "moved")
    record = json.loads(open(prefix + "-summary.json").read())
    relative = [os.path.join("some", "old", "cwd", os.path.basename(p)) for p in record["output_files"]]
    open(prefix + "-summary.json", "w").write(json.dumps(record | {"output_files": relative}))
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix))
    assert got["reused"] == len(docs) and got["previous"]["shards_not_reused"] == {}


# 9. Answers, not tracebacks.

@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "not parquet", "missing"])
def test_case_9_an_unreadable_shard_is_recomputed_and_named(small_job, day1, tmp_path, damage):
    folder, path, docs, _ = day1
    prefix = _copy_output(day1, tmp_path / "damaged")
    shard = json.loads(open(prefix + "-summary.json").read())["output_files"][0]
    rows = pq.ParquetFile(shard).metadata.num_rows
    data = open(shard, "rb").read()
    if damage == "missing":
        os.remove(shard)
    else:
        open(shard, "wb").write({"truncated": data[: len(data) // 2], "zero bytes": b"",
                                 "not parquet": b'{"doc_id": "a"}\n' * 20}[damage])
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix))
    reason = got["previous"]["shards_not_reused"][shard]
    assert reason == "missing" if damage == "missing" else reason.startswith("unreadable: ")
    assert got["reused"] == len(docs) - rows and got["accounted"]
    _assert_same_as(_rows(tmp_path / "inc"), _rows(folder / "emb"))


@pytest.mark.parametrize("summary_text", ["half", "", "[1, 2]", '{"output_files": "x"}'])
def test_case_9_a_damaged_summary_is_refused_naming_it(small_job, day1, tmp_path, monkeypatch, summary_text,
                                                        capsys):
    folder, path, docs, _ = day1
    prefix = _copy_output(day1, tmp_path / "damaged")
    record = prefix + "-summary.json"
    text = open(record).read()
    open(record, "w").write(text[: len(text) // 2] if summary_text == "half" else summary_text)
    before = {p: open(p, "rb").read() for p in glob.glob(prefix + "*")}
    out = tmp_path / "inc"
    assert _main(monkeypatch, small_job.argv(path, out, *FLAGS, "--mode", "states", "--previous", prefix)) == 2
    assert record in capsys.readouterr().err
    assert not glob.glob(f"{out}*")
    assert {p: open(p, "rb").read() for p in glob.glob(prefix + "*")} == before


# Small, same area.

def test_a_prefix_with_glob_characters_in_its_folder(small_job, day1, tmp_path):
    folder, path, docs, _ = day1
    out = tmp_path / "out[1]" / "e*m?"
    out.parent.mkdir()
    first = helpers.run_job(small_job.argv(path, out, *FLAGS))
    again = helpers.run_job(small_job.argv(path, out, *FLAGS, "--previous", out))
    assert first["written"] == again["reused"] == len(docs)
    assert sorted(glob.glob(glob.escape(str(out)) + "-*.parquet")) == again["output_files"]


def test_the_columns_line_lists_every_column_written(day1, capsys):
    _, _, _, summary = day1
    print_summary(summary)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("columns:"))
    written = pq.ParquetFile(summary["output_files"][0]).schema_arrow.names
    assert all(name in line for name in written), (line, written)


def test_a_missing_id_dead_letter_names_file_and_line(small_job, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "the cat"}\n{"text": "no id here"}\n{"id": "", "text": "empty id"}\n')
    summary = helpers.run_job(small_job.argv(str(path), tmp_path / "out", *FLAGS))
    letters = [json.loads(line) for f in summary["error_files"] for line in open(f)]
    details = sorted(r["detail"] for r in letters if r["reason"] == "missing_id")
    assert len(details) == 2 and details[0].startswith("corpus.jsonl:2: ") and details[1].startswith("corpus.jsonl:3: ")


def test_the_process_age_is_never_longer_than_the_process_has_run():
    import subprocess
    import time

    start = time.time()
    out = subprocess.run([sys.executable, "-c", "from transforms.embed import process_age_s; print(process_age_s())"],
                         capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert 0 < float(out.stdout.strip().splitlines()[-1]) <= time.time() - start


@pytest.mark.parametrize("spellings", [
    ("gs://b/out/emb", "gs://b/out/./emb", "gs://b/out//emb", "gs://b/out/emb/", "gs://b/x/../out/emb"),
    ("out/emb", "./out/emb", "out//emb", "out/emb/", "out/x/../emb".replace("x/../", "")),
])
def test_prefixes_are_compared_after_normalization(spellings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len({normalize_prefix(p) for p in spellings}) == 1
    assert normalize_prefix("gs://b/out/emb") != normalize_prefix("gs://c/out/emb")
    assert normalize_prefix("out/emb") == str(tmp_path / "out" / "emb")


# A shard replaced after the launcher checked it: the footer digest it recorded no longer matches.

def _rewrite_reversed(shard: str) -> None:
    """The shard rewritten as a valid output of the same job (footer, provenance, checksums), its rows in
    reverse order: every position now holds another document's row."""
    table = pq.read_table(shard)
    table = table.take(pa.array(np.arange(table.num_rows)[::-1]))
    pq.write_table(table, shard + ".tmp", write_page_checksum=True, use_compliant_nested_type=False)
    os.replace(shard + ".tmp", shard)


@pytest.mark.parametrize("join", ["lookup", "shuffle"])
def test_a_shard_replaced_after_the_launcher_checked_it_is_not_reused(small_job, day1, tmp_path, monkeypatch, join):
    """Replaced between the launcher's check and the run's own (another valid file of the same job, the
    rows in another order): its documents are embedded again and the summary names it; the output is the
    full run's."""
    from beam_pipeline import previous

    folder, path, docs, _ = day1
    prefix = _copy_output(day1, tmp_path / "replaced")
    shard = json.loads(open(prefix + "-summary.json").read())["output_files"][0]
    rows = pq.ParquetFile(shard).metadata.num_rows
    original = previous.check_shard_footer

    def check_then_replace(p, expected, columns):
        answer = original(p, expected, columns)
        if p == shard:
            _rewrite_reversed(p)
        return answer

    monkeypatch.setattr(previous, "check_shard_footer", check_then_replace)
    got = helpers.run_job(small_job.argv(path, tmp_path / "inc", *FLAGS, "--mode", "states", "--previous", prefix,
                                         "--previous_join", join))
    assert "changed since the launcher checked it" in got["previous"]["shards_not_reused"][shard]
    assert got["reused"] == len(docs) - rows and got["accounted"] and got["new"] is None
    _assert_same_as(_rows(tmp_path / "inc"), _rows(folder / "emb"))


@pytest.mark.parametrize("join", ["lookup", "shuffle"])
def test_a_shard_replaced_during_the_run_fails_it_and_commits_nothing(small_job, day1, tmp_path, monkeypatch, join):
    """Replaced after the run checked its row groups, before its rows are indexed or copied: the run fails,
    no summary is written (a rerun then recomputes that shard's documents), never a row taken from the
    other file."""
    from transforms import reuse

    folder, path, docs, _ = day1
    prefix = _copy_output(day1, tmp_path / "replaced")
    shard = json.loads(open(prefix + "-summary.json").read())["output_files"][0]
    original = reuse.ReadPreviousKeys.process

    def check_then_replace(self, element):
        yield from original(self, element)
        if element[1] == shard:
            _rewrite_reversed(shard)

    monkeypatch.setattr(reuse.ReadPreviousKeys, "process", check_then_replace)
    out = tmp_path / "inc"
    with pytest.raises(Exception, match="changed"):
        helpers.run_job(small_job.argv(path, out, *FLAGS, "--mode", "states", "--previous", prefix,
                                       "--previous_join", join))
    assert not os.path.exists(f"{out}-summary.json")
    monkeypatch.undo()
    got = helpers.run_job(small_job.argv(path, out, *FLAGS, "--mode", "states", "--previous", prefix))
    assert got["accounted"]
    _assert_same_as(_rows(out), _rows(folder / "emb"))
