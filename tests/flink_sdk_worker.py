#!/usr/bin/env python3
"""The command a TaskManager runs to start a Python SDK worker for ``--environment_type=PROCESS``:
what Beam's boot binary (``/opt/apache/beam/boot`` in the worker image) does, for this test cluster,
minus artifact staging (the job stages nothing the workers need: this package is installed here).

The TaskManager calls it with ``--id``, ``--provision_endpoint``, ``--control_endpoint``,
``--logging_endpoint`` and ``--artifact_endpoint``; it asks the provision service for the pipeline
options and then becomes ``apache_beam.runners.worker.sdk_worker_main``, which reads them from the
environment. Each TaskManager starts its own such processes, so no two TaskManagers share a worker."""

import argparse
import os
import sys

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from google.protobuf import json_format


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
    env = {
        **os.environ,
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": f"url: '{control}'",
        "LOGGING_API_SERVICE_DESCRIPTOR": f"url: '{logging_url}'",
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    main()
