"""`pulse notifications` and its consumer against the real broker, and the line format."""

import json
import time
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from cli.main import main
from pulse.alerts.model import AlertEvent, AlertState
from pulse.errors import KafkaAdminError
from pulse.timeutil import datetime_to_ms
from query.notifications import NotificationTail, format_json, format_line
from runtime.topics import ensure_topics
from sinks.kafka_outputs import STATE_HEADER, to_notification
from tests.conftest import Stack

START = datetime_to_ms(datetime(2025, 11, 24, 16, 20, tzinfo=UTC))
MINUTE = 60_000

FIRING = AlertEvent(
    alert_id="3f2a9c01d4e5f60718293a4b5c6d7e8f",
    state=AlertState.FIRING,
    rule="click-flood",
    rule_kind="threshold",
    severity="warning",
    campaign_id="campaign-000",
    event_type="click",
    metric="count",
    window_start_ms=START,
    window_end_ms=START + MINUTE,
    observed=3225.0,
    threshold=750.0,
    message="click count 3225 above 750 for campaign campaign-000 in 2025-11-24 16:20-16:21 UTC",
)
RESOLVED = replace(
    FIRING,
    state=AlertState.RESOLVED,
    window_start_ms=START + 3 * MINUTE,
    window_end_ms=START + 4 * MINUTE,
    observed=240.0,
    message="resolved: click count 240 no longer above 750 for campaign campaign-000 "
    "in 2025-11-24 16:23-16:24 UTC",
)
RATIO = AlertEvent(
    alert_id="a1b2c3d4e5f60718293a4b5c6d7e8f90",
    state=AlertState.FIRING,
    rule="ctr-spike",
    rule_kind="ratio",
    severity="critical",
    campaign_id="campaign-000",
    event_type="click/impression",
    metric="ratio",
    window_start_ms=START - MINUTE,
    window_end_ms=START + MINUTE,
    observed=1.4375,
    threshold=0.4,
    message="click/impression ratio 1.44 above 0.4 for campaign campaign-000 "
    "in 2025-11-24 16:19-16:21 UTC",
)
ANOMALY = AlertEvent(
    alert_id="0123456789abcdef0123456789abcdef",
    state=AlertState.FIRING,
    rule="click-anomaly",
    rule_kind="anomaly",
    severity="info",
    campaign_id="campaign-007",
    event_type="click",
    metric="count",
    window_start_ms=START - 4 * MINUTE,
    window_end_ms=START + MINUTE,
    observed=4350.0,
    threshold=1127.5,
    message="click count 4350 is anomalous, baseline 1127.5 for campaign campaign-007 "
    "in 2025-11-24 16:16-16:21 UTC",
)

FIRING_LINE = (
    "FIRING   click-flood  warning  campaign-000 click  count 3,225 > 750  "
    "window 16:20:00-16:21:00 UTC  id 3f2a9c01"
)
RESOLVED_LINE = (
    "RESOLVED click-flood  warning  campaign-000 click  count 240  "
    "window 16:23:00-16:24:00 UTC  id 3f2a9c01"
)


# --- formatting (no broker needed) ----------------------------------------------------


def test_lines_of_a_threshold_incident() -> None:
    assert format_line(FIRING) == FIRING_LINE
    assert format_line(RESOLVED) == RESOLVED_LINE


def test_lines_of_ratio_and_anomaly_rules() -> None:
    assert format_line(RATIO) == (
        "FIRING   ctr-spike    critical campaign-000 click/impression  ratio 1.44 > 0.4  "
        "window 16:19:00-16:21:00 UTC  id a1b2c3d4"
    )
    resolved_ratio = replace(RATIO, state=AlertState.RESOLVED, observed=0.1875)
    assert format_line(resolved_ratio).startswith(
        "RESOLVED ctr-spike    critical campaign-000 click/impression  ratio 0.188  window "
    )
    assert format_line(ANOMALY) == (
        "FIRING   click-anomaly info     campaign-007 click  count 4,350 baseline 1,127.5  "
        "window 16:16:00-16:21:00 UTC  id 01234567"
    )
    below = replace(FIRING, observed=12.0, threshold=100.0)
    assert "  count 12 < 100  " in format_line(below)


def test_json_keeps_every_field() -> None:
    line = format_json(RATIO)
    assert "\n" not in line
    assert json.loads(line) == {**asdict(RATIO), "state": "firing"}


# --- against Kafka ---------------------------------------------------------------------


@pytest.fixture
def topic(stack: Stack) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}.notifications"
    assert ensure_topics(stack.kafka_bootstrap, [name], partitions=3) == [name]
    return name


def publish(bootstrap: str, topic: str, *events: AlertEvent, junk: bool = False) -> None:
    """Publish as the NotificationSink does: key = alert id, `pulse.state` header."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    if junk:
        producer.produce(topic, b"\xff not a notification", b"junk", partition=0)
    for event in events:
        producer.produce(
            topic,
            to_notification(event),
            event.alert_id.encode(),
            headers=[(STATE_HEADER, event.state.value.encode())],
        )
    assert producer.flush(30) == 0


def test_from_beginning_reads_published_notifications(stack: Stack, topic: str) -> None:
    publish(stack.kafka_bootstrap, topic, FIRING, RESOLVED, junk=True)
    with NotificationTail(stack.kafka_bootstrap, topic, from_beginning=True) as tail:
        assert tail.start_offsets == {0: 0, 1: 0, 2: 0}
        events = list(tail.events(max_events=2, seconds=30))
    # One incident's transitions share a key, hence a partition: FIRING comes first.
    assert events == [FIRING, RESOLVED]


def test_cli_prints_lines_and_json(
    stack: Stack,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PULSE_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    monkeypatch.setenv("PULSE_TOPIC_NOTIFICATIONS", topic)
    publish(stack.kafka_bootstrap, topic, FIRING, RESOLVED, junk=True)

    main(["notifications", "--from-beginning", "--max", "2", "--timeout", "30"])
    assert capsys.readouterr().out.splitlines() == [FIRING_LINE, RESOLVED_LINE]

    main(["notifications", "--from-beginning", "--max", "2", "--json", "--timeout", "30"])
    decoded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert decoded == [
        {**asdict(FIRING), "state": "firing"},
        {**asdict(RESOLVED), "state": "resolved"},
    ]


def test_starts_at_the_end_and_stops_after_its_timeout(stack: Stack, topic: str) -> None:
    publish(stack.kafka_bootstrap, topic, FIRING, RESOLVED)
    with NotificationTail(stack.kafka_bootstrap, topic) as tail:
        assert sum(tail.start_offsets.values()) == 2  # after what was there
        publish(stack.kafka_bootstrap, topic, RATIO)
        assert list(tail.events(max_events=5, seconds=3)) == [RATIO]  # --timeout ends it
        started = time.monotonic()
        assert list(tail.events(seconds=1)) == []
        assert 0.9 < time.monotonic() - started < 5


def test_missing_topic(stack: Stack) -> None:
    missing = f"test-{uuid.uuid4().hex[:10]}.missing"
    with (
        pytest.raises(KafkaAdminError, match="does not exist"),
        NotificationTail(stack.kafka_bootstrap, missing, timeout_s=10),
    ):
        pass
