"""Late corrections and retries on the real Bytewax runtime, against the reference.

The store is modelled in memory with the sink's rules (highest revision wins, rollups
with more events win, the late ledger counts an offset once, corrections merge what a
row has not seen), so the flow's output is checked end to end without a database;
`tests/integration/test_timescale_corrections.py` checks the same rules in TimescaleDB.
"""

import dataclasses
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.aggregate import build_flow
from flows.records import Decoder
from pulse import sketches
from pulse.aggregation import LateEvent, MetricRow
from pulse.corrections import (
    CorrectionBatch,
    StoredRollup,
    StoredWindow,
    by_row,
    correct_rollup,
    correct_window,
)
from pulse.preagg import RecordBatch
from pulse.rollups import ROLLUP_MS, RollupRow
from pulse.windowing import PartitionWindows, StepOutput
from pulse.windows import DAY_MS, HOUR_MS
from tests.reference import Bucket, Ev, windows_reference
from tests.unit.test_flow import (
    CONFIG,
    IDLE,
    LATENESS,
    MINUTE,
    PARTITIONS,
    T0,
    CrashingSink,
    Outputs,
    run_flow,
    to_message,
)

HOUR, DAY = HOUR_MS, DAY_MS
CORRECTION = 5 * MINUTE
DEDUP_S = 150
FLOW = dataclasses.replace(CONFIG, correction_ms=CORRECTION, dedup_s=DEDUP_S)

WindowKey = tuple[str, str, int]


@dataclasses.dataclass
class StoredRow:
    window: StoredWindow
    revision: int
    closed: bool


class Store:
    """event_metrics and event_sketch_rollups as the TimescaleDB sink leaves them."""

    def __init__(self) -> None:
        self.rows: dict[WindowKey, StoredRow] = {}
        self.rollups: dict[tuple[str, str, str, int], StoredRollup] = {}
        self.ledger: set[tuple[int, int, int]] = set()

    def apply(self, items: list[Any]) -> "Store":
        for item in items:
            if isinstance(item, MetricRow):
                self._row(item)
            elif isinstance(item, RollupRow):
                key = (item.resolution.value, item.campaign_id, item.event_type)
                stored = self.rollups.get((*key, item.bucket_start_ms))
                if stored is None or stored.event_count < item.event_count:
                    offset = stored.corrected_offset if stored else -1
                    self.rollups[(*key, item.bucket_start_ms)] = StoredRollup(
                        item.event_count, item.users_sketch, item.values_sketch, offset
                    )
            elif isinstance(item, LateEvent):
                self._late(item)
            elif isinstance(item, CorrectionBatch):
                self._correct(item)
        return self

    def _row(self, row: MetricRow) -> None:
        key = (row.campaign_id, row.event_type, row.bucket_start_ms)
        stored = self.rows.get(key)
        if stored is not None and stored.revision >= row.revision:
            return
        late = stored.window.late_events if stored else 0
        offset = stored.window.corrected_offset if stored else -1
        window = StoredWindow(
            event_count=row.event_count,
            on_time_count=row.event_count,
            value_sum=row.value_sum,
            value_min=row.value_min,
            value_max=row.value_max,
            first_event_ms=row.first_event_ms,
            last_event_ms=row.last_event_ms,
            late_events=late,
            users_sketch=row.users_sketch,
            values_sketch=row.values_sketch,
            corrected_offset=offset,
        )
        self.rows[key] = StoredRow(window, row.revision, row.closed)

    def _late(self, event: LateEvent) -> None:
        if (event.partition, event.offset, event.bucket_start_ms) in self.ledger:
            return
        self.ledger.add((event.partition, event.offset, event.bucket_start_ms))
        key = (event.campaign_id, event.event_type, event.bucket_start_ms)
        stored = self.rows.get(key) or StoredRow(StoredWindow(), 1, True)
        window = dataclasses.replace(stored.window, late_events=stored.window.late_events + 1)
        self.rows[key] = dataclasses.replace(stored, window=window)

    def _correct(self, batch: CorrectionBatch) -> None:
        windows, rollups = by_row([batch])
        for key, corrections in windows.items():
            stored = self.rows.get(key)
            row = correct_window(stored.window if stored else None, corrections)
            if row is None:
                continue
            window = StoredWindow(
                event_count=row.event_count,
                on_time_count=row.on_time_count,
                value_sum=row.value_sum,
                value_min=row.value_min,
                value_max=row.value_max,
                first_event_ms=row.first_event_ms,
                last_event_ms=row.last_event_ms,
                late_events=row.late_events,
                users_sketch=row.users_sketch,
                values_sketch=row.values_sketch,
                corrected_offset=row.corrected_offset,
            )
            self.rows[key] = StoredRow(window, row.revision, True)
        for rkey, corrections in rollups.items():
            rollup = correct_rollup(self.rollups.get(rkey), rkey[0], rkey[3], corrections)
            if rollup is not None:
                self.rollups[rkey] = StoredRollup(
                    rollup.event_count,
                    rollup.users_sketch,
                    rollup.values_sketch,
                    rollup.corrected_offset,
                )

    def columns(self) -> dict[WindowKey, tuple[object, ...]]:
        return {
            k: (
                r.window.event_count,
                r.window.on_time_count,
                r.window.value_sum,
                r.window.value_min,
                r.window.value_max,
                r.window.first_event_ms,
                r.window.last_event_ms,
                r.window.late_events,
                r.closed,
            )
            for k, r in self.rows.items()
        }

    def users(self, key: WindowKey) -> int:
        sketch = self.rows[key].window.users_sketch
        return sketches.distinct(sketches.hll_from(sketch)) if sketch else 0


