"""The aggregation dataflow on the real Bytewax runtime, with testing sources and sinks."""

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import (
    TestingSink,
    TestingSource,
    TimeTestingGetter,
    cluster_main,
    run_main,
)
from confluent_kafka import Message

from flows.aggregate import FlowConfig, build_flow
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.aggregation import LateEvent, MetricRow
from pulse.alerts.model import AlertEvent, AlertState
from pulse.alerts.rules import parse_rules
from pulse.rollups import RollupRow
from sinks.kafka_outputs import SideRecord
from tests.reference import Bucket, Ev, windows_reference

MINUTE = 60_000
LATENESS = 10_000
IDLE = 30_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE
PARTITIONS = 3
CONFIG = FlowConfig(
    window_ms=MINUTE,
    lateness_ms=LATENESS,
    idle_ms=IDLE,
    source_topic="events.raw",
    late_topic="events.late",
    dlq_topic="events.dlq",
)


def event_message(e: Ev) -> Message:
    raw = pb.RawEvent(
        campaign_id=e.campaign,
        event_type=e.event_type,
        timestamp=e.ts,
        value=e.value,
        event_id=e.event_id or f"e{e.partition}-{e.offset}",
        dimensions={**({"user_id": e.user} if e.user else {}), **dict(e.dims)},
    ).SerializeToString()
    return Message(
        key=e.campaign.encode(),
        value=raw,
        topic="events.raw",
        partition=e.partition,
        offset=e.offset,
    )


def heartbeat_message(e: Ev) -> Message:
    assert e.heartbeat is not None
    raw = pb.Heartbeat(wall_time_ms=e.heartbeat, source="test").SerializeToString()
    return Message(key=b"", value=raw, topic="events.raw", partition=e.partition, offset=e.offset)


def to_message(e: Ev) -> Message:
    return heartbeat_message(e) if e.heartbeat is not None else event_message(e)


def garbage(partition: int, offset: int, value: bytes | None, key: bytes = b"k") -> Message:
    return Message(key=key, value=value, topic="events.raw", partition=partition, offset=offset)


class Outputs:
    def __init__(self) -> None:
        self.store: list[Any] = []
        self.side: list[SideRecord] = []
        self.notifications: list[AlertEvent] = []

    def rows(self) -> dict[tuple[str, str, int], MetricRow]:
        """event_metrics after the sink's highest-revision-wins upserts."""
        out: dict[tuple[str, str, int], MetricRow] = {}
        for r in self.store:
            if isinstance(r, MetricRow):
                key = (r.campaign_id, r.event_type, r.bucket_start_ms)
                if key not in out or out[key].revision < r.revision:
                    out[key] = r
        return out

    def late_counts(self) -> dict[tuple[str, str, int], int]:
        """The late ledger: each (partition, offset) counted once."""
        seen: dict[tuple[int, int], LateEvent] = {}
        for e in self.store:
            if isinstance(e, LateEvent):
                seen[(e.partition, e.offset)] = e
        out: dict[tuple[str, str, int], int] = {}
        for e in seen.values():
            key = (e.campaign_id, e.event_type, e.bucket_start_ms)
            out[key] = out.get(key, 0) + 1
        return out


