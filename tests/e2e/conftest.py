"""Runs the real deployables (`pulse serve`, `pulse flow`) as subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Stack, Topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Pipeline:
    target: str
    bootstrap: str
    dsn: str
    topics: Topics
    logs: Path


def _wait_serving(target: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"pulse serve exited with {proc.returncode}: {log.read_text()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"ingest edge at {target} not SERVING after {timeout_s} s")


@pytest.fixture
def pipeline(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    grpc_port = free_port()
    env = {
        **os.environ,
        "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "PULSE_PG_DSN": database,
        "PULSE_TOPIC_RAW": topics.raw,
        "PULSE_TOPIC_LATE": topics.late,
        "PULSE_TOPIC_DLQ": topics.dlq,
        "PULSE_GRPC_PORT": str(grpc_port),
        "PULSE_METRICS_PORT": str(free_port()),
        "PULSE_API_PORT": str(free_port()),
        "PULSE_KAFKA_BATCH_SIZE": "500",
    }
    procs = []
    for name in ("serve", "flow"):
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pulse", name],
                    env=env,
                    stdout=log,
                    stderr=log,
                    cwd=tmp_path,
                )
            )
    target = f"127.0.0.1:{grpc_port}"
    try:
        _wait_serving(target, procs[0], tmp_path / "serve.log", timeout_s=30)
        yield Pipeline(target, stack.kafka_bootstrap, database, topics, tmp_path)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
