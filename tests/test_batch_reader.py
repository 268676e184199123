"""The reader's main outputs are ``DocBatch``es: the same documents, dead letters and counts as the
record-by-record reading, in file order, at most ``BATCH_DOCS`` documents a batch."""

from __future__ import annotations

import io
import json
import os

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import read, read_csv, read_fast
from transforms.batch import DocBatch
from transforms.read import COUNTS, ReadCorpus, ReadRecords


def read_outputs(element, id_field: str = "id", text_field: str = "text", fast: bool = True) -> dict:
    """Everything ``ReadRecords`` gives for one element: ``batches``, ``docs`` (their rows as
    ``(id, text)``, in order), ``dead`` (dead-letter records) and ``count`` (the counts output)."""
    batches, dead, counts = [], [], []
    for out in ReadRecords(id_field, text_field, fast=fast).process(element):
        if isinstance(out, DocBatch):
            batches.append(out)
        elif out.tag == COUNTS:
            counts.append(out.value)
        else:
            assert out.tag == "errors"
            dead.append(out.value)
    assert len(counts) == 1, "one count per element"
    docs = [pair for b in batches for pair in zip(b.ids.to_pylist(), b.texts.to_pylist())]
    return {"batches": batches, "docs": docs, "dead": dead, "count": counts[0]}


def _jsonl_lines(n: int) -> list[bytes]:
    return [json.dumps({"id": f"d{i}", "text": f"text number {i}"}).encode() for i in range(n)]


def test_batches_hold_at_most_batch_docs_documents_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setattr(read_fast, "BATCH_DOCS", 4)
    lines = _jsonl_lines(10)
    lines.insert(5, b"not json")
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = read_outputs(str(path))
    assert [len(b) for b in got["batches"]] == [4, 4, 2]
    for batch in got["batches"]:
        assert batch.ids.type == pa.string() and batch.texts.type == pa.string()
    assert got["docs"] == [(f"d{i}", f"text number {i}") for i in range(10)]
    assert [(d["reason"], d["detail"].split(":")[:2]) for d in got["dead"]] == [("invalid_json", ["c.jsonl", "6"])]
    assert got["count"] == 11


@pytest.mark.parametrize("fast", [False, True])
def test_a_batch_is_handed_on_once_its_texts_are_large(tmp_path, monkeypatch, fast):
    """Per record, a batch ends at the document that brings it to ``BATCH_BYTES``; a fast reader hands
    on a block's rows at once (one block past the mark at most)."""
    monkeypatch.setattr(read_fast, "BATCH_BYTES", 100)
    path = tmp_path / "c.txt"
    path.write_bytes(b"\n".join([b"x" * 60] * 5) + b"\n")
    got = read_outputs(str(path), fast=fast)
    assert [len(b) for b in got["batches"]] == ([2, 2, 1] if not fast else [5])
    assert got["docs"] == [(f"c.txt:{k}", "x" * 60) for k in range(1, 6)]


