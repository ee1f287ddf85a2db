import random

from ingest.loadgen import LoadPlan, build_batches
from pulse.timeutil import now_ms
from pulse.validation import Limits, check_event


def test_batches_hold_exactly_the_planned_valid_events() -> None:
    plan = LoadPlan(events=1234, campaigns=7, batch_size=500, seed=3)
    batches = list(build_batches(plan, 1234, 100, random.Random(3)))
    assert [len(b.events) for b in batches] == [500, 500, 234]
    events = [e for b in batches for e in b.events]
    assert [e.event_id for e in events] == [f"load-3-{i}" for i in range(100, 1334)]
    assert {e.campaign_id for e in events} <= {f"campaign-{i:03d}" for i in range(7)}
    now = now_ms()
    assert all(check_event(e, now, Limits()) is None for e in events)
    assert {e.event_type for e in events} == {"impression", "click", "conversion"}
