import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from cli.main import build_parser, main
from ingest import loadgen
from ingest.loadgen import EVENT_MIX, LoadPlan, LoadReport, build_batches
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.timeutil import now_ms
from pulse.validation import Limits, check_event


def test_batches_hold_exactly_the_planned_valid_events() -> None:
    plan = LoadPlan(events=1234, campaigns=7, batch_size=500, seed=3)
    batches = list(build_batches(plan, 1234, 100, random.Random(3)))
    assert [len(b.events) for b in batches] == [500, 500, 234]
    events = [e for b in batches for e in b.events]
    assert [e.event_id for e in events] == [f"load-{plan.run}-{i}" for i in range(100, 1334)]
    # Another run of the same plan sends other ids: they are not retries.
    assert LoadPlan(events=1234, campaigns=7, batch_size=500, seed=3).run != plan.run
    assert {e.campaign_id for e in events} <= {f"campaign-{i:03d}" for i in range(7)}
    now = now_ms()
    assert all(check_event(e, now, Limits()) is None for e in events)
    assert {e.event_type for e in events} == {"impression", "click", "conversion"}


def test_event_type_replaces_the_mix() -> None:
    plan = LoadPlan(
        events=3000, campaigns=1, campaign_prefix="campaign", seed=9, event_types=("click",)
    )
    events = [e for b in build_batches(plan, 3000, 0, random.Random(9)) for e in b.events]
    assert len(events) == 3000
    assert {e.event_type for e in events} == {"click"}
    assert {e.campaign_id for e in events} == {"campaign-000"}
    now = now_ms()
    assert all(check_event(e, now, Limits()) is None for e in events)


def test_first_campaign_picks_the_campaign_ids() -> None:
    plan = LoadPlan(events=500, campaigns=1, first_campaign=7, event_types=("click",))
    events = [e for b in build_batches(plan, 500, 0, random.Random(1)) for e in b.events]
    assert {e.campaign_id for e in events} == {"campaign-007"}
    plan = LoadPlan(events=2000, campaigns=3, first_campaign=18)
    events = [e for b in build_batches(plan, 2000, 0, random.Random(1)) for e in b.events]
    assert {e.campaign_id for e in events} == {"campaign-018", "campaign-019", "campaign-020"}


def test_several_event_types_are_drawn_evenly() -> None:
    plan = LoadPlan(events=4000, seed=2, event_types=("click", "conversion"))
    events = [e for b in build_batches(plan, 4000, 0, random.Random(2)) for e in b.events]
    clicks = sum(e.event_type == "click" for e in events)
    assert {e.event_type for e in events} == {"click", "conversion"}
    assert 1700 < clicks < 2300


def test_default_mix_is_mostly_impressions() -> None:
    plan = LoadPlan(events=10_000, seed=4)
    events = [e for b in build_batches(plan, 10_000, 0, random.Random(4)) for e in b.events]
    share = {t: sum(e.event_type == t for e in events) / len(events) for t, _ in EVENT_MIX}
    assert 0.77 < share["impression"] < 0.83
    assert 0.12 < share["click"] < 0.18
    assert 0.03 < share["conversion"] < 0.07


@pytest.mark.parametrize(
    "changes",
    [
        {"events_per_call": 0},
        {"batch_size": 0},
        {"campaigns": 0},
        {"first_campaign": -1},
        {"event_types": ("",)},
    ],
)
def test_plan_rejects_values_that_cannot_work(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        LoadPlan(events=10, **changes)


def test_load_calls_carry_events_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class FakeClient:
        def __init__(self, target: str, batch_size: int) -> None:
            pass

        async def __aenter__(self) -> "FakeClient":
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def ingest_batches(self, batches: Iterator[pb.EventBatch]) -> pb.IngestResponse:
            n = sum(len(b.events) for b in batches)
            calls.append(n)
            return pb.IngestResponse(accepted=n)

    monkeypatch.setattr(loadgen, "PulseClient", FakeClient)
    plan = LoadPlan(events=2500, events_per_call=1000, event_types=("click",))
    report = asyncio.run(loadgen.run_load("unused:1", plan, progress=False))
    assert calls == [1000, 1000, 500]
    assert (report.sent, report.accepted, report.rejected) == (2500, 2500, 0)


def test_cli_load_options_reach_the_plan(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plans: list[LoadPlan] = []

    async def fake_run_load(target: str, plan: LoadPlan, progress: bool = True) -> LoadReport:
        plans.append(plan)
        return LoadReport(plan.events, plan.events, 0, 1.0)

    monkeypatch.setattr(loadgen, "run_load", fake_run_load)
    main(
        [
            "load",
            "--events",
            "3000",
            "--campaigns",
            "1",
            "--first-campaign",
            "7",
            "--events-per-call",
            "1000",
            "--event-type",
            "click",
            "--quiet",
        ]
    )
    assert plans == [
        LoadPlan(
            events=3000,
            campaigns=1,
            first_campaign=7,
            events_per_call=1000,
            event_types=("click",),
        )
    ]
    assert "sent 3,000" in capsys.readouterr().out

    main(["load", "-n", "0", "--event-type", "click", "--event-type", "impression", "-q"])
    forever = plans.pop()
    assert (forever.events, forever.event_types) == (0, ("click", "impression"))
    assert forever.events_per_call == 50_000

    main(["load", "-n", "10", "-q"])
    assert plans.pop().event_types == ()


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "--events-per-call", "0"],
        ["load", "--events-per-call", "many"],
        ["notifications", "--max", "0"],
        ["notifications", "--timeout", "-1"],
    ],
)
def test_cli_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_cli_notifications_options() -> None:
    args = build_parser().parse_args(
        ["notifications", "--from-beginning", "--json", "--max", "2", "--timeout", "1.5"]
    )
    assert (args.from_beginning, args.json, args.max, args.timeout) == (True, True, 2, 1.5)
    args = build_parser().parse_args(["notifications"])
    assert (args.from_beginning, args.json, args.max, args.timeout) == (False, False, None, None)
