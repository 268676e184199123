"""Reuse (``--previous``): the documents read, hashed and joined with the previous output by document
id; a document whose id and ``text_hash`` match a previous row gets that row copied, bit for bit, the
others go on to be tokenized and embedded. The join comes before tokenizing: an unchanged document is
never tokenized (it cannot be a tokenizing dead letter either: the same text with the same tokenizer
failed before, so it has no previous row).

The join is a Beam join keyed by a hash bucket of the id, and only keys go through it, never texts:

- this run's ``DocBatch``es are hashed and split by bucket into key pieces (``SplitByBucket``: ids and
  ``text_hash``, one piece per bucket present);
- the previous shards are read one row group at a time, two small columns only (``doc_id``,
  ``text_hash``), into ``(bucket, keys)`` pieces with each row's position (file, row group, row);
- ``CoGroupByKey`` brings a bucket's pieces together; ``JoinBucket`` matches them with Arrow
  (``index_in`` on ``id || text_hash``) and emits the join keys of the documents to embed, the
  positions to copy keyed by (file, row group), and the counts ``reused`` / ``new`` / ``changed`` /
  ``removed``;
- the input is read a second time (``ReadCorpus(counting=False)``: its records and dead letters are
  the first read's) and ``KeepToEmbed`` keeps the documents whose key is among those to embed (a side
  input: the keys of the new and changed documents only);
- ``CopyRows`` decodes each wanted row group once, a slice at a time, and takes the wanted rows: the previous
  vectors are read where they are copied and never go through a shuffle.

What a worker holds is bounded by a bucket's keys (the shuffle) and the keys of the documents to embed
(the side input): the texts are never grouped, so Beam's in-process runner, which holds a shuffle in
memory, stays flat in the corpus size up to those keys (~40-60 bytes per document). Reading twice costs
~1 µs per document. An input that changes between the two reads is caught by the accounting (``read =
written + dead-lettered``; exit 1), never written silently wrong.

A document repeated in the input is matched (or not) once per occurrence, so the output has as many
rows of an id as the input has, as without ``--previous``. When the previous output holds an id and
text more than once, the first row (lowest file, row group, row) is copied. ``removed`` counts the
distinct previous ids that are not in the input.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from beam_pipeline.options import JobConfig
from transforms.batch import DocBatch, concat, hash_texts
from transforms.checked_read import read_checked
from transforms.errors import NAMESPACE
from transforms.write import HASH_BYTES, METADATA_KEY, CopiedRows, output_schema

LOG = logging.getLogger("beam_pipeline.reuse")
REUSED = "reused"  # the engine name of copied rows (footers' ``embedding_engines``)
COPY, COUNTS = "copy", "counts"
KEY_COLUMNS = ["doc_id", "text_hash"]
DAMAGED = "damaged:"  # counts' key prefix: a previous shard (path after it) some of whose row groups failed checks
# The one-snapshot check of the two reads: how many join keys the join chose to embed and the sum of their
# 64-bit fingerprints, against the same of the documents the second read kept.
TO_EMBED, TO_EMBED_SUM, KEPT, KEPT_SUM = "to_embed", "to_embed_sum", "kept", "kept_sum"
SNAPSHOT_KEYS = (TO_EMBED, TO_EMBED_SUM, KEPT, KEPT_SUM)


def fingerprint_sum(keys: pa.Array) -> int:
    """The sum of the 64-bit XXH3 fingerprints of ``keys``: equal for equal multisets of keys."""
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    return sum(digest(k) for k in keys.to_pylist()) % (1 << 64)


def snapshot_differs(counts: dict) -> bool:
    """Whether the second read kept other documents than the join chose (the input changed in between)."""
    sums = (counts.get(TO_EMBED_SUM, 0) % (1 << 64), counts.get(KEPT_SUM, 0) % (1 << 64))
    return counts.get(TO_EMBED, 0) != counts.get(KEPT, 0) or sums[0] != sums[1]


def combine_counts(values) -> int | str:
    """Sums the counts of one key; a damaged shard's reasons are joined."""
    values = list(values)
    if values and isinstance(values[0], str):
        return "; ".join(sorted(set(values)))
    return sum(values)


