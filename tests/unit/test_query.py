import pytest

from pulse.errors import QueryError
from pulse.limits import MAX_TIMESTAMP_MS
from pulse.query import MAX_TIME_MS, MetricPointRow, MetricsQuery, QueryResolution
from pulse.timeutil import ms_to_datetime

HOUR = 3_600_000
DAY = 24 * HOUR


def test_minute_query_keeps_its_range() -> None:
    q = MetricsQuery.parse("c1", "", 1_000, 61_000, 0)
    assert (q.start_ms, q.end_ms, q.resolution, q.event_type) == (
        1_000,
        61_000,
        QueryResolution.MINUTE,
        None,
    )


def test_hour_and_day_queries_widen_to_whole_buckets() -> None:
    q = MetricsQuery.parse("c1", "click", HOUR + 5, 2 * HOUR + 1, 2)
    assert (q.start_ms, q.end_ms, q.event_type) == (HOUR, 3 * HOUR, "click")
    q = MetricsQuery.parse("c1", "", DAY + 5, DAY + 6, 3)
    assert (q.start_ms, q.end_ms) == (DAY, 2 * DAY)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "", 0, 1, 1), "campaign_id"),
        (("c" * 129, "", 0, 1, 1), "campaign_id"),
        (("c", "t" * 65, 0, 1, 1), "event_type must have at most 64 characters"),
        (("c", "", 5, 5, 1), "must be after"),
        (("c", "", 0, 32 * DAY, 1), "range too wide for MINUTE"),
        (("c", "", 0, 1, 9), "unknown resolution 9"),
        (("c", "", 300_000_000_000_000, 300_000_000_000_001, 1), "must lie within"),
        (("c", "", -5, 1, 1), "must lie within"),
        (("c\x00", "", 0, 1, 1), "control characters"),
        (("c", "click\n", 0, 1, 1), "control characters"),
    ],
)
def test_bad_queries_are_refused(args: tuple[str, str, int, int, int], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        MetricsQuery.parse(*args)


@pytest.mark.parametrize("resolution", [1, 2, 3])
def test_a_query_up_to_the_end_of_9999_ends_at_a_datetime(resolution: int) -> None:
    q = MetricsQuery.parse("c", "", MAX_TIME_MS - DAY - 1, MAX_TIME_MS, resolution)
    assert q.end_ms == MAX_TIMESTAMP_MS
    assert ms_to_datetime(q.end_ms).year == 9999


def test_a_point_without_details_has_no_values_no_users_and_is_open() -> None:
    p = MetricPointRow("c1", "click", 0, 0, 0.0)
    assert (p.value_min, p.value_max, p.value_avg) == (None, None, None)
    assert (p.value_p50, p.value_p95, p.value_p99) == (None, None, None)
    assert (p.first_event_ms, p.last_event_ms) == (None, None)
    assert (p.unique_users, p.late_events, p.closed) == (0, 0, False)


def test_a_dimension_set_is_normalized_and_its_filter_kept_sorted() -> None:
    q = MetricsQuery.parse("c1", "", 0, HOUR, 1, " device ,country", {"device": "ios"})
    assert (q.dimension_set, q.dimensions) == ("country,device", (("device", "ios"),))
    plain = MetricsQuery.parse("c1", "", 0, HOUR, 1)
    assert (plain.dimension_set, plain.dimensions) == (None, ())


@pytest.mark.parametrize(
    ("group_by", "dimensions", "message"),
    [
        ("", {"country": "DE"}, "needs group_by"),
        ("country", {"device": "ios"}, "does not name"),
        ("user_id", {}, "distinct users"),
        ("a,b,c,d,e", {}, "limit 4"),
        ("x" * 500, {}, "too long"),
        ("country", {"country": "x" * 257}, "too long"),
        ("country", {"country": "DE\x00"}, "control characters"),
    ],
)
def test_bad_dimension_queries_are_refused(
    group_by: str, dimensions: dict[str, str], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        MetricsQuery.parse("c1", "", 0, HOUR, 1, group_by, dimensions)
