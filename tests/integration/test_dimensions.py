"""Dimension slices end to end on the real Bytewax runtime and the real TimescaleDB:
crashes and replays, late corrections, the __other__ overflow, SQL sums and QueryMetrics."""

import asyncio
import random
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Message

from flows import metrics
from flows.aggregate import FlowConfig, build_flow
from pulse.dimensions import OTHER, GroupBy
from pulse.query import MetricsQuery
from query.metrics import TimescaleMetricsReader
from sinks.timescale_writer import StoreItem, TimescaleSink
from tests.reference import Ev, minute_of, slices_reference, windows_reference
from tests.unit.test_flow import to_message

MINUTE = 60_000
HOUR = 3_600_000
LATENESS = 10_000
IDLE = 30_000
CORRECTION = 5 * MINUTE
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR
PARTITIONS = 3
MAX_VALUES = 4
SETS = [["country"], ["country", "device"]]
COUNTRIES = ["DE", "FR", "US", "JP", "BR", "IN"]


class CrashError(Exception):
    """Raised inside the dataflow to kill it mid-stream."""


class CrashingStore(DynamicSink[StoreItem]):
    """The real TimescaleDB sink; raises after `crash_at` batches it wrote."""

    def __init__(self, dsn: str, crash_at: int | None) -> None:
        self._sink = TimescaleSink(dsn, "events.raw")
        self._crash_at = crash_at
        self.batches = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        inner = self._sink.build(step_id, worker_index, worker_count)
        outer = self

        class _Part(StatelessSinkPartition[StoreItem]):
            def write_batch(self, items: list[StoreItem]) -> None:
                inner.write_batch(items)
                outer.batches += 1
                if outer._crash_at is not None and outer.batches >= outer._crash_at:
                    raise CrashError

            def close(self) -> None:
                inner.close()

        return _Part()


def stream(prefix: str, seed: int, n: int) -> list[Ev]:
    """6 campaigns over 3 partitions, stragglers (late, mostly corrected), heartbeats."""
    rng = random.Random(seed)
    offsets = [0] * PARTITIONS
    clock = T0
    out: list[Ev] = []
    for _ in range(n):
        clock += rng.randrange(0, 400)
        if rng.random() < 0.03:
            for p in range(PARTITIONS):
                out.append(Ev(p, offsets[p], heartbeat=clock))
                offsets[p] += 1
            continue
        campaign = rng.randrange(6)
        p = campaign % PARTITIONS
        ts = clock - rng.randrange(0, 6000)
        if rng.random() < 0.04:
            ts -= rng.randrange(10_000, 6 * MINUTE)
        dims = []
        if rng.random() < 0.9:
            dims.append(("country", rng.choice(COUNTRIES)))
        if rng.random() < 0.9:
            dims.append(("device", rng.choice(["ios", "android"])))
        out.append(
            Ev(
                p,
                offsets[p],
                f"{prefix}{campaign}",
                rng.choice(["click", "view"]),
                ts,
                rng.randrange(0, 80) / 4,
                f"u{rng.randrange(40)}",
                dims=tuple(dims),
            )
        )
        offsets[p] += 1
    return out


def run_with_crashes(dsn: str, items: list[Message], tmp_path: Path) -> int:
    config = FlowConfig(
        window_ms=MINUTE,
        lateness_ms=LATENESS,
        idle_ms=IDLE,
        source_topic="events.raw",
        late_topic="events.late",
        dlq_topic="events.dlq",
        correction_ms=CORRECTION,
        group_by=GroupBy.parse("country;device,country", MAX_VALUES),
    )
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    crashes = 0
    for crash_at in (6, 15, None):  # batches written when the crash hits
        side: list[Any] = []
        flow = build_flow(
            "test_dimensions",
            config,
            TestingSource(items, 40),
            store_sink=CrashingStore(dsn, crash_at),
            side_sink=TestingSink(side),
            notification_sink=TestingSink([]),
        )
        try:
            run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
        except Exception:
            crashes += 1
    return crashes


