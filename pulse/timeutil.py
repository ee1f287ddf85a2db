"""Conversions between Unix milliseconds and timezone-aware UTC datetimes."""

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    """Unix milliseconds to an aware UTC datetime (exact, no float rounding)."""
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    """Aware datetime to Unix milliseconds (exact for millisecond precision)."""
    if value.tzinfo is None:
        msg = "naive datetime: Pulse works in timezone-aware UTC only"
        raise ValueError(msg)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def now_ms() -> int:
    """The wall clock in Unix milliseconds."""
    return datetime_to_ms(datetime.now(UTC))
