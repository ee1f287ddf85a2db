"""Dimension slices: configuration, the bounded values, and exact slices of one partition
whatever the batch cuts (against an independent reference)."""

import random
from collections import defaultdict

import pytest

from pulse.aggregation import MetricRow
from pulse.dimensions import (
    MISSING,
    OTHER,
    GroupBy,
    Slicer,
    is_series,
    series,
    series_of_row,
    split_series,
)
from pulse.errors import ConfigError
from pulse.preagg import Record, RecordBatch, heartbeat_record
from pulse.windowing import PartitionWindows
from pulse.windows import DAY_MS
from tests.reference import Ev, slices_reference, windows_reference

MINUTE = 60_000
LATENESS = 10_000
IDLE = 30_000
CORRECTION = 3 * MINUTE
T0 = 1_764_000_000_000 - 1_764_000_000_000 % DAY_MS + DAY_MS - 20 * MINUTE  # near midnight
SETS = [["country"], ["country", "device"]]


# --- configuration ----------------------------------------------------------------------


def test_sets_parse_sorted_and_deduplicated() -> None:
    group_by = GroupBy.parse(" country ; device,country; country,device ;", 5)
    assert group_by.sets == (("country",), ("country", "device"))
    assert group_by.names == ("country", "device")
    assert group_by.max_values == 5
    assert not GroupBy.parse("")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("user_id", "distinct users"),
        ("a,b,c,d,e", "limit 4"),
        (";".join(f"d{i}" for i in range(9)), "9 dimension sets"),
        ("bad\x1fname", "invalid dimension name"),
        ("x" * 65, "invalid dimension name"),
    ],
)
def test_bad_sets_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        GroupBy.parse(text)


def test_a_series_splits_back_into_its_columns() -> None:
    name = series("click", ("country", "device"), ["DE", "ios"])
    assert is_series(name)
    assert not is_series("click")
    assert split_series(name) == ("click", "country,device", {"country": "DE", "device": "ios"})
    assert series_of_row("click", "country,device", {"device": "ios", "country": "DE"}) == name


# --- the slicer -------------------------------------------------------------------------


def test_missing_invalid_and_overflowing_values_are_named() -> None:
    slicer = Slicer(GroupBy.parse("country;country,device", max_values=2))
    names = slicer.group_by.names  # ("country", "device")
    assert names == ("country", "device")

    def country(ts: int, *values: str) -> str:
        return split_series(slicer.series("click", ts, values)[0])[2]["country"]

    assert country(T0, "DE", "") == "DE"
    assert country(T0, "", "ios") == MISSING
    assert country(T0, "FR", "ios") == "FR"
    assert country(T0, "US", "ios") == OTHER  # a third value on the day
    assert country(T0, "DE", "ios") == "DE"  # admitted values stay admitted
    assert country(T0, "x" * 257, "ios") == OTHER
    assert country(T0, "bad\nvalue", "ios") == OTHER
    assert country(T0 + DAY_MS, "US", "ios") == "US"  # the next day starts afresh
    assert slicer.take_overflow() == {"country": 3}
    assert slicer.take_overflow() == {}
    both = split_series(slicer.series("click", T0, ("DE", ""))[1])
    assert both == ("click", "country,device", {"country": "DE", "device": MISSING})


def test_admitted_values_survive_a_snapshot_and_expire_by_day() -> None:
    group_by = GroupBy.parse("country", max_values=1)
    slicer = Slicer(group_by)
    slicer.series("click", T0, ("DE",))
    slicer.series("click", T0 + DAY_MS, ("FR",))
    restored = Slicer.restore(group_by, slicer.snapshot())
    assert split_series(restored.series("click", T0, ("FR",))[0])[2] == {"country": OTHER}
    day = T0 - T0 % DAY_MS
    restored.forget_before(day + DAY_MS)  # the first day can no longer count anything
    assert split_series(restored.series("click", T0, ("FR",))[0])[2] == {"country": "FR"}
    # A snapshot of other dimensions restores with none admitted for the new ones.
    other = Slicer.restore(GroupBy.parse("device", max_values=1), slicer.snapshot())
    assert split_series(other.series("click", T0, ("ios",))[0])[2] == {"device": "ios"}


# --- one partition, against the reference -----------------------------------------------


