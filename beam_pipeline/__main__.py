"""``python -m beam_pipeline``: parse, validate up front, run, print the summary.

With no arguments it runs the embedded default (sample corpus + demo model, see ``demo.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from beam_pipeline import files  # noqa: E402
from beam_pipeline.options import ConfigError, JobConfig, resolve  # noqa: E402
from beam_pipeline.pipeline import build, existing_outputs, summary_path  # noqa: E402
from transforms.errors import NAMESPACE  # noqa: E402
from transforms.write import METADATA_KEY  # noqa: E402

# What must agree between runs for their shards to be the same job's output.
_SAME_JOB = ("model_sha256", "layer", "mode", "columns", "dtype", "maxlen", "padding", "truncating",
             "tokenizer_sha256")


def check_output_prefix(config: JobConfig) -> None:
    """Refuses (unless ``--overwrite``) a prefix that holds shards of a different job."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    if config.overwrite:
        return
    shards = [p for p in existing_outputs(config.output) if p.endswith(".parquet")]
    if not shards:
        return
    with FileSystems.open(shards[0]) as f:
        metadata = pq.ParquetFile(f).schema_arrow.metadata or {}
    previous = json.loads(metadata.get(METADATA_KEY, b"{}"))
    current = config.provenance()
    different = [k for k in _SAME_JOB if previous.get(k) != current.get(k)]
    if different:
        raise ConfigError(
            f"--output {config.output} already holds {len(shards)} shard(s) of a different job "
            f"(differs in: {', '.join(different)}). Choose another prefix, or pass --overwrite to replace them."
        )


def metrics_of(result) -> dict:
    """The job's Beam counters and the inference-time distribution, where the runner reports them."""
    try:
        found = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # some runners report no metrics to the launcher
        return {}
    out: dict = {}
    for counter in found.get("counters", []):
        name = counter.key.metric.name
        out[name] = out.get(name, 0) + (counter.committed or counter.attempted or 0)
    for dist in found.get("distributions", []):
        value = dist.committed or dist.attempted
        if value is not None and value.count:
            out[f"{dist.key.metric.name}_total"] = value.sum
    return out


def run(argv: list[str] | None = None) -> dict | None:
    """Runs the job; returns the summary (None when the runner runs it asynchronously)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        from beam_pipeline.demo import demo_argv

        argv = demo_argv()
        print("running the embedded default (sample corpus + demo model):\n  python -m beam_pipeline "
              + " ".join(argv), file=sys.stderr)
    options = PipelineOptions(argv)
    config = resolve(options)
    check_output_prefix(config)
    paths = files.match(list(config.inputs))
    with beam.Pipeline(options=options) as p:
        build(p, config, paths)
    result = p.result if hasattr(p, "result") else None
    if not files.exists(summary_path(config.output)):
        return None
    summary = json.loads(files.read_bytes(summary_path(config.output)))
    summary["metrics"] = metrics_of(result) if result is not None else {}
    return summary


def print_summary(summary: dict) -> None:
    job = summary["embedding_job"]
    m = summary.get("metrics", {})
    dims = ", ".join(f"{k}[{v}]" for k, v in summary["columns"].items())
    lines = [
        f"layer {job['layer']} ({job['layer_class']}, {job['units']} units, masked={job['masked']}) mode={job['mode']}",
        f"documents read {summary['read']}: embedded {summary['embedded']}, dead-lettered {summary['dead_lettered']}"
        + (f" {summary['errors_by_reason']}" if summary["errors_by_reason"] else ""),
        f"columns: doc_id, num_tokens, {dims} ({job['dtype']})",
    ]
    if m:
        tokens, padded = m.get("tokens", 0), m.get("padded_timesteps", 0)
        lines.append(
            f"tokens {tokens}, padded timesteps {padded} ({padded / max(tokens, 1):.2f} per token), "
            f"batches {m.get('batches', 0)}, inference {m.get('inference_ms_total', 0) / 1000:.2f}s"
        )
    lines.append("output: " + ", ".join(summary["output_files"]))
    if summary["dead_lettered"]:
        lines.append("dead letters: " + ", ".join(summary["error_files"]))
    print("\n".join(lines))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("beam_pipeline").setLevel(logging.INFO)
    try:
        summary = run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary is None:
        print("job submitted; its summary will be written to PREFIX-summary.json when it finishes")
        return 0
    print_summary(summary)
    return 0 if summary["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
