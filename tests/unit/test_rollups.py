"""Rollup accumulators: exact while few, sketches beyond; the rows agree with a reference."""

import pickle
import random

from pulse import sketches
from pulse.aggregation import ClosedWindow, Partial, WindowAggregate
from pulse.rollups import Resolution, RollupRow, Rollups, RollupSnapshot
from pulse.windows import HOUR_MS

T0 = 1_764_000_000_000 - 1_764_000_000_000 % 86_400_000  # a day's start
MINUTE = 60_000


def window(
    rng: random.Random, minute: int, events: int, *, sketched: bool
) -> tuple[ClosedWindow, set[str], list[float]]:
    """A closed window of `events` events, with its users and values as a reference."""
    agg = WindowAggregate()
    if sketched:
        assert agg.users is not None and agg.values is not None  # sketches from the start
    start = T0 + minute * MINUTE
    batch = [
        (start + k, rng.randrange(400) / 8, rng.choice(["", f"user-{rng.randrange(50)}"]), k, b"")
        for k in range(events)
    ]
    agg.merge(Partial.of(batch))
    users = {user for _, _, user, _, _ in batch if user}
    return ClosedWindow("c", "click", start, start + MINUTE, agg), users, [e[1] for e in batch]


def rows(rollups: Rollups) -> dict[Resolution, RollupRow]:
    return {r.resolution: r for r in rollups.take_rows()}


def test_rows_match_the_reference_exact_or_sketched_across_promotion() -> None:
    for sizes in ([1], [2, 3], [5] * 8, [30, 40], [120, 1, 200]):
        rng = random.Random(len(sizes))
        made = [window(rng, m, n, sketched=False) for m, n in enumerate(sizes)]
        rng = random.Random(len(sizes))
        sketch_windows = [window(rng, m, n, sketched=True)[0] for m, n in enumerate(sizes)]
        exact, sketched = Rollups(), Rollups()
        exact.add([w for w, _, _ in made])
        sketched.add(sketch_windows)
        got, want = rows(exact), rows(sketched)
        users = set().union(*(u for _, u, _ in made))
        values = [v for _, _, vs in made for v in vs]
        for resolution in Resolution:
            g, w = got[resolution], want[resolution]
            assert (g.event_count, g.unique_users, g.value_p50, g.value_p95, g.value_p99) == (
                w.event_count,
                w.unique_users,
                w.value_p50,
                w.value_p95,
                w.value_p99,
            )
            assert g.event_count == sum(sizes)
            assert g.unique_users == len(users)
            if len(values) <= sketches.KLL_K:  # a KLL sketch is exact here too
                assert (g.value_p50, g.value_p95, g.value_p99) == sketches.exact_quantiles(values)
            assert sketches.distinct(sketches.hll_from(g.users_sketch)) == len(users)
            assert sketches.quantiles(sketches.kll_from(g.values_sketch)) == (
                g.value_p50,
                g.value_p95,
                g.value_p99,
            )


def test_snapshots_keep_exact_and_sketched_accumulators() -> None:
    rng = random.Random(9)
    rollups = Rollups()
    rollups.add([window(rng, 0, 3, sketched=False)[0]])  # exact
    rollups.add([window(rng, 61, 200, sketched=False)[0]])  # the next hour, past SMALL
    want = sorted(rollups.take_rows(), key=lambda r: (r.resolution, r.bucket_start_ms))
    snapshot = rollups.snapshot()
    kinds = {type(entry[5]) for entry in snapshot.entries}
    assert kinds == {tuple, bytes}
    restored = Rollups.restore(snapshot)
    got = sorted(restored.take_rows(), key=lambda r: (r.resolution, r.bucket_start_ms))
    key = [
        (r.resolution, r.bucket_start_ms, r.event_count, r.unique_users, r.value_p99) for r in got
    ]
    assert key == [
        (r.resolution, r.bucket_start_ms, r.event_count, r.unique_users, r.value_p99) for r in want
    ]
    assert {r.bucket_start_ms for r in got if r.resolution is Resolution.HOUR} == {
        T0,
        T0 + HOUR_MS,
    }


def test_a_snapshot_after_a_change_holds_the_change() -> None:
    rng = random.Random(4)
    rollups = Rollups()
    rollups.add([window(rng, 0, 2, sketched=False)[0]])
    before = {(e[1], e[4]) for e in rollups.snapshot().entries}
    rollups.add([window(rng, 1, 3, sketched=False)[0]])
    after = {(e[1], e[4]) for e in rollups.snapshot().entries}
    # A day holds its hours once they expire; until then its row merges them in.
    assert before == {(Resolution.HOUR, 2), (Resolution.DAY, 0)}
    assert after == {(Resolution.HOUR, 5), (Resolution.DAY, 0)}
    assert {r.resolution: r.event_count for r in rollups.take_rows()} == {
        Resolution.HOUR: 5,
        Resolution.DAY: 5,
    }
    rollups.expire("c", T0 + HOUR_MS)
    assert {(e[1], e[4]) for e in rollups.snapshot().entries} == {(Resolution.DAY, 5)}


def test_days_hold_their_hours_and_rows_count_every_window_once() -> None:
    """Windows over three hours of a day: at every step the day's row counts each window
    once, whether its hour is open or has expired into the day."""
    rng = random.Random(11)
    rollups = Rollups()
    counted = 0
    users: set[str] = set()
    for minute in (0, 30, 65, 90, 130):
        closed, window_users, _values = window(rng, minute, 3, sketched=False)
        rollups.add([closed])
        counted += 3
        users |= window_users
        rollups.expire("c", T0 + minute * MINUTE)  # hours before this one expire
        day = rows(rollups)[Resolution.DAY]
        assert (day.event_count, day.unique_users) == (counted, len(users))
    rollups.expire("c", T0 + 3 * HOUR_MS)
    assert {(e[1], e[4]) for e in rollups.snapshot().entries} == {(Resolution.DAY, counted)}


def test_a_snapshot_whose_days_held_their_windows_restores_without_counting_twice() -> None:
    """Snapshots from before days held hours: a day holds the windows of its open hours
    too. Those hours feed the day window by window after the restore, and are not merged
    into it again when they expire."""
    rng = random.Random(12)
    before = Rollups()
    for minute in (0, 1):
        before.add([window(rng, minute, 2, sketched=False)[0]])
    entries = before.snapshot().entries
    hour = next(e for e in entries if e[1] is Resolution.HOUR)
    day = (*hour[:1], Resolution.DAY, *hour[2:])  # the old day: the same windows
    old = RollupSnapshot((hour, day), days_of_hours=False)
    restored = Rollups.restore(pickle.loads(pickle.dumps(old)))
    restored.add([window(rng, 2, 2, sketched=False)[0]])  # the legacy hour
    restored.add([window(rng, 70, 3, sketched=False)[0]])  # the next hour
    assert {r.resolution: r.event_count for r in restored.take_rows()} == {
        Resolution.HOUR: 3,
        Resolution.DAY: 9,
    }
    again = Rollups.restore(restored.snapshot())  # still legacy after another snapshot
    for state in (restored, again):
        state.expire("c", T0 + 2 * HOUR_MS)  # both hours expire into the day
        assert {(e[1], e[4]) for e in state.snapshot().entries} == {(Resolution.DAY, 9)}
