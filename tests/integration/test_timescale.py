"""The TimescaleDB sink and reader against the real database."""

import asyncio
from datetime import UTC, datetime

import psycopg

from pulse.aggregation import MetricRow
from pulse.query import MetricsQuery
from pulse.timeutil import datetime_to_ms
from sinks.schema import migrate
from sinks.timescale_reader import TimescaleMetricsReader
from sinks.timescale_writer import TimescaleMetricsSink

T0 = datetime_to_ms(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
MINUTE = 60_000


def stored(dsn: str, campaign: str) -> list[tuple[str, datetime, int, float]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT event_type, bucket, event_count, value_sum FROM event_metrics"
            " WHERE campaign_id = %s ORDER BY bucket, event_type",
            (campaign,),
        ).fetchall()


def test_migrate_is_idempotent_and_makes_a_hypertable(database: str) -> None:
    assert migrate(database) == []
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'event_metrics'"
        ).fetchone()
    assert row == (1,)


def test_upserts_keep_the_highest_count_so_replays_are_no_ops(database: str) -> None:
    written: list[int] = []
    part = TimescaleMetricsSink(database, on_written=written.append).build("s", 0, 1)
    campaign = "sink-replay"
    part.write_batch(
        [MetricRow(campaign, "click", T0, 5, 2.5), MetricRow(campaign, "click", T0, 3, 1.0)]
    )
    assert stored(database, campaign) == [("click", datetime.fromtimestamp(T0 / 1000, UTC), 5, 2.5)]
    # A replay re-emits earlier, smaller rows and the same final row: nothing changes.
    part.write_batch(
        [MetricRow(campaign, "click", T0, 4, 2.0), MetricRow(campaign, "click", T0, 5, 2.5)]
    )
    assert stored(database, campaign) == [("click", datetime.fromtimestamp(T0 / 1000, UTC), 5, 2.5)]
    # A grown window replaces the row.
    part.write_batch(
        [MetricRow(campaign, "click", T0, 7, 3.5), MetricRow(campaign, "view", T0, 1, 0.0)]
    )
    assert [r[2:] for r in stored(database, campaign)] == [(7, 3.5), (1, 0.0)]
    assert written == [1, 1, 2]
    part.close()


def test_reader_serves_minutes_hours_and_days(database: str) -> None:
    campaign = "reader"
    part = TimescaleMetricsSink(database).build("s", 0, 1)
    part.write_batch(
        [
            MetricRow(campaign, "click", T0, 2, 1.0),
            MetricRow(campaign, "click", T0 + MINUTE, 3, 0.5),
            MetricRow(campaign, "view", T0 + MINUTE, 10, 0.0),
            MetricRow(campaign, "click", T0 + 60 * MINUTE, 1, 0.25),
            MetricRow("other", "click", T0, 99, 99.0),
        ]
    )
    part.close()

    async def query(
        event_type: str, start: int, end: int, resolution: int
    ) -> list[tuple[object, ...]]:
        reader = TimescaleMetricsReader(database)
        await reader.open()
        try:
            q = MetricsQuery.parse(campaign, event_type, start, end, resolution)
            return [
                (p.event_type, p.bucket_start_ms - T0, p.event_count, p.value_sum)
                async for p in reader.query(q)
            ]
        finally:
            await reader.close()

    assert asyncio.run(query("", T0, T0 + 2 * MINUTE, 1)) == [
        ("click", 0, 2, 1.0),
        ("click", MINUTE, 3, 0.5),
        ("view", MINUTE, 10, 0.0),
    ]
    assert asyncio.run(query("click", T0, T0 + 61 * MINUTE, 1)) == [
        ("click", 0, 2, 1.0),
        ("click", MINUTE, 3, 0.5),
        ("click", 60 * MINUTE, 1, 0.25),
    ]
    assert asyncio.run(query("click", T0 + 5, T0 + 6, 2)) == [("click", 0, 5, 1.5)]
    assert asyncio.run(query("", T0, T0 + 1, 3)) == [
        ("click", -10 * 60 * MINUTE, 6, 1.75),
        ("view", -10 * 60 * MINUTE, 10, 0.0),
    ]
