"""gRPC -> Kafka -> flow -> TimescaleDB + notifications, with crashes and downtime.

Over 200,000 events stream through the edge while the dataflow is killed with SIGKILL
several times (and, in the downtime test, kept down for several times the allowed
lateness). A few stragglers arrive 20-40 s late: within the 25 s correction horizon they
correct their closed windows, beyond it they go to the late topic. Afterwards every
`event_metrics` row must equal an independent reference computed from the `events.raw`
log itself, the spike must have fired exactly one alert and one resolve (on the values
at close, whatever corrections followed), and nothing may be lost or counted twice:
accepted at the edge = counted + late beyond the horizon, and every bad record is
dead-lettered once.
"""

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import psycopg
import pytest
from confluent_kafka import Producer

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse import sketches
from pulse.timeutil import datetime_to_ms
from sinks.kafka_outputs import from_notification
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline, running
from tests.kafka import consume_all
from tests.reference import Bucket, Ev, windows_reference

WINDOW_S, LATENESS_S, IDLE_S = 10, 2, 5
CORRECTION_S, DEDUP_S = 25, 3600
PARTITIONS = 3
SPIKE_THRESHOLD = 3000
RULES = f"""
[[rule]]
name = "click-spike"
kind = "threshold"
campaign = "*"
event_type = "click"
metric = "count"
op = "above"
threshold = {SPIKE_THRESHOLD}
"""


