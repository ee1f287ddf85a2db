"""Per-campaign tumbling-window aggregation over event time, with watermark and lateness.

Pure logic, driven only by the events themselves (never by the wall clock), so that a
replay of the same input yields the same rows: that is what makes the sink's upserts
idempotent.

Semantics for one campaign (one Kafka key, so its events arrive in offset order):
- watermark = highest event time seen so far minus the allowed lateness;
- an event is *late* when its window's end is at or before the watermark (the window is
  closed); late events are handed back, never counted and never reopen a window;
- otherwise it is added to its `(event_type, window start)` accumulator, and the
  accumulator's current value is emitted as a row. Each row supersedes the previous
  one for the same window (its count is larger), so the sink keeps the highest count.
"""

from dataclasses import dataclass
from typing import NamedTuple

from pulse.windows import TumblingWindows


class Event(NamedTuple):
    """One decoded event, with where it came from (for dead-letter and late routing)."""

    event_type: str
    timestamp_ms: int
    value: float
    raw: bytes
    partition: int
    offset: int


class EventChunk(NamedTuple):
    """Events of one campaign from one input batch, in offset order."""

    campaign_id: str
    events: list[Event]


@dataclass(frozen=True, slots=True)
class MetricRow:
    """The aggregate of one `(campaign_id, event_type, bucket)` window so far."""

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    event_count: int
    value_sum: float


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event that arrived after its window closed."""

    campaign_id: str
    event: Event
    watermark_ms: int


@dataclass(frozen=True, slots=True)
class CampaignSnapshot:
    """Immutable copy of a campaign's window state, for Bytewax recovery."""

    campaign_id: str
    max_event_ms: int | None
    open_windows: tuple[tuple[str, int, int, float], ...]


class CampaignWindows:
    """Open windows and the watermark of one campaign."""

    __slots__ = ("_lateness_ms", "_length_ms", "_max_event_ms", "_open", "campaign_id")

    def __init__(
        self,
        campaign_id: str,
        windows: TumblingWindows,
        lateness_ms: int,
    ) -> None:
        self.campaign_id = campaign_id
        self._length_ms = windows.length_ms
        self._lateness_ms = lateness_ms
        self._max_event_ms: int | None = None
        # (event_type, window start) -> [count, value sum]
        self._open: dict[tuple[str, int], list[float]] = {}

    @classmethod
    def restore(
        cls, snapshot: CampaignSnapshot, windows: TumblingWindows, lateness_ms: int
    ) -> "CampaignWindows":
        """Rebuild the state saved by `snapshot()`."""
        state = cls(snapshot.campaign_id, windows, lateness_ms)
        state._max_event_ms = snapshot.max_event_ms
        state._open = {(et, start): [cnt, total] for et, start, cnt, total in snapshot.open_windows}
        return state

    @property
    def open_window_count(self) -> int:
        return len(self._open)

    def add(self, events: list[Event]) -> tuple[list[MetricRow], list[LateEvent]]:
        """Fold events (in offset order) into their windows; return changed rows and late events."""
        length = self._length_ms
        lateness = self._lateness_ms
        open_windows = self._open
        max_ts = self._max_event_ms
        watermark = None if max_ts is None else max_ts - lateness
        touched: set[tuple[str, int]] = set()
        late: list[LateEvent] = []
        for event in events:
            ts = event.timestamp_ms
            start = ts - ts % length
            if watermark is not None and start + length <= watermark:
                late.append(LateEvent(self.campaign_id, event, watermark))
                continue
            key = (event.event_type, start)
            acc = open_windows.get(key)
            if acc is None:
                open_windows[key] = [1, event.value]
            else:
                acc[0] += 1
                acc[1] += event.value
            touched.add(key)
            if max_ts is None or ts > max_ts:
                max_ts = ts
                watermark = ts - lateness
        self._max_event_ms = max_ts
        rows = [
            MetricRow(self.campaign_id, et, start, int(acc[0]), acc[1])
            for (et, start), acc in ((k, open_windows[k]) for k in sorted(touched))
        ]
        if watermark is not None:
            for key in [k for k in open_windows if k[1] + length <= watermark]:
                del open_windows[key]
        return rows, late

    def snapshot(self) -> CampaignSnapshot:
        return CampaignSnapshot(
            self.campaign_id,
            self._max_event_ms,
            tuple((et, start, int(acc[0]), acc[1]) for (et, start), acc in self._open.items()),
        )
