"""Kafka outputs of the dataflow: late events, dead letters, alert notifications.

Both sinks write exactly once across restarts of the dataflow. After a crash, Bytewax
resumes from its last recovery snapshot and emits again what it emitted since; each
sink, when it starts, reads back what an earlier run already wrote and skips it.
Producers are idempotent (`acks=all`) and never time a record out: a partition always
holds a prefix of what was produced to it, with no gaps, which is what makes "skip what
is already there" exact.

Every Kafka client here adds `security`, the librdkafka properties of
`CommonSettings.kafka_security` (TLS, SASL), to its own configuration.
"""

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from google.protobuf.message import DecodeError

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.alerts.model import AlertEvent, AlertState
from pulse.errors import KafkaAdminError, KafkaDeliveryError
from pulse.headers import SOURCE_HEADER, position
from runtime.topics import StoredRecord, partition_counts, read_last_records, read_records

log = logging.getLogger(__name__)

SOURCE_TOPIC_HEADER = "pulse.source.topic"
SOURCE_PARTITION_HEADER = "pulse.source.partition"
SOURCE_OFFSET_HEADER = "pulse.source.offset"
STATE_HEADER = "pulse.state"

_SOURCE_HEADERS = frozenset({SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER})
_SOURCE_TEXT = re.compile(r"(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)")


@dataclass(frozen=True, slots=True)
class SideRecord:
    """A record for `events.late` or `events.dlq`, written to its source partition's number.

    `source_offset` is the offset of the original record in `source_topic`
    `[source_partition]`. The flow emits side records of one source partition in
    increasing offset order, which is what lets the sink skip, after a restart, the
    records a replay produces again.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    source_topic: str
    source_partition: int
    source_offset: int


# --- writing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Out:
    topic: str
    partition: int  # -1: the producer's partitioner chooses by key
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class _Stall:
    """Logs a wait for Kafka's acknowledgements that lasts: once after `every_s`, then
    every `every_s`, and when it ends."""

    def __init__(self, every_s: float, records: int) -> None:
        self._every_s = every_s
        self._records = records
        self._started = time.monotonic()
        self._logged_at: float | None = None

    def check(self, waiting: int) -> None:
        now = time.monotonic()
        if now - (self._logged_at or self._started) >= self._every_s:
            self._logged_at = now
            log.warning(
                "Kafka has not acknowledged %d of %d records for %.0f s; waiting for it",
                waiting,
                self._records,
                now - self._started,
            )

    def done(self) -> None:
        if self._logged_at is not None:
            elapsed = time.monotonic() - self._started
            log.info("Kafka acknowledged the records after %.0f s", elapsed)


class _Writer:
    """Produces a batch and waits for every acknowledgement, however long Kafka is away
    (the dataflow holds back meanwhile, logging every `warn_every_s`); raises
    KafkaDeliveryError when Kafka refuses a record."""

    def __init__(
        self, bootstrap: str, warn_every_s: float, security: Mapping[str, str] | None
    ) -> None:
        self._warn_every_s = warn_every_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # Never give up on a record locally: retriable errors are retried until
                # Kafka takes it, so what reached a partition is always a prefix of what
                # was produced to it.
                "message.timeout.ms": 0,
                "logger": logging.getLogger("librdkafka"),
                **(security or {}),
            }
        )

    def write(self, records: Sequence[_Out]) -> None:
        if not records:
            return
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message | None) -> None:
            if err is not None:
                where = "" if msg is None else f"{msg.topic()}[{msg.partition()}]: "
                failures.append(f"{where}{err.str()}")

        stall = _Stall(self._warn_every_s, len(records))
        produce = self._producer.produce
        for r in records:
            while True:
                try:
                    produce(
                        r.topic,
                        r.value,
                        r.key,
                        partition=r.partition,
                        headers=list(r.headers),
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    # Local queue full: serve acknowledgements, then try again.
                    stall.check(len(self._producer))
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    where = f"{r.topic}[{r.partition}]" if r.partition >= 0 else r.topic
                    raise KafkaDeliveryError(f"Kafka refused a record for {where}: {exc}") from exc
        while (remaining := self._producer.flush(1.0)) and not failures:
            stall.check(remaining)
        stall.done()
        if failures:
            msg = (
                f"Kafka did not acknowledge {len(failures)} of {len(records)} records: "
                f"{failures[0]}"
            )
            raise KafkaDeliveryError(msg)

    def close(self, timeout_s: float = 10.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("closing Kafka sink with %d unacknowledged records", remaining)


# --- side outputs ----------------------------------------------------------------------

SourceKey = tuple[str, str, int]  # (side topic, source topic, source partition)


def source_position(record: StoredRecord) -> tuple[str, int, int] | None:
    """(source topic, source partition, source offset) from a side record's headers.

    Reads the `pulse.source.*` headers, else the human `pulse.source` header
    ("topic[partition]@offset"); None when neither is there or readable.
    """
    topic = record.header(SOURCE_TOPIC_HEADER)
    partition = record.header(SOURCE_PARTITION_HEADER)
    offset = record.header(SOURCE_OFFSET_HEADER)
    try:
        if topic is not None and partition is not None and offset is not None:
            return topic.decode(), int(partition), int(offset)
        text = record.header(SOURCE_HEADER)
        match = _SOURCE_TEXT.fullmatch(text.decode()) if text is not None else None
    except (UnicodeDecodeError, ValueError):
        return None
    if match is None:
        return None
    return match["topic"], int(match["partition"]), int(match["offset"])


def side_headers(record: SideRecord) -> list[tuple[str, bytes]]:
    """The record's own headers plus its origin, as `pulse.source.*` and `pulse.source`."""
    headers = [(k, v) for k, v in record.headers if k not in _SOURCE_HEADERS]
    if not any(k == SOURCE_HEADER for k, _v in headers):
        text = position(record.source_topic, record.source_partition, record.source_offset)
        headers.append((SOURCE_HEADER, text.encode()))
    headers += [
        (SOURCE_TOPIC_HEADER, record.source_topic.encode()),
        (SOURCE_PARTITION_HEADER, str(record.source_partition).encode("ascii")),
        (SOURCE_OFFSET_HEADER, str(record.source_offset).encode("ascii")),
    ]
    return headers