def test_records_read_before_a_file_stops_being_readable_are_handed_on(tmp_path):
    import gzip

    whole = gzip.compress(b"".join(line + b"\n" for line in _jsonl_lines(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    got = read_outputs((str(path), os.path.getsize(path)))
    assert got["dead"][-1]["reason"] == "unreadable_file"
    assert [d["reason"] for d in got["dead"][:-1]] in ([], ["invalid_json"]), "a cut last line, if any"
    n = len(got["docs"])
    assert 0 < n < 2000 and got["docs"] == [(f"d{i}", f"text number {i}") for i in range(n)]
    assert got["count"] == n + len(got["dead"])
    assert f"reading stopped after {got['count'] - 1} record(s)" in got["dead"][-1]["detail"]


def test_read_corpus_in_a_direct_runner_pipeline_gives_batches_dead_letters_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(read_fast, "BATCH_DOCS", 3)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b"\n".join(_jsonl_lines(7) + [b"[1]"]) + b"\n")
    text = tmp_path / "b.txt"
    text.write_bytes(b"one\ntwo\n\xff\n")
    paths = [str(jsonl), str(text)]
    with beam.Pipeline("DirectRunner") as p:
        out = p | ReadCorpus(paths, "id", "text", sizes={q: os.path.getsize(q) for q in paths})
        rows = out.docs | "Rows" >> beam.FlatMap(
            lambda b: [(len(b) <= 3, i, t) for i, t in zip(b.ids.to_pylist(), b.texts.to_pylist())])
        assert_that(rows, equal_to([(True, f"d{i}", f"text number {i}") for i in range(7)]
                                   + [(True, "b.txt:1", "one"), (True, "b.txt:2", "two")]), label="docs")
        reasons = out.errors | beam.Map(lambda d: (d["reason"], d["doc_id"]))
        assert_that(reasons, equal_to([("invalid_json", None), ("invalid_utf8", "b.txt:3")]), label="errors")
        assert_that(out[COUNTS], equal_to([8, 3]), label="counts")


@pytest.mark.parametrize("data", [b"", b"\n", b"\xef\xbb\xbf"])
def test_a_file_without_documents_gives_no_batch(tmp_path, data):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(data)
    got = read_outputs(str(path))
    assert got["batches"] == [] and got["dead"] == [] and got["count"] == 0


# --- the fast readers give what the per-record code gives, row by row -------------------------------

@pytest.fixture
def fast_blocks(monkeypatch) -> dict:
    """Counts of blocks (row groups) the fast readers read, by format: a test of a fast path shows that
    the fast path ran."""
    counts = {"jsonl": 0, "text": 0, "parquet": 0, "csv": 0}
    for fmt, module, name in (("jsonl", read_fast, "jsonl_block"), ("text", read_fast, "text_block"),
                              ("parquet", read_fast, "parquet_group"), ("csv", read_csv, "_fast_block")):
        def spy(*args, _real=getattr(module, name), _fmt=fmt):
            rows = _real(*args)
            counts[_fmt] += rows is not None
            return rows
        monkeypatch.setattr(module, name, spy)
    return counts


def assert_fast_reads_as_per_record(element, id_field: str = "id", text_field: str = "text") -> dict:
    """Reads ``element`` with the fast readers and with the per-record code: the same documents in the
    same order, the same dead letters (doc_id, reason, detail, input) and the same count."""
    fast = read_outputs(element, id_field, text_field, fast=True)
    slow = read_outputs(element, id_field, text_field, fast=False)
    assert fast["docs"] == slow["docs"]
    assert fast["dead"] == slow["dead"]
    assert fast["count"] == slow["count"] == len(slow["docs"]) + len(slow["dead"])
    return fast


def _good_jsonl(n: int, tag: str) -> list[bytes]:
    return [json.dumps({"id": f"{tag}{i}", "text": f"the rocket launch {i}", "topic": "space"}).encode()
            for i in range(n)]


BAD_JSONL_LINES = {
    "int id": b'{"id": 12, "text": "an integer id is str(int)"}',
    "negative zero id": b'{"id": -0, "text": "a"}',
    "float id": b'{"id": 1.5, "text": "a"}',
    "exponent id": b'{"id": 1e3, "text": "a"}',
    "bool id": b'{"id": true, "text": "a"}',
    "object id": b'{"id": {"x": 1}, "text": "a"}',
    "huge int id": b'{"id": 123456789012345678901234567890, "text": "a"}',
    "NaN id": b'{"id": NaN, "text": "a"}',
    "null id": b'{"id": null, "text": "a"}',
    "missing id": b'{"text": "a"}',
    "empty id": b'{"id": "", "text": "a"}',
    "blank id": b'{"id": " \\t", "text": "a"}',
    "unicode blank id": '{"id": "\u3000\u2028", "text": "a"}'.encode(),
    "unicode id": '{"id": "\u00e9t\u00e9", "text": "a"}'.encode(),
    "missing text": b'{"id": "x"}',
    "null text": b'{"id": "x", "text": null}',
    "int text": b'{"id": "x", "text": 3}',
    "list text": b'{"id": "x", "text": ["a"]}',
    "NaN text": b'{"id": "x", "text": NaN}',
    "duplicate text key": b'{"id": "x", "text": "first", "text": "last"}',
    "duplicate id key": b'{"id": "x", "id": "y", "text": "a"}',
    "escaped duplicate key": b'{"id": "x", "text": "first", "\\u0074ext": "last"}',
    "duplicate extra key": b'{"id": "x", "text": "a", "e": 1, "e": [2]}',
    "lone surrogate text": b'{"id": "x", "text": "a\\ud800b"}',
    "lone surrogate extra": b'{"id": "x", "text": "a", "e": "\\udc00"}',
    "surrogate pair": b'{"id": "x", "text": "\\ud83d\\ude00"}',
    "invalid utf8 text": b'{"id": "x", "text": "caf\xe9"}',
    "invalid utf8 extra": b'{"id": "x", "text": "a", "e": "\xff"}',
    "utf8 encoded surrogate": b'{"id": "x", "text": "\xed\xa0\x80"}',
    "not an object": b'["not", "an", "object"]',
    "a string": b'"abc"',
    "a number": b"42",
    "cut": b'{"id": "broken", "text": ',
    "two objects": b'{"id": "x", "text": "a"} {"id": "y", "text": "b"}',
    "two objects no space": b'{"id": "x", "text": "a"}{"id": "y", "text": "b"}',
    "lone cr between objects": b'{"id": "x", "text": "a"}\r{"id": "y", "text": "b"}',
    "cr inside object": b'{"id": "x",\r"text": "a"}',
    "crlf": b'{"id": "x", "text": "a"}\r',
    "blank": b"",
    "spaces": b"   ",
    "vertical tab": b"\x0b",
    "leading space": b' {"id": "x", "text": "a"}',
    "byte-order mark": b'\xef\xbb\xbf{"id": "x", "text": "a"}',
    "NaN extra": b'{"id": "x", "text": "a", "e": NaN}',
    "Infinity extra": b'{"id": "x", "text": "a", "e": -Infinity}',
    "Inf extra": b'{"id": "x", "text": "a", "e": Inf}',
    "minus Inf extra": b'{"id": "x", "text": "a", "e": [-Inf]}',
    "minus NaN extra": b'{"id": "x", "text": "a", "e": -NaN}',
    "Inf after long whitespace": b'{"id": "x", "text": "a", "e":' + b" " * 100 + b"Inf}",
    "NaN after minus and whitespace": b'{"id": "x", "text": "a", "e": - NaN}',
    "Inf in text": b'{"id": "x", "text": "a: Inf, [Information"}',
    "1e400 extra": b'{"id": "x", "text": "a", "e": 1e400}',
    "trailing comma": b'{"id": "x", "text": "a",}',
    "comment": b'{"id": "x", "text": "a"} // c',
    "single quotes": b"{'id': 'x', 'text': 'a'}",
    "control character": b'{"id": "x", "text": "a\tb"}',
    "nul escape": b'{"id": "x", "text": "a\\u0000b"}',
    "line separator": '{"id": "x", "text": "a\u2028b"}'.encode(),
    "int over 4300 digits": b'{"id": "b", "text": "x", "e": ' + b"9" * 5000 + b"}",
    "int of 4300 digits": b'{"id": "b", "text": "x", "e": ' + b"9" * 4300 + b"}",
    "digits in a text": b'{"id": "b", "text": "' + b"9" * 5000 + b'"}',
    "float of 5000 digits": b'{"id": "b", "text": "x", "e": 1' + b"0" * 5000 + b".5}",
    "deep nesting": b'{"id": "d", "text": "x", "e": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    "nesting of 120": b'{"id": "d", "text": "x", "e": ' + b"[" * 120 + b"]" * 120 + b"}",
    "brackets in a text": b'{"id": "d", "text": "' + b"[{" * 200 + b'"}',
    "very long text": json.dumps({"id": "long", "text": "the crew " * 300000}).encode(),
    "nested id key": b'{"e": {"id": "inner"}, "id": "x", "text": "a"}',
    "differently cased keys": b'{"ID": "x", "Text": "a"}',
}


@pytest.mark.parametrize("min_lines", [1, 16])
@pytest.mark.parametrize("case", list(BAD_JSONL_LINES))
def test_jsonl_bad_line_among_good_ones_reads_as_per_line(tmp_path, monkeypatch, fast_blocks, case, min_lines):
    monkeypatch.setattr(read_fast, "MIN_FAST_LINES", min_lines)
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(_good_jsonl(40, "a") + [BAD_JSONL_LINES[case]] + _good_jsonl(40, "b")) + b"\n")
    got = assert_fast_reads_as_per_record(str(path))
    assert fast_blocks["jsonl"] >= 1, "the good lines around were read by the fast reader"
    assert [d for d, _ in got["docs"][:40]] == [f"a{i}" for i in range(40)]


@pytest.mark.parametrize("case", list(BAD_JSONL_LINES))
def test_jsonl_bad_line_alone_reads_as_per_line(tmp_path, monkeypatch, case):
    monkeypatch.setattr(read_fast, "MIN_FAST_LINES", 1)
    for ending in (b"", b"\n"):
        path = tmp_path / "one.jsonl"
        path.write_bytes(BAD_JSONL_LINES[case] + ending)
        assert_fast_reads_as_per_record(str(path))


def test_jsonl_of_integer_ids_is_read_fast_as_str_int(tmp_path, fast_blocks):
    path = tmp_path / "ints.jsonl"
    path.write_bytes(b"".join(json.dumps({"id": i - 20, "text": f"t{i}"}).encode() + b"\n" for i in range(50)))
    got = assert_fast_reads_as_per_record(str(path))
    assert fast_blocks["jsonl"] == 1
    assert got["docs"][0] == ("-20", "t0")


def test_jsonl_fields_named_otherwise_are_read_fast(tmp_path, fast_blocks):
    path = tmp_path / "named.jsonl"
    path.write_bytes(b"".join(json.dumps({"doc": f"n{i}", "body": "x", "id": 1.5}).encode() + b"\n"
                              for i in range(30)))
    got = assert_fast_reads_as_per_record(str(path), "doc", "body")
    assert fast_blocks["jsonl"] == 1 and len(got["docs"]) == 30


TEXT_FILES = {
    "plain": b"first line\nsecond line\n",
    "no final newline": b"first line\nlast",
    "blank lines are documents": b"\n\na\n\n",
    "crlf": b"one\r\ntwo\r\n",
    "two cr": b"one\r\r\ntwo\r",
    "lone cr stays": b"one\rtwo\n",
    "byte-order mark": b"\xef\xbb\xbfa\nb",
    "byte-order mark alone": b"\xef\xbb\xbf",
    "byte-order mark later": b"a\n\xef\xbb\xbfb\n",
    "invalid utf8": b"fine\nbad \xc3\x28 bytes\nfine too\n",
    "invalid utf8 last": b"fine\n\xff",
    "cut multibyte across a line end": b"caf\xc3\n\xa9\n",
    "nul and controls": b"nul \x00 inside\x07\n\x1b",
    "utf8": "caf\u00e9 \u2028 \U0001F600\n".encode(),
    "tiny": b"a\nb",
    "empty": b"",
    "newline only": b"\n",
}


@pytest.mark.parametrize("min_lines", [1, 16])
@pytest.mark.parametrize("case", list(TEXT_FILES))
def test_text_reads_as_per_line(tmp_path, monkeypatch, fast_blocks, case, min_lines):
    monkeypatch.setattr(read_fast, "MIN_FAST_LINES", min_lines)
    good = b"".join(b"good line %d\n" % i for i in range(40))
    for data in (TEXT_FILES[case], good + TEXT_FILES[case], TEXT_FILES[case] + b"\n" + good):
        path = tmp_path / "c.txt"
        path.write_bytes(data)
        assert_fast_reads_as_per_record(str(path))
    assert fast_blocks["text"] >= 1


PARQUET_TABLES = {
    "strings": pa.table({"id": ["p1", "p2"], "text": ["fox", ""]}),
    "large strings": pa.table({"id": pa.array(["p1", "p2"], pa.large_string()),
                               "text": pa.array(["fox", "dog"], pa.large_string())}),
    "dictionary": pa.table({"id": pa.array(["p1", "p2"]).dictionary_encode(),
                            "text": pa.array(["fox", "fox"]).dictionary_encode()}),
    "integer ids": pa.table({"id": pa.array([-3, 2**62], pa.int64()), "text": ["fox", "dog"]}),
    "small integer ids": pa.table({"id": pa.array([1, 2], pa.uint8()), "text": ["fox", "dog"]}),
    "binary ids": pa.table({"id": pa.array([b"p1", b"\xc3\xa9"], pa.binary()), "text": ["fox", "dog"]}),
    "binary ids not utf8": pa.table({"id": pa.array([b"p1", b"\xe9"], pa.binary()), "text": ["fox", "dog"]}),
    "bool ids": pa.table({"id": [True, False], "text": ["fox", "dog"]}),
    "float ids": pa.table({"id": [1.0, 2.5], "text": ["fox", "dog"]}),
    "list ids": pa.table({"id": [[1], [2]], "text": ["fox", "dog"]}),
    "date ids": pa.table({"id": pa.array([0, 1], pa.date32()), "text": ["fox", "dog"]}),
    "null id": pa.table({"id": ["p1", None], "text": ["fox", "dog"]}),
    "blank id": pa.table({"id": ["p1", " \u3000"], "text": ["fox", "dog"]}),
    "null text": pa.table({"id": ["p1", "p2"], "text": ["fox", None]}),
    "int text": pa.table({"id": ["p1", "p2"], "text": [1, 2]}),
    "binary text": pa.table({"id": ["p1", "p2"], "text": pa.array([b"a", b"b"], pa.binary())}),
    "no text column": pa.table({"id": ["p1", "p2"], "body": ["fox", "dog"]}),
    "no id column": pa.table({"key": ["p1", "p2"], "text": ["fox", "dog"]}),
    "invalid utf8 text": pa.table({"id": ["u1", "u2"], "text": pa.array([b"fox", b"caf\xe9"], pa.binary())
                                   .cast(pa.string(), safe=False)}),
    "invalid utf8 id": pa.table({"id": pa.array([b"u1", b"\xff"], pa.binary()).cast(pa.string(), safe=False),
                                 "text": ["fox", "dog"]}),
    "extra columns": pa.table({"x": [1, 2], "id": ["p1", "p2"], "text": ["fox", "dog"], "y": [[1], None]}),
    "empty": pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
}


@pytest.mark.parametrize("case", list(PARQUET_TABLES))
def test_parquet_reads_as_per_record(tmp_path, fast_blocks, case):
    import pyarrow.parquet as pq

    table = PARQUET_TABLES[case]
    path = tmp_path / "c.parquet"
    for row_group_size in (None, 1):  # one group; a group a row (good rows fast, bad ones as the per-record code)
        pq.write_table(table, path, row_group_size=row_group_size)
        assert_fast_reads_as_per_record(str(path))
    if case in ("strings", "large strings", "dictionary", "integer ids", "small integer ids", "binary ids",
                "extra columns", "null id", "blank id", "null text", "invalid utf8 text", "invalid utf8 id"):
        assert fast_blocks["parquet"] >= 1


def _bad_input_files(folder) -> list[str]:
    """The files of ``tests/test_bad_inputs.py`` and ``tests/test_robustness.py``'s mixed corpus, and the
    byte-order-mark files of ``tests/test_inputs_outputs.py``, compressed and not."""
    import bz2
    import gzip
    import lzma

    import pyarrow.parquet as pq

    from tests.test_inputs_outputs import BOM, TEXT_FILES
    from tests.test_robustness import _mixed_corpus

    files = {
        "bigint.jsonl": b'{"id": "b1", "text": "the dog"}\n{"id": ' + b"9" * 5000 + b', "text": "x"}\n',
        "deep.jsonl": b'{"id": "d1", "text": "fox"}\n' + b"[" * 100000 + b"]" * 100000 + b"\n",
        "surrogate.jsonl": b'{"id": "s1", "text": "lone \\ud800 fox"}\n{"id": "s2", "text": "fox"}\n',
        "bigfield.csv": b"id,text\nc1," + b"fox " * 50000 + b"\nc2,dog\n",
        "badheader.csv": b"id,t\xe9xt\nh1,fox\n",
        "notparquet.parquet": b"this is not parquet at all",
        "garbage.jsonl.gz": b"not gzip at all\n",
        "c.jsonl.xz": lzma.compress(b'{"id": "x1", "text": "fox dog"}\n'),
        "cutbz.jsonl.bz2": bz2.compress(b'{"id": "z", "text": "fox"}\n' * 50)[:60],
    }
    whole = gzip.compress(b"".join(line + b"\n" for line in _good_jsonl(20000, "g")))
    files["cut.jsonl.gz"] = whole[: len(whole) // 2]
    whole = gzip.compress(b"".join(b"line %d\n" % i for i in range(200000)))
    files["cut.txt.gz"] = whole[: len(whole) // 2]
    for name, data in TEXT_FILES.items():
        files[f"bom-{name}"] = BOM + data
        files[f"bom-{name}.gz"] = gzip.compress(BOM + data)
        files[f"bom-{name}.bz2"] = bz2.compress(BOM + data)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    pq.write_table(pa.table({"id": pa.array([b"p1", b"p2"], pa.binary()), "text": ["fox", "dog"]}),
                   folder / "binid.parquet")
    bad_utf8 = pa.array([b"fox", b"caf\xe9"], pa.binary()).cast(pa.string(), safe=False)
    pq.write_table(pa.table({"id": ["u1", "u2"], "text": bad_utf8}), folder / "badutf8.parquet")
    mixed, _, _ = _mixed_corpus(folder)
    return sorted([str(folder / name) for name in files] + [str(folder / "binid.parquet"),
                                                             str(folder / "badutf8.parquet")] + mixed)


def test_every_bad_input_file_of_the_other_tests_reads_as_per_record(tmp_path, monkeypatch):
    monkeypatch.setattr(read_fast, "MIN_FAST_LINES", 1)
    paths = _bad_input_files(tmp_path)
    assert len(paths) == 26
    unreadable = 0
    for path in paths:
        got = assert_fast_reads_as_per_record((path, os.path.getsize(path)))
        unreadable += any(d["reason"] == "unreadable_file" for d in got["dead"])
    assert unreadable == 6, "two cut .gz, a cut .bz2, one not gzip, one not Parquet, a CSV header not UTF-8"


# --- byte ranges ---------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


def _lines_starting_in(data: bytes, start: int, end: int) -> list[tuple[bytes, int]]:
    """The oracle: ``(line, offset)`` of the lines of ``data`` that start in ``[start, end)``, a leading
    byte-order mark not part of the first line (which still starts at byte 0)."""
    body = data[3:] if data.startswith(BOM) else data
    pieces = body.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    lines, offset = [], len(data) - len(body)
    for k, line in enumerate(pieces):
        lines.append((line, 0 if k == 0 else offset))
        offset += len(line) + 1
    return [(line, at) for line, at in lines if start <= at < end]


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       bom=st.booleans(), final=st.booleans(), split=st.integers(1, 40), chunk=st.integers(1, 9))
def test_range_blocks_give_each_range_the_lines_that_start_in_it(lines, bom, final, split, chunk):
    data = (BOM if bom else b"") + b"\n".join(lines) + (b"\n" if final and lines else b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(read_fast, "CHUNK_BYTES", chunk)  # blocks of a few bytes: every boundary case
        got = []
        for start in range(0, max(len(data), 1), split):
            end = min(start + split, len(data))
            blocks = list(read_fast.range_blocks(io.BytesIO(data), start, end, None))
            mine = []
            for block, offset in blocks:
                for line in read_fast.block_lines(block):
                    mine.append((line, offset))
                    offset += len(line) + 1
            want = _lines_starting_in(data, start, end)
            if start > 0:
                assert mine == want
            else:  # the first line's offset: after a byte-order mark; ids use line numbers from byte 0
                assert [m[0] for m in mine] == [w[0] for w in want]
            assert all(block.endswith(b"\n") for block, _ in blocks[:-1])
            got += [m[0] for m in mine]
        assert got == [line for line, _ in _lines_starting_in(data, 0, len(data) + 1)]


def _ranges(path, split_bytes: int, fast: bool) -> dict:
    docs, dead, count = [], [], 0
    for element in read.split_files((str(path), os.path.getsize(path)), split_bytes):
        got = read_outputs(element, fast=fast)
        docs += got["docs"]
        dead += got["dead"]
        count += got["count"]
    return {"docs": docs, "dead": dead, "count": count}


def test_jsonl_byte_ranges_read_fast_as_per_line(tmp_path, monkeypatch, fast_blocks):
    """Ranges of a file with bad lines here and there: each range's documents, dead letters (``file@offset``
    details) and count are the per-line code's; all ranges together are one read of the whole file."""
    monkeypatch.setattr(read_fast, "MIN_FAST_LINES", 4)
    lines = _good_jsonl(300, "r")
    for k, bad in enumerate(BAD_JSONL_LINES.values()):
        if len(bad) < 2000:
            lines.insert(7 * k, bad)
    path = tmp_path / "big.jsonl"
    path.write_bytes(BOM + b"\r\n".join(lines))
    whole = _ranges(path, 0, fast=False)
    for split_bytes in (0, 1, 997, 4096, 20000):
        fast, slow = _ranges(path, split_bytes, True), _ranges(path, split_bytes, False)
        assert fast == slow, split_bytes
        assert fast["docs"] == whole["docs"] and fast["count"] == whole["count"]
        assert [d["input"] for d in fast["dead"]] == [d["input"] for d in whole["dead"]]
    assert fast_blocks["jsonl"] > 10
    assert any("big.jsonl@" in d["detail"] for d in _ranges(path, 997, True)["dead"])


# --- generated corpora -----------------------------------------------------------------------------

_ids = st.one_of(st.text(max_size=8), st.integers(-10**20, 10**20), st.none(), st.booleans(),
                 st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))
_texts = st.one_of(st.text(max_size=30), st.text(max_size=30), st.integers(), st.none())
_extras = st.dictionaries(st.sampled_from(["e", "topic", "id2", "n"]),
                          st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.booleans())),
                          max_size=2)


@st.composite
def _jsonl_line(draw) -> bytes:
    kind = draw(st.sampled_from(["good", "good", "good", "good", "record", "bad", "bytes"]))
    if kind == "good":
        return json.dumps({"id": draw(st.text(min_size=1, max_size=8)) + "x", "text": draw(st.text(max_size=30)),
                           **draw(_extras)}, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "record":
        record = {"id": draw(_ids), "text": draw(_texts), **draw(_extras)}
        if draw(st.booleans()):
            del record[draw(st.sampled_from(["id", "text"]))]
        return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "bad":
        return draw(st.sampled_from([v for v in BAD_JSONL_LINES.values() if len(v) < 2000]))
    return draw(st.binary(max_size=20)).replace(b"\n", b"")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_jsonl_line(), max_size=60), final=st.booleans(), min_lines=st.sampled_from([1, 2, 16]))
