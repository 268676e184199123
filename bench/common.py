"""What both benchmarks share: the synthetic corpus, and waiting for a child process with its rusage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
from statistics import NormalDist

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAXLEN = 200
VOCAB_SIZE = 20000
NUM_WORDS = 20000
OOV_TOKEN = "<unk>"
SEED = 20250
# Document length in words: a lognormal fitted (least squares on the log scale) to these quantiles.
LENGTH_QUANTILES = {"median": 17, "p90": 63, "p99": 189}

# The most frequent English words, most frequent first: the head of the Zipfian vocabulary.
COMMON_WORDS = """
the of and to a in is that for it as was with be by on not he i this are or his from at which but
have an they you were her she there one all we their been has would when if will more who so no
what up out about said into them can some time only could new other than then these its two may
first do any like my now over such our man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three states himself few house use during without again place american
around however home small found thought went say part once general high upon school every does
got united left number course war until always away something fact water though less public put
think almost hand enough far took head yet government system better set told nothing night end
why called didn't eyes find going look asked later knew point next city business give group
toward young let room president side social given present several order national possible rather
second face per among form important often things looked early white case john become large big
need four within felt along children saw best church ever least power development light thing
""".split()
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
           "br", "ch", "cl", "cr", "dr", "fl", "fr", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr", "wh")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "ou", "oo", "y")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rd", "sh")


# ---------------------------------------------------------------------------------------------
# Corpus


def lognormal_params() -> tuple[float, float]:
    """``(mu, sigma)`` of the word-count lognormal: ``mu = ln(median)``, sigma fitted to p90 and p99."""
    q = LENGTH_QUANTILES
    mu = math.log(q["median"])
    z = [NormalDist().inv_cdf(0.90), NormalDist().inv_cdf(0.99)]
    d = [math.log(q["p90"]) - mu, math.log(q["p99"]) - mu]
    sigma = (z[0] * d[0] + z[1] * d[1]) / (z[0] ** 2 + z[1] ** 2)
    return mu, sigma


def vocabulary(size: int = VOCAB_SIZE, seed: int = SEED) -> list[str]:
    """``size`` distinct words, most frequent first: real English function words, then pseudo-words
    that get longer (more syllables) as they get rarer. Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    words = list(dict.fromkeys(w for w in COMMON_WORDS if "'" not in w))[:size]
    seen = set(words)
    syllables = [o + n + c for o in _ONSETS for n in _NUCLEI for c in _CODAS]
    while len(words) < size:
        rank = len(words)
        count = 1 if rank < 1500 else 2 if rank < 12000 else 3
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), size=count))
        if len(word) > 1 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_corpus(n: int, seed: int = SEED) -> list[dict]:
    """``n`` documents ``{"id", "text"}``: lognormal word counts, Zipf-Mandelbrot word frequencies
    (``p(rank) ~ 1 / (rank + 2.7)``), sentences with capitals, commas and end marks."""
    words = vocabulary(VOCAB_SIZE, seed)
    rng = np.random.default_rng(seed + n)
    mu, sigma = lognormal_params()
    lengths = np.maximum(1, np.rint(rng.lognormal(mu, sigma, size=n))).astype(np.int64)
    total = int(lengths.sum())
    weights = 1.0 / (np.arange(1, len(words) + 1) + 2.7)
    ids = rng.choice(len(words), size=total, p=weights / weights.sum()).tolist()
    marks = rng.random(total)  # < 1/14: sentence end, < 1/14 + 1/18: comma
    ends = rng.integers(0, 12, size=total).tolist()  # 0: "?", 1: "!", else "."
    marks = marks.tolist()
    docs, pos = [], 0
    for i, length in enumerate(lengths.tolist()):
        parts, capital = [], True
        last = pos + length - 1
        for j in range(pos, last + 1):
            word = words[ids[j]]
            if capital:
                word, capital = word.capitalize(), False
            if j == last or marks[j] < 1 / 14:
                word += "?" if ends[j] == 0 else "!" if ends[j] == 1 else "."
                capital = True
            elif marks[j] < 1 / 14 + 1 / 18:
                word += ","
            parts.append(word)
        docs.append({"id": f"doc-{i:07d}", "text": " ".join(parts)})
        pos += length
    return docs


def write_jsonl(path: str, docs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


def cpu_busy_s() -> float:
    """CPU-seconds all CPUs of the machine have spent busy since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_child(proc: subprocess.Popen, timeout_s: float):
    """Waits for ``proc`` (killed after ``timeout_s``), sets its ``returncode``; returns its rusage."""
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage
