"""Every flag of the job, its default and its check, as one PipelineOptions subclass.

``resolve`` turns parsed options into a ``JobConfig``: it opens the model and the tokenizer once,
on the launching machine, so that a wrong layer, mode, maxlen or file fails here with a clear
message, before any worker starts.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import __version__, engines, files, recurrent

COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


class ConfigError(ValueError):
    """Wrong configuration, found before any work starts."""


def _flag(value: str) -> bool:
    """A switch that also takes a value (``--overwrite``, ``--overwrite=true``), as Flex Templates pass it."""
    lowered = value.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class EmbeddingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", nargs="+", help="File, glob or list of them (local or gs://).")
        parser.add_argument("--output", help="Output prefix: shards are PREFIX-SSSSS-of-NNNNN.parquet.")
        parser.add_argument("--model", help=".keras or .h5 model file (local or gs://).")
        parser.add_argument("--tokenizer", default=None, help="JSON written by a legacy Keras Tokenizer.to_json().")
        parser.add_argument("--layer", default=None, help="Target layer name or index; default: last recurrent.")
        parser.add_argument("--mode", default="final", choices=recurrent.MODES)
        parser.add_argument("--maxlen", type=int, default=None,
                            help="Timesteps per document; default: the model's fixed input length.")
        parser.add_argument("--padding", default="pre", choices=("pre", "post"))
        parser.add_argument("--truncating", default="pre", choices=("pre", "post"))
        parser.add_argument("--long_docs", default="truncate", choices=("truncate", "carry"),
                            help="truncate: cut at maxlen as pad_sequences does; carry: read every maxlen window "
                                 "in turn, the recurrent states carried from one to the next.")
        parser.add_argument("--id_field", default="id")
        parser.add_argument("--text_field", default="text")
        parser.add_argument("--num_shards", type=int, default=0, help="0: let the runner decide.")
        parser.add_argument("--batch_size", type=int, default=512, help="Documents per inference call.")
        parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
        parser.add_argument("--length_bucketing", default="auto", choices=("auto", "off"),
                            help="auto: for masked models, sort by length and pad each batch to its longest.")
        parser.add_argument("--jit", default="auto", choices=("auto", "off"),
                            help="auto: on the CPU, XLA-compile the sub-model for batch shapes that repeat.")
        parser.add_argument("--engine", default="auto", choices=engines.CHOICES,
                            help="auto: on the first batch, every engine that can run the model exactly is checked "
                                 "against the Keras graph and timed; the fastest is kept. Or force one.")
        parser.add_argument("--compression", default="zstd", choices=COMPRESSIONS)
        parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
        parser.add_argument("--row_group_mb", type=int, default=32, help="Target Parquet row group size in MiB.")
        parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=_flag,
                            help="Replace shards of a different model/layer/mode at the output prefix.")
        parser.add_argument("--unsafe_deserialization", nargs="?", const=True, default=False, type=_flag,
                            help="Load models holding Python code (Lambda layers). Only for files you trust.")


@dataclass(frozen=True)
class JobConfig:
    """The resolved, validated job: plain data, picklable, shipped to every worker."""

    inputs: tuple[str, ...]
    output: str
    model: str
    tokenizer: str | None
    layer: str  # resolved layer name
    mode: str
    maxlen: int
    padding: str
    truncating: str
    long_docs: str
    id_field: str
    text_field: str
    num_shards: int
    batch_size: int
    device: str
    length_bucketing: bool
    jit: bool
    compression: str
    dtype: str
    row_group_bytes: int
    overwrite: bool
    unsafe_deserialization: bool
    layer_info: dict = field(default_factory=dict)
    model_sha256: str = ""
    tokenizer_sha256: str | None = None
    engine: str = "auto"

    @property
    def columns(self) -> list[tuple[str, int]]:
        return [tuple(c) for c in self.layer_info["columns"]]

    def provenance(self) -> dict:
        """What the numbers mean: written into every shard's metadata as ``embedding_job``."""
        info = self.layer_info
        return {
            "project": "beam-recurrent-embeddings",
            "version": __version__,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "layer": self.layer,
            "layer_class": info["class_name"],
            "cell_class": info["cell_class"],
            "bidirectional": info["bidirectional"],
            "merge_mode": info["merge_mode"],
            "units": info["units"],
            "masked": info["masked"],
            "input": info["input"],
            "mode": self.mode,
            "columns": {name: dim for name, dim in self.columns},
            "dtype": self.dtype,
            "maxlen": self.maxlen,
            "padding": self.padding,
            "truncating": self.truncating,
            "long_docs": self.long_docs,
            "tokenizer": self.tokenizer,
            "tokenizer_sha256": self.tokenizer_sha256,
            "engine": self.engine,
            "engine_tolerance": engines.TOLERANCE,
        }


def _fixed_input_length(model) -> int | None:
    shape = model.inputs[0].shape
    return int(shape[1]) if len(shape) >= 2 and shape[1] is not None else None


def _check_maxlen(o: EmbeddingOptions, model) -> int:
    fixed = _fixed_input_length(model)
    maxlen = o.maxlen if o.maxlen is not None else fixed
    if maxlen is None:
        raise ConfigError("the model's input length is not fixed: pass --maxlen")
    if maxlen < 1:
        raise ConfigError("--maxlen must be at least 1")
    if fixed is not None and maxlen != fixed:
        raise ConfigError(f"--maxlen {maxlen} disagrees with the model's fixed input length {fixed}")
    return maxlen


