"""Metrics queries: the validated, plain form of a `MetricsRequest`."""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from pulse.dimensions import MAX_SET_DIMENSIONS, parse_set
from pulse.errors import ConfigError, QueryError
from pulse.limits import (
    MAX_DIMENSION_KEY_CHARS,
    MAX_DIMENSION_VALUE_CHARS,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
)
from pulse.windows import DAY_MS, HOUR_MS, bucket_start, ceil_to_bucket


class QueryResolution(IntEnum):
    """Bucket size of returned points. Values match `analytics.v1.Resolution`.

    Not `pulse.rollups.Resolution`, the two rollup levels the dataflow stores.
    """

    MINUTE = 1
    HOUR = 2
    DAY = 3


# The widest range one query may ask for, per resolution (bounds the rows returned).
MAX_RANGE_MS = {
    QueryResolution.MINUTE: 31 * DAY_MS,
    QueryResolution.HOUR: 400 * DAY_MS,
    QueryResolution.DAY: 10 * 366 * DAY_MS,
}
MIN_TIME_MS = MIN_TIMESTAMP_MS  # as for event timestamps
MAX_TIME_MS = MAX_TIMESTAMP_MS + 1  # 10000-01-01, the exclusive end
_BUCKET_MS = {QueryResolution.MINUTE: 0, QueryResolution.HOUR: HOUR_MS, QueryResolution.DAY: DAY_MS}


Dimensions = tuple[tuple[str, str], ...]  # (name, value) pairs, sorted by name


def _slices(group_by: str, dimensions: Mapping[str, str]) -> tuple[str | None, Dimensions]:
    """The dimension set and the filter of a query, validated."""
    if not group_by:
        if dimensions:
            raise QueryError("a dimensions filter needs group_by naming its dimensions")
        return None, ()
    if len(group_by) > MAX_SET_DIMENSIONS * (MAX_DIMENSION_KEY_CHARS + 1):
        raise QueryError("group_by is too long")
    try:
        names = parse_set(group_by)
    except ConfigError as exc:
        raise QueryError(f"group_by: {exc}") from None
    for name, value in dimensions.items():
        if name not in names:
            raise QueryError(f"dimensions filter on {name!r}, which group_by does not name")
        if len(value) > MAX_DIMENSION_VALUE_CHARS:
            raise QueryError(f"dimensions filter value of {name!r} is too long")
        if not value.isprintable():  # stored as __other__; PostgreSQL refuses NUL
            raise QueryError(f"dimensions filter value of {name!r} has control characters")
    return ",".join(names), tuple(sorted(dimensions.items()))


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """Aggregates of one campaign (optionally one event type) over `[start_ms, end_ms)`;
    with `dimension_set`, per slice of that set (only those matching `dimensions`)."""

    campaign_id: str
    event_type: str | None
    start_ms: int
    end_ms: int
    resolution: QueryResolution
    dimension_set: str | None = None
    dimensions: Dimensions = ()

    @classmethod
    def parse(  # noqa: PLR0917 (the request's fields)
        cls,
        campaign_id: str,
        event_type: str,
        start_ms: int,
        end_ms: int,
        resolution: int,
        group_by: str = "",
        dimensions: Mapping[str, str] | None = None,
    ) -> "MetricsQuery":
        """Validate raw request fields; raise QueryError with the reason otherwise."""
        if not campaign_id or len(campaign_id) > MAX_ID_CHARS:
            raise QueryError(f"campaign_id must have 1..{MAX_ID_CHARS} characters")
        if len(event_type) > MAX_EVENT_TYPE_CHARS:
            raise QueryError(f"event_type must have at most {MAX_EVENT_TYPE_CHARS} characters")
        if not (campaign_id.isprintable() and event_type.isprintable()):
            # Never stored (events with them are rejected); PostgreSQL refuses NUL.
            raise QueryError("campaign_id and event_type must not hold control characters")
        if not (start_ms >= MIN_TIME_MS and end_ms <= MAX_TIME_MS):
            raise QueryError(f"start_ms and end_ms must lie within {MIN_TIME_MS}..{MAX_TIME_MS}")
        if end_ms <= start_ms:
            raise QueryError(f"end_ms ({end_ms}) must be after start_ms ({start_ms})")
        try:
            res = QueryResolution(resolution or QueryResolution.MINUTE)
        except ValueError:
            raise QueryError(f"unknown resolution {resolution}") from None
        if end_ms - start_ms > MAX_RANGE_MS[res]:
            days = MAX_RANGE_MS[res] // DAY_MS
            raise QueryError(f"range too wide for {res.name} resolution: at most {days} days")
        step = _BUCKET_MS[res]
        if step:  # widen to whole hours or days, so every returned point is complete
            start_ms = bucket_start(start_ms, step)
            end_ms = ceil_to_bucket(end_ms, step)
        # The end of the year 9999 is no datetime; every bucket starts before its last ms.
        end_ms = min(end_ms, MAX_TIMESTAMP_MS)
        dimension_set, wanted = _slices(group_by, dimensions or {})
        return cls(campaign_id, event_type or None, start_ms, end_ms, res, dimension_set, wanted)


@dataclass(frozen=True, slots=True)
class MetricPointRow:
    """One point of a query answer.

    Value and event-time fields are None while the bucket holds no counted event; the
    quantiles also until the bucket's sketches are known (hours and days: merged from
    closed windows).
    """

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    event_count: int  # every counted event: on time, plus late corrections
    value_sum: float
    value_min: float | None = None
    value_max: float | None = None
    value_avg: float | None = None
    unique_users: int = 0
    value_p50: float | None = None
    value_p95: float | None = None
    value_p99: float | None = None
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    late_events: int = 0  # arrived after the bucket closed (corrections included)
    closed: bool = False  # the watermark passed the bucket
    on_time_count: int = 0  # counted when the bucket closed (or so far, while open)
    dimensions: Dimensions = ()  # the slice's values; empty for campaign totals