@pytest.fixture
def analytics(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    env = {
        "PULSE_WINDOW_SECONDS": str(WINDOW_S),
        "PULSE_ALLOWED_LATENESS_SECONDS": str(LATENESS_S),
        "PULSE_IDLE_TIMEOUT_SECONDS": str(IDLE_S),
        "PULSE_ALERT_RULES": str(rules),
        "PULSE_CORRECTION_HORIZON_SECONDS": str(CORRECTION_S),
    }
    with running(stack, database, topics, tmp_path, env) as started:
        yield started


@dataclass
class Plan:
    calls: int = 24
    per_call: int = 8500
    pause_s: float = 1.2
    spike_calls: tuple[int, ...] = (11, 12, 13)
    kills: int = 3
    downtime_s: float = 0.0
    seed: int = 1
    campaigns: list[str] = field(default_factory=list)


def build_call(rng: random.Random, plan: Plan, call: int, first_id: int) -> list[pb.RawEvent]:
    """One call's events: recent event times, a few stragglers, and the spike's clicks."""
    now = int(time.time() * 1000)
    events = []
    spike_clicks = 3000 if call in plan.spike_calls else 50
    for i in range(plan.per_call):
        if i < spike_clicks:
            campaign, event_type = plan.campaigns[0], "click"
        else:
            campaign = rng.choice(plan.campaigns[1:])
            event_type = rng.choice(["impression", "impression", "click"])
        ts = now - rng.randrange(0, 1500)
        if rng.random() < 0.004:
            ts -= rng.randrange(20_000, 40_000)  # far behind every watermark: late
        events.append(
            pb.RawEvent(
                campaign_id=campaign,
                event_type=event_type,
                timestamp=ts,
                value=rng.randrange(0, 4000) / 8,
                event_id=f"e{first_id + i}",
                dimensions={"user_id": f"u{rng.randrange(3000)}"},
            )
        )
    return events


def read_log(bootstrap: str, topic: str) -> list[Ev]:
    """The events and heartbeats of `topic` as the reference sees them (bad records skipped)."""
    out: list[Ev] = []
    for p, offset, key, value, _headers in consume_all(bootstrap, topic, PARTITIONS):
        if key == b"":
            out.append(Ev(p, offset, heartbeat=pb.Heartbeat.FromString(value or b"").wall_time_ms))
        elif key != b"junk":
            e = pb.RawEvent.FromString(value or b"")
            user = e.dimensions.get("user_id", "")
            out.append(
                Ev(
                    *(p, offset, e.campaign_id, e.event_type, e.timestamp, e.value, user),
                    event_id=e.event_id,
                )
            )
    return out


def stored(dsn: str, campaigns: list[str]) -> dict[tuple[str, str, int], tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT campaign_id, event_type, bucket, event_count, value_sum, value_min,"
            " value_max, first_event_at, last_event_at, late_events, closed, on_time_count,"
            " unique_users, value_p50, value_p95, value_p99 FROM event_metrics"
            " WHERE campaign_id = ANY(%s)",
            (campaigns,),
        ).fetchall()
    out = {}
    for c, t, bucket, *rest in rows:
        first, last = rest[4], rest[5]
        rest[4] = datetime_to_ms(first) if first else None
        rest[5] = datetime_to_ms(last) if last else None
        out[(c, t, datetime_to_ms(bucket))] = tuple(rest)
    return out


def counted(dsn: str, campaigns: list[str]) -> int:
    return sum(cast(int, v[0]) for v in stored(dsn, campaigns).values())


def exact(b: Bucket) -> tuple[object, ...]:
    """The columns that must match to the event: count, sum, min, max, first, last, late,
    closed, on-time count."""
    return (b.count, b.total, b.low, b.high, b.first, b.last, b.late, True, b.on_time)


def within_rank(values: list[float], q: float, estimate: float | None) -> bool:
    if estimate is None:
        return False
    ordered = sorted(values)
    below = sum(1 for v in ordered if v < estimate) / len(ordered)
    upto = sum(1 for v in ordered if v <= estimate) / len(ordered)
    return below - sketches.KLL_RANK_ERROR <= q <= upto + sketches.KLL_RANK_ERROR


def side_sources(bootstrap: str, topic: str) -> list[bytes]:
    """The `pulse.source` header of every record of a late or dead-letter topic."""
    return [dict(h)["pulse.source"] for *_r, h in consume_all(bootstrap, topic, PARTITIONS)]


def notifications(bootstrap: str, topic: str) -> list[tuple[str, str, int, float]]:
    out = []
    for _p, _o, key, value, _h in consume_all(bootstrap, topic, PARTITIONS):
        alert = from_notification(value or b"")
        assert key == alert.alert_id.encode()
        out.append((alert.alert_id, alert.state.value, alert.window_start_ms, alert.observed))
    return sorted(out, key=lambda a: (a[2], a[1]))


def expected_alerts(
    buckets: dict[tuple[str, str, int], Bucket], spike: str
) -> list[tuple[str, int, float]]:
    """Fire at the first window above the threshold, resolve at the next one not above,
    on the counts at close (corrections never fire or resolve an alert)."""
    windows = sorted(
        (s, b.on_time) for (c, t, s), b in buckets.items() if (c, t) == (spike, "click")
    )
    out: list[tuple[str, int, float]] = []
    firing = False
    for start, count in windows:
        if not firing and count > SPIKE_THRESHOLD:
            out.append(("firing", start, float(count)))
            firing = True
        elif firing and count <= SPIKE_THRESHOLD:
            out.append(("resolved", start, float(count)))
            firing = False
    return out


def run_scenario(pipeline: Pipeline, plan: Plan) -> None:
    rng = random.Random(plan.seed)
    tag = f"{plan.seed}-{rng.randrange(10**9)}"
    plan.campaigns = [f"spike-{tag}"] + [f"an-{tag}-{i}" for i in range(19)]
    progress = {"calls": 0}
    kills: list[tuple[int, int]] = []

    def crash() -> None:
        seen = 0
        for k in range(plan.kills):
            # Kill at a random point, once the running flow has counted more than before.
            target = (k + 1) * plan.calls // (plan.kills + 1) + rng.randrange(-1, 2)
            while progress["calls"] < target:
                time.sleep(0.05)
            deadline = time.monotonic() + 60
            while counted(pipeline.dsn, plan.campaigns) <= seen and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
            seen = counted(pipeline.dsn, plan.campaigns)
            kills.append((seen, progress["calls"]))
            pipeline.kill("flow")
            time.sleep(plan.downtime_s)
            pipeline.start("flow")

    junk = Producer({"bootstrap.servers": pipeline.bootstrap})

    async def send() -> int:
        accepted = 0
        next_id = 0
        async with PulseClient(pipeline.target, batch_size=500) as client:
            for call in range(plan.calls):
                events = build_call(rng, plan, call, next_id)
                next_id += len(events)
                accepted += (await client.ingest(events)).accepted
                if call % 8 == 3:  # records no edge would write: dead letters
                    for j in range(5):
                        junk.produce(pipeline.topics.raw, b"\x08\xff" * j, b"junk")
                    junk.flush(10)
                progress["calls"] += 1
                await asyncio.sleep(plan.pause_s)
        return accepted

    crasher = threading.Thread(target=crash)
    started = time.monotonic()
    crasher.start()
    accepted = asyncio.run(send())
    crasher.join()
    sent_s = time.monotonic() - started
    total = plan.calls * plan.per_call
    assert accepted == total >= 200_000
    assert len(kills) == plan.kills
    assert all(0 < seen < total for seen, _calls in kills)
    assert all(calls < plan.calls for _seen, calls in kills)  # while events streamed

    # Wait until heartbeats have closed every window, then compare with the log.
    time.sleep(WINDOW_S + IDLE_S + 2)
    log = read_log(pipeline.bootstrap, pipeline.topics.raw)
    buckets, late = windows_reference(
        log,
        WINDOW_S * 1000,
        LATENESS_S * 1000,
        IDLE_S * 1000,
        CORRECTION_S * 1000,
        DEDUP_S,
    )
    want = {k: exact(b) for k, b in buckets.items() if k[0] in plan.campaigns}
    deadline = time.monotonic() + 120
    got = stored(pipeline.dsn, plan.campaigns)
    while {k: v[:9] for k, v in got.items()} != want and time.monotonic() < deadline:
        time.sleep(1)
        got = stored(pipeline.dsn, plan.campaigns)
    assert {k: v[:9] for k, v in got.items()} == want
    print(  # the figures, for `pytest -s`
        f"\n{accepted:,} events accepted in {sent_s:.1f} s; SIGKILLs when "
        + ", ".join(f"{seen:,} were counted after {calls} calls" for seen, calls in kills)
        + f"; downtime {plan.downtime_s} s each; {len(got)} rows exact"
        + f" ({sum(b.count - b.on_time for b in buckets.values())} events corrected"
        + f" {len(late)} beyond the horizon)"
        f" {time.monotonic() - started - sent_s:.1f} s after the last call"
    )

    for key, row in got.items():
        b = buckets[key]
        if not b.count:
            continue
        users = cast(int, row[9])
        assert abs(users - len(b.users)) <= sketches.HLL_RELATIVE_ERROR * len(b.users)
        for q, estimate in zip(sketches.QUANTILES, row[10:13], strict=True):
            assert within_rank(b.values, q, cast(float | None, estimate)), (key, q)

    # Conservation: accepted = counted + late beyond the horizon; each bad record is
    # dead-lettered once.
    mine = [b for k, b in buckets.items() if k[0] in plan.campaigns]
    assert sum(b.count for b in mine) + len(late) == total
    late_sources = side_sources(pipeline.bootstrap, pipeline.topics.late)
    assert len(late_sources) == len(set(late_sources)) == len(late) > 0
    assert sum(b.late - (b.count - b.on_time) for b in mine) == len(late)
    assert sum(b.count - b.on_time for b in mine) > 0  # some late events corrected
    dead = side_sources(pipeline.bootstrap, pipeline.topics.dlq)
    assert len(dead) == len(set(dead)) == 5 * len(range(3, plan.calls, 8))

    # One alert and one resolve for the spike, in the table and on the topic, once each.
    want_alerts = expected_alerts(buckets, plan.campaigns[0])
    assert [a[0] for a in want_alerts] == ["firing", "resolved"]
    published = notifications(pipeline.bootstrap, pipeline.topics.notifications)
    assert [(s, w, o) for _id, s, w, o in published] == want_alerts
    assert published[0][0] == published[1][0]  # the resolve names the incident it ends
    with psycopg.connect(pipeline.dsn) as conn:
        rows = conn.execute(
            "SELECT alert_id, state, window_start, observed FROM alerts"
            " WHERE campaign_id = ANY(%s) ORDER BY window_start, state",
            (plan.campaigns,),
        ).fetchall()
    assert [(i, s, datetime_to_ms(w), o) for i, s, w, o in rows] == published


def test_crashes_lose_nothing_and_count_nothing_twice(analytics: Pipeline) -> None:
    run_scenario(analytics, Plan(kills=3, seed=21))


def test_downtime_longer_than_the_lateness_changes_nothing(analytics: Pipeline) -> None:
    run_scenario(analytics, Plan(kills=2, downtime_s=4 * LATENESS_S + IDLE_S, seed=22))
