"""The flow's decoding edge: Kafka records in, one `RecordBatch` per partition out.

One pass per batch: parse each `RawEvent`, check it with the edge's clock-free rules,
hash its `(campaign_id, event_id)` for dedup. Heartbeats (empty key) advance the
partition's clock. Anything else becomes a dead letter with its raw
bytes. The partition's state then drops retries and pre-aggregates the rest.

With `trace` set (tracing on), a second pass collects each partition's distinct
`traceparent` header values (one per edge produce group, so few) into its chunk; without
it no header is read.
"""

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from xxhash import xxh3_128_digest

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.aggregation import LateEvent
from pulse.headers import ERROR_HEADER, HEARTBEAT_KEY, SOURCE_HEADER, TRACEPARENT, position
from pulse.preagg import NO_TIME, Record, RecordBatch, heartbeat_record
from pulse.shedding import ShedEvent
from pulse.validation import Limits, check_values
from sinks.kafka_outputs import SideRecord

from . import metrics
from .routing import state_key

log = logging.getLogger(__name__)

DEFAULT_LIMITS = Limits()
USER_DIMENSION = "user_id"
MAX_TRACE_PARENTS = 128  # per chunk: the SDK keeps at most 128 links per span by default


def source_header(topic: str, partition: int, offset: int) -> tuple[str, bytes]:
    return (SOURCE_HEADER, position(topic, partition, offset).encode())


def trace_parents(items: list[Message]) -> dict[int, tuple[bytes, ...]]:
    """Per partition, the distinct `traceparent` header values, first seen first."""
    seen: dict[int, dict[bytes, None]] = {}
    for msg in items:
        headers = msg.headers()  # a list of (key, value) pairs on consumed records
        if not headers or isinstance(headers, dict):
            continue
        for key, value in headers:
            if key == TRACEPARENT and isinstance(value, bytes):
                values = seen.setdefault(msg.partition() or 0, {})
                if len(values) < MAX_TRACE_PARENTS:
                    values[value] = None
                break
    return {partition: tuple(values) for partition, values in seen.items()}


def _dead(msg: Message, error: str, dlq_topic: str) -> SideRecord:
    topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    return SideRecord(
        topic=dlq_topic,
        key=msg.key(),
        value=msg.value(),
        headers=((ERROR_HEADER, error.encode()), source_header(topic, partition, offset)),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
    )


def _consumer_error(msg: Message) -> None:
    """A consumer error is not a record (no bytes, no offset): it cannot be dead-lettered.
    librdkafka retries transient ones itself; log and count it."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    log.warning(
        "Kafka consumer error at %s[%s]@%s: %s",
        topic,
        partition,
        offset,
        msg.error(),
        extra={"topic": topic, "partition": partition, "offset": offset},
    )
    metrics.CONSUMER_ERRORS.inc()


class _Pending:
    """One partition's part of an input batch, while it is decoded."""

    __slots__ = ("digests", "heartbeats", "last_log_ms", "records")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.digests = bytearray()  # 16 bytes an event: cheaper than a list of bytes
        self.last_log_ms = NO_TIME
        self.heartbeats = 0

    def batch(self, partition: int, trace_parents: tuple[bytes, ...]) -> RecordBatch:
        return RecordBatch(
            partition,
            self.records,
            digests=bytes(self.digests),
            last_log_ms=self.last_log_ms,
            trace_parents=trace_parents,
            heartbeats=self.heartbeats,
        )


