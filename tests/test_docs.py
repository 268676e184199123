"""The README and docs/ agree with the code (issue 21): ``--help`` and docs/input.md list the same
formats and the compressions transforms/read.py decompresses; the usage line, ``--help``, docs/flags.md
and the README's recipe require the same flags; the README's two commands are the ones that work;
every link resolves; and ``inspect`` prints no TensorFlow start-up line, and the lines the README
quotes from it, on the Bi-LSTM -> LSTM model the README describes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline.options import job_parser
from transforms.read import COMPRESSED

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md")}


def _help_of(flag: str) -> str:
    action = next(a for a in job_parser()._actions if f"--{flag}" in a.option_strings)
    return " ".join(action.help.split())


def _flags_in(text: str) -> set[str]:
    return set(re.findall(r"--(\w+)", text))


def test_help_and_docs_list_the_compressions_the_reader_decompresses():
    listed = re.search(r"Compressed files \(([.\w/]+) after", _help_of("input")).group(1).split("/")
    assert listed == list(COMPRESSED)
    line = next(line for line in DOCS["input.md"].splitlines() if line.startswith("Compressed files"))
    assert re.findall(r"`(\.\w+)`", line) == list(COMPRESSED)


def test_help_and_docs_list_the_same_formats():
    from transforms.read import file_format

    in_help = re.findall(r"(\.\w+(?:/\.\w+)*)[:;] ", _help_of("input"))
    in_docs = [m for line in DOCS["input.md"].split("## Formats", 1)[1].split("\nCompressed", 1)[0].splitlines()
               if line.startswith("- `.") for m in re.findall(r"`(\.\w+)`", line.split(":", 1)[0])]
    help_suffixes = [s for group in in_help for s in group.split("/")]
    assert help_suffixes == in_docs == [".jsonl", ".json", ".ndjson", ".csv", ".parquet"]
    assert [file_format("a" + s) for s in in_docs] == ["jsonl"] * 3 + ["csv", "parquet"]
    assert file_format("a.txt") == "text" and "anything else: plain text" in _help_of("input")


def test_usage_help_docs_and_readme_require_the_same_flags():
    usage = job_parser().format_usage()
    unbracketed = _flags_in(re.sub(r"\[[^\]]*\]", "", usage))
    bracketed = _flags_in("".join(re.findall(r"\[[^\]]*\]", usage)))
    required_help = {a.dest for a in job_parser()._actions if (a.help or "").startswith("Required")}
    docs_line = next(line for line in DOCS["flags.md"].split("\n\n") if line.startswith("Required:"))
    in_docs = _flags_in(docs_line.split(";", 1)[0])
    assert unbracketed == required_help == in_docs == {"input", "model", "tokenizer", "output", "truncating"}
    assert bracketed == {"padding"}
    recipe = README[README.index("## Your own model"):].split("```")[1]
    job = recipe[recipe.index("python -m beam_pipeline --input"):]
    assert required_help <= _flags_in(job)


def test_readme_keeps_the_two_commands():
    assert "\npip install -e . && python -m beam_pipeline\n" in README
    assert '\npip install -e ".[test]" && python -m pytest -q -p no:cacheprovider tests\n' in README


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", ["README.md", *sorted(f"docs/{n}" for n in DOCS)])
def test_every_relative_link_resolves(name):
    path = REPO / name
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{name}: {target}"


def test_readme_moves_every_reference_table_to_docs():
    assert not re.search(r"^\|", README, re.M), "a table in the README"
    assert len(README.encode()) < 8000


# --- inspect on the README's Bi-LSTM -> LSTM model, as a user runs it -----------------------------

_BUILD = """
import keras, sys
model = keras.Sequential([keras.Input((100,), dtype="int32"), keras.layers.Embedding(5000, 64, mask_zero=True),
                          keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True)),
                          keras.layers.LSTM(32), keras.layers.Dense(1, activation="sigmoid")])
model.save(sys.argv[1])
"""
# What TensorFlow, absl, CUDA and Beam print when they start, unless hidden.
NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|cuInit|cpu_feature_guard|This TensorFlow binary"
                   r"|WARNING:root|apitools", re.M | re.I)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def bilstm_inspected(tmp_path_factory) -> subprocess.CompletedProcess:
    """A Bi-LSTM -> LSTM model built in a fresh process (Keras' layer names as a user gets them), then
    ``python -m beam_pipeline.inspect`` on it at the default log level."""
    from beam_pipeline.demo import fit_tokenizer_json, sample_corpus

    folder = tmp_path_factory.mktemp("bilstm")
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(fit_tokenizer_json([d["text"] for d in sample_corpus(100)], num_words=5000))
    subprocess.run([sys.executable, "-c", _BUILD, str(folder / "model.keras")], check=True, env=_env(),
                   capture_output=True, timeout=300)
    return subprocess.run([sys.executable, "-m", "beam_pipeline.inspect", "--model", str(folder / "model.keras"),
                           "--tokenizer", str(tokenizer)], capture_output=True, text=True, env=_env(), timeout=300)


def test_inspect_prints_no_start_up_noise_at_the_default_log_level(bilstm_inspected):
    assert bilstm_inspected.returncode == 0, bilstm_inspected.stderr
    assert not NOISE.search(bilstm_inspected.stdout + bilstm_inspected.stderr), bilstm_inspected.stderr
    assert bilstm_inspected.stderr == ""


def test_readme_quotes_inspects_real_output_and_uses_its_layer(bilstm_inspected):
    recipe = README[README.index("## Your own model"):].split("```")[1]
    quoted = [line.split("#", 1)[1].strip() for line in recipe.splitlines() if line.startswith("#   ")]
    assert quoted and all(line in bilstm_inspected.stdout.splitlines() for line in map(str.strip, quoted) if line), \
        bilstm_inspected.stdout
    assert "--layer lstm_1" in recipe and "2:lstm_1" in bilstm_inspected.stdout


def test_inspect_log_level_info_shows_the_start_up_lines(bilstm_inspected, tmp_path):
    """The same run at ``--log_level info`` shows them: the default is what hides them."""
    model = re.search(r"^model (\S+) ", bilstm_inspected.stdout, re.M).group(1)
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.inspect", "--model", model, "--log_level", "info"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0 and NOISE.search(done.stderr), done.stderr
