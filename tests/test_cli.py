"""The command line cannot mislead: help that lists every flag, unknown arguments refused, no
silent default for what changes the values, unreadable model files named, quiet start-up,
readable summary and progress lines, and a documented tokenizer recipe that works (issue 10)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.options import ConfigError, EmbeddingOptions, check_argv, job_parser, resolve
from tests import helpers

REPO = Path(__file__).resolve().parent.parent
GROUPS = ("input", "model", "preprocessing", "output", "performance")


def _cli(*args, env_extra: dict | None = None, command=None, timeout=300) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    cmd = command or [sys.executable, "-m", "beam_pipeline"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def _job_flags() -> list[str]:
    return [opt for action in job_parser()._actions for opt in action.option_strings if opt.startswith("--")
            and opt != "--help"]


@pytest.fixture(scope="module")
def unmasked_model(tmp_path_factory) -> str:
    """Embedding without mask -> LSTM: the padding timesteps go through the layer."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(100, 8)(inp)
    x = keras.layers.LSTM(6, name="lstm")(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    path = tmp_path_factory.mktemp("unmasked") / "unmasked.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return helpers.sample_jsonl(tmp_path_factory.mktemp("cli"), 40, seed=4)[0]


# --- 1. help ------------------------------------------------------------------------------------

def test_help_lists_every_job_flag_with_default_grouped_and_names_the_program():
    proc = _cli("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("usage: python -m beam_pipeline ")
    for flag in _job_flags():
        assert re.search(rf"^\s+{re.escape(flag)}\b", text, re.M), f"{flag} missing from --help"
    headers = [text.index(f"\n{group}:\n") for group in GROUPS]
    assert headers == sorted(headers), "groups input, model, preprocessing, output, performance in that order"
    assert "(default: 512)" in text and "(default: zstd)" in text and "(default: 32)" in text
    assert "Any Apache Beam pipeline option is also accepted" in text
    model_section = text[text.index("\nmodel:\n"):text.index("\npreprocessing:\n")]
    assert "--layer" in model_section and "--padding" not in model_section


def test_console_script_help_names_the_console_script():
    script = shutil.which("beam-recurrent-embeddings")
    assert script, "pip install -e . installs the beam-recurrent-embeddings console script"
    proc = _cli("--help", command=[script])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: beam-recurrent-embeddings ")
    assert all(flag in proc.stdout for flag in _job_flags())


# --- 2. unknown arguments -----------------------------------------------------------------------

def test_misspelled_flag_stops_the_job_before_any_work_with_beams_suggestion(small_job, corpus, tmp_path):
    out = tmp_path / "out" / "emb"
    proc = _cli("--input", corpus, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
                "--output", out, "--truncating", "pre", "--paddding", "post")
    assert proc.returncode == 2
    assert "--paddding: did you mean --padding?" in proc.stderr
    assert "unrecognized arguments: --paddding post" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was written"


def test_any_beam_pipeline_option_is_accepted_and_anything_else_refused():
    check_argv(["--input", "x", "--runner=DirectRunner", "--direct_num_workers", "2", "--project", "p",
                "--flink_master=host:8081", "--experiments=a", "--experiments=b", "--sdk_container_image", "i"])
    with pytest.raises(SystemExit) as refused:
        check_argv(["--input", "x", "--temp_locaton", "gs://b/tmp"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit):
        check_argv(["--input", "x", "--mode", "final", "stray"])


# --- 3. no silent default for padding / truncating ----------------------------------------------

def test_unmasked_model_without_padding_is_refused_naming_the_keras_defaults(unmasked_model, small_job, corpus,
                                                                               tmp_path):
    proc = _cli("--input", corpus, "--model", unmasked_model, "--tokenizer", small_job.tokenizer,
                "--output", tmp_path / "emb", "--truncating", "pre")
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error and "--padding is required" in error[0] and "has no mask" in error[0]
    assert "pad_sequences defaults to padding='pre', truncating='pre'" in error[0]
    assert not list(tmp_path.iterdir()), "nothing was written"


def _resolve(small_job, corpus, tmp_path, *flags, model=None):
    argv = ["--input", corpus, "--model", model or small_job.model, "--tokenizer", small_job.tokenizer,
            "--output", str(tmp_path / "emb"), *flags]
    return resolve(PipelineOptions(argv))


def test_truncating_is_required_for_every_model_but_not_with_carry(small_job, unmasked_model, corpus, tmp_path):
    for model, flags in ((small_job.model, ()), (unmasked_model, ("--padding", "post"))):
        with pytest.raises(ConfigError, match="--truncating is required.*which tokens of a document longer"):
            _resolve(small_job, corpus, tmp_path, *flags, model=model)
    config = _resolve(small_job, corpus, tmp_path, "--long_docs", "carry")
    assert config.truncating is None and config.padding is None
    with pytest.raises(ConfigError, match="--padding and --truncating are required"):
        _resolve(small_job, corpus, tmp_path, model=unmasked_model)


def test_length_sorting_is_on_for_masked_and_unmasked_pre_models_only(small_job, unmasked_model, corpus, tmp_path):
    """auto sorts documents by length where it pays: masked models (batches trimmed to their longest) and
    unmasked ``pre`` ones (the engines that skip the padding prefix run like lengths together); not
    unmasked ``post`` (every padding step counts) nor ``--long_docs carry``; off never."""
    sides = ("--truncating", "pre")
    assert _resolve(small_job, corpus, tmp_path, *sides).length_bucketing
    assert _resolve(small_job, corpus, tmp_path, *sides, "--padding", "pre", model=unmasked_model).length_bucketing
    assert not _resolve(small_job, corpus, tmp_path, *sides, "--padding", "post", model=unmasked_model).length_bucketing
    assert not _resolve(small_job, corpus, tmp_path, *sides, "--padding", "pre", "--length_bucketing", "off",
                        model=unmasked_model).length_bucketing
    assert not _resolve(small_job, corpus, tmp_path, "--long_docs", "carry", "--padding", "pre",
                        model=unmasked_model).length_bucketing


def test_masked_model_may_omit_padding_and_gets_the_same_vectors(small_job, corpus, tmp_path):
    base = ["--input", corpus, "--model", small_job.model, "--tokenizer", small_job.tokenizer, "--truncating", "pre"]
    helpers.run_job([*base, "--output", tmp_path / "none"])
    helpers.run_job([*base, "--output", tmp_path / "post", "--padding", "post"])
    without, post = helpers.read_output(str(tmp_path / "none")), helpers.read_output(str(tmp_path / "post"))
    by_id = {d: v for d, v in zip(post.column("doc_id").to_pylist(), post.column("vector").to_pylist())}
    assert without.num_rows == post.num_rows == 40
    for doc_id, vector in zip(without.column("doc_id").to_pylist(), without.column("vector").to_pylist()):
        np.testing.assert_array_equal(vector, by_id[doc_id])
    meta = json.loads(without.schema.metadata[b"embedding_job"])
    assert meta["padding"] is None and meta["truncating"] == "pre"


def test_raw_text_model_needs_neither_side_and_refuses_pre(corpus, tmp_path):
    """Its TextVectorization pads and truncates at the end itself: the flags cannot change that."""
    import keras

    vectorizer = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=12)
    vectorizer.adapt(["the rocket launch", "a new recipe with garlic"])
    inp = keras.Input((1,), dtype="string")
    x = keras.layers.LSTM(4, name="lstm")(keras.layers.Embedding(50, 4, mask_zero=True)(vectorizer(inp)))
    path = tmp_path / "text.keras"
    keras.Model(inp, x).save(path)
    base = ["--input", corpus, "--model", str(path), "--output", str(tmp_path / "emb")]
    config = resolve(PipelineOptions(base))
    assert (config.padding, config.truncating) == ("post", "post")
    with pytest.raises(ConfigError, match="--truncating pre cannot apply.*TextVectorization pads and truncates"):
        resolve(PipelineOptions([*base, "--truncating", "pre"]))


def test_inspect_says_whether_masked_and_which_side_flags_matter(small_job, unmasked_model, capsys):
    from beam_pipeline.inspect import main

    assert main(["--model", small_job.model]) == 0
    masked = capsys.readouterr().out
    assert "masked: yes; --padding optional" in masked and "--truncating required" in masked
    assert main(["--model", unmasked_model, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["recurrent_layers"][0]
    assert entry["masked"] is False and entry["pad_flags"]["padding"].startswith("required: the model has no mask")


# --- 4. unreadable model files ------------------------------------------------------------------

def _truncated_keras(small_job, folder: Path) -> Path:
    data = Path(small_job.model).read_bytes()
    path = folder / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_as_h5(_small_job, folder: Path) -> Path:
    path = folder / "model.h5"
    path.write_text("this is not HDF5\n")
    return path


@pytest.mark.parametrize("make,says", [
    (_truncated_keras, "not a complete .keras archive"),
    (_text_as_h5, "not an HDF5 file"),
])
def test_unreadable_model_file_is_an_error_line_saying_what_is_wrong(small_job, corpus, tmp_path, make, says):
    bad = make(small_job, tmp_path)
    proc = _cli("--input", corpus, "--model", bad, "--tokenizer", small_job.tokenizer,
                "--output", tmp_path / "out" / "emb", "--padding", "pre", "--truncating", "pre")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line for line in proc.stderr.strip().splitlines()
                                                if line.startswith("error: ")], "one error line, no traceback"
    assert proc.stderr.startswith(f"error: --model {bad}: ") and says in proc.stderr
    assert not (tmp_path / "out").exists()


# --- 8. what the user sees ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def normal_run(small_job, tmp_path_factory) -> subprocess.CompletedProcess:
    """A whole run from the command line, one record of the corpus not JSON."""
    folder = tmp_path_factory.mktemp("normal_run")
    corpus = folder / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "the rocket launch"}) + "\n{broken\n"
                      + json.dumps({"id": "b", "text": "a new recipe"}) + "\n")
    return _cli("--input", corpus, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
                "--output", folder / "emb", "--padding", "pre", "--truncating", "pre")


