"""Every flag of the job, its default and its check, as one PipelineOptions subclass.

``resolve`` turns parsed options into a ``JobConfig``: it opens the model and the tokenizer once,
on the launching machine, so that a wrong layer, mode, maxlen or file fails here with a clear
message, before any worker starts.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import __version__, engines, files, nested, provenance, recurrent
from beam_pipeline.dead_letters import parse_limit
from beam_pipeline.logs import LOG_LEVELS
from beam_pipeline.model.checks import UnreadableModel

COMPRESSIONS = ("zstd", "snappy", "gzip", "none")
LOG = logging.getLogger(__name__)


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


PROG = "python -m beam_pipeline"
PAD_SIDES = ("pre", "post")
KERAS_DEFAULTS = "keras.utils.pad_sequences defaults to padding='pre', truncating='pre'"


class EmbeddingOptions(PipelineOptions):
    """The job's own flags, in the groups ``--help`` shows them in."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("input")
        group.add_argument("--input", nargs="+", metavar="PATH",
                           help="Required. File(s) or glob(s), local or gs://. .jsonl/.json/.ndjson: one JSON object "
                                "per line; .csv: with a header; .parquet; anything else: plain text, one document "
                                "per line. Compressed files (.gz/.bz2/.deflate/.zst/.zstd/.xz/.lzma after the format's "
                                "suffix) are decompressed.")
        group.add_argument("--id_field", default="id",
                           help="Field (JSONL) or column (CSV, Parquet) of the document id.")
        group.add_argument("--text_field", default="text",
                           help="Field (JSONL) or column (CSV, Parquet) of the document text.")

        group = parser.add_argument_group("model")
        group.add_argument("--model", metavar="PATH",
                           help="Required. .keras or .h5 model file, or a tf.keras SavedModel folder (local or gs://); "
                                "with --model_fn, a weights-only file (Keras 3 .weights.h5, Keras 2 save_weights .h5).")
        group.add_argument("--model_fn", default=None, metavar="MODULE:FUNCTION|FILE.py:FUNCTION",
                           help="Runs YOUR code: the function (no arguments) that builds the uncompiled Keras 3 model "
                                "whose weights --model holds. MODULE: importable on every worker (--setup_file, a "
                                "custom container); FILE.py: only where the workers read this machine's files "
                                "(DirectRunner, a local cluster). Only for code you trust.")
        group.add_argument("--layer", default=None,
                           help="Target layer: name or index into model.layers, or a path into nested models "
                                "(encoder/lstm_1, 2/1). Default: the last recurrent layer.")
        group.add_argument("--mode", default="final", choices=recurrent.MODES,
                           help="final: the layer's output vector; sequence: one vector per real token; "
                                "states: the final h (and c) states.")
        group.add_argument("--unsafe_deserialization", nargs="?", const=True, default=False, type=_flag,
                           metavar="true|false",
                           help="Load models holding Python code (Lambda layers). Only for files you trust.")

        group = parser.add_argument_group("preprocessing")
        group.add_argument("--tokenizer", default=None, metavar="PATH",
                           help="Required unless the model takes raw text (TextVectorization): the JSON of a "
                                "legacy Keras Tokenizer.to_json().")
        group.add_argument("--maxlen", type=int, default=None,
                           help="Timesteps per document. Default: the model's fixed input length.")
        group.add_argument("--padding", default=None, choices=PAD_SIDES,
                           help="Side padding goes, as the model was trained. Required unless the model's mask is "
                                "Embedding(mask_zero=True) (padding changes the vectors of unmasked models and of "
                                "Masking layers); " + KERAS_DEFAULTS + ".")
        group.add_argument("--truncating", default=None, choices=PAD_SIDES,
                           help="Required, except with --long_docs carry: which end of a document longer than "
                                "maxlen is cut, as the model was trained (it decides which tokens are kept).")
        group.add_argument("--long_docs", default="truncate", choices=("truncate", "carry"),
                           help="truncate: cut at maxlen as pad_sequences does; carry: read every maxlen window "
                                "in turn, the recurrent states carried from one to the next.")

        group = parser.add_argument_group("output")
        group.add_argument("--output", metavar="PREFIX",
                           help="Required. Output prefix: PREFIX-SSSSS-of-NNNNN.parquet shards, "
                                "PREFIX-errors-*.jsonl dead letters, and PREFIX-summary.json, written last.")
        group.add_argument("--previous", default=None, metavar="PREFIX",
                           help="The output prefix of an earlier run (may equal --output): documents whose id and "
                                "text match a row there are copied, not embedded again (docs/incremental.md).")
        group.add_argument("--previous_join", default="auto", choices=("auto", "lookup", "shuffle"),
                           help="How --previous finds unchanged documents: lookup (every worker holds the previous "
                                "output's keys; the input is read once), shuffle (a join by id bucket; for previous "
                                "outputs too large for that), auto: lookup while the keys fit --previous_lookup_mb.")
        group.add_argument("--previous_lookup_mb", type=int, default=1024,
                           help="Memory one worker process may spend on the previous output's keys (--previous_join "
                                "auto).")
        group.add_argument("--num_shards", type=int, default=0, help="Parquet shards; 0: the runner decides.")
        group.add_argument("--compression", default="zstd", choices=COMPRESSIONS, help="Parquet compression.")
        group.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                           help="Type of the vector values.")
        group.add_argument("--row_group_mb", type=int, default=32, help="Target Parquet row group size in MiB.")
        group.add_argument("--overwrite", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                           help="Replace shards of a different model/layer/mode at the output prefix.")
        group.add_argument("--max_dead_letters", default=None, type=parse_limit, metavar="N|P%",
                           help="Most dead letters (N) or share of the records read (P%%) a run may have; over it "
                                "the run fails with exit status 3 and writes no summary. Default: no limit.")
        group.add_argument("--log_level", default="error", choices=LOG_LEVELS,
                           help="Lowest level of TensorFlow, absl and Beam messages shown; the job's own "
                                "progress and summary always show.")

        group = parser.add_argument_group("performance")
        group.add_argument("--batch_size", type=int, default=512, help="Documents per inference call.")
        group.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                           help="auto: the GPU when TensorFlow sees one, else the CPU.")
        group.add_argument("--length_bucketing", default="auto", choices=("auto", "off"),
                           help="auto: for masked models, sort by length and pad each batch to its longest; "
                                "for unmasked pre-padded ones, sort by length (engines that skip the padding "
                                "run less).")
        group.add_argument("--jit", default="auto", choices=("auto", "off"),
                           help="auto: on the CPU, let --engine auto try XLA; off: never.")
        group.add_argument("--engine", default="auto", choices=engines.CHOICES,
                           help="auto: on the first batch, every engine that can run the model exactly is checked "
                                "against the Keras graph and timed; the fastest is kept. Or force one.")
        group.add_argument("--reshuffle", default="auto", choices=("auto", "on", "off"),
                           help="Reshuffle the tokenized documents before embedding, so that the documents of one "
                                "input file spread over all workers (a file is read by one worker). auto: on for "
                                "Dataflow only (the DirectRunner would hold the corpus in memory; elsewhere, on by "
                                "choice).")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends each flag's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is not None and action.default is not argparse.SUPPRESS and action.option_strings:
            text += " (default: %(default)s)"
        return text


