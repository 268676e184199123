"""Engine benchmark: every inference engine and the end-to-end job on the models issue 11 names.

``python -m bench.bench --engines [--quick] [--docs N] [--out bench/results/engines.json]``

One process builds one corpus and tokenizer (``bench.bench.make_corpus``) and four models, then per
model, in one run and on the same corpus:

- ``predict``: ``keras.Model(model.inputs, layer.output).predict(X, batch_size=512)`` on the corpus
  padded as the model was trained, best of 3 passes: the baseline of every ratio;
- every engine (``keras``, ``xla``, ``onnx``, ``table``) forced, through the job's own ``Embedder`` in batches
  of 512 (length-sorted batches for masked models, as the job sorts them), steady state (the first
  batch, which builds and verifies the engine, is timed apart as start-up);
- ``job``: the whole job with ``--engine auto`` on the DirectRunner, JSONL to finalized Parquet,
  and which engine its calibration kept.

Printed per row: docs/s, ratio to ``predict``, timesteps run per real token, useful GFLOP/s (the
recurrent FLOPs of the real tokens only: ``2 * gates * units * (inputs + units)`` per token, layer
and direction) and that as a % of the CPU's FP32 peak (32 FLOP/cycle/core: 2 FMA pipes x 256 bit,
clock from ``/proc/cpuinfo``), and start-up seconds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

BATCH = 512
SORT_BUFFER = 32 * BATCH
MODELS = {
    # name: (maxlen, padding, vocabulary, builder description)
    "masked-bilstm-x3": (48, "post", 8000),
    "lstm64-post": (64, "post", 20000),
    "lstm64-pre": (64, "pre", 20000),
    "gru64-pre": (64, "pre", 20000),
}
ENGINES = ("keras", "xla", "onnx", "table")


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


def _batches(seqs: list[list[int]], masked: bool) -> list[list[list[int]]]:
    if masked:  # the job sorts by length within bounded buffers
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
    batches = _batches(seqs, embedder.info.masked)
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


def run_job(work: str, model_path: str, name: str) -> dict:
    from beam_pipeline.__main__ import run

    maxlen, padding, _ = MODELS[name]
    start = time.perf_counter()
    summary = run(["--input", os.path.join(work, "corpus.jsonl"), "--output", os.path.join(work, "out", name),
                   "--model", model_path, "--tokenizer", os.path.join(work, "tokenizer.json"), "--layer", "target",
                   "--maxlen", str(maxlen), "--padding", padding, "--truncating", "pre", "--overwrite"])
    wall = time.perf_counter() - start
    metrics = summary.get("metrics", {})
    return {"docs": summary["embedded"], "wall_s": wall, "timesteps": metrics.get("padded_timesteps", 0),
            "engines": {k[len("batches_"):]: v for k, v in metrics.items() if k.startswith("batches_")}}


def main(docs: int, quick: bool, out: str | None) -> int:
    import logging

    from beam_pipeline.demo import fit_tokenizer_json
    from beam_pipeline.keras_tokenizer import KerasTokenizer
    from bench.bench import NUM_WORDS, OOV_TOKEN, make_corpus, write_jsonl

    logging.basicConfig(level=logging.WARNING)
    n = docs or (3000 if quick else 20000)
    peak, ghz, cores = cpu_peak_gflops()
    work = tempfile.mkdtemp(prefix="bench-engines-")
    corpus = make_corpus(n)
    write_jsonl(os.path.join(work, "corpus.jsonl"), corpus)
    texts = [d["text"] for d in corpus]
    tokenizers = {vocab: fit_tokenizer_json(texts, num_words=min(vocab, NUM_WORDS), oov_token=OOV_TOKEN)
                  for vocab in {v for _, _, v in MODELS.values()}}
    results: dict = {"docs": n, "quick": quick, "cpu": {"peak_gflops": round(peak, 1), "ghz": ghz, "cores": cores},
                     "models": {}}
    print(f"engines bench: {n} docs, FP32 peak {peak:.0f} GFLOP/s ({cores} cores x {ghz:.2f} GHz x 32)")
    header = f"{'model':18} {'variant':8} {'docs/s':>9} {'ratio':>6} {'steps/tok':>9} {'GFLOP/s':>8} {'%peak':>6} " \
             f"{'start-up s':>10}  notes"
    print(header)
    for name in MODELS:
        maxlen, padding, vocab = MODELS[name]
        with open(os.path.join(work, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tokenizers[vocab])
        all_seqs = KerasTokenizer.from_json(tokenizers[vocab]).texts_to_sequences(texts)
        seqs = [s[-maxlen:] for s in all_seqs if s]  # truncating="pre"; documents without tokens are dead letters
        model = build(name)
        model_path = os.path.join(work, f"{name}.keras")
        model.save(model_path)
        flops = useful_flops_per_token(model)
        rows = {"predict": run_predict(model, name, seqs)}
        for engine in ENGINES:
            try:
                rows[engine] = run_engine(model, name, engine, seqs)
            except Exception as e:  # a forced engine that declines this model
                print(f"{name:18} {engine:8} declined: {e}")
        if not quick or name == "masked-bilstm-x3":
            rows["job"] = run_job(work, model_path, name)
        base = rows["predict"]["docs"] / rows["predict"]["wall_s"]
        tokens_per_doc = sum(map(len, seqs)) / len(seqs)
        for variant, r in rows.items():
            rate = r["docs"] / r["wall_s"]
            tokens = rate * tokens_per_doc
            steps = (r["timesteps"] / (r["docs"] if variant in ("predict", "job") else len(seqs))) / tokens_per_doc
            if r.get("prefix_cache"):
                steps = 1.0
            r.update(docs_per_s=round(rate, 1), ratio=round(rate / base, 3), timesteps_per_token=round(steps, 3),
                     gflops=round(tokens * flops / 1e9, 2), pct_peak=round(100 * tokens * flops / 1e9 / peak, 2))
            notes = ""
            if variant == "job":
                notes = f"engines used: {r['engines']}"
            elif variant in ENGINES and r["report"]:
                notes = "calibration: " + ", ".join(f"{k} {v.get('seconds', v.get('declined', v.get('dropped')))}"
                                                    for k, v in r["report"].items())
            startup = f"{r['startup_s']:.2f}" if "startup_s" in r else "-"
            print(f"{name:18} {variant:8} {rate:9.0f} {rate / base:6.2f} {steps:9.2f} {r['gflops']:8.2f} "
                  f"{r['pct_peak']:6.2f} {startup:>10}  {notes}")
        results["models"][name] = {"maxlen": maxlen, "padding": padding, "useful_flops_per_token": flops,
                                   "rows": rows}
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"written to {out}", file=sys.stderr)
    return 0