def run_flow(
    items: list[Any],
    batch_size: int,
    workers: int = 1,
    config: FlowConfig = CONFIG,
    recovery: RecoveryConfig | None = None,
    outputs: Outputs | None = None,
) -> Outputs:
    out = outputs or Outputs()
    flow = build_flow(
        "test_flow",
        config,
        TestingSource(items, batch_size),
        store_sink=TestingSink(out.store),
        side_sink=TestingSink(out.side),
        notification_sink=TestingSink(out.notifications),
    )
    if workers == 1:
        # Short epochs: many snapshots, so a resume starts mid-stream.
        run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def stream(seed: int, n: int) -> list[Ev]:
    """Events of 9 campaigns over 3 partitions (by campaign), with stragglers and heartbeats."""
    rng = random.Random(seed)
    offsets = [0] * PARTITIONS
    clock = T0
    out: list[Ev] = []
    for _ in range(n):
        clock += rng.randrange(0, 150)
        if rng.random() < 0.02:
            clock += rng.randrange(0, 2 * MINUTE)
        if rng.random() < 0.03:
            for p in range(PARTITIONS):
                out.append(Ev(p, offsets[p], heartbeat=clock))
                offsets[p] += 1
            continue
        campaign = rng.randrange(9)
        p = campaign % PARTITIONS
        ts = clock - rng.randrange(0, 6000)
        if rng.random() < 0.03:
            ts -= rng.randrange(10_000, 3 * MINUTE)
        out.append(
            Ev(
                p,
                offsets[p],
                f"c{campaign}",
                rng.choice(["click", "view", "buy"]),
                ts,
                rng.randrange(0, 80) / 4,
                f"u{rng.randrange(40)}",
            )
        )
        offsets[p] += 1
    return out


def expected_rows(buckets: dict[tuple[str, str, int], Bucket]) -> dict[Any, tuple[object, ...]]:
    return {
        k: (b.count, b.total, b.low, b.high, b.first, b.last, len(b.users))
        for k, b in buckets.items()
        if b.count
    }


def got_rows(rows: dict[tuple[str, str, int], MetricRow]) -> dict[Any, tuple[object, ...]]:
    return {
        k: (
            r.event_count,
            r.value_sum,
            r.value_min,
            r.value_max,
            r.first_event_ms,
            r.last_event_ms,
            r.unique_users,
        )
        for k, r in rows.items()
    }


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (37, 1), (500, 1), (64, 2)])
def test_aggregates_match_the_reference(batch_size: int, workers: int) -> None:
    records = stream(seed=batch_size, n=4000)
    buckets, late = windows_reference(records, MINUTE, LATENESS, IDLE)
    out = run_flow([to_message(e) for e in records], batch_size, workers)
    assert got_rows(out.rows()) == expected_rows(buckets)
    assert out.late_counts() == {k: b.late for k, b in buckets.items() if b.late}
    assert sorted((r.source_partition, r.source_offset) for r in out.side) == sorted(late)
    assert all(r.topic == "events.late" for r in out.side)


def test_late_events_go_to_the_late_topic_with_their_bytes() -> None:
    records = [
        Ev(0, 0, "c1", "click", T0 + 1_000, 1.0),
        Ev(0, 1, "c1", "click", T0 + MINUTE + 15_000, 2.0),  # watermark T0 + 65 s
        Ev(0, 2, "c1", "click", T0 + 2_000, 4.0),  # window T0 has closed: late
    ]
    items = [to_message(e) for e in records]
    out = run_flow(items, batch_size=1)
    rows = out.rows()
    assert (rows[("c1", "click", T0)].event_count, rows[("c1", "click", T0)].closed) == (1, True)
    assert out.late_counts() == {("c1", "click", T0): 1}
    [late] = out.side
    assert (late.topic, late.key, late.value) == ("events.late", b"c1", items[2].value())
    headers = dict(late.headers)
    assert headers["pulse.source"] == b"events.raw[0]@2"
    assert headers["pulse.error"].startswith(b"late")
    assert (late.source_partition, late.source_offset) == (0, 2)