def stream(seed: int, n: int = 3000) -> list[Ev]:
    """Events of 4 campaigns with jitter, stragglers, heartbeats and a day boundary; 7
    countries (some missing), 3 devices."""
    rng = random.Random(seed)
    out: list[Ev] = []
    clock = T0
    for offset in range(n):
        clock += rng.randrange(0, 800)
        if rng.random() < 0.05:
            out.append(Ev(0, offset, heartbeat=clock + rng.randrange(-2000, 2000)))
            continue
        ts = clock - rng.randrange(0, 8000)
        if rng.random() < 0.05:
            ts -= rng.randrange(10_000, 5 * MINUTE)  # a straggler: late, often corrected
        dims = []
        if rng.random() < 0.9:
            dims.append(("country", rng.choice(["DE", "FR", "US", "JP", "BR", "IN", "NG"])))
        if rng.random() < 0.95:
            dims.append(("device", rng.choice(["ios", "android", "web"])))
        out.append(
            Ev(
                0,
                offset,
                f"c{rng.randrange(4)}",
                rng.choice(["click", "view"]),
                ts,
                rng.randrange(0, 400) / 8,
                f"u{rng.randrange(50)}",
                dims=tuple(dims),
            )
        )
    return out


def record(e: Ev, names: tuple[str, ...]) -> Record:
    if e.heartbeat is not None:
        return heartbeat_record(e.heartbeat, e.offset)
    given = dict(e.dims)
    values = tuple(given.get(n, "") for n in names)
    return (e.campaign, e.event_type, e.ts, e.value, e.user, e.offset, b"raw", values)


Totals = dict[tuple[str, str, int], tuple[int, float]]


def run(records: list[Ev], cut: int, group_by: GroupBy) -> tuple[Totals, Totals, dict[str, int]]:
    """What the store ends with: (count, sum) per window key (series for slices), with
    corrections merged; and the overflow counted."""
    state = PartitionWindows(0, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, group_by=group_by)
    rows: dict[tuple[str, str, int], MetricRow] = {}
    corrected: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    overflow: dict[str, int] = defaultdict(int)
    for i in range(0, len(records), cut):
        part = [record(e, group_by.names) for e in records[i : i + cut]]
        beats = sum(1 for r in part if not r[0])
        step = state.apply_batch(RecordBatch(0, part, heartbeats=beats))
        for row in step.rows:
            key = (row.campaign_id, row.event_type, row.bucket_start_ms)
            if key not in rows or rows[key].revision < row.revision:
                rows[key] = row
        for c in step.corrections:
            corrected[(c.campaign_id, c.event_type, c.bucket_start_ms)] += c.values
        for name, count in step.overflow.items():
            overflow[name] += count
    for c in state.take_corrections():
        corrected[(c.campaign_id, c.event_type, c.bucket_start_ms)] += c.values
    out: dict[tuple[str, str, int], tuple[int, float]] = {}
    for key in rows.keys() | corrected.keys():
        stored = rows.get(key)
        late = corrected.get(key, [])
        count = (stored.event_count if stored else 0) + len(late)
        total = (stored.value_sum if stored else 0.0) + sum(late)
        out[key] = (count, total)
    totals = {k: v for k, v in out.items() if not is_series(k[1])}
    slices = {k: v for k, v in out.items() if is_series(k[1])}
    return totals, slices, dict(overflow)


@pytest.mark.parametrize("cut", [1, 13, 200, 5000])
@pytest.mark.parametrize("max_values", [3, 1000])
def test_slices_match_the_reference_and_add_up_to_the_totals(cut: int, max_values: int) -> None:
    records = stream(seed=cut + max_values)
    counted: list[Ev] = []
    buckets, _late = windows_reference(
        records, MINUTE, LATENESS, IDLE, correction_ms=CORRECTION, counted=counted
    )
    expected = slices_reference(counted, MINUTE, SETS, max_values)
    group_by = GroupBy.parse("country;country,device", max_values)
    totals, slices, overflow = run(records, cut, group_by)

    assert totals == {k: (b.count, b.total) for k, b in buckets.items() if b.count}
    got = {}
    for (campaign, name, start), value in slices.items():
        event_type, dimension_set, dims = split_series(name)
        got[(campaign, event_type, start, dimension_set, tuple(sorted(dims.items())))] = value
    assert got == {k: (b.count, b.total) for k, b in expected.items()}
    assert any(b.late for b in buckets.values())  # corrections are exercised
    # Per set, the slices of a window add up to its campaign row, exactly.
    for dimension_set in ("country", "country,device"):
        added: dict[tuple[str, str, int], int] = defaultdict(int)
        for (campaign, event_type, start, name, _dims), (count, _sum) in got.items():
            if name == dimension_set:
                added[(campaign, event_type, start)] += count
        assert added == {k: v[0] for k, v in totals.items()}
    others = sum(c for k, (c, _s) in got.items() if k[3:] == ("country", (("country", OTHER),)))
    assert overflow.get("country", 0) == (others if max_values == 3 else 0)
    if max_values == 3:
        assert others > 0
