from datetime import UTC, datetime

import pytest

from pulse.timeutil import datetime_to_ms, ms_to_datetime
from pulse.windows import TumblingWindows
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
