"""Shared test helpers: real Keras models, a real legacy tokenizer, corpora on disk, the job run
in-process on the DirectRunner, and the Keras-computed reference the outputs are compared with.

The reference never uses the job's code: it tokenizes with tf_keras' legacy ``Tokenizer``, pads
with ``keras.utils.pad_sequences`` as the model was trained, and runs a functional clone of the
target layer with ``return_sequences`` / ``return_state`` set and the trained weights copied.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine!",
    "Rain, rain, go away; come again another day.",
    "She sells sea shells by the sea shore",
    "the dog sleeps",
    "Over the hills and far away, the fox runs quickly to the river where the lazy dog waits for rain "
    "and the sea shells shine in the time of day",
    "Nine dogs",
    "Unknown zebra words here",
    "Time flies like an arrow; fruit flies like a banana.",
    "Come again, quick fox, over the shore and the river and the hills and far far away from the day",
]


def corpus(n: int = 60, seed: int = 3) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        text = " ".join(SENTENCES[int(j)] for j in rng.integers(0, len(SENTENCES), size=k))
        docs.append((f"d{i:04d}", text))
    return docs


def legacy_tokenizer(texts: list[str], **kwargs):
    """A real legacy Keras Tokenizer (tf_keras) fitted on ``texts``."""
    from tf_keras.preprocessing.text import Tokenizer

    tok = Tokenizer(**kwargs)
    tok.fit_on_texts(texts)
    return tok


def write_jsonl(path, docs: list[tuple[str, str]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    return str(path)


def sample_jsonl(folder, n: int, seed: int) -> tuple[str, list[tuple[str, str]]]:
    """``corpus.jsonl`` of ``n`` demo-corpus documents in ``folder``: (path, [(doc_id, text)])."""
    from beam_pipeline.demo import sample_corpus

    docs = [(d["id"], d["text"]) for d in sample_corpus(n, seed=seed)]
    return write_jsonl(folder / "corpus.jsonl", docs), docs


def write_text(path, texts: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    return str(path)


def reader_records(outputs) -> list:
    """The outputs of ``ReadRecords.process`` with each ``DocBatch`` spread into its ``(doc_id, text)``
    rows, in order; dead letters and the count as given."""
    from transforms.batch import DocBatch

    records = []
    for out in outputs:
        if isinstance(out, DocBatch):
            records.extend(zip(out.ids.to_pylist(), out.texts.to_pylist()))
        else:
            records.append(out)
    return records


def run_job(argv: list[str]) -> dict:
    from beam_pipeline.__main__ import run

    summary = run([str(a) for a in argv])
    assert summary is not None
    return summary


def read_output(prefix: str, text_hash: bool = False) -> pa.Table:
    """The output's shards as one table. Every shard must end with its ``text_hash`` column
    (``fixed_size_binary(16)``); it is dropped unless ``text_hash``, so that the columns after
    ``doc_id``, ``num_tokens`` (and ``windows``) are the embedding columns."""
    summary = f"{prefix}-summary.json"
    if os.path.exists(summary):  # the commit record lists the output's shards (beside it, if copied here)
        listed = json.loads(open(summary).read())["output_files"]
        shards = sorted(p if os.path.exists(p) else os.path.join(os.path.dirname(summary), os.path.basename(p))
                        for p in listed)
    else:
        shards = sorted(glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet")
                        + glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].g1.parquet"))
    assert shards, f"no shards at {prefix}"
    table = pa.concat_tables([pq.read_table(s) for s in shards])
    assert table.column_names[-1] == "text_hash" and table.schema.field("text_hash").type == pa.binary(16)
    return table if text_hash else table.drop_columns(["text_hash"])


def reference(model, layer_name: str, mode: str, padded: np.ndarray) -> list[np.ndarray]:
    """What Keras computes for the layer in ``mode`` on the padded batch: a functional clone of the
    layer with the trained weights, called on the layer's own input and mask."""
    import keras

    layer = model.get_layer(layer_name)
    config = layer.get_config()
    flags = {"return_sequences": mode == "sequence", "return_state": mode == "states"}
    if isinstance(layer, keras.layers.Bidirectional):
        config["layer"]["config"].update(flags)
        config["backward_layer"]["config"].update(flags)
    else:
        config.update(flags)
    config["name"] = layer.name + "_reference"
    clone = type(layer).from_config(config)
    node = layer._inbound_nodes[0]
    out = clone(*node.arguments.args, **node.arguments.kwargs)
    clone.set_weights(layer.get_weights())
    outputs = list(out) if isinstance(out, (list, tuple)) else [out]
    probe = keras.Model(model.inputs, outputs)
    result = probe.predict(padded, verbose=0, batch_size=64)
    result = result if isinstance(result, list) else [result]
    if mode != "states":
        return result
    # return_state gives [output, *states]; Bidirectional(merge_mode=None) gives two outputs first.
    two_outputs = isinstance(layer, keras.layers.Bidirectional) and layer.merge_mode is None
    return result[2:] if two_outputs else result[1:]


