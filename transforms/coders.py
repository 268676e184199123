"""Beam coders for the job's large elements: encoded as Beam's default does (pickle), sized from ``nbytes``.

Beam estimates the size of some of the elements every step outputs (the first ten, then fewer and fewer)
by encoding them in full and counting the bytes. With its default coder that pickles the element: a
30 MB Arrow table of copied rows a night, ten of them in a million-document night, each one a fresh
34 MB buffer (measured: 72k page faults, 0.18-0.7 s of a 1M-document night on this VM, depending on what
a page fault costs that minute). These coders encode exactly as before (the same pickle, so a shuffle or
a runner between stages sees the same bytes' worth) and answer the size from the arrays' ``nbytes``
without encoding anything.

The steps that output them declare it (``with_output_types``); Beam then finds the coder in its registry,
where the modules that define the types put it (``transforms/batch.py``, ``transforms/write.py``) when
they are imported.
"""

from __future__ import annotations

import apache_beam as beam

# what pickling adds to the arrays' bytes (class names, schema, small fields), a rough constant: Beam
# only sums the estimates into its size metrics
_OVERHEAD = 256
# Beam's own pickling coder (its default's fallback for these types): the bytes between stages stay Beam's,
# and this project's code never unpickles anything itself (tests/test_robustness.py)
_PICKLE = beam.coders.PickleCoder()


def nbytes(value) -> int:
    """The bytes of the arrays a large element holds (``value.nbytes``), or of its pickle when it has no
    ``nbytes`` (a value of another type in a step declared otherwise is sized as before, never refused)."""
    size = getattr(value, "nbytes", None)
    if size is None:
        return len(_PICKLE.encode(value))
    return int(size) + _OVERHEAD


class SizedPickleCoder(beam.coders.Coder):
    """Encodes as Beam's ``PickleCoder``, estimates by ``nbytes``."""

    def encode(self, value) -> bytes:
        return _PICKLE.encode(value)

    def decode(self, encoded: bytes):
        return _PICKLE.decode(encoded)

    def estimate_size(self, value) -> int:
        return nbytes(value)

    def is_deterministic(self) -> bool:
        return False

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class DocBatchCoder(SizedPickleCoder):
    """``transforms.batch.DocBatch``."""


class RowsCoder(SizedPickleCoder):
    """``transforms.write.Rows``."""


class CopiedRowsCoder(SizedPickleCoder):
    """``transforms.write.CopiedRows``."""


class ArrowTableCoder(SizedPickleCoder):
    """``pyarrow.Table`` (the tables the writers get)."""
