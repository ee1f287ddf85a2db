"""Kafka record conventions the edge, the dataflow and the sinks share, defined once: the
heartbeat key, the header names, and how a record's position is written."""

HEARTBEAT_KEY = b""  # on the events topic, a record with this key is a heartbeat
KIND_HEADER = "pulse.kind"
HEARTBEAT_KIND = b"heartbeat"  # the value of KIND_HEADER on a heartbeat
ERROR_HEADER = "pulse.error"  # why a record went to a side topic
SOURCE_HEADER = "pulse.source"  # where it came from, as `position` writes it

# W3C Trace Context, in Kafka record headers and in gRPC metadata alike.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def position(topic: str, partition: int, offset: int) -> str:
    """A record's place in Kafka, as logs and the `pulse.source` header write it."""
    return f"{topic}[{partition}]@{offset}"
