"""A real (local) Google Cloud Storage for tests: ``gcp-storage-emulator`` on loopback, in memory.

The session fixture ``gcs_emulator`` starts ``python -m gcp_storage_emulator start --in-memory`` in a
subprocess on 127.0.0.1 and a free port, creates one bucket, points every GCS client of this
process at it, and stops the server at the end of the session. Nothing leaves the loopback
interface.

How the clients are pointed at it:

- ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``: ``google-cloud-storage`` (which Beam's ``GcsIO``
  uses since Beam 2.52) then sends every JSON-API, upload, download and batch request there, and
  uses anonymous credentials when it is given none.
- ``GOOGLE_CLOUD_PROJECT``: a project id for clients created without one.
- Beam's credential cache is set to "looked up, none found" (``auth._Credentials``), for the
  session only. ``GcsIO`` always asks ``google.auth.default()`` for Application Default
  Credentials first, and Beam retries that lookup with exponential backoff: on a machine without
  credentials it costs ~25 s and probes the GCE metadata server (169.254.169.254, not loopback)
  before Beam gives up and connects anonymously, which is the outcome the cache now holds from the
  start. On a machine *with* credentials, Beam would hand them to the storage client, which would
  then try to refresh tokens on the internet. What stays untested because of this: only Beam's
  own credential discovery (ADC, impersonation), which has nothing to do with our code.
  Every storage request of the job itself goes, unmodified, to the emulator.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PROJECT = "beam-embeddings-test"
BUCKET = "beam-embeddings-test-bucket"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GcsEmulator:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    project: str

    def client(self):
        """A ``google.cloud.storage.Client`` talking to the emulator (anonymous)."""
        from google.cloud import storage

        return storage.Client(project=self.project)

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ready(endpoint: str) -> bool:
    # No proxy: a proxy from the environment must never see loopback traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(endpoint + "/", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Starts the emulator on a free port; retries on another port if that one was taken meanwhile."""
    last_log = ""
    for _attempt in range(3):
        port = _free_port()
        endpoint = f"http://{HOST}:{port}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start",
             "--host", HOST, "--port", str(port), "--in-memory", "--quiet"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _ready(endpoint):
                return proc, endpoint
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        last_log = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"gcp-storage-emulator did not start on {HOST}; its log ends with:\n{last_log}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> GcsEmulator:
    pytest.importorskip("gcp_storage_emulator")
    from apache_beam.internal.gcp import auth

    proc, endpoint = _start(tmp_path_factory.mktemp("gcs-emulator") / "emulator.log")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
            mp.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
            mp.setenv("NO_GCE_CHECK", "true")
            for var in ("NO_PROXY", "no_proxy"):
                mp.setenv(var, ",".join(filter(None, [os.environ.get(var), HOST, "localhost"])))
            # See the module docstring: Beam's ADC lookup, settled as "none found".
            mp.setattr(auth._Credentials, "_credentials_init", True)
            mp.setattr(auth._Credentials, "_credentials", None)

            emulator = GcsEmulator(endpoint=endpoint, bucket=BUCKET, project=PROJECT)
            emulator.client().create_bucket(BUCKET)
            yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
