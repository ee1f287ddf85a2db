"""The dataflow's Kafka sinks against the real broker: placement, headers, exactly once."""

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.alerts.model import AlertEvent, AlertState
from pulse.errors import KafkaAdminError
from runtime.topics import ensure_topics, read_last_records
from sinks.kafka_outputs import (
    NotificationSink,
    SideOutputSink,
    SideRecord,
    from_notification,
    to_notification,
)
from tests.conftest import Stack, Topics
from tests.kafka import Record, consume_all


def counter() -> tuple[list[int], Callable[[int], None]]:
    calls: list[int] = []
    return calls, calls.append


def side(topic: str, source: str, partition: int, offset: int) -> SideRecord:
    return SideRecord(
        topic=topic,
        key=f"c{offset % 3}".encode(),
        value=f"raw-{partition}-{offset}".encode(),
        headers=(
            ("pulse.error", b"late: behind the watermark"),
            ("pulse.source", f"{source}[{partition}]@{offset}".encode()),
        ),
        source_topic=source,
        source_partition=partition,
        source_offset=offset,
    )


def write(sink: SideOutputSink, records: list[SideRecord]) -> None:
    part = sink.build("side_out", 0, 1)
    try:
        part.write_batch(records)
    finally:
        part.close()


def offsets_by_partition(records: list[Record]) -> dict[int, list[int]]:
    """Source offsets per side partition, in the order they are stored."""
    out: dict[int, list[int]] = {}
    for partition, _offset, _key, _value, headers in records:
        source_offset = int(dict(headers)["pulse.source.offset"])
        out.setdefault(partition, []).append(source_offset)
    return out


def test_side_records_land_in_their_source_partition_with_origin_headers(
    stack: Stack, topics: Topics
) -> None:
    late = [side(topics.late, topics.raw, p, o) for p in range(3) for o in (10, 11, 12)]
    dead = [side(topics.dlq, topics.raw, 2, 7)]
    calls, on_written = counter()

    write(SideOutputSink(stack.kafka_bootstrap, [topics.late, topics.dlq], on_written), late + dead)

    assert calls == [10]
    stored = consume_all(stack.kafka_bootstrap, topics.late, 3)
    assert len(stored) == 9
    by_value = {value: (partition, key, headers) for partition, _o, key, value, headers in stored}
    for record in late:
        partition, key, headers = by_value[record.value]
        assert partition == record.source_partition
        assert key == record.key
        assert headers == [
            ("pulse.error", b"late: behind the watermark"),
            ("pulse.source", f"{topics.raw}[{partition}]@{record.source_offset}".encode()),
            ("pulse.source.topic", topics.raw.encode()),
            ("pulse.source.partition", str(partition).encode()),
            ("pulse.source.offset", str(record.source_offset).encode()),
        ]
    assert offsets_by_partition(stored) == {0: [10, 11, 12], 1: [10, 11, 12], 2: [10, 11, 12]}
    dlq = consume_all(stack.kafka_bootstrap, topics.dlq, 3)
    assert [(p, v) for p, _o, _k, v, _h in dlq] == [(2, b"raw-2-7")]


def test_a_restarted_sink_writes_only_what_the_replay_adds(stack: Stack, topics: Topics) -> None:
    first = [side(topics.late, topics.raw, 0, o) for o in range(10)]
    first += [side(topics.late, topics.raw, 1, o) for o in range(5)]
    write(SideOutputSink(stack.kafka_bootstrap, [topics.late, topics.dlq]), first)

    # The flow crashed and resumed from a snapshot: it emits some records again.
    replay = [side(topics.late, topics.raw, 0, o) for o in range(5, 15)]
    replay += [side(topics.late, topics.raw, 1, o) for o in range(3, 9)]
    replay += [side(topics.late, topics.raw, 2, o) for o in range(3)]
    replay += [side(topics.dlq, topics.raw, 1, 4)]
    calls, on_written = counter()
    write(SideOutputSink(stack.kafka_bootstrap, [topics.late, topics.dlq], on_written), replay)

    assert calls == [5 + 4 + 3 + 1]
    stored = consume_all(stack.kafka_bootstrap, topics.late, 3)
    assert offsets_by_partition(stored) == {
        0: list(range(15)),
        1: list(range(9)),
        2: list(range(3)),
    }
    assert len(consume_all(stack.kafka_bootstrap, topics.dlq, 3)) == 1

    # A third run replaying the same again writes nothing.
    calls, on_written = counter()
    write(SideOutputSink(stack.kafka_bootstrap, [topics.late, topics.dlq], on_written), replay)
    assert calls == []
    assert len(consume_all(stack.kafka_bootstrap, topics.late, 3)) == 15 + 9 + 3


