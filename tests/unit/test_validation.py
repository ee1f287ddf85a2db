import math

import pytest

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.validation import Limits, Reason, check_event

NOW = 1_764_000_000_000
LIMITS = Limits()


def event(**overrides: object) -> pb.RawEvent:
    fields: dict[str, object] = {
        "campaign_id": "c1",
        "event_type": "click",
        "event_id": "e1",
        "timestamp": NOW - 1000,
        "value": 1.5,
        "dimensions": {"user_id": "u1"},
    }
    fields.update(overrides)
    return pb.RawEvent(**fields)  # type: ignore[arg-type]


def test_a_valid_event_passes() -> None:
    assert check_event(event(), NOW, LIMITS) is None


@pytest.mark.parametrize(
    ("overrides", "reason", "detail"),
    [
        ({"campaign_id": ""}, Reason.MISSING_FIELD, "campaign_id is empty"),
        ({"campaign_id": "   "}, Reason.MISSING_FIELD, "campaign_id is empty"),
        ({"event_type": ""}, Reason.MISSING_FIELD, "event_type is empty"),
        ({"event_id": ""}, Reason.MISSING_FIELD, "event_id is empty"),
        ({"event_id": "x" * 129}, Reason.FIELD_TOO_LONG, "event_id has 129 characters"),
        ({"event_type": "t" * 65}, Reason.FIELD_TOO_LONG, "limit 64"),
        ({"campaign_id": "a\nb"}, Reason.INVALID_CHARACTERS, "control characters"),
        ({"timestamp": NOW - LIMITS.max_age_ms - 1}, Reason.TIMESTAMP_TOO_OLD, "before now"),
        ({"timestamp": 0}, Reason.TIMESTAMP_TOO_OLD, "before now"),
        ({"timestamp": NOW + LIMITS.max_future_skew_ms + 1}, Reason.TIMESTAMP_IN_FUTURE, "ahead"),
        ({"value": math.nan}, Reason.INVALID_VALUE, "not a finite number"),
        ({"value": math.inf}, Reason.INVALID_VALUE, "not a finite number"),
        (
            {"dimensions": {f"k{i}": "v" for i in range(33)}},
            Reason.TOO_MANY_DIMENSIONS,
            "33 dimensions, limit 32",
        ),
        ({"dimensions": {"k" * 65: "v"}}, Reason.FIELD_TOO_LONG, "dimension key"),
        ({"dimensions": {"": "v"}}, Reason.FIELD_TOO_LONG, "dimension key"),
        ({"dimensions": {"k": "v" * 257}}, Reason.FIELD_TOO_LONG, "limit 256"),
    ],
)
def test_invalid_events_get_a_reason(
    overrides: dict[str, object], reason: Reason, detail: str
) -> None:
    problem = check_event(event(**overrides), NOW, LIMITS)
    assert problem is not None
    assert problem[0] is reason
    assert detail in problem[1]


def test_limits_are_inclusive() -> None:
    edge = event(
        event_id="x" * 128,
        timestamp=NOW + LIMITS.max_future_skew_ms,
        dimensions={f"k{i}": "v" * 256 for i in range(32)},
    )
    assert check_event(edge, NOW, LIMITS) is None
    assert check_event(event(timestamp=NOW - LIMITS.max_age_ms), NOW, LIMITS) is None


def test_reason_values_match_the_wire_enum() -> None:
    for reason in Reason:
        assert (
            pb.RejectReason.Name(pb.RejectReason.ValueType(reason.value))
            == f"REJECT_REASON_{reason.name}"
        )