def side_marks(
    bootstrap: str,
    topics: Iterable[str],
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> dict[SourceKey, int]:
    """Highest source offset already written, per (side topic, source topic, partition).

    Taken from the last record of every partition of every side topic; partitions that
    are empty or whose last record carries no readable origin give no mark.
    """
    marks: dict[SourceKey, int] = {}
    for topic in topics:
        last = read_last_records(bootstrap, topic, timeout_s, security=security)
        for partition, record in last.items():
            if record is None:
                continue
            position = source_position(record)
            if position is None:
                log.warning(
                    "%s[%d]@%d has no pulse.source headers: nothing is skipped in that partition",
                    topic,
                    partition,
                    record.offset,
                )
                continue
            source_topic, source_partition, offset = position
            key = (topic, source_topic, source_partition)
            marks[key] = max(offset, marks.get(key, -1))
    return marks


class _SidePartition(StatelessSinkPartition[SideRecord]):
    def __init__(
        self,
        bootstrap: str,
        counts: dict[str, int],
        marks: dict[SourceKey, int],
        on_written: Callable[[int], None],
        *,
        timeout_s: float,
        warn_every_s: float,
        security: Mapping[str, str] | None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._counts = counts
        self._marks = marks
        self._on_written = on_written
        self._timeout_s = timeout_s
        self._writer = _Writer(bootstrap, warn_every_s, security)

    def _check_partition(self, record: SideRecord) -> None:
        count = self._counts.get(record.topic)
        if count is None:
            msg = f"{record.topic} is not one of this sink's topics {sorted(self._counts)}"
            raise KafkaAdminError(msg)
        if 0 <= record.source_partition < count:
            return
        # Partitions may have been added since the sink started: look once more.
        counts = partition_counts(
            self._bootstrap, [record.topic], self._timeout_s, security=self._security
        )
        count = counts[record.topic]
        self._counts[record.topic] = count
        if not 0 <= record.source_partition < count:
            msg = (
                f"{record.topic} has {count} partitions, but a record from "
                f"{record.source_topic}[{record.source_partition}] goes to partition "
                f"{record.source_partition}: give {record.topic} at least as many "
                f"partitions as {record.source_topic}"
            )
            raise KafkaAdminError(msg)

    def write_batch(self, items: list[SideRecord]) -> None:
        out = []
        skipped = 0
        for record in items:
            self._check_partition(record)
            mark = self._marks.get((record.topic, record.source_topic, record.source_partition))
            if mark is not None and record.source_offset <= mark:
                skipped += 1
                continue
            out.append(
                _Out(
                    record.topic,
                    record.source_partition,
                    record.key,
                    record.value,
                    side_headers(record),
                )
            )
        if skipped:
            log.info("skipped %d side records written before the restart", skipped)
        self._writer.write(out)
        if out:
            self._on_written(len(out))

    def close(self) -> None:
        self._writer.close()


class SideOutputSink(DynamicSink[SideRecord]):
    """Writes late events and dead letters to partition `source_partition` of their topic.

    Headers: the record's own, plus `pulse.source` ("topic[partition]@offset", unless the
    record has one) and `pulse.source.topic` / `.partition` / `.offset` (ASCII).

    Exactly once across restarts. When built, the sink reads the last record of every
    partition of its topics; that record's source headers give the highest source offset
    already written for its (side topic, source topic, source partition). Records at or
    below that mark are skipped: a replay after a crash rewrites nothing. This holds if
      - side records of one source partition reach this sink in increasing source offset
        order, through a single worker (a replay re-emits them in the same order), and
      - each side topic partition receives records of one source topic and partition
        only, and nothing else writes to the side topics.
    Records of one batch are not checked against each other: only replays are skipped.

    Every topic must exist with at least as many partitions as its source topic;
    KafkaAdminError otherwise (at build for a missing topic, at write for a partition).
    A batch is acknowledged in full, however long Kafka is away, or raises
    KafkaDeliveryError when Kafka refuses a record.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        on_written: Callable[[int], None] | None = None,
        *,
        timeout_s: float = 30.0,
        warn_every_s: float = 30.0,
        security: Mapping[str, str] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._topics = list(topics)
        self._on_written = on_written or (lambda _n: None)
        self._timeout_s = timeout_s
        self._warn_every_s = warn_every_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SidePartition:
        security = self._security
        counts = partition_counts(self._bootstrap, self._topics, self._timeout_s, security=security)
        marks = side_marks(self._bootstrap, self._topics, self._timeout_s, security=security)
        if marks:
            log.info("side outputs resume after source offsets %s", marks)
        return _SidePartition(
            self._bootstrap,
            counts,
            marks,
            self._on_written,
            timeout_s=self._timeout_s,
            warn_every_s=self._warn_every_s,
            security=security,
        )


# --- notifications ---------------------------------------------------------------------

_TO_PB_STATE = {
    AlertState.FIRING: pb.ALERT_STATE_FIRING,
    AlertState.RESOLVED: pb.ALERT_STATE_RESOLVED,
}
_FROM_PB_STATE = {v: k for k, v in _TO_PB_STATE.items()}


def to_notification(event: AlertEvent) -> bytes:
    """The `analytics.v1.Notification` message of an alert transition, serialized."""
    return pb.Notification(
        alert_id=event.alert_id,
        state=_TO_PB_STATE[event.state],
        rule=event.rule,
        rule_kind=event.rule_kind,
        severity=event.severity,
        campaign_id=event.campaign_id,
        event_type=event.event_type,
        metric=event.metric,
        window_start_ms=event.window_start_ms,
        window_end_ms=event.window_end_ms,
        observed=event.observed,
        threshold=event.threshold,
        message=event.message,
    ).SerializeToString()


def from_notification(value: bytes) -> AlertEvent:
    """The alert transition of a serialized Notification (DecodeError / ValueError if bad)."""
    n = pb.Notification.FromString(value)
    state = _FROM_PB_STATE.get(n.state)
    if state is None:
        raise ValueError(f"notification {n.alert_id!r} has no alert state")
    return AlertEvent(
        alert_id=n.alert_id,
        state=state,
        rule=n.rule,
        rule_kind=n.rule_kind,
        severity=n.severity,
        campaign_id=n.campaign_id,
        event_type=n.event_type,
        metric=n.metric,
        window_start_ms=n.window_start_ms,
        window_end_ms=n.window_end_ms,
        observed=n.observed,
        threshold=n.threshold,
        message=n.message,
    )


def _published_pair(record: StoredRecord) -> tuple[str, AlertState] | None:
    try:
        state_text = record.header(STATE_HEADER)
        if record.key is not None and state_text is not None:
            return record.key.decode(), AlertState(state_text.decode())
        if record.value is not None:  # no key or header: fall back to the message
            event = from_notification(record.value)
            return event.alert_id, event.state
    except (UnicodeDecodeError, ValueError, DecodeError):
        pass
    return None


def published_alerts(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> set[tuple[str, AlertState]]:
    """The (alert_id, state) pairs already in `topic`, read up to its current end."""
    pairs = set()
    for record in read_records(bootstrap, topic, timeout_s, security=security):
        pair = _published_pair(record)
        if pair is None:
            log.warning("%s[%d]@%d is not a notification", topic, record.partition, record.offset)
            continue
        pairs.add(pair)
    return pairs


class _NotificationPartition(StatelessSinkPartition[AlertEvent]):
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        published: set[tuple[str, AlertState]],
        on_written: Callable[[int], None],
        warn_every_s: float,
        *,
        security: Mapping[str, str] | None,
    ) -> None:
        self._topic = topic
        self._published = published
        self._on_written = on_written
        self._writer = _Writer(bootstrap, warn_every_s, security)

    def write_batch(self, items: list[AlertEvent]) -> None:
        out = []
        new: set[tuple[str, AlertState]] = set()
        for event in items:
            pair = (event.alert_id, event.state)
            if pair in self._published or pair in new:
                continue
            new.add(pair)
            out.append(
                _Out(
                    self._topic,
                    -1,
                    event.alert_id.encode(),
                    to_notification(event),
                    [(STATE_HEADER, event.state.value.encode("ascii"))],
                )
            )
        if len(out) < len(items):
            log.info("skipped %d notifications already published", len(items) - len(out))
        self._writer.write(out)
        self._published |= new
        if out:
            self._on_written(len(out))

    def close(self) -> None:
        self._writer.close()


class NotificationSink(DynamicSink[AlertEvent]):
    """Publishes alert transitions as `analytics.v1.Notification` protobuf messages.

    Kafka key: the alert id (UTF-8), so both transitions of an incident share a partition
    and FIRING comes before RESOLVED; header `pulse.state`: "firing" or "resolved".

    Exactly once across restarts: `(alert_id, state)` is unique forever, so when built,
    the sink reads the whole topic (every partition, up to the high watermarks of that
    moment) and collects the pairs already published; a batch skips those and remembers
    the ones it writes. Each worker holds the set in memory and reads the topic once at
    start, so this suits alert volumes (thousands to a few hundred thousand retained
    notifications: roughly 100 bytes of memory each, read in seconds). Pairs older than
    the topic's retention are forgotten, which is harmless as long as retention is far
    longer than the replay after a restart (the recovery snapshot interval).

    A batch is acknowledged in full, however long Kafka is away, or raises
    KafkaDeliveryError when Kafka refuses a record.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_written: Callable[[int], None] | None = None,
        *,
        timeout_s: float = 30.0,
        warn_every_s: float = 30.0,
        security: Mapping[str, str] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._topic = topic
        self._on_written = on_written or (lambda _n: None)
        self._timeout_s = timeout_s
        self._warn_every_s = warn_every_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NotificationPartition:
        published = published_alerts(
            self._bootstrap, self._topic, self._timeout_s, security=self._security
        )
        log.info("%d alert transitions already published to %s", len(published), self._topic)
        return _NotificationPartition(
            self._bootstrap,
            self._topic,
            published,
            self._on_written,
            self._warn_every_s,
            security=self._security,
        )
