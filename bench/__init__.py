"""Benchmarks of the embedding job against bare Keras predict and a plain Beam RunInference pipeline."""
