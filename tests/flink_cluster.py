"""A real Flink 1.19 standalone cluster on loopback for the Flink tests: one JobManager, two
TaskManager processes with 4 slots each, and Beam's Python worker pool beside them (the SDK harness
of the EXTERNAL environment). Each is a process of its own, started in the foreground so the tests
own their pids; ``.ci/flink.sh`` provides the Flink distribution and Beam's Flink job server jar."""

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
    worker_pool_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def master(self) -> str:
        return f"localhost:{self.rest_port}"

    def conf_dir(self) -> str:
        conf = os.path.join(self.folder, "conf")
        os.makedirs(conf, exist_ok=True)
        for name in ("log4j-console.properties", "log4j.properties"):
            with open(os.path.join(self.home, "conf", name)) as src, open(os.path.join(conf, name), "w") as dst:
                dst.write(src.read())
        settings = {
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
            "taskmanager.memory.process.size": "2048m",
            # Beam's batch translation opens many exchanges at once: the default 10% of the memory
            # for network buffers is too little for parallelism 4 ("Insufficient number of network buffers")
            "taskmanager.memory.network.min": "384m",
            "taskmanager.memory.network.max": "384m",
            # a killed TaskManager is noticed within seconds, not the default 50 s heartbeat timeout
            "heartbeat.interval": 1000,
            "heartbeat.timeout": 5000,
            # spread the job's subtasks over both TaskManagers, so that either one's death hits the job
            "cluster.evenly-spread-out-slots": "true",
            "io.tmp.dirs": os.path.join(self.folder, "tmp"),
        }
        os.makedirs(settings["io.tmp.dirs"], exist_ok=True)
        with open(os.path.join(conf, "config.yaml"), "w") as f:
            f.writelines(f"{k}: {v}\n" for k, v in settings.items())
        return conf

    def _start(self, name: str, argv: list[str], env: dict) -> None:
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)

    def start(self) -> FlinkCluster:
        conf = self.conf_dir()
        env = {**os.environ, "FLINK_CONF_DIR": conf, "FLINK_LOG_DIR": self.folder,
               "FLINK_PID_DIR": self.folder}
        self._start("jobmanager", [os.path.join(self.home, "bin", "jobmanager.sh"), "start-foreground"], env)
        self._env = env
        self.start_taskmanager()
        self.start_taskmanager()
        # The SDK harness: Beam's worker pool starts one Python SDK worker process per environment a
        # TaskManager asks for (--environment_type=EXTERNAL --environment_config=localhost:PORT).
        pool_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        self._start("worker_pool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                    f"--service_port={self.worker_pool_port}"], pool_env)
        self.wait_for_taskmanagers(2)
        return self

    def start_taskmanager(self) -> str:
        name = f"taskmanager{sum(n.startswith('taskmanager') for n in self.processes) + 1}"
        self._start(name, [os.path.join(self.home, "bin", "taskmanager.sh"), "start-foreground"], self._env)
        return name

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://{self.master}{path}", timeout=10) as r:
            return json.loads(r.read())

    def taskmanagers(self) -> list[dict]:
        return self.rest("/taskmanagers")["taskmanagers"]

    def wait_for_taskmanagers(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.processes.items():
                assert proc.poll() is None, f"{name} exited: see {self.folder}/{name}.log"
            try:
                if len(self.taskmanagers()) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} TaskManagers did not register within {timeout}s: see {self.folder}")

    def kill(self, name: str) -> None:
        proc = self.processes[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def runner_args(self, parallelism: int = 4) -> list[str]:
        return ["--runner=FlinkRunner", f"--flink_master={self.master}", "--flink_version=1.19",
                f"--flink_job_server_jar={self.job_server_jar}", f"--parallelism={parallelism}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{self.worker_pool_port}"]
