"""``python -m beam_pipeline.inspect --model PATH [--tokenizer PATH] [--json]``: what the job would
do with a model, before running it.

Prints the model's layers in order (index into ``model.layers``, which is what ``--layer INDEX``
counts, name, class, output shape, whether the layer supports masking and whether a mask reaches
it); which layers ``--layer`` can target (the recurrent ones, those inside nested models too, with
their name path ``encoder/lstm_1`` and index path ``2/1``) and which one it targets when omitted
(the last); for each of those and each ``--mode`` the Parquet columns the job writes, with their
Arrow types and widths; the recurrent weight arrays with their gate blocks; and, given a
tokenizer, its vocabulary and a ``WARNING`` line when it can emit ids the first ``Embedding``
cannot take (the job refuses that pair). For a model fed one-hot sequences, the id -> one-hot
position rule (and a ``WARNING`` when the tokenizer maps a real token to id 0). With ``--model_fn``,
the model that code builds with the weights of ``--model`` (and the warnings about Keras 2
defaults). ``--json`` prints the same content as one JSON document.

Exit status: 0 after a report (warnings included), 2 when a file is missing or cannot be loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from beam_pipeline import logs

logs.quiet_start()

import pyarrow as pa  # noqa: E402

from beam_pipeline import files, nested, recurrent  # noqa: E402
from beam_pipeline.keras_tokenizer import KerasTokenizer  # noqa: E402
from beam_pipeline.model.checks import UnreadableModel  # noqa: E402
from beam_pipeline.options import one_hot_rule, one_hot_warnings, sides_that_matter  # noqa: E402
from transforms.write import schema  # noqa: E402

# Columns the job writes before the embedding columns, whatever the layer and mode.
LEADING_COLUMNS = "doc_id: string, num_tokens: int32"
DTYPE = "float32"


class InspectError(Exception):
    """A file that is missing or cannot be read; reported on stderr with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipeline.inspect",
        description="Show a Keras model's layers, the recurrent layers the job can target, the Parquet "
        "columns each --mode writes, and the recurrent weight arrays; check a tokenizer against it.",
    )
    parser.add_argument("--model", required=True,
                        help=".keras or .h5 model file, or a tf.keras SavedModel folder (local or gs://).")
    parser.add_argument("--tokenizer", default=None, help="Legacy Keras Tokenizer JSON to check against the model.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead of text.")
    parser.add_argument("--unsafe_deserialization", action="store_true",
                        help="Load models holding Python code (Lambda layers). Only for files you trust.")
    parser.add_argument("--model_fn", default=None, metavar="MODULE:FUNCTION|FILE.py:FUNCTION",
                        help="Runs YOUR code: the function that builds the Keras 3 model whose weights-only file "
                             "--model is. Only for code you trust.")
    parser.add_argument("--log_level", default=logs.DEFAULT_LOG_LEVEL, choices=logs.LOG_LEVELS,
                        help="Lowest level of TensorFlow, absl and Beam messages shown, as for the job "
                             f"(default: {logs.DEFAULT_LOG_LEVEL}: no start-up lines).")
    return parser


def _require(path: str, flag: str) -> None:
    try:
        found = files.exists_file_or_folder(path) if flag == "model" else files.exists(path)
    except Exception as e:  # e.g. no credentials for gs://
        raise InspectError(f"--{flag} {path}: cannot be checked: {e}") from e
    if not found:
        raise InspectError(f"--{flag} file not found: {path}")


def _load(path: str, unsafe_deserialization: bool, model_fn: str | None = None):
    from beam_pipeline.model import load_model

    try:
        return load_model(path, unsafe_deserialization=unsafe_deserialization, model_fn=model_fn)
    except UnreadableModel as e:
        raise InspectError(f"--model {path}: {e}") from e
    except recurrent.ModelError as e:
        raise InspectError(str(e)) from e


def _shape(shape) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def _output_shapes(layer) -> list[list[int | None]] | None:
    """The layer's output shape(s); None where Keras cannot tell (an unbuilt or reused layer)."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return [_shape(t.shape) for t in outputs]


def _receives_mask(layer, model) -> bool | None:
    """Whether a mask reaches the layer in the model's graph: passed to it, or carried by its input."""
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return False
    try:
        args, kwargs = recurrent.inbound_call(layer, model)
    except recurrent.ModelError:
        return None
    if kwargs.get("mask") is not None:
        return True
    return any(getattr(t, "_keras_mask", None) is not None for t in keras.tree.flatten(args))


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return {"float": "float32", "halffloat": "float16"}.get(str(t), str(t))


