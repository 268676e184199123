"""``--previous`` under attack: a stateful, property-based differential test (Hypothesis
``RuleBasedStateMachine``) and one plain test per kind of damage.

Night after night the corpus changes (documents changed, added, removed, repeated, emptied), flags change
(those that decide values: ``--dtype``, ``--mode``, ``--maxlen``, ``--truncating``; and those that do not:
``--batch_size``, ``--num_shards``, ``--compression``), the model changes (other weights; a ``--model_fn``
builder module whose code changed), the previous output is damaged (a shard deleted, truncated, emptied,
bytes flipped in a data page or the footer, columns reordered, a column dropped, footer metadata stripped;
the summary truncated or not JSON), runs are killed (SIGKILL) and rerun, prefixes are spelled differently
and runs start from other working directories. After every run the output must equal a fresh full run
over the same input and flags (the golden values: the job's simplest path, itself checked against Keras
elsewhere); rows that were reused must be bit-equal to the previous output's; a damaged shard's rows are
recomputed and the summary's ``previous`` names the shard; a damaged previous summary is refused (exit 2,
the message names it, nothing committed); a run never changes its ``--previous`` output.

Outputs are read only through their ``PREFIX-summary.json`` (``output_files``, relative entries against
the summary's folder), and columns by name.

By default (CI) the state machine runs 6 derandomized examples of at most 6 steps (the module: ~2 min);
``ATTACK_EXAMPLES`` (and ``ATTACK_STEPS``) run it longer, on random sequences; ``ATTACK_SHRINK=1`` lets
Hypothesis shrink a failure (slow: every step is a Beam run).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from tests import helpers

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-5
EXAMPLES = int(os.environ.get("ATTACK_EXAMPLES", "6"))
STEPS = int(os.environ.get("ATTACK_STEPS", "6"))
LONG = "ATTACK_EXAMPLES" in os.environ  # a long local run explores new sequences; CI's is the same every time
SHRINK = os.environ.get("ATTACK_SHRINK", "") not in ("", "0")
BUILDER_MODULE = "attack_builder"
NOT_VALUES = ("doc_id", "num_tokens", "text_hash", "windows")
SHARD_DAMAGE = ("deleted", "truncated", "zero bytes", "flipped data page", "flipped footer", "columns reordered",
                "column dropped", "footer metadata stripped")
SUMMARY_DAMAGE = ("summary truncated", "summary not JSON")
BASE_FLAGS = {"dtype": "float32", "mode": "final", "maxlen": None, "truncating": "pre", "batch_size": 16,
              "num_shards": 2, "compression": "zstd", "join": "auto"}
VALUE_FLAGS = ("dtype", "mode", "maxlen", "truncating")
# The provenance fields docs/incremental.md says decide a value: a footer flip that changes one of them (or
# makes the footer's ``embedding_job`` unreadable) makes a shard unusable; one that changes another is retried.
DOCUMENTED_VALUE_FIELDS = ("model_sha256", "model_origin", "layer", "mode", "columns", "dtype", "maxlen", "padding",
                           "truncating", "long_docs", "input", "tokenizer_sha256", "engine", "engine_tolerance")

BUILDER = '''
import keras


def build():
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(100, 8, mask_zero=True, name="embedding")(inp)
    x = keras.layers.LSTM(6, activation="ACTIVATION", name="lstm")(x)
    return keras.Model(inp, keras.layers.Dense(1, name="head")(x))
'''


# --- rows, read through the summary only ---------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    doc_id: str
    text_hash: bytes
    num_tokens: int
    values: tuple  # ((column name, shape, float32 bytes), ...) by column name

    @property
    def key(self) -> tuple[str, bytes]:
        return self.doc_id, self.text_hash


def table_rows(table: pa.Table) -> list[Row]:
    """The rows of a table of the output's schema, the embedding columns by name (float16 widened to
    float32: exact, so bit-equality is kept)."""
    names = sorted(c for c in table.column_names if c not in NOT_VALUES)
    ids, hashes = table.column("doc_id").to_pylist(), table.column("text_hash").to_pylist()
    tokens = table.column("num_tokens").to_pylist()
    columns = {n: table.column(n).to_pylist() for n in names}
    rows = []
    for k in range(table.num_rows):
        values = []
        for n in names:
            a = np.asarray(columns[n][k], dtype=np.float32)
            values.append((n, a.shape, a.tobytes()))
        rows.append(Row(ids[k], hashes[k], tokens[k], tuple(values)))
    return rows


def listed_files(summary_file: str) -> list[str]:
    """``output_files`` of a summary: a relative entry resolves against the summary's own folder."""
    summary = json.loads(Path(summary_file).read_bytes())
    base = os.path.dirname(os.path.abspath(summary_file))
    return [p if p.startswith("gs://") or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
            for p in summary["output_files"]]


