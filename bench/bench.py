"""Benchmark: this job vs bare Keras ``predict`` vs the Beam ``RunInference`` pipeline a user writes today.

``python -m bench.bench [--docs N] [--model lstm|masked-lstm|bilstm|all] [--out bench/results/NAME.json]``

``python -m bench.bench --engines [--quick] [--job-sizes N,M] [--job-args '...']`` runs the engine benchmark
instead (``bench/engines.py``).

One invocation builds one corpus, one tokenizer and the requested models, then runs every variant
on them, each in its own child process (``python -m bench.bench --child ...``), so that the peak
RSS of each variant is its own (read with ``os.wait4`` from the child's rusage) while all ratios
still come from the same corpus, the same model files and the same machine state:

- ``a``: bare ``keras.Model(model.inputs, layer.output).predict(X, batch_size=512)`` on the corpus
  tokenized and padded beforehand (tokenization and model loading not timed; one warm-up predict);
- ``b``: ``ReadFromText`` -> ``json.loads`` -> tokenize + ``pad_sequences`` -> ``RunInference(
  KeyedModelHandler(TFModelHandlerNumpy(...)))`` -> rows -> ``WriteToParquet`` on the DirectRunner;
- ``c``: this job, ``beam_pipeline.__main__.run([...])`` on the DirectRunner.

Timings of ``b`` and ``c`` are end to end from the files (model loading, pipeline construction and
the whole run), excluding interpreter start and the import of TensorFlow, Keras and Beam, which
every variant does before its clock starts. See ``bench/README.md`` for what the numbers mean.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import numpy as np

from bench.common import (
    MAXLEN,
    NUM_WORDS,
    OOV_TOKEN,
    REPO,
    SEED,
    VOCAB_SIZE,
    cpu_busy_s,
    lognormal_params,
    make_corpus,
    wait_child,
    write_jsonl,
)

BATCH_SIZE = 512
MODELS = ("lstm", "masked-lstm", "bilstm")
LAYER_OF = {"lstm": "lstm", "masked-lstm": "lstm", "bilstm": "bilstm"}
VARIANTS = {
    "a": "bare predict",
    "b": "Beam RunInference",
    "c": "this job",
}
CHILD_TIMEOUT_S = 1800

def corpus_stats(docs: list[dict], tokenizer_json: str) -> dict:
    """Word-count quantiles and token counts (as the tokenizer sees them) of the corpus."""
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    words = np.array([len(d["text"].split()) for d in docs])
    tok = KerasTokenizer.from_json(tokenizer_json)
    lengths = np.array([len(s) for s in tok.texts_to_sequences(d["text"] for d in docs)])
    return {
        "docs": len(docs),
        "words_median": float(np.median(words)),
        "words_p90": float(np.percentile(words, 90)),
        "words_p99": float(np.percentile(words, 99)),
        "words_mean": round(float(words.mean()), 2),
        "words_max": int(words.max()),
        "tokens_untruncated": int(lengths.sum()),
        "tokens": int(np.minimum(lengths, MAXLEN).sum()),
        "docs_truncated": int((lengths > MAXLEN).sum()),
        "docs_without_tokens": int((lengths == 0).sum()),
    }


# ---------------------------------------------------------------------------------------------
# Models (built in a child so the parent never imports TensorFlow)


def build_model(name: str):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((MAXLEN,), dtype="int32", name="token_ids")
    h = keras.layers.Embedding(VOCAB_SIZE, 64, mask_zero=name != "lstm", name="embedding")(inputs)
    if name == "bilstm":
        h = keras.layers.Bidirectional(keras.layers.LSTM(64), name="bilstm")(h)
    else:
        h = keras.layers.LSTM(128, name="lstm")(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inputs, outputs, name=name.replace("-", "_"))


def truncated_keras_model(keras_path: str, layer: str):
    """The sub-model a user writes: ``keras.Model(model.inputs, layer.output)`` of the saved model.

    Module-level so that ``TFModelHandlerNumpy(create_model_fn=...)`` can pickle it."""
    import keras

    model = keras.models.load_model(keras_path)
    return keras.Model(model.inputs, model.get_layer(layer).output)


def model_paths(work: str, name: str) -> dict[str, str]:
    base = os.path.join(work, "models", name)
    return {
        "keras": base + ".keras",
        "sub_weights": base + "-sub.weights.h5",
        "sub_saved_model": base + "-sub-savedmodel",
    }


def child_prepare(work: str, names: list[str]) -> dict:
    os.makedirs(os.path.join(work, "models"), exist_ok=True)
    out = {}
    for name in names:
        paths = model_paths(work, name)
        model = build_model(name)
        model.save(paths["keras"])
        sub = truncated_keras_model(paths["keras"], LAYER_OF[name])
        sub.save_weights(paths["sub_weights"])
        sub.export(paths["sub_saved_model"], verbose=False)  # Keras 3 export: a TF SavedModel
        out[name] = {"params": int(model.count_params()), "output_dim": int(sub.output.shape[-1])}
    return out


# ---------------------------------------------------------------------------------------------
# Variants (each runs in its own child process)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _import_frameworks() -> None:
    """What every variant imports before its clock starts."""
    import apache_beam  # noqa: F401
    import keras  # noqa: F401
    import pyarrow  # noqa: F401
    import tensorflow  # noqa: F401


def child_idle(work: str) -> dict:
    _import_frameworks()
    import beam_pipeline.__main__  # noqa: F401

    return {"rss_after_imports_mb": _rss_mb()}


def child_variant_a(work: str, name: str) -> dict:
    _import_frameworks()
    import keras

    from beam_pipeline.keras_tokenizer import KerasTokenizer, pad_sequences

    with open(os.path.join(work, "corpus.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with open(os.path.join(work, "tokenizer.json"), encoding="utf-8") as f:
        tok = KerasTokenizer.from_json(f.read())
    seqs = tok.texts_to_sequences(texts)
    x = pad_sequences(seqs, MAXLEN, padding="pre", truncating="pre")
    tokens = int(sum(min(len(s), MAXLEN) for s in seqs))
    model = keras.models.load_model(model_paths(work, name)["keras"])
    sub = keras.Model(model.inputs, model.get_layer(LAYER_OF[name]).output)
    sub.predict(x[:BATCH_SIZE], batch_size=BATCH_SIZE, verbose=0)  # warm-up, untimed
    rss = _rss_mb()
    start = time.perf_counter()
    y = sub.predict(x, batch_size=BATCH_SIZE, verbose=0)
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "docs": len(texts),
        "tokens": tokens,
        "padded_timesteps": int(x.size),
        "output_shape": list(y.shape),
        "rss_before_timed_mb": rss,
    }


def _ensure_tensorflow_hub() -> str | None:
    """Beam's tensorflow_inference imports tensorflow_hub at module level (only for ``hub.resolve``,
    which returns a local path unchanged). When it is not installed, a stub with that one function
    stands in; returns a note saying so, or None when the real package is there."""
    try:
        import tensorflow_hub  # noqa: F401

        return None
    except ImportError:
        import types

        stub = types.ModuleType("tensorflow_hub")
        stub.resolve = lambda handle: handle
        sys.modules["tensorflow_hub"] = stub
        return ("tensorflow_hub is not installed and apache_beam.ml.inference.tensorflow_inference imports it at "
                "module level: a stub module with resolve(path) -> path stands in (in-process DirectRunner only)")


def keyed_padded_ids(doc: dict, tokenizer, maxlen: int):
    """``(id, (maxlen,) int32)``: the tokenize + pad step a user writes."""
    from beam_pipeline.keras_tokenizer import pad_sequences

    return doc["id"], pad_sequences([tokenizer.text_to_sequence(doc["text"])], maxlen)[0]


def prediction_to_row(element) -> dict:
    key, result = element
    return {"id": key, "vector": np.asarray(result.inference, dtype=np.float32).tolist()}


def child_variant_b(work: str, name: str) -> dict:
    _import_frameworks()
    notes = []
    hub_note = _ensure_tensorflow_hub()
    if hub_note:
        notes.append(hub_note)
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.tensorflow_inference import ModelType, TFModelHandlerNumpy
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.keras_tokenizer import KerasTokenizer

    paths = model_paths(work, name)
    batching = {"min_batch_size": BATCH_SIZE, "max_batch_size": BATCH_SIZE}
    saved_model = TFModelHandlerNumpy(paths["sub_saved_model"], model_type=ModelType.SAVED_MODEL, **batching)
    try:
        saved_model.load_model()  # what RunInference does first on each worker
        handler, loader = saved_model, "ModelType.SAVED_MODEL on the sub-model's Keras 3 export()"
    except Exception as e:  # Keras 3's load_model reads only .keras / .h5
        notes.append("ModelType.SAVED_MODEL on sub.export(dir) fails: " + " ".join(str(e).split())[:400])
        handler = TFModelHandlerNumpy(
            paths["sub_weights"],
            model_type=ModelType.SAVED_WEIGHTS,
            create_model_fn=functools.partial(truncated_keras_model, paths["keras"], LAYER_OF[name]),
            **batching,
        )
        loader = ("ModelType.SAVED_WEIGHTS: create_model_fn loads the .keras and truncates it, "
                  "model_uri = sub.save_weights() file (.weights.h5)")
    with open(os.path.join(work, "tokenizer.json"), encoding="utf-8") as f:
        tok = KerasTokenizer.from_json(f.read())
    out_dir = os.path.join(work, "out", f"b-{name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])
    rss = _rss_mb()
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions([])) as p:
        _ = (
            p
            | "Read" >> beam.io.ReadFromText(os.path.join(work, "corpus.jsonl"))
            | "Parse" >> beam.Map(json.loads)
            | "Tokenize" >> beam.Map(keyed_padded_ids, tokenizer=tok, maxlen=MAXLEN)
            | "RunInference" >> RunInference(KeyedModelHandler(handler))
            | "ToRow" >> beam.Map(prediction_to_row)
            | "Write" >> beam.io.WriteToParquet(os.path.join(out_dir, "part"), schema, file_name_suffix=".parquet")
        )
    wall = time.perf_counter() - start
    shards = sorted(os.listdir(out_dir))
    rows = sum(pq.ParquetFile(os.path.join(out_dir, s)).metadata.num_rows for s in shards)
    return {"wall_s": wall, "docs": rows, "shards": len(shards), "loader": loader, "notes": notes,
            "rss_before_timed_mb": rss}


def child_variant_c(work: str, name: str, corpus: str = "corpus.jsonl", profile: str | None = None,
                    job_args: tuple[str, ...] = ()) -> dict:
    _import_frameworks()
    from beam_pipeline.__main__ import run

    prefix = os.path.join(work, "out", f"c-{name}-{os.path.splitext(corpus)[0]}", "emb")
    argv = [
        "--input", os.path.join(work, corpus),
        "--model", model_paths(work, name)["keras"],
        "--tokenizer", os.path.join(work, "tokenizer.json"),
        "--output", prefix,
        "--mode", "final",
        "--padding", "pre",  # as the bench models were trained (pad_sequences' defaults)
        "--truncating", "pre",
        "--overwrite",
        *job_args,
    ]
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    rss = _rss_mb()
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    summary = run(argv)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - start
    if profiler:
        _write_profile(profiler, profile, wall, " ".join(["python -m beam_pipeline", *argv]))
    m = summary["metrics"]
    return {
        "wall_s": wall,
        "docs": summary["embedded"],
        "read": summary["read"],
        "dead_lettered": summary["dead_lettered"],
        "shards": len(summary["output_files"]),
        "tokens": int(m.get("tokens", 0)),
        "padded_timesteps": int(m.get("padded_timesteps", 0)),
        "batches": int(m.get("batches", 0)),
        "inference_s": m.get("inference_ms_total", 0) / 1000,
        "rss_before_timed_mb": rss,
    }


def _write_profile(profiler, path: str, wall: float, command: str) -> None:
    import io
    import pstats

    buf = io.StringIO()
    buf.write(f"cProfile of variant (c), this job, wall {wall:.2f}s:\n  {command}\n\n")
    for key in ("cumulative", "tottime"):
        buf.write(f"===== top 15 by {key} time =====\n")
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(key).print_stats(15)
    buf.write("===== the project's own functions (beam_pipeline/, transforms/), top 15 by cumulative time =====\n")
    own_code = re.escape(REPO) + r"/(beam_pipeline|transforms)/"
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(own_code, 15)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Parent: orchestration


def run_child(work: str, label: str, child_args: list[str], timeout_s: int = CHILD_TIMEOUT_S) -> dict:
    """Runs ``python -m bench.bench --child ...``; returns its result plus its own peak RSS, its CPU
    time, and the CPU time the rest of the machine used meanwhile (``other_cpu_s``: contention)."""
    result_path = os.path.join(work, f"result-{label}.json")
    log_path = os.path.join(work, f"log-{label}.txt")
    cmd = [sys.executable, "-m", "bench.bench", "--workdir", work, "--result", result_path, *child_args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    print(f"  [{label}] running ...", end="", flush=True, file=sys.stderr)
    start, busy = time.perf_counter(), cpu_busy_s()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        usage = wait_child(proc, timeout_s)
    elapsed, busy = time.perf_counter() - start, cpu_busy_s() - busy
    child_cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, busy - child_cpu)
    print(f" {elapsed:.1f}s" + (f" (other processes used {other:.1f} CPU-s meanwhile)" if other > 0.1 * elapsed
                                 else ""), file=sys.stderr)
    if proc.returncode != 0 or not os.path.exists(result_path):
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"child {label} failed (exit {proc.returncode}):\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB; this child (and its waited children)
    result["process_s"] = round(elapsed, 2)
    result["child_cpu_s"] = round(child_cpu, 2)
    result["other_cpu_s"] = round(other, 2)
    return result


def run_best_of(work: str, label: str, child_args: list[str], repeat: int) -> dict:
    """``repeat`` runs of one variant; keeps the fastest (least disturbed), with every wall time."""
    runs = [run_child(work, label, child_args) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    if repeat > 1:
        best["wall_s_all"] = [round(r["wall_s"], 3) for r in runs]
        best["peak_rss_mb_all"] = [r["peak_rss_mb"] for r in runs]
    return best


def derive(result: dict, n_docs: int, tokens: int) -> dict:
    """docs/s, tokens/s and padding overhead of one variant."""
    wall = result["wall_s"]
    result["wall_s"] = round(wall, 3)
    result["docs_per_s"] = round(result["docs"] / wall, 1)
    result["tokens_per_s"] = round(result.get("tokens", tokens) / wall, 1)
    padded = result.get("padded_timesteps", n_docs * MAXLEN)
    result["padding_overhead"] = round(padded / max(result.get("tokens", tokens), 1), 3)
    return result


def machine_info() -> dict:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
        "keras": version("keras"),
        "apache_beam": version("apache-beam"),
        "numpy": version("numpy"),
        "pyarrow": version("pyarrow"),
        "tensorflow_hub": version("tensorflow-hub"),
    }


def _contention(r: dict) -> str:
    """CPU the rest of the machine used while the variant ran, in % of one core: 0% is a quiet run."""
    return f"{100 * r.get('other_cpu_s', 0) / max(r.get('process_s', 1), 1e-9):.0f}%"


def fmt_table(results: dict) -> str:
    head = (f"{'model':<12} {'variant':<22} {'wall s':>8} {'docs/s':>9} {'tokens/s':>10} {'pad/tok':>8} "
            f"{'peak RSS MB':>11} {'docs/s vs (a)':>13} {'other CPU':>9}")
    lines = [head, "-" * len(head)]
    for name, per in results["models"].items():
        for v, label in VARIANTS.items():
            r = per.get(v)
            if r is None:
                continue
            ratio = per["ratios"].get(f"{v}/a", 1.0 if v == "a" else None)
            lines.append(
                f"{name:<12} ({v}) {label:<18} {r['wall_s']:>8.2f} {r['docs_per_s']:>9.0f} {r['tokens_per_s']:>10.0f} "
                f"{r['padding_overhead']:>8.2f} {r['peak_rss_mb']:>11.0f} "
                f"{'' if ratio is None else f'{ratio:.2f}x':>13} {_contention(r):>9}"
            )
    lines.append("other CPU: CPU used by other processes while the variant ran, in % of one core "
                 f"({results['machine']['cpu_count']} cores here); above ~10% the timings are disturbed.")
    if results.get("baseline"):
        lines.append(f"(a process that only imports TF/Keras/Beam/pyarrow peaks at "
                     f"{results['baseline']['peak_rss_mb']:.0f} MB)")
    for name, per in results["models"].items():
        c = per.get("c")
        if c and c.get("inference_s"):
            lines.append(f"{name}: (c) inference {c['inference_s']:.2f}s of {c['wall_s']:.2f}s wall "
                         f"({100 * c['inference_s'] / c['wall_s']:.0f}%), {c['batches']} batches")
        b = per.get("b")
        if b:
            lines.append(f"{name}: (b) loader: {b['loader']}")
    ms = results.get("memory_scaling")
    if ms:
        lines.append(
            f"memory scaling ({ms['model']}, (c)): {ms['n']} docs {ms['small']['peak_rss_mb']:.0f} MB "
            f"({ms['small']['wall_s']:.1f}s), {ms['n_large']} docs {ms['large']['peak_rss_mb']:.0f} MB "
            f"({ms['large']['wall_s']:.1f}s): peak RSS ratio {ms['peak_rss_ratio']:.2f}"
            + (f", above the import floor {ms['above_floor_ratio']:.2f}" if ms.get("above_floor_ratio") else "")
            + (f" (job args: {ms['job_args']})" if ms.get("job_args") else "")
        )
    if results.get("profile"):
        lines.append(f"profile of (c) masked-lstm written to {results['profile']['file']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20000, help="Documents in the corpus (default 20000).")
    parser.add_argument("--model", default="all", choices=(*MODELS, "all", "none"),
                        help="Which model(s) to run variants a, b, c on (none: only --memory-scaling/--profile).")
    parser.add_argument("--out", default=os.path.join("bench", "results", "latest.json"),
                        help="Where to write the JSON results (default bench/results/latest.json).")
    parser.add_argument("--variants", default="abc", help="Subset of variants to run, e.g. 'ac' (default abc).")
    parser.add_argument("--memory-scaling", action="store_true",
                        help="Also run (c) on N and 10N docs (masked-lstm) and report the peak-RSS ratio.")
    parser.add_argument("--profile", nargs="?", const=os.path.join("bench", "results", "profile.txt"), default=None,
                        help="Also cProfile (c) on masked-lstm; writes the top functions to this file "
                             "(default bench/results/profile.txt).")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Runs per variant; the fastest is kept (default 1: one run of each).")
    parser.add_argument("--job-args", default="",
                        help="Extra flags for the job in (c) and in --engines, e.g. --job-args='--row_group_mb 8' or "
                             "--job-args='--direct_num_workers=2 --direct_running_mode=multi_processing'.")
    parser.add_argument("--engines", action="store_true",
                        help="Run the engine benchmark instead (bench/engines.py): every engine and the job on the "
                             "models of issue 11.")
    parser.add_argument("--quick", action="store_true",
                        help="With --engines: 3000 documents, the job on one model, on 2000 and 6000 documents.")
    parser.add_argument("--job-sizes", default=None, metavar="N,M",
                        help="With --engines: the two corpus sizes the job runs on; its steady docs/s is "
                             "(M - N) / (wall_M - wall_N) (default 100000,300000; --quick 2000,6000).")
    parser.add_argument("--job-repeat", type=int, default=1,
                        help="With --engines: runs of the job per size, the fastest kept (default 1).")
    parser.add_argument("--engine-models", default=None, metavar="A,B",
                        help="With --engines: only these models (default: all of bench/engines.py MODELS).")
    parser.add_argument("--keep", action="store_true", help="Keep the temp work dir (corpus, models, outputs).")
    # Internal: one variant in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-corpus", default="corpus.jsonl", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.docs < 1:
        parser.error("--docs must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if set(args.variants) - set(VARIANTS):
        parser.error("--variants takes letters from 'abc'")
    if args.job_repeat < 1:
        parser.error("--job-repeat must be at least 1")
    if args.job_sizes is not None:
        try:
            sizes = tuple(int(x) for x in args.job_sizes.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
            parser.error("--job-sizes takes two sizes N,M with 0 < N < M, e.g. 100000,300000")
        args.job_sizes = sizes
    return args


def child_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    work, name = args.workdir, args.child_model
    if args.child == "prepare":
        result = child_prepare(work, name.split(","))
    elif args.child == "idle":
        result = child_idle(work)
    elif args.child == "a":
        result = child_variant_a(work, name)
    elif args.child == "b":
        result = child_variant_b(work, name)
    elif args.child == "c":
        result = child_variant_c(work, name, args.child_corpus, args.child_profile, tuple(shlex.split(args.job_args)))
    else:
        raise SystemExit(f"unknown child {args.child!r}")
    result["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.engines:
        from bench import engines

        out = args.out if args.out != os.path.join("bench", "results", "latest.json") else os.path.join(
            "bench", "results", "engines-quick.json" if args.quick else "engines.json")
        return engines.main(3000 if args.quick and args.docs == 20000 else args.docs, args.quick, out,
                            job_sizes=args.job_sizes, job_args=args.job_args, job_repeat=args.job_repeat,
                            keep=args.keep, models=args.engine_models.split(",") if args.engine_models else None)
    from beam_pipeline.demo import fit_tokenizer_json

    names = list(MODELS) if args.model == "all" else [] if args.model == "none" else [args.model]
    needed = sorted(set(names) | ({"masked-lstm"} if args.memory_scaling or args.profile else set()),
                    key=MODELS.index)
    work = tempfile.mkdtemp(prefix="bench-")
    started = time.perf_counter()
    try:
        print(f"bench: {args.docs} docs, models {names or '-'}, work dir {work}", file=sys.stderr)
        t = time.perf_counter()
        docs = make_corpus(args.docs)
        write_jsonl(os.path.join(work, "corpus.jsonl"), docs)
        tokenizer_json = fit_tokenizer_json([d["text"] for d in docs], num_words=NUM_WORDS, oov_token=OOV_TOKEN)
        with open(os.path.join(work, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer_json)
        stats = corpus_stats(docs, tokenizer_json)
        del docs
        print(f"  corpus + tokenizer {time.perf_counter() - t:.1f}s: {stats}", file=sys.stderr)
        results: dict = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.bench", *(sys.argv[1:] if argv is None else argv)]),
            "machine": machine_info(),
            "n_docs": args.docs,
            "maxlen": MAXLEN,
            "batch_size": BATCH_SIZE,
            "padding": "pre",
            "corpus": {**stats, "lognormal_mu_sigma": [round(x, 4) for x in lognormal_params()],
                       "vocabulary": VOCAB_SIZE, "num_words": NUM_WORDS, "seed": SEED},
            "models": {},
        }
        models_info = run_child(work, "prepare", ["--child", "prepare", "--child-model", ",".join(needed)]) \
            if needed else {}
        results["baseline"] = {"peak_rss_mb": run_child(work, "idle", ["--child", "idle"])["peak_rss_mb"]}
        tokens = stats["tokens"]
        for name in names:
            per: dict = {"model": models_info[name], "ratios": {}}
            for v in VARIANTS:
                if v not in args.variants:
                    continue
                child = ["--child", v, "--child-model", name] + ([f"--job-args={args.job_args}"] if v == "c" else [])
                r = run_best_of(work, f"{v}-{name}", child, args.repeat)
                per[v] = derive(r, args.docs, tokens)
                shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            for v in ("b", "c"):
                if v in per and "a" in per:
                    per["ratios"][f"{v}/a"] = round(per[v]["docs_per_s"] / per["a"]["docs_per_s"], 3)
            results["models"][name] = per
        if args.memory_scaling:
            results["memory_scaling"] = memory_scaling(work, args.docs, results, args.job_args)
        if args.profile:
            r = run_child(work, "profile", ["--child", "c", "--child-model", "masked-lstm",
                                            f"--job-args={args.job_args}", "--child-profile",
                                            os.path.abspath(args.profile)])
            results["profile"] = {"file": args.profile, "wall_s": round(r["wall_s"], 3)}
        results["bench_seconds"] = round(time.perf_counter() - started, 1)
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(fmt_table(results))
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


def memory_scaling(work: str, n: int, results: dict, job_args: str = "") -> dict:
    """(c) on masked-lstm over N and 10N documents (same tokenizer and model): peak RSS should stay flat."""
    large = 10 * n
    write_jsonl(os.path.join(work, "corpus-10x.jsonl"), make_corpus(large))
    small = results["models"].get("masked-lstm", {}).get("c")
    if small is None:
        small = derive(run_child(work, "c-masked-lstm", ["--child", "c", "--child-model", "masked-lstm",
                                                         f"--job-args={job_args}"]), n, 0)
    big = derive(run_child(work, "c-masked-lstm-10x", ["--child", "c", "--child-model", "masked-lstm",
                                                       f"--job-args={job_args}",
                                                       "--child-corpus", "corpus-10x.jsonl"]), large, 0)
    os.unlink(os.path.join(work, "corpus-10x.jsonl"))
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    floor = results.get("baseline", {}).get("peak_rss_mb")
    keys = ("wall_s", "docs", "docs_per_s", "tokens", "tokens_per_s", "padding_overhead", "peak_rss_mb",
            "rss_before_timed_mb")
    return {
        "model": "masked-lstm",
        "job_args": job_args,
        "n": n,
        "n_large": large,
        "small": {k: small.get(k) for k in keys},
        "large": {k: big.get(k) for k in keys},
        "peak_rss_ratio": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "baseline_peak_rss_mb": floor,
        "above_floor_ratio": round((big["peak_rss_mb"] - floor) / (small["peak_rss_mb"] - floor), 3) if floor else None,
    }


if __name__ == "__main__":
    # Run as bench.bench (not __main__) so that functions pickled into Beam transforms resolve by module.
    from bench import bench as _bench

    sys.exit(_bench.main())
