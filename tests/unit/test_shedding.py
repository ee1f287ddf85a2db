"""Load shedding past the campaign limit: bounded state, shed events set aside with their
bytes, the admitted campaigns exact, the same decisions whatever the batch cuts."""

import contextlib
import dataclasses
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from flows import metrics
from flows.aggregate import build_flow
from pulse.preagg import NO_TIME, Record, heartbeat_record
from pulse.shedding import CampaignLimit
from pulse.windows import DAY_MS
from tests.reference import Ev, windows_reference
from tests.unit.test_flow import (
    CONFIG,
    IDLE,
    LATENESS,
    MINUTE,
    CrashingSink,
    Outputs,
    expected_rows,
    got_rows,
    run_flow,
    stream,
    to_message,
)

T0 = 1_764_000_000_000 - 1_764_000_000_000 % DAY_MS


def event(campaign: str, ts: int, offset: int) -> Record:
    return (campaign, "click", ts, 1.0, "", offset, f"raw{offset}".encode(), ())


def test_the_first_campaigns_of_a_day_are_admitted_and_later_ones_shed() -> None:
    limit = CampaignLimit(2, IDLE, MINUTE)
    records = [
        event("a", T0, 0),
        event("b", T0 + 1, 1),
        event("c", T0 + 2, 2),  # a third campaign on the day: shed
        event("a", T0 + 3, 3),
        event("c", T0 + DAY_MS, 4),  # the next day has room
    ]
    kept, shed = limit.filter(records, 0, NO_TIME)
    assert [r[5] for r in kept] == [0, 1, 3, 4]
    assert [(s.campaign_id, s.offset, s.raw, s.day_start_ms) for s in shed] == [
        ("c", 2, b"raw2", T0)
    ]
    assert limit.take_full() == [T0]
    assert limit.take_full() == []
    restored = CampaignLimit(2, IDLE, MINUTE).restored(limit.snapshot())
    kept, shed = restored.filter([event("c", T0 + 5, 5), event("b", T0 + 6, 6)], 0, NO_TIME)
    assert ([r[5] for r in kept], [s.offset for s in shed]) == ([6], [5])


def test_days_that_can_no_longer_count_are_forgotten_and_not_tracked() -> None:
    limit = CampaignLimit(1, IDLE, MINUTE)
    limit.filter([event("a", T0, 0)], 0, NO_TIME)
    assert limit.admitted(T0) == 1
    beat = heartbeat_record(T0 + DAY_MS + IDLE + MINUTE, 1)
    kept, shed = limit.filter([beat, event("b", T0 + 10, 2)], 0, NO_TIME)
    assert (len(kept), shed) == (2, [])  # the day is past the horizon: late either way
    assert limit.admitted(T0) == 0


def admitted_only(records: list[Ev], per_day: int) -> tuple[list[Ev], list[tuple[int, int]]]:
    """The reference's shedding: per partition and UTC day, the first `per_day` campaigns."""
    admitted: dict[tuple[int, int], set[str]] = defaultdict(set)
    kept: list[Ev] = []
    shed: list[tuple[int, int]] = []
    for r in records:
        if r.heartbeat is None:
            seen = admitted[(r.partition, r.ts // DAY_MS)]
            if r.campaign not in seen and len(seen) >= per_day:
                shed.append((r.partition, r.offset))
                continue
            seen.add(r.campaign)
        kept.append(r)
    return kept, shed


@pytest.mark.parametrize("batch_size", [1, 37, 500])
def test_shed_events_go_aside_and_admitted_campaigns_stay_exact(batch_size: int) -> None:
    records = stream(seed=batch_size, n=3000)
    kept, shed = admitted_only(records, per_day=2)
    assert shed  # 3 campaigns per partition, 2 admitted
    buckets, late = windows_reference(kept, MINUTE, LATENESS, IDLE)
    before = metrics.SHED_EVENTS._value.get()
    config = dataclasses.replace(CONFIG, max_campaigns=2)
    out = run_flow([to_message(e) for e in records], batch_size, config=config)
    assert got_rows(out.rows()) == expected_rows(buckets)
    aside = sorted(
        (r.source_partition, r.source_offset) for r in out.side if r.topic == "events.shed"
    )
    assert aside == sorted(shed)
    assert sorted(
        (r.source_partition, r.source_offset) for r in out.side if r.topic == "events.late"
    ) == sorted(late)
    by_offset = {(e.partition, e.offset): to_message(e).value() for e in records}
    for r in out.side:
        if r.topic == "events.shed":
            assert r.value == by_offset[(r.source_partition, r.source_offset)]
            assert dict(r.headers)["pulse.error"].startswith(b"shed: partition")
    assert metrics.SHED_EVENTS._value.get() - before == len(shed)


def test_shedding_resumes_exactly_after_crashes(tmp_path: Path) -> None:
    records = stream(seed=7, n=3000)
    kept, shed = admitted_only(records, per_day=2)
    buckets, _late = windows_reference(kept, MINUTE, LATENESS, IDLE)
    items = [to_message(e) for e in records]
    config = dataclasses.replace(CONFIG, max_campaigns=2)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    out = Outputs()
    for crash_at in (300, 900, None):
        flow = build_flow(
            "test_flow",
            config,
            TestingSource(items, 25),
            store_sink=CrashingSink(out.store, crash_at),
            side_sink=TestingSink(out.side),
            notification_sink=TestingSink(out.notifications),
        )
        with contextlib.suppress(Exception):  # the crashes are the point
            run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
    assert got_rows(out.rows()) == expected_rows(buckets)
    got = {(r.source_partition, r.source_offset) for r in out.side if r.topic == "events.shed"}
    assert got == set(shed)