def summary_file(prefix: str) -> str:
    return f"{prefix}-summary.json"


def read_shards(prefix: str) -> dict[str, list[Row]]:
    """file name -> its rows, for every shard the prefix's summary lists."""
    out = {}
    for path in listed_files(summary_file(prefix)):
        assert os.path.exists(path), f"{summary_file(prefix)} lists {path}, which does not exist"
        out[os.path.basename(path)] = table_rows(pq.read_table(path))
    return out


def footer_reused(prefix: str) -> int:
    total = 0
    for path in listed_files(summary_file(prefix)):
        kv = pq.ParquetFile(path).metadata.metadata or {}
        total += json.loads(kv.get(b"embedding_engines", b"{}")).get("reused", 0)
    return total


def snapshot(prefix: str) -> dict[str, bytes]:
    """The prefix's files (``PREFIX-*``: shards, summary, dead letters), by name, with their bytes."""
    folder, name = os.path.split(prefix)
    return {n: Path(folder, n).read_bytes() for n in os.listdir(folder)
            if n.startswith(name + "-") and os.path.isfile(os.path.join(folder, n))}


def assert_untouched(prefix: str, before: dict[str, bytes], what: str) -> None:
    """Every file the prefix had is still there, byte for byte."""
    now = snapshot(prefix)
    changed = sorted(n for n in before if now.get(n) != before[n])
    assert not changed, f"{what}: changed or removed {changed}"


def assert_equals_full_run(got: list[Row], want: list[Row], what: str) -> None:
    """The same multiset of doc ids and of (id, text_hash); each row within ``ATOL`` of the full run's
    row with the same id and text_hash, with the same ``num_tokens`` and columns."""
    assert Counter(r.doc_id for r in got) == Counter(r.doc_id for r in want), f"{what}: doc_ids differ from a full run"
    assert Counter(r.key for r in got) == Counter(r.key for r in want), f"{what}: (id, text_hash) differ"
    by_key = {r.key: r for r in want}
    for r in got:
        ref = by_key[r.key]
        assert r.num_tokens == ref.num_tokens, f"{what}: {r.doc_id}: num_tokens {r.num_tokens} != {ref.num_tokens}"
        assert [v[:2] for v in r.values] == [v[:2] for v in ref.values], f"{what}: {r.doc_id}: columns/shapes"
        for (name, _, g), (_, _, w) in zip(r.values, ref.values):
            a, b = np.frombuffer(g, np.float32), np.frombuffer(w, np.float32)
            err = float(np.abs(a - b).max()) if a.size else 0.0
            assert np.allclose(a, b, atol=ATOL, rtol=0), (
                f"{what}: {r.doc_id} column {name}: max |difference| to a full run {err:.3g} > {ATOL}")


# --- the previous output and what was done to it ----------------------------------------------------------------

@dataclass
class Output:
    """A committed output, as the test last saw it whole, and the damage done to it since."""

    prefix: str  # absolute
    key: tuple  # (model, value flags): equal keys may share rows
    shards: dict[str, list[Row]]  # file name -> rows, as written
    damaged: dict[str, str] = field(default_factory=dict)  # file name -> damage: its rows must be recomputed
    reordered: set[str] = field(default_factory=set)  # usable: same values by name
    poisoned: set = field(default_factory=set)  # (key, values) a damaged file now holds that it did not
    summary_damaged: str | None = None
    listed: list[str] = field(default_factory=list)  # the shards its summary lists

    def rows(self) -> list[Row]:
        return [r for rows in self.shards.values() for r in rows]

    def usable_keys(self) -> set:
        return {r.key for name, rows in self.shards.items() if name not in self.damaged for r in rows}

    def paths(self) -> dict[str, str]:
        return {os.path.basename(p): p for p in self.listed}


def _rewrite(path: str, table: pa.Table, metadata: dict | None) -> None:
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="zstd", write_page_checksum=True)


def _file_metadata(path: str) -> dict:
    kv = dict(pq.ParquetFile(path).metadata.metadata or {})
    kv.pop(b"ARROW:schema", None)
    return kv


def _harm(path: str, pristine: list[Row], schema: pa.Schema) -> tuple[bool, set]:
    """Whether a damaged file differs from what it was for a reader (unreadable, page checksum failing,
    other rows, schema or provenance), and the (key, values) rows it now holds that it did not."""
    poisoned = set()
    try:  # what a reader without checksum verification gets: values that differ are poison
        f = pq.ParquetFile(path)
        start = 0
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            with contextlib.suppress(Exception):
                for before, now in zip(pristine[start:start + n], table_rows(f.read_row_group(g))):
                    if now != before:
                        poisoned.add((now.key, now.values))
            start += n
    except Exception:
        pass
    try:
        f = pq.ParquetFile(path, page_checksum_verification=True)
        rows, now = table_rows(f.read()), f.schema_arrow
    except Exception:
        return True, poisoned
    same = (rows == pristine and now.remove_metadata().equals(schema.remove_metadata())
            and _job_values(now) is not None and _job_values(now) == _job_values(schema))
    return not same, poisoned