def _columns(info: recurrent.LayerInfo) -> dict[str, list[dict[str, Any]]]:
    """Per mode, the embedding columns as the job's own Parquet schema declares them."""
    out = {}
    for mode in recurrent.MODES:
        dims = info.columns(mode)
        arrow = schema(dims, mode, DTYPE, {})
        out[mode] = [
            {"name": name, "dim": dim, "type": _type_name(arrow.field(name).type)} for name, dim in dims
        ]
    return out


def _recurrent_entry(target: nested.Target, model) -> dict[str, Any]:
    top = len(target.chain) == 1
    entry: dict[str, Any] = {"index": int(target.index_path) if top else target.index_path, "name": target.layer.name,
                             "path": target.path}
    try:
        if not top:
            model = recurrent.single_input_view(nested.inline(model, target.chain), target.layer)
        layer = target.layer
        info = recurrent.describe_layer(layer, model)
        weights = recurrent.weight_table(layer, model)
    except recurrent.ModelError as e:
        entry["error"] = str(e)
        return entry
    entry.update(dataclasses.asdict(info), state_names=list(info.state_names), columns=_columns(info),
                 weights=weights, pad_flags=_pad_flags(info, recurrent.takes_text(model)))
    return entry


def _pad_flags(info: recurrent.LayerInfo, takes_text: bool) -> dict[str, str]:
    """For ``--padding`` and ``--truncating``: whether the job requires it for this layer, and why."""
    if takes_text:
        return {flag: "not used: the model's TextVectorization pads and truncates (post) itself"
                for flag in ("padding", "truncating")}
    matter = sides_that_matter(info.mask_is_padding, takes_text, "truncate", info.mask_source)
    out = {}
    out["padding"] = (f"required: {matter['padding']}" if "padding" in matter
                      else "optional: the model's mask is ids != 0 (it hides exactly the padding), so its side "
                           "changes no value")
    out["truncating"] = (f"required: {matter['truncating']} (not with --long_docs carry, which cuts nothing)")
    return out