def _check_tokenizer(o: EmbeddingOptions, model, layer) -> tuple[str, int | None]:
    """(tokenizer sha256, one-hot depth or None); the tokenizer's ids must fit the model."""
    from beam_pipeline.keras_tokenizer import KerasTokenizer

    if not o.tokenizer:
        raise ConfigError("--tokenizer is required: the model takes token ids")
    try:
        tokenizer = KerasTokenizer.from_json(files.read_bytes(o.tokenizer).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"--tokenizer {o.tokenizer}: {e}") from e
    depth = recurrent.one_hot_depth(model)
    if depth is not None and tokenizer.max_id() >= depth:
        raise ConfigError(
            f"the model takes a one-hot input of depth {depth} but the tokenizer can emit ids up to "
            f"{tokenizer.max_id()}: use the tokenizer the model was trained with."
        )
    input_dim = recurrent.embedding_input_dim(model, layer)
    if input_dim is not None and tokenizer.max_id() >= input_dim:
        raise ConfigError(
            f"the tokenizer can emit ids up to {tokenizer.max_id()} but the model's Embedding has "
            f"input_dim={input_dim}: ids >= {input_dim} would fail. Use the tokenizer the model was trained "
            f"with, or one saved with num_words <= {input_dim}."
        )
    return files.sha256_of(o.tokenizer), depth


def _check_text_model(o: EmbeddingOptions, model) -> tuple[int, None, None]:
    """A model that takes raw text: its TextVectorization tokenizes, pads and truncates."""
    try:
        vectorizer = recurrent.text_vectorization(model)
    except recurrent.ModelError as e:
        raise ConfigError(str(e)) from e
    if o.tokenizer:
        raise ConfigError("the model takes raw text and tokenizes it itself (TextVectorization): drop --tokenizer")
    if o.long_docs == "carry":
        raise ConfigError("--long_docs carry needs token ids; this model tokenizes raw text itself")
    length = vectorizer.get_config().get("output_sequence_length")
    if o.maxlen is not None and o.maxlen != length:
        raise ConfigError(f"--maxlen {o.maxlen} disagrees with the model's TextVectorization "
                          f"output_sequence_length {length}; leave --maxlen out")
    return int(length or 0), None, None


def resolve(options: PipelineOptions) -> JobConfig:
    """Validates the options against the model and tokenizer; raises ConfigError on any problem."""
    o = options.view_as(EmbeddingOptions)
    for flag in ("input", "output", "model"):
        if not getattr(o, flag):
            raise ConfigError(f"--{flag} is required (or run `python -m beam_pipeline` alone for the demo)")
    if o.batch_size < 1:
        raise ConfigError("--batch_size must be at least 1")
    if o.num_shards < 0:
        raise ConfigError("--num_shards must be 0 (runner decides) or positive")
    try:
        files.match(list(o.input))
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from e
    for flag in ("model", "tokenizer"):
        path = getattr(o, flag)
        if path and not files.exists(path):
            raise ConfigError(f"--{flag} file not found: {path}")

    local, is_temp = files.local_copy(o.model)
    try:
        model = recurrent.load_model(local, unsafe_deserialization=o.unsafe_deserialization)
    except recurrent.ModelError as e:
        raise ConfigError(str(e).replace(local, o.model)) from e
    finally:
        if is_temp:
            import os

            os.unlink(local)
    try:
        layer = recurrent.find_layer(model, o.layer)
        info = recurrent.describe_layer(layer, model)
        if o.long_docs == "carry":
            recurrent.carry_chain(model, layer)
    except recurrent.ModelError as e:
        raise ConfigError(str(e)) from e

    if recurrent.takes_text(model):
        maxlen, tokenizer_sha, depth = _check_text_model(o, model)
    else:
        maxlen = _check_maxlen(o, model)
        tokenizer_sha, depth = _check_tokenizer(o, model, layer)

    if o.engine not in ("auto", "keras"):
        if o.long_docs == "carry":
            raise ConfigError(f"--long_docs carry runs the Keras graph window by window; drop --engine {o.engine}")
        ctx = engines.context_for(model, layer, o.mode, maxlen, o.padding, "gpu" if o.device == "gpu" else "cpu",
                                  o.jit == "auto")
        reason = engines.registry()[o.engine].why_not(ctx)
        if reason:
            raise ConfigError(f"--engine {o.engine} cannot run layer {info.name!r} exactly: {reason}. "
                              "Use --engine auto (or keras).")

    layer_info = {
        **asdict(info),
        "input": "text" if recurrent.takes_text(model) else ("one_hot" if depth else "token_ids"),
        "columns": info.columns(o.mode),
    }
    return JobConfig(
        inputs=tuple(o.input),
        output=o.output,
        model=o.model,
        tokenizer=o.tokenizer,
        layer=info.name,
        mode=o.mode,
        maxlen=maxlen,
        padding=o.padding,
        truncating=o.truncating,
        long_docs=o.long_docs,
        id_field=o.id_field,
        text_field=o.text_field,
        num_shards=o.num_shards,
        batch_size=o.batch_size,
        device=o.device,
        length_bucketing=o.length_bucketing == "auto" and info.masked and not recurrent.takes_text(model),
        jit=o.jit == "auto",
        compression=o.compression,
        dtype=o.dtype,
        row_group_bytes=o.row_group_mb << 20,
        overwrite=o.overwrite,
        unsafe_deserialization=o.unsafe_deserialization,
        layer_info=layer_info,
        model_sha256=files.sha256_of(o.model),
        tokenizer_sha256=tokenizer_sha,
        engine=o.engine,
    )