def _job_values(schema: pa.Schema) -> dict | None:
    """The value-deciding fields of a file's ``embedding_job`` (None when it is missing or not JSON)."""
    try:
        job = json.loads((schema.metadata or {})[b"embedding_job"])
    except (KeyError, ValueError):
        return None
    return {k: job.get(k) for k in DOCUMENTED_VALUE_FIELDS} if isinstance(job, dict) else None


def _flip(path: str, rng: random.Random, where: str, pristine: list[Row], column: str | None = None) -> set:
    """Flips one byte of a column chunk (``data page``: a dictionary or data page of ``column``, or of a
    random column) or of the footer, again elsewhere while the flip changes nothing a reader sees; returns
    the poisoned rows."""
    original = Path(path).read_bytes()
    meta = pq.ParquetFile(path).metadata
    schema = pq.read_schema(path)
    footer = int.from_bytes(original[-8:-4], "little")
    for _ in range(40):
        data = bytearray(original)
        if where == "data page":
            group = meta.row_group(rng.randrange(meta.num_row_groups))
            chunk = group.column(rng.choice([i for i in range(meta.num_columns) if column is None
                                             or group.column(i).path_in_schema.split(".")[0] == column]))
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            pos = start + rng.randrange(chunk.total_compressed_size // 3, chunk.total_compressed_size)
        else:
            pos = len(data) - 8 - footer + rng.randrange(footer)
        data[pos] ^= rng.randrange(1, 256)
        Path(path).write_bytes(bytes(data))
        harmful, poisoned = _harm(path, pristine, schema)
        if harmful:
            return poisoned
    data = bytearray(original)
    data[-1] ^= 0xFF  # the magic: unreadable
    Path(path).write_bytes(bytes(data))
    return set()


def damage(out: Output, kind: str, rng: random.Random, name: str | None = None,
           column: str | None = None) -> str | None:
    """Damages ``out`` (``kind`` from ``SHARD_DAMAGE`` or ``SUMMARY_DAMAGE``; shard ``name``, or one at random;
    a flipped data page in ``column``, or in any); returns the file damaged."""
    if kind in SUMMARY_DAMAGE:
        path = summary_file(out.prefix)
        text = Path(path).read_bytes()
        Path(path).write_bytes(text[:rng.randrange(text.rindex(b"}"))] if kind == "summary truncated"
                               else b"\x00this is not JSON {")
        out.summary_damaged = kind
        return path
    free = sorted(n for n in out.shards if n not in out.damaged and n not in out.reordered)
    if name is None:
        if not free:
            return None
        name = rng.choice(free)
    path = out.paths()[name]
    size = os.path.getsize(path)
    if kind == "deleted":
        os.remove(path)
    elif kind == "truncated":
        Path(path).write_bytes(Path(path).read_bytes()[:rng.randrange(1, size)])
    elif kind == "zero bytes":
        Path(path).write_bytes(b"")
    elif kind in ("flipped data page", "flipped footer"):
        out.poisoned |= _flip(path, rng, kind.split(" ", 1)[1], out.shards[name], column)
    else:
        table = pq.read_table(path)
        kv = _file_metadata(path)
        if kind == "columns reordered":
            names = list(table.column_names)
            order = names[:]
            while order == names:
                rng.shuffle(order)
            _rewrite(path, table.select(order), kv)
            out.reordered.add(name)
            return path
        if kind == "column dropped":
            _rewrite(path, table.drop_columns([rng.choice(table.column_names)]), kv)
        elif kind == "footer metadata stripped":
            _rewrite(path, table, None)
        else:
            raise AssertionError(kind)
    out.damaged[name] = kind
    return path


# --- running the job ---------------------------------------------------------------------------------------------

@dataclass
class Models:
    base: str
    other: str
    var: str  # input length None: --maxlen decides it
    weights: str
    builders: dict[str, str]  # activation -> folder holding attack_builder.py


def _use_builder(models: Models, model: str) -> None:
    """Puts the ``model`` variant's builder module first on ``sys.path``, none other importable."""
    for folder in models.builders.values():
        while folder in sys.path:
            sys.path.remove(folder)
    sys.modules.pop(BUILDER_MODULE, None)
    if model in models.builders:
        sys.path.insert(0, models.builders[model])
    importlib.invalidate_caches()


def model_args(models: Models, model: str) -> list[str]:
    if model == "base":
        return ["--model", models.base]
    if model == "other":
        return ["--model", models.other]
    if model == "var":
        return ["--model", models.var]
    return ["--model", models.weights, "--model_fn", f"{BUILDER_MODULE}:build"]


def maxlen(model: str, flags: dict) -> int | None:
    """``--maxlen``: only the variable-length model takes one (the others have a fixed input length 32)."""
    return (flags["maxlen"] or 20) if model == "var" else None


def flag_args(model: str, flags: dict) -> list[str]:
    out = ["--padding", "pre", "--truncating", flags["truncating"], "--dtype", flags["dtype"], "--mode",
           flags["mode"], "--batch_size", str(flags["batch_size"]), "--num_shards", str(flags["num_shards"]),
           "--compression", flags["compression"], "--previous_join", flags.get("join", "auto")]
    return out + (["--maxlen", str(maxlen(model, flags))] if model == "var" else [])


def value_key(model: str, flags: dict) -> tuple:
    return (model, *(maxlen(model, flags) if k == "maxlen" else flags[k] for k in VALUE_FLAGS))


def run_main(argv: list[str], cwd: str | None = None) -> tuple[int, str]:
    """``python -m beam_pipeline ARGV``, in this process: (exit status, stderr); an exception that
    escapes ``main`` is exit status 1, as for the command."""
    from beam_pipeline.__main__ import main

    err, old_argv, old_cwd = io.StringIO(), sys.argv, os.getcwd()
    sys.argv = ["beam_pipeline", *map(str, argv)]
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, err.getvalue()


def spell(path: str, style: str, cwd: str) -> str:
    """One prefix, spelled several ways: absolute, relative to ``cwd``, ``dir/./name``, ``dir//name``."""
    folder, name = os.path.split(path)
    return {"abs": path, "rel": os.path.relpath(path, cwd), "dot": f"{folder}/./{name}",
            "dslash": f"{folder}//{name}"}[style]


class Harness:
    """Runs nights and checks them against full runs (cached per corpus, model and value flags)."""

    def __init__(self, job, models: Models, root: Path, refs: dict):
        self.job, self.models, self.root, self.refs = job, models, root, refs
        self.count = 0
        (root / "inputs").mkdir(parents=True, exist_ok=True)
        (root / "elsewhere" / "deeper").mkdir(parents=True, exist_ok=True)

    def corpus_file(self, corpus: list[tuple[str, str]]) -> str:
        self.count += 1
        return helpers.write_jsonl(self.root / "inputs" / f"corpus{self.count}.jsonl", corpus)

    def argv(self, corpus_path: str, model: str, flags: dict, output: str, previous: str | None = None,
             overwrite: bool = False) -> list[str]:
        argv = ["--input", corpus_path, *model_args(self.models, model), "--tokenizer", self.job.tokenizer,
                "--output", output, *flag_args(model, flags)]
        return argv + (["--previous", previous] if previous else []) + (["--overwrite"] if overwrite else [])

    def new_prefix(self) -> str:
        self.count += 1
        folder = self.root / f"night{self.count}"
        folder.mkdir()
        return str(folder / f"n{self.count}")

    def reference(self, corpus: list[tuple[str, str]], model: str, flags: dict) -> list[Row]:
        """A fresh full run (no ``--previous``) over the corpus with these flags: the golden rows."""
        key = (tuple(corpus), value_key(model, flags))
        if key not in self.refs:
            folder = Path(tempfile.mkdtemp(prefix="ref", dir=self.refs["__root__"]))
            path = helpers.write_jsonl(folder / "corpus.jsonl", corpus)
            _use_builder(self.models, model)
            code, err = run_main(self.argv(path, model, flags | {"batch_size": 16, "num_shards": 2},
                                           str(folder / "full")))
            assert code == 0, f"the full run itself failed ({code}): {err[-3000:]}"
            self.refs[key] = [r for rows in read_shards(str(folder / "full")).values() for r in rows]
        return self.refs[key]

    def full(self, corpus, model: str, flags: dict) -> Output:
        prefix = self.new_prefix()
        _use_builder(self.models, model)
        code, err = run_main(self.argv(self.corpus_file(corpus), model, flags, prefix))
        assert code == 0, f"a full run failed ({code}): {err[-3000:]}"
        out = self.committed(prefix, model, flags)
        assert_equals_full_run(out.rows(), self.reference(corpus, model, flags), "full run")
        return out

    def committed(self, prefix: str, model: str, flags: dict) -> Output:
        return Output(prefix, value_key(model, flags), read_shards(prefix), listed=listed_files(summary_file(prefix)))

    def night(self, prev: Output, corpus, model: str, flags: dict, same: bool = False, prev_style: str = "abs",
              out_style: str = "abs", cwd: str | None = None) -> Output | None:
        """A run with ``--previous``; checks it; returns the new output (None when it was refused)."""
        cwd = cwd or str(self.root)
        out = prev.prefix if same else self.new_prefix()
        overwrite = same and (prev.key != value_key(model, flags) or bool(prev.damaged))
        argv = self.argv(self.corpus_file(corpus), model, flags, spell(out, out_style, cwd),
                         spell(prev.prefix, prev_style, cwd), overwrite)
        before = snapshot(prev.prefix)
        _use_builder(self.models, model)
        code, err = run_main(argv, cwd)
        what = f"--previous {prev.prefix} ({'same as' if same else 'not'} --output)"
        if prev.summary_damaged:
            name = os.path.basename(summary_file(prev.prefix))
            assert code == 2, f"{what}, {prev.summary_damaged}: exit {code}, not 2 (refused): {err[-2000:]}"
            assert name in err, f"{what}, {prev.summary_damaged}: the message does not name {name}: {err[-2000:]}"
            if not same:
                assert not os.path.exists(summary_file(out)), f"{what}: a refused run committed a summary"
            assert_untouched(prev.prefix, before, f"{what}: a refused run changed the previous output")
            return None
        assert code == 0, f"{what}, damaged {prev.damaged}: exit {code}, not 0: {err[-3000:]}"
        if not same:
            assert_untouched(prev.prefix, before, f"{what}: the run changed its --previous output's files")
        result = self.committed(out, model, flags)
        self.check(result, prev, corpus, what)
        return result

    def check(self, result: Output, prev: Output, corpus, what: str) -> None:
        """``result`` (a run with ``--previous`` = ``prev``) equals a full run; its reused rows are bit-equal
        to ``prev``'s, and their number is right; damaged shards are named; no poisoned value is copied."""
        model, flags = result.key[0], dict(zip(VALUE_FLAGS, result.key[1:]))
        want = self.reference(corpus, model, BASE_FLAGS | flags)
        got = result.rows()
        assert_equals_full_run(got, want, what)
        summary = json.loads(Path(summary_file(result.prefix)).read_bytes())
        reused = summary.get("reused")
        assert footer_reused(result.prefix) == reused, f"{what}: footers count {footer_reused(result.prefix)} " \
                                                       f"reused rows, the summary {reused}"
        if prev.key != result.key:
            assert reused == 0, f"{what}: provenance changed ({prev.key} -> {result.key}), yet {reused} rows reused"
            return
        usable = prev.usable_keys()
        expected = sum(1 for r in want if r.key in usable)
        exact = not prev.damaged and not prev.reordered  # a reordered shard's rows may be reused, or not
        if not exact:
            assert reused <= expected, f"{what}: {reused} rows reused, only {expected} usable"
            said = json.dumps(summary.get("previous"))
            for name, kind in prev.damaged.items():
                assert name in said, f"{what}: shard {name} ({kind}) not named in summary['previous']: {said}"
        else:
            assert reused == expected, f"{what}: reused {reused}, expected {expected} (documents whose id and " \
                                       f"text are in the previous output)"
        originals: dict = {}
        for r in prev.rows():
            originals.setdefault(r.key, set()).add(r.values)
        for r in got:
            if r.key in originals and exact:
                assert r.values in originals[r.key], f"{what}: {r.doc_id}: a reused row is not bit-equal to " \
                                                     "the previous output's"
            if (r.key, r.values) in prev.poisoned and r.values not in originals.get(r.key, ()):
                raise AssertionError(f"{what}: {r.doc_id}: values of a damaged shard were copied")

    def killed(self, prev: Output, corpus, model: str, flags: dict, same: bool, trigger: str, delay: float,
               prev_style: str = "abs") -> Output:
        """Runs the night as a subprocess, SIGKILLs its process group (at ``trigger`` + ``delay`` s), then
        reruns the same command to completion in-process and checks it."""
        out = prev.prefix if same else self.new_prefix()
        overwrite = same and prev.key != value_key(model, flags)
        argv = self.argv(self.corpus_file(corpus), model, flags, out, spell(prev.prefix, prev_style, str(self.root)),
                         overwrite)
        before = snapshot(prev.prefix)
        record = before.get(os.path.basename(summary_file(out)))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([self.models.builders[model]] if model in self.models.builders
                                                          else [])])
        there = set(os.listdir(os.path.dirname(out)))
        stats = {}
        for p in prev.listed:
            with contextlib.suppress(OSError):
                s = os.stat(p)
                stats[p] = (s.st_ino, s.st_mtime_ns, s.st_size)
        log = open(self.root / f"killed{self.count}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "beam_pipeline", *argv], cwd=self.root, env=env,
                                stdout=log, stderr=log, start_new_session=True)
        started, fired = time.monotonic(), None
        try:
            while proc.poll() is None and time.monotonic() - started < 180:
                if fired is None and self._fired(trigger, out, stats, there):
                    fired = time.monotonic()
                if fired is not None and time.monotonic() - fired >= delay:
                    break
                time.sleep(0.002)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
        what = f"rerun after a kill ({trigger} + {delay:.2f}s, --previous {'=' if same else '!='} --output)"
        if not same:
            assert_untouched(prev.prefix, before, f"{what}: the killed run changed its --previous output")
        base = prev
        if same and os.path.exists(summary_file(out)) and Path(summary_file(out)).read_bytes() != record:
            # the killed run committed (its summary replaced the previous one): that is the previous now
            base = self.committed(out, model, flags)
            self.check(base, prev, corpus, "a run that finished before its kill")
        _use_builder(self.models, model)
        code, err = run_main(argv, str(self.root))
        assert code == 0, f"{what}: exit {code}: {err[-3000:]}"
        if not same:
            assert_untouched(prev.prefix, before, f"{what}: the run changed its --previous output's files")
        result = self.committed(out, model, flags)
        self.check(result, base, corpus, what)
        return result

    @staticmethod
    def _fired(trigger: str, out: str, stats: dict, there: set) -> bool:
        if trigger == "summary gone":
            return not os.path.exists(summary_file(out))
        if trigger == "shards touched":
            for p, s in stats.items():
                try:
                    now = os.stat(p)
                except OSError:
                    return True
                if (now.st_ino, now.st_mtime_ns, now.st_size) != s:
                    return True
            return any(n.startswith(os.path.basename(out) + "-0") and n not in there
                       for n in os.listdir(os.path.dirname(out)))
        return True  # "start"


