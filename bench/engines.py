"""Engine benchmark: every inference engine and the end-to-end job on the models issue 11 names.

``python -m bench.bench --engines [--quick] [--docs N] [--job-sizes N,M] [--job-args '...'] [--job-repeat R]
[--out bench/results/engines.json]``

One process builds one corpus and tokenizer (``bench.bench.make_corpus``) and four models, then per
model, in one run and on the same corpus:

- ``predict``: ``keras.Model(model.inputs, layer.output).predict(X, batch_size=512)`` on the corpus
  padded as the model was trained, best of 3 passes: the baseline of every ratio;
- every engine (``keras``, ``xla``, ``onnx``, ``table``) forced, through the job's own ``Embedder`` in batches
  of 512 (length-sorted batches for masked and unmasked ``pre`` models, as the job sorts them), steady state (the first
  batch, which builds and verifies the engine, is timed apart as start-up);
- the whole job, ``python -m beam_pipeline ... --engine auto`` as a child process
  (JSONL to finalized Parquet on the DirectRunner), on two corpora of the same distribution, N and
  M documents (``--job-sizes``, default 100000 and 300000): ``job`` and ``job-big`` are those two runs
  end to end (process start included), ``job-steady`` is ``(docs_M - docs_N) / (wall_M - wall_N)``:
  start-up, model loading, calibration and finalization cancel out. Each run's start-up is the time
  from ``Popen`` to the job's ``first batch embedded`` log line (read from its stderr as it comes),
  its peak RSS is the child's ``ru_maxrss`` (``os.wait4``), and the engines it used are its
  ``engine ... chosen`` log lines (and its ``batches_<engine>`` counters where the summary has them).

Printed per row: docs/s, ratio to ``predict``, timesteps run per real token, useful GFLOP/s (the
recurrent FLOPs of the real tokens only: ``2 * gates * units * (inputs + units)`` per token, layer
and direction) and that as a % of the CPU's FP32 peak (32 FLOP/cycle/core: 2 FMA pipes x 256 bit,
clock from ``/proc/cpuinfo``), start-up seconds and, for the job, peak RSS.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import NUM_WORDS, OOV_TOKEN, REPO, cpu_busy_s, make_corpus, wait_child, write_jsonl

BATCH = 512
SORT_BUFFER = 32 * BATCH
MODELS = {
    # name: (maxlen, padding, vocabulary, builder description)
    "masked-bilstm-x3": (48, "post", 8000),
    "lstm64-post": (64, "post", 20000),
    "lstm64-pre": (64, "pre", 20000),
    "gru64-pre": (64, "pre", 20000),
    # Embedding(20000, 1) -> SimpleRNN(1): next to no arithmetic, so its job row is the most documents per
    # second the rest of the job (read, tokenize, Beam, Arrow, Parquet) lets any model reach on this machine.
    "ceiling-pre": (64, "pre", 20000),
}
ENGINES = ("keras", "xla", "onnx", "table")
# N and M documents of the two job runs; job-steady is their difference. N is large enough that both runs
# calibrate (--engine auto runs the Keras graph until it has spent 2 s on a worker: ~30-40k documents of these
# models on this CPU, per worker), so that the M - N documents the big run adds all run on the engine it kept.
JOB_SIZES = (100000, 300000)
JOB_SIZES_QUICK = (2000, 6000)
JOB_TIMEOUT_S = 3600
# Lines of the job's log (stderr; beam_pipeline loggers are at INFO by default) timed from Popen:
# the first occurrence of each.
MARKERS = {"model_loaded_s": "model loaded in process", "first_batch_s": "first batch embedded"}
ENGINE_LINE = re.compile(r"\bengine (\w+) (?:chosen )?for layer\b")  # one per worker (engines.choose)
# A line a multi-process DirectRunner worker logged, as its runner relays it: the worker's own time stamp.
WORKER_TIME = re.compile(r"timestamp \{\s*seconds: (\d+)\s+nanos: (\d+)\s*\}")
METRICS_LINE = re.compile(r"tokens (\d+), padded timesteps (\d+) .*batches (\d+), inference ([\d.]+)s")


def build(name: str):
    import keras

    L = keras.layers
    maxlen, _, vocab = MODELS[name]
    keras.utils.set_random_seed(0)
    inp = keras.Input((maxlen,), dtype="int32")
    if name == "masked-bilstm-x3":
        x = L.Embedding(vocab, 64, mask_zero=True)(inp)
        x = L.Bidirectional(L.LSTM(32, return_sequences=True))(x)
        x = L.Bidirectional(L.LSTM(32, return_sequences=True))(x)
        x = L.Bidirectional(L.LSTM(16), name="target")(x)
    elif name.startswith("lstm64"):
        x = L.LSTM(64, name="target")(L.Embedding(vocab, 100)(inp))
    elif name == "ceiling-pre":
        x = L.SimpleRNN(1, name="target")(L.Embedding(vocab, 1)(inp))
    else:
        x = L.GRU(64, name="target")(L.Embedding(vocab, 100)(inp))
    return keras.Model(inp, L.Dense(2)(x), name=name.replace("-", "_"))


def useful_flops_per_token(model) -> int:
    """Recurrent FLOPs per real token: every recurrent layer, every direction, input and recurrent GEMMs."""
    import keras

    total = 0
    for layer in model.layers:
        rnns = [layer.forward_layer, layer.backward_layer] if isinstance(layer, keras.layers.Bidirectional) else (
            [layer] if isinstance(layer, keras.layers.RNN) else [])
        for rnn in rnns:
            kernel = rnn.cell.kernel
            inputs, width = int(kernel.shape[0]), int(kernel.shape[1])
            total += 2 * width * (inputs + rnn.cell.units)
    return total


def cpu_peak_gflops() -> tuple[float, float, int]:
    """(peak FP32 GFLOP/s, clock GHz, cores): 32 FLOP/cycle/core at the /proc/cpuinfo clock."""
    mhz = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz.append(float(line.split(":")[1]))
    cores = os.cpu_count() or 1
    ghz = (max(mhz) if mhz else 0.0) / 1000
    return 32 * ghz * cores, ghz, cores


def _batches(seqs: list[list[int]], sort: bool) -> list[list[list[int]]]:
    if sort:  # the job sorts by length within bounded buffers (--length_bucketing auto)
        ordered = []
        for start in range(0, len(seqs), SORT_BUFFER):
            ordered += sorted(seqs[start:start + SORT_BUFFER], key=len)
        seqs = ordered
    return [seqs[i:i + BATCH] for i in range(0, len(seqs), BATCH)]


def run_engine(model, name: str, engine: str, seqs: list[list[int]]) -> dict:
    from beam_pipeline.inference import Embedder

    maxlen, padding, _ = MODELS[name]
    start = time.perf_counter()
    embedder = Embedder(model, "target", "final", maxlen, padding=padding, engine=engine)
    batches = _batches(seqs, embedder.info.masked or padding == "pre")
    first = embedder.embed(batches[0])
    startup = time.perf_counter() - start
    timesteps = first.padded_timesteps
    start = time.perf_counter()
    for batch in batches[1:]:
        timesteps += embedder.embed(batch).padded_timesteps
    wall = time.perf_counter() - start
    prefix = bool(getattr(embedder.engine, "prefix", False))
    return {"docs": sum(map(len, batches[1:])), "wall_s": wall, "startup_s": startup,
            "timesteps": timesteps, "prefix_cache": prefix, "report": embedder.engine_report}


def run_predict(model, name: str, seqs: list[list[int]]) -> dict:
    import keras

    maxlen, padding, _ = MODELS[name]
    x = keras.utils.pad_sequences(seqs, maxlen=maxlen, padding=padding, truncating="pre")
    sub = keras.Model(model.inputs, model.get_layer("target").output)
    sub.predict(x[:BATCH], batch_size=BATCH, verbose=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sub.predict(x, batch_size=BATCH, verbose=0)
        best = min(best, time.perf_counter() - start)
    return {"docs": len(seqs), "wall_s": best, "timesteps": int(x.size)}


def job_argv(work: str, name: str, corpus: str, prefix: str, job_args: str) -> list[str]:
    """The job's flags: as a user runs it on this model, ``--engine auto``, with its INFO log (for the
    first-batch line); ``--job-args`` come last, so they override any of these."""
    maxlen, padding, vocab = MODELS[name]
    return ["--input", corpus, "--output", prefix, "--model", os.path.join(work, f"{name}.keras"),
            "--tokenizer", os.path.join(work, f"tokenizer-{vocab}.json"), "--layer", "target",
            "--maxlen", str(maxlen), "--padding", padding, "--truncating", "pre", "--overwrite",
            "--engine", "auto", *shlex.split(job_args)]


def run_job_child(work: str, name: str, corpus: str, label: str, job_args: str,
                  timeout_s: int = JOB_TIMEOUT_S, keep_output: bool = False) -> dict:
    """One run of ``python -m beam_pipeline`` in a child process, JSONL to finalized Parquet.

    Its stderr is read line by line as it comes (a reader thread) and written, timed, to
    ``job-<name>-<label>.log`` in the work dir; ``MARKERS`` lines are timed from ``Popen``. Wall time
    is ``Popen`` to exit; peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` (the largest of the
    child and the children it waited for, e.g. multi-process DirectRunner workers). The output is
    deleted after the run unless ``keep_output`` (it is at ``work/out/<name>-<label>/emb``)."""
    prefix = os.path.join(work, "out", f"{name}-{label}", "emb")
    argv = job_argv(work, name, corpus, prefix, job_args)
    cmd = [sys.executable, "-m", "beam_pipeline", *argv]
    log_path = os.path.join(work, f"job-{name}-{label}.log")
    marks: dict[str, list[float]] = {key: [] for key in MARKERS}
    chosen: list[str] = []
    tail: collections.deque = collections.deque(maxlen=60)
    stdout: list[str] = []
    print(f"  [job {name} {label}] running ...", end="", flush=True, file=sys.stderr)
    start, start_epoch, busy = time.perf_counter(), time.time(), cpu_busy_s()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True,
                            errors="replace", env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def read_stderr() -> None:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stderr:
                seconds = time.perf_counter() - start
                log.write(f"{seconds:9.3f} {line}")
                tail.append(line)
                for key, text in MARKERS.items():
                    if text in line:
                        stamp = WORKER_TIME.search(line)  # relayed: when the worker logged it, not when it arrived
                        at = int(stamp.group(1)) + int(stamp.group(2)) / 1e9 - start_epoch if stamp else seconds
                        marks[key].append(round(at, 3))
                found = ENGINE_LINE.search(line)
                if found:
                    chosen.append(found.group(1))

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)]
    for reader in readers:
        reader.start()
    usage = wait_child(proc, timeout_s)
    wall = time.perf_counter() - start
    busy = cpu_busy_s() - busy
    for reader in readers:  # a worker that outlives the job would hold the pipes open: do not wait forever
        reader.join(timeout=30)
    child_cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, busy - child_cpu)
    print(f" {wall:.1f}s", file=sys.stderr)
    summary_file = prefix + "-summary.json"
    if proc.returncode != 0 or not os.path.exists(summary_file):
        raise RuntimeError(f"job {name} {label} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           + "".join(tail)[-4000:] + "".join(stdout)[-2000:])
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("----- stdout -----\n" + "".join(stdout))
    with open(summary_file, encoding="utf-8") as f:
        summary = json.load(f)
    if not keep_output:
        shutil.rmtree(os.path.dirname(prefix), ignore_errors=True)
    metrics = summary.get("metrics") or {}
    printed = METRICS_LINE.search("".join(stdout))  # print_summary's line, when the runner reported metrics
    tokens = metrics.get("tokens", int(printed.group(1)) if printed else None)
    timesteps = metrics.get("padded_timesteps", int(printed.group(2)) if printed else None)
    batches = {k[len("batches_"):]: v for k, v in metrics.items() if k.startswith("batches_")}
    return {
        "docs": summary["embedded"], "read": summary["read"], "dead_lettered": summary["dead_lettered"],
        "wall_s": wall, "tokens": tokens, "timesteps": timesteps,
        "batches": metrics.get("batches", int(printed.group(3)) if printed else None),
        "inference_s": float(printed.group(4)) if printed else None,
        "startup_s": min(marks["first_batch_s"], default=None),
        "first_batch_s_all": sorted(marks["first_batch_s"]),
        "model_loaded_s": min(marks["model_loaded_s"], default=None),
        "model_loads": len(marks["model_loaded_s"]),  # one per worker process that loaded the model
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "child_cpu_s": round(child_cpu, 2), "other_cpu_s": round(other, 2),
        "engines_chosen": dict(collections.Counter(chosen)),
        "engine_batches": batches or None,
        "command": shlex.join(["python", "-m", "beam_pipeline", *argv]),
        "log": log_path,
    }


def run_job_sizes(work: str, name: str, corpora: dict[int, str], job_args: str, repeat: int) -> dict:
    """The job on each corpus size, ``repeat`` runs each (the fastest kept); rows ``job`` (N),
    ``job-big`` (M) and ``job-steady``: the docs/s of the M - N documents the big run adds."""
    (n, small_path), (m, big_path) = sorted(corpora.items())
    runs = {}
    for size, path, label in ((n, small_path, "job"), (m, big_path, "job-big")):
        tries = [run_job_child(work, name, path, f"{size}-{i}", job_args) for i in range(repeat)]
        best = min(tries, key=lambda r: r["wall_s"])
        best["size"] = size
        if repeat > 1:
            best["wall_s_all"] = [round(r["wall_s"], 3) for r in tries]
        runs[label] = best
    small, big = runs["job"], runs["job-big"]
    added = big["docs"] - small["docs"]
    steady = {"docs": added, "wall_s": big["wall_s"] - small["wall_s"],
              "sizes": [n, m], "startup_s": small["startup_s"],
              "peak_rss_ratio": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
              # CPU of every core the job's process used per document it added (model included)
              "core_us_per_doc": round(1e6 * (big["child_cpu_s"] - small["child_cpu_s"]) / max(added, 1), 2)}
    for key in ("tokens", "timesteps"):
        steady[key] = big[key] - small[key] if big[key] is not None and small[key] is not None else None
    if small["engines_chosen"] != big["engines_chosen"]:
        steady["warning"] = (f"the two runs chose different engines ({small['engines_chosen'] or 'none'} vs "
                             f"{big['engines_chosen'] or 'none'}): the difference is not one engine's steady state "
                             "(with --engine auto, raise N until the small run calibrates too)")
    runs["job-steady"] = steady
    return runs


def _fmt(value, spec: str, width: int) -> str:
    return "n/a".rjust(width) if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, spec).rjust(width)


def _job_notes(variant: str, r: dict) -> str:
    if variant == "job-steady":
        warning = f"; WARNING: {r['warning']}" if "warning" in r else ""
        alone = (f"; {100 * r['of_engine_alone']:.0f}% of its engine alone ({r['engine']})"
                 if r.get("of_engine_alone") else "")
        return (f"({r['sizes'][1]} - {r['sizes'][0]} docs) / (wall difference {r['wall_s']:.1f}s); "
                f"{r['core_us_per_doc']:.1f} core-us/doc; peak RSS big/small {r['peak_rss_ratio']:.2f}{alone}{warning}")
    used = ", ".join(f"{k} x{v}" for k, v in r["engines_chosen"].items()) or \
        "none logged (auto before calibration runs the Keras graph)"
    notes = f"{r['size']} docs, {r['wall_s']:.1f}s, engines chosen: {used}"
    if r["engine_batches"]:
        notes += f", batches {r['engine_batches']}"
    if r["model_loaded_s"] is not None:
        loads = f" (x{r['model_loads']})" if r["model_loads"] > 1 else ""
        notes += f", model loaded {r['model_loaded_s']:.1f}s{loads}"
    wall = max(r["wall_s"], 1e-9)
    return notes + f", other CPU {100 * r['other_cpu_s'] / wall:.0f}%"


def _print_targets(results: dict) -> None:
    """Issue 18's targets from this run: the job's own ceiling against a bare LSTM64 ``predict``, and
    each model's job against ``predict`` and against its engine alone."""
    models = results["models"]
    lines = []
    ceiling = models.get("ceiling-pre", {}).get("rows", {}).get("job-steady")
    lstm = models.get("lstm64-pre", {}).get("rows", {}).get("predict")
    if ceiling and lstm:
        ratio = (ceiling["docs"] / ceiling["wall_s"]) / (lstm["docs"] / lstm["wall_s"])
        results["ceiling_vs_lstm64_predict"] = round(ratio, 2)
        lines.append(f"job's own ceiling (ceiling-pre job-steady) = {ratio:.2f}x lstm64-pre predict (target >= 12x); "
                     f"{ceiling['core_us_per_doc']:.1f} core-us/doc (target <= 6)")
    for name, model in models.items():
        steady = model["rows"].get("job-steady")
        if steady and name != "ceiling-pre":
            alone = f", {100 * steady['of_engine_alone']:.0f}% of {steady['engine']} alone" \
                if steady.get("of_engine_alone") else ""
            lines.append(f"{name}: job-steady {steady['ratio']:.2f}x predict{alone}")
    if lines:
        print("targets:\n  " + "\n  ".join(lines))


def main(docs: int, quick: bool, out: str | None, job_sizes: tuple[int, int] | None = None, job_args: str = "",
         job_repeat: int = 1, keep: bool = False, models: list[str] | None = None) -> int:
    import logging

    unknown = sorted(set(models or ()) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    from beam_pipeline.demo import fit_tokenizer_json
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    logging.basicConfig(level=logging.WARNING)
    n = docs or (3000 if quick else 20000)
    sizes = tuple(job_sizes or (JOB_SIZES_QUICK if quick else JOB_SIZES))
    peak, ghz, cores = cpu_peak_gflops()
    work = tempfile.mkdtemp(prefix="bench-engines-")
    corpus = make_corpus(n)
    write_jsonl(os.path.join(work, "corpus.jsonl"), corpus)
    corpora = {}  # the job's corpora: make_corpus(size) (seeded by size: other documents, same distribution)
    for size in sizes:
        corpora[size] = os.path.join(work, f"corpus-{size}.jsonl")
        write_jsonl(corpora[size], corpus if size == n else make_corpus(size))
    texts = [d["text"] for d in corpus]
    tokenizers = {vocab: fit_tokenizer_json(texts, num_words=min(vocab, NUM_WORDS), oov_token=OOV_TOKEN)
                  for vocab in {v for _, _, v in MODELS.values()}}
    for vocab, tokenizer in tokenizers.items():
        with open(os.path.join(work, f"tokenizer-{vocab}.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer)
    results: dict = {"docs": n, "quick": quick, "cpu": {"peak_gflops": round(peak, 1), "ghz": ghz, "cores": cores},
                     "job": {"sizes": list(sizes), "args": job_args, "repeat": job_repeat},
                     "models": {}}
    print(f"engines bench: {n} docs, job on {sizes[0]} and {sizes[1]} docs, FP32 peak {peak:.0f} GFLOP/s "
          f"({cores} cores x {ghz:.2f} GHz x 32)" + (f", job args: {job_args}" if job_args else ""))
    header = f"{'model':18} {'variant':10} {'docs/s':>9} {'ratio':>6} {'steps/tok':>9} {'GFLOP/s':>8} {'%peak':>6} " \
             f"{'start-up s':>10} {'RSS MB':>7}  notes"
    print(header)
    try:
        for name in models or MODELS:
            maxlen, padding, vocab = MODELS[name]
            all_seqs = KerasTokenizer.from_json(tokenizers[vocab]).texts_to_sequences(texts)
            seqs = [s[-maxlen:] for s in all_seqs if s]  # truncating="pre"; documents without tokens are dead letters
            model = build(name)
            model.save(os.path.join(work, f"{name}.keras"))
            flops = useful_flops_per_token(model)
            rows = {"predict": run_predict(model, name, seqs)}
            for engine in ENGINES:
                try:
                    rows[engine] = run_engine(model, name, engine, seqs)
                except Exception as e:  # a forced engine that declines this model
                    print(f"{name:18} {engine:10} declined: {e}")
            if not quick or name == "masked-bilstm-x3":
                rows.update(run_job_sizes(work, name, corpora, job_args, job_repeat))
            base = rows["predict"]["docs"] / rows["predict"]["wall_s"]
            tokens_per_doc = sum(map(len, seqs)) / len(seqs)
            steady = rows.get("job-steady")
            if steady:  # the job against the engine it ran, alone on the same padded batches
                chosen = rows["job-big"]["engines_chosen"]
                engine = max(chosen, key=chosen.get) if chosen else "keras"
                steady["engine"] = engine
                if engine in rows and steady["wall_s"] > 0:
                    steady["of_engine_alone"] = round((steady["docs"] / steady["wall_s"])
                                                      / (rows[engine]["docs"] / rows[engine]["wall_s"]), 3)
            for variant, r in rows.items():
                job = variant.startswith("job")
                rate = r["docs"] / r["wall_s"] if r["wall_s"] > 0 else float("nan")
                if job:
                    tokens = r["tokens"] / r["wall_s"] if r["tokens"] and r["wall_s"] > 0 else rate * tokens_per_doc
                    steps = r["timesteps"] / r["tokens"] if r["timesteps"] and r["tokens"] else None
                else:
                    tokens = rate * tokens_per_doc
                    steps = (r["timesteps"] / (r["docs"] if variant == "predict" else len(seqs))) / tokens_per_doc
                if r.get("prefix_cache"):
                    steps = 1.0
                r.update(docs_per_s=round(rate, 1), ratio=round(rate / base, 3),
                         timesteps_per_token=None if steps is None else round(steps, 3),
                         gflops=round(tokens * flops / 1e9, 2), pct_peak=round(100 * tokens * flops / 1e9 / peak, 2))
                notes = ""
                if job:
                    notes = _job_notes(variant, r)
                elif variant in ENGINES and r["report"]:
                    notes = "calibration: " + ", ".join(f"{k} {v.get('seconds', v.get('declined', v.get('dropped')))}"
                                                        for k, v in r["report"].items())
                startup = "-" if "startup_s" not in r else _fmt(r["startup_s"], ".2f", 10)
                rss = _fmt(r["peak_rss_mb"], ".0f", 7) if "peak_rss_mb" in r else "-"
                print(f"{name:18} {variant:10} {_fmt(rate, '.0f', 9)} {_fmt(rate / base, '.2f', 6)} "
                      f"{_fmt(steps, '.2f', 9)} {_fmt(r['gflops'], '.2f', 8)} {_fmt(r['pct_peak'], '.2f', 6)} "
                      f"{startup:>10} {rss:>7}  {notes}", flush=True)
            results["models"][name] = {"maxlen": maxlen, "padding": padding, "useful_flops_per_token": flops,
                                       "rows": rows}
        _print_targets(results)
    finally:
        if keep:
            print(f"work dir kept (corpora, models, job logs): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"written to {out}", file=sys.stderr)
    return 0