def expected(buckets: dict[WindowKey, Bucket]) -> dict[WindowKey, tuple[object, ...]]:
    return {
        k: (b.count, b.on_time, b.total, b.low, b.high, b.first, b.last, b.late, True)
        for k, b in buckets.items()
    }


def stream(seed: int, n: int, start: int = T0) -> list[Ev]:
    """9 campaigns over 3 partitions: stragglers within and beyond the correction
    horizon, retries within and beyond the dedup horizon, and heartbeats."""
    rng = random.Random(seed)
    offsets = [0] * PARTITIONS
    clock = start
    out: list[Ev] = []
    sent: list[Ev] = []
    for i in range(n):
        clock += rng.randrange(0, 300)
        if rng.random() < 0.03:
            for p in range(PARTITIONS):
                out.append(Ev(p, offsets[p], heartbeat=clock))
                offsets[p] += 1
            continue
        if sent and rng.random() < 0.08:  # a retry: the same event again, at a new offset
            back = 600 if rng.random() < 0.7 else 3000  # some beyond the dedup horizon
            again = sent[-rng.randrange(1, min(len(sent), back) + 1)]
            out.append(dataclasses.replace(again, offset=offsets[again.partition]))
            offsets[again.partition] += 1
            continue
        campaign = rng.randrange(9)
        p = campaign % PARTITIONS
        ts = clock - rng.randrange(0, 6000)
        if rng.random() < 0.06:
            ts -= rng.randrange(10_000, 9 * MINUTE)  # late: some within 5 minutes, some not
        event = Ev(
            p,
            offsets[p],
            f"c{campaign}",
            rng.choice(["click", "view", "buy"]),
            ts,
            rng.randrange(0, 80) / 4,
            f"u{rng.randrange(40)}",
            event_id=f"id-{i}",
        )
        out.append(event)
        sent.append(event)
        offsets[p] += 1
    # Heartbeats far enough ahead to close every window.
    out += [Ev(p, offsets[p], heartbeat=clock + 2 * MINUTE + IDLE) for p in range(PARTITIONS)]
    return out


def reference(records: list[Ev]) -> tuple[dict[WindowKey, Bucket], list[tuple[int, int]]]:
    return windows_reference(records, MINUTE, LATENESS, IDLE, CORRECTION, DEDUP_S)