def test_generated_jsonl_reads_fast_as_per_line(tmp_path, lines, final, min_lines):
    path = tmp_path / "gen.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final else b""))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(read_fast, "MIN_FAST_LINES", min_lines)
        assert_fast_reads_as_per_record(str(path))
        assert_fast_reads_as_per_record((str(path), os.path.getsize(path), 0, os.path.getsize(path) // 2))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
                                st.binary(max_size=20)), max_size=40).map(lambda ls: [x.replace(b"\n", b"")
                                                                                       for x in ls]),
       final=st.booleans(), ending=st.sampled_from([b"\n", b"\r\n"]))
def test_generated_text_reads_fast_as_per_line(tmp_path, lines, final, ending):
    path = tmp_path / "gen.txt"
    path.write_bytes(ending.join(lines) + (ending if final else b""))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(read_fast, "MIN_FAST_LINES", 1)
        assert_fast_reads_as_per_record(str(path))


CSV_CASES = {
    "plain": b"id,text\na,b\n",
    "quoted": b'id,text\na,"b, c"\n',
    "quoted newline": b'id,text\na,"b\nc"\n',
    "quoted crlf": b'id,text\r\na,"b\r\nc"\r\n',
    "quoted lone cr": b'id,text\na,"b\rc"\n',
    "text after a closing quote": b'id,text\na,"ab"cd\n',
    "quote inside a field": b'id,text\na,ab"cd\n',
    "quote inside then a quoted newline": b'id,text\na"b,"c\nd"\n',
    "lone cr ends records": b"id,text\ra,b\rc,d\n",
    "whitespace line": b"id,text\na,b\n \nc,d\n",
    "empty lines": b"id,text\na,b\n\n\r\n\r\rc,d\n",
    "extra field": b"id,text\na,b,c\n",
    "missing field": b"id,text\na\n",
    "duplicate header": b"id,text,text\na,b,c\n",
    "duplicate other header": b"x,id,x,text\n1,a,2,b\n",
    "unterminated quote": b'id,text\na,"bc\nd,e\n',
    "nul": b"id,text\na,b\x00c\n",
    "empty text": b"id,text\na,\n",
    "quoted empty": b'id,text\na,""\n',
    "spaces and quotes": b'id,text\n a , "b" \n',
    "doubled quotes": b'id,text\na,"say ""hi"""\n',
    "null-looking values": b"id,text\nNULL,NA\n",
    "space after a closing quote": b'id,text\na,"b" \n',
    "empty id": b"id,text\n,b\n",
    "blank id": b"id,text\n  ,b\n",
    "invalid utf8": b"id,text\na,caf\xe9\n",
    "invalid utf8 other field": b"id,text,x\na,b,\xff\n",
    "quoted header": b'"id","text"\na,b\n',
    "header without id": b"key,text\na,b\n",
    "header only": b"id,text",
    "header not utf8": b"id,t\xe9xt\nh1,fox\n",
    "no final newline": b"id,text\na,b",
    "final cr": b"id,text\na,b\r",
    "quote at the end of the file": b'id,text\na,"b"',
    "big field": b"id,text\nc1," + b"fox " * 50000 + b"\nc2,dog\n",
}


