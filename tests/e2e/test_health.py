"""/healthz and /readyz of the edge and the dataflow, with TimescaleDB stopped and restarted.

The test stops the local stack's PostgreSQL (`pg_ctl stop -m fast`, as the cluster's
OS user) and always starts it again, waiting until it accepts connections: the rest
of the suite shares it. It is skipped when the server was not started by this
checkout's stack scripts.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline, running

ROOT = Path(__file__).resolve().parents[2]
PG_LINK = ROOT / ".data" / "pg"

Reply = tuple[int, dict[str, Any]]


def get(port: int, path: str) -> Reply:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(port: int, path: str, accept: Callable[[Reply], bool], timeout_s: float) -> Reply:
    deadline = time.monotonic() + timeout_s
    last: Reply | str = "no answer"
    while time.monotonic() < deadline:
        try:
            last = get(port, path)
            if accept(last):
                return last
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    pytest.fail(f"{path} on :{port} after {timeout_s} s: {last}")


class LocalPostgres:
    """The stack's own PostgreSQL cluster, stopped and started with pg_ctl."""

    def __init__(self) -> None:
        self.data = PG_LINK.resolve()
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            pytest.skip("PostgreSQL is not run by this checkout's stack scripts")
        pid = pid_file.read_text().split()[0]
        self.bin = Path(os.readlink(f"/proc/{pid}/exe")).parent
        self.log = (
            self.data.parent / "postgres.log"
            if PG_LINK.is_symlink()
            else ROOT / ".data" / "logs" / "postgres.log"
        )
        owner = self.data.owner()
        self.as_owner = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 else []

    def pg_ctl(self, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stop(self) -> None:
        result = self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop")
        assert result.returncode == 0, result.stderr

    def start(self, dsn: str) -> None:
        """Start it (pg_ctl, else the stack script) and wait until it takes connections."""
        result = self.pg_ctl("-l", str(self.log), "-w", "-t", "90", "start")
        if result.returncode != 0 and not self.answers(dsn):
            subprocess.run(
                ["bash", str(ROOT / "scripts" / "stack.sh"), "up"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=600,
                check=False,
            )
        deadline = time.monotonic() + 120
        while not self.answers(dsn):
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.3)

    @staticmethod
    def answers(dsn: str) -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


@contextmanager
def database_stopped(stack: Stack) -> Iterator[None]:
    pg = LocalPostgres()
    try:
        pg.stop()
        yield
    finally:
        pg.start(stack.admin_dsn)


def ready(reply: Reply) -> bool:
    return reply[0] == 200


def postgres_down(reply: Reply) -> bool:
    return reply[0] == 503 and reply[1]["checks"]["postgres"]["status"] == "error"


def grpc_status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        return status


def test_readiness_follows_the_database(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    password = urlsplit(database).password or "-"
    with running(stack, database, topics, tmp_path, {}) as pipeline:
        ports = pipeline.health_ports
        for port in ports.values():
            _, body = wait_for(port, "/healthz", ready, 60)
            assert body["status"] == "ok"
            assert body["uptime_seconds"] >= 0

            _, body = wait_for(port, "/readyz", ready, 30)
            assert body["status"] == "ready"
            assert set(body["checks"]) == {"kafka", "postgres"}
            for check in body["checks"].values():
                assert check["status"] == "ok"
                assert 0 <= check["latency_ms"] < 2500

        with database_stopped(stack):
            for port in ports.values():
                _, body = wait_for(port, "/readyz", postgres_down, 15)
                assert body["status"] == "not_ready"
                assert body["checks"]["kafka"]["status"] == "ok"
                assert body["checks"]["postgres"]["reason"]
                assert body["checks"]["postgres"]["latency_ms"] < 2500
                assert f":{password}@" not in json.dumps(body)
                assert get(port, "/healthz")[0] == 200  # alive all the same
            # gRPC health follows Kafka only: ingest does not need the database.
            assert grpc_status(pipeline.target) == health_pb2.HealthCheckResponse.SERVING

        for port in ports.values():
            _, body = wait_for(port, "/readyz", ready, 30)
            assert body["checks"]["postgres"]["status"] == "ok"
        assert get(ports["serve"], "/nowhere")[0] == 404
        assert_logs_are_redacted(pipeline, password)


def assert_logs_are_redacted(pipeline: Pipeline, password: str) -> None:
    for name in ("serve", "flow"):
        text = "\n".join(p.read_text() for p in pipeline.workdir.glob(f"{name}-*.log"))
        assert "config: {" in text
        assert f":{password}@" not in text