def buckets_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """``(B,)`` int64: the join bucket of each id, CRC-32 of its UTF-8 bytes modulo ``buckets`` (the
    same in every process and on every runner)."""
    crc32 = zlib.crc32
    return np.array([crc32(b) for b in ids.cast(pa.binary()).to_pylist()], dtype=np.int64) % buckets


def hash_array(text_hash: np.ndarray) -> pa.Array:
    """``(B, 16)`` uint8 -> ``binary`` array of 16-byte values."""
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(HASH_BYTES), len(text_hash),
                                                 [None, pa.py_buffer(np.ascontiguousarray(text_hash).tobytes())])
    return fixed.cast(pa.binary())


def hash_matrix(hashes: pa.Array) -> np.ndarray:
    """``fixed_size_binary(16)`` or ``binary`` of 16-byte values -> ``(B, 16)`` uint8."""
    n = len(hashes)
    if pa.types.is_fixed_size_binary(hashes.type):
        return np.frombuffer(hashes.buffers()[1], dtype=np.uint8)[
            hashes.offset * HASH_BYTES:(hashes.offset + n) * HASH_BYTES].reshape(n, HASH_BYTES).copy()
    return hash_matrix(hashes.cast(pa.binary(HASH_BYTES)))


def rows_digest(hashes: np.ndarray) -> bytes:
    """BLAKE2b-128 of ``(K, 16)`` text hashes, in order: what a copy request holds instead of the hashes
    themselves. A cryptographic digest, so holding the copied rows to it is as strict as comparing each
    row's hash (no crafted rows can match it), at 16 bytes per request instead of 16 per row."""
    return hashlib.blake2b(np.ascontiguousarray(hashes, dtype=np.uint8).data, digest_size=16).digest()


def copy_request(rows: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, bytes]:
    """A request to copy previous ``rows`` (positions in one row group) whose text hashes must be ``hashes``
    (``(K, 16)`` uint8, the ones the join matched): ``(rows as int32, rows_digest(hashes))``."""
    return np.asarray(rows, dtype=np.int32), rows_digest(hashes)


def join_keys(ids: pa.Array, hashes: pa.Array) -> pa.Array:
    """``id || text_hash`` per row: equal exactly when both are (the hash is a fixed 16 bytes at the end)."""
    return pc.binary_join_element_wise(ids.cast(pa.binary()), hashes.cast(pa.binary()), pa.scalar(b"", pa.binary()))