@pytest.mark.parametrize("chunk", [3, 1 << 20])
@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_reads_fast_as_per_record(tmp_path, monkeypatch, fast_blocks, case, chunk):
    """Each case alone, and between good rows (read in chunks of 3 bytes too: records cut everywhere)."""
    monkeypatch.setattr(read_fast, "CHUNK_BYTES", chunk)
    data = CSV_CASES[case]
    header, _, body = data.partition(b"\n")
    good = b"".join(b"g%d,good row %d\n" % (i, i) for i in range(20))
    path = tmp_path / "c.csv"
    for variant in (data, header + b"\n" + good + body if header == b"id,text" else data):
        path.write_bytes(variant)
        assert_fast_reads_as_per_record(str(path))
    if header == b"id,text" and body and chunk == 3:
        assert fast_blocks["csv"] >= 1, "the good rows before the case, in blocks of their own, went fast"


_csv_field = st.one_of(st.text(max_size=12),
                       st.sampled_from(["", " ", '"', '""', "a\nb", "a\r\nb", "a\rb", ",", "\ud800"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_csv_field, min_size=1, max_size=3), max_size=20),
       quoting=st.sampled_from([0, 1, 3]), junk=st.lists(st.binary(max_size=8), max_size=2),
       ending=st.sampled_from(["\n", "\r\n", "\r"]), chunk=st.sampled_from([5, 64, 1 << 20]))