@dataclass(frozen=True, slots=True)
class Decoder:
    """Turns one input batch into `(partition key, RecordBatch)` pairs and dead letters."""

    dlq_topic: str
    limits: Limits = DEFAULT_LIMITS
    trace: bool = False  # collect the records' `traceparent` headers into the batches
    dedup: bool = True  # hash each event's ids for dedup
    dimensions: tuple[str, ...] = ()  # the sliced dimensions whose values records carry

    # One tight loop per batch: a helper per event would cost a call per event, and the
    # current partition's lists are bound to locals (records arrive in runs of one
    # partition), so an event costs no dictionary or attribute lookup.
    def __call__(self, items: list[Message]) -> list[tuple[str, RecordBatch] | SideRecord]:  # noqa: PLR0915
        pending: dict[int, _Pending] = {}
        dead: list[SideRecord] = []
        parse = pb.RawEvent.FromString
        limits = self.limits
        dedup = self.dedup
        names = self.dimensions
        part, cur = -1, _Pending()  # the partition being read (none yet)
        add_record, add_digest = cur.records.append, cur.digests.extend
        last = cur.last_log_ms
        for msg in items:
            if msg.error() is not None:
                _consumer_error(msg)
                continue
            raw = msg.value()
            if raw is None:
                dead.append(_dead(msg, "record has no value", self.dlq_topic))
                continue
            partition = msg.partition() or 0
            if partition != part:
                cur.last_log_ms = last
                cur = pending.get(partition) or pending.setdefault(partition, _Pending())
                part, last = partition, cur.last_log_ms
                add_record, add_digest = cur.records.append, cur.digests.extend
            if msg.key() == HEARTBEAT_KEY:
                beat = self._heartbeat(msg, raw)
                if isinstance(beat, SideRecord):
                    dead.append(beat)
                    continue
                add_record(beat)
                cur.heartbeats += 1
                if beat[2] > last:  # noqa: PLR1730 (no call to max() per record)
                    last = beat[2]
                continue
            try:
                event = parse(raw)
            except DecodeError as exc:
                dead.append(_dead(msg, f"not an analytics.v1.RawEvent: {exc}", self.dlq_topic))
                continue
            campaign_id = event.campaign_id
            event_type = event.event_type
            event_id = event.event_id
            ts = event.timestamp
            value = event.value
            problem = check_values(campaign_id, event_type, event_id, ts, value, limits)
            if problem is not None:
                dead.append(_dead(msg, f"invalid event: {problem[1]}", self.dlq_topic))
                continue
            dims = event.dimensions
            user = dims.get(USER_DIMENSION, "")
            values = tuple([dims.get(name, "") for name in names]) if names else ()
            add_record((campaign_id, event_type, ts, value, user, msg.offset() or 0, raw, values))
            if ts > last:  # noqa: PLR1730 (no call to max() per event)
                last = ts
            if dedup:
                # `event_digest`, inlined: a call per event costs as much as the hash.
                add_digest(xxh3_128_digest(f"{campaign_id}\0{event_id}".encode()))
        cur.last_log_ms = last
        parents = trace_parents(items) if self.trace else {}
        out: list[tuple[str, RecordBatch] | SideRecord] = [
            (state_key(p), acc.batch(p, parents.get(p, ()))) for p, acc in pending.items()
        ]
        out.extend(dead)
        return out

    def _heartbeat(self, msg: Message, raw: bytes) -> Record | SideRecord:
        try:
            beat = pb.Heartbeat.FromString(raw)
        except DecodeError as exc:
            reason = f"empty key but not an analytics.v1.Heartbeat: {exc}"
            return _dead(msg, reason, self.dlq_topic)
        return heartbeat_record(beat.wall_time_ms, msg.offset() or 0)


def _aside(
    topic: str, campaign_id: str, raw: bytes, error: str, source: tuple[str, int, int]
) -> SideRecord:
    """A counted-nowhere event's record: its original bytes, why in `pulse.error`, and
    where it came from `(topic, partition, offset)`."""
    source_topic, partition, offset = source
    return SideRecord(
        topic=topic,
        key=campaign_id.encode(),
        value=raw,
        headers=((ERROR_HEADER, error.encode()), source_header(*source)),
        source_topic=source_topic,
        source_partition=partition,
        source_offset=offset,
    )


def late_record(late: LateEvent, topic: str, source_topic: str) -> SideRecord:
    """The late-event record: original bytes, with the watermark it missed in headers."""
    error = (
        f"late: event time {late.timestamp_ms} ms is in window {late.bucket_start_ms} ms, "
        f"closed by watermark {late.watermark_ms} ms"
    )
    source = (source_topic, late.partition, late.offset)
    return _aside(topic, late.campaign_id, late.raw, error, source)


def shed_record(shed: ShedEvent, topic: str, source_topic: str, limit: int) -> SideRecord:
    """The shed-event record: original bytes, with why it was not aggregated in headers."""
    day = time.strftime("%Y-%m-%d", time.gmtime(shed.day_start_ms / 1000))
    error = (
        f"shed: partition {shed.partition} already aggregates {limit} campaigns on {day} "
        "(PULSE_MAX_CAMPAIGNS_PER_DAY)"
    )
    source = (source_topic, shed.partition, shed.offset)
    return _aside(topic, shed.campaign_id, shed.raw, error, source)
