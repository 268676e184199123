"""A real Flink 1.19 standalone cluster on loopback for the Flink tests: one JobManager and two
TaskManager processes with 4 slots each, each a process of its own started in the foreground so the
tests own their pids. ``.ci/flink.sh`` provides the Flink distribution and Beam's Flink job server jar.

The SDK harness is the PROCESS environment: each TaskManager starts its own Python SDK worker
processes with ``tests/flink_sdk_worker.py`` (Beam's boot binary's part for Python); or, for
tests/test_container.py, the DOCKER environment: the TaskManagers find ``container/bin/docker`` (podman
behind it) first on their PATH and start the worker image's boot entrypoint in containers. The two
environments that share one worker pool between both TaskManagers fail on one host:

- EXTERNAL with one Beam worker pool (``worker_pool_main``): each TaskManager numbers its SDK workers
  from "1-1", the pool keys workers by that id, and a TaskManager's StopWorker for "1-1" kills the
  other TaskManager's worker (seen here: "CANCELLED: client cancelled"). On a real cluster each
  TaskManager has its own pool beside it (docs/running.md).
- LOOPBACK, whose pool lives in the launching process: the same stop, sent whenever a TaskManager has
  no task using its workers for a moment (between stages; with Beam's jars loaded as user code Flink's
  Beam runner releases them at once, whatever ``--environment_cache_millis`` says), ended the other
  TaskManager's harness mid-bundle in 3 of 8 jobs ("SDK harness closed connection", "Unknown process
  bundle instruction id"); after Flink's restart, ``FinalizeWrite`` then failed with "src and dst files
  do not exist" (the first attempt had already moved the temp files)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS_PER_TASKMANAGER = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision() -> dict[str, str]:
    """Runs ``.ci/flink.sh`` (a no-op once cached) and returns FLINK_HOME and FLINK_JOB_SERVER_JAR."""
    out = subprocess.run(["bash", os.path.join(ROOT, ".ci", "flink.sh")], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHON": sys.executable}).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: found[k] for k in ("FLINK_HOME", "FLINK_JOB_SERVER_JAR")}


@dataclass
class FlinkCluster:
    home: str
    job_server_jar: str
    folder: str
    rest_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_taskmanagers: int = 0

    @property
    def master(self) -> str:
        return f"localhost:{self.rest_port}"

    def conf_dir(self) -> str:
        conf = os.path.join(self.folder, "conf")
        os.makedirs(conf, exist_ok=True)
        for name in ("log4j-console.properties", "log4j.properties"):
            with open(os.path.join(self.home, "conf", name)) as src, open(os.path.join(conf, name), "w") as dst:
                dst.write(src.read())
        with open(os.path.join(self.home, "conf", "config.yaml")) as f:
            java_opts = yaml.safe_load(f)["env"]["java"]["opts"]["all"]  # the distribution's Java 17 flags
        settings = {
            "env.java.opts.all": java_opts,
            "env.java.opts.taskmanager": "-Djdk.nio.maxCachedBufferSize=262144",
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": free_port(),
            "jobmanager.bind-host": "localhost",
            "jobmanager.memory.process.size": "1024m",
            "rest.address": "localhost",
            "rest.bind-address": "localhost",
            "rest.port": self.rest_port,
            "taskmanager.host": "localhost",
            "taskmanager.bind-host": "localhost",
            "taskmanager.numberOfTaskSlots": SLOTS_PER_TASKMANAGER,
            "taskmanager.memory.process.size": "3072m",
            # Beam's batch translation opens many exchanges at once: the default 10% of the memory
            # for network buffers is too little for parallelism 4 ("Insufficient number of network buffers").
            # 768m: after the kill test's TaskManager dies, the restarted job runs all 4 subtasks of every
            # vertex on the one left (384m failed there: "required 512, but only 451 available").
            "taskmanager.memory.network.min": "768m",
            "taskmanager.memory.network.max": "768m",
            "taskmanager.memory.managed.size": "512m",
            # Beam's artifact service (in the TaskManager: it serves each SDK worker the job's staged
            # files) reads them through the JDK's per-thread cache of temporary direct buffers, which
            # grows with gRPC's executor threads job after job; with the network buffers above taking
            # most of the direct memory, the 11th job of a session died here with "OutOfMemoryError:
            # Cannot reserve 2097152 bytes of direct buffer memory" and its SDK workers with exit code 1.
            # Off-heap room for the framework, and no caching of temporary buffers over 256 KiB.
            "taskmanager.memory.framework.off-heap.size": "256m",
            # a killed TaskManager is noticed within seconds, not the default 50 s heartbeat timeout
            "heartbeat.interval": 1000,
            "heartbeat.timeout": 5000,
            # spread the job's subtasks over both TaskManagers, so that either one's death hits the job
            "cluster.evenly-spread-out-slots": "true",
            "io.tmp.dirs": os.path.join(self.folder, "tmp"),
            # what a failed task (a TaskManager killed) makes Flink do: restart the job's failed
            # region up to 3 times, 2 s apart; Flink's own default without checkpointing is no restart
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": 3,
            "restart-strategy.fixed-delay.delay": "2 s",
        }
        os.makedirs(settings["io.tmp.dirs"], exist_ok=True)
        with open(os.path.join(conf, "config.yaml"), "w") as f:
            f.writelines(f"{k}: {json.dumps(v)}\n" for k, v in settings.items())
        return conf

    def _start(self, name: str, argv: list[str], env: dict) -> None:
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)

    def start(self) -> FlinkCluster:
        conf = self.conf_dir()
        # the TaskManagers start the SDK workers: they need this checkout importable (PROCESS), or a
        # `docker` (DOCKER: container/bin/docker, podman behind it, with the run options the container
        # tests write to docker_run_options)
        self.docker_run_options = os.path.join(self.folder, "docker-run-options")
        env = {**os.environ, "FLINK_CONF_DIR": conf, "FLINK_LOG_DIR": self.folder, "FLINK_PID_DIR": self.folder,
               "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               "PATH": os.pathsep.join([os.path.join(ROOT, "container", "bin"), os.environ.get("PATH", "")]),
               "BRE_DOCKER_RUN_OPTIONS": self.docker_run_options}
        self.sdk_worker_command = os.path.join(self.folder, "sdk_worker.sh")
        with open(self.sdk_worker_command, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.join(ROOT, "tests", "flink_sdk_worker.py")}" "$@"\n')
        os.chmod(self.sdk_worker_command, 0o755)
        self._start("jobmanager", [os.path.join(self.home, "bin", "jobmanager.sh"), "start-foreground"], env)
        self._env = env
        self.start_taskmanager()
        self.start_taskmanager()
        self.wait_for_taskmanagers(2)
        return self

    def start_taskmanager(self) -> str:
        self.started_taskmanagers += 1
        name = f"taskmanager{self.started_taskmanagers}"
        self._start(name, [os.path.join(self.home, "bin", "taskmanager.sh"), "start-foreground"], self._env)
        return name

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://{self.master}{path}", timeout=10) as r:
            return json.loads(r.read())

    def taskmanagers(self) -> list[dict]:
        return self.rest("/taskmanagers")["taskmanagers"]

    def wait_for_taskmanagers(self, n: int, excluding: tuple[str, ...] = (), timeout: float = 120) -> None:
        """Until exactly ``n`` TaskManagers are registered, none of them one of ``excluding`` (ids)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.processes.items():
                assert proc.poll() is None, f"{name} exited: see {self.folder}/{name}.log"
            try:
                ids = [tm["id"] for tm in self.taskmanagers()]
                if len(ids) == n and not set(ids) & set(excluding):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} TaskManagers did not register within {timeout}s: see {self.folder}")

    def kill(self, name: str) -> None:
        """SIGKILL, as a machine failure would end it; the process leaves ``processes``."""
        proc = self.processes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def runner_args(self, parallelism: int = 4, docker_image: str | None = None) -> list[str]:
        """The PROCESS environment (tests/flink_sdk_worker.py), or with ``docker_image`` the DOCKER
        environment: each TaskManager starts that image's boot entrypoint as its SDK harness."""
        if docker_image:
            environment = ["--environment_type=DOCKER", f"--environment_config={docker_image}"]
        else:
            environment = ["--environment_type=PROCESS",
                           "--environment_config=" + json.dumps({"command": self.sdk_worker_command})]
        return ["--runner=FlinkRunner", f"--flink_master={self.master}", "--flink_version=1.19",
                f"--flink_job_server_jar={self.job_server_jar}", f"--parallelism={parallelism}", *environment]

    def jobs(self) -> list[dict]:
        return self.rest("/jobs/overview")["jobs"]

    def subtasks(self, job_id: str) -> list[dict]:
        """Every subtask of every vertex of the job: vertex name, subtask index, TaskManager, records in."""
        out = []
        for vertex in self.rest(f"/jobs/{job_id}")["vertices"]:
            detail = self.rest(f"/jobs/{job_id}/vertices/{vertex['id']}")
            for sub in detail["subtasks"]:
                out.append({"vertex": vertex["name"], "subtask": sub["subtask"], "status": sub["status"],
                            "taskmanager": sub.get("taskmanager-id"),
                            "records_in": sub["metrics"]["read-records"]})
        return out
