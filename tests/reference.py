"""Independent reference computations for tests: plain Python, no Pulse code."""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass
class Bucket:
    """Expected columns of one event_metrics row."""

    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    first: int | None = None
    last: int | None = None
    late: int = 0
    users: set[str] = field(default_factory=set)
    values: list[float] = field(default_factory=list)

    def add(self, ts: int, value: float, user: str) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        self.first = ts if self.first is None else min(self.first, ts)
        self.last = ts if self.last is None else max(self.last, ts)
        if user:
            self.users.add(user)
        self.values.append(value)


@dataclass(frozen=True)
class Ev:
    """One record of a partition, as the reference sees it."""

    partition: int
    offset: int
    campaign: str = ""
    event_type: str = ""
    ts: int = 0
    value: float = 0.0
    user: str = ""
    heartbeat: int | None = None  # wall time, for heartbeat records


def windows_reference(
    records: Iterable[Ev], window_ms: int, lateness_ms: int, idle_ms: int
) -> tuple[dict[tuple[str, str, int], Bucket], list[tuple[int, int]]]:
    """Event by event, the documented semantics: buckets and the late (partition, offset)s.

    Per campaign, watermark = max(highest event time seen - lateness, latest heartbeat
    of its partition - idle timeout); an event whose minute-bucket end is at or before
    the watermark is late.
    """
    buckets: dict[tuple[str, str, int], Bucket] = defaultdict(Bucket)
    late: list[tuple[int, int]] = []
    highest: dict[str, int] = {}
    heartbeat: dict[int, int] = {}
    for r in records:
        if r.heartbeat is not None:
            heartbeat[r.partition] = max(heartbeat.get(r.partition, r.heartbeat), r.heartbeat)
            continue
        marks = []
        if r.campaign in highest:
            marks.append(highest[r.campaign] - lateness_ms)
        if r.partition in heartbeat:
            marks.append(heartbeat[r.partition] - idle_ms)
        start = (r.ts // window_ms) * window_ms
        highest[r.campaign] = max(highest.get(r.campaign, r.ts), r.ts)
        if marks and start + window_ms <= max(marks):
            buckets[(r.campaign, r.event_type, start)].late += 1
            late.append((r.partition, r.offset))
        else:
            buckets[(r.campaign, r.event_type, start)].add(r.ts, r.value, r.user)
    return dict(buckets), late
