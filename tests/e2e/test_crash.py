"""A dataflow killed with SIGKILL and restarted neither loses nor double counts events."""

import asyncio
import random
import threading
import time

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import table, wait_for
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

    progress = {"calls_done": 0}
    kills: list[tuple[int, int]] = []  # (events counted in the table, calls done) at each kill

    def crash_twice() -> None:
        counted = 0
        for _ in range(2):
            # Kill only once the running flow has written rows beyond what we saw before.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now_counted = sum(n for n, _s in table(pipeline.dsn, campaigns).values())
                if now_counted > counted:
                    break
                time.sleep(0.05)
            counted = now_counted
            kills.append((counted, progress["calls_done"]))
            pipeline.kill("flow")
            pipeline.start("flow")

    async def send() -> int:
        accepted = 0
        async with PulseClient(pipeline.target, batch_size=500) as client:
            for call in calls:
                accepted += (await client.ingest(call)).accepted
                progress["calls_done"] += 1
                await asyncio.sleep(0.3)
        return accepted

    crasher = threading.Thread(target=crash_twice)
    crasher.start()
    accepted = asyncio.run(send())
    crasher.join()
    assert accepted == n
    # Both kills hit a flow that had written rows, while events were still being sent.
    assert len(kills) == 2
    assert 0 < kills[0][0] < kills[1][0] < n
    assert all(calls_done < len(calls) for _counted, calls_done in kills)

    expected = aggregate((e.campaign_id, e.event_type, e.timestamp, e.value) for e in events)
    wait_for(pipeline.dsn, campaigns, expected)
