"""Late corrections: events that reach a closed window within the correction horizon.

A window's row is final when it closes; an event that arrives later for it (a buffered
mobile client, a batch upload) is folded into the stored row afterwards. The dataflow
gathers one input batch's late events per `(campaign, event type, window)` into a
`Correction`, with their sketches built once; the TimescaleDB sink merges it into the
stored row (and into stored hour and day rollups the dataflow no longer holds) in one
read-modify-write per batch, not one round trip per event.

Exactly once. All events of one campaign come from one Kafka partition, in offset
order. One input batch's corrections travel as one `CorrectionBatch`, applied in one
transaction, and batches are applied in offset order; so once a row holds a batch's
events, it holds every correction event of its own at or below that batch's offsets.
Each corrected row stores `corrected_offset`, the highest source offset folded into it,
and a correction merges only its events above that offset: a replay after a crash
(which may cut batches elsewhere) adds exactly the events the store has not seen. When
every event is new (the usual case) the prebuilt sketches are merged; otherwise the new
events' sketches are rebuilt from their values.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pulse import sketches
from pulse.aggregation import MICROS, Partial, to_micros

NO_OFFSET = -1  # a row no correction has touched


@dataclass(frozen=True, slots=True)
class Correction:
    """One batch's late events of one closed window, pre-aggregated, with their sketches.

    `sink_rollups` names the hour and day buckets the store must merge the events into,
    from which source offset on: `(resolution, bucket start, first offset)`, the offset
    of the first such event. The earlier ones reached the bucket's accumulator in the
    dataflow, before it expired.
    """

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    partition: int
    offsets: tuple[int, ...]
    times: tuple[int, ...]
    values: tuple[float, ...]
    users: tuple[str, ...]
    users_sketch: bytes
    values_sketch: bytes
    sink_rollups: tuple[tuple[str, int, int], ...] = ()

    @property
    def count(self) -> int:
        return len(self.offsets)

    @classmethod
    def of(
        cls,
        campaign_id: str,
        event_type: str,
        bucket_start_ms: int,
        partition: int,
        partials: Sequence[Partial],
    ) -> "Correction":
        """Gather the partials of one window (at least one event); build its sketches."""
        offsets: list[int] = []
        times: list[int] = []
        values: list[float] = []
        users: list[str] = []
        for part in partials:
            offsets += part.offsets
            times += part.times
            values += part.values
            users += part.users
        return cls(
            campaign_id=campaign_id,
            event_type=event_type,
            bucket_start_ms=bucket_start_ms,
            partition=partition,
            offsets=tuple(offsets),
            times=tuple(times),
            values=tuple(values),
            users=tuple(users),
            users_sketch=sketches.hll_bytes(sketches.hll_of(users)),
            values_sketch=sketches.kll_bytes(sketches.kll_of(values)),
        )

    @classmethod
    def combine(cls, parts: Sequence["Correction"]) -> "Correction":
        """One correction of a window's corrections from successive batches (in order)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        starts: dict[tuple[str, int], int] = {}
        for part in parts:
            for resolution, bucket, offset in part.sink_rollups:
                starts[(resolution, bucket)] = min(offset, starts.get((resolution, bucket), offset))
        users = sketches.merge_hll(sketches.hll_from(p.users_sketch) for p in parts)
        values = sketches.merge_kll(sketches.kll_from(p.values_sketch) for p in parts)
        return cls(
            campaign_id=first.campaign_id,
            event_type=first.event_type,
            bucket_start_ms=first.bucket_start_ms,
            partition=first.partition,
            offsets=tuple(o for p in parts for o in p.offsets),
            times=tuple(t for p in parts for t in p.times),
            values=tuple(v for p in parts for v in p.values),
            users=tuple(u for p in parts for u in p.users),
            users_sketch=sketches.hll_bytes(users),
            values_sketch=sketches.kll_bytes(values),
            sink_rollups=tuple((res, bucket, offset) for (res, bucket), offset in starts.items()),
        )

    def newer_than(self, offset: int) -> "Correction | None":
        """The part of this correction above `offset` (None if nothing is left)."""
        if min(self.offsets) > offset:
            return self
        return self._only([i for i, o in enumerate(self.offsets) if o > offset])

    def before(self, offset: int) -> "Correction | None":
        """The part of this correction below `offset` (None if nothing is left)."""
        if max(self.offsets) < offset:
            return self
        return self._only([i for i, o in enumerate(self.offsets) if o < offset])

    def _only(self, keep: list[int]) -> "Correction | None":
        """The events at the positions `keep`, with their own sketches."""
        if not keep:
            return None
        users = [self.users[i] for i in keep]
        values = [self.values[i] for i in keep]
        return Correction(
            campaign_id=self.campaign_id,
            event_type=self.event_type,
            bucket_start_ms=self.bucket_start_ms,
            partition=self.partition,
            offsets=tuple(self.offsets[i] for i in keep),
            times=tuple(self.times[i] for i in keep),
            values=tuple(values),
            users=tuple(users),
            users_sketch=sketches.hll_bytes(sketches.hll_of(users)),
            values_sketch=sketches.kll_bytes(sketches.kll_of(values)),
            sink_rollups=self.sink_rollups,
        )


