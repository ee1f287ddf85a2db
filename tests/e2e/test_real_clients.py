"""Real clients through the deployables: buffered uploads and retries, exact to the event.

- A buffered client sends events minutes, hours and days old, for campaigns that are
  live and for ones never seen: they correct their closed windows (every column, the
  hour and day rollups, QueryMetrics); events beyond the correction horizon go to the
  late topic and its metric.
- A retrying client re-sends whole calls and parts of calls, a call the edge died in, a
  call the edge failed with UNAVAILABLE while Kafka stalled, and calls after the
  dataflow was killed with SIGKILL between the original and the retry: every distinct
  event counts once, and the duplicates metric counts every retry.
- A backfill is corrected exactly while the dataflow is killed, and a call sent again
  to the same edge is answered as duplicates.

Every figure is checked against a reference computed from the `events.raw` log.
"""

import asyncio
import os
import random
import re
import signal
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import grpc
import psycopg
import pytest

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse import sketches
from pulse.timeutil import datetime_to_ms
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline, listener_pid, running
from tests.e2e.test_analytics import read_log, side_sources, stored, within_rank
from tests.reference import Bucket, windows_reference

WINDOW_S, LATENESS_S, IDLE_S = 10, 2, 5
HOUR_MS, DAY_MS = 3_600_000, 86_400_000
CORRECTION_S = 7 * 86_400
DEDUP_S = 3600
PARTITIONS = 3


def env(**extra: str) -> dict[str, str]:
    return {
        "PULSE_WINDOW_SECONDS": str(WINDOW_S),
        "PULSE_ALLOWED_LATENESS_SECONDS": str(LATENESS_S),
        "PULSE_IDLE_TIMEOUT_SECONDS": str(IDLE_S),
        # The edge accepts events up to 8 days old; the flow corrects up to 7 days.
        "PULSE_MAX_EVENT_AGE_SECONDS": str(8 * 86_400),
        "PULSE_CORRECTION_HORIZON_SECONDS": str(CORRECTION_S),
        "PULSE_DEDUP_HORIZON_SECONDS": str(DEDUP_S),
        **extra,
    }


@pytest.fixture
def clients(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    # No dedup at the edge: every retry reaches the dataflow. A Kafka that does not answer
    # for 2 s fails a call with UNAVAILABLE.
    extra = {"PULSE_EDGE_DEDUP_IDS": "0", "PULSE_PRODUCE_TIMEOUT_SECONDS": "2"}
    with running(stack, database, topics, tmp_path, env(**extra)) as started:
        yield started


@contextmanager
def kafka_stoppable(pipeline: Pipeline) -> Iterator[Callable[[], None]]:
    """A function that stops the broker (SIGSTOP); it runs again when the block ends."""
    pid = listener_pid(int(pipeline.bootstrap.rsplit(":", 1)[1]))
    try:
        yield lambda: os.kill(pid, signal.SIGSTOP)
    finally:
        os.kill(pid, signal.SIGCONT)


def now_ms() -> int:
    return int(time.time() * 1000)


def event(campaign: str, ts: int, event_id: str, rng: random.Random) -> pb.RawEvent:
    return pb.RawEvent(
        campaign_id=campaign,
        event_type=rng.choice(["impression", "impression", "click"]),
        timestamp=ts,
        value=rng.randrange(0, 4000) / 8,
        event_id=event_id,
        dimensions={"user_id": f"u{rng.randrange(500)}"},
    )


def flow_metric(pipeline: Pipeline, name: str) -> float:
    """A counter of the dataflow's /metrics, summed over its labels (0 if absent)."""
    url = f"http://127.0.0.1:{pipeline.metrics_ports['flow']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def reference(
    pipeline: Pipeline,
) -> tuple[dict[tuple[str, str, int], Bucket], list[tuple[int, int]]]:
    log = read_log(pipeline.bootstrap, pipeline.topics.raw)
    return windows_reference(
        log, WINDOW_S * 1000, LATENESS_S * 1000, IDLE_S * 1000, CORRECTION_S * 1000, DEDUP_S
    )


def exact(b: Bucket) -> tuple[object, ...]:
    return (b.count, b.total, b.low, b.high, b.first, b.last, b.late, True, b.on_time)


def wait_exact(
    pipeline: Pipeline, campaigns: list[str]
) -> tuple[
    dict[tuple[str, str, int], Bucket],
    list[tuple[int, int]],
    dict[tuple[str, str, int], tuple[object, ...]],
]:
    """Once heartbeats closed every window: the reference, and the stored rows equal to it."""
    time.sleep(WINDOW_S + IDLE_S + 2)
    buckets, late = reference(pipeline)
    want = {k: exact(b) for k, b in buckets.items() if k[0] in campaigns}
    got: dict[tuple[str, str, int], tuple[object, ...]] = {}

    def same() -> bool:
        got.clear()
        got.update(stored(pipeline.dsn, campaigns))
        return {k: v[:9] for k, v in got.items()} == want

    deadline = time.monotonic() + 120
    while not same() and time.monotonic() < deadline:
        time.sleep(1)
    assert {k: v[:9] for k, v in got.items()} == want
    return buckets, late, got


