"""The worker image, built and run: the repository's ``Dockerfile``, unchanged, built with podman on local
stand-ins of its base (``container/build.sh``: Debian bookworm from debootstrap, Debian's Python 3.11,
apache-beam 2.77.0 from PyPI, Beam's boot entrypoint from Beam's Go module), then

- inspected: ``pip check``, the Python / Beam / Keras / TensorFlow versions against the launching
  environment's, the user it runs as, ``python -m beam_pipeline --help`` and the demo run;
- run as the SDK harness of the session's Flink cluster (tests/flink_cluster.py) with
  ``--environment_type=DOCKER --environment_config=IMAGE``, what Flink users with containers submit:
  each TaskManager starts the image's ``/opt/apache/beam/boot`` through ``container/bin/docker``
  (podman behind Beam's ``docker`` commands). The rows, dead letters and summary equal the
  DirectRunner's, on local files shared with the containers and on gs:// (the GCS emulator).

Outside CI, without podman, these tests skip (``bash container/build.sh`` installs it, as root, with
apt-get); under CI (.ci/run has built the image by then) they always run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import helpers
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (the session fixture)
from tests.test_flink import BAD_LINES, EXPECTED_DEAD, JOB_FLAGS, _assert_same_rows, _dead_letters, _rows

ROOT = Path(__file__).resolve().parents[1]
DOCKER = str(ROOT / "container" / "bin" / "docker")  # podman with this machine's settings (container/env.sh)
IMAGE_UID = 1000  # the Dockerfile's USER


@pytest.fixture(scope="session")
def worker_image() -> str:
    """The worker image's name, built by ``container/build.sh`` (a no-op when .ci/run built it)."""
    if shutil.which("podman") is None:
        message = ("the container tests need podman, runc, debootstrap and Go: `bash container/build.sh` (as root) "
                   "installs the first three with apt-get and builds the image")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + "; CI runs them")
    done = subprocess.run(["bash", str(ROOT / "container" / "build.sh")], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stderr[-6000:]
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)["IMAGE"]


def in_image(image: str, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
    """``command`` run in a new container of ``image`` in place of its entrypoint."""
    entrypoint, *args = command
    options = ["--user", user] if user else []
    return subprocess.run([DOCKER, "run", "--rm", "--network", "host", *options, "--entrypoint", entrypoint, image,
                           *args], capture_output=True, text=True, timeout=600)


VERSIONS = """import json, sys, apache_beam, keras, tensorflow
print(json.dumps({"python": list(sys.version_info[:2]), "beam": apache_beam.__version__,
                  "keras": keras.__version__, "tensorflow": tensorflow.__version__}))"""


def test_image_has_the_launchers_python_beam_keras_and_tensorflow_and_no_broken_requirement(worker_image):
    """A launcher whose Python minor version or Beam version differs from the workers' is the classic
    Dataflow failure (the workers cannot unpickle what it sent); Keras decides the values."""
    import apache_beam
    import keras
    import tensorflow

    done = in_image(worker_image, "python", "-c", VERSIONS)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"python": list(sys.version_info[:2]), "beam": apache_beam.__version__,
                   "keras": keras.__version__, "tensorflow": tensorflow.__version__}
    check = in_image(worker_image, "pip", "check")
    assert check.returncode == 0 and "No broken requirements found" in check.stdout, check.stdout + check.stderr


def test_image_runs_as_an_unprivileged_user_with_boot_as_entrypoint(worker_image):
    done = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config}}", worker_image],
                          capture_output=True, text=True, check=True)
    config = json.loads(done.stdout)
    assert config["Entrypoint"] == ["/opt/apache/beam/boot"]
    assert config["User"] == str(IMAGE_UID)
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in config["Env"]
    whoami = in_image(worker_image, "id", "-u")
    assert whoami.stdout.strip() == str(IMAGE_UID)
    # The boot entrypoint itself, with no worker id: it starts, as that user, and says what it misses.
    boot = subprocess.run([DOCKER, "run", "--rm", "--network", "host", worker_image], capture_output=True, text=True,
                          timeout=120)
    assert boot.returncode != 0 and "No id provided" in boot.stdout + boot.stderr, boot.stdout + boot.stderr


def test_image_runs_the_job_help_and_the_demo(worker_image):
    helped = in_image(worker_image, "python", "-m", "beam_pipeline", "--help")
    assert helped.returncode == 0, helped.stderr[-4000:]
    assert "--model" in helped.stdout and "--tokenizer" in helped.stdout
    demo = in_image(worker_image, "python", "-m", "beam_pipeline")
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert "embeddings" in demo.stdout + demo.stderr