def test_undecodable_records_are_dead_lettered_and_the_flow_goes_on() -> None:
    good = [Ev(0, 0, "c1", "view", T0 + 1, 0.5), Ev(0, 5, "c2", "view", T0 + 2, 0.5)]
    empty_ids = pb.RawEvent(campaign_id="", event_type="view", timestamp=T0).SerializeToString()
    items = [
        to_message(good[0]),
        garbage(0, 1, b"\xff\xff\xff not protobuf"),
        garbage(0, 2, None),
        garbage(0, 3, empty_ids),
        garbage(0, 4, b"\xff\xff", key=b""),  # empty key: must be a heartbeat, is not
        to_message(good[1]),
    ]
    out = run_flow(items, batch_size=2)
    assert {k: r.event_count for k, r in out.rows().items()} == {
        ("c1", "view", T0): 1,
        ("c2", "view", T0): 1,
    }
    dead = sorted(out.side, key=lambda r: r.source_offset)
    assert [(r.topic, r.source_offset) for r in dead] == [("events.dlq", i) for i in (1, 2, 3, 4)]
    assert [dict(r.headers)["pulse.source"] for r in dead] == [
        f"events.raw[0]@{i}".encode() for i in (1, 2, 3, 4)
    ]
    assert dead[0].value == b"\xff\xff\xff not protobuf"
    assert b"not an analytics.v1.RawEvent" in dict(dead[0].headers)["pulse.error"]
    assert dead[1].value is None
    assert dead[2].value == empty_ids
    assert b"empty" in dict(dead[2].headers)["pulse.error"]
    assert b"Heartbeat" in dict(dead[3].headers)["pulse.error"]


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
    base: dict[str, object] = {
        "campaign_id": "c1",
        "event_type": "view",
        "timestamp": T0 + 2,
        "event_id": "bad",
    }
    raw = pb.RawEvent(**{**base, **fields}).SerializeToString()  # type: ignore[arg-type]
    items = [
        to_message(Ev(0, 0, "c1", "view", T0 + 1, 0.5)),
        garbage(0, 1, raw),
        to_message(Ev(0, 2, "c1", "view", T0 + 3, 0.5)),
    ]
    out = run_flow(items, batch_size=3)
    assert {k: (r.event_count, r.value_sum) for k, r in out.rows().items()} == {
        ("c1", "view", T0): (2, 1.0)
    }
    assert [r.topic for r in out.side] == ["events.dlq"]
    assert out.side[0].value == raw
    assert error in dict(out.side[0].headers)["pulse.error"]


def test_heartbeats_close_the_windows_of_idle_campaigns_with_final_rows() -> None:
    records = [
        Ev(0, 0, "quiet", "click", T0 + 5_000, 1.0, "u1"),
        Ev(0, 1, "quiet", "click", T0 + 6_000, 3.0, "u2"),
        Ev(0, 2, heartbeat=T0 + MINUTE + IDLE),
    ]
    out = run_flow([to_message(e) for e in records], batch_size=1)
    row = out.rows()[("quiet", "click", T0)]
    assert (row.event_count, row.value_sum, row.unique_users, row.closed) == (2, 4.0, 2, True)
    assert row.users_sketch is not None
    assert row.values_sketch is not None
    rollups = [r for r in out.store if isinstance(r, RollupRow)]
    assert sorted((r.resolution.value, r.event_count) for r in rollups) == [("day", 2), ("hour", 2)]


RULES = """
[[rule]]
name = "click-flood"
kind = "threshold"
campaign = "*"
event_type = "click"
metric = "count"
op = "above"
threshold = 50
"""


