"""Wires the stages: read -> [reuse] -> tokenize -> embed -> write, dead letters on the side; nothing else."""

from __future__ import annotations

import glob
import json
import re

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsDict, AsList

from beam_pipeline import dead_letters, files
from beam_pipeline.options import JobConfig
from beam_pipeline.previous import output_generation
from transforms import errors, reuse, write
from transforms.batch import DocBatch
from transforms.embed import Embed
from transforms.read import COUNTS, ReadCorpus
from transforms.reuse_lookup import ReuseByLookup
from transforms.tokenize import Tokenize


def summary_path(prefix: str) -> str:
    return f"{prefix}-summary.json"


def existing_outputs(prefix: str) -> list[str]:
    """Shard and dead-letter files already at ``prefix`` (nothing else that merely shares it)."""
    return sorted(write.final_files(prefix, ".parquet") + write.final_files(prefix + "-errors", ".jsonl"))


def unaccounted_path(prefix: str) -> str:
    """The record of a run that ended with records unaccounted for (its counts; never a commit record)."""
    return f"{prefix}-unaccounted.json"


def _temp_folders(prefix: str) -> list[str]:
    """Beam's temp folders (``beam-temp-<name>-<uuid hex>``) of runs at ``prefix`` and its dead letters."""
    folder, name = FileSystems.split(prefix)
    own = re.compile(r"beam-temp-" + re.escape(name) + r"(-errors)?-[0-9a-f]{32}")
    pattern = FileSystems.join(write.escape(folder), f"beam-temp-{write.escape(name)}-*")
    if files.is_remote(prefix):  # object stores have no folders: the objects inside name them
        paths = [FileSystems.split(m.path)[0] for m in FileSystems.match([pattern + "/*"])[0].metadata_list]
    else:
        paths = glob.glob(pattern)
    return sorted({p for p in paths if own.fullmatch(FileSystems.split(p)[1])})


def start_replacing(prefix: str) -> None:
    """Called once by the launcher before the run: the summary, the output's commit record, goes
    first (it is written again last, so it exists only while the output is complete), and so do
    the temp folders a crashed run at the same prefix left behind."""
    for record in (summary_path(prefix), unaccounted_path(prefix)):
        if files.exists(record):
            files.delete([record])
    folders = _temp_folders(prefix)
    files.delete([f + "/" if files.is_remote(f) else f for f in folders])


def _finalize(_, config: JobConfig, read: list[int], by_engine: dict, errors_by_reason: dict, written: list[str],
              reuse_counts: dict | None = None):
    """Runs once after every shard and dead-letter file is in place (the sinks removed the previous
    run's): writes ``PREFIX-summary.json``, the commit record listing every file of the output.
    ``embedded``: documents computed this run; ``written``: plus those copied from ``--previous``.
    More dead letters than ``--max_dead_letters`` allows: moves them to ``PREFIX-rejected-errors-*``,
    writes ``PREFIX-rejected.json`` and raises ``DeadLetterLimitExceeded`` instead, the summary
    unwritten, so the runner fails the job and the output is never committed."""
    dead = sum(errors_by_reason.values())
    by_engine = dict(by_engine)
    reused = by_engine.pop(reuse.REUSED, 0)
    embedded = sum(by_engine.values())
    summary = {
        "read": sum(read),
        "written": embedded + reused,
        "embedded": embedded,
        "reused": reused,
        **incremental_counts(config, reuse_counts),
        "documents_by_engine": dict(sorted(by_engine.items())),
        "dead_lettered": dead,
        "errors_by_reason": dict(sorted(errors_by_reason.items())),
        "accounted": sum(read) == embedded + reused + dead,
        "output_files": sorted(p for p in written if p.endswith(".parquet")),
        "error_files": sorted(p for p in written if p.endswith(".jsonl")),
        "columns": {name: dim for name, dim in config.columns},
        "embedding_job": config.provenance(),
        "max_dead_letters": config.max_dead_letters,
        "output_prefix": config.output,
    }
    unaccounted = sum(read) != embedded + reused + dead
    if reuse_counts and reuse.snapshot_differs(reuse_counts):
        summary["accounted"], unaccounted = False, True
        summary["unaccounted_because"] = ("the input changed between the run's two reads of it: the documents read "
                                          "again to embed are not those the join chose")
    if unaccounted:  # no commit record: the output is not complete
        summary.setdefault("unaccounted_because", "records read != records written + dead-lettered")
        write_summary(unaccounted_path(config.output), summary)
        yield summary
        return
    dead_letters.enforce(config.max_dead_letters, config.output, summary)
    write_summary(summary_path(config.output), summary)
    collect_garbage(config.output, summary)
    yield summary


