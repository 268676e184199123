"""``transforms/coders.py``: the job's large elements keep their encoding (pickle, round trip exact) but Beam
sizes them from their arrays' bytes instead of encoding them; and the steps that output them say so, in
every shape of the job (full, incremental by lookup or by shuffle, fixed shards)."""

from __future__ import annotations

import dataclasses
import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.coders import WindowedValueCoder
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from tests import helpers
from transforms.batch import DocBatch
from transforms.coders import SizedPickleCoder
from transforms.write import TABLE_RECORD, CopiedRows, Rows


def _parent(n: int, seed: int = 0) -> tuple[pa.Array, pa.Array, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = pa.array([f"doc-{i}" for i in range(n)])
    texts = pa.array([" ".join(["word"] * int(k)) for k in rng.integers(0, 40, n)])
    return ids, texts, rng.integers(0, 256, (n, 16), dtype=np.uint8)


def _elements():
    """One of each large element, each a slice of a much larger parent: pickling a slice of an Arrow array
    pickles its parent's whole buffers, so an estimate by encoding would be far above the slice's bytes."""
    ids, texts, hashes = _parent(20000)
    batch = DocBatch(ids.slice(100, 50), texts.slice(100, 50), text_hash=hashes[100:150])
    vectors = np.random.default_rng(1).standard_normal((20000, 8)).astype(np.float32)
    rows = Rows(ids.slice(7, 30), np.arange(30, dtype=np.int32), [vectors[7:37]], None, None, hashes[7:37],
                np.zeros(30, dtype=np.int8))
    table = pa.table({"doc_id": ids, "v": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)})
    return [batch, rows, CopiedRows(table.slice(10, 40)), (table.slice(500, 20), {"reused": 20})]


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_equal(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (pa.Array, pa.Table)):
        return a.equals(b)
    return a == b


@pytest.mark.parametrize("k, hint", list(enumerate([DocBatch, Rows, CopiedRows, TABLE_RECORD])),
                         ids=["DocBatch", "Rows", "CopiedRows", "table_record"])
def test_large_elements_round_trip_and_are_sized_without_encoding(k, hint):
    value = _elements()[k]  # of the type ``hint`` declares
    coder = beam.coders.registry.get_coder(hint)
    assert isinstance(coder, SizedPickleCoder) or isinstance(coder._get_component_coders()[0], SizedPickleCoder)
    # as Beam encodes it between stages: in a windowed value, nested or not
    windowed = WindowedValueCoder(coder)
    wv = WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])
    assert _equal(windowed.decode(windowed.encode(wv)).value, value)
    impl = coder.get_impl()
    assert _equal(impl.decode_nested(impl.encode_nested(value)), value)
    # the estimate Beam takes (get_estimated_size_and_observables, as its counters call it): the slice's
    # bytes, not its encoding's (the parent's buffers)
    size, observables = windowed.get_impl().get_estimated_size_and_observables(wv)
    encoded = len(windowed.encode(wv))
    arrays = value[0].nbytes if isinstance(value, tuple) else value.nbytes
    assert not observables
    assert arrays <= size < arrays + 4096 < encoded / 4


def test_a_value_without_nbytes_is_sized_by_its_pickle():
    coder = beam.coders.registry.get_coder(DocBatch)
    other = {"not": "a batch", "n": list(range(100))}
    assert coder.estimate_size(other) == len(pickle.dumps(other, pickle.HIGHEST_PROTOCOL))
    assert coder.decode(coder.encode(other)) == other


def _built(argv: list[str]) -> beam.Pipeline:
    """The job's pipeline as ``beam_pipeline.__main__.run`` builds it, not run."""
    import dataclasses as dc

    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import files, previous
    from beam_pipeline.__main__ import build
    from beam_pipeline.options import EmbeddingOptions, resolve

    options = PipelineOptions([str(a) for a in argv])
    config = resolve(options)
    prefix = options.view_as(EmbeddingOptions).previous
    if prefix:
        config = dc.replace(config, previous=previous.load(prefix, config).to_dict())
    sizes = files.match_sizes(list(config.inputs))
    p = beam.Pipeline(options=options)
    build(p, config, list(sizes), sizes)
    return p


def _sized_outputs(p: beam.Pipeline) -> dict[str, str]:
    """Step label -> the name of the sized coder of one of its outputs."""
    found = {}

    class Visit(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            for pcoll in node.outputs.values():
                coder = beam.coders.registry.get_coder(pcoll.element_type)
                parts = [coder, *getattr(coder, "_coders", ())]
                sized = [type(c).__name__ for c in parts if isinstance(c, SizedPickleCoder)]
                if sized:
                    found[node.full_label] = sized[0]

    p.visit(Visit())
    return found


def test_every_shape_of_the_job_sizes_its_large_elements_cheaply(small_job, tmp_path):
    docs = helpers.corpus(40, seed=5)
    path = helpers.write_jsonl(tmp_path / "in.jsonl", docs)
    first = tmp_path / "first" / "emb"
    helpers.run_job(small_job.argv(path, first))
    expected = {"Read/ReadRecords": "DocBatchCoder", "Tokenize": "DocBatchCoder",
                "Embed/EmbedBatches": "RowsCoder", "Write/ToArrow": "ArrowTableCoder"}
    shapes = {
        "full": ([], {}),
        "lookup": (["--previous", first, "--previous_join", "lookup"],
                   {"Reuse/MatchPrevious": "DocBatchCoder", "Reuse/CopyRows": "CopiedRowsCoder",
                    "Write/ToArrow2": "ArrowTableCoder"}),
        "shuffle": (["--previous", first, "--previous_join", "shuffle"],
                    {"Reuse/KeepToEmbed": "DocBatchCoder", "Reuse/CopyRows": "CopiedRowsCoder",
                     "Write/ToArrow2": "ArrowTableCoder"}),
    }
    for name, (extra, more) in shapes.items():
        found = _sized_outputs(_built(small_job.argv(path, tmp_path / name / "emb", *extra)))
        for label, coder in {**expected, **more}.items():
            hits = {k: v for k, v in found.items() if k.startswith(label + "/") or k == label}
            assert hits and set(hits.values()) == {coder}, (name, label, found)
    # with --num_shards the rows are dealt to shards through a shuffle: still read, tokenized and
    # embedded as sized batches
    found = _sized_outputs(_built(small_job.argv(path, tmp_path / "sharded" / "emb", "--num_shards", "2")))
    for label in ("Read/ReadRecords", "Tokenize", "Embed/EmbedBatches"):
        assert any(k.startswith(label) for k in found), (label, found)
