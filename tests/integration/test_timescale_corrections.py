"""Late corrections merged into stored rows, in the real TimescaleDB."""

import dataclasses
from datetime import datetime
from typing import cast

from pulse import sketches
from pulse.aggregation import MetricRow, Partial, WindowAggregate
from pulse.corrections import Correction, CorrectionBatch
from pulse.rollups import Resolution, RollupRow
from tests.integration.test_timescale import HOUR, MINUTE, T0, at, fetch, sink

COLUMNS = (
    "event_count, on_time_count, value_sum, value_min, value_max, value_avg, unique_users,"
    " first_event_at, last_event_at, late_events, closed, revision, corrected_offset"
)


def events(
    offsets: range, first_ms: int, value: float = 1.0
) -> list[tuple[int, float, str, int, bytes]]:
    """One event per offset: (time, value, user, offset, raw)."""
    return [(first_ms + o, value + o % 3, f"u{o % 7}", o, b"") for o in offsets]


def correction(
    c: str, start: int, offsets: range, rollups: tuple[tuple[str, int, int], ...] = ()
) -> Correction:
    part = Partial.of(events(offsets, start + 1000))
    base = Correction.of(c, "click", start, 0, [part])
    return dataclasses.replace(base, sink_rollups=rollups)


def closed_row(c: str, start: int, offsets: range) -> MetricRow:
    agg = WindowAggregate()
    agg.merge(Partial.of(events(offsets, start)))
    return agg.row(c, "click", start, closed=True)


def row(dsn: str, c: str, start: int) -> tuple[object, ...]:
    [stored] = fetch(
        dsn,
        f"SELECT {COLUMNS} FROM event_metrics WHERE campaign_id = %s AND bucket = %s",
        c,
        at(start),
    )
    return stored


def test_a_correction_merges_every_column_into_the_closed_row(database: str) -> None:
    c = "corr-merge"
    part = sink(database)
    part.write_batch([closed_row(c, T0, range(0, 10))])  # values 1, 2, 3 by offset % 3
    part.write_batch([CorrectionBatch((correction(c, T0, range(50, 55)),))])
    part.close()
    values = [1.0 + o % 3 for o in range(10)] + [1.0 + o % 3 for o in range(50, 55)]
    first, last = T0, T0 + 1000 + 54
    assert row(database, c, T0) == (
        15, 10, sum(values), 1.0, 3.0, sum(values) / 15, 7,
        at(first), at(last), 5, True, 31, 54,
    )  # fmt: skip
    [(p50, users_sketch, corrected_at)] = fetch(
        database,
        "SELECT value_p50, users_sketch, corrected_at FROM event_metrics WHERE campaign_id = %s",
        c,
    )
    assert p50 == 2.0  # exact below 400 values: the median of the 15
    assert sketches.distinct(sketches.hll_from(cast(bytes, users_sketch))) == 7
    assert isinstance(corrected_at, datetime)


def test_replays_add_only_what_the_row_has_not_seen(database: str) -> None:
    c = "corr-replay"
    part = sink(database)
    closed = closed_row(c, T0, range(0, 4))
    part.write_batch([closed, CorrectionBatch((correction(c, T0, range(10, 20)),))])
    after = row(database, c, T0)
    assert after[:2] == (14, 4)
    # A replay: the closed row again, the same correction, then one cut elsewhere.
    part.write_batch([closed, CorrectionBatch((correction(c, T0, range(10, 20)),))])
    part.write_batch([CorrectionBatch((correction(c, T0, range(15, 25)),))])
    part.close()
    again = row(database, c, T0)
    assert again[:2] == (19, 4)  # offsets 20..24 were new
    assert again[9] == 15  # late events
    assert again[12] == 24  # corrected offset


def test_a_window_without_on_time_events_is_created_closed(database: str) -> None:
    c = "corr-new"
    part = sink(database)
    part.write_batch([CorrectionBatch((correction(c, T0 + MINUTE, range(3)),))])
    part.close()
    stored = row(database, c, T0 + MINUTE)
    assert stored[:2] == (3, 0)
    assert stored[9:13] == (3, True, 7, 2)


def test_store_held_rollups_merge_corrections_once(database: str) -> None:
    c = "corr-rollup"
    part = sink(database)
    hour = T0 - T0 % HOUR
    held = RollupRow(
        Resolution.HOUR, c, "click", hour, 4, 4, 1.0, 2.0, 2.0,
        sketches.hll_bytes(sketches.new_hll()), sketches.kll_bytes(sketches.new_kll()),
    )  # fmt: skip
    fix = correction(
        c, T0, range(100, 106), rollups=(("hour", hour, 0), ("day", hour - hour % (24 * HOUR), 0))
    )
    part.write_batch([held, CorrectionBatch((fix,))])
    part.write_batch([held, CorrectionBatch((fix,))])  # replayed: nothing changes
    part.close()
    got = fetch(
        database,
        "SELECT resolution, event_count, unique_users, corrected_offset FROM event_sketch_rollups"
        " WHERE campaign_id = %s ORDER BY resolution",
        c,
    )
    assert got == [("day", 6, 6, 105), ("hour", 10, 6, 105)]


def test_the_hourly_view_shows_on_time_and_corrected_counts(database: str) -> None:
    c = "corr-views"
    part = sink(database)
    part.write_batch(
        [
            closed_row(c, T0, range(0, 5)),
            closed_row(c, T0 + MINUTE, range(0, 2)),
            CorrectionBatch((correction(c, T0, range(10, 13)),)),
        ]
    )
    part.close()
    hourly = fetch(
        database,
        "SELECT bucket, event_count, on_time_count, late_events FROM event_metrics_hourly"
        " WHERE campaign_id = %s",
        c,
    )
    assert hourly == [(at(T0 - T0 % HOUR), 10, 7, 3)]
