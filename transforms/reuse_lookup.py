"""Reuse by lookup (``--previous`` whose keys fit in a worker's memory, ``--previous_join lookup``; the
launcher decides, see ``beam_pipeline/previous.py``): the input is read once; each batch is hashed and
looked up in an index of the previous output's keys, which every worker process builds once; no shuffle of
the corpus' keys, no second read.

- ``ReadPreviousKeys`` (shared with the shuffle join, ``transforms/reuse.py``) checks each previous row
  group once in the whole job: every page against its checksum, the file against the footer digest the
  launcher recorded. Its output is small: ``(file, group, rows)`` per row group that passed (a side input);
  a row group that fails is reported and its documents are embedded.
- ``PreviousIndex``, built once per worker process (``acquire_index``: the DoFn instances of a process
  share it; ``CopyRows`` drops it, as copies start only once every batch is matched) by reading the key
  columns (``doc_id``, ``text_hash``) of those row groups straight from the files: no copy of the keys goes
  through the runner. The keys are sorted by (XXH3-64 of the id, the text hash's first 8 bytes, position).
  A fingerprint only finds candidates: a row is reused only when its id and its full 16-byte ``text_hash``
  are equal to the document's (a collision costs a look at the next candidate, never a wrong row).
- ``MatchPrevious``: per input batch, its documents to embed (with their ``text_hash``) go on to be
  tokenized; the positions of the rows to copy, with a digest of the hashes they must hold, go to
  ``CopyRows`` grouped by (file, row group); counts ``reused``, ``new``, ``changed``; per bundle one bit per
  index entry, set for the previous ids seen and the entries that are not their id's first
  (``CountRemoved`` counts the bits left unset, their union, as ``removed``: no index needed).

Memory per worker process: the index, ~(36 + mean id length) bytes per previous row (sorted fingerprints 8,
their buckets' starts up to 2, hashes 16 and the ids with their 4-byte offsets in read order, positions 4,
a bit per row seen and, for ``removed``, a byte);
while it is built, up to ~(52 + 2 x mean id length) for a moment (``previous.LOOKUP_BYTES_PER_ROW``).
``docs/incremental.md`` says where the launcher switches to the shuffle join.
"""

from __future__ import annotations

import threading

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms.batch import DocBatch, hash_texts
from transforms.errors import NAMESPACE
from transforms.reuse import (
    COPY,
    COUNTS,
    KEY_COLUMNS,
    CopyRows,
    ReadPreviousKeys,
    combine_counts,
    copy_request,
    hash_matrix,
)
from transforms.write import HASH_BYTES, CopiedRows, output_schema

