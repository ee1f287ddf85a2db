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
    late: int = 0  # arrived after the bucket closed (corrected or not)
    on_time: int = 0  # counted before the bucket closed
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
    event_id: str = ""
    dims: tuple[tuple[str, str], ...] = ()  # dimensions other than user_id


def windows_reference(
    records: Iterable[Ev],
    window_ms: int,
    lateness_ms: int,
    idle_ms: int,
    correction_ms: int = 0,
    dedup_s: int = 0,
    counted: list[Ev] | None = None,
) -> tuple[dict[tuple[str, str, int], Bucket], list[tuple[int, int]]]:
    """Event by event, the documented semantics: buckets and the (partition, offset)s of
    late events beyond the correction horizon.

    Per campaign, watermark = max(highest event time seen - lateness, latest heartbeat
    of its partition - idle timeout); an event whose minute-bucket end is at or before
    the watermark is late. A late event whose bucket ended after watermark -
    `correction_ms` is still counted. With `dedup_s`, an event whose (campaign, event
    id) was counted at most `dedup_s` seconds of partition log time before (log time:
    the highest event or heartbeat time of the partition so far) is dropped first.
    Every counted event is appended to `counted`, in order.
    """
    buckets: dict[tuple[str, str, int], Bucket] = defaultdict(Bucket)
    late: list[tuple[int, int]] = []
    highest: dict[str, int] = {}
    heartbeat: dict[int, int] = {}
    log_time: dict[int, int] = {}
    seen_ids: dict[tuple[str, str], int] = {}  # (campaign, event id) -> log second counted
    for r in records:
        stamp = r.heartbeat if r.heartbeat is not None else r.ts
        log_time[r.partition] = max(log_time.get(r.partition, stamp), stamp)
        if r.heartbeat is not None:
            heartbeat[r.partition] = max(heartbeat.get(r.partition, r.heartbeat), r.heartbeat)
            continue
        if dedup_s:
            now_s = log_time[r.partition] // 1000
            before = seen_ids.get((r.campaign, r.event_id))
            if before is not None and now_s - before <= dedup_s:
                continue
            seen_ids[(r.campaign, r.event_id)] = now_s
        marks = []
        if r.campaign in highest:
            marks.append(highest[r.campaign] - lateness_ms)
        if r.partition in heartbeat:
            marks.append(heartbeat[r.partition] - idle_ms)
        start = (r.ts // window_ms) * window_ms
        highest[r.campaign] = max(highest.get(r.campaign, r.ts), r.ts)
        bucket = buckets[(r.campaign, r.event_type, start)]
        if marks and start + window_ms <= max(marks):
            bucket.late += 1
            if start + window_ms > max(marks) - correction_ms:
                bucket.add(r.ts, r.value, r.user)
                if counted is not None:
                    counted.append(r)
            else:
                late.append((r.partition, r.offset))
        else:
            bucket.add(r.ts, r.value, r.user)
            bucket.on_time += 1
            if counted is not None:
                counted.append(r)
    return dict(buckets), late


SliceKey = tuple[str, str, int, str, tuple[tuple[str, str], ...]]


def slices_reference(
    counted: Iterable[Ev], window_ms: int, sets: list[list[str]], max_values: int
) -> dict[SliceKey, Bucket]:
    """The documented slicing of counted events (in partition offset order):
    (campaign, type, minute, "a,b", ((a, value), (b, value))) -> bucket.

    A lacking or empty value is "__missing__"; one over 256 characters or not printable
    is "__other__"; per partition, dimension and UTC day, values after the first
    `max_values` distinct ones are "__other__".
    """
    day_ms = 86_400_000
    admitted: dict[tuple[int, str, int], set[str]] = defaultdict(set)
    out: dict[SliceKey, Bucket] = defaultdict(Bucket)
    for r in counted:
        given = dict(r.dims)
        values: dict[str, str] = {}
        for name in sorted({n for s in sets for n in s}):
            value = given.get(name, "")
            if not value:
                value = "__missing__"
            elif len(value) > 256 or not value.isprintable():
                value = "__other__"
            else:
                seen = admitted[(r.partition, name, r.ts // day_ms)]
                if value in seen or len(seen) < max_values:
                    seen.add(value)
                else:
                    value = "__other__"
            values[name] = value
        start = r.ts - r.ts % window_ms
        for names in sets:
            ordered = sorted(names)
            key = (
                r.campaign,
                r.event_type,
                start,
                ",".join(ordered),
                tuple((n, values[n]) for n in ordered),
            )
            out[key].add(r.ts, r.value, r.user)
    return dict(out)