def job_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's flags as ``--help`` prints them."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
        usage=f"{prog} --input PATH [PATH ...] --model PATH --tokenizer PATH --output PREFIX "
              "--truncating pre|post [--padding pre|post] [job flags] [Beam pipeline options]",
        description="Embed a text corpus with one recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional) of a "
                    "trained Keras model and write sharded Parquet.\n"
                    f"With no arguments, runs the embedded demo. Inspect a model first: {PROG}.inspect --model PATH",
        epilog="Any Apache Beam pipeline option is also accepted (--runner, --direct_num_workers, --project, "
               "--region, --temp_location, ...). An argument that is neither a job flag nor a Beam option is an error. "
               "Exit status: 0 output committed; 1 records unaccounted for; 2 configuration error (nothing ran); "
               "3 over --max_dead_letters (nothing committed).",
    )
    EmbeddingOptions._add_argparse_args(parser)
    return parser


def _beam_parser() -> argparse.ArgumentParser:
    """Every flag of every registered Beam ``PipelineOptions`` class (the job's own included)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    try:
        import apache_beam.runners.render  # noqa: F401  (registers RenderOptions)
    except ImportError:
        pass
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: set[type] = set()
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if "_add_argparse_args" in cls.__dict__:
            try:
                cls._add_argparse_args(parser)
            except argparse.ArgumentError:  # a flag two classes both define
                pass
    return parser


def check_argv(argv: list[str], prog: str = PROG) -> None:
    """``--help`` prints the job's flags; an argument that neither the job nor any registered Beam
    ``PipelineOptions`` class knows stops the launch with exit status 2, and Beam's suggestion
    (``difflib``'s closest known flag, as Beam computes it when it discards the argument)."""
    import difflib

    parser = job_parser(prog)
    parser.parse_known_args(argv)  # --help, and wrong values of the job's own flags
    beam_parser = _beam_parser()
    _, unknown = beam_parser.parse_known_args(argv)
    if not unknown:
        return
    known = [opt for action in beam_parser._actions for opt in action.option_strings]
    hints = []
    for arg in unknown:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], known)
            if close:
                hints.append(f"{arg.split('=', 1)[0]}: did you mean {close[0]}?")
    parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")
                 + f". Job flags: {prog} --help; any Beam pipeline option is also accepted.")