def check(store: Store, records: list[Ev]) -> None:
    buckets, _late = reference(records)
    assert store.columns() == expected(buckets)
    for key, b in buckets.items():
        assert store.users(key) == len(b.users), key  # HLL is exact for small counts
    # The merged sketches of each hour and day cover every counted event, once.
    want: dict[tuple[str, str, str, int], int] = {}
    for (campaign, event_type, start), b in buckets.items():
        for resolution, length in ROLLUP_MS.items():
            rkey = (resolution.value, campaign, event_type, start - start % length)
            want[rkey] = want.get(rkey, 0) + b.count
    assert {k: r.event_count for k, r in store.rollups.items()} == {
        k: v for k, v in want.items() if v
    }


def test_the_stream_has_every_case() -> None:
    records = stream(seed=1, n=4000)
    buckets, late = reference(records)
    plain, _ = windows_reference(records, MINUTE, LATENESS, IDLE, CORRECTION, 0)
    corrected = sum(b.count - b.on_time for b in buckets.values())
    retries = sum(b.count for b in plain.values()) - sum(b.count for b in buckets.values())
    distinct = len({e.event_id for e in records if e.heartbeat is None})
    counted_again = sum(b.count for b in buckets.values()) + len(late) - distinct
    assert corrected > 50
    assert len(late) > 20
    assert retries > 100
    assert counted_again > 5  # retries after the dedup horizon count again


@pytest.mark.parametrize(
    ("batch_size", "workers", "refresh_ms"),
    [(1, 1, 0), (37, 1, 0), (500, 1, 0), (64, 2, 0), (10, 1, 10**9)],
)
def test_corrections_and_dedup_match_the_reference(
    batch_size: int, workers: int, refresh_ms: float
) -> None:
    records = stream(seed=batch_size, n=4000)
    config = dataclasses.replace(FLOW, refresh_ms=refresh_ms)  # 10**9: only at the end
    out = run_flow([to_message(e) for e in records], batch_size, workers, config=config)
    check(Store().apply(out.store), records)
    _buckets, late = reference(records)
    assert sorted((r.source_partition, r.source_offset) for r in out.side) == sorted(late)


def test_duplicates_are_counted_once_and_never_dead_lettered() -> None:
    first = [Ev(0, i, "c1", "click", T0 + i, 1.0, event_id=f"e{i}") for i in range(10)]
    retry = [dataclasses.replace(e, offset=10 + e.offset) for e in first[3:7]]
    out = run_flow([to_message(e) for e in first + retry], batch_size=4, config=FLOW)
    rows = Store().apply(out.store).rows
    assert rows[("c1", "click", T0)].window.event_count == 10
    assert out.side == []


@pytest.mark.parametrize(
    ("seed", "start", "crash_points", "refresh_ms"),
    [
        (7, T0, (500, 1500), 0),
        (8, T0 - 6 * MINUTE, (300, 900), 0),
        (9, T0 - 4 * MINUTE, (700, 1100), 0),
        (10, T0 - 5 * MINUTE, (100, 250), 20),  # corrections gathered between refreshes
    ],
)
def test_corrections_resume_exactly_after_crashes(
    tmp_path: Path, seed: int, start: int, crash_points: tuple[int, int], refresh_ms: float
) -> None:
    """Crash twice (mid-backfill, and around the end of an hour); resume from the
    recovery store: the same final rows and rollups."""
    records = stream(seed=seed, n=3000, start=start)
    items = [to_message(e) for e in records]
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    out = Outputs()
    crashes = 0
    for crash_at in (*crash_points, None):
        flow = build_flow(
            "test_flow",
            dataclasses.replace(FLOW, refresh_ms=refresh_ms),
            TestingSource(items, 25),
            # The crash takes down a batch holding corrections (written, not committed):
            # the replay emits them again.
            store_sink=CrashingSink(out.store, crash_at, crash_on=CorrectionBatch),
            side_sink=TestingSink(out.side),
            notification_sink=TestingSink(out.notifications),
        )
        try:
            run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
        except Exception:
            crashes += 1
    assert crashes == 2
    replayed = [c for b in out.store if isinstance(b, CorrectionBatch) for c in b.corrections]
    assert len({(c.partition, o) for c in replayed for o in c.offsets}) < sum(
        c.count for c in replayed
    )  # some corrections were emitted twice; the store merged them once
    check(Store().apply(out.store), records)