def check_sketches(
    buckets: dict[tuple[str, str, int], Bucket], got: dict[tuple[str, str, int], tuple[object, ...]]
) -> None:
    for key, row in got.items():
        b = buckets[key]
        if not b.count:
            continue
        users = cast(int, row[9])
        assert abs(users - len(b.users)) <= sketches.HLL_RELATIVE_ERROR * len(b.users), key
        for q, estimate in zip(sketches.QUANTILES, row[10:13], strict=True):
            assert within_rank(b.values, q, cast(float | None, estimate)), (key, q)


def rollup_reference(
    buckets: dict[tuple[str, str, int], Bucket], campaigns: list[str], length_ms: int
) -> dict[tuple[str, str, int], tuple[int, int, int, float, set[str]]]:
    """(count, on time, late, sum, users) per hour or day."""
    out: dict[tuple[str, str, int], tuple[int, int, int, float, set[str]]] = {}
    for (c, t, start), b in buckets.items():
        if c not in campaigns:
            continue
        key = (c, t, start - start % length_ms)
        n, on, late, total, users = out.get(key, (0, 0, 0, 0.0, set()))
        out[key] = (n + b.count, on + b.on_time, late + b.late, total + b.total, users | b.users)
    return out


def check_rollups(
    pipeline: Pipeline, buckets: dict[tuple[str, str, int], Bucket], campaigns: list[str]
) -> None:
    for view, length in (("event_metrics_hourly", HOUR_MS), ("event_metrics_daily", DAY_MS)):
        want = rollup_reference(buckets, campaigns, length)
        got: dict[tuple[str, str, int], tuple[object, ...]] = {}

        def load(
            view: str = view, got: dict[tuple[str, str, int], tuple[object, ...]] = got
        ) -> bool:
            with psycopg.connect(pipeline.dsn) as conn:
                rows = conn.execute(
                    f"SELECT campaign_id, event_type, bucket, event_count, on_time_count,"
                    f" late_events, value_sum, unique_users, sketch_event_count FROM {view}"
                    " WHERE campaign_id = ANY(%s)",
                    (campaigns,),
                ).fetchall()
            got.clear()
            got.update({(c, t, datetime_to_ms(b)): tuple(rest) for c, t, b, *rest in rows})
            # Every merged sketch is written (rollup rows are refreshed every second).
            return all(r[5] == r[0] for r in got.values())

        wait_until(f"{view} sketches", load, 60)
        assert {k: v[:4] for k, v in got.items()} == {
            k: (n, on, late, total) for k, (n, on, late, total, _u) in want.items()
        }
        for key, (n, *_rest, users) in want.items():
            estimate = cast(int, got[key][4])
            assert abs(estimate - len(users)) <= sketches.HLL_RELATIVE_ERROR * len(users), key
            assert n == got[key][5]


async def query_points(
    pipeline: Pipeline, campaign: str, start: int, end: int, resolution: pb.Resolution.ValueType
) -> dict[tuple[str, int], tuple[int, int, int, float]]:
    async with PulseClient(pipeline.target) as client:
        points = await client.query(
            pb.MetricsRequest(
                campaign_id=campaign, start_ms=start, end_ms=end, resolution=resolution
            )
        )
    return {
        (p.event_type, p.bucket_start_ms): (
            p.event_count,
            p.on_time_count,
            p.late_events,
            p.value_sum,
        )
        for p in points
    }


def check_queries(
    pipeline: Pipeline, buckets: dict[tuple[str, str, int], Bucket], campaigns: list[str]
) -> None:
    now = now_ms()
    for campaign in campaigns:
        minutes = asyncio.run(
            query_points(pipeline, campaign, now - 8 * DAY_MS, now + 60_000, pb.RESOLUTION_MINUTE)
        )
        assert minutes == {
            (t, s): (b.count, b.on_time, b.late, b.total)
            for (c, t, s), b in buckets.items()
            if c == campaign
        }
        for resolution, length in ((pb.RESOLUTION_HOUR, HOUR_MS), (pb.RESOLUTION_DAY, DAY_MS)):
            got = asyncio.run(
                query_points(pipeline, campaign, now - 8 * DAY_MS, now + 60_000, resolution)
            )
            want = rollup_reference(buckets, [campaign], length)
            assert got == {
                (t, s): (n, on, late, total)
                for (_c, t, s), (n, on, late, total, _u) in want.items()
            }


