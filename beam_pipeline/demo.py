"""The embedded default: a small sample corpus and a small demo model, built deterministically.

``python -m beam_pipeline`` with no arguments builds (once) into ``out/demo/assets/``:

- ``corpus.jsonl``: 600 short documents on four topics, ``{"id": ..., "text": ...}``;
- ``tokenizer.json``: a legacy-Keras-format tokenizer fitted on it (``num_words=400``, ``oov_token``);
- ``model.keras``: ``Embedding(mask_zero=True) -> LSTM(32) -> Dense(4)``, trained for a few
  seconds to tell the topics apart;

and embeds the corpus with the LSTM layer into ``out/demo/embeddings-*.parquet``.
"""

from __future__ import annotations

import json
import os
import random
from collections import OrderedDict

from beam_pipeline.keras_tokenizer import DEFAULT_FILTERS

TOPICS = {
    "space": "orbit rocket planet moon launch astronaut telescope galaxy star mission crew satellite".split(),
    "cooking": "recipe oven flour butter garlic simmer onion pepper bake salt sauce kitchen".split(),
    "football": "goal striker match referee penalty league coach season keeper pitch fans derby".split(),
    "markets": "stocks bond yield inflation shares investor rally earnings bank rates price fund".split(),
}
FILLER = "the a of and to in on with for was is at by from this that after before very new old".split()


def sample_corpus(n: int = 600, seed: int = 7) -> list[dict]:
    """Documents with a skewed length spread (many short, a few long), deterministic for ``seed``."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    docs = []
    for i in range(n):
        topic = names[i % len(names)]
        length = max(2, min(120, int(rng.lognormvariate(2.6, 0.7))))
        words = [rng.choice(TOPICS[topic]) if rng.random() < 0.45 else rng.choice(FILLER) for _ in range(length)]
        text = " ".join(words).capitalize() + rng.choice([".", "!", "?", "..."])
        docs.append({"id": f"doc-{i:05d}", "text": text, "topic": topic})
    return docs


def fit_tokenizer_json(texts: list[str], num_words: int | None = None, oov_token: str | None = None) -> str:
    """``Tokenizer(num_words, oov_token).fit_on_texts(texts).to_json()`` of legacy Keras, for word level."""
    counts: OrderedDict[str, int] = OrderedDict()
    docs: dict[str, int] = {}
    for text in texts:
        lowered = text.lower().translate(str.maketrans({c: " " for c in DEFAULT_FILTERS}))
        words = [w for w in lowered.split(" ") if w]
        for w in words:
            counts[w] = counts.get(w, 0) + 1
        for w in set(words):
            docs[w] = docs.get(w, 0) + 1
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)]
    if oov_token is not None:
        vocab = [oov_token] + vocab
    word_index = {w: i for i, w in enumerate(vocab, start=1)}
    config = {
        "num_words": num_words,
        "filters": DEFAULT_FILTERS,
        "lower": True,
        "split": " ",
        "char_level": False,
        "oov_token": oov_token,
        "document_count": len(texts),
        "word_counts": json.dumps(counts),
        "word_docs": json.dumps(docs),
        "index_docs": json.dumps({str(word_index[w]): c for w, c in docs.items()}),
        "index_word": json.dumps({str(i): w for w, i in word_index.items()}),
        "word_index": json.dumps(word_index),
    }
    return json.dumps({"class_name": "Tokenizer", "config": config})


def build_assets(folder: str) -> dict[str, str]:
    """Writes corpus, tokenizer and trained model into ``folder`` unless already there."""
    paths = {name: os.path.join(folder, name) for name in ("corpus.jsonl", "tokenizer.json", "model.keras")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(folder, exist_ok=True)
    import keras
    import numpy as np

    from beam_pipeline.keras_tokenizer import KerasTokenizer, pad_sequences

    docs = sample_corpus()
    with open(paths["corpus.jsonl"], "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    tokenizer_json = fit_tokenizer_json([d["text"] for d in docs], num_words=400, oov_token="<unk>")
    with open(paths["tokenizer.json"], "w", encoding="utf-8") as f:
        f.write(tokenizer_json)
    tokenizer = KerasTokenizer.from_json(tokenizer_json)
    maxlen = 64
    x = pad_sequences(tokenizer.texts_to_sequences([d["text"] for d in docs]), maxlen=maxlen)
    topics = sorted(TOPICS)
    y = np.array([topics.index(d["topic"]) for d in docs])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((maxlen,), dtype="int32", name="token_ids")
    h = keras.layers.Embedding(400, 16, mask_zero=True, name="embedding")(inputs)
    h = keras.layers.LSTM(32, name="lstm")(h)
    outputs = keras.layers.Dense(len(topics), activation="softmax", name="topic")(h)
    model = keras.Model(inputs, outputs, name="demo_topic_classifier")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=4, batch_size=32, verbose=0, shuffle=False)
    model.save(paths["model.keras"])
    return paths


def demo_argv(folder: str = os.path.join("out", "demo")) -> list[str]:
    """The job's arguments for the embedded default."""
    paths = build_assets(os.path.join(folder, "assets"))
    return [
        "--input", paths["corpus.jsonl"],
        "--model", paths["model.keras"],
        "--tokenizer", paths["tokenizer.json"],
        "--output", os.path.join(folder, "embeddings"),
        "--mode", "final",
        "--padding", "pre",  # trained on pad_sequences' defaults (masked: the padding side changes no value)
        "--truncating", "pre",
        "--overwrite",
    ]