def test_generated_csv_reads_fast_as_per_record(tmp_path, rows, quoting, junk, ending, chunk):
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=quoting, lineterminator=ending)  # minimal, all, none (escaped)
    writer.writerow(["id", "text"])
    try:
        writer.writerows(rows)
    except csv.Error:  # QUOTE_NONE without an escape character
        return
    data = buffer.getvalue().encode("utf-8", "surrogatepass")
    for piece in junk:
        at = len(data) // 2
        data = data[:at] + piece + data[at:]
    path = tmp_path / "gen.csv"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(read_fast, "CHUNK_BYTES", chunk)
        assert_fast_reads_as_per_record(str(path))


@settings(max_examples=3000, deadline=None)
@given(data=st.lists(st.sampled_from([bytes([i]) for i in range(256)] + [
    "é".encode(), "中".encode(), "😀".encode(), b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf4\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xf0\x80\x80\x80",
    b"\xf0\x90\x80\x80", b"\xef\xbb\xbf"]), max_size=8).map(b"".join))
def test_block_utf8_check_agrees_with_python_decode(data):
    try:
        data.decode("utf-8")
        python = True
    except UnicodeDecodeError:
        python = False
    assert read_fast._utf8(data) == python


def test_well_formed_csv_with_quoted_lines_is_read_fast(tmp_path, fast_blocks):
    import csv

    rows = [(f"q{i}", f'line one, "quoted"\nline {i}\r\nend') for i in range(200)]
    path = tmp_path / "q.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "other"])
        writer.writerows((i, t, "x") for i, t in rows)
    got = assert_fast_reads_as_per_record(str(path))
    assert got["docs"] == rows
    assert fast_blocks["csv"] == 1


@pytest.mark.parametrize("bad", [b'{"id": "x", "text": 1}', b'{"id": "x"}', b'{"id": " ", "text": "a"}',
                                 b'{"id": "x", "text": "a", "text": "b"}', b"[1]", b'{"id": 1.5, "text": "a"}'])
@pytest.mark.parametrize("every", [1, 2, 97])
def test_jsonl_bad_lines_here_and_there_read_as_per_line(tmp_path, fast_blocks, bad, every):
    """Bad lines every line, every other line (thousands in one block: no deep recursion) and now and
    then: the good lines between still go fast, and everything reads as the per-line code reads it."""
    lines = [bad if i % every == 0 else line for i, line in enumerate(_good_jsonl(3000, "m"))]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = assert_fast_reads_as_per_record(str(path))
    assert len(got["docs"]) + len(got["dead"]) == got["count"]
    if every > 1:
        assert fast_blocks["jsonl"] >= 1
