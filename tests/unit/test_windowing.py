"""Pre-aggregation and partition window state, against an event-by-event reference."""

import pickle
import random

import pytest

from pulse.aggregation import MetricRow
from pulse.preagg import NO_TIME, PartitionChunk, Record, heartbeat_record, preaggregate
from pulse.windowing import PartitionWindows, StepOutput
from pulse.windows import HOUR_MS
from tests.reference import Bucket, Ev, windows_reference

MINUTE = 60_000
LATENESS = 10_000
IDLE = 30_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE


def chunks(records: list[Ev], cut: int) -> list[PartitionChunk]:
    """Pre-aggregate one partition's records in batches of `cut`."""
    out = []
    for i in range(0, len(records), cut):
        batch = [
            heartbeat_record(r.heartbeat, r.offset)
            if r.heartbeat is not None
            else (r.campaign, r.event_type, r.ts, r.value, r.user, r.offset, b"raw", ())
            for r in records[i : i + cut]
        ]
        out.append(preaggregate(records[0].partition, batch, MINUTE, LATENESS, IDLE))
    return out


def one(*records: Record) -> PartitionChunk:
    """One batch of partition 0."""
    return preaggregate(0, list(records), MINUTE, LATENESS, IDLE)


class Table:
    """What the sink's highest-revision-wins upserts leave, plus the late ledger."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int], MetricRow] = {}
        self.late: list[tuple[int, int]] = []
        self.late_per_bucket: dict[tuple[str, str, int], int] = {}
        self.closed: list[tuple[str, str, int]] = []

    def take(self, step: StepOutput) -> None:
        for row in step.rows:
            key = (row.campaign_id, row.event_type, row.bucket_start_ms)
            if key not in self.rows or self.rows[key].revision < row.revision:
                self.rows[key] = row
            if row.closed:
                self.closed.append(key)
        for e in step.late:
            self.late.append((e.partition, e.offset))
            key = (e.campaign_id, e.event_type, e.bucket_start_ms)
            self.late_per_bucket[key] = self.late_per_bucket.get(key, 0) + 1


def run(records: list[Ev], cut: int, state: PartitionWindows | None = None) -> Table:
    state = state or PartitionWindows(records[0].partition, MINUTE, LATENESS, IDLE)
    table = Table()
    for chunk in chunks(records, cut):
        table.take(state.apply(chunk))
    return table


def exact_columns(row: MetricRow) -> tuple[object, ...]:
    return (
        row.event_count,
        row.value_sum,
        row.value_min,
        row.value_max,
        row.first_event_ms,
        row.last_event_ms,
    )


def expected_columns(b: Bucket) -> tuple[object, ...]:
    return (b.count, b.total, b.low, b.high, b.first, b.last)


def stream(seed: int, n: int = 3000) -> list[Ev]:
    """Mostly in-order events of 5 campaigns with jitter, stragglers, gaps and heartbeats."""
    rng = random.Random(seed)
    out: list[Ev] = []
    clock = T0
    for offset in range(n):
        clock += rng.randrange(0, 200)
        if rng.random() < 0.03:
            clock += rng.randrange(0, 3 * MINUTE)  # a quiet spell
        if rng.random() < 0.05:
            out.append(Ev(0, offset, heartbeat=clock + rng.randrange(-2000, 2000)))
            continue
        ts = clock - rng.randrange(0, 8000)
        if rng.random() < 0.04:
            ts -= rng.randrange(10_000, 4 * MINUTE)  # a straggler: often late
        out.append(
            Ev(
                0,
                offset,
                f"c{rng.randrange(5)}",
                rng.choice(["click", "view"]),
                ts,
                rng.randrange(0, 400) / 8,
                f"u{rng.randrange(50)}",
            )
        )
    return out


@pytest.mark.parametrize("cut", [1, 7, 64, 5000])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_results_match_the_reference_whatever_the_batch_cuts(seed: int, cut: int) -> None:
    records = stream(seed)
    buckets, late = windows_reference(records, MINUTE, LATENESS, IDLE)
    table = run(records, cut)
    assert table.late == late
    assert len(late) > 20  # the stream does exercise lateness
    on_time = {k: b for k, b in buckets.items() if b.count}
    assert {k: exact_columns(r) for k, r in table.rows.items()} == {
        k: expected_columns(b) for k, b in on_time.items()
    }
    assert table.late_per_bucket == {k: b.late for k, b in buckets.items() if b.late}
    for key, row in table.rows.items():
        assert row.unique_users == len(on_time[key].users)  # HLL is exact at small counts


def test_rows_of_a_window_grow_then_close_once_and_carry_sketches_when_closed() -> None:
    records = stream(5, 1500)
    table = run(records, 50)
    assert len(table.closed) == len(set(table.closed))
    for key in table.closed:
        row = table.rows[key]
        assert row.closed
        assert row.users_sketch is not None
        assert row.values_sketch is not None
    assert all(r.users_sketch is None for r in table.rows.values() if not r.closed)


def test_a_heartbeat_closes_the_windows_of_a_quiet_campaign() -> None:
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    first = state.apply(one(("quiet", "click", T0 + 5_000, 1.0, "u1", 0, b"a", ())))
    assert [r.closed for r in first.rows] == [False]
    # Wall time reaches the window's end plus the idle timeout: the window closes.
    assert state.apply(one(heartbeat_record(T0 + MINUTE + IDLE - 1, 1))).rows == []
    closing = state.apply(one(heartbeat_record(T0 + MINUTE + IDLE, 2)))
    assert [(r.event_count, r.closed) for r in closing.rows] == [(1, True)]
    assert state.open_window_count == 0
    assert state.campaign_count == 0  # forgotten: the heartbeat floor covers it now
    # A straggler for that window is late: it never reopens it.
    after = state.apply(one(("quiet", "click", T0 + 6_000, 1.0, "u1", 3, b"b", ())))
    assert after.rows == []
    assert [(e.offset, e.bucket_start_ms) for e in after.late] == [(3, T0)]


def test_event_time_alone_closes_windows_and_late_events_never_reopen_them() -> None:
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    step = state.apply(
        one(
            ("c", "click", T0 + 1_000, 2.0, "", 0, b"a", ()),
            ("c", "click", T0 + MINUTE + LATENESS, 3.0, "", 1, b"b", ()),  # watermark T0 + 60 s
        )
    )
    closed = [r for r in step.rows if r.closed]
    assert [(r.bucket_start_ms, r.event_count, r.value_sum) for r in closed] == [(T0, 1, 2.0)]
    step = state.apply(one(("c", "click", T0 + 2_000, 4.0, "", 2, b"c", ())))
    assert step.rows == []
    assert [e.offset for e in step.late] == [2]
    assert step.late[0].raw == b"c"
    assert step.late[0].watermark_ms == T0 + MINUTE


def test_a_resumed_snapshot_continues_exactly_like_the_uninterrupted_state() -> None:
    records = stream(9, 2000)
    whole = run(records, 40)
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    resumed = Table()
    parts = chunks(records, 40)
    for chunk in parts[:20]:
        resumed.take(state.apply(chunk))
    snapshot = pickle.loads(pickle.dumps(state.snapshot()))
    state = PartitionWindows.restore(snapshot, MINUTE, LATENESS, IDLE)
    for chunk in parts[20:]:
        resumed.take(state.apply(chunk))
    assert resumed.late == whole.late
    assert {k: exact_columns(r) for k, r in resumed.rows.items()} == {
        k: exact_columns(r) for k, r in whole.rows.items()
    }
    assert {k: r.unique_users for k, r in resumed.rows.items()} == {
        k: r.unique_users for k, r in whole.rows.items()
    }


def test_hourly_rollups_merge_the_closed_windows_of_the_hour() -> None:
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    # One event a minute for 30 minutes, users u0..u9 repeating, then a heartbeat hours on.
    records: list[Record] = [
        ("c", "view", T0 + i * MINUTE + 1, float(i), f"u{i % 10}", i, b"x", ()) for i in range(30)
    ]
    step = state.apply(one(*records, heartbeat_record(T0 + 3 * 3_600_000, 30)))
    hour = T0 - T0 % 3_600_000
    by_key = {(r.resolution.value, r.bucket_start_ms): r for r in step.rollups}
    hours = sorted(k for k in by_key if k[0] == "hour")
    total = 0
    for _res, start in hours:
        row = by_key[("hour", start)]
        total += row.event_count
        assert start >= hour
    assert total == 30
    day = by_key[("day", T0 - T0 % 86_400_000)]
    assert (day.event_count, day.unique_users) == (30, 10)
    assert day.value_p50 is not None
    assert abs(day.value_p50 - 14.5) <= 1.0


def test_progress_rows_are_paced_but_closed_rows_are_immediate() -> None:
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE, refresh_ms=1000, rollup_refresh_ms=10_000)
    first = state.apply(one(("c", "view", T0 + 1, 1.0, "", 0, b"a", ())), now_ms=5_000)
    assert [(r.event_count, r.closed) for r in first.rows] == [(1, False)]
    # Within the refresh interval: progress is held back...
    held = state.apply(one(("c", "view", T0 + 2, 1.0, "", 1, b"b", ())), now_ms=5_500)
    assert held.rows == []
    # ...but a window that closes is written at once, with its final values.
    closing = state.apply(one(("c", "view", T0 + MINUTE + LATENESS, 1.0, "", 2, b"c", ())), 5_600)
    assert [(r.bucket_start_ms, r.event_count, r.closed) for r in closing.rows] == [(T0, 2, True)]
    assert [r.resolution.value for r in closing.rollups] == []  # rollup rows are paced too
    later = state.apply(one(("c", "view", T0 + MINUTE + 11_000, 1.0, "", 3, b"d", ())), 6_000)
    assert [(r.bucket_start_ms, r.event_count, r.closed) for r in later.rows] == [
        (T0 + MINUTE, 2, False)
    ]
    # Open hours and days on their own, slower pace.
    assert later.rollups == []
    paced = state.apply(one(("c", "view", T0 + MINUTE + 12_000, 1.0, "", 4, b"e", ())), 15_000)
    assert sorted((r.resolution.value, r.event_count) for r in paced.rollups) == [
        ("day", 2),
        ("hour", 2),
    ]
    assert state.take_progress_rows() == []
    # An hour whose end the watermark passes yields its final row at once.
    next_hour = T0 - T0 % HOUR_MS + HOUR_MS
    final = state.apply(one(("c", "view", next_hour + LATENESS, 1.0, "", 5, b"f", ())), 15_100)
    assert [(r.resolution.value, r.event_count) for r in final.rollups] == [("hour", 5)]


def test_max_watermark_is_the_most_advanced_campaign_watermark() -> None:
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    assert state.max_watermark_ms == NO_TIME
    state.apply(one(("a", "click", T0 + 5_000, 1.0, "", 0, b"a", ())))
    state.apply(one(("b", "click", T0 + 20_000, 1.0, "", 1, b"b", ())))
    assert state.max_watermark_ms == T0 + 20_000 - LATENESS
    state.apply(one(heartbeat_record(T0 + 35_000, 2)))  # floor T0 + 5 s: events still ahead
    assert state.max_watermark_ms == T0 + 20_000 - LATENESS
    state.apply(one(heartbeat_record(T0 + 100_000, 3)))
    assert state.max_watermark_ms == T0 + 100_000 - IDLE


def test_snapshots_refreshed_per_change_equal_snapshots_made_afresh() -> None:
    """Snapshots keep the entries of unchanged windows and accumulators: after any chunk,
    the snapshot holds exactly what freezing every open window and accumulator gives."""
    records = stream(11, 2500)
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE)
    for i, chunk in enumerate(chunks(records, 30)):
        state.apply(chunk)
        if i % 3:
            continue
        snapshot = state.snapshot()
        afresh = PartitionWindows.restore(
            pickle.loads(pickle.dumps(snapshot)), MINUTE, LATENESS, IDLE
        )
        fresh_windows = {
            (c, t, s): (agg.count, agg.sum_micros, agg.value_min, agg.value_max)
            for c, windows in state._open.items()
            for (t, s), agg in windows.items()
        }
        kept_windows = {
            (c, t, s): (f.count, f.sum_micros, f.value_min, f.value_max)
            for c, t, s, f in snapshot.open_windows
        }
        assert kept_windows == fresh_windows
        assert len(snapshot.rollups.entries) == len(state._rollups)
        assert snapshot.rollups.entries == afresh.snapshot().rollups.entries


def test_what_waits_for_a_refresh_is_due_on_its_own_pace() -> None:
    state = PartitionWindows(
        0, MINUTE, LATENESS, IDLE, refresh_ms=1000, rollup_refresh_ms=10_000, correction_ms=MINUTE
    )
    assert state.next_refresh_ms() is None
    state.apply(one(("c", "view", T0 + 1, 1.0, "", 0, b"a", ())), now_ms=5_000)
    state.apply(one(("c", "view", T0 + MINUTE + LATENESS, 1.0, "", 1, b"b", ())), now_ms=5_100)
    # A late event within the horizon: its correction waits for the refresh too.
    state.apply(one(("c", "view", T0 + 5, 2.0, "", 2, b"c", ())), now_ms=5_200)
    assert state.next_refresh_ms() == 6_000  # the rows and correction; rollups at 15,000
    assert state.take_due(5_900) == ([], [], [])  # not yet
    progress, rollups, corrections = state.take_due(6_000)
    assert [(r.bucket_start_ms, r.event_count, r.closed) for r in progress] == [
        (T0 + MINUTE, 1, False)
    ]
    assert rollups == []  # their own, slower pace
    assert [(c.bucket_start_ms, c.offsets) for c in corrections] == [(T0, (2,))]
    assert state.next_refresh_ms() == 15_000
    progress, rollups, corrections = state.take_due(15_000)
    assert (progress, corrections) == ([], [])
    assert sorted((r.resolution.value, r.event_count) for r in rollups) == [("day", 2), ("hour", 2)]
    assert state.next_refresh_ms() is None
    assert state.take_pending() == ([], [], [])
