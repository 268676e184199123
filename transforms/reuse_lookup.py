"""Reuse by lookup (``--previous`` whose keys fit in a worker's memory, ``--previous_join lookup``; the
launcher decides, see ``beam_pipeline/previous.py``): the input is read once; each batch is hashed and
looked up in an index of the previous output's keys, a side input every worker holds; no shuffle of the
corpus' keys, no second read.

- ``ReadPreviousKeys`` (shared with the shuffle join, ``transforms/reuse.py``) reads each previous row
  group, its pages verified against their checksums, into a piece of keys: ids, ``text_hash``es and
  positions (file, row group, row). A row group that fails gives no piece: its documents are embedded.
- ``PreviousIndex``, built once per worker process from those pieces: the keys sorted by a 64-bit
  fingerprint of ``id || text_hash`` (XXH3-64 of the id, xor the first 8 bytes of the text hash), and the
  ids sorted by the fingerprint of the id alone. A fingerprint only finds candidates: a row is reused
  only when its id and its full 16-byte ``text_hash`` are equal to the document's (a collision costs a
  look at the next candidate, never a wrong row).
- ``MatchPrevious``: per input batch, its documents to embed (with their ``text_hash``) go on to be
  tokenized; the positions of the rows to copy, with the keys they must hold, go to ``CopyRows`` grouped
  by (file, row group); counts ``reused``, ``new``, ``changed``; the positions of the previous ids seen,
  for ``removed``.

Memory per worker process: ~(72 + mean id length) bytes per previous row (the index: 83 MB for a million
12-byte ids, measured) plus Beam's decoded copy of the side input (~(44 + id length) bytes per row):
~0.16 GB per million previous rows of 20-byte ids. ``docs/incremental.md`` says where the launcher
switches to the shuffle join.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms.batch import DocBatch, hash_texts
from transforms.errors import NAMESPACE
from transforms.reuse import COPY, COUNTS, CopyRows, ReadPreviousKeys, combine_counts, hash_matrix
from transforms.write import HASH_BYTES, output_schema

SEEN = "seen"


def id_fingerprints(ids: pa.Array) -> np.ndarray:
    """``(B,)`` int64: XXH3-64 of each id's UTF-8 bytes (as signed integers: NumPy sorts and searches
    int64 several times faster than uint64)."""
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    binary = ids.cast(pa.binary()) if not pa.types.is_binary(ids.type) else ids
    out = np.empty(len(ids), dtype=np.uint64)
    for start in range(0, len(ids), 65536):  # Python bytes for 64k ids at a time, not for a whole output
        chunk = binary.slice(start, 65536).to_pylist()
        out[start:start + len(chunk)] = np.fromiter(map(digest, chunk), dtype=np.uint64, count=len(chunk))
    return out.view(np.int64)


def key_fingerprints(id_fp: np.ndarray, text_hash: np.ndarray) -> np.ndarray:
    """``(B,)`` int64 fingerprints of ``id || text_hash``: the id's xor the hash's first 8 bytes."""
    return id_fp ^ np.ascontiguousarray(text_hash[:, :8]).view(np.int64).reshape(-1)


def _search(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_values, queries)``, the queries taken in sorted order (twice as fast)."""
    order = np.argsort(queries, kind="stable")
    at = np.empty(len(queries), dtype=np.int64)
    at[order] = np.searchsorted(sorted_values, queries[order])
    return at


def _equal_ids(a: pa.Array, b: pa.Array) -> np.ndarray:
    return pc.equal(a.cast(pa.binary()), b.cast(pa.binary())).to_numpy(zero_copy_only=False)


