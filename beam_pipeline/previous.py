"""``--previous PREFIX``, on the launcher: read the previous output's commit record and decide what of
it may be reused (no Beam pipeline here; the join itself is ``transforms/reuse.py``).

A previous output is an untrusted input like any other. Its rows may be reused only when:

- its summary, ``PREFIX-summary.json``, exists and is a summary of this job (without it the previous
  output is incomplete; a damaged one is refused: ``ConfigError``, exit 2, before any work);
- its provenance's ``VALUE_FIELDS`` (``beam_pipeline/provenance.py``) equal this run's;
- and, shard by shard (``check_shard``): the shard exists, parses, carries the same provenance in its
  footer, has the schema this run writes (columns compared by name, type and list size, in any order),
  and was written with page checksums. A shard that fails any of these is not used: its documents are
  embedded again, and the summary says why (``previous.shards_not_reused``). Each row group's pages
  are then verified against their checksums where they are read (``transforms/reuse.py``).

Shards are listed in the summary by absolute path or URI; one that is not found there is looked for
beside the summary (an output copied or moved whole, or a summary written with a relative prefix).

When ``--previous`` equals ``--output`` (after ``provenance.normalize_prefix``), the launcher deletes
the summary before the run (it is the new output's commit record, written last), so it first copies it
to ``PREFIX-summary.previous.json`` (``keep_record``). The new shards take the other generation's names
(``transforms/write.py`` ``GENERATIONS``), so the previous shards stay whole until the new summary
exists; a killed run is rerun with the same command, which finds the kept record and reuses its shards.
The record and the old shards are deleted once the new summary is written (``pipeline.collect_garbage``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from beam_pipeline import files
from beam_pipeline.options import ConfigError, JobConfig
from beam_pipeline.provenance import VALUE_FIELDS, differing_fields, normalize_prefix, value_fields

__all__ = ["VALUE_FIELDS", "Previous", "check_shard", "differing_fields", "load"]

LOG = logging.getLogger("beam_pipeline.previous")

HASH_COLUMN = "text_hash"
KEPT_SUFFIX = "-summary.previous.json"
DOCS_PER_BUCKET = 50_000  # previous rows per join bucket the launcher aims for
MAX_BUCKETS = 256  # each input batch is split in at most this many pieces


@dataclasses.dataclass(frozen=True)
class Previous:
    """What the pipeline needs of the previous output: the shards that may be reused (empty when
    nothing may be), why nothing is reused (``None`` when rows may be), the differing fields, the
    shards not used and why, the join's bucket count, and the generation of the previous shards'
    names (the new output takes the other one when it is written at the same prefix)."""

    prefix: str
    files: tuple[str, ...]
    why_not: str | None
    differs: tuple[str, ...]
    buckets: int
    provenance: dict
    shards_not_reused: dict = dataclasses.field(default_factory=dict)
    generation: str = ""
    join: str = "shuffle"  # "lookup" or "shuffle" (``choose_join``)
    footers: tuple[str, ...] = ()  # per shard of ``files``: its ``checked_read.footer_digest`` when checked

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summary_path(prefix: str) -> str:
    return f"{prefix}-summary.json"


def kept_path(prefix: str) -> str:
    return prefix + KEPT_SUFFIX


def resolve_listed(record: str, path: str) -> str:
    """A shard listed in the summary ``record``: as listed when it exists, else the file of that name
    beside the summary (summaries of outputs copied or moved whole, or written with a relative prefix)."""
    from apache_beam.io.filesystems import FileSystems

    if (files.is_remote(path) or path.startswith("/")) and files.exists(path):
        return path
    beside = FileSystems.join(FileSystems.split(record)[0], path.replace("\\", "/").rsplit("/", 1)[-1])
    return beside if files.exists(beside) else path


def read_summary(record: str, flag: str = "--previous") -> dict:
    """The summary at ``record``, checked to be one this job writes; ``ConfigError`` (naming the file)
    when it cannot be read or is not such a summary."""
    try:
        summary = json.loads(files.read_bytes(record))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{flag}: {record} is damaged (not valid JSON: {e}). It is that output's commit record: rerun the "
            "job that wrote it, or drop {flag} to embed every document.".replace("{flag}", flag)) from e
    except OSError as e:
        raise ConfigError(f"{flag}: {record} cannot be read ({e})") from e
    listed = summary.get("output_files") if isinstance(summary, dict) else None
    if not (isinstance(listed, list) and all(isinstance(p, str) for p in listed)
            and isinstance(summary.get("embedding_job"), dict)):
        raise ConfigError(f"{flag}: {record} is not a summary of this job (no output_files list or embedding_job). "
                          f"Point {flag} at an output of this job, or drop it.")
    return summary


def type_key(t) -> str:
    """A column type without its list items' field names and nullability (which a Parquet round trip
    may change): ``fixed_size_list[8]<float>``, ``list<fixed_size_list[8]<halffloat>>``, ``string``."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list[{t.list_size}]<{type_key(t.value_type)}>"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_key(t.value_type)}>"
    return str(t)