SEEN = "seen"


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
LONG_ID_BYTES = 64  # ids longer than this are fingerprinted one by one (XXH3-64); shorter ones in NumPy


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, element-wise (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_text(ids: pa.Array) -> pa.Array:
    """``ids`` as a string array over the same bytes (a binary array is reinterpreted, not validated)."""
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return ids
    kind = pa.large_string() if pa.types.is_large_binary(ids.type) else pa.string()
    return pa.Array.from_buffers(kind, len(ids), ids.buffers(), null_count=ids.null_count, offset=ids.offset)


def id_fingerprints(ids: pa.Array) -> np.ndarray:
    """``(B,)`` int64: a 64-bit fingerprint of each id's UTF-8 bytes, a function of those bytes alone (the
    same in every process: the index's order, and so its bitmaps, must agree between workers). An id of up
    to ``LONG_ID_BYTES`` bytes is padded with spaces to a multiple of 8 bytes and its words folded through
    SplitMix64's finalizer, its length first, in NumPy over a whole batch (~0.03 µs an id, against ~0.16
    for XXH3 called per id); a longer id is XXH3-64'd. Fingerprints only find candidates: two ids that
    share one (the padding makes ``"a"`` and ``"a "`` differ by their length only) are told apart by
    comparing the ids themselves. Signed, as NumPy sorts and searches int64 several times faster."""
    n = len(ids)
    out = np.empty(n, dtype=np.uint64)
    if not n:
        return out.view(np.int64)
    text = _as_text(ids)
    if text.null_count:
        text = text.fill_null("")
    lengths = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.uint64)
    long = np.flatnonzero(lengths > LONG_ID_BYTES)
    short = None
    if len(long):
        import xxhash

        from transforms.batch import binary_views

        out[long] = np.fromiter(map(xxhash.xxh3_64_intdigest, binary_views(text.take(pa.array(long)))),
                                dtype=np.uint64, count=len(long))
        short = np.flatnonzero(lengths <= LONG_ID_BYTES)
        text, lengths = text.take(pa.array(short)), lengths[short]
    folded = np.empty(len(text), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(text), 65536):  # the padded copy of 64k ids at a time
            chunk, size = text.slice(start, 65536), lengths[start:start + 65536]
            width = max(8, int(size.max(initial=0) + 7) // 8 * 8)
            padded = pc.ascii_rpad(chunk, width=width, padding=" ")
            offsets = np.frombuffer(padded.buffers()[1], dtype=np.int64 if pa.types.is_large_string(padded.type)
                                    else np.int32)[padded.offset:padded.offset + len(chunk) + 1]
            if offsets[-1] - offsets[0] != width * len(chunk) or np.any(np.diff(offsets) != width):
                raise ValueError("id padding did not give equal widths")  # never expected: ascii_rpad pads bytes
            data = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
            words = data.view(np.uint64).reshape(len(chunk), width // 8)
            h, shortest = _mix(size * _GOLDEN), int(size.min())
            for j in range(width // 8):  # a word past an id's end leaves its fingerprint as it is
                step = _mix(h ^ words[:, j])
                h = step if shortest > 8 * j else np.where(size > 8 * j, step, h)
            folded[start:start + len(chunk)] = h
    if short is None:
        out = folded
    else:
        out[short] = folded
    return out.view(np.int64)


_SIGN = np.uint64(1 << 63)
SCAN_STEPS = 16  # a bucket (or a run of equal fingerprints) longer than this is binary-searched instead


def _bucket(fp: np.ndarray, bits: int) -> np.ndarray:
    """The top ``bits`` bits of each fingerprint, in the order of the signed values (int64)."""
    return ((fp.view(np.uint64) ^ _SIGN) >> np.uint64(64 - bits)).astype(np.int64)


def _runs(fp: np.ndarray, starts: np.ndarray, bits: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.searchsorted(fp, queries)`` with ``side="left"`` and ``"right"``: where each query's run of
    equal values starts and ends in the sorted ``fp``. Each query goes straight to its bucket (``starts``:
    where each value of the top ``bits`` bits begins, 2-4 entries a bucket) and steps through it (~4x faster
    than a binary search of 1M entries); a bucket or a run longer than ``SCAN_STEPS`` is binary-searched."""
    n = len(fp)
    b = _bucket(queries, bits)
    lo, end = starts[b].astype(np.int64), starts[b + 1].astype(np.int64)
    wide = np.flatnonzero(end - lo > SCAN_STEPS)  # many fingerprints share these top bits (never by chance)
    if len(wide):
        lo[wide] = np.searchsorted(fp, queries[wide], side="left")
        end[wide] = lo[wide]
    todo = np.flatnonzero(lo < end)
    while len(todo):
        todo = todo[fp[lo[todo]] < queries[todo]]
        lo[todo] += 1
        todo = todo[lo[todo] < end[todo]]
    hi = lo.copy()
    todo = np.flatnonzero(lo < n)
    todo = todo[fp[lo[todo]] == queries[todo]]
    for _ in range(SCAN_STEPS):
        if not len(todo):
            break
        hi[todo] += 1
        todo = todo[hi[todo] < n]
        todo = todo[fp[hi[todo]] == queries[todo]]
    if len(todo):  # a long run: an id in many rows
        hi[todo] = np.searchsorted(fp, queries[todo], side="right")
    return lo, hi


def _equal_ids(a: pa.Array, b: pa.Array) -> np.ndarray:
    return pc.equal(a.cast(pa.binary()), b.cast(pa.binary())).to_numpy(zero_copy_only=False)


def _prefix(hashes: np.ndarray) -> np.ndarray:
    """``(N, 16)`` uint8 -> ``(N,)`` int64: the hashes' first 8 bytes."""
    return np.ascontiguousarray(hashes[:, :8]).view(np.int64).reshape(-1)


def _key_order(fp: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` int32: the positions in the order (fingerprint, hash prefix, position), and the fingerprints
    in that order. One sort of the fingerprints; the runs of equal ones (an id in several rows, or ids that
    collide: few) are then ordered by hash prefix and position among themselves (np.lexsort of all three
    keys: 3x slower)."""
    order = np.argsort(fp).astype(np.int32)
    ordered = fp[order]
    tie = np.zeros(len(fp), dtype=bool)
    if len(fp) > 1:
        same = ordered[1:] == ordered[:-1]
        tie[1:] |= same
        tie[:-1] |= same
    at = np.flatnonzero(tie)
    if len(at):  # runs keep their places; within them, rows are ordered by prefix and position
        rows = order[at]
        order[at] = rows[np.lexsort((rows, _prefix(hashes[rows]), ordered[at]))]
    return order, ordered


class PreviousIndex:
    """The previous output's keys, sorted for lookups (see the module docstring): the id fingerprints in
    the order (id fingerprint, hash prefix, position), ``order`` mapping each sorted entry to its position
    (read order: pieces as given, rows in order), where the ids and hashes stay (``ids_at``, ``hashes_at``:
    a lookup reaches a few scattered entries anyway, so sorting them too would only cost memory). ``pieces``:
    ``(file, group, pa.Table(doc_id, text_hash))`` per row group, its rows in order; ``rows``: their total,
    when known (the hashes are then filled in place, not concatenated)."""

    def __init__(self, pieces, rows: int | None = None):
        ids, fps, hashes, starts, groups = [], [], [], [0], []
        filled = np.empty((rows, HASH_BYTES), np.uint8) if rows is not None else None
        for file, group, table in pieces:
            n = table.num_rows
            piece_ids = table.column("doc_id").combine_chunks()
            piece_ids = piece_ids.cast(pa.binary()) if not pa.types.is_binary(piece_ids.type) else piece_ids
            piece_hashes = hash_matrix(table.column("text_hash").combine_chunks())
            if filled is not None:
                if starts[-1] + n > rows:
                    raise ValueError("the previous row groups hold more rows than were checked")
                filled[starts[-1]:starts[-1] + n] = piece_hashes
            else:
                hashes.append(piece_hashes)
            ids.append(piece_ids)
            fps.append(id_fingerprints(piece_ids))
            starts.append(starts[-1] + n)
            groups.append((file, group))
        total = starts[-1]
        if filled is not None and total != rows:
            raise ValueError("the previous row groups hold fewer rows than were checked")
        self._hashes = filled if filled is not None else (np.concatenate(hashes) if hashes else
                                                          np.zeros((0, HASH_BYTES), np.uint8))
        del hashes
        self._words = self._hashes.view(np.int64)  # (N, 2): the hash as two words, the first its prefix
        fp = np.concatenate(fps) if fps else np.zeros(0, np.int64)
        del fps
        self.order, self.fp = _key_order(fp, self._hashes)
        del fp
        self._bits = max(1, int(np.log2(max(len(self.fp), 2))) - 1)  # 2-4 entries a bucket: ~1 byte a row
        counts = np.bincount(_bucket(self.fp, self._bits), minlength=1 << self._bits)
        self._starts = np.zeros((1 << self._bits) + 1, dtype=np.int32 if len(self.fp) < 2**31 else np.int64)
        np.cumsum(counts, out=self._starts[1:])
        del counts
        joined = pa.chunked_array(ids, pa.binary()) if ids else pa.chunked_array([], pa.binary())
        del ids
        if joined.nbytes > (1 << 30):  # 32-bit offsets end at 2 GiB of ids
            joined = joined.cast(pa.large_binary())
        # one chunk: Arrow's take across a chunked array's chunks is ~8x slower (0.38 against 0.05 µs a row)
        self._ids = joined.combine_chunks()
        del joined
        self.starts = np.asarray(starts, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64).reshape(-1, 2)
        self._representatives = None

    def ids_at(self, at: np.ndarray) -> pa.Array:
        """The ids of the entries at sorted positions ``at`` (binary)."""
        return self._ids.take(pa.array(self.order[at]))

    def hashes_at(self, at: np.ndarray) -> np.ndarray:
        """``(K, 16)`` uint8: the text hashes of the entries at sorted positions ``at``."""
        return self._hashes[self.order[at]]

    def __len__(self) -> int:
        return len(self.fp)

    def positions(self, at: np.ndarray) -> np.ndarray:
        """``(K, 3)`` int64 (file, group, row) of the entries at sorted positions ``at``."""
        read = self.order[at].astype(np.int64)
        piece = np.searchsorted(self.starts, read, side="right") - 1
        return np.column_stack([self.groups[piece], read - self.starts[piece]])

    def lookup(self, ids: pa.Array, text_hash: np.ndarray, id_fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per document: the sorted position of its previous row (equal id and full hash; the first of
        equal ones in the order read) or -1; and of its id's first entry (the id's representative: one
        per distinct previous id) or -1."""
        b = len(ids)
        found = np.full(b, -1, dtype=np.int64)
        known = np.full(b, -1, dtype=np.int64)
        n = len(self.fp)
        if not n or not b:
            return found, known
        ids = ids.cast(pa.binary()) if not pa.types.is_binary(ids.type) else ids
        lo, hi = _runs(self.fp, self._starts, self._bits, id_fp)
        # the id's first entry: the first of its fingerprint's run whose id is equal (one round but for
        # fingerprints that collide)
        at, todo = lo.copy(), np.flatnonzero(hi > lo)
        while len(todo):
            same = _equal_ids(self.ids_at(at[todo]), ids.take(pa.array(todo)))
            known[todo[same]] = at[todo[same]]
            todo = todo[~same]
            at[todo] += 1
            todo = todo[at[todo] < hi[todo]]
        # the row: among the entries of the id's run with the same hash prefix (sorted: a binary search)
        todo = np.flatnonzero(known >= 0)
        first, last = lo[todo].copy(), hi[todo].copy()
        wide = np.flatnonzero(last - first > 1)
        if len(wide):  # an id in several rows (or a collision): its run, sorted by hash prefix, bisected
            q = _prefix(text_hash[todo[wide]])
            first[wide], last[wide] = (self._bisect(first[wide], last[wide], q, upper=False),
                                       self._bisect(first[wide], last[wide], q, upper=True))
        at = first
        keep = at < last
        todo, at, last = todo[keep], at[keep], last[keep]
        wanted = np.ascontiguousarray(text_hash).view(np.int64)  # (B, 2): 16 bytes compared as two words
        while len(todo):
            stored = self._words[self.order[at]]
            same = (stored[:, 0] == wanted[todo, 0]) & (stored[:, 1] == wanted[todo, 1])
            other = np.flatnonzero(same & (at != known[todo]))  # the id's own entry was compared above
            if len(other):
                same[other] = _equal_ids(self.ids_at(at[other]), ids.take(pa.array(todo[other])))
            found[todo[same]] = at[same]
            more = ~same & (at + 1 < last)
            todo, at, last = todo[more], at[more] + 1, last[more]
        return found, known

    def _bisect(self, lo: np.ndarray, hi: np.ndarray, q: np.ndarray, upper: bool) -> np.ndarray:
        """Per query, the first position in ``[lo, hi)`` whose hash prefix is >= ``q`` (> with ``upper``),
        or ``hi``: a binary search of every range at once (the prefixes are sorted within a fingerprint)."""
        lo, hi = lo.copy(), hi.copy()
        while True:
            open_ = lo < hi
            if not open_.any():
                return lo
            mid = (lo + hi) // 2
            value = self._words[self.order[np.where(open_, mid, 0)], 0]
            right = open_ & ((value <= q) if upper else (value < q))
            lo = np.where(right, mid + 1, lo)
            hi = np.where(open_ & ~right, mid, hi)

    def representatives(self) -> np.ndarray:
        """``(N,)`` bool: the entries that are their id's first (one per distinct previous id)."""
        if self._representatives is None:
            n = len(self.fp)
            first = np.ones(n, dtype=bool)
            if n > 1:
                after = np.flatnonzero(self.fp[1:] == self.fp[:-1]) + 1  # entries in a run, not its first
                if len(after):
                    same = _equal_ids(self.ids_at(after), self.ids_at(after - 1))
                    first[after[same]] = False
                    for k in after[~same]:  # two ids with one fingerprint: was this one's id earlier in the run?
                        start = int(np.searchsorted(self.fp, self.fp[k], "left"))
                        earlier = self.ids_at(np.arange(start, k)).to_pylist()
                        first[k] = self.ids_at(np.array([k]))[0].as_py() not in earlier
            self._representatives = first
        return self._representatives


def read_index(previous: dict, checked: list) -> PreviousIndex:
    """The index of the previous row groups that passed ``ReadPreviousKeys``' checks (``checked``: ``(file,
    group, rows)``), their key columns read straight from the files (their pages' checksums verified as
    they are decoded, each file required to be the one the launcher checked). A row group that fails now
    changed during the run: ``ValueError``, the run fails (nothing is committed)."""
    from transforms.checked_read import read_checked

    paths, footers = previous["files"], previous.get("footers") or ()
    checked = sorted((int(f), int(g), int(n)) for f, g, n in checked)

    def pieces():
        for file, group, rows in checked:
            path = paths[file]
            table = read_checked(path, group, KEY_COLUMNS, footers[file] if footers else None, others=False)
            if table.num_rows != rows:
                raise ValueError(f"previous shard {path} row group {group} changed during the run ({table.num_rows} "
                                 f"rows, {rows} when checked); nothing is committed, rerun the job")
            yield file, group, table

    return PreviousIndex(pieces(), rows=sum(n for _, _, n in checked))


def _index_tag(previous: dict) -> str:
    return repr((previous["prefix"], tuple(previous["files"]), tuple(previous.get("footers") or ())))


_INDEX_LOCK = threading.Lock()
_INDEX: dict = {}  # tag -> the process' index (one at most: another tag's replaces it)


def acquire_index(previous: dict, checked) -> PreviousIndex:
    """This process' index of the previous keys, built on first use (once, whichever thread asks first)
    and kept until ``release_indexes``."""
    tag = _index_tag(previous)
    with _INDEX_LOCK:
        index = _INDEX.get(tag)
        if index is None:
            _INDEX.clear()  # another previous output's: never needed again by this job
            index = _INDEX[tag] = read_index(previous, list(checked))
        return index


def release_indexes() -> None:
    """Drops this process' index (``CopyRows`` calls it: copies start only once every batch is matched) and,
    when there was one, hands the memory the matching freed back to the system (``give_back_memory``), so
    that the copies start from what the process needs, not from the read's high-water mark. A batch matched
    after this builds the index again."""
    with _INDEX_LOCK:
        held = bool(_INDEX)
        _INDEX.clear()
    if held:
        give_back_memory()


def give_back_memory() -> None:
    """Free memory back to the system: Arrow's pool (``release_unused``) and glibc's heap (``malloc_trim``,
    where the C library has it). Measured at 1M previous rows: the copy stage's peak 20-60 MB lower, in
    0.4 ms (bench/README.md)."""
    import ctypes

    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library the process runs on
    if trim is None:  # not glibc (macOS, musl): nothing to trim
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


class MatchPrevious(beam.DoFn):
    """``DocBatch(ids, texts)`` -> its documents to embed, with their ``text_hash`` (main output); ``((file,
    group), copy_request(rows, hashes))`` to copy (tag ``copy``); ``(count name, n)`` (tag ``counts``); per
    bundle, one bit per index entry (tag ``seen``), set for the previous ids seen and for every entry that
    is not its id's first (so the entries left unset at the end are the removed ids). ``checked``: the side
    input of the row groups that passed their checks. The index is the process' (``acquire_index``), held
    only while a bundle runs."""

    def __init__(self, previous: dict):
        self.previous = previous

    def start_bundle(self):
        self._index, self._seen = None, None

    def finish_bundle(self):
        """The bundle's bits: ``np.packbits`` of one bit per index entry."""
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._seen is not None:
            bits = self._seen | ~self._index.representatives()
            yield beam.pvalue.TaggedOutput(SEEN, WindowedValue(np.packbits(bits), GlobalWindow().max_timestamp(),
                                                               [GlobalWindow()]))
        self._index, self._seen = None, None

    def process(self, batch: DocBatch, checked):
        if self._index is None:
            self._index = acquire_index(self.previous, checked)
        index = self._index
        if self._seen is None:
            self._seen = np.zeros(len(index), dtype=bool)
        text_hash = hash_texts(batch.texts)
        found, known = index.lookup(batch.ids, text_hash, id_fingerprints(batch.ids))
        matched = found >= 0
        reused = int(matched.sum())
        changed = int(((known >= 0) & ~matched).sum())
        new = int((known < 0).sum())
        for name, n in (("reused", reused), ("changed", changed), ("new", new)):
            if n:
                Metrics.counter(NAMESPACE, name).inc(n)
                yield beam.pvalue.TaggedOutput(COUNTS, (name, n))
        self._seen[known[known >= 0]] = True
        if reused < len(batch):
            keep = np.flatnonzero(~matched)
            yield DocBatch(batch.ids, batch.texts, text_hash=text_hash).take(keep)
        if reused:
            at = found[matched]
            where = index.positions(at)
            order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
            where, wanted = where[order], index.hashes_at(at[order])
            starts = np.flatnonzero(np.any(np.diff(where[:, :2], axis=0, prepend=-1) != 0, axis=1))
            for start, stop in zip(starts, np.append(starts[1:], len(where))):
                key = (int(where[start, 0]), int(where[start, 1]))
                yield beam.pvalue.TaggedOutput(COPY, (key, copy_request(where[start:stop, 2], wanted[start:stop])))


class UnionSeen(beam.CombineFn):
    """The previous ids seen, over every bundle: bitwise or of the bundles' bitmaps (``np.packbits`` of
    one bit per index entry, 125 KB per million previous rows); ``None`` when no batch was read."""

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
    """The union of the bundles' bits (``MatchPrevious``) -> ``("removed", entries left unset)``: the
    distinct previous ids never seen (an id is seen through its first entry; every other entry is set).
    With no bits (no batch read), every previous id is removed: the index is built to count them."""

    def __init__(self, previous: dict):
        self.previous = previous

    def process(self, seen, checked):
        if seen is not None:
            entries = sum(int(n) for _, _, n in checked)
            removed = entries - int(np.unpackbits(seen, count=entries).sum())
        else:
            removed = int(acquire_index(self.previous, checked).representatives().sum())
            release_indexes()
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
        previous = dict(self.config.previous)
        paths = tuple(previous["files"])
        footers = tuple(previous.get("footers") or ())
        checked = (
            docs.pipeline
            | "PreviousShards" >> beam.Create(list(enumerate(paths)))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadPreviousKeys" >> beam.ParDo(ReadPreviousKeys(self.config.provenance(), None, footers))
            .with_outputs(COUNTS, main="checked")
        )
        side = beam.pvalue.AsList(checked.checked)
        matched = docs | "MatchPrevious" >> beam.ParDo(MatchPrevious(previous), side).with_output_types(
            DocBatch).with_outputs(COPY, COUNTS, SEEN, main="embed")
        reused = (
            matched[COPY]
            | "GroupByRowGroup" >> beam.GroupByKey()
            | "CopyRows" >> beam.ParDo(CopyRows(paths, output_schema(self.config), footers)).with_output_types(
                CopiedRows)
        )
        removed = (
            matched[SEEN]
            | "UnionSeen" >> beam.CombineGlobally(UnionSeen())
            | "CountRemoved" >> beam.ParDo(CountRemoved(previous), side)
        )
        counts = ((matched[COUNTS], checked[COUNTS], removed) | "AllCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombinePerKey(combine_counts))
        return matched.embed, reused, counts
