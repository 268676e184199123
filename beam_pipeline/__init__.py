"""Batch embedding job: text corpus -> tokens -> truncated recurrent Keras sub-model -> sharded Parquet."""

__version__ = "0.1.0"
