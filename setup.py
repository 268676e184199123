"""Installable package; also the ``--setup_file`` that Beam ships to remote workers.

Pins, and why:
- tensorflow 2.21 with keras 3.15: the pair this job is tested with. Keras 3.16 changes how RNN
  layers propagate masks, and the values we write must equal what Keras computes, so keras stays
  below 3.16 until the golden tests pass on it. (On a GPU worker install ``tensorflow[and-cuda]``.)
- apache-beam 2.77 without its [gcp] extra: the local, Flink and gs:// paths need only Beam's core
  plus google-cloud-storage and google-auth(-httplib2), which Beam's gs:// filesystem (GcsIO) imports.
  ``[gcp]`` adds 20-odd Google Cloud clients (BigQuery, Spanner, Bigtable, AI Platform, DLP, ...;
  73 packages) that no local or Flink run imports; the ``dataflow`` extra brings it back for the Dataflow runner
  (the Dockerfile installs ``.[dataflow]``). Measured cost: README.md, "Install".
- numpy < 3 and pyarrow: what TF 2.21 and Beam 2.77 accept together.
- h5py: reading (and patching) legacy tf.keras .h5 files.
- tf-keras 2.21 (the tf.keras of TF 2.21): reads tf.keras SavedModel folders, which Keras 3 cannot load.
- xxhash 3.x-4.x: XXH3-128, the text_hash column (frozen algorithm; ~3x cheaper per document than blake2b).
- onnx 1.2x and onnxruntime 1.2x/1.3x: the ONNX Runtime inference engine (graph built from the layer
  weights, opset 17); tested with onnx 1.23 and onnxruntime 1.32.
"""

from setuptools import find_packages, setup

setup(
    name="beam-recurrent-embeddings",
    version="0.1.0",
    description="Apache Beam batch job: text -> tokens -> truncated Keras recurrent layer -> sharded Parquet",
    packages=find_packages(include=["beam_pipeline", "beam_pipeline.*", "transforms", "transforms.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "apache-beam>=2.77,<2.78",
        "numpy>=1.26,<3",
        "pyarrow>=16,<27",
        "google-cloud-storage>=2.18,<4",
        "google-auth>=2.27,<3",
        "google-auth-httplib2>=0.2,<0.3",
        "h5py>=3.10",
        "tf-keras>=2.21,<2.22",
        "onnx>=1.16,<2",
        "onnxruntime>=1.18,<2",
        "xxhash>=3.3,<5",
    ],
    extras_require={
        "dataflow": ["apache-beam[gcp]>=2.77,<2.78"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "duckdb>=1.1",
            "polars>=1.10",
            "gcp-storage-emulator>=2024.8.3",
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["beam-recurrent-embeddings=beam_pipeline.__main__:main"]},
)
