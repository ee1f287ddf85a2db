"""Event-time window math: UTC-aligned tumbling windows and buckets over Unix milliseconds.

Every floor of a time to its window, hour or day (the bucket math of pre-aggregation,
rollups, slices, shedding and queries) is `bucket_start`; there is no other copy.
"""

from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def bucket_start(ts_ms: int, length_ms: int) -> int:
    """Start of the epoch-aligned bucket of `length_ms` holding `ts_ms` (floor, also for
    negative times)."""
    return ts_ms - ts_ms % length_ms


def ceil_to_bucket(ts_ms: int, length_ms: int) -> int:
    """The first bucket boundary at or after `ts_ms`: an exclusive end widened to whole
    buckets."""
    return ts_ms + -ts_ms % length_ms


@dataclass(frozen=True, slots=True)
class TumblingWindows:
    """Tumbling windows of `length_ms`, aligned to the Unix epoch (so to UTC midnight).

    The length must divide a day, so that minute buckets roll up exactly into hours
    and days.
    """

    length_ms: int

    def __post_init__(self) -> None:
        if self.length_ms <= 0 or DAY_MS % self.length_ms != 0:
            msg = f"window length must divide a day, got {self.length_ms} ms"
            raise ValueError(msg)

    def start_of(self, ts_ms: int) -> int:
        """Start of the window holding `ts_ms` (floor, also for negative times)."""
        return bucket_start(ts_ms, self.length_ms)

    def end_of(self, ts_ms: int) -> int:
        """Exclusive end of the window holding `ts_ms`."""
        return self.start_of(ts_ms) + self.length_ms