@dataclass(frozen=True, slots=True)
class CorrectionBatch:
    """The corrections of one input batch of one partition: applied together, at once."""

    corrections: tuple[Correction, ...]

    @property
    def count(self) -> int:
        return sum(c.count for c in self.corrections)


WindowKey = tuple[str, str, int]  # campaign, event type, window start
RollupKey = tuple[str, str, str, int]  # resolution, campaign, event type, bucket start


def by_row(
    batches: Sequence[CorrectionBatch],
) -> tuple[dict[WindowKey, list[Correction]], dict[RollupKey, list[Correction]]]:
    """The corrections each window row and each store-held rollup row receives."""
    windows: dict[WindowKey, list[Correction]] = {}
    rollups: dict[RollupKey, list[Correction]] = {}
    for batch in batches:
        for c in batch.corrections:
            windows.setdefault((c.campaign_id, c.event_type, c.bucket_start_ms), []).append(c)
            for resolution, bucket, first in c.sink_rollups:
                part = c.newer_than(first - 1)
                if part is not None:
                    key = (resolution, c.campaign_id, c.event_type, bucket)
                    rollups.setdefault(key, []).append(part)
    return windows, rollups


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """The columns of a stored `event_metrics` row that a correction changes."""

    event_count: int = 0
    on_time_count: int = 0
    value_sum: float = 0.0
    value_min: float | None = None
    value_max: float | None = None
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    late_events: int = 0
    users_sketch: bytes | None = None
    values_sketch: bytes | None = None
    corrected_offset: int = NO_OFFSET


@dataclass(frozen=True, slots=True)
class CorrectedWindow:
    """A corrected `event_metrics` row: every value column, recomputed."""

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    event_count: int
    on_time_count: int
    value_sum: float
    value_min: float
    value_max: float
    unique_users: int
    value_p50: float | None
    value_p95: float | None
    value_p99: float | None
    first_event_ms: int
    last_event_ms: int
    late_events: int
    users_sketch: bytes
    values_sketch: bytes
    corrected_offset: int

    @property
    def value_avg(self) -> float:
        return self.value_sum / self.event_count

    @property
    def revision(self) -> int:
        """Above the closed on-time row's (2 x count + 1), so replays of it change nothing."""
        return 2 * self.event_count + 1


def _optional_min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _optional_max(a: float | None, b: float) -> float:
    return b if a is None else max(a, b)


def _fresh(corrections: Sequence[Correction], offset: int) -> list[Correction]:
    return [c for c in (c.newer_than(offset) for c in corrections) if c is not None]