@dataclass(frozen=True)
class JobConfig:
    """The resolved, validated job: plain data, picklable, shipped to every worker."""

    inputs: tuple[str, ...]
    output: str
    model: str
    tokenizer: str | None
    layer: str  # the target's name (its name path when nested), as the user and inspect see it
    mode: str
    maxlen: int
    padding: str | None  # None: it changes no value (a mask that is exactly ids != 0)
    truncating: str | None  # None: nothing is truncated (--long_docs carry)
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
    model_fn: str | None = None  # --model_fn: the builder of a weights-only --model
    layer_index: str = ""  # the target's index path ("3", "2/1"): how workers locate it, whatever Keras named it
    layer_info: dict = field(default_factory=dict)
    model_sha256: str = ""
    submodel_sha256: str = ""  # provenance.submodel_digest: what computes the values
    model_origin: dict = field(default_factory=dict)  # model.Provenance.to_dict(): framework, format, translations
    tokenizer_sha256: str | None = None
    engine: str = "auto"
    reshuffle: bool = False  # documents spread over workers after tokenizing (see --reshuffle)
    max_dead_letters: str | None = None  # "N" or "P%" (dead_letters.parse_limit); None: no limit
    previous: dict | None = None  # --previous, read by the launcher: beam_pipeline.previous.Previous.to_dict()
    previous_join: str = "auto"  # --previous_join
    previous_lookup_mb: int = 1024  # --previous_lookup_mb

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
            "submodel_sha256": self.submodel_sha256,
            "model_origin": self.model_origin,
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
    if depth is not None:
        for warning in one_hot_warnings(tokenizer.word_index, depth):
            LOG.warning("%s", warning)
    input_dim = recurrent.embedding_input_dim(model, layer)
    if input_dim is not None and tokenizer.max_id() >= input_dim:
        raise ConfigError(
            f"the tokenizer can emit ids up to {tokenizer.max_id()} but the model's Embedding has "
            f"input_dim={input_dim}: ids >= {input_dim} would fail. Use the tokenizer the model was trained "
            f"with, or one saved with num_words <= {input_dim}."
        )
    return files.sha256_of(o.tokenizer), depth


def one_hot_rule(depth: int) -> str:
    """How the job turns token ids into the one-hot vectors of a model fed ``(timesteps, depth)``."""
    return (f"token id k -> one-hot position k (a vector of {depth} with a 1 at k), for 1 <= k < {depth}; id 0 is "
            "padding, fed as the all-zero vector (position 0 is never set)")


def one_hot_warnings(word_index: dict[str, int], depth: int) -> list[str]:
    """A warning when the tokenizer maps a real token to id 0: its one-hot position is never set."""
    zero = sorted(word for word, index in word_index.items() if index == 0)
    if not zero:
        return []
    return [f"the tokenizer maps {len(zero)} token(s) to id 0 ({', '.join(map(repr, zero[:5]))}): the job feeds id 0 "
            f"as the all-zero vector (padding), so one-hot position 0 is never set for them. A legacy Keras "
            f"Tokenizer numbers words from 1; if the model was trained with position 0 set for these tokens, "
            f"re-number the word index from 1 (and the model's input from it)."]


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


def sides_that_matter(mask_is_padding: bool, takes_text: bool, long_docs: str,
                      mask_source: str = "") -> dict[str, str]:
    """Which of ``--padding`` / ``--truncating`` change the values for this model, and why; the
    others are not required. Only a mask that is exactly ``ids != 0`` (``recurrent.LayerInfo.mask_is_padding``)
    makes the padding side change no value. A raw-text model's TextVectorization pads and truncates by itself."""
    if takes_text:
        return {}
    matter = {}
    if not mask_is_padding and mask_source:
        matter["padding"] = (f"the model is masked by {mask_source}; that mask depends on the values, not only "
                             "on the padding ids, so the padding timesteps may go through the recurrent layer")
    elif not mask_is_padding:
        matter["padding"] = ("the model has no mask, so the padding timesteps go through the recurrent layer "
                             "and change every vector")
    if long_docs == "truncate":
        matter["truncating"] = "it decides which tokens of a document longer than maxlen are kept"
    return matter


