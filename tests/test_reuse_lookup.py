"""The lookup join's index (``transforms/reuse_lookup.py``) against a plain dictionary, under random keys,
repeated ids and texts, and fingerprints forced to collide: a row is found only when its id and its full
``text_hash`` are the document's, and then the first such row (lowest file, row group, row)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import reuse_lookup
from transforms.reuse_lookup import PreviousIndex, id_fingerprints

IDS = st.sampled_from(["a", "b", "c", "dd", "é", "doc-1", "doc-10", ""])
HASHES = st.sampled_from([bytes([k]) * 16 for k in range(4)] + [bytes(15) + b"\x01"])


def _piece(rows: list[tuple[str, bytes]], file: int, group: int) -> tuple[int, int, pa.Table]:
    return file, group, pa.table({"doc_id": pa.array([r[0].encode() for r in rows], pa.binary()),
                                  "text_hash": pa.array([r[1] for r in rows], pa.binary(16))})


@settings(max_examples=300, deadline=None)
@given(previous=st.lists(st.lists(st.tuples(IDS, HASHES), max_size=12), max_size=4),
       queries=st.lists(st.tuples(IDS, HASHES), max_size=12), weak=st.booleans(), sized=st.booleans(),
       steps=st.sampled_from([1, 2, reuse_lookup.SCAN_STEPS]))
def test_the_index_finds_exactly_the_first_equal_row(previous, queries, weak, sized, steps):
    pieces = [_piece(rows, file=k % 2, group=k) for k, rows in enumerate(previous)]
    original, scan = reuse_lookup.id_fingerprints, reuse_lookup.SCAN_STEPS
    # steps: buckets and runs of equal fingerprints longer than this are binary-searched instead of scanned
    reuse_lookup.SCAN_STEPS = steps
    if weak:  # every id in two fingerprints: collisions everywhere, found only by the exact checks
        reuse_lookup.id_fingerprints = lambda ids: original(ids) % 2
    try:
        index = PreviousIndex(iter(pieces), rows=sum(len(r) for r in previous) if sized else None)
        ids = pa.array([q[0] for q in queries], pa.string())
        hashes = np.frombuffer(b"".join(q[1] for q in queries), np.uint8).reshape(len(queries), 16)
        found, known = index.lookup(ids, hashes, reuse_lookup.id_fingerprints(ids))
    finally:
        reuse_lookup.id_fingerprints, reuse_lookup.SCAN_STEPS = original, scan
    first: dict = {}
    for k, rows in enumerate(previous):
        for row, key in enumerate(rows):
            position = (k, row)  # the order read: pieces as given, rows in order
            first[key] = min(first.get(key, position), position)
    previous_ids = sorted({r[0] for rows in previous for r in rows})
    for q, at, representative in zip(queries, found, known):
        if q in first:
            assert at >= 0
            k, row = first[q]
            assert tuple(index.positions(np.array([at]))[0]) == (k % 2, k, row)
            assert index.ids_at(np.array([at]))[0].as_py() == q[0].encode()
            assert index.hashes_at(np.array([at]))[0].tobytes() == q[1]
        else:
            assert at == -1
        assert (representative >= 0) == (q[0] in previous_ids)
        if representative >= 0:
            assert index.ids_at(np.array([representative]))[0].as_py() == q[0].encode()
    by_id = {}
    for q, representative in zip(queries, known):
        if representative >= 0:
            assert by_id.setdefault(q[0], representative) == representative, "one id, two representatives"
    assert len(set(by_id.values())) == len(by_id), "two ids share a representative"
    first_entries = index.representatives()
    assert int(first_entries.sum()) == len(previous_ids)
    assert all(first_entries[r] for r in by_id.values())


def test_fingerprints_are_the_same_in_every_process():
    """Workers OR their bitmaps of the index's entries: the index's order, so the fingerprint, must be a
    function of the bytes alone, the same in another process."""
    import subprocess
    import sys

    ids = ["doc-1", "é", "", "x" * 65, "日本語" * 30]
    here = id_fingerprints(pa.array(ids)).tolist()
    code = ("import sys, json, pyarrow as pa; from transforms.reuse_lookup import id_fingerprints; "
            "print(json.dumps(id_fingerprints(pa.array(json.loads(sys.argv[1]))).tolist()))")
    import json

    there = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], capture_output=True, text=True, check=True)
    assert json.loads(there.stdout) == here
    import xxhash

    assert int(id_fingerprints(pa.array(["x" * 65])).view(np.uint64)[0]) == xxhash.xxh3_64_intdigest(b"x" * 65)


ANY_ID = st.one_of(st.text(max_size=12), st.text(min_size=60, max_size=70), st.sampled_from(["a", "a ", "a  ", ""]))


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(ANY_ID, max_size=40), start=st.integers(0, 5), binary=st.booleans())
def test_a_fingerprint_depends_on_the_id_alone(ids, start, binary):
    """Whatever batch an id comes in (other ids' lengths set the padding width; a slice; binary or string;
    ids beyond LONG_ID_BYTES mixed in), its fingerprint is the one it has alone; ids that differ only by
    trailing spaces still differ."""
    array = pa.array(["pad"] * start + ids, pa.binary() if binary else pa.string()).slice(start)
    together = id_fingerprints(array).tolist()
    alone = [int(id_fingerprints(pa.array([i]))[0]) for i in ids]
    assert together == alone
    by_fp = {}
    for i, f in zip(ids, alone):
        by_fp.setdefault(f, set()).add(i)
    assert all(len(v) == 1 for v in by_fp.values()), "a collision among a few short ids"


def test_fingerprints_of_many_ids_in_chunks():
    """Beyond 64k ids the padding is done a chunk at a time (each chunk its own width)."""
    ids = [f"id-{i}" + ("z" * (i % 50) if i > 70000 else "") for i in range(140000)]
    together = id_fingerprints(pa.array(ids))
    sample = np.arange(0, 140000, 997)
    assert together[sample].tolist() == id_fingerprints(pa.array([ids[i] for i in sample])).tolist()
    assert len(np.unique(together)) == len(ids)
