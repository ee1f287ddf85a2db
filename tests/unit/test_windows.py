from datetime import UTC, datetime

import pytest

from pulse.timeutil import datetime_to_ms, ms_to_datetime
from pulse.windows import DAY_MS, HOUR_MS, TumblingWindows, bucket_start, ceil_to_bucket
from tests.reference import minute_of


def test_minute_windows_align_to_utc_minutes() -> None:
    windows = TumblingWindows(60_000)
    ts = datetime_to_ms(datetime(2026, 11, 24, 9, 41, 59, 999_000, tzinfo=UTC))
    assert ms_to_datetime(windows.start_of(ts)) == datetime(2026, 11, 24, 9, 41, tzinfo=UTC)
    assert ms_to_datetime(windows.end_of(ts)) == datetime(2026, 11, 24, 9, 42, tzinfo=UTC)


@pytest.mark.parametrize("ts", [0, 1, 59_999, 60_000, 1_764_000_000_123, -1, -60_001])
def test_start_of_matches_datetime_floor(ts: int) -> None:
    windows = TumblingWindows(60_000)
    assert ms_to_datetime(windows.start_of(ts)) == minute_of(ts)
    assert windows.start_of(ts) <= ts < windows.end_of(ts)


def test_hour_windows_align_to_hours() -> None:
    windows = TumblingWindows(3_600_000)
    ts = datetime_to_ms(datetime(2026, 1, 1, 23, 59, tzinfo=UTC))
    assert ms_to_datetime(windows.start_of(ts)) == datetime(2026, 1, 1, 23, tzinfo=UTC)


@pytest.mark.parametrize("length", [0, -60_000, 7_000, 86_400_001])
def test_lengths_that_do_not_divide_a_day_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match="divide a day"):
        TumblingWindows(length)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2026, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize("ts", [0, 1, 3_599_999, 3_600_000, 1_764_000_000_123, -1])
@pytest.mark.parametrize("length", [HOUR_MS, DAY_MS])
def test_buckets_floor_and_ceil_to_utc_hours_and_days(ts: int, length: int) -> None:
    at = ms_to_datetime(ts)
    if length == HOUR_MS:
        floor = at.replace(minute=0, second=0, microsecond=0)
    else:
        floor = at.replace(hour=0, minute=0, second=0, microsecond=0)
    assert ms_to_datetime(bucket_start(ts, length)) == floor
    ceil = ceil_to_bucket(ts, length)
    assert ceil == (ts if floor == at else datetime_to_ms(floor) + length)
