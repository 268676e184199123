#!/usr/bin/env python3
"""The command a TaskManager runs to start a Python SDK worker for ``--environment_type=PROCESS``:
what Beam's boot binary (``/opt/apache/beam/boot`` in the worker image) does, for this test cluster.
This package is installed here; of the artifacts a job stages, the packages are installed as boot
installs them (the one ``--setup_file`` builds, ``workflow.tar.gz``, and ``--extra_package`` files):
fetched from the artifact service and ``pip install``-ed, offline and without their dependencies,
into a folder of this worker put first on its ``PYTHONPATH`` (never into the shared environment).

The TaskManager calls it with ``--id``, ``--provision_endpoint``, ``--control_endpoint``,
``--logging_endpoint`` and ``--artifact_endpoint``; it asks the provision service for the pipeline
options and then becomes ``apache_beam.runners.worker.sdk_worker_main``, which reads them from the
environment. Each TaskManager starts its own such processes, so no two TaskManagers share a worker."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
    beam_runner_api_pb2,
)
from google.protobuf import json_format

WORKFLOW_TARBALL = "workflow.tar.gz"  # what Beam's stager names the package --setup_file builds
EXTRA_PACKAGES = "extra_packages.txt"


def install_staged_packages(endpoint: str, dependencies, worker_id: str) -> str | None:
    """Fetches the job's staged artifacts and installs its packages into a new folder; returns the
    folder (for ``PYTHONPATH``), or None when the job staged no package."""
    # beside the cluster's logs (the test's temporary folder), which the TaskManager names in FLINK_LOG_DIR
    folder = tempfile.mkdtemp(prefix=f"staged-{worker_id}-", dir=os.environ.get("FLINK_LOG_DIR"))
    staged = {}
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for dep in dependencies:
            if dep.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
                continue
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
            path = os.path.join(folder, os.path.basename(name))
            with open(path, "wb") as f:
                for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=dep),
                                              metadata=[("worker_id", worker_id)]):
                    f.write(chunk.data)
            staged[os.path.basename(name)] = path
    packages = []
    if EXTRA_PACKAGES in staged:
        with open(staged[EXTRA_PACKAGES], encoding="utf-8") as f:
            packages += [staged[line.strip()] for line in f if line.strip() in staged]
    if WORKFLOW_TARBALL in staged:
        packages.append(staged[WORKFLOW_TARBALL])
    if not packages:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    target = os.path.join(folder, "site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", target, *packages], check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint", "artifact_endpoint"):
        parser.add_argument(f"--{name}", default="")
    args, _ = parser.parse_known_args()
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id)]).info
    control = args.control_endpoint or info.control_endpoint.url
    logging_url = args.logging_endpoint or info.logging_endpoint.url
    site = install_staged_packages(args.artifact_endpoint or info.artifact_endpoint.url, info.dependencies, args.id)
    path = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": f"url: '{control}'",
        "LOGGING_API_SERVICE_DESCRIPTOR": f"url: '{logging_url}'",
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    main()