def test_a_buffered_client_corrects_closed_windows_exactly(clients: Pipeline) -> None:
    rng = random.Random(31)
    tag = rng.randrange(10**9)
    live = [f"live-{tag}-{i}" for i in range(3)]
    fresh = [f"fresh-{tag}-{i}" for i in range(3)]
    campaigns = live + fresh
    ages = {
        "5 min": 5 * 60_000,
        "2 h": 2 * HOUR_MS,
        "6 days": 6 * DAY_MS,
        "beyond": 7 * DAY_MS + 6 * HOUR_MS,
    }
    ids = iter(range(10**9))

    def current(n: int) -> list[pb.RawEvent]:
        t = now_ms()
        return [
            event(rng.choice(live), t - rng.randrange(0, 1500), f"c{next(ids)}", rng)
            for _ in range(n)
        ]

    def buffered() -> list[pb.RawEvent]:
        t = now_ms()
        out = [
            event(c, t - age + rng.randrange(0, 90_000), f"b{next(ids)}", rng)
            for c in campaigns
            for age in ages.values()
            for _ in range(300)
        ]
        rng.shuffle(out)  # a buffer drains in any order
        return out

    async def send() -> list[pb.IngestResponse]:
        async with PulseClient(clients.target, batch_size=500) as client:
            replies = [await client.ingest(current(3000))]
            await asyncio.sleep(1)
            replies.append(await client.ingest(buffered()))
            await asyncio.sleep(1)
            replies.append(await client.ingest(current(3000)))
            return replies

    replies = asyncio.run(send())
    assert [r.accepted for r in replies] == [3000, 300 * len(ages) * len(campaigns), 3000]
    buckets, late, got = wait_exact(clients, campaigns)
    mine = {k: b for k, b in buckets.items() if k[0] in campaigns}
    corrected = sum(b.count - b.on_time for b in mine.values())
    beyond = 300 * len(campaigns)
    assert corrected == 300 * 3 * len(campaigns)  # 5 minutes, 2 hours and 6 days old
    assert len(late) == beyond
    assert sum(b.on_time for b in mine.values()) == 6000
    check_sketches(buckets, got)
    check_rollups(clients, buckets, campaigns)
    check_queries(clients, buckets, campaigns)
    # Beyond the horizon: on the late topic, once each, and in the metric.
    assert len(set(side_sources(clients.bootstrap, clients.topics.late))) == beyond
    wait_until(
        "the late and corrected counters",
        lambda: (
            (
                flow_metric(clients, "pulse_flow_late_events_total"),
                flow_metric(clients, "pulse_flow_corrected_events_total"),
            )
            == (beyond, corrected)
        ),
        30,
    )