@pytest.fixture
def shared_folder():
    """A folder the containers see at the same path (``--volume``, as a shared file system would be on
    a cluster), writable by the image's unprivileged user."""
    folder = Path(tempfile.mkdtemp(prefix="bre-container-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_options(cluster, *options: str) -> None:
    """What container/bin/docker adds to each ``podman run`` the TaskManagers issue from now on."""
    with open(cluster.docker_run_options, "w", encoding="utf-8") as f:
        f.write("\n".join(options) + "\n")


def _containers(image: str) -> list[str]:
    return subprocess.run([DOCKER, "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True,
                          check=True).stdout.split()


def _remove_containers(image: str) -> list[str]:
    """Removes any container of the image still there (Beam's job service kills and removes the ones it
    started when the job's environments close); returns their ids."""
    ids = _containers(image)
    if ids:
        subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
    return ids


@pytest.fixture
def docker_cluster(flink_cluster, worker_image):
    """The session's Flink cluster, with the container run options reset after each test."""
    try:
        yield flink_cluster
    finally:
        if os.path.exists(flink_cluster.docker_run_options):
            os.remove(flink_cluster.docker_run_options)
        _remove_containers(worker_image)


def _corpus(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """A few dozen demo documents in 2 files, the first with lines to dead-letter; world-readable."""
    from beam_pipeline.demo import sample_corpus

    docs = [(d["id"], d["text"]) for d in sample_corpus(40, seed=21)]
    paths = [helpers.write_jsonl(folder / f"part{k}.jsonl", docs[k::2]) for k in range(2)]
    with open(paths[0], "a", encoding="utf-8") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    return [str(p) for p in paths], docs


def test_flink_docker_environment_runs_the_job_in_the_image_with_the_direct_runners_rows(
        docker_cluster, worker_image, small_job, shared_folder):
    """Every SDK harness of the job is the image's boot entrypoint in a container the TaskManagers start;
    the shards, written inside the containers, belong to the image's user; once the job is over, Beam has
    killed and removed every container it started."""
    paths, docs = _corpus(shared_folder)
    model = shutil.copy(small_job.model, shared_folder / "model.keras")
    tokenizer = shutil.copy(small_job.tokenizer, shared_folder / "tokenizer.json")
    for name in (model, tokenizer):
        os.chmod(name, 0o644)
    _run_options(docker_cluster, f"--volume={shared_folder}:{shared_folder}")
    base = ["--input", *paths, "--model", model, "--tokenizer", tokenizer, "--mode", "sequence", *JOB_FLAGS]
    direct = helpers.run_job([*base, "--output", shared_folder / "direct" / "emb"])
    flink = helpers.run_job([*base, "--output", shared_folder / "flink" / "emb",
                             *docker_cluster.runner_args(parallelism=2, docker_image=worker_image)])

    _assert_same_rows(_rows(str(shared_folder / "flink" / "emb")), _rows(str(shared_folder / "direct" / "emb")))
    dead = _dead_letters(str(shared_folder / "flink" / "emb"))
    assert dead == _dead_letters(str(shared_folder / "direct" / "emb"))
    assert {reason for _, _, reason in dead} == EXPECTED_DEAD
    for key in ("read", "embedded", "dead_lettered", "written"):
        assert flink[key] == direct[key], key
    assert flink["accounted"] and flink["embedded"] == len(docs) + 2  # + the blank and punctuation-only texts
    shards = sorted((shared_folder / "flink").glob("emb-*-of-*.parquet"))
    assert shards and {s.stat().st_uid for s in shards} == {IMAGE_UID}, "shards not written inside the image"
    job = max(docker_cluster.jobs(), key=lambda j: j["start-time"])
    assert job["state"] == "FINISHED"
    deadline = time.time() + 60  # the TaskManagers close the job's environments as its tasks end
    while _containers(worker_image) and time.time() < deadline:
        time.sleep(1)
    assert not _containers(worker_image), "containers left behind after the job"


def test_flink_docker_environment_reads_and_writes_gs_from_inside_the_image(
        docker_cluster, worker_image, small_job, gcs_emulator, tmp_path):  # noqa: F811
    """gs:// input, model, tokenizer and output, on the GCS emulator (loopback, reached from the
    containers on the host's network): the same rows as the DirectRunner's local run."""
    paths, docs = _corpus(tmp_path)
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    for path in [*paths, small_job.model, small_job.tokenizer]:
        bucket.blob(f"container/in/{os.path.basename(path)}").upload_from_filename(path)
    uri = gcs_emulator.uri
    # The emulator for the SDK harnesses too; NO_GCE_CHECK: no probe of a metadata server for credentials.
    _run_options(docker_cluster, f"--env=STORAGE_EMULATOR_HOST={gcs_emulator.endpoint}",
                 f"--env=GOOGLE_CLOUD_PROJECT={gcs_emulator.project}", "--env=NO_GCE_CHECK=true")
    flags = ["--mode", "final", *JOB_FLAGS]
    direct = helpers.run_job(["--input", *paths, "--model", small_job.model, "--tokenizer", small_job.tokenizer,
                              "--output", tmp_path / "direct" / "emb", *flags])
    flink = helpers.run_job(["--input", uri("container/in/part*.jsonl"), "--model", uri("container/in/model.keras"),
                             "--tokenizer", uri("container/in/tokenizer.json"), "--output", uri("container/out/emb"),
                             *flags, *docker_cluster.runner_args(parallelism=2, docker_image=worker_image)])
    local = tmp_path / "from_gs"
    local.mkdir()
    for blob in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="container/out/"):
        blob.download_to_filename(local / os.path.basename(blob.name))
    _assert_same_rows(_rows(str(local / "emb")), _rows(str(tmp_path / "direct" / "emb")))
    assert flink["accounted"] and flink["embedded"] == direct["embedded"] == len(docs) + 2
    assert flink["dead_lettered"] == direct["dead_lettered"] == 2
    assert flink["output_files"] and all(f.startswith("gs://") for f in flink["output_files"])
