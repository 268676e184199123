"""``--max_dead_letters``: how many dead letters a run may have and still commit its output.

A limit is a count (``10``: at most 10 dead letters) or a percentage of the records read
(``0.5%``: at most 0.5 % of them). It is checked where the summary, the output's commit record, is
written (``pipeline._finalize``), so it holds on every runner: over the limit that step moves the
dead-letter files to ``PREFIX-rejected-errors-*.jsonl``, writes ``PREFIX-rejected.json`` (why) and
raises ``DeadLetterLimitExceeded``; the runner fails the job and no ``PREFIX-summary.json`` is
written. The dead letters are moved because a runner may run the sinks' finalize again: Flink
restarts the failed part of the job, and Beam's ``FileBasedSink.pre_finalize`` then deletes the
files the first attempt finalized (its ``FinalizeWrite`` then fails: temp files gone). So the
launcher (``__main__``) exits with status 3 when the run failed and the rejection record is there,
whatever error the runner reports.
"""

from __future__ import annotations

import argparse
import json
import re
from decimal import Decimal

from beam_pipeline import files

MARKER = "dead-letter limit exceeded"
TOP_REASONS = 3  # reasons named in the message, most frequent first
_LIMIT = re.compile(r"(\d+)|(\d+(?:\.\d*)?|\.\d+)%")


class DeadLetterLimitExceeded(RuntimeError):
    """More dead letters than ``--max_dead_letters`` allows; the output was not committed."""


def parse_limit(value: str) -> str:
    """``--max_dead_letters``'s argparse type: ``N`` (a count >= 0) or ``P%`` (0 <= P <= 100),
    returned normalized (``" 5 % "`` -> ``"5%"``)."""
    text = value.strip().replace(" ", "")
    match = _LIMIT.fullmatch(text)
    if not match or (match.group(2) is not None and float(match.group(2)) > 100):
        raise argparse.ArgumentTypeError(
            f"expected a count of dead letters (e.g. 10) or a percentage of the records read from 0% to 100% "
            f"(e.g. 0.5%), got {value!r}")
    return text


def allowed(limit: str, read: int) -> int:
    """The most dead letters ``limit`` allows among ``read`` records (a percentage rounds down)."""
    if limit.endswith("%"):
        return int(Decimal(limit[:-1]) * read // 100)
    return int(limit)


def check(limit: str | None, read: int, by_reason: dict[str, int], error_files: list[str]) -> None:
    """Raises ``DeadLetterLimitExceeded`` when the dead letters (``by_reason``: count per reason)
    exceed ``limit`` (None: no limit). The one-line message gives the count, the limit and the most
    frequent reasons, and names the dead-letter files."""
    dead = sum(by_reason.values())
    if limit is None or dead <= allowed(limit, read):
        return
    top = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    share = f" ({100 * dead / read:.2f}%)" if read else ""
    files = ", ".join(error_files[:3]) + (f" and {len(error_files) - 3} more" if len(error_files) > 3 else "")
    raise DeadLetterLimitExceeded(
        f"{MARKER}: {dead} of {read} records read were dead-lettered{share}, over --max_dead_letters {limit} "
        f"({allowed(limit, read)} allowed); top reasons: {', '.join(f'{r} {n}' for r, n in top)}. "
        f"The output was not committed (no summary written); the dead letters are in {files or '(none)'}. "
        "Fix the input, or raise --max_dead_letters.")


def rejection_path(prefix: str) -> str:
    return f"{prefix}-rejected.json"


def rejected_name(error_file: str) -> str:
    """``PREFIX-errors-00000-of-00001.jsonl`` -> ``PREFIX-rejected-errors-00000-of-00001.jsonl``."""
    head, _, tail = error_file.rpartition("-errors-")
    return f"{head}-rejected-errors-{tail}"


def enforce(limit: str | None, prefix: str, summary: dict) -> None:
    """``check`` on a run's summary (``read``, ``errors_by_reason``, ``error_files``); over the limit,
    moves the dead-letter files out of the sinks' reach (``rejected_name``; on a retry, those already
    moved stay) and writes ``PREFIX-rejected.json`` (the message, the counts, the moved files) before
    raising."""
    moved = [rejected_name(p) for p in summary["error_files"]]
    try:
        check(limit, summary["read"], summary["errors_by_reason"], moved)
    except DeadLetterLimitExceeded as e:
        from apache_beam.io.filesystems import FileSystems

        pending = [(src, dst) for src, dst in zip(summary["error_files"], moved) if files.exists(src)]
        if pending:
            FileSystems.rename([src for src, _ in pending], [dst for _, dst in pending])
        record = {"rejected": str(e), **{k: summary[k] for k in ("read", "dead_lettered", "errors_by_reason",
                                                                   "max_dead_letters")}, "error_files": moved}
        with FileSystems.create(rejection_path(prefix)) as f:
            f.write(json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8"))
        raise


def forget_rejection(prefix: str) -> None:
    """Called by the launcher before a run: a previous run's rejection record and the dead letters
    it moved go."""
    if files.exists(rejection_path(prefix)):
        moved = json.loads(files.read_bytes(rejection_path(prefix))).get("error_files", [])
        files.delete([p for p in moved if files.exists(p)] + [rejection_path(prefix)])


def rejection(prefix: str, exception: BaseException) -> str | None:
    """The limit's message when a run that raised ``exception`` was stopped by it: from the rejection
    record this run wrote, else from the exception (the runner may wrap it in its own error and a
    worker traceback); None when the run failed for another reason."""
    if files.exists(rejection_path(prefix)):
        return json.loads(files.read_bytes(rejection_path(prefix)))["rejected"]
    return find_message(exception)


def find_message(exception: BaseException) -> str | None:
    """The limit's one-line message inside ``exception`` (the runner may wrap it in its own error
    and a worker traceback), or None when the run failed for another reason."""
    match = re.search(re.escape(MARKER) + r":[^\n]*", str(exception))
    if match is None:
        return None
    return re.sub(r"\s*\[while running '[^']*'\]$", "", match.group(0))
