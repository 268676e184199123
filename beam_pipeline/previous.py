"""``--previous PREFIX``, on the launcher: read the previous output's commit record and decide whether
its rows may be reused (no Beam pipeline here; the join itself is ``transforms/reuse.py``).

A previous output may be reused only when every provenance field that decides a value
(``VALUE_FIELDS``) equals this run's, and its shards carry ``text_hash``. The summary,
``PREFIX-summary.json``, must exist: without it the previous output is incomplete, and the run stops
before any work (``ConfigError``: exit 2).

When ``--previous`` equals ``--output``, the launcher deletes that summary before the run (it is the
new output's commit record, written last), so it first copies it to ``PREFIX-summary.previous.json``
(``keep_record``): a run killed mid-way is then rerun with the same flags, and reuses what is at the
prefix (rows are copied only from shards whose own footer provenance matches). The copy is removed
once the new summary is written (``forget_record``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from beam_pipeline import files
from beam_pipeline.options import ConfigError, JobConfig

LOG = logging.getLogger("beam_pipeline.previous")

# Provenance fields (``embedding_job``) that decide a value; all must be equal for a row to be reused.
# Not compared: paths (``model``, ``tokenizer``: the same file may move), ``version`` (a release that
# changes values changes one of these or says so), ``layer_class`` & co (implied by the model's sha256).
VALUE_FIELDS = ("model_sha256", "model_origin", "layer", "mode", "columns", "dtype", "maxlen", "padding",
                "truncating", "long_docs", "input", "tokenizer_sha256", "engine", "engine_tolerance")
HASH_COLUMN = "text_hash"
KEPT_SUFFIX = "-summary.previous.json"
DOCS_PER_BUCKET = 50_000  # previous rows per join bucket the launcher aims for
MAX_BUCKETS = 256  # each input batch is split in at most this many pieces


@dataclasses.dataclass(frozen=True)
class Previous:
    """What the pipeline needs of the previous output: its shards (empty when nothing may be reused),
    why nothing is reused (``None`` when rows may be), the differing fields, and the join's bucket count."""

    prefix: str
    files: tuple[str, ...]
    why_not: str | None
    differs: tuple[str, ...]
    buckets: int
    provenance: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summary_path(prefix: str) -> str:
    return f"{prefix}-summary.json"


def kept_path(prefix: str) -> str:
    return prefix + KEPT_SUFFIX


def differing_fields(previous: dict, current: dict) -> list[str]:
    """The ``VALUE_FIELDS`` whose values differ between two ``embedding_job`` provenances."""
    return [k for k in VALUE_FIELDS if previous.get(k) != current.get(k)]


def _shard_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return pq.ParquetFile(f).schema_arrow.names


def _existing_shards(prefix: str) -> list[str]:
    from transforms.write import final_files

    return final_files(prefix, ".parquet")


def load(prefix: str, config: JobConfig) -> Previous:
    """Reads ``PREFIX-summary.json`` (or, when ``prefix`` is ``--output``, the copy a killed run kept)
    and decides what may be reused; raises ``ConfigError`` when the previous output is incomplete."""
    record, shards = summary_path(prefix), None
    if not files.exists(record) and prefix == config.output and files.exists(kept_path(prefix)):
        record, shards = kept_path(prefix), _existing_shards(prefix)  # a run over it was killed: what is there
    if not files.exists(record):
        raise ConfigError(
            f"--previous {prefix}: {summary_path(prefix)} not found, so that output is incomplete (its run did not "
            "finish) or not this job's output. Point --previous at a finished run, or drop --previous to embed "
            "every document.")
    summary = json.loads(files.read_bytes(record))
    if shards is None:
        shards = list(summary.get("output_files", []))
        missing = [p for p in shards if not files.exists(p)]
        if missing:
            raise ConfigError(f"--previous {prefix}: {len(missing)} shard(s) listed in {record} are missing "
                              f"(first: {missing[0]}). Point --previous at a complete output, or drop it.")
    provenance = summary.get("embedding_job", {})
    differs = differing_fields(provenance, config.provenance())
    if shards and HASH_COLUMN not in _shard_columns(shards[0]):
        differs.append(HASH_COLUMN)
    why_not = f"provenance differs in: {', '.join(differs)}" if differs else None
    if why_not:
        LOG.warning("--previous %s: not reused, every document is embedded (%s)", prefix, why_not)
    rows = int(summary.get("written", summary.get("embedded", 0)))
    buckets = max(1, min(MAX_BUCKETS, -(-rows // DOCS_PER_BUCKET)))
    return Previous(prefix, () if why_not else tuple(shards), why_not, tuple(differs), buckets, provenance)


def keep_record(config: JobConfig) -> None:
    """With ``--previous`` equal to ``--output``: copies the summary aside before the launcher deletes it."""
    if not config.previous or config.previous["prefix"] != config.output:
        return
    if files.exists(summary_path(config.output)):
        from apache_beam.io.filesystems import FileSystems

        if files.exists(kept_path(config.output)):
            files.delete([kept_path(config.output)])
        FileSystems.copy([summary_path(config.output)], [kept_path(config.output)])


def forget_record(config: JobConfig) -> None:
    """After a finished run: the kept copy of the previous summary is no longer needed."""
    if config.previous and config.previous["prefix"] == config.output and files.exists(kept_path(config.output)):
        files.delete([kept_path(config.output)])
