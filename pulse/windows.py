"""Event-time window math: UTC-aligned tumbling windows over Unix milliseconds."""

from dataclasses import dataclass

DAY_MS = 86_400_000


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
        return ts_ms - ts_ms % self.length_ms

    def end_of(self, ts_ms: int) -> int:
        """Exclusive end of the window holding `ts_ms`."""
        return self.start_of(ts_ms) + self.length_ms
