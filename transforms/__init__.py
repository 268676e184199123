"""The job's Beam stages: read, tokenize, embed, write, errors.

Importing them (as every worker process does to unpickle its steps) makes Arrow allocate from jemalloc
instead of its default mimalloc, unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool: measured on a 2-core VM,
mimalloc returned freed memory to the system after every row group and faulted it in again, which cost an
incremental night 35% more wall time (``bench/README.md``). Buffers allocated before keep their own pool.
"""


def _use_jemalloc() -> None:
    import os

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):  # a build without jemalloc (Windows): default
        pass


_use_jemalloc()