class SplitByBucket(beam.DoFn):
    """``DocBatch(ids, texts)`` -> ``(bucket, DocBatch(ids, text_hash=...))`` (the keys, no texts) for
    each bucket its documents fall in."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, batch: DocBatch):
        batch = DocBatch(batch.ids, None, text_hash=hash_texts(batch.texts))
        bucket = buckets_of(batch.ids, self.buckets)
        order = np.argsort(bucket, kind="stable")
        starts = np.flatnonzero(np.diff(bucket[order], prepend=-1))
        for start, stop in zip(starts, np.append(starts[1:], len(order))):
            yield int(bucket[order[start]]), batch.take(order[start:stop])


class ReadPreviousKeys(beam.DoFn):
    """``(file index, path)`` of a previous shard -> ``(bucket, pa.Table(doc_id, key, file, group, row))``
    per bucket and row group: the ids, join keys and positions, never the vectors. With ``buckets`` None
    (the lookup join, which reads the keys itself in every worker process: ``transforms/reuse_lookup.py``)
    only ``(file, group, rows)`` per row group that passed. Each row group's pages are all verified against
    their checksums (``checked_read``), and the file must still be the one the launcher checked
    (``footers``, by file index): a row group that fails, or a shard whose footer says another job or that
    was replaced since, gives nothing, so its documents are embedded again, and ``(DAMAGED + path,
    reason)`` goes to the counts (tag ``counts``)."""

    def __init__(self, provenance: dict, buckets: int | None, footers: tuple[str, ...] = ()):
        from beam_pipeline.provenance import value_fields

        self.expected = value_fields(provenance)
        self.buckets = buckets
        self.footers = footers

    def process(self, element: tuple[int, str]):
        import json

        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        from beam_pipeline.provenance import differing_fields
        from transforms.checked_read import footer_digest

        index, path = element
        footer = self.footers[index] if self.footers else None
        try:
            with FileSystems.open(path) as f:
                shard = pq.ParquetFile(f)
                found = json.loads((shard.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}"))
                groups = shard.num_row_groups
                digest = footer_digest(f)
        except Exception as e:
            yield beam.pvalue.TaggedOutput(COUNTS, (DAMAGED + path, f"unreadable: {type(e).__name__}: {e}"))
            return
        if footer is not None and digest != footer:
            LOG.warning("previous shard %s: replaced since the launcher checked it; none of its rows reused", path)
            yield beam.pvalue.TaggedOutput(COUNTS, (DAMAGED + path, "the file changed since the launcher checked it"))
            return
        differs = differing_fields(found, self.expected)
        if differs:
            LOG.warning("previous shard %s: its provenance differs from this run's; none of its rows reused", path)
            yield beam.pvalue.TaggedOutput(COUNTS, (DAMAGED + path, f"footer provenance differs in: {differs}"))
            return
        for group in range(groups):
            try:  # the lookup join decodes no column here: every page is checked on its raw bytes
                keys = read_checked(path, group, [] if self.buckets is None else KEY_COLUMNS, footer)
            except ValueError as e:
                LOG.warning("previous shard %s: not reused where damaged (%s)", path, e)
                yield beam.pvalue.TaggedOutput(COUNTS, (DAMAGED + path, f"damaged: {e}"))
                continue
            if self.buckets is None:
                yield index, group, keys.num_rows
                continue
            ids = keys.column("doc_id").combine_chunks()
            n = len(ids)
            table = pa.table({
                "doc_id": ids,
                "key": join_keys(ids, keys.column("text_hash").combine_chunks()),
                "file": pa.array(np.full(n, index, dtype=np.int32)),
                "group": pa.array(np.full(n, group, dtype=np.int32)),
                "row": pa.array(np.arange(n, dtype=np.int32)),
            })
            bucket = buckets_of(ids, self.buckets)
            for b in np.unique(bucket):
                yield int(b), table.filter(pa.array(bucket == b))


class JoinBucket(beam.DoFn):
    """``(bucket, {"docs": [DocBatch of keys], "previous": [keys]})`` -> the join keys of the documents
    to embed (one ``pa.BinaryArray``), ``((file, group), rows)`` to copy (tag ``copy``), ``(count name,
    n)`` (tag ``counts``)."""

    def process(self, element):
        _, grouped = element
        docs = list(grouped["docs"])
        previous = list(grouped["previous"])
        prev = pa.concat_tables(previous) if previous else None
        if prev is not None:
            prev = prev.take(pc.sort_indices(prev, sort_keys=[("file", "ascending"), ("group", "ascending"),
                                                              ("row", "ascending")]))
        if docs:
            yield from self._match(concat(docs), prev)
        if prev is not None:
            current = pa.concat_arrays([d.ids for d in docs]) if docs else pa.array([], pa.string())
            previous_ids = pc.unique(prev.column("doc_id").combine_chunks())
            still = pc.is_in(previous_ids, value_set=current).to_numpy(zero_copy_only=False)
            yield from self._count("removed", int((~still).sum()))

    def _match(self, batch: DocBatch, prev: pa.Table | None):
        n = len(batch)
        keys = join_keys(batch.ids, hash_array(batch.text_hash))
        if prev is None or not prev.num_rows:
            yield from self._count("new", n)
            yield from self._to_embed(keys)
            return
        found = pc.index_in(keys, value_set=prev.column("key").combine_chunks())
        matched = found.is_valid().to_numpy(zero_copy_only=False)
        known = pc.is_in(batch.ids, value_set=prev.column("doc_id").combine_chunks()).to_numpy(zero_copy_only=False)
        yield from self._count("reused", int(matched.sum()))
        yield from self._count("changed", int((known & ~matched).sum()))
        yield from self._count("new", int((~known).sum()))
        if not matched.all():
            yield from self._to_embed(keys.filter(pa.array(~matched)))
        if matched.any():
            at = found.filter(found.is_valid())
            hits = prev.take(at)
            where = np.stack([hits.column(c).to_numpy() for c in ("file", "group", "row")], axis=1)
            order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
            where = where[order]
            keys = hits.column("key").combine_chunks().take(pa.array(order))
            wanted = hash_matrix(pc.binary_slice(keys, -HASH_BYTES))
            starts = np.flatnonzero(np.any(np.diff(where[:, :2], axis=0, prepend=-1) != 0, axis=1))
            for start, stop in zip(starts, np.append(starts[1:], len(where))):
                key = (int(where[start, 0]), int(where[start, 1]))
                yield beam.pvalue.TaggedOutput(COPY, (key, copy_request(where[start:stop, 2], wanted[start:stop])))

    def _to_embed(self, keys: pa.Array):
        yield keys
        yield from self._count(TO_EMBED, len(keys))
        yield beam.pvalue.TaggedOutput(COUNTS, (TO_EMBED_SUM, fingerprint_sum(keys)))

    @staticmethod
    def _count(name: str, n: int):
        if n:
            Metrics.counter(NAMESPACE, name).inc(n)
            yield beam.pvalue.TaggedOutput(COUNTS, (name, n))


class CopyRows(beam.DoFn):
    """``((file, group), [copy_request(rows, text hashes)])`` -> ``CopiedRows`` of those previous rows (a row
    asked for twice, by an id repeated in the input, is copied twice), columns taken by name and cast to the
    output's schema, never through NumPy. The row group is decoded once, a slice at a time (``iter_checked``:
    never whole in memory), its pages verified against their checksums, the file checked to be the one the
    launcher checked (``footers``), and the rows of each request checked to hold the text hashes the join
    matched (their digest: ``rows_digest``; the join itself compared ids and hashes exactly). A check that
    fails (the shard changed during the run) fails the bundle, and so the run, before the row group's last
    rows go out: nothing is committed, never a row copied from other data.

    The first bundle also drops this process' index of the previous keys (``release_indexes``): copies
    start only once every batch has been matched (they come out of a ``GroupByKey``)."""

    def __init__(self, paths: tuple[str, ...], arrow_schema: pa.Schema, footers: tuple[str, ...] = ()):
        self.paths = paths
        self.schema = arrow_schema
        self.footers = footers

    def start_bundle(self):
        from transforms.reuse_lookup import release_indexes

        release_indexes()

    def process(self, element):
        from transforms.checked_read import iter_checked

        (index, group), wanted = element
        wanted = list(wanted)
        rows = np.concatenate([np.asarray(r) for r, _ in wanted]).astype(np.int64, copy=False)
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        held = np.empty((len(rows), HASH_BYTES), np.uint8)  # the hashes of the rows taken, in sorted order
        path = self.paths[index]
        start = taken = 0
        changed = (f"previous shard {path} row group {group} changed during the run: its rows are not those the join "
                   "matched; nothing is committed, rerun the job")
        for batch in iter_checked(path, group, self.footers[index] if self.footers else None):
            stop = start + batch.num_rows
            upto = int(np.searchsorted(rows, stop, side="left"))
            if upto > taken:
                table = pa.Table.from_batches([batch.take(pa.array(rows[taken:upto] - start))])
                held[taken:upto] = hash_matrix(table.column("text_hash").combine_chunks())
                if upto == len(rows):  # the last rows go out only once every request is checked
                    self._check(wanted, held, order, changed)
                yield CopiedRows(table.select(self.schema.names).cast(self.schema))
                taken = upto
            start = stop
        if taken != len(rows):
            raise ValueError(f"previous shard {path} row group {group} changed during the run: it has {start} rows, "
                             f"fewer than the join found; nothing is committed, rerun the job")

    @staticmethod
    def _check(wanted: list, held: np.ndarray, order: np.ndarray, message: str) -> None:
        """Each request's digest against the hashes its rows hold (``held``: in sorted row order)."""
        asked = np.empty_like(held)
        asked[order] = held  # back in the requests' order
        at = 0
        for rows, digest in wanted:
            n = len(rows)
            if rows_digest(asked[at:at + n]) != digest:
                raise ValueError(message)
            at += n