def _expected_columns(config: JobConfig) -> dict[str, str]:
    from transforms import write

    schema = write.schema(config.columns, config.mode, config.dtype, {}, windows=config.long_docs == "carry")
    return {f.name: type_key(f.type) for f in schema}


def check_shard(path: str, expected: dict, columns: dict[str, str]) -> str | None:
    """Why the previous shard at ``path`` cannot be reused (``None`` when it can, pending each row
    group's page checksums): missing, unreadable, another job's or no footer provenance, another schema,
    no page checksums."""
    return check_shard_footer(path, expected, columns)[0]


def check_shard_footer(path: str, expected: dict, columns: dict[str, str]) -> tuple[str | None, str | None]:
    """``check_shard``'s answer, and the shard's ``footer_digest`` as checked (``None`` when not usable):
    every later read of the shard requires the same one (a file replaced during the run is never used)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    from transforms.checked_read import first_pages_have_crc, footer_digest
    from transforms.write import METADATA_KEY

    try:
        if not files.exists(path):
            return "missing", None
        with FileSystems.open(path) as f:
            shard = pq.ParquetFile(f)
            digest = footer_digest(f)
            footer = (shard.schema_arrow.metadata or {}).get(METADATA_KEY)
            if footer is None:
                return "no embedding_job footer metadata", None
            differs = differing_fields(json.loads(footer), expected)
            if differs:
                return f"footer provenance differs in: {', '.join(differs)}", None
            found = {field.name: type_key(field.type) for field in shard.schema_arrow}
            if found != columns:
                missing = sorted(set(columns) - set(found))
                extra = sorted(set(found) - set(columns))
                other = sorted(n for n in set(found) & set(columns) if found[n] != columns[n])
                return "schema differs: " + "; ".join(
                    part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "",
                                      f"other types {other}" if other else "") if part), None
            if shard.metadata.num_row_groups and not first_pages_have_crc(f, shard.metadata, 0):
                return "written without page checksums (their data could not be verified)", None
    except Exception as e:  # truncated, zero bytes, not Parquet, damaged footer: the reader's own words
        return f"unreadable: {type(e).__name__}: {e}", None
    return None, digest


def load(prefix: str, config: JobConfig) -> Previous:
    """Reads ``PREFIX-summary.json`` (or, when ``prefix`` is ``--output``, the copy a killed run kept)
    and decides what may be reused; raises ``ConfigError`` when the previous output is incomplete or
    its summary damaged."""
    from transforms.write import generation_of

    prefix = normalize_prefix(prefix)
    record = summary_path(prefix)
    if not files.exists(record) and prefix == config.output and files.exists(kept_path(prefix)):
        record = kept_path(prefix)  # a run over it was killed: the previous output's record, kept aside
    if not files.exists(record):
        raise ConfigError(
            f"--previous {prefix}: {summary_path(prefix)} not found, so that output is incomplete (its run did not "
            "finish) or not this job's output. Point --previous at a finished run, or drop --previous to embed "
            "every document.")
    summary = read_summary(record)
    shards = [resolve_listed(record, p) for p in summary["output_files"]]
    provenance = summary["embedding_job"]
    current = config.provenance()
    differs = differing_fields(provenance, current)
    why_not = f"provenance differs in: {', '.join(differs)}" if differs else None
    not_reused: dict[str, str] = {}
    footers: dict[str, str] = {}
    if why_not:
        LOG.warning("--previous %s: not reused, every document is embedded (%s)", prefix, why_not)
    else:
        expected, columns = value_fields(current), _expected_columns(config)
        with ThreadPoolExecutor(max_workers=16) as pool:
            checked = list(pool.map(lambda p: check_shard_footer(p, expected, columns), shards))
        not_reused = {p: r for p, (r, _) in zip(shards, checked, strict=True) if r}
        footers = {p: d for p, (_, d) in zip(shards, checked, strict=True) if d}
        for path, reason in not_reused.items():
            LOG.warning("--previous %s: shard %s not reused, its documents are embedded again (%s)", prefix, path,
                        reason)
    usable = tuple(p for p in shards if p not in not_reused) if not why_not else ()
    rows = int(summary.get("written", summary.get("embedded", 0)) or 0)
    buckets = max(1, min(MAX_BUCKETS, -(-rows // DOCS_PER_BUCKET)))
    generation = generation_of(shards[0]) if shards else ""
    join = choose_join(config, usable, rows)
    return Previous(prefix, usable, why_not, tuple(differs), buckets, provenance, not_reused, generation, join,
                    tuple(footers[p] for p in usable))


# The lookup join's memory per previous row in one worker process, at its peak while the index is built (the
# index itself keeps ~34 bytes and the id: transforms/reuse_lookup.py); plus twice the id (``lookup_bytes``).
LOOKUP_BYTES_PER_ROW = 52


def lookup_bytes(shards: tuple[str, ...], rows: int) -> int:
    """What the lookup join's keys take in one worker process: ``rows`` x (``LOOKUP_BYTES_PER_ROW`` + twice
    the mean id length, read off the first shard's ``doc_id`` column chunk)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    mean_id = 16
    if shards:
        try:
            with FileSystems.open(shards[0]) as f:
                metadata = pq.ParquetFile(f).metadata
            names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
            if metadata.num_rows:
                size = sum(metadata.row_group(g).column(names.index("doc_id")).total_uncompressed_size
                           for g in range(metadata.num_row_groups))
                mean_id = size / metadata.num_rows
        except Exception:  # noqa: S110 - the estimate keeps its default
            pass
    return int(rows * (LOOKUP_BYTES_PER_ROW + 2 * mean_id))


