"""gRPC -> Kafka -> Bytewax -> TimescaleDB, checked to the event against a reference."""

import asyncio
import random
import time
from datetime import datetime, timedelta

import psycopg

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.e2e.conftest import Pipeline
from tests.reference import aggregate, minute_of

MINUTE_MS = 60_000
Key = tuple[str, str, datetime]


def raw(campaign: str, event_type: str, ts: int, value: float, event_id: str) -> pb.RawEvent:
    return pb.RawEvent(
        campaign_id=campaign,
        event_type=event_type,
        timestamp=ts,
        value=value,
        event_id=event_id,
        dimensions={"user_id": f"u{ts % 97}"},
    )


def table(dsn: str, campaigns: list[str]) -> dict[Key, tuple[int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT campaign_id, event_type, bucket, event_count, value_sum FROM event_metrics"
            " WHERE campaign_id = ANY(%s)",
            (campaigns,),
        ).fetchall()
    return {(c, t, b): (n, s) for c, t, b, n, s in rows}


def wait_for(dsn: str, campaigns: list[str], expected: dict[Key, tuple[int, float]]) -> None:
    deadline = time.monotonic() + 90
    got = table(dsn, campaigns)
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        got = table(dsn, campaigns)
    assert got == expected


def test_events_through_the_edge_are_aggregated_exactly(pipeline: Pipeline) -> None:
    rng = random.Random(7)
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS - 10 * MINUTE_MS  # four whole minutes, ten minutes ago
    campaigns = [f"e2e-{rng.randrange(10**9)}-{i}" for i in range(4)]
    types = ["impression", "click", "conversion"]

    # Minute by minute, each minute's events shuffled (out of order within the window).
    valid: list[pb.RawEvent] = []
    for minute in range(4):
        chunk = [
            raw(
                rng.choice(campaigns),
                rng.choice(types),
                base + minute * MINUTE_MS + rng.randrange(MINUTE_MS),
                rng.randrange(0, 400) / 8,
                f"m{minute}-{i}",
            )
            for i in range(1500)
        ]
        rng.shuffle(chunk)
        valid += chunk
    # Push every campaign's watermark past minute 2, so minutes 0-2 are closed.
    valid += [raw(c, "click", base + 3 * MINUTE_MS + 50_000, 1.0, f"tail-{c}") for c in campaigns]

    invalid = {
        100: (raw("", "click", base, 1.0, "bad-campaign"), pb.REJECT_REASON_MISSING_FIELD),
        2000: (
            raw(campaigns[0], "click", now + 3_600_000, 1.0, "bad-future"),
            pb.REJECT_REASON_TIMESTAMP_IN_FUTURE,
        ),
        4321: (
            raw(campaigns[1], "click", base, float("nan"), "bad-value"),
            pb.REJECT_REASON_INVALID_VALUE,
        ),
        5999: (raw(campaigns[2], "x" * 65, base, 1.0, "bad-type"), pb.REJECT_REASON_FIELD_TOO_LONG),
    }
    stream = list(valid)
    for index in sorted(invalid):
        stream.insert(index, invalid[index][0])

    # Second call, after the first is acknowledged: two events of closed minutes (late,
    # so they correct their windows) and one of the still-open last minute (on time).
    late = [
        raw(campaigns[0], "click", base + MINUTE_MS + 5, 2.0, "late-1"),
        raw(campaigns[1], "impression", base + 2 * MINUTE_MS + 5, 0.0, "late-2"),
    ]
    on_time = [raw(campaigns[0], "click", base + 3 * MINUTE_MS + 1, 0.5, "on-time")]

    async def send() -> tuple[pb.IngestResponse, pb.IngestResponse]:
        async with PulseClient(pipeline.target, batch_size=250) as client:
            first = await client.ingest(stream)
            second = await client.ingest(late + on_time)
            return first, second

    first, second = asyncio.run(send())
    assert (first.accepted, first.dropped) == (len(valid), len(invalid))
    assert [(r.index, r.event_id, r.reason) for r in first.rejections] == [
        (i, invalid[i][0].event_id, invalid[i][1]) for i in sorted(invalid)
    ]
    assert (second.accepted, second.dropped) == (3, 0)

    expected = aggregate(
        (e.campaign_id, e.event_type, e.timestamp, e.value) for e in valid + on_time + late
    )
    wait_for(pipeline.dsn, campaigns, expected)

    # The late events corrected their closed windows: counted, and marked as late.
    with psycopg.connect(pipeline.dsn) as conn:
        corrected = conn.execute(
            "SELECT campaign_id, bucket, event_count - on_time_count, late_events, closed"
            " FROM event_metrics WHERE campaign_id = ANY(%s) AND late_events > 0"
            " ORDER BY campaign_id",
            (campaigns,),
        ).fetchall()
    assert corrected == sorted((e.campaign_id, minute_of(e.timestamp), 1, 1, True) for e in late)

    # QueryMetrics answers the same numbers.
    async def query() -> dict[Key, tuple[int, float]]:
        out: dict[Key, tuple[int, float]] = {}
        async with PulseClient(pipeline.target) as client:
            for campaign in campaigns:
                points = await client.query(
                    pb.MetricsRequest(
                        campaign_id=campaign, start_ms=base, end_ms=base + 5 * MINUTE_MS
                    )
                )
                for p in points:
                    out[(p.campaign_id, p.event_type, minute_of(p.bucket_start_ms))] = (
                        p.event_count,
                        p.value_sum,
                    )
        return out

    assert asyncio.run(query()) == expected
    assert min(k[2] for k in expected) == minute_of(base)
    assert max(k[2] for k in expected) == minute_of(base) + timedelta(minutes=3)