def real_positions(ids_row: np.ndarray, n: int, padding: str, maxlen: int) -> slice:
    return slice(maxlen - n, maxlen) if padding == "pre" else slice(0, n)


def tf_keras_reference(model, layer_name: str, mode: str, padded: np.ndarray) -> list[np.ndarray]:
    """``reference`` for a model built with tf_keras (Keras 2): what tf_keras computes for the layer.

    The clone is called on the layer's input tensor, which carries the mask tf_keras propagates."""
    import tf_keras

    layer = model.get_layer(layer_name)
    config = layer.get_config()
    flags = {"return_sequences": mode == "sequence", "return_state": mode == "states"}
    if isinstance(layer, tf_keras.layers.Bidirectional):
        for key in ("layer", "backward_layer"):
            if config.get(key) is not None:
                config[key]["config"].update(flags)
    else:
        config.update(flags)
    config["name"] = layer.name + "_reference"
    clone = type(layer).from_config(config)
    out = clone(layer.input)
    clone.set_weights(layer.get_weights())
    outputs = list(out) if isinstance(out, (list, tuple)) else [out]
    result = tf_keras.Model(model.inputs, outputs).predict(padded, verbose=0, batch_size=64)
    result = result if isinstance(result, list) else [result]
    if mode != "states":
        return result
    two_outputs = isinstance(layer, tf_keras.layers.Bidirectional) and layer.merge_mode is None
    return result[2:] if two_outputs else result[1:]


def in_document_order(sequence: np.ndarray, go_backwards: bool) -> np.ndarray:
    """A ``return_sequences`` output ``(B, T, D)`` indexed by input position: a ``go_backwards``
    layer returns its outputs in reading order (last input first), so they are reversed; vector k
    is then the output right after the layer read input position k."""
    return sequence[:, ::-1] if go_backwards else sequence


def assert_embedded_equals_keras(out, model, layer: str, mode: str, seqs: list[list[int]], padding: str,
                                 maxlen: int) -> None:
    """The columns of an ``EmbeddedBatch`` equal Keras' own clone of the layer (``reference``) on the
    sequences padded with ``pad_sequences``, to 1e-5; ``sequence``: the real-token positions only."""
    import keras

    padded = keras.utils.pad_sequences(seqs, maxlen=maxlen, padding=padding)
    ref = reference(model, layer, mode, padded)
    if mode in ("final", "sequence") and len(ref) == 2:  # merge_mode=None: the two directions, concatenated
        ref = [np.concatenate(ref, axis=-1)]
    columns = list(out.columns.values())
    if mode == "sequence":
        want = np.concatenate([ref[0][i][real_positions(None, len(s), padding, maxlen)] for i, s in enumerate(seqs)])
        np.testing.assert_allclose(columns[0], want, atol=1e-5, rtol=0)
        assert out.offsets[-1] == sum(map(len, seqs))
    else:
        assert len(columns) == len(ref)
        for got, want in zip(columns, ref):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
