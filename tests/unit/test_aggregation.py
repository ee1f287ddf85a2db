import random

import pytest

from pulse.aggregation import CampaignWindows, Event, MetricRow
from pulse.windows import TumblingWindows
from tests.reference import aggregate

MINUTE = 60_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE  # a minute boundary
WINDOWS = TumblingWindows(MINUTE)


def ev(event_type: str, ts: int, value: float = 1.0, offset: int = 0) -> Event:
    return Event(event_type, ts, value, b"raw", 0, offset)


def final_rows(rows: list[MetricRow]) -> dict[tuple[str, int], tuple[int, float]]:
    """What an upsert keeping the highest count leaves in the table."""
    out: dict[tuple[str, int], tuple[int, float]] = {}
    for r in rows:
        key = (r.event_type, r.bucket_start_ms)
        if key not in out or out[key][0] < r.event_count:
            out[key] = (r.event_count, r.value_sum)
    return out


def test_counts_and_sums_per_type_and_window() -> None:
    state = CampaignWindows("c", WINDOWS, lateness_ms=10_000)
    rows, late = state.add(
        [
            ev("click", T0 + 5, 1.5),
            ev("view", T0 + 6, 2.0),
            ev("click", T0 + 59_999, 0.25),
            ev("click", T0 + MINUTE, 4.0),
        ]
    )
    assert late == []
    assert final_rows(rows) == {
        ("click", T0): (2, 1.75),
        ("view", T0): (1, 2.0),
        ("click", T0 + MINUTE): (1, 4.0),
    }


def test_out_of_order_within_lateness_is_counted() -> None:
    state = CampaignWindows("c", WINDOWS, lateness_ms=10_000)
    state.add([ev("click", T0 + MINUTE + 9_000)])  # watermark = T0 + 59 s: first window open
    rows, late = state.add([ev("click", T0 + 30_000)])
    assert late == []
    assert rows == [MetricRow("c", "click", T0, 1, 1.0)]


def test_event_in_a_closed_window_is_late_and_never_reopens_it() -> None:
    state = CampaignWindows("c", WINDOWS, lateness_ms=10_000)
    state.add([ev("click", T0 + 1), ev("click", T0 + 2)])
    state.add([ev("click", T0 + MINUTE + 10_000)])  # watermark = T0 + 60 s closes window T0
    assert state.open_window_count == 1
    rows, late = state.add([ev("click", T0 + 3, offset=7)])
    assert rows == []
    assert [(le.event.offset, le.watermark_ms) for le in late] == [(7, T0 + MINUTE)]


def test_lateness_is_decided_in_offset_order_within_a_batch() -> None:
    state = CampaignWindows("c", WINDOWS, lateness_ms=0)
    rows, late = state.add([ev("a", T0 + 1), ev("a", T0 + MINUTE), ev("a", T0 + 2)])
    assert [le.event.timestamp_ms for le in late] == [T0 + 2]
    assert final_rows(rows) == {("a", T0): (1, 1.0), ("a", T0 + MINUTE): (1, 1.0)}


@pytest.mark.parametrize("seed", range(5))
def test_results_do_not_depend_on_batch_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    events = [
        ev(
            rng.choice("abc"),
            T0 + i * 700 + rng.randrange(-15_000, 15_000),
            rng.randrange(64) / 8,
            offset=i,
        )
        for i in range(3000)
    ]

    def run(batch_sizes: list[int]) -> tuple[dict[tuple[str, int], tuple[int, float]], list[int]]:
        state = CampaignWindows("c", WINDOWS, lateness_ms=5_000)
        rows: list[MetricRow] = []
        late: list[int] = []
        pos = 0
        for size in batch_sizes:
            r, lt = state.add(events[pos : pos + size])
            rows += r
            late += [le.event.offset for le in lt]
            pos += size
        return final_rows(rows), late

    one = run([len(events)])
    cuts = []
    remaining = len(events)
    while remaining:
        cuts.append(min(remaining, rng.randrange(1, 400)))
        remaining -= cuts[-1]
    assert run(cuts) == one
    # And the on-time events match an independent reference.
    late_offsets = set(one[1])
    reference = aggregate(
        ("c", e.event_type, e.timestamp_ms, e.value) for e in events if e.offset not in late_offsets
    )
    assert {(t, int(m.timestamp() * 1000)): v for (_c, t, m), v in reference.items()} == one[0]


def test_snapshot_restores_the_same_state() -> None:
    state = CampaignWindows("c", WINDOWS, lateness_ms=10_000)
    state.add([ev("click", T0 + 1, 2.0), ev("click", T0 + MINUTE + 1, 3.0)])
    clone = CampaignWindows.restore(state.snapshot(), WINDOWS, 10_000)
    more = [
        ev("click", T0 + 2, 1.0),
        ev("click", T0 + 2 * MINUTE + 20_000, 1.0),
        ev("click", T0 + 3),
    ]
    assert clone.add(list(more)) == state.add(list(more))
    assert clone.snapshot() == state.snapshot()