class KeepToEmbed(beam.DoFn):
    """The second read's ``DocBatch(ids, texts)`` -> those of its documents to embed (with their
    ``text_hash``), by their join keys; ``keys``: the side input of ``JoinBucket``'s key arrays."""

    def setup(self):
        self._side, self._keys, self._ids = None, None, None

    def process(self, batch: DocBatch, keys):
        if self._side is not keys:  # the same side input for every batch of a bundle: one hash set
            self._side = keys
            self._keys = pa.concat_arrays(list(keys)) if keys else pa.array([], pa.binary())
            self._ids = pc.binary_slice(self._keys, 0, -HASH_BYTES)  # a key is id || text_hash
        if not len(self._keys):
            return
        # only the documents whose id is among those to embed are hashed (the first read hashed them all)
        maybe = np.flatnonzero(pc.is_in(batch.ids.cast(pa.binary()), value_set=self._ids)
                               .to_numpy(zero_copy_only=False))
        if not len(maybe):
            return
        batch = batch.take(maybe)
        text_hash = hash_texts(batch.texts)
        wanted = pc.is_in(join_keys(batch.ids, hash_array(text_hash)), value_set=self._keys)
        keep = np.flatnonzero(wanted.to_numpy(zero_copy_only=False))
        if len(keep):
            kept = DocBatch(batch.ids, batch.texts, text_hash=text_hash).take(keep)
            yield kept
            keys = join_keys(kept.ids, hash_array(kept.text_hash))
            Metrics.counter(NAMESPACE, KEPT).inc(len(keys))
            yield beam.pvalue.TaggedOutput(COUNTS, (KEPT, len(keys)))
            yield beam.pvalue.TaggedOutput(COUNTS, (KEPT_SUM, fingerprint_sum(keys)))


