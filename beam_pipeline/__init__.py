"""Batch embedding job: text corpus -> tokens -> truncated recurrent Keras sub-model -> sharded Parquet."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Arrow's allocator, chosen before pyarrow is first imported (so every buffer of the process uses it): jemalloc,
# not the default mimalloc, which returned freed memory to the system after each row group and faulted it in
# again (a 2-core VM: an incremental night's system time x1.3-1.6; see transforms/__init__.py, which sets the
# same in worker processes started without this environment). A pool the user names is kept.
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
