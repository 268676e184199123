"""``--log_level`` of the job and of ``inspect``: TensorFlow, absl and Beam start-up noise hidden at
the default level (``error``); the job's own ``beam_pipeline`` loggers always at INFO.

Nothing here imports TensorFlow or Beam at module level: ``quiet_start`` must run before either loads.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_LEVELS = ("error", "warning", "info", "debug")
DEFAULT_LOG_LEVEL = "error"
# --log_level -> TF_CPP_MIN_LOG_LEVEL (TensorFlow's C++ messages, read once when TensorFlow loads).
_TF_CPP_LEVEL = {"error": "3", "warning": "1", "info": "0", "debug": "0"}


def quiet_start() -> None:
    """Called first by each command line: TensorFlow's C++ log level at its quietest until
    ``apply`` sets the one asked for, and Beam imported with the root logger muted. Beam installed
    without its ``[gcp]`` extra logs "apitools not found ..." when imported, through
    ``logging.warning``, which also gives the root logger a handler, so that ``apply``'s
    configuration would not take."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = logging.getLogger()
    muted = logging.NullHandler()
    root.addHandler(muted)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeHandler(muted)


def apply(level: str) -> None:
    """Shows TensorFlow, absl, Beam and h5py messages from ``level`` (one of ``LOG_LEVELS``) up, the
    job's own always from INFO; at ``error``, TensorFlow is imported here with its start-up lines hidden."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = _TF_CPP_LEVEL[level]
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level.upper())
    logging.getLogger("beam_pipeline").setLevel(min(logging.INFO, logging.getLevelName(level.upper())))
    for noisy in ("absl", "tensorflow", "apache_beam", "h5py"):
        logging.getLogger(noisy).setLevel(level.upper())
    if level == "error":
        _import_tensorflow_quietly()


def _import_tensorflow_quietly() -> None:
    """TensorFlow writes its start-up lines (oneDNN, CUDA drivers, ``cuInit``) from C++ straight to
    file descriptor 2, before ``TF_CPP_MIN_LOG_LEVEL`` applies: import it, and look for GPUs once,
    with that descriptor pointed at /dev/null. Errors still raise, and print once it is restored."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