def step_items(step: StepOutput) -> list[Any]:
    """A step's output as the flow hands it to the store."""
    items: list[Any] = [*step.rows, *step.rollups]
    if step.corrections:
        items.append(CorrectionBatch(tuple(step.corrections)))
    return items + step.late


def decode(records: list[Ev]) -> RecordBatch:
    [(_key, batch)] = Decoder("events.dlq")([to_message(e) for e in records])  # type: ignore[misc]
    return batch


def state() -> PartitionWindows:
    return PartitionWindows(
        0, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, dedup_s=DEDUP_S, refresh_ms=0
    )


def test_rollup_corrections_route_alike_wherever_a_replay_cuts_the_batches() -> None:
    """A late event just before the heartbeat that ends its hour: the hour's accumulator
    takes it whether or not the heartbeat is in the same batch, so a replay cut elsewhere
    cannot count it twice (or lose it)."""
    hour_end = T0  # T0 is on the hour
    records = [
        Ev(0, 0, "c1", "click", hour_end - 30_000, 1.0, "u1", event_id="a"),
        Ev(0, 1, "c1", "click", hour_end - 20_000, 2.0, "u2", event_id="b"),
        Ev(0, 2, "c1", "click", hour_end - 4 * MINUTE, 4.0, "u3", event_id="late"),
        Ev(0, 3, heartbeat=hour_end + MINUTE + IDLE),
    ]
    buckets, _late = reference(records)
    assert buckets[("c1", "click", hour_end - 4 * MINUTE)].late == 1

    first = state()
    items = step_items(first.apply_batch(decode(records[:2])))
    snapshot = first.snapshot()
    items += step_items(first.apply_batch(decode(records[2:3])))
    items += step_items(first.apply_batch(decode(records[3:])))
    # A crash, and a replay from the snapshot that reads the rest in one batch.
    replay = PartitionWindows.restore(
        snapshot, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, dedup_s=DEDUP_S
    )
    items += step_items(replay.apply_batch(decode(records[2:])))
    store = Store().apply(items)
    hour = hour_end - HOUR
    assert store.rollups[("hour", "c1", "click", hour)].event_count == 3
    assert store.rollups[("day", "c1", "click", hour - hour % DAY)].event_count == 3
    assert store.columns()[("c1", "click", hour_end - 4 * MINUTE)][:2] == (1, 0)


def test_a_day_whose_only_events_are_late_gets_its_row() -> None:
    """A campaign's first events of the day all arrive after the heartbeats closed their
    windows, while their hour is still open: the hour holds them, and the day's row
    (which merges its open hours) is written too, not only once a window closes on time."""
    records = [
        Ev(0, 0, heartbeat=T0 + 4 * MINUTE + IDLE),
        Ev(0, 1, "c2", "click", T0 + MINUTE, 1.0, "u1", event_id="x"),
        Ev(0, 2, "c2", "click", T0 + 30_000, 2.0, "u2", event_id="y"),
    ]
    buckets, _late = reference(records)
    assert sum(b.count - b.on_time for b in buckets.values()) == 2  # both corrections
    windows = state()
    items = step_items(windows.apply_batch(decode(records[:1])))
    items += step_items(windows.apply_batch(decode(records[1:])))
    store = Store().apply(items)
    check(store, records)
    assert store.rollups[("day", "c2", "click", T0 - T0 % DAY)].event_count == 2


def test_a_snapshot_from_before_dedup_and_corrections_still_restores() -> None:
    """Unpickled from an older Pulse: the new fields are missing; they start afresh."""
    live = state()
    live.apply_batch(decode([Ev(0, 0, "c1", "click", T0 + 1000, 1.0, "u1", event_id="a")]))
    old = live.snapshot()
    for name in ("log_ms", "ids", "duplicates", "corrections"):
        object.__delattr__(old, name)
    restored = PartitionWindows.restore(
        old, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, dedup_s=DEDUP_S
    )
    out = restored.apply_batch(
        decode([Ev(0, 1, "c1", "click", T0 + 2000, 2.0, "u2", event_id="b")])
    )
    assert (out.counted, out.duplicates) == (1, 0)
    assert restored.open_window_count == 1
