"""100,000 campaigns through the real Bytewax runtime into the real TimescaleDB: every
window row, hourly rollup and slice exact against an independent reference."""

import random
from datetime import timedelta
from typing import Any

import psycopg
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.aggregate import FlowConfig, build_flow
from pulse.dimensions import GroupBy
from sinks.timescale_writer import TimescaleSink
from tests.reference import Ev, minute_of, slices_reference, windows_reference
from tests.unit.test_flow import to_message

MINUTE = 60_000
HOUR = 3_600_000
LATENESS = 10_000
IDLE = 30_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR
KEYS = 100_000
EVENTS = 120_000
PARTITIONS = 2


def stream(prefix: str) -> list[Ev]:
    """Event i for campaign i mod 100,000, 2 ms apart (3 one-minute windows per key at
    most), with a jitter that makes a few events late; heartbeats close the last ones."""
    rng = random.Random(5)
    offsets = [0] * PARTITIONS
    out: list[Ev] = []
    for i in range(EVENTS):
        campaign = i % KEYS
        p = campaign % PARTITIONS
        ts = T0 + 2 * i - rng.randrange(0, 3000)
        country = rng.choice(["DE", "FR", "US"])
        out.append(
            Ev(p, offsets[p], f"{prefix}{campaign}", "impression", ts, rng.randrange(80) / 4,
               f"u{rng.randrange(1000)}", dims=(("country", country),))
        )  # fmt: skip
        offsets[p] += 1
    end = T0 + 2 * EVENTS + MINUTE + IDLE + 1
    for p in range(PARTITIONS):
        out.append(Ev(p, offsets[p], heartbeat=end))
    return out


def test_a_hundred_thousand_campaigns_are_exact(database: str) -> None:
    prefix = f"card{random.randrange(10**9)}-"
    records = stream(prefix)
    counted: list[Ev] = []
    buckets, late = windows_reference(
        records, MINUTE, LATENESS, IDLE, correction_ms=HOUR, counted=counted
    )
    slices = slices_reference(counted, MINUTE, [["country"]], 1000)
    config = FlowConfig(
        window_ms=MINUTE,
        lateness_ms=LATENESS,
        idle_ms=IDLE,
        source_topic="events.raw",
        late_topic="events.late",
        dlq_topic="events.dlq",
        correction_ms=HOUR,
        refresh_ms=1000,
        group_by=GroupBy.parse("country"),
    )
    side: list[Any] = []
    flow = build_flow(
        "test_cardinality",
        config,
        TestingSource([to_message(e) for e in records], 2000),
        store_sink=TimescaleSink(database, "events.raw"),
        side_sink=TestingSink(side),
        notification_sink=TestingSink([]),
    )
    run_main(flow, epoch_interval=timedelta(seconds=1))

    like = f"{prefix}%"
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT campaign_id, bucket, event_count, value_sum, value_min, value_max,"
            " unique_users, closed FROM event_metrics WHERE campaign_id LIKE %s",
            (like,),
        ).fetchall()
        hours = conn.execute(
            "SELECT campaign_id, bucket, event_count, unique_users, sketch_event_count"
            " FROM event_metrics_hourly WHERE campaign_id LIKE %s",
            (like,),
        ).fetchall()
        sliced = conn.execute(
            "SELECT campaign_id, bucket, dimensions->>'country', event_count, value_sum"
            " FROM event_metrics_by_dimensions WHERE campaign_id LIKE %s",
            (like,),
        ).fetchall()
    assert len({c for c, *_ in rows}) == KEYS
    assert {(c, b): tuple(rest) for c, b, *rest in rows} == {
        (c, minute_of(s)): (b.count, b.total, b.low, b.high, len(b.users), True)
        for (c, _t, s), b in buckets.items()
        if b.count
    }
    per_hour: dict[tuple[str, int], tuple[int, set[str]]] = {}
    for (c, _t, s), b in buckets.items():
        n, users = per_hour.get((c, s - s % HOUR), (0, set()))
        per_hour[(c, s - s % HOUR)] = (n + b.count, users | b.users)
    assert {(c, b): tuple(rest) for c, b, *rest in hours} == {
        (c, minute_of(h)): (n, len(users), n) for (c, h), (n, users) in per_hour.items() if n
    }
    assert {(c, b, country): (n, v) for c, b, country, n, v in sliced} == {
        (c, minute_of(s), dims[0][1]): (b.count, b.total)
        for (c, _t, s, _name, dims), b in slices.items()
    }
    assert sorted((r.source_partition, r.source_offset) for r in side) == sorted(late)
