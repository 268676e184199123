"""Bad input files found by an audit, each one a record reported or written, never a crashed job:
JSON lines Python's json cannot hold (an integer over 4300 digits, nesting past the recursion limit),
lone surrogate escapes, CSV fields over csv's 131072-character default and a header that is not UTF-8,
Parquet files that are not Parquet or hold invalid UTF-8 in a string column or ids as bytes,
compressed files cut short or not compressed at all, ``.xz``/``.lzma``/``.zstd`` suffixes, a folder
as ``--input``, and a file whose name holds glob characters. All in one real job, read back."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.options import ConfigError
from tests import helpers


def _jsonl(path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def bad_job(tmp_path_factory, small_job):
    folder = tmp_path_factory.mktemp("bad_inputs")
    inputs = folder / "in"
    inputs.mkdir()
    expected_rows, expected_dead = set(), {}

    def dead(reason, n=1):
        expected_dead[reason] = expected_dead.get(reason, 0) + n

    (inputs / "bigint.jsonl").write_text('{"id": "b1", "text": "the dog"}\n{"id": ' + "9" * 5000 + ', "text": "x"}\n')
    expected_rows.add("b1"), dead("invalid_json")
    (inputs / "deep.jsonl").write_text('{"id": "d1", "text": "fox"}\n' + "[" * 100000 + "]" * 100000 + "\n")
    expected_rows.add("d1"), dead("invalid_json")
    (inputs / "surrogate.jsonl").write_text('{"id": "s1", "text": "lone \\ud800 fox"}\n{"id": "s2", "text": "fox"}\n')
    expected_rows.add("s2"), dead("invalid_utf8")
    (inputs / "bigfield.csv").write_text("id,text\nc1," + "fox " * 50000 + "\nc2,dog\n")
    expected_rows.update({"c1", "c2"})
    (inputs / "badheader.csv").write_bytes(b"id,t\xe9xt\nh1,fox\n")
    dead("unreadable_file")
    (inputs / "notparquet.parquet").write_bytes(b"this is not parquet at all")
    dead("unreadable_file")
    pq.write_table(pa.table({"id": pa.array([b"p1", b"p2"], pa.binary()), "text": ["fox", "dog"]}),
                   inputs / "binid.parquet")
    expected_rows.update({"p1", "p2"})
    bad_utf8 = pa.array([b"fox", b"caf\xe9"], pa.binary()).cast(pa.string(), safe=False)
    pq.write_table(pa.table({"id": ["u1", "u2"], "text": bad_utf8}), inputs / "badutf8.parquet")
    expected_rows.add("u1"), dead("invalid_utf8")
    records = [{"id": f"g{i}", "text": "the quick brown fox " * 20} for i in range(400)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    (inputs / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # some records, then the cut
    (inputs / "cutbz.jsonl.bz2").write_bytes(bz2.compress(b'{"id": "z", "text": "fox"}\n' * 50)[:60])
    (inputs / "garbage.jsonl.gz").write_bytes(b"not gzip at all\n")
    dead("unreadable_file", 3)
    (inputs / "c.jsonl.xz").write_bytes(lzma.compress(b'{"id": "x1", "text": "fox dog"}\n'))
    expected_rows.add("x1")
    summary = helpers.run_job(["--input", str(inputs / "*"), "--model", small_job.model, "--tokenizer",
                               small_job.tokenizer, "--output", str(folder / "out" / "emb"), "--padding", "pre",
                               "--truncating", "pre"])
    table = helpers.read_output(str(folder / "out" / "emb"))
    errors = [json.loads(line) for name in os.listdir(folder / "out") if "errors" in name
              for line in open(folder / "out" / name, encoding="utf-8") if line.strip()]
    return {"summary": summary, "ids": table.column("doc_id").to_pylist(), "errors": errors,
            "rows": expected_rows, "dead": expected_dead}


def test_every_bad_record_is_a_dead_letter_and_the_job_finishes(bad_job):
    summary, ids = bad_job["summary"], bad_job["ids"]
    assert summary["accounted"] and summary["read"] == summary["embedded"] + summary["dead_lettered"]
    assert len(ids) == len(set(ids)), "no record twice"
    cut = {i for i in ids if i.startswith("g")}
    assert set(ids) - cut == bad_job["rows"], "ids as given: bytes decoded, .xz read as JSONL"
    assert 0 < len(cut) < 400, "the cut .gz gives the records before the cut"
    reasons: dict = {}
    for e in bad_job["errors"]:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    # the cut .gz's own last line may be cut mid-record (an invalid_json) as well
    assert {k: v for k, v in reasons.items() if k != "invalid_json"} == {
        k: v for k, v in bad_job["dead"].items() if k != "invalid_json"}
    assert reasons.get("invalid_json", 0) in (bad_job["dead"]["invalid_json"], bad_job["dead"]["invalid_json"] + 1)


def test_unreadable_files_are_named_with_what_stopped_them(bad_job):
    details = {os.path.basename(e["input"]): e["detail"] for e in bad_job["errors"]
               if e["reason"] == "unreadable_file"}
    assert set(details) == {"badheader.csv", "notparquet.parquet", "cut.jsonl.gz", "cutbz.jsonl.bz2",
                            "garbage.jsonl.gz"}
    assert "cut short" in details["cut.jsonl.gz"] and "cut short" in details["cutbz.jsonl.bz2"]
    assert "not UTF-8" in details["badheader.csv"]


def test_a_folder_as_input_is_a_config_error_naming_its_files(small_job, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import resolve

    (tmp_path / "corpus").mkdir()
    helpers.write_jsonl(tmp_path / "corpus" / "a.jsonl", helpers.corpus(2))
    with pytest.raises(ConfigError, match="is a folder; name its files"):
        resolve(PipelineOptions(["--input", str(tmp_path / "corpus"), "--model", small_job.model, "--tokenizer",
                                 small_job.tokenizer, "--output", str(tmp_path / "o"), "--padding", "pre",
                                 "--truncating", "pre"]))


def test_a_file_whose_name_holds_glob_characters_is_read_as_named(small_job, tmp_path):
    _jsonl(tmp_path / "br[1].jsonl", [{"id": "bracket", "text": "fox"}])
    _jsonl(tmp_path / "br1.jsonl", [{"id": "other", "text": "dog"}])  # what the name would match as a glob
    helpers.run_job(["--input", str(tmp_path / "br[1].jsonl"), "--model", small_job.model, "--tokenizer",
                     small_job.tokenizer, "--output", str(tmp_path / "out" / "emb"), "--padding", "pre",
                     "--truncating", "pre"])
    assert helpers.read_output(str(tmp_path / "out" / "emb")).column("doc_id").to_pylist() == ["bracket"]
