"""Runs the real deployables (`pulse serve`, `pulse flow`) as subprocesses."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Stack, Topics
from tests.ports import free_port


class Pipeline:
    """The ingest edge and the dataflow, started against the test's topics and database."""

    def __init__(
        self,
        stack: Stack,
        dsn: str,
        topics: Topics,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        grpc_port = free_port()
        self.target = f"127.0.0.1:{grpc_port}"
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.bootstrap = stack.kafka_bootstrap
        self.dsn = dsn
        self.topics = topics
        self.workdir = workdir
        self.env = {
            **os.environ,
            "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "PULSE_PG_DSN": dsn,
            "PULSE_TOPIC_RAW": topics.raw,
            "PULSE_TOPIC_LATE": topics.late,
            "PULSE_TOPIC_DLQ": topics.dlq,
            "PULSE_TOPIC_SHED": topics.shed,
            "PULSE_TOPIC_NOTIFICATIONS": topics.notifications,
            "PULSE_RECOVERY_DIR": str(workdir / "recovery"),
            "PULSE_SNAPSHOT_INTERVAL_SECONDS": "1",
            "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "PULSE_GRPC_PORT": str(grpc_port),
            "PULSE_HTTP_PORT": str(self.http_port),
            "PULSE_KAFKA_BATCH_SIZE": "500",
            "PULSE_ROLLUP_REFRESH_INTERVAL_SECONDS": "1",
            **(extra_env or {}),
        }
        # One variable, one port per process: each process gets its own free port,
        # unless `extra_env` sets PULSE_HEALTH_PORT (for every process).
        self.health_ports = {name: free_port() for name in ("serve", "flow")}
        if "PULSE_HEALTH_PORT" in (extra_env or {}):
            self.health_ports = {}
        # Likewise /metrics: the edge's and the dataflow's, both on PULSE_METRICS_PORT.
        self.metrics_ports = {name: free_port() for name in ("serve", "flow")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self, name: str) -> None:
        self.starts += 1
        with (self.workdir / f"{name}-{self.starts}.log").open("wb") as log:
            env = dict(self.env)
            if name in self.health_ports:
                env["PULSE_HEALTH_PORT"] = str(self.health_ports[name])
            env["PULSE_METRICS_PORT"] = str(self.metrics_ports[name])
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cli", name],
                env=env,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
            )

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def wait_serving(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        proc = self.procs["serve"]
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    logs = "\n".join(p.read_text() for p in self.workdir.glob("serve-*.log"))
                    pytest.fail(f"pulse serve exited with {proc.returncode}: {logs}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        pytest.fail(f"ingest edge at {self.target} not SERVING after {timeout_s} s")


@contextmanager
def running(
    stack: Stack, dsn: str, topics: Topics, workdir: Path, env: dict[str, str]
) -> Iterator[Pipeline]:
    """The edge and the dataflow, started, SERVING; stopped afterwards."""
    started = Pipeline(stack, dsn, topics, workdir, env)
    try:
        started.start("serve")
        started.start("flow")
        started.wait_serving()
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def pipeline(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    # Events up to an hour old still count as on time (the heartbeats' floor is an hour
    # behind), so these tests can place their events in whole past minutes.
    env = {"PULSE_IDLE_TIMEOUT_SECONDS": "3600"}
    with running(stack, database, topics, tmp_path, env) as started:
        yield started


def listener_pid(port: int) -> int:
    """The pid of the process listening on TCP `port` on this machine (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(fd) in inodes for fd in fds):
                return int(proc.name)
        except OSError:
            continue  # gone, or not ours to read
    pytest.fail(f"no process listens on port {port}")
