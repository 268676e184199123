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
- ``CopyRows`` reads each wanted row group once, whole, and takes the wanted rows: the previous
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

import logging
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from beam_pipeline.engines import codes as engine_codes
from beam_pipeline.options import JobConfig
from transforms.batch import DocBatch, concat, hash_texts
from transforms.errors import NAMESPACE
from transforms.write import HASH_BYTES, METADATA_KEY, Rows

LOG = logging.getLogger("beam_pipeline.reuse")
REUSED = "reused"  # the engine name of copied rows (footers' ``embedding_engines``)
COPY, COUNTS = "copy", "counts"
KEY_COLUMNS = ["doc_id", "text_hash"]


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


def _value_fields(provenance: dict) -> dict:
    from beam_pipeline.previous import VALUE_FIELDS

    return {k: provenance.get(k) for k in VALUE_FIELDS}


class ReadPreviousKeys(beam.DoFn):
    """``(file index, path)`` of a previous shard -> ``(bucket, pa.Table(doc_id, key, file, group, row))``
    per bucket and row group: the ids, join keys and positions, never the vectors. A shard whose own
    footer provenance differs from this run's, or that has no ``text_hash`` (left at ``--output`` by a
    killed run of another job), is skipped."""

    def __init__(self, provenance: dict, buckets: int):
        self.expected = _value_fields(provenance)
        self.buckets = buckets

    def process(self, element: tuple[int, str]):
        import json

        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        index, path = element
        with FileSystems.open(path) as f:
            shard = pq.ParquetFile(f)
            found = json.loads((shard.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}"))
            if _value_fields(found) != self.expected or "text_hash" not in shard.schema_arrow.names:
                LOG.warning("previous shard %s: its provenance differs from this run's; none of its rows reused", path)
                return
            for group in range(shard.num_row_groups):
                keys = shard.read_row_group(group, columns=KEY_COLUMNS)
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
            yield keys
            return
        found = pc.index_in(keys, value_set=prev.column("key").combine_chunks())
        matched = found.is_valid().to_numpy(zero_copy_only=False)
        known = pc.is_in(batch.ids, value_set=prev.column("doc_id").combine_chunks()).to_numpy(zero_copy_only=False)
        yield from self._count("reused", int(matched.sum()))
        yield from self._count("changed", int((known & ~matched).sum()))
        yield from self._count("new", int((~known).sum()))
        if not matched.all():
            yield keys.filter(pa.array(~matched))
        if matched.any():
            at = found.filter(found.is_valid())
            hits = prev.take(at)
            where = np.stack([hits.column(c).to_numpy() for c in ("file", "group", "row")], axis=1)
            order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
            where = where[order]
            starts = np.flatnonzero(np.any(np.diff(where[:, :2], axis=0, prepend=-1) != 0, axis=1))
            for start, stop in zip(starts, np.append(starts[1:], len(where))):
                key = (int(where[start, 0]), int(where[start, 1]))
                yield beam.pvalue.TaggedOutput(COPY, (key, where[start:stop, 2].astype(np.int64)))

    @staticmethod
    def _count(name: str, n: int):
        if n:
            Metrics.counter(NAMESPACE, name).inc(n)
            yield beam.pvalue.TaggedOutput(COUNTS, (name, n))


def table_to_rows(table: pa.Table, mode: str) -> Rows:
    """A table of the output's schema -> ``Rows`` holding the very same values (engine ``reused``)."""
    n = table.num_rows
    names = table.column_names
    first = 3 if names[2] == "windows" else 2
    columns, offsets = [], None
    for name in names[first:-1]:
        array = table.column(name).combine_chunks()
        if mode == "sequence":
            offsets = np.asarray(array.offsets.to_numpy(), dtype=np.int64)
            offsets = offsets - offsets[0]
            array = array.flatten()
        dim = array.type.list_size
        columns.append(array.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
    hashes = table.column("text_hash").combine_chunks()
    text_hash = np.frombuffer(hashes.buffers()[1], dtype=np.uint8)[
        hashes.offset * HASH_BYTES:(hashes.offset + n) * HASH_BYTES].reshape(n, HASH_BYTES).copy()
    return Rows(
        table.column("doc_id").combine_chunks(),
        table.column("num_tokens").to_numpy().astype(np.int32),
        columns,
        offsets,
        table.column("windows").to_numpy().astype(np.int32) if first == 3 else None,
        text_hash,
        engine_codes(REUSED, n),
    )


class CopyRows(beam.DoFn):
    """``((file, group), [rows])`` -> one ``Rows`` of those previous rows (a row asked for twice, by
    an id repeated in the input, is copied twice): the row group is read once, whole."""

    def __init__(self, paths: tuple[str, ...], mode: str):
        self.paths = paths
        self.mode = mode

    def process(self, element):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        (index, group), wanted = element
        rows = np.concatenate(list(wanted))
        with FileSystems.open(self.paths[index]) as f:
            table = pq.ParquetFile(f).read_row_group(group)
        yield table_to_rows(table.take(pa.array(rows)), self.mode)


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
            yield DocBatch(batch.ids, batch.texts, text_hash=text_hash).take(keep)


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
        keyed_docs = docs | "SplitByBucket" >> beam.ParDo(SplitByBucket(buckets))
        keys = (
            docs.pipeline
            | "PreviousShards" >> beam.Create(list(enumerate(paths)))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadPreviousKeys" >> beam.ParDo(ReadPreviousKeys(self.config.provenance(), buckets))
        )
        joined = ({"docs": keyed_docs, "previous": keys} | "GroupByBucket" >> beam.CoGroupByKey()
                  | "JoinBucket" >> beam.ParDo(JoinBucket()).with_outputs(COPY, COUNTS, main="embed"))
        reused = (
            joined[COPY]
            | "GroupByRowGroup" >> beam.GroupByKey()
            | "CopyRows" >> beam.ParDo(CopyRows(paths, self.config.mode))
        )
        counts = joined[COUNTS] | "SumCounts" >> beam.CombinePerKey(sum)
        to_embed = again | "KeepToEmbed" >> beam.ParDo(KeepToEmbed(), beam.pvalue.AsList(joined.embed))
        return to_embed, reused, counts