def counted(dsn: str, campaigns: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(event_count), 0) FROM event_metrics WHERE campaign_id = ANY(%s)",
            (campaigns,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_retries_count_once_across_edge_deaths_kafka_stalls_and_kills(clients: Pipeline) -> None:
    rng = random.Random(47)
    tag = rng.randrange(10**9)
    campaigns = [f"retry-{tag}-{i}" for i in range(8)]

    def call(n: int, first: int) -> list[pb.RawEvent]:
        t = now_ms()
        return [
            event(rng.choice(campaigns), t - rng.randrange(0, 1500), f"r{first + i}", rng)
            for i in range(n)
        ]

    calls: list[list[pb.RawEvent]] = []
    replies: list[pb.IngestResponse] = []
    unavailable: list[grpc.StatusCode] = []

    async def send(events: list[pb.RawEvent]) -> None:
        """One call, retried as a client would while the edge answers UNAVAILABLE."""
        for attempt in range(10):
            async with PulseClient(clients.target, batch_size=250) as client:
                try:
                    replies.append(await client.ingest(events))
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 9:
                        raise
            await asyncio.sleep(1)

    async def send_and_lose(events: list[pb.RawEvent], halfway: Callable[[], None]) -> None:
        """`halfway` runs after four of the call's eight messages: the call fails."""

        async def batches() -> AsyncIterator[pb.EventBatch]:
            for k in range(8):
                if k == 4:
                    await asyncio.sleep(0.5)  # the first half reaches Kafka
                    halfway()
                yield pb.EventBatch(events=events[k * 250 : (k + 1) * 250])

        async with PulseClient(clients.target) as client:
            try:
                await client.ingest_batches(batches())
            except grpc.aio.AioRpcError as exc:
                unavailable.append(exc.code())

    def run(coro: Coroutine[object, object, None]) -> None:
        asyncio.run(coro)

    for i in range(4):
        calls.append(call(2000, 2000 * i))
        run(send(calls[i]))
    run(send(calls[1]))  # a whole call again (its reply was lost)
    run(send(calls[2][500:1500]))  # part of a call again
    calls.append(call(2000, 8000))
    run(send_and_lose(calls[4], lambda: clients.kill("serve")))
    # The edge died mid-call: the client sees the connection drop (UNAVAILABLE, or
    # INTERNAL when the stream was cut in the middle of a message).
    assert unavailable[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    clients.start("serve")
    clients.wait_serving()
    run(send(calls[4]))  # the whole call again, to the restarted edge
    # Kafka stalls mid-call (after the first 1,000 events were acknowledged): the edge
    # answers UNAVAILABLE once its 2 s are up.
    calls.append(call(2000, 10000))
    with kafka_stoppable(clients) as stop_kafka:
        run(send_and_lose(calls[5], stop_kafka))
    assert unavailable[1] == grpc.StatusCode.UNAVAILABLE, unavailable
    run(send(calls[5]))  # the whole call again, once Kafka answers
    for i in (6, 7):
        calls.append(call(2000, 2000 * i))
        run(send(calls[i]))
    # The dataflow dies between the original calls and their retries.
    wait_until("call 7 counted", lambda: counted(clients.dsn, campaigns) >= 16_000, 60)
    clients.kill("flow")
    clients.start("flow")
    run(send(calls[7]))
    run(send(calls[6][:700]))
    calls.append(call(2000, 16000))
    run(send(calls[8]))
    run(send(calls[8]))

    distinct = {e.event_id for c in calls for e in c}
    assert len(distinct) == 18_000
    buckets, late, _got = wait_exact(clients, campaigns)
    assert late == []
    assert sum(b.count for k, b in buckets.items() if k[0] in campaigns) == len(distinct)
    # The duplicates: every record of the log beyond the first of its id.
    log = [r for r in read_log(clients.bootstrap, clients.topics.raw) if r.heartbeat is None]
    retries = len(log) - len(distinct)
    assert retries >= 2000 + 1000 + 2000 + 700 + 2000
    wait_until(
        "the duplicates counter",
        lambda: flow_metric(clients, "pulse_flow_duplicate_events_total") == retries,
        60,
    )
    assert all(r.duplicates == 0 for r in replies)  # no dedup at this edge


@pytest.fixture
def edge_dedup(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    with running(stack, database, topics, tmp_path, env()) as started:
        yield started


def test_a_backfill_survives_sigkill_and_the_edge_answers_retries(edge_dedup: Pipeline) -> None:
    """80,000 events 30 minutes to 3 hours old, while the dataflow is killed twice in the
    middle of correcting their windows; then a call sent again, answered by the edge."""
    pipeline = edge_dedup
    rng = random.Random(53)
    tag = rng.randrange(10**9)
    campaigns = [f"backfill-{tag}-{i}" for i in range(10)]
    t = now_ms()
    calls = [
        [
            event(
                rng.choice(campaigns), t - rng.randrange(30 * 60_000, 3 * HOUR_MS), f"b{c}-{i}", rng
            )
            for i in range(10_000)
        ]
        for c in range(8)
    ]
    kills: list[int] = []
    sent = [0]

    def killer() -> None:
        for k in range(2):
            # Kill while calls stream in, once more of the backfill is stored than before.
            while sent[0] < 2 + 3 * k:
                time.sleep(0.05)
            seen = kills[-1] if kills else 0

            def more(seen: int = seen) -> bool:
                return counted(pipeline.dsn, campaigns) > seen

            wait_until("progress", more)
            kills.append(counted(pipeline.dsn, campaigns))
            pipeline.kill("flow")
            pipeline.start("flow")

    async def send() -> list[pb.IngestResponse]:
        out = []
        async with PulseClient(pipeline.target, batch_size=500) as client:
            for events in calls:
                out.append(await client.ingest(events))
                sent[0] += 1
                await asyncio.sleep(0.6)
        return out

    thread = threading.Thread(target=killer)
    thread.start()
    replies = asyncio.run(send())
    thread.join()
    assert [r.accepted for r in replies] == [10_000] * 8
    assert len(kills) == 2 and all(0 < k < 80_000 for k in kills), kills

    async def again() -> pb.IngestResponse:
        async with PulseClient(pipeline.target, batch_size=500) as client:
            return await client.ingest(calls[3])

    reply = asyncio.run(again())
    assert (reply.accepted, reply.duplicates) == (0, 10_000)
    buckets, late, got = wait_exact(pipeline, campaigns)
    assert late == []
    mine = {k: b for k, b in buckets.items() if k[0] in campaigns}
    assert sum(b.count for b in mine.values()) == 80_000
    assert sum(b.on_time for b in mine.values()) == 0
    check_sketches(buckets, got)
    check_rollups(pipeline, buckets, campaigns)
    print(f"\nSIGKILLs when {kills[0]:,} and {kills[1]:,} of 80,000 backfilled events were stored")
