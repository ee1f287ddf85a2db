"""The aggregation dataflow on the real Bytewax runtime, with testing sources and sinks."""

import random

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from confluent_kafka import Message

from flows.aggregate import FlowConfig, build_flow
from flows.records import OutMessage
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.aggregation import MetricRow
from tests.reference import aggregate

MINUTE = 60_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE
CONFIG = FlowConfig(
    window_ms=MINUTE,
    lateness_ms=10_000,
    source_topic="events.raw",
    late_topic="events.late",
    dlq_topic="events.dlq",
)


def record(offset: int, campaign: str, event_type: str, ts: int, value: float) -> Message:
    raw = pb.RawEvent(
        campaign_id=campaign,
        event_type=event_type,
        timestamp=ts,
        value=value,
        event_id=f"e{offset}",
    ).SerializeToString()
    return Message(key=campaign.encode(), value=raw, topic="events.raw", partition=0, offset=offset)


def garbage(offset: int, value: bytes | None) -> Message:
    return Message(key=b"k", value=value, topic="events.raw", partition=0, offset=offset)


def run_flow(
    items: list[Message], batch_size: int, workers: int = 1
) -> tuple[list[MetricRow], list[OutMessage]]:
    rows: list[MetricRow] = []
    side: list[OutMessage] = []
    flow = build_flow(
        "test_flow", CONFIG, TestingSource(items, batch_size), TestingSink(rows), TestingSink(side)
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return rows, side


def table(rows: list[MetricRow]) -> dict[tuple[str, str, int], tuple[int, float]]:
    """The event_metrics table after the sink's highest-count-wins upserts."""
    out: dict[tuple[str, str, int], tuple[int, float]] = {}
    for r in rows:
        key = (r.campaign_id, r.event_type, r.bucket_start_ms)
        if key not in out or out[key][0] < r.event_count:
            out[key] = (r.event_count, r.value_sum)
    return out


def reference(
    events: list[tuple[str, str, int, float]],
) -> dict[tuple[str, str, int], tuple[int, float]]:
    return {(c, t, int(m.timestamp() * 1000)): v for (c, t, m), v in aggregate(events).items()}


def synthetic(seed: int, n: int) -> list[tuple[str, str, int, float]]:
    """Events moving forward in time, shuffled within a few seconds (never late at 10 s)."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = T0 + i * 50 + rng.randrange(0, 3000)
        events.append(
            (
                f"c{rng.randrange(7)}",
                rng.choice(["click", "view", "buy"]),
                ts,
                rng.randrange(0, 80) / 4,
            )
        )
    return events


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (37, 1), (500, 1), (64, 2)])
def test_aggregates_match_the_reference(batch_size: int, workers: int) -> None:
    events = synthetic(seed=batch_size, n=4000)
    items = [record(i, *e) for i, e in enumerate(events)]
    rows, side = run_flow(items, batch_size, workers)
    assert side == []
    assert table(rows) == reference(events)


def test_late_events_go_to_the_late_topic_with_their_bytes() -> None:
    on_time = [("c1", "click", T0 + 1_000, 1.0), ("c1", "click", T0 + MINUTE + 15_000, 2.0)]
    late = ("c1", "click", T0 + 2_000, 4.0)  # window T0 closed at watermark T0 + 65 s
    items = [record(i, *e) for i, e in enumerate([*on_time, late])]
    rows, side = run_flow(items, batch_size=1)
    assert table(rows) == reference(on_time)
    assert len(side) == 1
    assert side[0].topic == "events.late"
    assert side[0].value == items[2].value()
    assert side[0].key == b"c1"
    headers = dict(side[0].headers)
    assert headers["pulse.source"] == b"events.raw[0]@2"
    assert b"late" in headers["pulse.error"]


def test_undecodable_records_go_to_the_dead_letter_topic_and_the_flow_goes_on() -> None:
    good = [("c1", "view", T0 + 1, 0.5), ("c2", "view", T0 + 2, 0.5)]
    empty_ids = pb.RawEvent(campaign_id="", event_type="view", timestamp=T0).SerializeToString()
    items = [
        record(0, *good[0]),
        garbage(1, b"\xff\xff\xff not protobuf"),
        garbage(2, None),
        garbage(3, empty_ids),
        record(4, *good[1]),
    ]
    rows, side = run_flow(items, batch_size=2)
    assert table(rows) == reference(good)
    dead = sorted(side, key=lambda m: dict(m.headers)["pulse.source"])
    assert [m.topic for m in dead] == ["events.dlq"] * 3
    assert [dict(m.headers)["pulse.source"] for m in dead] == [
        b"events.raw[0]@1",
        b"events.raw[0]@2",
        b"events.raw[0]@3",
    ]
    assert dead[0].value == b"\xff\xff\xff not protobuf"
    assert b"not an analytics.v1.RawEvent" in dict(dead[0].headers)["pulse.error"]
    assert dead[1].value is None
    assert dead[2].value == empty_ids
    assert b"empty" in dict(dead[2].headers)["pulse.error"]


def test_the_deployable_flow_builds_from_settings_alone() -> None:
    """`python -m bytewax.run "flows.main:get_flow()"` needs nothing but the environment."""
    from flows.main import get_flow

    flow = get_flow()
    assert flow.flow_id == "pulse_aggregate"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"campaign_id": "c\x00x"}, b"control characters"),
        ({"event_type": "click\n"}, b"control characters"),
        ({"timestamp": 10**17}, b"after the year 9999"),
        ({"timestamp": -1}, b"before 1970"),
        ({"value": float("nan")}, b"not a finite number"),
        ({"event_id": ""}, b"event_id is empty"),
        ({"campaign_id": "c" * 129}, b"129 characters"),
    ],
)
def test_records_the_edge_would_refuse_are_dead_lettered(
    fields: dict[str, object], error: bytes
) -> None:
    good = ("c1", "view", T0 + 1, 0.5)
    base: dict[str, object] = {
        "campaign_id": "c1",
        "event_type": "view",
        "timestamp": T0 + 2,
        "event_id": "bad",
    }
    raw = pb.RawEvent(**{**base, **fields}).SerializeToString()  # type: ignore[arg-type]
    items = [record(0, *good), garbage(1, raw), record(2, "c1", "view", T0 + 3, 0.5)]
    rows, side = run_flow(items, batch_size=3)
    assert table(rows) == reference([good, ("c1", "view", T0 + 3, 0.5)])
    assert [m.topic for m in side] == ["events.dlq"]
    assert side[0].value == raw
    assert error in dict(side[0].headers)["pulse.error"]
