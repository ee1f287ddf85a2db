"""Pre-aggregation of one input batch of one Kafka partition, before the windowed state.

Per-event Python work is what limits a dataflow, so each batch is folded here, in one
pass, into one `Partial` per `(campaign_id, event_type, window)`; the keyed window
operator then merges partials instead of events.

Exactness does not depend on where a batch was cut. An event is late when its window's
end is at or before the watermark at the event's position in the partition:

    watermark = max(highest event time of its campaign so far - allowed lateness,
                    latest heartbeat time in its partition so far - idle timeout)

"So far" is made of two parts: what the state saw in earlier batches (`S`) and what
this batch showed before the event (`B`). Given the state's highest event times and
heartbeat (`known`, `heartbeat_ms`), this pass starts from them and decides every event
against `max(S, B)`, in offset order, so its decisions are final. Without them it
decides the `B` part only; `end <= max(S, B)` holds exactly when `end <= B` or
`end <= S`, and `S` is the same for all events of a window (they share its end), so the
state then decides its part per partial: a whole partial is late or none of it is.
Dimension slices need the final decisions here: an event routed aside must not take
one of its day's distinct values (`pulse.dimensions`).

A late event whose window ended within the correction horizon before the watermark
(`end > watermark - correction`) still counts: it joins a correction partial of its
window, which the state folds into the stored row. Older ones are routed aside.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from pulse.aggregation import EventTuple, LateEvent, Partial
from pulse.dimensions import Slicer

NO_TIME = -(2**63)  # "no watermark yet": below every event time

WindowKey = tuple[str, str, int]  # (campaign_id, event_type, window start ms)


@dataclass(slots=True)
class PartitionChunk:
    """One batch of one partition, pre-aggregated; what the window state consumes."""

    partition: int
    partials: dict[WindowKey, Partial] = field(default_factory=dict)
    late: list[LateEvent] = field(default_factory=list)  # beyond the correction horizon
    max_event_ms: dict[str, int] = field(default_factory=dict)  # per campaign
    heartbeat_ms: int = NO_TIME  # latest heartbeat wall time in the batch
    # Distinct W3C `traceparent` values of the batch's records (tracing only): the spans
    # that produced them, for the processing span's links. Opaque bytes here.
    trace_parents: tuple[bytes, ...] = ()
    # Late within the batch, but within the correction horizon: for their closed windows,
    # with each event's watermark within the batch (the state's may be higher).
    corrections: dict[WindowKey, Partial] = field(default_factory=dict)
    correction_marks: dict[WindowKey, list[int]] = field(default_factory=dict)

    @property
    def event_count(self) -> int:
        parts = (*self.partials.values(), *self.corrections.values())
        return len(self.late) + sum(p.count for p in parts)


# One input record: (campaign_id, event_type, event time, value, user, offset, raw bytes,
# values of the sliced dimensions, in `GroupBy.names` order; empty when nothing is sliced).
# A heartbeat is a record with an empty campaign id and its wall time as the event time.
Record = tuple[str, str, int, float, str, int, bytes, tuple[str, ...]]


@dataclass(slots=True)
class RecordBatch:
    """One input batch of one partition, decoded: what the partition's state consumes.

    With dedup on, `digests` holds the 16-byte hash of each event's
    `(campaign_id, event_id)`, in offset order, one per event (not per heartbeat);
    without, it is empty. `last_log_ms` is the log time after the batch's last record.
    """

    partition: int
    records: list[Record] = field(default_factory=list)
    digests: bytes = b""
    last_log_ms: int = NO_TIME
    trace_parents: tuple[bytes, ...] = ()  # as in `PartitionChunk`
    heartbeats: int = 0  # records that are heartbeats

    @property
    def event_count(self) -> int:
        return len(self.records) - self.heartbeats

    def event_log_ms(self, before: int) -> npt.NDArray[np.int64]:
        """Each event's log time, in offset order: the highest event time or heartbeat
        wall time of the partition so far (`before`: the log time before the batch;
        at least 0). One vectorized pass instead of a running maximum per event."""
        n = len(self.records)
        times = np.fromiter(map(itemgetter(2), self.records), dtype=np.int64, count=n)
        np.maximum(times, max(before, 0), out=times)
        np.maximum.accumulate(times, out=times)
        if not self.heartbeats:
            return times
        is_event = np.fromiter(map(bool, map(itemgetter(0), self.records)), np.bool_, n)
        return times[is_event]


def heartbeat_record(wall_ms: int, offset: int) -> Record:
    return ("", "", wall_ms, 0.0, "", offset, b"", ())


def _append(lists: dict[WindowKey, list[EventTuple]], key: WindowKey, event: EventTuple) -> None:
    found = lists.get(key)
    if found is None:
        lists[key] = [event]
    else:
        found.append(event)


def _slices(
    slicer: Slicer,
    lists: dict[WindowKey, list[EventTuple]],
    key: WindowKey,
    event: EventTuple,
    dims: tuple[str, ...],
) -> list[WindowKey]:
    """Add the event to the partials of its slices (keyed as its campaign's `key`)."""
    campaign_id, event_type, start = key
    keys = [(campaign_id, s, start) for s in slicer.series(event_type, event[0], dims)]
    for k in keys:
        _append(lists, k, event)
    return keys


def preaggregate(
    partition: int,
    records: list[Record],
    window_ms: int,
    lateness_ms: int,
    idle_ms: int,
    *,
    correction_ms: int = 0,
    slicer: Slicer | None = None,
    known: Mapping[str, int] | None = None,
    heartbeat_ms: int = NO_TIME,
) -> PartitionChunk:
    """Fold one partition's records (in offset order) into partials and late events.

    `correction_ms` is the correction horizon (0: every late event is routed aside).
    With a `slicer`, each event that is not routed aside also joins a partial of each of
    its slices (`pulse.dimensions`), in the same role as its campaign's partial.
    """
    seen: dict[str, int] = {}  # highest event time per campaign so far
    known = known or {}
    windows: dict[WindowKey, list[EventTuple]] = {}
    corrections: dict[WindowKey, list[EventTuple]] = {}
    marks: dict[WindowKey, list[int]] = {}  # each correction event's in-batch watermark
    late: list[LateEvent] = []
    heartbeat = heartbeat_ms
    heartbeat_wm = NO_TIME if heartbeat == NO_TIME else heartbeat - idle_ms
    for campaign_id, event_type, ts, value, user, offset, raw, dims in records:
        if not campaign_id:
            if ts > heartbeat:
                heartbeat, heartbeat_wm = ts, ts - idle_ms
            continue
        start = ts - ts % window_ms  # `bucket_start`, inlined: this loop runs per event
        prev = seen.get(campaign_id)
        if prev is None:  # an event never makes itself late: its own time may seed
            prev = seen[campaign_id] = known.get(campaign_id, ts)
        watermark = max(heartbeat_wm, prev - lateness_ms)
        if ts > prev:  # every valid event counts as seen, late or not
            seen[campaign_id] = ts
        key = (campaign_id, event_type, start)
        if start + window_ms <= watermark:
            if start + window_ms <= watermark - correction_ms:
                late.append(
                    LateEvent(campaign_id, event_type, start, partition, offset, ts, raw, watermark)
                )
                continue
            event = (ts, value, user, offset, raw)
            _append(corrections, key, event)
            slices = [] if slicer is None else _slices(slicer, corrections, key, event, dims)
            for k in (key, *slices):
                marks.setdefault(k, []).append(watermark)
            continue
        event = (ts, value, user, offset, raw)
        window = windows.get(key)
        if window is None:
            windows[key] = [event]
        else:
            window.append(event)
        if slicer is not None:
            _slices(slicer, windows, key, event, dims)
    return PartitionChunk(
        partition=partition,
        partials={key: Partial.of(events) for key, events in windows.items()},
        late=late,
        max_event_ms=seen,
        heartbeat_ms=heartbeat,
        corrections={key: Partial.of(events) for key, events in corrections.items()},
        correction_marks=marks,
    )
