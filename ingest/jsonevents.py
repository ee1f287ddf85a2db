"""JSON and NDJSON request bodies -> `RawEvent` messages: types only, all or nothing.

Each event is a JSON object with some of the `RawEvent` fields, under their proto
names: `campaign_id`, `event_type`, `event_id` (strings), `timestamp` (integer, Unix
milliseconds), `value` (number), `dimensions` (object of strings). An absent field is
the proto default (empty, 0), which the edge's validation then rejects with a reason
like any gRPC event. An unknown field, a wrong type or malformed JSON fails the whole
request (`InvalidBodyError`, naming the event's index and the field): nothing of it is
produced. Semantic rules (ids, sizes, timestamps) are the core's, not this module's.
"""

from collections.abc import Callable

import orjson

from protos.analytics.v1 import analytics_pb2 as pb

from .core import BadMessageError, BatchTooLargeError

JSON = "application/json"
NDJSON = "application/x-ndjson"

MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1

# The accepted fields, their JSON types (bool is not a number here) and their names.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "campaign_id": (str,),
    "event_type": (str,),
    "timestamp": (int,),
    "dimensions": (dict,),
    "event_id": (str,),
    "value": (int, float),
}
_TYPE_NAMES = {
    "campaign_id": "a string",
    "event_type": "a string",
    "timestamp": "an integer",
    "dimensions": "an object of strings",
    "event_id": "a string",
    "value": "a number",
}
_FIELDS = frozenset(FIELD_TYPES)
_JSON_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


class InvalidBodyError(BadMessageError):
    """A request body that is not a list of events (HTTP 400)."""


def _type_name(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _where(index: int, line: int | None) -> str:
    return f"event {index}" if line is None else f"event {index} (line {line})"


def _event(obj: object, index: int, line: int | None) -> pb.RawEvent:
    """One event from a decoded JSON value, or InvalidBodyError naming index and field."""
    if type(obj) is not dict:
        raise InvalidBodyError(f"{_where(index, line)}: expected an object, got {_type_name(obj)}")
    if not obj.keys() <= _FIELDS:
        unknown = sorted(obj.keys() - _FIELDS)[0]
        raise InvalidBodyError(f"{_where(index, line)}: unknown field {unknown!r}")
    for name, value in obj.items():
        if type(value) not in FIELD_TYPES[name]:
            raise InvalidBodyError(
                f"{_where(index, line)}: field {name!r} must be {_TYPE_NAMES[name]}, "
                f"got {_type_name(value)}"
            )
    timestamp = obj.get("timestamp", 0)
    if not MIN_INT64 <= timestamp <= MAX_INT64:
        raise InvalidBodyError(f"{_where(index, line)}: field 'timestamp' is out of range")
    dimensions = obj.get("dimensions")
    if dimensions:
        for key, val in dimensions.items():
            if type(val) is not str:
                raise InvalidBodyError(
                    f"{_where(index, line)}: field 'dimensions' must be an object of strings, "
                    f"{key!r} is {_type_name(val)}"
                )
    try:
        return pb.RawEvent(**obj)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a value beyond a double
        raise InvalidBodyError(f"{_where(index, line)}: {exc}") from None


def _decode(data: bytes | memoryview, what: str) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidBodyError(f"malformed JSON{what}: {exc}") from None


def parse_json(body: bytes, max_events: int) -> list[pb.RawEvent]:
    """A JSON array of events."""
    items = _decode(body, "")
    if type(items) is not list:
        raise InvalidBodyError(f"expected a JSON array of events, got {_type_name(items)}")
    if len(items) > max_events:
        raise BatchTooLargeError(len(items), max_events)
    return [_event(obj, index, None) for index, obj in enumerate(items)]


def parse_ndjson(body: bytes, max_events: int) -> list[pb.RawEvent]:
    """One event object per line; blank lines are skipped (they are no event)."""
    lines = [(n, text) for n, text in enumerate(body.split(b"\n"), start=1) if text.strip()]
    if len(lines) > max_events:
        raise BatchTooLargeError(len(lines), max_events)
    return [
        _event(_decode(text, f" on line {number}"), index, number)
        for index, (number, text) in enumerate(lines)
    ]


PARSERS: dict[str, Callable[[bytes, int], list[pb.RawEvent]]] = {
    JSON: parse_json,
    NDJSON: parse_ndjson,
}
