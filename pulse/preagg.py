"""Pre-aggregation of one input batch of one Kafka partition, before the windowed state.

Per-event Python work is what limits a dataflow, so each batch is folded here, in one
pass, into one `Partial` per `(campaign_id, event_type, window)`; the keyed window
operator then merges partials instead of events.

Exactness does not depend on where a batch was cut. An event is late when its window's
end is at or before the watermark at the event's position in the partition:

    watermark = max(highest event time of its campaign so far - allowed lateness,
                    latest heartbeat time in its partition so far - idle timeout)

"So far" is made of two parts: what the state saw in earlier batches (`S`) and what
this batch showed before the event (`B`), and `end <= max(S, B)` holds exactly when
`end <= B` or `end <= S`. This pass decides the `B` part event by event, in offset
order. `S` is the same for all events of a window (they share its end), so the state
decides it per partial: a whole partial is late or none of it is.
"""

from dataclasses import dataclass, field

from pulse.aggregation import LateEvent, Partial, SourceRef

NO_TIME = -(2**63)  # "no watermark yet": below every event time

WindowKey = tuple[str, str, int]  # (campaign_id, event_type, window start ms)


@dataclass(slots=True)
class PartitionChunk:
    """One batch of one partition, pre-aggregated; what the window state consumes."""

    partition: int
    partials: dict[WindowKey, Partial] = field(default_factory=dict)
    late: list[LateEvent] = field(default_factory=list)  # late within the batch
    max_event_ms: dict[str, int] = field(default_factory=dict)  # per campaign
    heartbeat_ms: int = NO_TIME  # latest heartbeat wall time in the batch

    @property
    def event_count(self) -> int:
        return len(self.late) + sum(p.count for p in self.partials.values())


class BatchAggregator:
    """Folds the events and heartbeats of one partition, fed in offset order."""

    __slots__ = ("_chunk", "_heartbeat_wm", "_idle_ms", "_lateness_ms", "_window_ms")

    def __init__(self, partition: int, window_ms: int, lateness_ms: int, idle_ms: int) -> None:
        self._window_ms = window_ms
        self._lateness_ms = lateness_ms
        self._idle_ms = idle_ms
        self._heartbeat_wm = NO_TIME
        self._chunk = PartitionChunk(partition)

    def event(  # noqa: PLR0917 (called once per event: positional arguments are cheapest)
        self,
        campaign_id: str,
        event_type: str,
        ts: int,
        value: float,
        user: str,
        offset: int,
        raw: bytes,
    ) -> None:
        chunk = self._chunk
        start = ts - ts % self._window_ms
        seen = chunk.max_event_ms.get(campaign_id)
        watermark = self._heartbeat_wm
        if seen is not None and seen - self._lateness_ms > watermark:
            watermark = seen - self._lateness_ms
        # Every valid event counts as "seen", late or not, so the state and this pass agree.
        if seen is None or ts > seen:
            chunk.max_event_ms[campaign_id] = ts
        if start + self._window_ms <= watermark:
            chunk.late.append(
                LateEvent(
                    campaign_id, event_type, start, chunk.partition, offset, ts, raw, watermark
                )
            )
            return
        key = (campaign_id, event_type, start)
        part = chunk.partials.get(key)
        if part is None:
            part = chunk.partials[key] = Partial()
        part.add(ts, value, user, SourceRef(offset, ts, raw))

    def heartbeat(self, wall_ms: int) -> None:
        if wall_ms > self._chunk.heartbeat_ms:
            self._chunk.heartbeat_ms = wall_ms
            self._heartbeat_wm = wall_ms - self._idle_ms

    def finish(self) -> PartitionChunk:
        return self._chunk
