"""Validation of incoming events: pure rules with a reason for every rejection.

Works on anything shaped like a `RawEvent` (the protobuf message itself, to avoid a
per-event copy in the hot path).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from pulse.limits import (
    MAX_DIMENSION_KEY_CHARS,
    MAX_DIMENSION_VALUE_CHARS,
    MAX_DIMENSIONS,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
)


class Reason(IntEnum):
    """Why an event was rejected. Values match `analytics.v1.RejectReason`."""

    MISSING_FIELD = 1
    FIELD_TOO_LONG = 2
    TIMESTAMP_TOO_OLD = 3
    TIMESTAMP_IN_FUTURE = 4
    TOO_MANY_DIMENSIONS = 5
    INVALID_VALUE = 6
    INVALID_CHARACTERS = 7
    PERMISSION_DENIED = 8  # set by the edge's authorization, not by these rules


class EventLike(Protocol):
    """The fields validation reads; `analytics_pb2.RawEvent` satisfies it."""

    @property
    def campaign_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def value(self) -> float: ...
    @property
    def dimensions(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits for one event. Sizes count UTF-8 characters."""

    max_id_chars: int = MAX_ID_CHARS
    max_event_type_chars: int = MAX_EVENT_TYPE_CHARS
    max_dimensions: int = MAX_DIMENSIONS
    max_dimension_key_chars: int = MAX_DIMENSION_KEY_CHARS
    max_dimension_value_chars: int = MAX_DIMENSION_VALUE_CHARS
    max_age_ms: int = 7 * 86_400_000
    max_future_skew_ms: int = 5 * 60_000
    # Serialized size, unknown fields included; the largest valid event is about 42 KB.
    max_event_bytes: int = 64 * 1024
    # Values are summed exactly in millionths; beyond this they would lose that exactness.
    max_abs_value: float = 1e15


def _check_id(name: str, text: str, max_chars: int) -> tuple[Reason, str] | None:
    if not text or text.isspace():
        return Reason.MISSING_FIELD, f"{name} is empty"
    if len(text) > max_chars:
        return Reason.FIELD_TOO_LONG, f"{name} has {len(text)} characters, limit {max_chars}"
    if not text.isprintable():
        return Reason.INVALID_CHARACTERS, f"{name} contains control characters"
    return None


def check_fields(event: EventLike, limits: Limits) -> tuple[Reason, str] | None:
    """The rules that need no clock: ids, value and timestamp range.

    The dataflow applies these to records read from Kafka, so its decisions are the same
    on every replay; the edge applies them as part of `check_event`.
    """
    return check_values(
        event.campaign_id, event.event_type, event.event_id, event.timestamp, event.value, limits
    )


def check_values(  # noqa: PLR0917 (the dataflow calls it once per event)
    campaign_id: str,
    event_type: str,
    event_id: str,
    ts: int,
    value: float,
    limits: Limits,
) -> tuple[Reason, str] | None:
    """`check_fields` on fields already read (protobuf builds a new str on every read)."""
    id_chars = limits.max_id_chars
    if (
        0 < len(campaign_id) <= id_chars
        and 0 < len(event_type) <= limits.max_event_type_chars
        and 0 < len(event_id) <= id_chars
        and campaign_id.isprintable()
        and event_type.isprintable()
        and event_id.isprintable()
        and not campaign_id.isspace()
        and not event_type.isspace()
        and not event_id.isspace()
        and MIN_TIMESTAMP_MS <= ts <= MAX_TIMESTAMP_MS
        and -limits.max_abs_value <= value <= limits.max_abs_value  # False for NaN
    ):
        return None  # the common case, decided without a call
    problem = (
        _check_id("campaign_id", campaign_id, id_chars)
        or _check_id("event_type", event_type, limits.max_event_type_chars)
        or _check_id("event_id", event_id, id_chars)
    )
    if problem:
        return problem
    if ts < MIN_TIMESTAMP_MS:
        return Reason.TIMESTAMP_TOO_OLD, f"timestamp {ts} is before 1970"
    if ts > MAX_TIMESTAMP_MS:
        return Reason.TIMESTAMP_IN_FUTURE, f"timestamp {ts} is after the year 9999"
    if not math.isfinite(value):
        return Reason.INVALID_VALUE, f"value {value} is not a finite number"
    return Reason.INVALID_VALUE, f"value {value} is beyond +-{limits.max_abs_value:g}"


def check_event(event: EventLike, now_ms: int, limits: Limits) -> tuple[Reason, str] | None:
    """Return `(reason, detail)` for an invalid event, or None when it is valid."""
    problem = check_fields(event, limits)
    if problem:
        return problem
    ts = event.timestamp
    if ts < now_ms - limits.max_age_ms:
        return (
            Reason.TIMESTAMP_TOO_OLD,
            f"timestamp {ts} is more than {limits.max_age_ms // 1000} s before now",
        )
    if ts > now_ms + limits.max_future_skew_ms:
        return (
            Reason.TIMESTAMP_IN_FUTURE,
            f"timestamp {ts} is more than {limits.max_future_skew_ms // 1000} s ahead of now",
        )
    dims = event.dimensions
    if len(dims) > limits.max_dimensions:
        return (
            Reason.TOO_MANY_DIMENSIONS,
            f"{len(dims)} dimensions, limit {limits.max_dimensions}",
        )
    for key, val in dims.items():
        if not key or len(key) > limits.max_dimension_key_chars:
            return (
                Reason.FIELD_TOO_LONG,
                f"dimension key of {len(key)} characters, "
                f"limits 1..{limits.max_dimension_key_chars}",
            )
        if len(val) > limits.max_dimension_value_chars:
            return (
                Reason.FIELD_TOO_LONG,
                f"dimension {key!r} has {len(val)} characters, "
                f"limit {limits.max_dimension_value_chars}",
            )
    return None
