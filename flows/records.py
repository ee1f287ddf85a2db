"""Turns Kafka records into event chunks, and failures into dead-letter messages.

This is the flow's decoding edge: protobuf in, plain tuples out, one pass per batch.
"""

from dataclasses import dataclass

from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import Message
from google.protobuf.message import DecodeError

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.aggregation import Event, EventChunk, LateEvent
from pulse.validation import Limits, check_fields

DEFAULT_LIMITS = Limits()

OutMessage = KafkaSinkMessage[bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the flow could not use, with its raw bytes and where it came from."""

    key: bytes | None
    raw: bytes | None
    error: str
    topic: str
    partition: int
    offset: int


def _dead(msg: Message, error: str) -> DeadLetter:
    return DeadLetter(
        msg.key(), msg.value(), error, msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    )


def decode_batch(
    items: list[Message], limits: Limits = DEFAULT_LIMITS
) -> list[tuple[str, EventChunk] | DeadLetter]:
    """Group one input batch into per-campaign chunks (keyed), keeping offset order.

    Records that are not valid `RawEvent`s (by the clock-free rules of the edge) become
    dead letters: one bad record must never stop the flow or reach the database.
    """
    chunks: dict[str, list[Event]] = {}
    out: list[tuple[str, EventChunk] | DeadLetter] = []
    parse = pb.RawEvent.FromString
    for item in items:
        error = item.error()
        if error is not None:
            out.append(_dead(item, f"kafka error: {error}"))
            continue
        raw = item.value()
        if raw is None:
            out.append(_dead(item, "record has no value"))
            continue
        try:
            event = parse(raw)
        except DecodeError as exc:
            out.append(_dead(item, f"not an analytics.v1.RawEvent: {exc}"))
            continue
        problem = check_fields(event, limits)
        if problem is not None:
            out.append(_dead(item, f"invalid event: {problem[1]}"))
            continue
        events = chunks.get(event.campaign_id)
        if events is None:
            chunks[event.campaign_id] = events = []
        events.append(
            Event(
                event.event_type,
                event.timestamp,
                event.value,
                raw,
                item.partition() or 0,
                item.offset() or 0,
            )
        )
    out.extend((campaign, EventChunk(campaign, events)) for campaign, events in chunks.items())
    return out


def dead_letter_message(dead: DeadLetter, topic: str) -> OutMessage:
    """The dead-letter record: the raw bytes, with the reason and origin in headers."""
    return KafkaSinkMessage(
        key=dead.key,
        value=dead.raw,
        topic=topic,
        headers=[
            ("pulse.error", dead.error.encode()),
            ("pulse.source", f"{dead.topic}[{dead.partition}]@{dead.offset}".encode()),
        ],
    )


def late_message(late: LateEvent, topic: str, source_topic: str) -> OutMessage:
    """The late-event record: original bytes, with the watermark it missed in headers."""
    ev = late.event
    return KafkaSinkMessage(
        key=late.campaign_id.encode(),
        value=ev.raw,
        topic=topic,
        headers=[
            (
                "pulse.error",
                f"late: event time {ev.timestamp_ms} ms is in a window closed "
                f"by watermark {late.watermark_ms} ms".encode(),
            ),
            ("pulse.source", f"{source_topic}[{ev.partition}]@{ev.offset}".encode()),
        ],
    )