class PreviousIndex:
    """The previous output's keys, sorted for lookups (see the module docstring). The keys stay in the
    order read; two int32 permutations sort them, by key fingerprint (then position: the first of equal
    keys is the lowest file, row group, row) and by id fingerprint (then id: equal ids side by side).
    ~(72 + mean id length) bytes per previous row."""

    def __init__(self, pieces: list[pa.Table]):
        table = pa.concat_tables(pieces) if pieces else pa.table({
            "doc_id": pa.array([], pa.binary()), "text_hash": pa.array([], pa.binary(HASH_BYTES)),
            "file": pa.array([], pa.int32()), "group": pa.array([], pa.int32()), "row": pa.array([], pa.int32())})
        self.ids = table.column("doc_id").combine_chunks().cast(pa.binary())
        self.hashes = hash_matrix(table.column("text_hash").combine_chunks())
        self.position = np.stack([table.column(c).to_numpy() for c in ("file", "group", "row")], axis=1)
        del table
        id_fp = id_fingerprints(self.ids)
        key_fp = key_fingerprints(id_fp, self.hashes)
        p = self.position
        self.by_key = np.lexsort((p[:, 2], p[:, 1], p[:, 0], key_fp)).astype(np.int32)
        self.key_fp = key_fp[self.by_key]
        del key_fp
        by_id = np.argsort(id_fp, kind="stable")
        if len(by_id) > 1 and (id_fp[by_id][1:] == id_fp[by_id][:-1]).any():
            # equal fingerprints (the same id, or a collision): equal ids must lie side by side
            by_id = pc.sort_indices(pa.table({"fp": id_fp, "id": self.ids}),
                                    sort_keys=[("fp", "ascending"), ("id", "ascending")]).to_numpy()
        self.by_id = by_id.astype(np.int32)
        self.id_fp = id_fp[by_id]
        del id_fp, by_id
        first = np.ones(len(self.by_id), dtype=bool)
        if len(self.by_id) > 1:
            same_fp = self.id_fp[1:] == self.id_fp[:-1]
            same = np.zeros(len(self.by_id) - 1, dtype=bool)
            if same_fp.any():
                at = np.flatnonzero(same_fp)
                same[at] = _equal_ids(self.ids.take(pa.array(self.by_id[at])),
                                      self.ids.take(pa.array(self.by_id[at + 1])))
            first[1:] = ~same
        self.distinct = (np.cumsum(first) - 1).astype(np.int32)  # distinct-id number, in id order
        self.distinct_ids = int(first.sum())
        self.distinct_of = np.empty(len(self.by_id), dtype=np.int32)  # the same, per key in the order read
        self.distinct_of[self.by_id] = self.distinct

    def __len__(self) -> int:
        return len(self.key_fp)

    def match(self, ids: pa.Array, text_hash: np.ndarray, id_fp: np.ndarray) -> np.ndarray:
        """``(B,)`` int64: for each document the index (in the order read) of its previous row, the
        first of equal ones, or -1."""

        def equal(todo: np.ndarray, candidate: np.ndarray) -> np.ndarray:
            rows = self.by_key[candidate]
            same = np.all(self.hashes[rows] == text_hash[todo], axis=1)
            return same & _equal_ids(self.ids.take(pa.array(rows)), ids.take(pa.array(todo)))

        return _mapped(_first_equal(self.key_fp, key_fingerprints(id_fp, text_hash), equal), self.by_key)

    def known_ids(self, ids: pa.Array, id_fp: np.ndarray) -> np.ndarray:
        """``(B,)`` int64: for each id its distinct-id number among the previous ids, or -1."""

        def equal(todo: np.ndarray, candidate: np.ndarray) -> np.ndarray:
            return _equal_ids(self.ids.take(pa.array(self.by_id[candidate])), ids.take(pa.array(todo)))

        return _mapped(_first_equal(self.id_fp, id_fp, equal), self.distinct)


