"""JSON and NDJSON bodies -> RawEvent: strict types, all or nothing, indices in errors."""

import orjson
import pytest

from ingest.core import BatchTooLargeError
from ingest.jsonevents import FIELD_TYPES, InvalidBodyError, parse_json, parse_ndjson
from protos.analytics.v1 import analytics_pb2 as pb

FULL = {
    "campaign_id": "c1",
    "event_type": "click",
    "timestamp": 1_764_000_000_000,
    "dimensions": {"country": "DE", "user_id": "u1"},
    "event_id": "e1",
    "value": 0.25,
}


def test_every_field_maps_to_its_proto_field() -> None:
    [event] = parse_json(orjson.dumps([FULL]), 10)
    assert event == pb.RawEvent(**FULL)  # type: ignore[arg-type]
    assert set(FIELD_TYPES) == set(pb.RawEvent.DESCRIPTOR.fields_by_name)


def test_absent_fields_are_proto_defaults_left_to_validation() -> None:
    assert parse_json(b'[{}, {"value": 3}]', 10) == [pb.RawEvent(), pb.RawEvent(value=3.0)]


def test_ndjson_is_one_event_per_line_blank_lines_skipped() -> None:
    body = b'{"event_id": "a"}\n\n  \n{"event_id": "b"}\r\n'
    assert parse_ndjson(body, 10) == [pb.RawEvent(event_id="a"), pb.RawEvent(event_id="b")]
    assert parse_ndjson(b"", 10) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[", "malformed JSON: "),
        (b"", "malformed JSON: "),
        (b'{"event_id": "a"}', "expected a JSON array of events, got object"),
        (b"[1]", "event 0: expected an object, got integer"),
        (b'[{}, {"campaign": "c"}]', "event 1: unknown field 'campaign'"),
        (
            b'[{}, {}, {"timestamp": "1"}]',
            "event 2: field 'timestamp' must be an integer, got string",
        ),
        (b'[{"timestamp": 1.5}]', "event 0: field 'timestamp' must be an integer, got number"),
        (b'[{"timestamp": 9223372036854775808}]', "event 0: field 'timestamp' is out of range"),
        (b'[{"value": true}]', "event 0: field 'value' must be a number, got boolean"),
        (b'[{"value": "1"}]', "event 0: field 'value' must be a number, got string"),
        (b'[{"event_id": null}]', "event 0: field 'event_id' must be a string, got null"),
        (
            b'[{"dimensions": []}]',
            "event 0: field 'dimensions' must be an object of strings, got array",
        ),
        (
            b'[{"dimensions": {"a": "x", "b": 1}}]',
            "event 0: field 'dimensions' must be an object of strings, 'b' is integer",
        ),
        (b'["\\ud800"]', "malformed JSON: "),
        (b"[NaN]", "malformed JSON: "),
    ],
)
def test_a_body_that_is_not_events_is_refused_naming_index_and_field(
    body: bytes, message: str
) -> None:
    with pytest.raises(InvalidBodyError) as info:
        parse_json(body, 10)
    assert str(info.value).startswith(message), str(info.value)


def test_ndjson_errors_name_the_event_and_its_line() -> None:
    with pytest.raises(InvalidBodyError) as info:
        parse_ndjson(b'{}\n\n{"x": 1}\n', 10)
    assert str(info.value) == "event 1 (line 3): unknown field 'x'"
    with pytest.raises(InvalidBodyError) as info:
        parse_ndjson(b"{}\n{oops\n", 10)
    assert str(info.value).startswith("malformed JSON on line 2: ")
    with pytest.raises(InvalidBodyError) as info:
        parse_ndjson(b"[]\n", 10)
    assert str(info.value) == "event 0 (line 1): expected an object, got array"


def test_more_events_than_the_limit_is_too_large() -> None:
    with pytest.raises(BatchTooLargeError) as info:
        parse_json(orjson.dumps([{}] * 11), 10)
    assert str(info.value) == "batch of 11 events exceeds the limit of 10"
    with pytest.raises(BatchTooLargeError):
        parse_ndjson(b"{}\n" * 11, 10)
    assert len(parse_ndjson(b"{}\n" * 10 + b"\n\n", 10)) == 10
