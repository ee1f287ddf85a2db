"""Independent reference aggregation for tests: plain Python, no Pulse code."""

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime


def minute_of(ts_ms: int) -> datetime:
    """The UTC minute holding a Unix-millisecond timestamp, computed via datetime."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).replace(second=0, microsecond=0)


def aggregate(
    events: Iterable[tuple[str, str, int, float]],
) -> dict[tuple[str, str, datetime], tuple[int, float]]:
    """(campaign, type, timestamp_ms, value) -> {(campaign, type, minute): (count, sum)}."""
    out: dict[tuple[str, str, datetime], list[float]] = defaultdict(lambda: [0, 0.0])
    for campaign, event_type, ts_ms, value in events:
        acc = out[(campaign, event_type, minute_of(ts_ms))]
        acc[0] += 1
        acc[1] += value
    return {k: (int(v[0]), v[1]) for k, v in out.items()}
