"""The edge and the dataflow ride out outages of TimescaleDB and Kafka, under load.

Each test runs its own PostgreSQL or Kafka broker (the project's stack scripts, a second
data directory and free ports), so it can stop it for real and start it again while
events stream: the edge and the dataflow neither exit nor lose or double count an event.

- TimescaleDB stopped: the dataflow holds back (Kafka is the buffer), its `/readyz`
  answers 503 naming PostgreSQL, and once the server is back it catches up exactly.
- Kafka stopped: the edge answers UNAVAILABLE for calls it cannot acknowledge, within
  its produce timeout; a client that retries them loses nothing and counts nothing
  twice; the dataflow waits, then goes on exactly.

The outages last seconds here; `benchmarks/soak_outages.py` runs them for minutes
(`make soak`).
"""

import asyncio
import json
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import astuple, dataclass, field
from pathlib import Path

import grpc
import pytest

from ingest.client import PulseClient
from runtime.topics import ensure_topics
from sinks.schema import migrate
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.e2e.test_real_clients import env, event, now_ms, wait_exact
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 6.0


class PrivateStack:
    """A PostgreSQL server or Kafka broker of this test's own, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.kafka_port, self.pg_port = free_port(), free_port()
        self.env = {
            "PULSE_STACK_DATA_DIR": str(workdir),
            "PULSE_KAFKA_PORT": str(self.kafka_port),
            "PULSE_KAFKA_CONTROLLER_PORT": str(free_port()),
            "PULSE_PG_PORT": str(self.pg_port),
        }
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        self.dsn = f"postgresql://pulse:pulse@127.0.0.1:{self.pg_port}/pulse"

    def stack(self, *args: str) -> None:
        """Run scripts/stack.sh; a failure names the script's last output lines."""
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "stack.sh"), *args],
            env={**os.environ, **self.env},
            check=False,
            capture_output=True,
            timeout=300,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).decode(errors="replace").splitlines()[-15:]
            pytest.fail(f"stack.sh {' '.join(args)} exited {done.returncode}:\n" + "\n".join(tail))


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateStack]:
    own = PrivateStack(tmp_path / "stack")
    try:
        yield own
    finally:
        own.stack("clean")


def ready(pipeline: Pipeline) -> tuple[int, dict[str, object]]:
    """The dataflow's /readyz: status code and body."""
    url = f"http://127.0.0.1:{pipeline.health_ports['flow']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def alive(pipeline: Pipeline) -> None:
    for name, proc in pipeline.procs.items():
        assert proc.poll() is None, f"pulse {name} exited with {proc.returncode}"


@dataclass
class Load:
    """Calls of events sent while an outage comes and goes; a call the edge answers
    UNAVAILABLE is sent again, whole, until it is acknowledged."""

    pipeline: Pipeline
    campaigns: list[str]
    calls: int = 24
    per_call: int = 800
    pause_s: float = 0.5
    sent_calls: int = 0
    unavailable: int = 0
    unavailable_s: list[float] = field(default_factory=list)
    events: int = 0

    def run(self) -> None:
        asyncio.run(self._send())

    async def _send(self) -> None:

        rng = random.Random(7)
        async with PulseClient(self.pipeline.target, batch_size=400) as client:
            for call in range(self.calls):
                events = [
                    event(
                        rng.choice(self.campaigns),
                        now_ms() - rng.randrange(1500),
                        f"{call}-{i}",
                        rng,
                    )
                    for i in range(self.per_call)
                ]
                while True:
                    started = time.monotonic()
                    try:
                        reply = await client.ingest(events)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        self.unavailable += 1
                        self.unavailable_s.append(time.monotonic() - started)
                        await asyncio.sleep(0.5)
                        continue
                    assert reply.accepted + reply.duplicates == len(events)
                    break
                self.events += len(events)
                self.sent_calls += 1
                await asyncio.sleep(self.pause_s)


def load_in_background(load: Load) -> threading.Thread:
    thread = threading.Thread(target=load.run)
    thread.start()
    return thread


@dataclass(frozen=True)
class Outage:
    down_s: float
    rows: int
    exact_after_s: float  # from the service's return to every row exact


def ride_out(pipeline: Pipeline, private: PrivateStack, service: str, load: Load) -> Outage:
    """Start the edge and the dataflow, stop `service` while the load streams, start it
    again: both processes stay up, /readyz names the service while it is down, and every
    event counts once."""
    pipeline.start("serve")
    pipeline.start("flow")
    pipeline.wait_serving()
    sender = load_in_background(load)
    while load.sent_calls < 6:
        time.sleep(0.1)
    private.stack("down", service)
    stopped = time.monotonic()
    while (status := ready(pipeline))[0] != 503 and time.monotonic() < stopped + 15:
        time.sleep(0.2)
    code, body = status
    assert code == 503, body
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert {name for name, check in checks.items() if check["status"] != "ok"} == {service}
    time.sleep(max(OUTAGE_S - (time.monotonic() - stopped), 0))
    alive(pipeline)
    private.stack("up", service)
    back = time.monotonic()
    sender.join()
    alive(pipeline)
    buckets, _late, got = wait_exact(pipeline, load.campaigns)
    exact_after_s = time.monotonic() - back
    assert sum(b.count for k, b in buckets.items() if k[0] in load.campaigns) == load.events
    assert ready(pipeline)[0] == 200
    return Outage(back - stopped, len(got), exact_after_s)


def test_the_dataflow_rides_out_a_timescaledb_outage(
    stack: Stack, topics: Topics, private: PrivateStack, tmp_path: Path
) -> None:
    private.stack("up", "postgres")
    migrate(private.dsn)
    pipeline = Pipeline(stack, private.dsn, topics, tmp_path, env())
    load = Load(pipeline, [f"pg-out-{i}" for i in range(12)])
    try:
        outage = ride_out(pipeline, private, "postgres", load)
    finally:
        pipeline.stop_all()
    assert "TimescaleDB written again after" in (tmp_path / "flow-2.log").read_text()
    print(
        f"\nTimescaleDB down {outage.down_s:.1f} s under load: {load.events:,} events,"
        f" {outage.rows} rows exact {outage.exact_after_s:.1f} s after it was back"
        " (the rest of the load and the last windows included)"
    )


def test_the_edge_and_the_dataflow_ride_out_a_kafka_outage(
    stack: Stack, database: str, private: PrivateStack, tmp_path: Path
) -> None:
    private.stack("up", "kafka")
    names = Topics(*(f"out.{name}" for name in ("raw", "late", "dlq", "notifications", "shed")))
    ensure_topics(private.bootstrap, list(astuple(names)), 3)
    pipeline = Pipeline(
        Stack(private.bootstrap, stack.admin_dsn),
        database,
        names,
        tmp_path,
        env(PULSE_PRODUCE_TIMEOUT_SECONDS="2"),
    )
    load = Load(pipeline, [f"kafka-out-{i}" for i in range(12)])
    try:
        outage = ride_out(pipeline, private, "kafka", load)
    finally:
        pipeline.stop_all()
    assert load.unavailable > 0
    assert max(load.unavailable_s) < 2 + 3  # the produce timeout, and a margin
    print(
        f"\nKafka down {outage.down_s:.1f} s under load: {load.unavailable} calls answered"
        f" UNAVAILABLE (at most {max(load.unavailable_s):.1f} s each) and sent again;"
        f" {load.events:,} events, {outage.rows} rows exact {outage.exact_after_s:.1f} s after"
        " it was back (the rest of the load and the last windows included)"
    )