def collect_garbage(prefix: str, summary: dict) -> None:
    """After the commit: deletes the shards and dead-letter files at ``prefix`` that its summary does not
    list (earlier runs', another generation's), and the kept record of the previous summary."""
    from beam_pipeline.previous import kept_path

    listed = set(summary["output_files"]) | set(summary["error_files"])
    stale = [p for p in existing_outputs(prefix) if p not in listed]
    stale += [p for p in (kept_path(prefix),) if files.exists(p)]
    if stale:
        files.delete(stale)


def incremental_counts(config: JobConfig, counts: dict | None) -> dict:
    """The summary's ``--previous`` part: ``new``, ``changed``, ``removed`` (``None`` when the previous
    output was not compared: see ``previous``) and ``previous`` (prefix, and why nothing was reused)."""
    if not config.previous:
        return {}
    counts = counts or {}
    compared = not config.previous["why_not"]
    damaged = {path: reason for key, reason in counts.items() if isinstance(key, str)
               and key.startswith(reuse.DAMAGED) for path in [key[len(reuse.DAMAGED):]]}
    not_reused = {**config.previous.get("shards_not_reused", {}), **damaged}
    compared = compared and not not_reused  # documents of an unused shard are neither new nor changed
    return {
        **{name: counts.get(name, 0) if compared else None for name in ("new", "changed", "removed")},
        "previous": {"prefix": config.previous["prefix"], "not_reused_because": config.previous["why_not"],
                     "shards_not_reused": not_reused},
    }


def write_summary(path: str, summary: dict) -> None:
    """The summary as the job writes it: indented JSON, UTF-8."""
    with FileSystems.create(path) as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))


def build(p: beam.Pipeline, config: JobConfig, paths: list[str], sizes: dict[str, int] | None = None):
    """Adds the whole job to ``p``; ``sizes`` (bytes per input file, where known) feed the progress log."""
    read = p | "Read" >> ReadCorpus(paths, config.id_field, config.text_field, sizes)
    docs = read.docs
    reusing = bool(config.previous) and not config.previous["why_not"]
    if reusing and config.previous["join"] == "lookup":  # the previous keys in every worker: one read
        docs, reused, reuse_counts = docs | "Reuse" >> ReuseByLookup(config)
    elif reusing:  # before tokenizing: unchanged documents are copied, never tokenized
        # the join groups the first read's keys only; the documents to embed come from a second read
        again = p | "ReadAgain" >> ReadCorpus(paths, config.id_field, config.text_field, sizes, counting=False)
        docs, reused, reuse_counts = (docs, again.docs) | "Reuse" >> reuse.Reuse(config)
    # Without a tokenizer the model tokenizes raw text itself (TextVectorization): the stage only hashes.
    tokens = docs | "Tokenize" >> beam.ParDo(
        Tokenize(config.tokenizer, None if config.long_docs == "carry" else config.maxlen, config.truncating)
    ).with_output_types(DocBatch).with_outputs(errors.ERRORS, main="ids")
    inputs, tokenize_errors = tokens.ids, tokens[errors.ERRORS]
    if config.reshuffle:  # a file is read by one worker: its documents spread out
        inputs = inputs | "SpreadDocuments" >> beam.Reshuffle()
    embedded, failed = inputs | "Embed" >> Embed(config)
    if reusing:
        embedded = (embedded, reused)  # written apart: a Flatten would hold every reused row between stages
    arrow_schema = write.output_schema(config)
    shards, rows = embedded | "Write" >> write.WriteEmbeddings(
        config.output, arrow_schema, config.mode, config.num_shards, config.compression, config.row_group_bytes,
        output_generation(config),
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
            by_engine=AsDict(rows),
            errors_by_reason=AsDict(by_reason),
            written=AsList(written),
            **({"reuse_counts": AsDict(reuse_counts)} if reusing else {}),
        )
    )