def _mapped(at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values[at]`` where ``at`` >= 0, else -1 (int64)."""
    out = np.full(len(at), -1, dtype=np.int64)
    hit = at >= 0
    out[hit] = values[at[hit]]
    return out


def _first_equal(sorted_fp: np.ndarray, fp: np.ndarray, equal) -> np.ndarray:
    """``(B,)`` int64: for each query the first position in ``sorted_fp`` holding its fingerprint whose
    entry ``equal(queries, positions)`` confirms exactly, or -1. Each round checks the next candidate of
    the queries still unconfirmed (a fingerprint collision costs a round, never a wrong answer)."""
    found = np.full(len(fp), -1, dtype=np.int64)
    n = len(sorted_fp)
    if not n:
        return found
    at = _search(sorted_fp, fp)
    todo = np.flatnonzero(at < n)
    while len(todo):
        todo = todo[sorted_fp[at[todo]] == fp[todo]]
        if not len(todo):
            break
        confirmed = equal(todo, at[todo])
        found[todo[confirmed]] = at[todo[confirmed]]
        todo = todo[~confirmed]
        at[todo] += 1
        todo = todo[at[todo] < n]
    return found


class MatchPrevious(beam.DoFn):
    """``DocBatch(ids, texts)`` -> its documents to embed, with their ``text_hash`` (main output); ``((file,
    group), (rows, keys))`` to copy (tag ``copy``); ``(count name, n)`` (tag ``counts``); the distinct-id
    numbers of the previous ids seen (tag ``seen``). ``pieces``: the side input of previous keys."""

    def setup(self):
        self._side, self._index, self._seen = None, None, None

    def start_bundle(self):
        self._seen = None

    def finish_bundle(self):
        """The bundle's previous ids seen: one bit per distinct previous id, the count in the last 8 bytes."""
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._seen is not None:
            bits = np.concatenate([np.packbits(self._seen), np.array([len(self._seen)], np.int64).view(np.uint8)])
            yield beam.pvalue.TaggedOutput(SEEN, WindowedValue(bits, GlobalWindow().max_timestamp(), [GlobalWindow()]))
        self._seen = None

    def process(self, batch: DocBatch, pieces):
        if self._side is not pieces:  # the same side input for every batch: one index per worker process
            self._side, self._index = pieces, PreviousIndex(list(pieces))
        index = self._index
        if self._seen is None:
            self._seen = np.zeros(index.distinct_ids, dtype=bool)
        text_hash = hash_texts(batch.texts)
        id_fp = id_fingerprints(batch.ids)
        found = index.match(batch.ids, text_hash, id_fp)
        matched = found >= 0
        known = np.full(len(batch), -1, dtype=np.int64)
        known[matched] = index.distinct_of[found[matched]]
        if not matched.all():  # an id not matched with its text may still be a previous id (changed)
            rest = np.flatnonzero(~matched)
            known[rest] = index.known_ids(batch.ids.take(pa.array(rest)), id_fp[rest])
        reused = int(matched.sum())
        changed = int(((known >= 0) & ~matched).sum())
        new = int((known < 0).sum())
        for name, n in (("reused", reused), ("changed", changed), ("new", new)):
            if n:
                Metrics.counter(NAMESPACE, name).inc(n)
                yield beam.pvalue.TaggedOutput(COUNTS, (name, n))
        self._seen[known[known >= 0]] = True
        if not matched.all():
            keep = np.flatnonzero(~matched)
            yield DocBatch(batch.ids, batch.texts, text_hash=text_hash).take(keep)
        if reused:
            at = found[matched]
            where = index.position[at]
            order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
            where, wanted = where[order], index.hashes[at[order]]
            starts = np.flatnonzero(np.any(np.diff(where[:, :2], axis=0, prepend=-1) != 0, axis=1))
            for start, stop in zip(starts, np.append(starts[1:], len(where))):
                key = (int(where[start, 0]), int(where[start, 1]))
                yield beam.pvalue.TaggedOutput(COPY, (key, (where[start:stop, 2].astype(np.int64),
                                                            wanted[start:stop])))


class UnionSeen(beam.CombineFn):
    """The previous ids seen, over every bundle: bitwise or of the bundles' bitmaps (``np.packbits`` of
    one bit per distinct previous id, 125 KB per million ids); ``None`` when no batch was read."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, seen):
        return seen if accumulator is None else np.bitwise_or(accumulator, seen)

    def merge_accumulators(self, accumulators):
        out = None
        for a in accumulators:
            if a is not None:
                out = a if out is None else np.bitwise_or(out, a)
        return out

    def extract_output(self, accumulator):
        return accumulator


class CountRemoved(beam.DoFn):
    """The bitmap of previous ids seen -> ``("removed", previous distinct ids never seen)``; with no bitmap
    (no batch read), every previous id is removed."""

    def process(self, seen, pieces):
        if seen is not None:
            distinct, found = int(seen[-8:].view(np.int64)[0]), int(np.unpackbits(seen[:-8]).sum())
        else:
            pieces = list(pieces)
            ids = pa.concat_arrays([p.column("doc_id").combine_chunks() for p in pieces]) if pieces else None
            distinct, found = (pc.count_distinct(ids).as_py() if ids is not None and len(ids) else 0), 0
        removed = distinct - found
        if removed:
            Metrics.counter(NAMESPACE, "removed").inc(removed)
        yield "removed", removed


class ReuseByLookup(beam.PTransform):
    """``docs``: the ``DocBatch(ids, texts)``es read (once) -> (documents to tokenize and embed, with their
    ``text_hash``; reused ``Rows``; ``(count name, n)`` pairs)."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def expand(self, docs):
        previous = self.config.previous
        paths = tuple(previous["files"])
        keys = (
            docs.pipeline
            | "PreviousShards" >> beam.Create(list(enumerate(paths)))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadPreviousKeys" >> beam.ParDo(ReadPreviousKeys(self.config.provenance(), None))
            .with_outputs(COUNTS, main="keys")
        )
        side = beam.pvalue.AsList(keys.keys)
        matched = docs | "MatchPrevious" >> beam.ParDo(MatchPrevious(), side).with_outputs(
            COPY, COUNTS, SEEN, main="embed")
        reused = (
            matched[COPY]
            | "GroupByRowGroup" >> beam.GroupByKey()
            | "CopyRows" >> beam.ParDo(CopyRows(paths, output_schema(self.config)))
        )
        removed = (
            matched[SEEN]
            | "UnionSeen" >> beam.CombineGlobally(UnionSeen())
            | "CountRemoved" >> beam.ParDo(CountRemoved(), side)
        )
        counts = ((matched[COUNTS], keys[COUNTS], removed) | "AllCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombinePerKey(combine_counts))
        return matched.embed, reused, counts