def test_last_records_without_structured_headers(stack: Stack, topics: Topics) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    # Partition 0: only the human header (as written before the sink existed).
    producer.produce(
        topics.late, b"old", partition=0, headers=[("pulse.source", f"{topics.raw}[0]@7".encode())]
    )
    # Partition 1: no headers at all: no mark, nothing is skipped there.
    producer.produce(topics.late, b"foreign", partition=1)
    assert producer.flush(10) == 0

    last = read_last_records(stack.kafka_bootstrap, topics.late)
    assert sorted(last) == [0, 1, 2]
    assert last[2] is None
    assert last[0] is not None and last[0].value == b"old"

    replay = [side(topics.late, topics.raw, p, o) for p in (0, 1) for o in range(6, 10)]
    calls, on_written = counter()
    write(SideOutputSink(stack.kafka_bootstrap, [topics.late], on_written), replay)

    assert calls == [2 + 4]
    values = sorted(
        v or b"" for _p, _o, _k, v, _h in consume_all(stack.kafka_bootstrap, topics.late, 3)
    )
    assert values == sorted(
        [b"old", b"foreign", b"raw-0-8", b"raw-0-9"] + [f"raw-1-{o}".encode() for o in range(6, 10)]
    )


def test_a_side_topic_with_too_few_partitions_is_a_clear_error(
    stack: Stack, topics: Topics
) -> None:
    narrow = f"test-{uuid.uuid4().hex[:10]}.late"
    ensure_topics(stack.kafka_bootstrap, [narrow], partitions=2)
    part = SideOutputSink(stack.kafka_bootstrap, [narrow]).build("side_out", 0, 1)
    try:
        with pytest.raises(KafkaAdminError, match=r"has 2 partitions.*\[2\] goes to partition 2"):
            part.write_batch([side(narrow, topics.raw, 1, 0), side(narrow, topics.raw, 2, 0)])
        with pytest.raises(KafkaAdminError, match="not one of this sink's topics"):
            part.write_batch([side(topics.dlq, topics.raw, 0, 0)])
    finally:
        part.close()
    # Nothing of a refused batch is written.
    assert consume_all(stack.kafka_bootstrap, narrow, 2) == []

    missing = f"test-{uuid.uuid4().hex[:10]}.missing"
    with pytest.raises(KafkaAdminError, match=f"{missing} does not exist"):
        SideOutputSink(stack.kafka_bootstrap, [topics.late, missing]).build("side_out", 0, 1)


def alert(alert_id: str, state: AlertState, observed: float = 12.5) -> AlertEvent:
    return AlertEvent(
        alert_id=alert_id,
        state=state,
        rule="too-many-clicks",
        rule_kind="threshold",
        severity="page",
        campaign_id="camp-1",
        event_type="click",
        metric="count",
        window_start_ms=1_700_000_000_000,
        window_end_ms=1_700_000_060_000,
        observed=observed,
        threshold=10.0,
        message=f"{alert_id} {state}",
    )


def publish(sink: NotificationSink, events: list[AlertEvent]) -> None:
    part = sink.build("notify", 0, 1)
    try:
        part.write_batch(events)
    finally:
        part.close()


@pytest.fixture
def notifications(stack: Stack) -> str:
    topic = f"test-{uuid.uuid4().hex[:10]}.notifications"
    ensure_topics(stack.kafka_bootstrap, [topic], partitions=3)
    return topic


