"""Wires the stages: read -> tokenize -> embed -> write, dead letters on the side; nothing else."""

from __future__ import annotations

import json
import re

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsDict, AsList, AsSingleton

from beam_pipeline import files
from beam_pipeline.options import JobConfig
from transforms import errors, write
from transforms.embed import Embed
from transforms.read import COUNTS, ReadCorpus
from transforms.tokenize import Tokenize

SHARD_RE = r"-\d{5}-of-\d{5}"


def shard_pattern(prefix: str) -> str:
    return f"{prefix}-*-of-*.parquet"


def error_pattern(prefix: str) -> str:
    return f"{prefix}-errors-*-of-*.jsonl"


def summary_path(prefix: str) -> str:
    return f"{prefix}-summary.json"


def existing_outputs(prefix: str) -> list[str]:
    """Shard and dead-letter files already at ``prefix`` (nothing else that merely shares it)."""
    found = []
    for pattern, regex in ((shard_pattern(prefix), SHARD_RE + r"\.parquet"),
                           (error_pattern(prefix), "-errors" + SHARD_RE + r"\.jsonl")):
        for m in FileSystems.match([pattern])[0].metadata_list:
            if re.fullmatch(re.escape(prefix) + regex, m.path):
                found.append(m.path)
    return sorted(found)


def stale_outputs(existing: list[str], written: list[str]) -> list[str]:
    """Files of an earlier run at the prefix: those whose shard count (-of-NNNNN) differs from this
    run's for the same kind (Parquet shards or dead letters). A kind of which this run reports no
    file (a retried finalize that found everything renamed) is left alone."""

    def kind_and_count(path: str) -> tuple[str, str]:
        stem, _, count = path.rpartition("-of-")
        return ("errors" if path.endswith(".jsonl") else "shards"), count

    current = {kind_and_count(p) for p in written}
    kinds = {kind for kind, _ in current}
    return [p for p in existing if p not in written and kind_and_count(p)[0] in kinds
            and kind_and_count(p) not in current]


def _finalize(_, config: JobConfig, read: list[int], embedded: int, errors_by_reason: dict, written: list[str]):
    """Runs once after every shard is written: removes shards of a previous run at the same prefix
    that this run did not rewrite, then writes ``PREFIX-summary.json``."""
    files.delete(stale_outputs(existing_outputs(config.output), written))
    dead = sum(errors_by_reason.values())
    summary = {
        "read": sum(read),
        "embedded": embedded,
        "dead_lettered": dead,
        "errors_by_reason": dict(sorted(errors_by_reason.items())),
        "accounted": sum(read) == embedded + dead,
        "output_files": sorted(p for p in written if p.endswith(".parquet")),
        "error_files": sorted(p for p in written if p.endswith(".jsonl")),
        "columns": {name: dim for name, dim in config.columns},
        "embedding_job": config.provenance(),
    }
    with FileSystems.create(summary_path(config.output)) as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    yield summary


def build(p: beam.Pipeline, config: JobConfig, paths: list[str]):
    """Adds the whole job to ``p``."""
    read = p | "Read" >> ReadCorpus(paths, config.id_field, config.text_field)
    if config.tokenizer:
        tokens = read.docs | "Tokenize" >> beam.ParDo(
            Tokenize(config.tokenizer, None if config.long_docs == "carry" else config.maxlen, config.truncating)
        ).with_outputs(errors.ERRORS, main="ids")
        inputs, tokenize_errors = tokens.ids, tokens[errors.ERRORS]
    else:  # the model tokenizes raw text itself (TextVectorization)
        inputs, tokenize_errors = read.docs, p | "NoTokenizeErrors" >> beam.Create([])
    embedded, failed = inputs | "Embed" >> Embed(config)
    arrow_schema = write.schema(config.columns, config.mode, config.dtype, config.provenance(),
                                windows=config.long_docs == "carry")
    shards, rows = embedded | "Write" >> write.WriteEmbeddings(
        config.output, arrow_schema, config.mode, config.num_shards, config.compression, config.row_group_bytes
    )
    dead = (read.errors, tokenize_errors, failed) | "AllErrors" >> beam.Flatten()
    error_files = (
        dead
        | "ErrorsToJson" >> beam.Map(errors.to_json_line)
        | "WriteErrors" >> beam.io.Write(write.JsonLinesShards(config.output + "-errors"))
    )
    by_reason = (
        dead
        | "ErrorReason" >> beam.Map(lambda r: r["reason"])
        | "CountByReason" >> beam.combiners.Count.PerElement()
    )
    written = (shards, error_files) | "WrittenFiles" >> beam.Flatten()
    return (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.FlatMap(
            _finalize,
            config=config,
            read=AsList(read[COUNTS]),
            embedded=AsSingleton(rows),
            errors_by_reason=AsDict(by_reason),
            written=AsList(written),
        )
    )