def _check_sides(o: EmbeddingOptions, info: recurrent.LayerInfo, takes_text: bool) -> tuple[str | None, str | None]:
    """(padding, truncating) for the job; refuses a missing one that changes the values."""
    if takes_text:
        for flag in ("padding", "truncating"):
            if getattr(o, flag) not in (None, "post"):
                raise ConfigError(f"--{flag} {getattr(o, flag)} cannot apply: the model's TextVectorization pads "
                                  f"and truncates at the end (post) itself; leave --{flag} out")
        return "post", "post"
    matter = sides_that_matter(info.mask_is_padding, takes_text, o.long_docs, info.mask_source)
    missing = [flag for flag in matter if getattr(o, flag) is None]
    if missing:
        reasons = "; ".join(f"--{flag}: {matter[flag]}" for flag in missing)
        raise ConfigError(
            f"{' and '.join('--' + f for f in missing)} {'are' if len(missing) > 1 else 'is'} required for this "
            f"model: pass the side{'s' if len(missing) > 1 else ''} it was trained with (pre or post). {reasons}. "
            f"No default is assumed, because a wrong side gives other vectors without any error; "
            f"if you trained on keras.utils.pad_sequences without setting them, that is pre ({KERAS_DEFAULTS})."
        )
    return o.padding, o.truncating


def reshuffles(flag: str, options: PipelineOptions) -> bool:
    """``--reshuffle``: auto is on for Dataflow only, whose shuffle is a service. The local
    DirectRunner's shuffle holds every element in memory; on Flink it is ``on`` by choice (verified
    there by the parity tests only, not under a TaskManager's loss)."""
    if flag != "auto":
        return flag == "on"
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in ("DataflowRunner", "TestDataflowRunner")


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
    if not o.model_fn and not files.exists_file_or_folder(o.model):
        raise ConfigError(f"--model file not found: {o.model}")
    if o.tokenizer and not files.exists(o.tokenizer):
        raise ConfigError(f"--tokenizer file not found: {o.tokenizer}")

    from beam_pipeline.model import load_model

    try:
        loaded = load_model(o.model, unsafe_deserialization=o.unsafe_deserialization, model_fn=o.model_fn)
    except UnreadableModel as e:
        raise ConfigError(f"--model {o.model}: {e}") from e
    except recurrent.ModelError as e:
        raise ConfigError(str(e)) from e
    for warning in loaded.provenance.weights.get("warnings", []):
        LOG.warning("--model %s: %s", o.model, warning)
    model = loaded.model
    try:
        model, layer, layer_name = nested.locate(model, o.layer)
        layer_index = nested.index_path(loaded.model, layer)
        model = recurrent.single_input_view(model, layer)
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
    padding, truncating = _check_sides(o, info, recurrent.takes_text(model))
    if o.mode == "sequence":
        try:
            recurrent.check_sequence_mode(model, layer, maxlen)
        except recurrent.ModelError as e:
            raise ConfigError(str(e)) from e

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
        output=provenance.normalize_prefix(o.output),
        model=o.model,
        tokenizer=o.tokenizer,
        layer=layer_name,
        mode=o.mode,
        maxlen=maxlen,
        padding=padding,
        truncating=truncating,
        long_docs=o.long_docs,
        id_field=o.id_field,
        text_field=o.text_field,
        num_shards=o.num_shards,
        batch_size=o.batch_size,
        device=o.device,
        # Masked by ids != 0: sorted, each batch padded to its longest. Padded pre otherwise: sorted only (still
        # padded to maxlen), so the engines that skip the padding prefix (onnx, table) run chunks of like lengths:
        # +20% (bench, 2026-11-25).
        length_bucketing=(o.length_bucketing == "auto" and not recurrent.takes_text(model)
                          and (info.mask_is_padding or (padding == "pre" and o.long_docs != "carry"))),
        jit=o.jit == "auto",
        compression=o.compression,
        dtype=o.dtype,
        row_group_bytes=o.row_group_mb << 20,
        overwrite=o.overwrite,
        unsafe_deserialization=o.unsafe_deserialization,
        model_fn=o.model_fn,
        layer_index=layer_index,
        layer_info=layer_info,
        model_sha256=files.sha256_of_file_or_folder(o.model),
        submodel_sha256=provenance.submodel_digest(model, layer, loaded.provenance.translations),
        model_origin=loaded.provenance.to_dict(),
        tokenizer_sha256=tokenizer_sha,
        engine=o.engine,
        reshuffle=reshuffles(o.reshuffle, options),
        previous_join=o.previous_join,
        previous_lookup_mb=o.previous_lookup_mb,
        max_dead_letters=o.max_dead_letters,
    )