def test_notifications_are_protobuf_keyed_by_alert_id(stack: Stack, notifications: str) -> None:
    events = [
        alert("a1", AlertState.FIRING),
        alert("a2", AlertState.FIRING, observed=99.0),
        alert("a1", AlertState.RESOLVED, observed=3.0),
    ]
    calls, on_written = counter()
    publish(NotificationSink(stack.kafka_bootstrap, notifications, on_written), events)

    assert calls == [3]
    stored = consume_all(stack.kafka_bootstrap, notifications, 3)
    assert len(stored) == 3
    by_state = {}
    for _p, _o, key, value, headers in stored:
        assert value is not None
        message = pb.Notification.FromString(value)
        assert key == message.alert_id.encode()
        assert headers == [("pulse.state", from_notification(value).state.value.encode())]
        by_state[key, message.state] = message
    first = by_state[b"a1", pb.ALERT_STATE_FIRING]
    assert (first.rule, first.rule_kind, first.severity) == ("too-many-clicks", "threshold", "page")
    assert (first.campaign_id, first.event_type, first.metric) == ("camp-1", "click", "count")
    assert (first.window_start_ms, first.window_end_ms) == (1_700_000_000_000, 1_700_000_060_000)
    assert (first.observed, first.threshold, first.message) == (12.5, 10.0, "a1 firing")
    assert by_state[b"a2", pb.ALERT_STATE_FIRING].observed == 99.0
    assert by_state[b"a1", pb.ALERT_STATE_RESOLVED].observed == 3.0
    # Both transitions of one incident share a partition, firing first.
    a1 = [(p, o, v) for p, o, k, v, _h in stored if k == b"a1"]
    assert len({p for p, _o, _v in a1}) == 1
    assert [from_notification(v or b"").state for _p, _o, v in sorted(a1)] == [
        AlertState.FIRING,
        AlertState.RESOLVED,
    ]
    decoded = [from_notification(v or b"") for *_x, v, _h in stored]
    assert sorted(decoded, key=repr) == sorted(events, key=repr)


def test_a_restarted_notification_sink_skips_published_transitions(
    stack: Stack, notifications: str
) -> None:
    publish(
        NotificationSink(stack.kafka_bootstrap, notifications),
        [alert("a1", AlertState.FIRING), alert("a2", AlertState.FIRING)],
    )

    calls, on_written = counter()
    replay = [
        alert("a1", AlertState.FIRING),
        alert("a2", AlertState.FIRING),
        alert("a2", AlertState.RESOLVED),
        alert("a2", AlertState.RESOLVED),  # twice in one batch: once
        alert("a3", AlertState.FIRING),
    ]
    publish(NotificationSink(stack.kafka_bootstrap, notifications, on_written), replay)

    assert calls == [2]
    stored = consume_all(stack.kafka_bootstrap, notifications, 3)
    pairs = sorted((k or b"", dict(h)["pulse.state"]) for _p, _o, k, _v, h in stored)
    assert pairs == [
        (b"a1", b"firing"),
        (b"a2", b"firing"),
        (b"a2", b"resolved"),
        (b"a3", b"firing"),
    ]

    # Within one run too, a pair is published once.
    part = NotificationSink(stack.kafka_bootstrap, notifications, on_written).build("n", 0, 1)
    try:
        part.write_batch([alert("a1", AlertState.RESOLVED)])
        part.write_batch([alert("a1", AlertState.RESOLVED), alert("a3", AlertState.FIRING)])
    finally:
        part.close()
    assert calls == [2, 1]
    assert len(consume_all(stack.kafka_bootstrap, notifications, 3)) == 5


def test_notification_round_trip() -> None:
    event = alert("a9", AlertState.RESOLVED, observed=0.25)
    assert from_notification(to_notification(event)) == event
    assert pb.Notification.FromString(to_notification(event)).state == pb.ALERT_STATE_RESOLVED


def test_a_missing_notifications_topic_is_a_clear_error(stack: Stack) -> None:
    missing = f"test-{uuid.uuid4().hex[:10]}.missing"
    with pytest.raises(KafkaAdminError, match=f"{missing} does not exist"):
        NotificationSink(stack.kafka_bootstrap, missing).build("notify", 0, 1)