def _tokenizer_entry(path: str, model, default_layer, depth: int | None) -> tuple[dict[str, Any], list[str]]:
    try:
        tokenizer = KerasTokenizer.from_json(files.read_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InspectError(f"--tokenizer {path}: {e}") from e
    input_dim = recurrent.embedding_input_dim(model, default_layer)
    max_id = tokenizer.max_id()
    fits = input_dim is None or max_id < input_dim
    entry = {
        "path": path,
        "vocab_size": tokenizer.vocab_size,
        "num_words": tokenizer.num_words,
        "oov_token": tokenizer.oov_token,
        "max_id": max_id,
        "embedding_input_dim": input_dim,
        "fits": fits,
    }
    warnings = [] if fits else [
        f"the tokenizer can emit ids up to {max_id} but the model's first Embedding has input_dim={input_dim}: "
        f"ids >= {input_dim} would fail, and the job refuses this pair. Use the tokenizer the model was trained "
        f"with, or one saved with num_words <= {input_dim}."
    ]
    if depth is not None:
        warnings += one_hot_warnings(tokenizer.word_index, depth)
    return entry, warnings


def build_report(model_path: str, tokenizer_path: str | None = None, unsafe_deserialization: bool = False,
                 model_fn: str | None = None) -> dict:
    """Everything ``main`` prints, as plain data. Raises ``InspectError`` for missing or unreadable files."""
    if not model_fn:
        _require(model_path, "model")
    if tokenizer_path:
        _require(tokenizer_path, "tokenizer")
    loaded = _load(model_path, unsafe_deserialization, model_fn)
    model = loaded.model
    targets = nested.targets(model)
    top = [t for t in targets if len(t.chain) == 1]
    default = (top or targets)[-1] if targets else None
    layers = [
        {
            "index": i,
            "name": layer.name,
            "class_name": type(layer).__name__,
            "output_shapes": _output_shapes(layer),
            "supports_masking": bool(getattr(layer, "supports_masking", False)),
            "receives_mask": _receives_mask(layer, model),
            "recurrent": recurrent.is_recurrent(layer),
        }
        for i, layer in enumerate(model.layers)
    ]
    report: dict[str, Any] = {
        "model": {
            "path": model_path,
            "name": model.name,
            "origin": loaded.provenance.to_dict(),
            "inputs": [{"name": t.name, "shape": _shape(t.shape), "dtype": str(t.dtype)} for t in model.inputs],
        },
        "layers": layers,
        "default_layer": default.path if default is not None else None,
        "recurrent_layers": [],
        "leading_columns": LEADING_COLUMNS,
        "dtype": DTYPE,
        "tokenizer": None,
        "warnings": list(loaded.provenance.weights.get("warnings", [])),
        "one_hot": None,
    }
    report["recurrent_layers"] = [_recurrent_entry(t, model) for t in targets]  # after the listing: views add calls
    depth = recurrent.one_hot_depth(model)
    if depth is not None:
        report["one_hot"] = {"depth": depth, "rule": one_hot_rule(depth)}
    if not targets:
        report["warnings"].append("the model has no recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional): "
                                  "the job cannot use it")
    if tokenizer_path:
        report["tokenizer"], warnings = _tokenizer_entry(tokenizer_path, model, default.layer if default else None,
                                                         depth)
        report["warnings"].extend(warnings)
    return report


def _fmt_shape(shape: list[int | None]) -> str:
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _yes(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def render_text(report: dict) -> str:
    model = report["model"]
    lines = [f"model {model['path']} (name {model['name']!r}, {len(report['layers'])} layers)"]
    origin = model["origin"]
    lines.append(f"  saved by {origin['framework']} {origin['framework_version'] or '(version not recorded)'}, "
                 f"format {origin['format']}; translations applied: {len(origin['translations']) or 'none'}")
    lines += [f"    {t['layer']}: {t['rule']}: {t['change']}" for t in origin["translations"]]
    for key in ("builder", "weights_matched", "weights_sha256"):
        if key in origin:
            lines.append(f"  {key.replace('_', ' ')}: {origin[key]}")
    lines += [f"  input {t['name']}: shape {_fmt_shape(t['shape'])}, {t['dtype']}" for t in model["inputs"]]
    if report["one_hot"] is not None:
        lines.append(f"  one-hot input of depth {report['one_hot']['depth']}: {report['one_hot']['rule']}")
    lines += ["", "layers (--layer takes the name or the index):"]
    rows = [["index", "name", "class", "output shape", "supports masking", "receives mask", ""]]
    for layer in report["layers"]:
        shapes = layer["output_shapes"]
        role = ""
        if layer["name"] == report["default_layer"]:
            role = "default target"
        elif layer["recurrent"]:
            role = "targetable"
        rows.append([
            str(layer["index"]), layer["name"], layer["class_name"],
            "?" if shapes is None else ", ".join(_fmt_shape(s) for s in shapes),
            _yes(layer["supports_masking"]), _yes(layer["receives_mask"]), role,
        ])
    lines += _table(rows)
    targets = report["recurrent_layers"]
    lines.append("")
    lines.append("targetable layers (recurrent): "
                 + (", ".join(f"{t['index']}:{t['path']}" for t in targets) if targets else "none"))
    if any("/" in t["path"] for t in targets):
        lines.append("  (a layer inside a nested model: --layer takes its index path or its name path)")
    if report["default_layer"] is not None:
        lines.append(f"default layer (no --layer): {report['default_layer']} (the last recurrent layer)")
    for t in targets:
        lines += ["", f"layer {t['index']}: {t['path']}"]
        if "error" in t:
            lines.append(f"  cannot be targeted: {t['error']}")
            continue
        kind = t["class_name"] + (f"({t['cell_class']}, merge_mode={t['merge_mode']})" if t["bidirectional"] else "")
        lines.append(f"  {kind}, units={t['units']}, input features={t['input_dim']}, "
                     f"receives a mask={_yes(t['masked'])}")
        if t["masked"]:
            lines.append(f"  mask: {t['mask_source']}")
        lines.append(f"  masked: {_yes(t['masked'])}"
                     + (" (by a Masking layer or another mask computed from the values: padding required)"
                        if t["masked"] and not t["mask_is_padding"] else "")
                     + f"; --padding {t['pad_flags']['padding']}")
        lines.append(f"  --truncating {t['pad_flags']['truncating']}")
        lines.append(f"  Parquet columns after {report['leading_columns']} "
                     f"({report['dtype']}; float16 with --dtype float16):")
        for mode, columns in t["columns"].items():
            described = ", ".join(f"{c['name']}: {c['type']} (dim {c['dim']})" for c in columns)
            lines.append(f"    --mode {mode:<8} {described}")
        lines.append("  weights:")
        weights = [["name", "direction", "shape", "meaning"]]
        weights += [[w["name"], w["direction"] or "-", _fmt_shape(w["shape"]), w["meaning"]] for w in t["weights"]]
        lines += _table(weights, indent="    ")
    tokenizer = report["tokenizer"]
    if tokenizer is not None:
        lines += ["", f"tokenizer {tokenizer['path']}: vocabulary size {tokenizer['vocab_size']}, "
                      f"num_words {tokenizer['num_words']}, oov_token {tokenizer['oov_token']!r}, "
                      f"largest id it emits {tokenizer['max_id']}, first Embedding input_dim "
                      f"{tokenizer['embedding_input_dim']}"]
    if report["warnings"]:
        lines.append("")
        lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.apply(args.log_level)
    try:
        report = build_report(args.model, args.tokenizer, args.unsafe_deserialization, args.model_fn)
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