def choose_join(config: JobConfig, shards: tuple[str, ...], rows: int) -> str:
    """``--previous_join``: ``lookup`` or ``shuffle`` as asked; ``auto``: lookup while the keys fit
    ``--previous_lookup_mb``. The choice is logged."""
    if config.previous_join != "auto":
        return config.previous_join
    need = lookup_bytes(shards, rows)
    join = "lookup" if need <= config.previous_lookup_mb << 20 else "shuffle"
    LOG.info("--previous: %d previous rows, ~%d MB of keys per worker process for a lookup (--previous_lookup_mb "
             "%d): %s join", rows, need >> 20, config.previous_lookup_mb, join)
    return join


def output_generation(config: JobConfig) -> str:
    """The generation of the new shards' names: the other one than the previous output's when it is
    at ``--output`` (its shards are read while the new ones are written)."""
    from transforms.write import GENERATIONS

    if not config.previous or config.previous["prefix"] != config.output:
        return GENERATIONS[0]
    return GENERATIONS[1] if config.previous["generation"] == GENERATIONS[0] else GENERATIONS[0]


def keep_record(config: JobConfig) -> None:
    """With ``--previous`` equal to ``--output``: copies the summary aside before the launcher deletes it
    (a temp copy renamed into place: a kill leaves the old record or the new one, never half of one)."""
    if not config.previous or config.previous["prefix"] != config.output:
        return
    if files.exists(summary_path(config.output)):
        from apache_beam.io.filesystems import FileSystems

        temp = kept_path(config.output) + ".tmp"
        if files.exists(temp):
            files.delete([temp])
        FileSystems.copy([summary_path(config.output)], [temp])
        if files.exists(kept_path(config.output)):
            files.delete([kept_path(config.output)])
        FileSystems.rename([temp], [kept_path(config.output)])