def test_a_spike_fires_one_alert_and_later_one_resolve() -> None:
    config = dataclasses.replace(CONFIG, rules=parse_rules(RULES, MINUTE))
    records: list[Ev] = []
    offset = 0
    for minute in range(8):
        per_minute = 200 if minute in (3, 4) else 20  # minutes 3 and 4 spike
        for i in range(per_minute):
            ts = T0 + minute * MINUTE + i * (MINUTE // per_minute)
            records.append(Ev(0, offset, "c1", "click", ts, 1.0))
            offset += 1
    records.append(Ev(0, offset, heartbeat=T0 + 9 * MINUTE + IDLE))
    out = run_flow([to_message(e) for e in records], batch_size=50, config=config)
    assert [(a.state, a.window_start_ms, a.observed) for a in out.notifications] == [
        (AlertState.FIRING, T0 + 3 * MINUTE, 200.0),
        (AlertState.RESOLVED, T0 + 5 * MINUTE, 20.0),
    ]
    assert out.notifications[0].alert_id == out.notifications[1].alert_id
    stored = [a for a in out.store if isinstance(a, AlertEvent)]
    assert stored == out.notifications


class CrashError(Exception):
    """Raised inside the dataflow to kill it mid-epoch."""


class CrashingSink(DynamicSink[Any]):
    """Collects items; raises once the list reaches `crash_at` items (a mid-stream crash),
    at the first batch from then on that holds an item of type `crash_on` if given."""

    def __init__(
        self, items: list[Any], crash_at: int | None, crash_on: type | None = None
    ) -> None:
        self._items = items
        self._crash_at = crash_at
        self._crash_on = crash_on

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        sink = self

        class _Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                sink._items.extend(items)
                if sink._crash_at is None or len(sink._items) < sink._crash_at:
                    return
                if sink._crash_on is None or any(isinstance(i, sink._crash_on) for i in items):
                    raise CrashError

        return _Part()


def test_recovery_resumes_exactly_after_crashes(tmp_path: Path) -> None:
    """Crash mid-stream twice, resume from the recovery store: the same final results."""
    records = stream(seed=99, n=3000)
    buckets, late = windows_reference(records, MINUTE, LATENESS, IDLE)
    items = [to_message(e) for e in records]
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    out = Outputs()
    crashes = 0
    for crash_at in (400, 1200, None):  # store items written when the crash hits
        flow = build_flow(
            "test_flow",
            CONFIG,
            TestingSource(items, 25),
            store_sink=CrashingSink(out.store, crash_at),
            side_sink=TestingSink(out.side),
            notification_sink=TestingSink(out.notifications),
        )
        try:
            run_main(flow, epoch_interval=timedelta(milliseconds=10), recovery_config=recovery)
        except Exception:
            crashes += 1
    assert crashes == 2
    # Each resume replayed part of the input, not all of it: some rows were written twice.
    clean = run_flow(items, batch_size=25)
    assert len(clean.store) < len(out.store) < 2 * len(clean.store)
    assert got_rows(out.rows()) == expected_rows(buckets)
    assert out.late_counts() == {k: b.late for k, b in buckets.items() if b.late}
    # Replays re-emit some late records; the side sink drops what it already wrote.
    assert sorted(set((r.source_partition, r.source_offset) for r in out.side)) == sorted(late)


def test_the_clock_paces_progress_rows_and_never_changes_results() -> None:
    """Driven by Bytewax's `TimeTestingGetter`: frozen, or jumping 2 s at every batch."""
    records = stream(seed=5, n=3000)
    items = [to_message(e) for e in records]
    paced = dataclasses.replace(CONFIG, refresh_ms=1000)
    frozen = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    moving = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))

    def jumping() -> float:
        moving.advance(timedelta(seconds=2))
        return moving.get().timestamp()

    runs = {}
    for name, config, clock in [
        ("every batch", CONFIG, lambda: frozen.get().timestamp()),
        ("frozen clock", paced, lambda: frozen.get().timestamp()),
        ("moving clock", paced, jumping),
    ]:
        out = Outputs()
        flow = build_flow(
            "test_flow",
            config,
            TestingSource(items, 50),
            store_sink=TestingSink(out.store),
            side_sink=TestingSink(out.side),
            notification_sink=TestingSink(out.notifications),
            clock=clock,
        )
        run_main(flow)
        runs[name] = out
    progress = {
        name: sum(1 for r in out.store if isinstance(r, MetricRow) and not r.closed)
        for name, out in runs.items()
    }
    # A frozen clock refreshes once (the first batch) and at the end of the input.
    assert progress["frozen clock"] < progress["moving clock"] == progress["every batch"]
    tables = [got_rows(out.rows()) for out in runs.values()]
    assert tables[0] == tables[1] == tables[2]
    assert [r.closed for r in runs["frozen clock"].rows().values()].count(True) > 0


