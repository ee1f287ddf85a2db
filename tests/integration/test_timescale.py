"""The TimescaleDB schema, sink and reader against the real database."""

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from urllib.parse import urlsplit

import psycopg
import pytest
from bytewax.outputs import StatelessSinkPartition
from psycopg import sql

from pulse import sketches
from pulse.aggregation import LateEvent, MetricRow, Partial, WindowAggregate
from pulse.alerts.model import AlertEvent, AlertState
from pulse.errors import SinkError, SinkRefusedError
from pulse.query import MetricPointRow, MetricsQuery
from pulse.rollups import Resolution, RollupRow
from pulse.timeutil import datetime_to_ms
from query.metrics import TimescaleMetricsReader
from sinks.schema import migrate
from sinks.timescale_writer import StoreItem, TimescaleSink
from tests.conftest import Stack
from tests.scratch import drop_database

T0 = datetime_to_ms(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
TOPIC = "events.raw"

METRIC_COLUMNS = (
    "event_type, bucket, event_count, value_sum, value_min, value_max, value_avg,"
    " unique_users, value_p50, value_p95, value_p99, first_event_at, last_event_at,"
    " late_events, closed, revision, users_sketch, values_sketch"
)


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def fetch(dsn: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def stored(dsn: str, campaign: str) -> list[tuple[object, ...]]:
    return fetch(
        dsn,
        f"SELECT {METRIC_COLUMNS} FROM event_metrics"
        " WHERE campaign_id = %s ORDER BY bucket, event_type",
        campaign,
    )


def sink(
    dsn: str, written: list[tuple[str, int]] | None = None, topic: str = TOPIC
) -> StatelessSinkPartition[StoreItem]:
    on_written = None if written is None else (lambda k, n: written.append((k, n)))
    return TimescaleSink(dsn, topic, on_written=on_written).build("s", 0, 1)


def open_row(
    campaign: str, bucket_ms: int, count: int, event_type: str = "click", **fields: object
) -> MetricRow:
    """A window row of `count` events valued 0.5 each, one per millisecond from its start."""
    defaults: dict[str, object] = {
        "value_min": 0.5,
        "value_max": 0.5,
        "unique_users": count,
        "value_p50": 0.5,
        "value_p95": 0.5,
        "value_p99": 0.5,
        "first_event_ms": bucket_ms,
        "last_event_ms": bucket_ms + count,
    }
    defaults.update(fields)
    return MetricRow(campaign, event_type, bucket_ms, count, 0.5 * count, **defaults)  # type: ignore[arg-type]


def late(campaign: str, bucket_ms: int, offset: int, partition: int = 0) -> LateEvent:
    return LateEvent(
        campaign, "click", bucket_ms, partition, offset, bucket_ms + 7, b"raw", T0 + DAY
    )


def rollup(campaign: str, resolution: Resolution, bucket_ms: int, count: int) -> RollupRow:
    return RollupRow(
        resolution,
        campaign,
        "click",
        bucket_ms,
        count,
        count // 2,
        1.0 * count,
        2.0 * count,
        4.0 * count,
        f"hll-{count}".encode(),
        f"kll-{count}".encode(),
    )


def alert(campaign: str, state: AlertState, window_ms: int) -> AlertEvent:
    return AlertEvent(
        f"alert-{campaign}",
        state,
        "clicks-high",
        "threshold",
        "warning",
        campaign,
        "click",
        "count",
        window_ms,
        window_ms + MINUTE,
        150.0 if state is AlertState.FIRING else 20.0,
        100.0,
        f"count {state}",
    )


# --- schema -----------------------------------------------------------------------------


def test_migrate_is_idempotent_and_makes_the_hypertables(database: str) -> None:
    assert migrate(database) == []
    assert fetch(
        database, "SELECT version, name FROM schema_migrations WHERE version <= 2 ORDER BY 1"
    ) == [
        (1, "001_event_metrics.sql"),
        (2, "002_analytics.sql"),
    ]
    assert fetch(
        database,
        "SELECT hypertable_name, column_name, time_interval"
        " FROM timescaledb_information.dimensions WHERE hypertable_name = ANY(%s) ORDER BY 1",
        ["alerts", "event_metrics", "event_sketch_rollups", "late_event_log"],
    ) == [
        ("alerts", "window_start", timedelta(days=7)),
        ("event_metrics", "bucket", timedelta(days=1)),
        ("event_sketch_rollups", "bucket", timedelta(days=7)),
        ("late_event_log", "bucket", timedelta(days=1)),
    ]
    assert fetch(
        database,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'event_metrics'::regclass AND contype = 'c' ORDER BY 1",
    ) == [
        ("event_metrics_event_count_check", "CHECK ((event_count >= 0))"),
        ("event_metrics_late_events_check", "CHECK ((late_events >= 0))"),
        (
            "event_metrics_on_time_count_check",
            "CHECK (((on_time_count >= 0) AND (on_time_count <= event_count)))",
        ),
    ]


def test_migrations_upgrade_existing_rows_and_chunks(stack: Stack) -> None:
    """Rows written under 001 keep their values and become open, uncorrected rows of their
    count."""
    name = f"pulse_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = urlsplit(stack.admin_dsn)._replace(path=f"/{name}").geturl()
    try:
        first = resources.files("sinks.sql").joinpath("001_event_metrics.sql").read_text()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(first.encode())
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute("INSERT INTO schema_migrations VALUES (1, '001_event_metrics.sql')")
            conn.execute(
                "INSERT INTO event_metrics (bucket, campaign_id, event_type, event_count,"
                " value_sum) VALUES (%s, 'old', 'click', 4, 2.0)",
                (at(T0),),
            )
        assert migrate(dsn) == [
            "002_analytics.sql",
            "003_corrections.sql",
            "004_dimensions.sql",
        ]
        assert stored(dsn, "old") == [
            ("click", at(T0), 4, 2.0, None, None, 0.5, 0, *(None,) * 5, 0, False, 8, None, None)
        ]
        assert fetch(
            dsn, "SELECT on_time_count, corrected_offset, corrected_at FROM event_metrics"
        ) == [(4, -1, None)]
        # The existing chunk lost the old CHECK too: a late-only row fits in it.
        part = sink(dsn)
        part.write_batch([late("old", T0 + MINUTE, 1)])
        part.close()
        assert fetch(
            dsn,
            "SELECT event_count, late_events FROM event_metrics WHERE bucket = %s",
            at(T0 + MINUTE),
        ) == [(0, 1)]
    finally:
        drop_database(stack.admin_dsn, name)


# --- event_metrics ----------------------------------------------------------------------


def test_a_row_replaces_the_stored_one_only_with_a_higher_revision(database: str) -> None:
    written: list[tuple[str, int]] = []
    part = sink(database, written)
    c = "replay"
    part.write_batch([open_row(c, T0, 5), open_row(c, T0, 3)])
    five = ("click", at(T0), 5, 2.5, 0.5, 0.5, 0.5, 5, 0.5, 0.5, 0.5, at(T0), at(T0 + 5))
    assert stored(database, c) == [(*five, 0, False, 10, None, None)]
    (updated_at,) = fetch(
        database, "SELECT updated_at FROM event_metrics WHERE campaign_id = %s", c
    )

    # A replay re-emits earlier, smaller rows and the same row: nothing changes.
    part.write_batch([open_row(c, T0, 4, value_max=9.0), open_row(c, T0, 5, unique_users=99)])
    assert stored(database, c) == [(*five, 0, False, 10, None, None)]
    assert fetch(database, "SELECT updated_at FROM event_metrics WHERE campaign_id = %s", c) == [
        updated_at
    ]

    # The closed row of the same count replaces the open one, with its sketches.
    closed = open_row(c, T0, 5, closed=True, users_sketch=b"hll", values_sketch=b"kll")
    part.write_batch([closed])
    assert stored(database, c) == [(*five, 0, True, 11, b"hll", b"kll")]

    # A stale open row after the close changes nothing; a new window is inserted.
    part.write_batch([open_row(c, T0, 5), open_row(c, T0 + MINUTE, 1, value_p99=None)])
    assert stored(database, c) == [
        (*five, 0, True, 11, b"hll", b"kll"),
        (
            *("click", at(T0 + MINUTE), 1, 0.5, 0.5, 0.5, 0.5, 1, 0.5, 0.5, None),
            *(at(T0 + MINUTE), at(T0 + MINUTE + 1), 0, False, 2, None, None),
        ),
    ]
    assert written == [("metrics", 1), ("metrics", 1), ("metrics", 1), ("metrics", 2)]
    part.close()


def test_a_real_closed_window_round_trips_with_its_sketches(database: str) -> None:
    part_ = Partial.of(
        [(T0 + i, value, f"user-{i % 3}", i, b"") for i, value in enumerate([1.0, 2.0, 3.0, 4.0])]
    )
    agg = WindowAggregate()
    agg.merge(part_)
    row = agg.row("sketches", "view", T0, closed=True)
    part = sink(database)
    part.write_batch([row])
    part.close()
    ((count, total, vmin, vmax, avg, users, p50, first, last, hll, kll),) = fetch(
        database,
        "SELECT event_count, value_sum, value_min, value_max, value_avg, unique_users,"
        " value_p50, first_event_at, last_event_at, users_sketch, values_sketch"
        " FROM event_metrics WHERE campaign_id = 'sketches'",
    )
    assert (count, total, vmin, vmax, avg, users, first, last) == (
        4,
        10.0,
        1.0,
        4.0,
        2.5,
        3,
        at(T0),
        at(T0 + 3),
    )
    assert p50 == row.value_p50
    assert isinstance(hll, bytes)
    assert isinstance(kll, bytes)
    assert sketches.distinct(sketches.hll_from(hll)) == 3
    assert sketches.kll_from(kll).n == 4


# --- late events ------------------------------------------------------------------------


def test_late_events_are_counted_exactly_once_through_the_ledger(database: str) -> None:
    written: list[tuple[str, int]] = []
    part = sink(database, written)
    c = "late"
    part.write_batch([open_row(c, T0, 3)])
    batch: list[StoreItem] = [
        late(c, T0, 10),
        late(c, T0, 11),
        late(c, T0, 10),  # the same event twice in one batch
        late(c, T0 + MINUTE, 12),  # a bucket without on-time events
    ]
    part.write_batch(batch)
    on_time = ("click", at(T0), 3, 1.5, 0.5, 0.5, 0.5, 3, 0.5, 0.5, 0.5, at(T0), at(T0 + 3))
    late_only = ("click", at(T0 + MINUTE), 0, 0.0, *(None,) * 3, 0, *(None,) * 5)
    assert stored(database, c) == [
        (*on_time, 2, False, 6, None, None),
        (*late_only, 1, True, 1, None, None),
    ]
    # Replaying the same late events changes nothing.
    part.write_batch(batch)
    part.write_batch(batch[:1])
    assert [r[13] for r in stored(database, c)] == [2, 1]
    assert fetch(
        database,
        "SELECT bucket, campaign_id, event_type, source_topic, source_partition,"
        " source_offset, event_time, watermark FROM late_event_log"
        " WHERE campaign_id = %s ORDER BY source_offset",
        c,
    ) == [
        (at(T0), c, "click", TOPIC, 0, 10, at(T0 + 7), at(T0 + DAY)),
        (at(T0), c, "click", TOPIC, 0, 11, at(T0 + 7), at(T0 + DAY)),
        (at(T0 + MINUTE), c, "click", TOPIC, 0, 12, at(T0 + MINUTE + 7), at(T0 + DAY)),
    ]
    # The same offset of another partition or topic is another event.
    part.write_batch([late(c, T0, 10, partition=1)])
    other = sink(database, topic="other.raw")
    other.write_batch([late(c, T0, 10)])
    other.close()
    assert [r[13] for r in stored(database, c)] == [4, 1]

    # Window rows never touch late_events, whatever their revision.
    part.write_batch([open_row(c, T0, 3, closed=True), open_row(c, T0 + MINUTE, 2)])
    assert [(r[2], r[13], r[14], r[15]) for r in stored(database, c)] == [
        (3, 4, True, 7),
        (2, 1, False, 4),
    ]
    assert written == [
        ("metrics", 1),
        ("late", 3),
        ("late", 3),
        ("late", 1),
        ("late", 1),
        ("metrics", 2),
    ]
    part.close()


# --- rollups and alerts -----------------------------------------------------------------


def test_rollups_keep_the_most_merged_events(database: str) -> None:
    c = "rollups"
    part = sink(database)
    part.write_batch([rollup(c, Resolution.HOUR, T0, 10), rollup(c, Resolution.DAY, T0, 10)])
    part.write_batch([rollup(c, Resolution.HOUR, T0, 12), rollup(c, Resolution.HOUR, T0, 8)])
    part.write_batch([rollup(c, Resolution.DAY, T0, 10), rollup(c, Resolution.DAY, T0, 9)])
    part.close()
    assert fetch(
        database,
        "SELECT resolution, bucket, event_type, event_count, unique_users, value_p50,"
        " value_p95, value_p99, users_sketch, values_sketch FROM event_sketch_rollups"
        " WHERE campaign_id = %s ORDER BY resolution",
        c,
    ) == [
        ("day", at(T0), "click", 10, 5, 10.0, 20.0, 40.0, b"hll-10", b"kll-10"),
        ("hour", at(T0), "click", 12, 6, 12.0, 24.0, 48.0, b"hll-12", b"kll-12"),
    ]


def test_alert_transitions_are_stored_once(database: str) -> None:
    c = "alerts"
    written: list[tuple[str, int]] = []
    part = sink(database, written)
    firing, resolved = alert(c, AlertState.FIRING, T0), alert(c, AlertState.RESOLVED, T0 + HOUR)
    part.write_batch([firing, firing])
    part.write_batch([firing, resolved])
    part.write_batch([resolved])
    part.close()
    rule = ("clicks-high", "threshold", "warning", "click", "count")
    assert fetch(
        database,
        "SELECT alert_id, state, rule, rule_kind, severity, event_type, metric, window_start,"
        " window_end, observed, threshold, message FROM alerts"
        " WHERE campaign_id = %s ORDER BY window_start",
        c,
    ) == [
        (f"alert-{c}", "firing", *rule, at(T0), at(T0 + MINUTE), 150.0, 100.0, "count firing"),
        (
            f"alert-{c}",
            "resolved",
            *rule,
            at(T0 + HOUR),
            at(T0 + HOUR + MINUTE),
            20.0,
            100.0,
            "count resolved",
        ),
    ]
    assert written == [("alerts", 2), ("alerts", 2), ("alerts", 1)]


# --- one batch, one transaction ---------------------------------------------------------


def count_of(dsn: str, campaign: str) -> tuple[int, ...]:
    counts = []
    for table in ("event_metrics", "late_event_log", "event_sketch_rollups", "alerts"):
        query = sql.SQL("SELECT count(*) FROM {} WHERE campaign_id = %s").format(
            sql.Identifier(table)
        )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(query, (campaign,)).fetchone()
        assert row is not None
        counts.append(row[0])
    return tuple(counts)


def test_a_batch_of_all_kinds_is_one_transaction(database: str) -> None:
    c = "atomic"
    written: list[tuple[str, int]] = []
    part = sink(database, written)
    batch: list[StoreItem] = [
        alert(c, AlertState.FIRING, T0),
        rollup(c, Resolution.HOUR, T0, 2),
        late(c, T0 + MINUTE, 5),
        open_row(c, T0, 2),
    ]
    bad = rollup(c, "week", T0, 2)  # type: ignore[arg-type]
    with pytest.raises(SinkRefusedError, match="CheckViolation") as refused:
        part.write_batch([*batch, bad])
    assert isinstance(refused.value.__cause__, psycopg.errors.CheckViolation)
    assert written == []
    assert count_of(database, c) == (0, 0, 0, 0)

    # The connection is usable after the rollback; the good batch commits as a whole.
    part.write_batch(batch)
    assert count_of(database, c) == (2, 1, 1, 1)
    assert written == [("metrics", 1), ("late", 1), ("rollups", 1), ("alerts", 1)]
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT xmin::text FROM event_metrics WHERE campaign_id = %(c)s"
            " UNION SELECT xmin::text FROM late_event_log WHERE campaign_id = %(c)s"
            " UNION SELECT xmin::text FROM event_sketch_rollups WHERE campaign_id = %(c)s"
            " UNION SELECT xmin::text FROM alerts WHERE campaign_id = %(c)s",
            {"c": c},
        ).fetchall()
    assert len(rows) == 1  # every row was written by the same transaction

    part.write_batch([])
    assert len(written) == 4
    part.close()


def test_a_lost_connection_is_retried_and_an_unreachable_store_fails(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sinks.timescale_writer")
    c = "retry"
    part = sink(database)
    part.write_batch([open_row(c, T0, 1)])
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND usename = current_user AND pid <> pg_backend_pid()"
        )
    part.write_batch([open_row(c, T0, 2)])  # reconnects after 0.5 s
    assert [r[2] for r in stored(database, c)] == [2]
    assert [r.getMessage().split(":")[0].split(" after")[0] for r in caplog.records] == [
        "TimescaleDB write failed (attempt 1, for 0 s), retrying",
        "TimescaleDB written again",
    ]
    part.close()

    unreachable = TimescaleSink(
        "postgresql://pulse@127.0.0.1:1/none?connect_timeout=1", TOPIC, max_attempts=1
    ).build("s", 0, 1)
    with pytest.raises(SinkError, match="writing a batch of 1 items to TimescaleDB failed 1 times"):
        unreachable.write_batch([open_row(c, T0, 3)])


# --- views and reader -------------------------------------------------------------------


def write_hour_and_day(dsn: str, c: str) -> None:
    """Windows 10:00 and 10:01 (closed), 11:00 (open); late events; merged sketches."""
    part = sink(dsn, topic=f"{c}.raw")  # late event offsets are unique per topic
    part.write_batch(
        [
            open_row(c, T0, 2, value_min=0.25, value_max=0.75, closed=True),
            MetricRow(
                *(c, "click", T0 + MINUTE, 3, 3.0, 0.5, 1.5, 3, 1.0, 1.5, 1.5),
                first_event_ms=T0 + MINUTE + 10,
                last_event_ms=T0 + MINUTE + 20,
                closed=True,
            ),
            MetricRow(
                *(c, "click", T0 + HOUR, 1, 2.0, 2.0, 2.0, 1, 2.0, 2.0, 2.0),
                first_event_ms=T0 + HOUR + 5,
                last_event_ms=T0 + HOUR + 5,
            ),
            open_row(c, T0, 4, event_type="view"),
            open_row("other", T0, 9),
            late(c, T0, 1),
            late(c, T0 + 2 * MINUTE, 2),  # 10:02 only has a late event
            rollup(c, Resolution.HOUR, T0, 5),
            rollup(c, Resolution.DAY, T0 - 10 * HOUR, 5),
        ]
    )
    part.close()


HOUR_10 = (at(T0), "click", 5, 4.0, 0.25, 1.5, 0.8, 2, 5.0, 10.0, 20.0, at(T0))
HOUR_10_REST = (at(T0 + MINUTE + 20), 2, True, 5)
HOUR_11 = (at(T0 + HOUR), "click", 1, 2.0, 2.0, 2.0, 2.0, 0, None, None, None)
HOUR_11_REST = (at(T0 + HOUR + 5), at(T0 + HOUR + 5), 0, False, 0)
DAY_24 = (at(T0 - 10 * HOUR), "click", 6, 6.0, 0.25, 2.0, 1.0, 2, 5.0, 10.0, 20.0, at(T0))
DAY_24_REST = (at(T0 + HOUR + 5), 2, False, 5)


def test_hourly_and_daily_views_roll_up_in_sql_and_join_the_sketches(database: str) -> None:
    c = "views"
    write_hour_and_day(database, c)
    columns = (
        "bucket, event_type, event_count, value_sum, value_min, value_max, value_avg,"
        " unique_users, value_p50, value_p95, value_p99, first_event_at, last_event_at,"
        " late_events, closed, sketch_event_count"
    )
    where = " WHERE campaign_id = %s AND event_type = 'click' ORDER BY bucket"
    assert fetch(database, f"SELECT {columns} FROM event_metrics_hourly{where}", c) == [
        HOUR_10 + HOUR_10_REST,
        HOUR_11 + HOUR_11_REST,
    ]
    assert fetch(database, f"SELECT {columns} FROM event_metrics_daily{where}", c) == [
        DAY_24 + DAY_24_REST
    ]


def test_reader_serves_minutes_hours_and_days_with_every_column(database: str) -> None:
    c = "reader"
    write_hour_and_day(database, c)

    async def query(event_type: str, start: int, end: int, resolution: int) -> list[object]:
        reader = TimescaleMetricsReader(database)
        await reader.open()
        try:
            q = MetricsQuery.parse(c, event_type, start, end, resolution)
            return [p async for p in reader.query(q)]
        finally:
            await reader.close()

    minute_10 = MetricPointRow(
        *(c, "click", T0, 2, 1.0, 0.25, 0.75, 0.5, 2, 0.5, 0.5, 0.5, T0, T0 + 2, 1, True, 2)
    )
    view_10 = MetricPointRow(
        *(c, "view", T0, 4, 2.0, 0.5, 0.5, 0.5, 4, 0.5, 0.5, 0.5, T0, T0 + 4, 0, False, 4)
    )
    late_only = MetricPointRow(c, "click", T0 + 2 * MINUTE, 0, 0.0, late_events=1, closed=True)
    assert asyncio.run(query("", T0, T0 + 3 * MINUTE, 1)) == [
        minute_10,
        view_10,
        MetricPointRow(
            *(c, "click", T0 + MINUTE, 3, 3.0, 0.5, 1.5, 1.0, 3, 1.0, 1.5, 1.5),
            *(T0 + MINUTE + 10, T0 + MINUTE + 20, 0, True, 3),
        ),
        late_only,
    ]
    assert asyncio.run(query("click", T0 + 2 * MINUTE, T0 + HOUR + 1, 1)) == [
        late_only,
        MetricPointRow(
            *(c, "click", T0 + HOUR, 1, 2.0, 2.0, 2.0, 2.0, 1, 2.0, 2.0, 2.0),
            *(T0 + HOUR + 5, T0 + HOUR + 5, 0, False, 1),
        ),
    ]
    assert asyncio.run(query("click", T0 + 5, T0 + HOUR + 6, 2)) == [
        MetricPointRow(
            *(c, "click", T0, 5, 4.0, 0.25, 1.5, 0.8, 2, 5.0, 10.0, 20.0),
            *(T0, T0 + MINUTE + 20, 2, True, 5),
        ),
        MetricPointRow(
            *(c, "click", T0 + HOUR, 1, 2.0, 2.0, 2.0, 2.0, 0),
            first_event_ms=T0 + HOUR + 5,
            last_event_ms=T0 + HOUR + 5,
            on_time_count=1,
        ),
    ]
    assert asyncio.run(query("", T0, T0 + 1, 3)) == [
        MetricPointRow(
            *(c, "click", T0 - 10 * HOUR, 6, 6.0, 0.25, 2.0, 1.0, 2, 5.0, 10.0, 20.0),
            *(T0, T0 + HOUR + 5, 2, False, 6),
        ),
        MetricPointRow(
            *(c, "view", T0 - 10 * HOUR, 4, 2.0, 0.5, 0.5, 0.5, 0),
            first_event_ms=T0,
            last_event_ms=T0 + 4,
            on_time_count=4,
        ),
    ]