def _merged(
    fresh: Sequence[Correction], users_sketch: bytes | None, values_sketch: bytes | None
) -> tuple[sketches.HllSketch, sketches.KllSketch]:
    """The stored sketches (if any) merged with the corrections'."""
    users = [sketches.hll_from(c.users_sketch) for c in fresh]
    values = [sketches.kll_from(c.values_sketch) for c in fresh]
    if users_sketch is not None:
        users.append(sketches.hll_from(users_sketch))
    if values_sketch is not None:
        values.append(sketches.kll_from(values_sketch))
    return sketches.merge_hll(users), sketches.merge_kll(values)


def correct_window(
    stored: StoredWindow | None, corrections: Sequence[Correction]
) -> CorrectedWindow | None:
    """A window's row after merging the corrections' events it has not seen (None: none).

    `corrections` are one window's, from one partition.
    """
    stored = stored or StoredWindow()
    fresh = _fresh(corrections, stored.corrected_offset)
    if not fresh:
        return None
    first = fresh[0]
    users, values = _merged(fresh, stored.users_sketch, stored.values_sketch)
    p50, p95, p99 = sketches.percentiles(values)
    new_values = [v for c in fresh for v in c.values]
    new_times = [t for c in fresh for t in c.times]
    count = len(new_values)
    return CorrectedWindow(
        campaign_id=first.campaign_id,
        event_type=first.event_type,
        bucket_start_ms=first.bucket_start_ms,
        event_count=stored.event_count + count,
        on_time_count=stored.on_time_count,
        value_sum=(round(stored.value_sum * MICROS) + to_micros(new_values)) / MICROS,
        value_min=_optional_min(stored.value_min, min(new_values)),
        value_max=_optional_max(stored.value_max, max(new_values)),
        unique_users=sketches.distinct(users),
        value_p50=p50,
        value_p95=p95,
        value_p99=p99,
        first_event_ms=int(_optional_min(stored.first_event_ms, min(new_times))),
        last_event_ms=int(_optional_max(stored.last_event_ms, max(new_times))),
        late_events=stored.late_events + count,
        users_sketch=sketches.hll_bytes(users),
        values_sketch=sketches.kll_bytes(values),
        corrected_offset=max(max(c.offsets) for c in fresh),
    )


@dataclass(frozen=True, slots=True)
class StoredRollup:
    """The columns of a stored `event_sketch_rollups` row that a correction changes."""

    event_count: int = 0
    users_sketch: bytes | None = None
    values_sketch: bytes | None = None
    corrected_offset: int = NO_OFFSET


@dataclass(frozen=True, slots=True)
class CorrectedRollup:
    """A corrected `event_sketch_rollups` row."""

    resolution: str
    campaign_id: str
    event_type: str
    bucket_start_ms: int
    event_count: int
    unique_users: int
    value_p50: float | None
    value_p95: float | None
    value_p99: float | None
    users_sketch: bytes
    values_sketch: bytes
    corrected_offset: int


def correct_rollup(
    stored: StoredRollup | None,
    resolution: str,
    bucket_start_ms: int,
    corrections: Sequence[Correction],
) -> CorrectedRollup | None:
    """An hour or day after merging the corrections' events it has not seen (None: none).

    `corrections` are the batch's corrections of windows within this bucket, all from
    one partition.
    """
    stored = stored or StoredRollup()
    fresh = _fresh(corrections, stored.corrected_offset)
    if not fresh:
        return None
    first = fresh[0]
    users, values = _merged(fresh, stored.users_sketch, stored.values_sketch)
    p50, p95, p99 = sketches.percentiles(values)
    return CorrectedRollup(
        resolution=resolution,
        campaign_id=first.campaign_id,
        event_type=first.event_type,
        bucket_start_ms=bucket_start_ms,
        event_count=stored.event_count + sum(c.count for c in fresh),
        unique_users=sketches.distinct(users),
        value_p50=p50,
        value_p95=p95,
        value_p99=p99,
        users_sketch=sketches.hll_bytes(users),
        values_sketch=sketches.kll_bytes(values),
        corrected_offset=max(max(c.offsets) for c in fresh),
    )