def test_normal_run_hides_tensorflow_and_beam_start_up_noise(normal_run):
    assert normal_run.returncode == 0, normal_run.stderr
    noise = [line for line in normal_run.stderr.splitlines()
             if not line.startswith(("INFO beam_pipeline", "warning: "))]
    assert noise == [], "only the job's own lines on stderr"
    assert "warning: 1 of 3 records dead-lettered (no --max_dead_letters limit)" in normal_run.stderr


def test_log_level_shows_the_start_up_messages(small_job, tmp_path):
    corpus = helpers.write_text(tmp_path / "c.txt", ["the rocket"])
    args = ("--input", corpus, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
            "--output", tmp_path / "o", "--layer", "no_such_layer")  # refused once the model is loaded
    quiet, loud = _cli(*args), _cli(*args, "--log_level", "info")
    assert quiet.returncode == loud.returncode == 2
    assert quiet.stderr.strip().splitlines() == loud.stderr.strip().splitlines()[-1:]
    assert quiet.stderr.startswith("error: ") and "no_such_layer" in quiet.stderr
    assert len(loud.stderr.strip().splitlines()) > 1, "TensorFlow's start-up lines are shown with --log_level info"


def test_dead_letter_counts_print_as_reason_lines(normal_run):
    lines = normal_run.stdout.splitlines()
    assert "documents read 3: embedded 2, dead-lettered 1" in lines
    assert "  invalid_json: 1" in lines
    assert "{" not in normal_run.stdout.split("columns:")[0], "no Python dict"