def test_slices_add_up_to_the_totals_exactly_across_crashes(database: str, tmp_path: Path) -> None:
    prefix = f"dims{random.randrange(10**9)}-"
    records = stream(prefix, seed=7, n=4000)
    counted: list[Ev] = []
    buckets, _late = windows_reference(
        records, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, counted=counted
    )
    expected = slices_reference(counted, MINUTE, SETS, MAX_VALUES)
    overflow_before = metrics.DIMENSION_OVERFLOW.labels("country")._value.get()

    assert run_with_crashes(database, [to_message(e) for e in records], tmp_path) == 2

    like = f"{prefix}%"
    with psycopg.connect(database) as conn:
        totals = {
            (c, t, b): (n, s)
            for c, t, b, n, s in conn.execute(
                "SELECT campaign_id, event_type, bucket, event_count, value_sum"
                " FROM event_metrics WHERE campaign_id LIKE %s AND event_count > 0",
                (like,),
            )
        }
        slices = {
            (c, t, b, name, tuple(sorted(dims.items()))): (n, s)
            for c, t, b, name, dims, n, s in conn.execute(
                "SELECT campaign_id, event_type, bucket, dimension_set, dimensions,"
                " event_count, value_sum FROM event_metrics_by_dimensions"
                " WHERE campaign_id LIKE %s",
                (like,),
            )
        }
        # Per set, the slices' sums equal the campaign rows, in SQL.
        mismatched = conn.execute(
            "SELECT s.dimension_set, s.campaign_id, s.event_type, s.bucket"
            " FROM (SELECT dimension_set, campaign_id, event_type, bucket,"
            "              sum(event_count) AS n, sum(value_sum) AS v"
            "       FROM event_metrics_by_dimensions WHERE campaign_id LIKE %s"
            "       GROUP BY 1, 2, 3, 4) AS s"
            " JOIN event_metrics AS m USING (campaign_id, event_type, bucket)"
            " WHERE s.n <> m.event_count OR s.v <> m.value_sum",
            (like,),
        ).fetchall()
        hourly = conn.execute(
            "SELECT dimension_set, sum(event_count)::bigint FROM event_metrics_by_dimensions_hourly"
            " WHERE campaign_id LIKE %s GROUP BY 1 ORDER BY 1",
            (like,),
        ).fetchall()
    assert mismatched == []
    assert totals == {
        (c, t, minute_of(b_ms)): (b.count, b.total)
        for (c, t, b_ms), b in buckets.items()
        if b.count
    }
    assert slices == {
        (c, t, minute_of(start), name, dims): (b.count, b.total)
        for (c, t, start, name, dims), b in expected.items()
    }
    assert any(b.late and b.count > b.on_time for b in buckets.values())  # corrections
    events = sum(b.count for b in buckets.values())
    assert hourly == [("country", events), ("country,device", events)]
    others = sum(
        b.count for k, b in expected.items() if k[3] == "country" and k[4] == (("country", OTHER),)
    )
    assert others > 0
    # Replays count again what they repeat: at least every overflow once.
    assert metrics.DIMENSION_OVERFLOW.labels("country")._value.get() - overflow_before >= others

    # QueryMetrics: one set, filtered, at minute and hour resolution.
    campaign = f"{prefix}0"

    async def query(resolution: int, **fields: Any) -> list[Any]:
        reader = TimescaleMetricsReader(database)
        await reader.open()
        try:
            q = MetricsQuery.parse(campaign, "", T0 - HOUR, T0 + 2 * HOUR, resolution, **fields)
            return [p async for p in reader.query(q)]
        finally:
            await reader.close()

    de = asyncio.run(query(1, group_by="country", dimensions={"country": "DE"}))
    want = {
        (t, start): b.count
        for (c, t, start, name, dims), b in expected.items()
        if c == campaign and name == "country" and dims == (("country", "DE"),)
    }
    assert {(p.event_type, p.bucket_start_ms): p.event_count for p in de} == want
    assert all(p.dimensions == (("country", "DE"),) for p in de)
    per_hour: dict[tuple[str, int, tuple[tuple[str, str], ...]], int] = defaultdict(int)
    for (c, t, start, name, dims), b in expected.items():
        if c == campaign and name == "country,device":
            per_hour[(t, start - start % HOUR, dims)] += b.count
    got = asyncio.run(query(2, group_by="device,country"))
    assert {(p.event_type, p.bucket_start_ms, p.dimensions): p.event_count for p in got} == dict(
        per_hour
    )
