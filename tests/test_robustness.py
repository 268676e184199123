"""Nothing lost, nothing unsafe: dead letters, accounting, clear configuration errors, safe loading."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline.options import ConfigError, resolve
from tests import helpers
from transforms.read import ReadRecords

GOOD = "the rocket launch was a new mission for the crew"


def _error_lines(prefix) -> list[dict]:
    lines = []
    for path in sorted(glob.glob(f"{prefix}-errors-*-of-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines += [json.loads(line) for line in f if line.strip()]
    return lines


def _mixed_corpus(folder) -> tuple[list[str], int, dict]:
    """Files in every format with every kind of bad record; returns (paths, records, expected reasons)."""
    jsonl = folder / "mixed.jsonl"
    lines = [
        json.dumps({"id": "ok-1", "text": GOOD}).encode(),
        json.dumps({"id": 7, "text": "an integer id is fine"}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}',
        b'{"id": "broken", "text": ',
        b'["not", "an", "object"]',
        json.dumps({"text": GOOD}).encode(),
        json.dumps({"id": "  ", "text": GOOD}).encode(),
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "number-text", "text": 42}).encode(),
        json.dumps({"id": "list-text", "text": ["a", "b"]}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "spaces", "text": "  \t "}).encode(),
        json.dumps({"id": "punctuation-only", "text": "!!! ??? ... ;;"}).encode(),
        json.dumps({"id": "very-long", "text": " ".join([GOOD] * 20000)}).encode(),
        json.dumps({"id": "dup", "text": GOOD}).encode(),
        json.dumps({"id": "dup", "text": "another text with the same id"}).encode(),
        json.dumps({"id": "controls", "text": "nul\x00 bell\x07 esc\x1b the crew \u2028 launch"}).encode(),
        b"",  # blank lines are not records
        json.dumps({"id": "dict-id", "text": GOOD, "nested": {"id": 1}}).encode(),
        json.dumps({"id": {"x": 1}, "text": GOOD}).encode(),
    ]
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    text = folder / "mixed.txt"
    text.write_bytes(b"first line about the rocket\n\nbad \xc3\x28 bytes\nnul \x00 inside the mission\r\nlast line")
    csv = folder / "mixed.csv"
    csv.write_bytes(b'id,text\nc1,"a quoted, multi\nline text about the crew"\nc2,caf\xe9\nc3,\n')
    parquet = folder / "mixed.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2", None], "text": [GOOD, None, GOOD]}), parquet)
    expected = {
        "invalid_utf8": 3, "invalid_json": 2, "missing_id": 3, "missing_text": 2, "non_string_text": 2,
        "invalid_id": 1,
    }
    records = 19 + 5 + 3 + 3
    return [str(p) for p in (jsonl, text, csv, parquet)], records, expected


def test_every_record_is_written_or_dead_lettered(small_job, tmp_path):
    paths, records, expected = _mixed_corpus(tmp_path)
    out = tmp_path / "out" / "emb"
    summary = helpers.run_job(small_job.argv(paths, out))
    table = helpers.read_output(str(out))
    dead = _error_lines(out)
    assert summary["read"] == records
    assert summary["read"] == summary["embedded"] + summary["dead_lettered"]
    assert summary["accounted"]
    assert summary["errors_by_reason"] == expected
    assert table.num_rows == summary["embedded"] and len(dead) == summary["dead_lettered"]
    ids = table.column("doc_id").to_pylist()
    assert ids.count("dup") == 2, "duplicate ids are kept, one row per input record"
    assert {"ok-1", "7", "very-long", "controls", "mixed.txt:1", "mixed.txt:4", "mixed.txt:5", "c1", "p1"} <= set(ids)
    long_row = ids.index("very-long")
    assert table.column("num_tokens")[long_row].as_py() == 32, "long documents are truncated to maxlen"
    for letter in dead:
        assert letter["stage"] in ("read", "tokenize") and letter["reason"] in expected and letter["detail"]
        assert len(letter["input"]) <= 4096
    tokens = dict(zip(ids, table.column("num_tokens").to_pylist()))
    for no_token in ("empty", "spaces", "punctuation-only", "mixed.txt:2", "c3"):
        assert tokens[no_token] == 0, "a document with no token gets a row, with num_tokens 0"
    written = json.loads(open(f"{out}-summary.json", encoding="utf-8").read())
    assert written["read"] == records and written["errors_by_reason"] == expected


def test_plain_text_ids_are_file_name_and_line_number(small_job, tmp_path):
    corpus = helpers.write_text(tmp_path / "lines.txt", [GOOD, "second about the crew", GOOD])
    helpers.run_job(small_job.argv(corpus, tmp_path / "o"))
    table = helpers.read_output(str(tmp_path / "o"))
    assert sorted(table.column("doc_id").to_pylist()) == ["lines.txt:1", "lines.txt:2", "lines.txt:3"]


@pytest.mark.parametrize("data", [b"a\nb", b"\na", b"a\n\n", b"\xef\xbb\xbfa\nb"])
def test_files_of_a_few_bytes_are_split_into_lines_too(tmp_path, data):
    # The reader reads the first 3 bytes apart (a byte-order mark?): a file no longer than that
    # was once given as one line, "a\nb" as one document instead of two.
    path = tmp_path / "tiny.txt"
    path.write_bytes(data)
    outputs = helpers.reader_records(ReadRecords("id", "text").process(str(path)))
    docs = [out for out in outputs[:-1] if isinstance(out, tuple)]
    lines = data.removeprefix(b"\xef\xbb\xbf").decode().split("\n")
    if lines[-1] == "":
        lines.pop()
    assert [text for _, text in docs] == lines
    assert [doc_id for doc_id, _ in docs] == [f"tiny.txt:{k}" for k in range(1, len(lines) + 1)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["txt", "jsonl", "csv"]))
def test_reader_never_raises_on_arbitrary_bytes(tmp_path, data, fmt):
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(data)
    outputs = helpers.reader_records(ReadRecords("id", "text").process(str(path)))
    counted = outputs.pop()
    assert counted.tag == "counts" and counted.value == len(outputs)
    for out in outputs:
        if isinstance(out, tuple):
            doc_id, text = out
            assert isinstance(doc_id, str) and doc_id and isinstance(text, str)
        else:
            assert out.tag == "errors" and out.value["reason"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_reader_handles_arbitrary_unicode_json_records(tmp_path, texts):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "text": t}) for i, t in enumerate(texts)), encoding="utf-8")
    outputs = helpers.reader_records(ReadRecords("id", "text").process(str(path)))[:-1]
    assert len(outputs) == len(texts)
    for (doc_id, text), out in zip(enumerate(texts), outputs):
        assert out == (str(doc_id), text), "an empty or whitespace text is a document too"


# --- Wrong configuration fails before any work starts, one message each -------------------------

def _resolve(small_job, tmp_path, *extra, model=None, tokenizer=None, inputs=None):
    corpus = inputs or helpers.write_text(tmp_path / "c.txt", [GOOD])
    argv = ["--input", corpus, "--model", model or small_job.model, "--tokenizer", tokenizer or small_job.tokenizer,
            "--output", str(tmp_path / "o"), *extra]
    return resolve(PipelineOptions([str(a) for a in argv]))


def test_layer_not_found_lists_the_recurrent_candidates(small_job, tmp_path):
    expected = r"layer 'nope' not found\. Recurrent layers \(index path:name path\): 2:lstm \(LSTM\)"
    with pytest.raises(ConfigError, match=expected):
        _resolve(small_job, tmp_path, "--layer", "nope")


def test_layer_that_is_not_recurrent_is_refused(small_job, tmp_path):
    with pytest.raises(ConfigError, match=r"'head' is a Dense, not a recurrent layer.*2:lstm"):
        _resolve(small_job, tmp_path, "--layer", "head")


def test_model_without_recurrent_layer_is_refused(tmp_path, small_job):
    inp = keras.Input((4,), dtype="int32")
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Embedding(100, 3)(inp))))
    model.save(tmp_path / "dense.keras")
    with pytest.raises(ConfigError, match="has no recurrent layer"):
        _resolve(small_job, tmp_path, model=str(tmp_path / "dense.keras"))


def test_tokenizer_ids_beyond_embedding_input_dim_are_refused(small_job, tmp_path):
    from beam_pipeline.demo import fit_tokenizer_json

    big = tmp_path / "big-tokenizer.json"
    big.write_text(fit_tokenizer_json([f"word{i} common" for i in range(300)], oov_token="<unk>"))
    with pytest.raises(ConfigError, match=r"ids up to \d+ but the model's Embedding has input_dim=100"):
        _resolve(small_job, tmp_path, tokenizer=str(big))


def test_maxlen_that_disagrees_with_fixed_input_length_is_refused(small_job, tmp_path):
    with pytest.raises(ConfigError, match="--maxlen 10 disagrees with the model's fixed input length 32"):
        _resolve(small_job, tmp_path, "--maxlen", "10")


@pytest.mark.parametrize("flag", ["model", "tokenizer", "input"])
def test_missing_files_are_named(small_job, tmp_path, flag):
    missing = str(tmp_path / f"missing-{flag}.bin")
    with pytest.raises(ConfigError, match=f"--{flag}.*{re.escape(missing)}"):
        _resolve(small_job, tmp_path, **{("inputs" if flag == "input" else flag): missing})


def test_prefix_holding_another_jobs_shards_is_refused_unless_overwrite(small_job, tmp_path):
    corpus = helpers.write_text(tmp_path / "c.txt", [GOOD, GOOD + " again"])
    out = tmp_path / "o"
    helpers.run_job(small_job.argv(corpus, out, "--mode", "final"))
    with pytest.raises(ConfigError, match=r"already holds the output of a different job \(.*o-summary.json; differs "
                                          r"in: mode, columns"):
        helpers.run_job(small_job.argv(corpus, out, "--mode", "sequence"))
    helpers.run_job(small_job.argv(corpus, out, "--mode", "sequence", "--overwrite"))
    assert helpers.read_output(str(out)).column_names == ["doc_id", "num_tokens", "vectors"]


def test_cli_prints_configuration_errors_and_exits_2(small_job, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "beam_pipeline", "--input", str(tmp_path / "none-*.txt"), "--model", small_job.model,
         "--tokenizer", small_job.tokenizer, "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: --input" in proc.stderr and "matches no file" in proc.stderr


# --- Safe loading -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lambda")
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(100, 4)(inp)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    model = keras.Model(inp, keras.layers.LSTM(3)(x))
    model.save(folder / "lambda.keras")
    return str(folder / "lambda.keras"), model


def test_lambda_model_is_refused_with_the_flag_that_allows_it(small_job, tmp_path, lambda_model):
    with pytest.raises(ConfigError, match="--unsafe_deserialization"):
        _resolve(small_job, tmp_path, model=lambda_model[0])


def test_lambda_model_runs_when_explicitly_allowed(small_job, tmp_path, lambda_model):
    path, model = lambda_model
    texts = [GOOD, "the crew"]
    corpus = helpers.write_text(tmp_path / "c.txt", texts)
    helpers.run_job(["--input", corpus, "--model", path, "--tokenizer", small_job.tokenizer,
                     "--output", tmp_path / "o", "--unsafe_deserialization", "--padding", "pre", "--truncating", "pre"])
    table = helpers.read_output(str(tmp_path / "o"))
    from beam_pipeline.keras_tokenizer import KerasTokenizer, pad_sequences

    tok = KerasTokenizer.from_json(open(small_job.tokenizer).read())
    want = model.predict(pad_sequences(tok.texts_to_sequences(texts), maxlen=32), verbose=0)
    got = dict(zip(table.column("doc_id").to_pylist(), table.column("vector").to_pylist()))
    np.testing.assert_allclose([got["c.txt:1"], got["c.txt:2"]], want, atol=1e-4)


def test_no_pickle_of_user_files_anywhere():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ("beam_pipeline", "transforms"):
        for path in glob.glob(os.path.join(root, folder, "**", "*.py"), recursive=True):
            source = open(path, encoding="utf-8").read()
            assert "import pickle" not in source and "pickle.load" not in source, path
            assert "safe_mode=False" not in source, path


@pytest.mark.parametrize("value,expected", [(None, True), ("true", True), ("false", False), ("1", True)])
def test_switches_take_a_value_as_flex_templates_pass_them(value, expected):
    from beam_pipeline.options import EmbeddingOptions

    argv = ["--overwrite"] if value is None else [f"--overwrite={value}", f"--unsafe_deserialization={value}"]
    options = PipelineOptions(argv).view_as(EmbeddingOptions)
    assert options.overwrite is expected
    assert options.unsafe_deserialization is (expected if value is not None else False)
