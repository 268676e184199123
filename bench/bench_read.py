"""The reader alone: µs per document of the fast readers (``transforms/read_fast.py``) and of the
per-record code they fall back to (``ReadRecords(fast=False)``), on the same files, in one process.

Corpora (``--docs`` documents each, ``bench.bench.make_corpus`` texts): plain English JSONL; an
escape-heavy JSONL (quotes, backslashes, newlines, tabs, accents, CJK, emoji, ``ensure_ascii`` escapes);
CSV; plain text; Parquet. Each reader runs ``--repeat`` times on each file, alternating, the fastest
kept; the time is this process's CPU time (``time.process_time``: the readers use one thread), which a
machine shared with other work disturbs less than wall time.

    python -m bench.bench_read --docs 200000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from bench.bench import make_corpus
from transforms.batch import DocBatch
from transforms.read import ReadRecords

_NOISE = ['"', "\\", "\n", "\t", "é", "ü", "中文", "😀", "\u2028", "'", "/", "\r\n"]


def _escaped(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in range(0, len(words), 3):
        words[i] += rng.choice(_NOISE)
    return " ".join(words)


def write_corpora(folder: str, n: int) -> dict[str, str]:
    docs = make_corpus(n)
    rng = random.Random(5)
    paths = {name: os.path.join(folder, name) for name in
             ("english.jsonl", "escapes.jsonl", "english.csv", "english.txt", "english.parquet")}
    with open(paths["english.jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with open(paths["escapes.jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": d["id"], "text": _escaped(d["text"], rng)}, ensure_ascii=i % 2 == 0) + "\n"
                     for i, d in enumerate(docs))
    with open(paths["english.csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows((d["id"], d["text"]) for d in docs)
    with open(paths["english.txt"], "w", encoding="utf-8") as f:
        f.writelines(d["text"] + "\n" for d in docs)
    pq.write_table(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}),
                   paths["english.parquet"])
    return paths


def read_seconds(path: str, fast: bool) -> tuple[float, int]:
    """(CPU seconds of one read of the whole file, documents read)."""
    start = time.process_time()
    docs = sum(len(out) for out in ReadRecords("id", "text", fast=fast).process((path, os.path.getsize(path)))
               if isinstance(out, DocBatch))
    return time.process_time() - start, docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200000, help="Documents per corpus (default 200000).")
    parser.add_argument("--repeat", type=int, default=3, help="Reads per file and reader; the fastest is kept.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_corpora(folder, args.docs)
        print(f"{'file':18s} {'MB':>7s} {'per-record us/doc':>18s} {'fast us/doc':>12s} {'speed-up':>9s}  (CPU time)")
        for name, path in paths.items():
            slow = fast = float("inf")
            for _ in range(args.repeat):
                seconds, n_slow = read_seconds(path, False)
                slow = min(slow, seconds)
                seconds, n_fast = read_seconds(path, True)
                fast = min(fast, seconds)
                assert n_slow == n_fast == args.docs, (name, n_slow, n_fast)
            print(f"{name:18s} {os.path.getsize(path) / 1e6:7.1f} {slow / args.docs * 1e6:18.2f} "
                  f"{fast / args.docs * 1e6:12.2f} {slow / fast:8.1f}x")


if __name__ == "__main__":
    main()