class Reuse(beam.PTransform):
    """``(docs, again)``: the ``DocBatch(ids, texts)``es of the first read (hashed and joined: only their
    keys are grouped) and of a second read of the same input -> (documents to tokenize and embed, with
    their ``text_hash``; reused ``Rows``; ``(count name, n)`` pairs)."""

    def __init__(self, config: JobConfig):
        super().__init__()
        self.config = config

    def expand(self, pcolls):
        docs, again = pcolls
        previous = self.config.previous
        paths, buckets = tuple(previous["files"]), previous["buckets"]
        footers = tuple(previous.get("footers") or ())
        keyed_docs = docs | "SplitByBucket" >> beam.ParDo(SplitByBucket(buckets))
        keys = (
            docs.pipeline
            | "PreviousShards" >> beam.Create(list(enumerate(paths)))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadPreviousKeys" >> beam.ParDo(ReadPreviousKeys(self.config.provenance(), buckets, footers))
            .with_outputs(COUNTS, main="keys")
        )
        joined = ({"docs": keyed_docs, "previous": keys.keys} | "GroupByBucket" >> beam.CoGroupByKey()
                  | "JoinBucket" >> beam.ParDo(JoinBucket()).with_outputs(COPY, COUNTS, main="embed"))
        reused = (
            joined[COPY]
            | "GroupByRowGroup" >> beam.GroupByKey()
            | "CopyRows" >> beam.ParDo(CopyRows(paths, output_schema(self.config), footers)).with_output_types(
                CopiedRows)
        )
        kept = again | "KeepToEmbed" >> beam.ParDo(KeepToEmbed(), beam.pvalue.AsList(joined.embed)).with_output_types(
            DocBatch).with_outputs(COUNTS, main="docs")
        counts = ((joined[COUNTS], keys[COUNTS], kept[COUNTS]) | "AllCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombinePerKey(combine_counts))
        return kept.docs, reused, counts