def test_get_flow_starts_the_process_as_pulse_flow_does() -> None:
    """`python -m bytewax.run "flows.main:get_flow()"` needs nothing but the environment,
    and goes through the same builder as `pulse flow`: logging in the configured format,
    the config line, the start-up warnings, the health and metrics endpoints."""
    import json
    import subprocess
    import sys

    from tests.ports import free_port

    health_port, metrics_port = free_port(), free_port()
    script = (
        "import urllib.request\n"
        "from flows.main import get_flow\n"
        "print(get_flow().flow_id)\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{health_port}/healthz').status)\n"
        f"metrics = urllib.request.urlopen('http://127.0.0.1:{metrics_port}/metrics')\n"
        "print('pulse_flow_events_processed_total 0.0' in metrics.read().decode().split('\\n'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={
            "PATH": "",
            "PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # nothing is contacted before the run
            "PULSE_PG_DSN": "postgresql://pulse:hunter2@127.0.0.1:1/pulse",
            "PULSE_LOG_FORMAT": "json",
            "PULSE_STARTING_OFFSET": "end",
            "PULSE_HEALTH_PORT": str(health_port),
            "PULSE_METRICS_PORT": str(metrics_port),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pulse_aggregate", "200", "True"]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    startup = [line for line in lines if line["logger"] == "pulse.flow"]
    assert startup[0]["message"].startswith("config: {")
    assert startup[0]["config"]["health_port"] == health_port
    assert startup[1]["level"] == "WARNING"
    assert "PULSE_STARTING_OFFSET=end" in startup[1]["message"]
    assert any(line["message"].startswith("health endpoints on") for line in lines)
    metrics_line = f"metrics on http://127.0.0.1:{metrics_port}/metrics"
    assert any(line["message"] == metrics_line for line in lines)
    assert "hunter2" not in result.stderr


def test_a_taken_metrics_port_stops_the_dataflow_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from flows.main import start_metrics
    from pulse.errors import ConfigError
    from pulse.settings import FlowSettings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("PULSE_METRICS_PORT", str(port))
        monkeypatch.delenv("PULSE_METRICS_HOST", raising=False)
        message = f"PULSE_METRICS_PORT {port} cannot be bound on 127.0.0.1: Address already in use"
        with pytest.raises(ConfigError, match=f"^{message}$"):
            start_metrics(FlowSettings())


def test_bytewax_api_is_off_unless_its_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytewax's API binds every address: it runs only when asked for."""
    import os

    from flows.main import enable_bytewax_api
    from pulse.settings import FlowSettings

    for var in ("BYTEWAX_DATAFLOW_API_ENABLED", "BYTEWAX_DATAFLOW_API_PORT"):
        monkeypatch.setenv(var, "")  # recorded, so that teardown removes it again
        monkeypatch.delenv(var)
    monkeypatch.delenv("PULSE_BYTEWAX_API_PORT", raising=False)
    enable_bytewax_api(FlowSettings())
    assert "BYTEWAX_DATAFLOW_API_ENABLED" not in os.environ
    assert "BYTEWAX_DATAFLOW_API_PORT" not in os.environ

    from tests.ports import free_port

    port = free_port()
    enable_bytewax_api(FlowSettings(bytewax_api_port=port))
    assert os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] == "1"
    assert os.environ["BYTEWAX_DATAFLOW_API_PORT"] == str(port)


def test_a_taken_bytewax_api_port_stops_the_dataflow_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytewax would lose the port in a thread and run on without its API."""
    import socket

    from flows.main import enable_bytewax_api
    from pulse.errors import ConfigError
    from pulse.settings import FlowSettings

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Set here so that the test leaves the environment as it found it.
        monkeypatch.setenv("BYTEWAX_DATAFLOW_API_ENABLED", "0")
        monkeypatch.setenv("BYTEWAX_DATAFLOW_API_PORT", "0")
        with pytest.raises(ConfigError, match=f"PULSE_BYTEWAX_API_PORT {port} cannot be bound"):
            enable_bytewax_api(FlowSettings(bytewax_api_port=port))