# --- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(small_job, tmp_path_factory) -> Models:
    """The small job's model; the same architecture with other weights; a weights-only file and two
    versions of its builder module (``attack_builder``: LSTM activation tanh, then sigmoid)."""
    import keras

    folder = tmp_path_factory.mktemp("attack_models")
    keras.utils.set_random_seed(12)
    inp = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(small_job.vocab, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(6, name="lstm")(x)
    other = folder / "other.keras"
    keras.Model(inp, keras.layers.Dense(1, name="head")(x)).save(other)
    keras.utils.set_random_seed(14)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(small_job.vocab, 8, mask_zero=True)(inp)
    x = keras.layers.LSTM(6, name="lstm")(x)
    var = folder / "var.keras"
    keras.Model(inp, keras.layers.Dense(1, name="head")(x)).save(var)
    builders = {}
    for activation in ("tanh", "sigmoid"):
        builders[activation] = str(folder / activation)
        os.makedirs(builders[activation])
        Path(builders[activation], f"{BUILDER_MODULE}.py").write_text(BUILDER.replace("ACTIVATION", activation))
    namespace: dict = {}
    exec(BUILDER.replace("ACTIVATION", "tanh"), namespace)
    keras.utils.set_random_seed(13)
    weights = folder / "attack.weights.h5"
    namespace["build"]().save_weights(weights)
    yield Models(small_job.model, str(other), str(var), str(weights), builders)
    _use_builder(Models("", "", "", "", builders), "base")


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict:
    return {"__root__": str(tmp_path_factory.mktemp("attack_refs"))}


@pytest.fixture
def harness(small_job, models, refs, tmp_path) -> Harness:
    return Harness(small_job, models, tmp_path, refs)


def day1() -> list[tuple[str, str]]:
    return helpers.corpus(30, seed=24)


def day2(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """3 removed, 3 changed, 2 new, one repeated, one emptied."""
    now = [(d, t + " river" if k in (5, 6, 7) else ("" if k == 8 else t)) for k, (d, t) in enumerate(docs[3:], 3)]
    return now + [("new1", docs[0][1]), ("new2", "the fox"), docs[10], (docs[11][0], "another text")]


# --- one plain test per damage kind ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SHARD_DAMAGE)
def test_a_damaged_previous_shard_is_recomputed(harness, kind):
    """A shard of the previous output deleted, truncated, emptied, with a flipped byte, columns reordered, a
    column dropped or its footer metadata stripped: the run exits 0 with the full run's output; a damaged
    shard's rows are recomputed, never copied, and ``previous`` names it; reordered columns may be reused."""
    docs = day1()
    flags = BASE_FLAGS | {"compression": "none"} if kind == "flipped data page" else BASE_FLAGS
    prev = harness.full(docs, "base", flags)
    name = sorted(prev.shards)[0]
    damage(prev, kind, random.Random(kind), name, column="vector")  # a flip where the values are
    harness.night(prev, day2(docs), "base", BASE_FLAGS)


@pytest.mark.parametrize("kind,same", [("summary truncated", False), ("summary not JSON", True)],
                         ids=["truncated-previous-is-not-output", "not-JSON-previous-is-output"])
def test_a_damaged_previous_summary_is_refused(harness, kind, same):
    """Exit 2, the message names the summary file, nothing committed, the previous output untouched."""
    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    damage(prev, kind, random.Random(3))
    assert harness.night(prev, day2(docs), "base", BASE_FLAGS, same=same) is None


@pytest.mark.parametrize("model", ["other", "sigmoid"], ids=["other-weights", "builder-code-changed"])
def test_a_changed_model_never_reuses_rows(harness, model):
    """Another ``--model`` file, or the same weights with a ``--model_fn`` module whose code changed
    (another activation): nothing reused, the output is the new model's full run."""
    docs = day1()
    first = "tanh" if model == "sigmoid" else "base"
    prev = harness.full(docs, first, BASE_FLAGS)
    new = harness.reference(docs, model, BASE_FLAGS)
    old = harness.reference(docs, first, BASE_FLAGS)
    assert any(a.values != b.values for a, b in zip(sorted(new, key=lambda r: r.key), sorted(old, key=lambda r: r.key)))
    harness.night(prev, docs, model, BASE_FLAGS)


@pytest.mark.parametrize("flag,value", [("dtype", "float16"), ("mode", "sequence"), ("maxlen", 12)])
def test_a_value_flag_changed_recomputes(harness, flag, value):
    """(``--maxlen``: a model whose input length is not fixed, 20 then 12.)"""
    docs = day1()
    model = "var" if flag == "maxlen" else "base"
    prev = harness.full(docs, model, BASE_FLAGS)
    harness.night(prev, day2(docs), model, BASE_FLAGS | {flag: value})


@pytest.mark.parametrize("prev_style,out_style", [("dslash", "abs"), ("abs", "rel")])
def test_prefix_spellings_are_one_prefix(harness, prev_style, out_style):
    """``--previous dir/./emb --output dir/emb`` (and ``//``, relative vs absolute) is previous = output."""
    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    harness.night(prev, day2(docs), "base", BASE_FLAGS | {"num_shards": 3}, same=True, prev_style=prev_style,
                  out_style=out_style)


def test_a_killed_run_over_its_previous_output_spelled_otherwise_loses_no_work(harness):
    """``--previous dir/./emb --output dir/emb`` is previous = output, killed too: nothing is lost."""
    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    harness.killed(prev, day2(docs), "base", BASE_FLAGS | {"num_shards": 3}, True, "shards touched", 0.0, "dot")


def test_the_next_night_from_another_working_directory(harness):
    """Relative ``--output`` from one working directory, then relative ``--previous`` from another."""
    docs = day1()
    prefix = harness.new_prefix()
    code, err = run_main(harness.argv(harness.corpus_file(docs), "base", BASE_FLAGS,
                                      os.path.relpath(prefix, harness.root)), str(harness.root))
    assert code == 0, err[-3000:]
    prev = harness.committed(prefix, "base", BASE_FLAGS)
    harness.night(prev, day2(docs), "base", BASE_FLAGS, prev_style="rel", out_style="rel",
                  cwd=str(harness.root / "elsewhere" / "deeper"))


def test_a_killed_run_over_its_previous_output_loses_no_work(harness):
    """``--previous`` = ``--output``, SIGKILL as soon as the run touches the shards (3 shards replace 2):
    the same command again writes the full run's output and reuses every unchanged document, bit-equal to
    what was there before the killed run."""
    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    harness.killed(prev, day2(docs), "base", BASE_FLAGS | {"num_shards": 3}, True, "shards touched", 0.0)


def test_a_killed_run_leaves_its_previous_output_untouched(harness):
    """``--previous`` != ``--output``, SIGKILL: the previous output's files are byte-identical; the rerun
    is complete."""
    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    harness.killed(prev, day2(docs), "base", BASE_FLAGS, False, "shards touched", 0.0)


def test_an_unaccounted_run_writes_no_summary(harness, monkeypatch):
    """Exit 1 (records unaccounted for: the input changed between the shuffle join's two reads, simulated by
    dropping one document of the second read) and no ``PREFIX-summary.json``."""
    from transforms import reuse
    from transforms.batch import DocBatch

    docs = day1()
    prev = harness.full(docs, "base", BASE_FLAGS)
    original = reuse.KeepToEmbed.process

    def drop_one(self, batch, keys):
        for kept in original(self, batch, keys):
            yield kept.take(np.arange(1, len(kept))) if isinstance(kept, DocBatch) else kept

    monkeypatch.setattr(reuse.KeepToEmbed, "process", drop_one)
    out = harness.new_prefix()
    code, err = run_main(harness.argv(harness.corpus_file(day2(docs)), "base", BASE_FLAGS | {"join": "shuffle"}, out,
                                      prev.prefix))
    assert code == 1, f"exit {code}: {err[-2000:]}"
    assert not os.path.exists(summary_file(out)), "an unaccounted run wrote its summary (a commit record)"


# --- the state machine -------------------------------------------------------------------------------------------

TEXTS = st.lists(st.integers(0, len(helpers.SENTENCES) - 1), min_size=1, max_size=4).map(
    lambda ks: " ".join(helpers.SENTENCES[k] for k in ks))
EDITS = st.lists(st.tuples(st.sampled_from(["change", "add", "remove", "repeat", "repeat other", "empty"]),
                           st.integers(0, 10**6), TEXTS), min_size=1, max_size=8)
STYLES = st.sampled_from(["abs", "rel", "dot", "dslash"])


class Nights(RuleBasedStateMachine):
    """A corpus, flags and a model that change night after night; the last committed output is the next
    night's ``--previous``, damaged at random in between."""

    def __init__(self, make_harness):
        super().__init__()
        self.h: Harness = make_harness()
        self.model = "base"
        self.flags = dict(BASE_FLAGS)
        self.new_ids = 0

    def teardown(self):
        _use_builder(self.h.models, "base")
        shutil.rmtree(self.h.root, ignore_errors=True)

    @initialize(texts=st.lists(TEXTS, min_size=15, max_size=40))
    def first_night(self, texts):
        self.corpus = [(f"d{k:03d}", t) for k, t in enumerate(texts)]
        self.prev = self.h.full(self.corpus, self.model, self.flags)

    @rule(edits=EDITS)
    def edit_corpus(self, edits):
        for op, i, text in edits:
            k = i % len(self.corpus)
            doc_id, old = self.corpus[k]
            if op == "change":
                self.corpus[k] = (doc_id, old + " river" if old != text else text + " fox")
            elif op == "add":
                self.new_ids += 1
                self.corpus.append((f"x{self.new_ids:03d}", text))
            elif op == "remove" and len(self.corpus) > 5:
                self.corpus.pop(k)
            elif op == "repeat":
                self.corpus.append(self.corpus[k])
            elif op == "repeat other":
                self.corpus.append((doc_id, text))
            elif op == "empty":
                self.corpus[k] = (doc_id, "")

    @rule(dtype=st.sampled_from(["float32", "float16"]), mode=st.sampled_from(["final", "sequence", "states"]),
          maxlen=st.sampled_from([None, 12]), truncating=st.sampled_from(["pre", "post"]),
          batch_size=st.sampled_from([8, 16, 64]), num_shards=st.sampled_from([1, 2, 3]),
          compression=st.sampled_from(["zstd", "none"]), join=st.sampled_from(["auto", "lookup", "shuffle"]))
    def change_flags(self, dtype, mode, maxlen, truncating, batch_size, num_shards, compression, join):
        self.flags = {"dtype": dtype, "mode": mode, "maxlen": maxlen, "truncating": truncating,
                      "batch_size": batch_size, "num_shards": num_shards, "compression": compression, "join": join}

    @rule(model=st.sampled_from(["base", "other", "var", "tanh", "sigmoid"]))
    def change_model(self, model):
        self.model = model

    @precondition(lambda self: self.prev.summary_damaged is None)
    @rule(kind=st.sampled_from(SHARD_DAMAGE + SUMMARY_DAMAGE), seed=st.integers(0, 2**32))
    def damage_previous(self, kind, seed):
        damage(self.prev, kind, random.Random(seed))

    @rule(same=st.booleans(), prev_style=STYLES, out_style=STYLES, cwd=st.sampled_from(["root", "deeper"]),
          kill=st.sampled_from([None] * 7 + ["start", "summary gone", "shards touched"]), delay=st.floats(0, 1.5))
    def night(self, same, prev_style, out_style, cwd, kill, delay):
        """The next night, from ``cwd``; with ``kill``, a subprocess SIGKILLed at that trigger + delay, then
        rerun (only over an undamaged previous output: the kill's expectations are exact)."""
        if kill and self.prev.summary_damaged is None and not self.prev.damaged:
            self.prev = self.h.killed(self.prev, self.corpus, self.model, self.flags, same, kill,
                                      delay * 6 if kill == "start" else delay, prev_style)
            return
        folder = str(self.h.root if cwd == "root" else self.h.root / "elsewhere" / "deeper")
        result = self.h.night(self.prev, self.corpus, self.model, self.flags, same, prev_style, out_style, folder)
        # refused (a damaged summary): the operator starts again with a full run
        self.prev = result or self.h.full(self.corpus, self.model, self.flags)


def test_random_nights(small_job, models, refs, tmp_path):
    count = iter(range(10**6))

    def make() -> Harness:
        return Harness(small_job, models, tmp_path / f"example{next(count)}", refs)

    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if SHRINK else ())
    run_state_machine_as_test(lambda: Nights(make), settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not LONG, database=None,
        phases=phases, suppress_health_check=list(HealthCheck), print_blob=True))
