"""Soak: the pipeline under a steady load while TimescaleDB or Kafka is down for minutes.

Runs its own PostgreSQL and Kafka (the project's stack scripts, a temporary data
directory, free ports), the edge and one dataflow process, and a client sending
`--rate` events/s that sends a call again when the edge answers UNAVAILABLE. After a
warm-up it stops the service for `--outage-seconds`, starts it again, and reports:

- how long until everything accepted before the service came back is counted
  (catch-up), and until every accepted event is counted once the load stops;
- the dataflow's peak resident memory during the outage, its /readyz while down;
- calls answered UNAVAILABLE (Kafka outages).

    python -m benchmarks.soak_outages --service postgres --outage-seconds 600
    make soak   # TimescaleDB and Kafka, 60 s each
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg

from benchmarks.common import ROOT, PeakRss, pulse_process
from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from runtime.topics import ensure_topics
from sinks.schema import migrate
from tests.ports import free_port


class Sender:
    """`rate` events/s in calls every half second; a call answered UNAVAILABLE is sent
    again, whole, until acknowledged (the edge drops what it had written)."""

    def __init__(self, target: str, rate: int) -> None:
        self.target = target
        self.per_call = max(rate // 2, 1)
        self.accepted = 0  # events acknowledged (accepted or duplicates of retried calls)
        self.unavailable = 0
        self.acknowledged_at: list[float] = []  # monotonic time of each acknowledged call
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        rng = random.Random(3)
        call = 0
        async with PulseClient(self.target, batch_size=500) as client:
            while not self.stopping.is_set():
                now = int(time.time() * 1000)
                events = [
                    pb.RawEvent(
                        campaign_id=f"soak-{rng.randrange(50)}",
                        event_type="impression",
                        timestamp=now - rng.randrange(1000),
                        value=1.0,
                        event_id=f"{call}-{i}",
                        dimensions={"user_id": f"u{rng.randrange(1000)}"},
                    )
                    for i in range(self.per_call)
                ]
                call += 1
                started = time.monotonic()
                while True:
                    try:
                        await client.ingest(events)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        self.unavailable += 1
                        await asyncio.sleep(0.5)
                self.accepted += len(events)
                self.acknowledged_at.append(time.monotonic())
                await asyncio.sleep(max(0.5 - (time.monotonic() - started), 0))


def counted(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT coalesce(sum(event_count), 0) FROM event_metrics").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


def readyz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return f"{reply.status}"
    except urllib.error.HTTPError as exc:
        checks = json.loads(exc.read()).get("checks", {})
        failing = sorted(name for name, c in checks.items() if c.get("status") != "ok")
        return f"{exc.code} ({', '.join(failing)})"
    except OSError as exc:
        return f"no answer ({exc})"


def own(health_port: int, metrics_port: int) -> dict[str, str]:
    """The ports one process listens on besides gRPC: each process has its own."""
    return {"PULSE_HEALTH_PORT": str(health_port), "PULSE_METRICS_PORT": str(metrics_port)}


def soak(
    args: argparse.Namespace, work: Path, bootstrap: str, dsn: str, stack: Callable[..., None]
) -> None:
    """Run the pipeline on the private stack, take the service away, report."""
    migrate(dsn)
    topics = ["events.raw", "events.late", "events.dlq", "notifications", "events.shed"]
    ensure_topics(bootstrap, topics, 4)
    grpc_port, flow_health = free_port(), free_port()
    env = {
        "PULSE_KAFKA_BOOTSTRAP": bootstrap,
        "PULSE_PG_DSN": dsn,
        "PULSE_GRPC_PORT": str(grpc_port),
        "PULSE_PRODUCE_TIMEOUT_SECONDS": "5",
        "PULSE_HEARTBEAT_INTERVAL_SECONDS": "1",
    }
    with (
        pulse_process(
            "serve", {**env, **own(free_port(), free_port()), "PULSE_HTTP_PORT": "0"}, work
        ),
        pulse_process("flow", {**env, **own(flow_health, free_port())}, work) as flow,
    ):
        sender = Sender(f"127.0.0.1:{grpc_port}", args.rate)
        time.sleep(5)  # the edge and the workers start
        sender.thread.start()
        time.sleep(args.warmup_seconds)
        peak = PeakRss(flow.pid)
        time.sleep(0.5)
        before_kb = peak.peak_kb
        stack("down", args.service)
        down_at = time.monotonic()
        time.sleep(min(5.0, args.outage_seconds))
        ready_while_down = readyz(flow_health)
        time.sleep(max(args.outage_seconds - (time.monotonic() - down_at), 0))
        stack("up", args.service)
        back_at = time.monotonic()
        owed = sender.accepted
        while counted(dsn) < owed:
            time.sleep(0.5)
        caught_up_s = time.monotonic() - back_at
        accepting_s = next((t for t in sender.acknowledged_at if t >= back_at), back_at) - back_at
        time.sleep(5)
        sender.stopping.set()
        sender.thread.join()
        deadline = time.monotonic() + 300
        while (got := counted(dsn)) != sender.accepted and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = flow.poll() is None
    print(
        f"{args.service} down {back_at - down_at:.0f} s at {args.rate:,} events/s: "
        f"dataflow alive {alive}; /readyz while down {ready_while_down}; "
        f"caught up {caught_up_s:.1f} s after it was back "
        f"({owed:,} events accepted by then); the edge acknowledged calls again "
        f"{accepting_s:.1f} s after it was back; {sender.unavailable} calls answered "
        f"UNAVAILABLE and sent again; counted {got:,} of {sender.accepted:,} accepted; "
        f"dataflow peak RSS {before_kb / 1024:.0f} MB before, "
        f"{peak.peak_kb / 1024:.0f} MB by the end"
    )
    if got != sender.accepted or not alive:
        raise SystemExit("lost or double-counted events, or the dataflow exited")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=["postgres", "kafka"], default="postgres")
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=2000, help="events/s")
    parser.add_argument("--warmup-seconds", type=float, default=15.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pulse-soak-") as tmp:
        work = Path(tmp)
        stack_env = {
            **os.environ,
            "PULSE_STACK_DATA_DIR": str(work / "stack"),
            "PULSE_KAFKA_PORT": str(free_port()),
            "PULSE_KAFKA_CONTROLLER_PORT": str(free_port()),
            "PULSE_PG_PORT": str(free_port()),
        }

        def stack(*command: str) -> None:
            subprocess.run(
                ["/bin/bash", str(ROOT / "scripts" / "stack.sh"), *command],
                env=stack_env,
                check=True,
                capture_output=True,
            )

        bootstrap = f"127.0.0.1:{stack_env['PULSE_KAFKA_PORT']}"
        dsn = f"postgresql://pulse:pulse@127.0.0.1:{stack_env['PULSE_PG_PORT']}/pulse"
        stack("up")
        try:
            soak(args, work, bootstrap, dsn, stack)
        finally:
            stack("clean")


if __name__ == "__main__":
    main()
