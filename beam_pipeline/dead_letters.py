"""``--max_dead_letters``: how many dead letters a run may have and still commit its output.

A limit is a count (``10``: at most 10 dead letters) or a percentage of the records read
(``0.5%``: at most 0.5 % of them). It is checked where the summary, the output's commit record, is
written (``pipeline._finalize``), so it holds on every runner: over the limit that step raises
``DeadLetterLimitExceeded``, the runner fails the job, no ``PREFIX-summary.json`` is written and the
dead-letter files stay for diagnosis. The launcher (``__main__``) finds ``MARKER`` in whatever
exception the runner raises and exits with status 3.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal

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


def find_message(exception: BaseException) -> str | None:
    """The limit's one-line message inside ``exception`` (the runner may wrap it in its own error
    and a worker traceback), or None when the run failed for another reason."""
    match = re.search(re.escape(MARKER) + r":[^\n]*", str(exception))
    if match is None:
        return None
    return re.sub(r"\s*\[while running '[^']*'\]$", "", match.group(0))