def test_progress_line_shows_share_of_input_read_and_time_left(caplog):
    import logging

    from transforms.read import InputBytes
    from transforms.write import Progress

    read = InputBytes()
    read.start("run", 1000)
    read.add(250)
    progress = Progress(every_s=0.0, input_bytes=read)
    with caplog.at_level(logging.INFO, logger="beam_pipeline.progress"):
        for _ in range(256):
            progress.tick()
    line = caplog.records[-1].getMessage()
    assert re.fullmatch(r"progress: 256 documents embedded, \d+ docs/s, 25% of the input read, about \d+s left",
                        line), line


def test_reading_an_uncompressed_file_counts_its_bytes_as_read(tmp_path):
    from transforms import read

    path = helpers.write_jsonl(tmp_path / "c.jsonl", [(f"d{i}", "some words here") for i in range(50)])
    size = os.path.getsize(path)
    reader = read.ReadRecords("id", "text", total_bytes=2 * size)
    reader.setup()
    records = helpers.reader_records(reader.process((path, size)))
    assert len([r for r in records if isinstance(r, tuple)]) == 50
    assert read.INPUT_BYTES.share() == 0.5


# --- 9. docs/models.md: making the tokenizer JSON -------------------------------------------------------

def test_readme_tokenizer_recipe_writes_json_the_job_tokenizes_with_exactly(tmp_path, monkeypatch):
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    readme = (REPO / "docs" / "models.md").read_text()
    section = readme[readme.index("## Making the tokenizer JSON"):]
    recipe = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    texts = [t for _, t in helpers.corpus(30, seed=9)]
    monkeypatch.chdir(tmp_path)
    exec(compile(recipe, "docs/models.md", "exec"), {"texts": texts})
    ours = KerasTokenizer.from_json((tmp_path / "tokenizer.json").read_text())
    legacy = helpers.legacy_tokenizer(texts, num_words=20000, oov_token="<unk>")
    probe = texts + ["words never seen before", "The QUICK fox!"]
    assert ours.texts_to_sequences(probe) == legacy.texts_to_sequences(probe)
    from beam_pipeline.demo import fit_tokenizer_json  # the README's way without tf-keras

    without_tf_keras = KerasTokenizer.from_json(fit_tokenizer_json(texts, num_words=20000, oov_token="<unk>"))
    assert without_tf_keras.texts_to_sequences(probe) == legacy.texts_to_sequences(probe)


def test_options_class_is_the_one_the_help_lists():
    parsed = EmbeddingOptions(["--padding", "post"]).get_all_options(current_only=True)
    assert {f"--{name}" for name in parsed} == set(_job_flags())
