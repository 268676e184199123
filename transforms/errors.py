"""Dead letters: every record that cannot be embedded becomes one JSON line in PREFIX-errors-*.

A dead letter says which document (if its id is known), at which stage, why, and carries the
input record truncated to ``MAX_INPUT_CHARS`` characters. Each one is also counted in the Beam
metric ``errors_<reason>`` so that the summary can show read = embedded + dead-lettered.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

NAMESPACE = "embedding_job"
ERRORS = "errors"  # tag of the dead-letter output of every stage
MAX_INPUT_CHARS = 4096


def dead_letter(doc_id: str | None, stage: str, reason: str, record: object, detail: str = "") -> dict:
    """A dead-letter record; counts it under ``errors_<reason>``."""
    Metrics.counter(NAMESPACE, f"errors_{reason}").inc()
    if isinstance(record, bytes):
        text = record.decode("utf-8", errors="backslashreplace")
    elif isinstance(record, str):
        text = record
    else:
        text = json.dumps(record, ensure_ascii=False, default=repr)
    return {
        "doc_id": doc_id,
        "stage": stage,
        "reason": reason,
        "detail": detail[:1000],
        "input": text[:MAX_INPUT_CHARS],
        "input_truncated": len(text) > MAX_INPUT_CHARS,
    }


def tagged(doc_id: str | None, stage: str, reason: str, record: object, detail: str = ""):
    """The dead letter as a tagged output of a DoFn."""
    return beam.pvalue.TaggedOutput(ERRORS, dead_letter(doc_id, stage, reason, record, detail))


def to_json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)
