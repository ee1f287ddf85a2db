"""A dataflow killed with SIGKILL and restarted neither loses nor double counts events."""

import asyncio
import random
import threading
import time

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import wait_for
from tests.reference import aggregate

MINUTE_MS = 60_000


def test_kill_and_restart_the_dataflow_while_events_stream(pipeline: Pipeline) -> None:
    rng = random.Random(11)
    now = int(time.time() * 1000)
    start = now - now % MINUTE_MS - 6 * MINUTE_MS
    campaigns = [f"crash-{rng.randrange(10**9)}-{i}" for i in range(6)]
    n = 60_000
    events = [
        pb.RawEvent(
            campaign_id=rng.choice(campaigns),
            event_type=rng.choice(["impression", "click"]),
            timestamp=start + i * 5 * MINUTE_MS // n + rng.randrange(3000),
            value=rng.randrange(100) / 4,
            event_id=f"crash-{i}",
        )
        for i in range(n)
    ]
    calls = [events[i : i + 5000] for i in range(0, n, 5000)]

    def crash_twice() -> None:
        for delay in (1.0, 1.5):
            time.sleep(delay)
            pipeline.kill("flow")
            pipeline.start("flow")

    async def send() -> int:
        accepted = 0
        async with PulseClient(pipeline.target, batch_size=500) as client:
            for call in calls:
                accepted += (await client.ingest(call)).accepted
                await asyncio.sleep(0.2)
        return accepted

    crasher = threading.Thread(target=crash_twice)
    crasher.start()
    accepted = asyncio.run(send())
    crasher.join()
    assert accepted == n
    assert pipeline.starts == 4  # serve once, flow three times

    expected = aggregate((e.campaign_id, e.event_type, e.timestamp, e.value) for e in events)
    wait_for(pipeline.dsn, campaigns, expected)
