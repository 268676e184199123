"""``python -m beam_pipeline``: parse, validate up front, run, print the summary.

With no arguments it runs the embedded default (sample corpus + demo model, see ``demo.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from beam_pipeline import logs

logs.quiet_start()

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from beam_pipeline import dead_letters, files, previous  # noqa: E402
from beam_pipeline.options import (  # noqa: E402
    PROG,
    ConfigError,
    EmbeddingOptions,
    JobConfig,
    check_argv,
    job_parser,
    resolve,
)
from beam_pipeline.pipeline import (  # noqa: E402
    build,
    existing_outputs,
    start_replacing,
    summary_path,
    unaccounted_path,
    write_summary,
)
from beam_pipeline.provenance import differing_fields  # noqa: E402
from transforms.errors import NAMESPACE  # noqa: E402
from transforms.write import METADATA_KEY  # noqa: E402


def _job_at(prefix: str) -> tuple[dict | None, str]:
    """The provenance of the output now at ``prefix`` and where it was read: its summary (or the kept
    copy of a killed run's previous summary), else the footer of its first shard that can be read."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    for record in (summary_path(prefix), previous.kept_path(prefix)):
        if files.exists(record):
            try:
                return previous.read_summary(record, "--output")["embedding_job"], record
            except ConfigError:
                continue  # a damaged record says nothing of whose shards these are: look at them
    for shard in [p for p in existing_outputs(prefix) if p.endswith(".parquet")]:
        try:
            with FileSystems.open(shard) as f:
                metadata = pq.ParquetFile(f).schema_arrow.metadata or {}
            return json.loads(metadata.get(METADATA_KEY, b"{}")), shard
        except Exception:  # noqa: S112 - an unreadable shard is replaced by the run like any stale one
            continue
    return None, ""


def check_output_prefix(config: JobConfig) -> None:
    """Refuses (unless ``--overwrite``) a prefix that holds another job's output: one whose provenance
    differs in a field that decides a value (``provenance.VALUE_FIELDS``, as ``--previous`` compares)."""
    if config.overwrite:
        return
    job, where = _job_at(config.output)
    if job is None:
        return
    different = differing_fields(job, config.provenance())
    if different:
        raise ConfigError(
            f"--output {config.output} already holds the output of a different job ({where}; differs in: "
            f"{', '.join(different)}). Choose another prefix, or pass --overwrite to replace it."
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


def pin_local_runner(options: PipelineOptions) -> None:
    """A local run (no ``--runner``, or ``DirectRunner``) runs on Beam's in-process ``FnApiRunner``:
    the runner the tests and the bench run. Beam 2.77's ``DirectRunner`` first tries Prism (a Go
    runner it downloads when the machine is online) and falls back to the FnApiRunner only when that
    fails, so the same command would run on another runner online than offline. ``--runner
    PrismRunner`` still asks for Prism explicitly (not tested by this project's CI)."""
    from apache_beam.options.pipeline_options import StandardOptions

    standard = options.view_as(StandardOptions)
    if standard.runner is None or (isinstance(standard.runner, str)
                                   and standard.runner.rsplit(".", 1)[-1].lower() in ("directrunner", "direct")):
        standard.runner = "FnApiRunner"


def run(argv: list[str] | None = None, prog: str = PROG) -> dict | None:
    """Runs the job; returns the summary (None when the runner runs it asynchronously).

    An unknown argument or ``--help`` ends here with ``SystemExit`` (2 or 0), before any work; a run
    stopped by ``--max_dead_letters`` raises ``DeadLetterLimitExceeded``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        from beam_pipeline.demo import demo_argv

        argv = demo_argv()
        print(f"running the embedded default (sample corpus + demo model):\n  {prog} " + " ".join(argv),
              file=sys.stderr)
    check_argv(argv, prog)
    options = PipelineOptions(argv)
    pin_local_runner(options)
    config = resolve(options)
    check_output_prefix(config)
    previous_prefix = options.view_as(EmbeddingOptions).previous
    if previous_prefix:  # read before anything at --output is replaced (it may be the same prefix)
        config = dataclasses.replace(config, previous=previous.load(previous_prefix, config).to_dict())
    sizes = files.match_sizes(list(config.inputs))
    previous.keep_record(config)
    start_replacing(config.output)
    dead_letters.forget_rejection(config.output)
    try:
        with beam.Pipeline(options=options) as p:
            build(p, config, list(sizes), sizes)
    except Exception as e:  # the runner's own error type, wrapping a worker's or not
        message = dead_letters.rejection(config.output, e)
        if message is None:
            raise
        raise dead_letters.DeadLetterLimitExceeded(message) from e
    result = p.result if hasattr(p, "result") else None
    if not files.exists(summary_path(config.output)):
        if files.exists(unaccounted_path(config.output)):  # finished, not committed
            summary = json.loads(files.read_bytes(unaccounted_path(config.output)))
            summary["metrics"] = metrics_of(result) if result is not None else {}
            return summary
        return None
    summary = json.loads(files.read_bytes(summary_path(config.output)))
    summary["metrics"] = metrics_of(result) if result is not None else {}
    if summary["metrics"]:
        _add_metrics_to_summary_file(config.output, summary)
    return summary


def _add_metrics_to_summary_file(prefix: str, summary: dict) -> None:
    """Rewrites ``PREFIX-summary.json`` with the run's metrics (tokens, padded timesteps, batches per
    engine, inference time), known only once the runner has finished. The pipeline wrote the summary
    last; this replaces it whole (a temp file renamed over it), so a reader sees one or the other."""
    from apache_beam.io.filesystems import FileSystems

    path = summary_path(prefix)
    temp = path + ".metrics-tmp"
    write_summary(temp, summary)
    FileSystems.rename([temp], [path])


def job_prefix(summary: dict) -> str:
    return summary.get("output_prefix", "PREFIX")


def print_summary(summary: dict) -> None:
    job = summary["embedding_job"]
    m = summary.get("metrics", {})
    dims = ", ".join(f"{k}[{v}]" for k, v in summary["columns"].items())
    lines = [
        f"layer {job['layer']} ({job['layer_class']}, {job['units']} units, masked={job['masked']}) mode={job['mode']}",
        f"documents read {summary['read']}: embedded {summary['embedded']}, dead-lettered {summary['dead_lettered']}",
    ]
    lines += [f"  {reason}: {n}" for reason, n in summary["errors_by_reason"].items()]
    if "previous" in summary:
        why = summary["previous"]["not_reused_because"]
        lines.append(f"previous {summary['previous']['prefix']}: " + (
            f"nothing reused ({why})" if why else
            f"reused {summary['reused']}, new {summary['new']}, changed {summary['changed']}, "
            f"removed {summary['removed']}"))
    windows = "windows, " if job.get("long_docs") == "carry" else ""
    lines.append(f"columns: doc_id, num_tokens, {windows}{dims} ({job['dtype']}), text_hash")
    if m:
        tokens, padded = m.get("tokens", 0), m.get("padded_timesteps", 0)
        lines.append(
            f"tokens {tokens}, padded timesteps {padded} ({padded / max(tokens, 1):.2f} per token), "
            f"batches {m.get('batches', 0)}, inference {m.get('inference_ms_total', 0) / 1000:.2f}s"
        )
    if not summary["accounted"]:
        lines.append("NOT COMMITTED: " + summary.get("unaccounted_because", "records unaccounted for")
                     + f"; no {summary_path(job_prefix(summary))}, the counts are in "
                     + unaccounted_path(job_prefix(summary)))
    lines.append("output: " + ", ".join(summary["output_files"]))
    if summary["dead_lettered"]:
        lines.append("dead letters: " + ", ".join(summary["error_files"]))
    print("\n".join(lines))


def configure_logging(argv: list[str], prog: str = PROG) -> None:
    """Start-up noise of TensorFlow, absl and Beam hidden unless ``--log_level`` asks for it; the
    job's own messages (``beam_pipeline`` loggers: progress, kernel path) always at INFO."""
    logs.apply(job_parser(prog).parse_known_args(argv)[0].log_level)


def _not_the_runners_report_of_the_limit(record: logging.LogRecord) -> bool:
    """False for the runner's log record (message and worker traceback) of a run stopped by
    ``--max_dead_letters``, which the DirectRunner logs before it raises."""
    return not (record.name.startswith("apache_beam") and dead_letters.MARKER in record.getMessage())


EXIT_DEAD_LETTER_LIMIT = 3  # more dead letters than --max_dead_letters allows; nothing committed


def main() -> int:
    """Exit status: 0 done; 1 records unaccounted for; 2 configuration error (nothing ran);
    3 more dead letters than ``--max_dead_letters`` allows (output not committed)."""
    prog = "beam-recurrent-embeddings" if os.path.basename(sys.argv[0]) == "beam-recurrent-embeddings" else PROG
    argv = sys.argv[1:]
    check_argv(argv, prog)  # --help and unknown arguments, before anything slow
    configure_logging(argv, prog)
    for handler in logging.getLogger().handlers:  # the limit's own "error:" line says it once, below
        handler.addFilter(_not_the_runners_report_of_the_limit)
    try:
        summary = run(argv, prog)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except dead_letters.DeadLetterLimitExceeded as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DEAD_LETTER_LIMIT
    if summary is None:
        print("job submitted; its summary will be written to PREFIX-summary.json when it finishes")
        return 0
    print_summary(summary)
    if summary["dead_lettered"]:
        limit = summary.get("max_dead_letters")
        print(f"warning: {summary['dead_lettered']} of {summary['read']} records dead-lettered"
              + (f" (within --max_dead_letters {limit})" if limit else " (no --max_dead_letters limit)"),
              file=sys.stderr)
    return 0 if summary["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
