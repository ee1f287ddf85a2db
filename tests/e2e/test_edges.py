"""Two edge replicas serve at once, both writing heartbeats: results stay exact.

The edge is stateless: each replica validates, writes to Kafka and heartbeats every
partition with its own clock. Clients spread over both, and a client that retries a
call on the other replica (whose dedup memory never saw it) has its events dropped by
the dataflow as retries. Every row equals the reference computed from the log.
"""

import asyncio
import random
import subprocess
import sys
from pathlib import Path

from ingest.client import PulseClient
from tests.conftest import Stack, Topics
from tests.e2e.conftest import running
from tests.e2e.test_real_clients import env, event, now_ms, wait_exact
from tests.ports import free_port


def test_two_edge_replicas_serving_at_once_give_exact_results(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    campaigns = [f"edges-{i}" for i in range(10)]
    with running(stack, database, topics, tmp_path, env()) as pipeline:
        second = f"127.0.0.1:{free_port()}"
        replica_env = {
            **pipeline.env,
            "PULSE_GRPC_PORT": second.rsplit(":", 1)[1],
            "PULSE_METRICS_PORT": str(free_port()),
            "PULSE_HEALTH_PORT": str(free_port()),
            "PULSE_HTTP_PORT": str(free_port()),
        }
        with (tmp_path / "serve-replica.log").open("wb") as log:
            replica = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve"],
                env=replica_env,
                stdout=log,
                stderr=log,
                cwd=tmp_path,
            )
        try:
            waited = [sys.executable, "-m", "cli", "health", "--target", second, "--wait", "30"]
            subprocess.run(waited, check=True, capture_output=True, timeout=60)
            sent = asyncio.run(send(pipeline.target, second, campaigns))
            buckets, _late, got = wait_exact(pipeline, campaigns)
        finally:
            replica.terminate()
            replica.wait(timeout=30)
    assert sum(b.count for k, b in buckets.items() if k[0] in campaigns) == sent
    assert len(got) > 0
    beats = (tmp_path / "serve-replica.log").read_text()
    assert "heartbeat" in beats.lower()


async def send(first: str, second: str, campaigns: list[str]) -> int:
    """Calls spread over both replicas at once; every fourth call is sent to the other
    replica again, as a client retrying elsewhere. Returns the distinct events sent."""
    rng = random.Random(11)
    distinct = 0
    async with PulseClient(first) as a, PulseClient(second) as b:
        for call in range(16):
            events = [
                event(rng.choice(campaigns), now_ms() - rng.randrange(1500), f"{call}-{i}", rng)
                for i in range(1500)
            ]
            half = len(events) // 2
            one, other = (a, b) if call % 2 else (b, a)
            replies = await asyncio.gather(one.ingest(events[:half]), other.ingest(events[half:]))
            assert sum(r.accepted for r in replies) == len(events)
            if call % 4 == 0:  # the same events again, through the other replica
                again = await asyncio.gather(other.ingest(events[:half]), one.ingest(events[half:]))
                assert sum(r.accepted + r.duplicates for r in again) == len(events)
            distinct += len(events)
            await asyncio.sleep(0.3)
    return distinct
