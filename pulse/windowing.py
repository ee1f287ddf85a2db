"""The window state of one Kafka partition: watermarks, open windows, closing, rollups.

Driven only by the records of the partition, in offset order (never by the wall
clock), so a replay after a crash makes the same decisions and emits the same rows.

Per campaign, the watermark is the highest event time seen minus the allowed
lateness; the partition's heartbeats (wall time written into the log by the edge) add
a floor of heartbeat time minus the idle timeout, so windows of a campaign that went
quiet still close, and backlog read after downtime is judged by the heartbeats written
beside it, not by today's clock. A window closes when the watermark reaches its end.
Its campaign's watermark then stays past it, so a late event never reopens it.

Before that, each batch loses its retries: events whose `(campaign_id, event_id)` the
partition saw within the dedup horizon (`pulse.dedup`). A late event whose window
closed within the correction horizon becomes a `Correction` of that window; the hour
and day accumulators still held here take it at once, the store merges it into the
stored rows. Older late events are routed aside.

With a campaign limit, events of campaigns past it are shed first (`pulse.shedding`);
with dimension sets, every counted event also joins a slice per set, keyed like its
campaign window (`pulse.dimensions`), so slices close and correct with it.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from pulse.aggregation import (
    ClosedWindow,
    FrozenAggregate,
    LateEvent,
    MetricRow,
    Partial,
    WindowAggregate,
)
from pulse.alerts.model import AlertEvent
from pulse.corrections import Correction
from pulse.dedup import IdMemory, IdMemorySnapshot
from pulse.dimensions import GroupBy, Slicer, SlicerSnapshot, is_series
from pulse.preagg import NO_TIME, PartitionChunk, Record, RecordBatch, WindowKey, preaggregate
from pulse.rollups import ROLLUP_MS, Resolution, RollupRow, Rollups, RollupSnapshot
from pulse.shedding import CampaignLimit, LimitSnapshot, ShedEvent
from pulse.windows import bucket_start

# Late events of one window in one chunk, with each event's watermark within the chunk
# (None: none of them was late within the chunk, only by the state's watermark).
_LatePart = tuple[Partial, list[int] | None]
_NEVER = 2**63  # an offset no event reaches
OpenWindowEntry = tuple[str, str, int, FrozenAggregate]  # campaign, type, start, aggregate
NO_GROUPS = GroupBy()
_CLOSE_ORDER = attrgetter("end_ms", "campaign_id", "event_type")  # closed windows' order


class AlertEvaluator(Protocol):
    """Evaluates alert rules on closed windows (see `pulse.alerts.engine`)."""

    def on_closed(self, windows: list[ClosedWindow]) -> list[AlertEvent]: ...
    def snapshot(self) -> Any: ...


@dataclass(slots=True)
class StepOutput:
    """What one chunk changed: rows to upsert, events routed aside, alerts."""

    rows: list[MetricRow] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)  # beyond the correction horizon
    rollups: list[RollupRow] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    closed: int = 0  # campaign windows closed (slices not counted)
    counted: int = 0  # events folded into open windows (once, whatever their slices)
    duplicates: int = 0  # events dropped as retries of events seen before
    overflow: dict[str, int] = field(default_factory=dict)  # per dimension: to `OTHER`
    shed: list[ShedEvent] = field(default_factory=list)  # past the campaign limit
    full_days: list[int] = field(default_factory=list)  # days that reached the limit

    @property
    def corrected(self) -> int:
        """Late events folded into their closed windows (once, whatever their slices)."""
        return corrected_events(self.corrections)


def corrected_events(corrections: list[Correction]) -> int:
    """The events a set of corrections folds in, each once (not again per slice)."""
    return sum(c.count for c in corrections if not is_series(c.event_type))


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    """Immutable, picklable copy of a `PartitionWindows` (Bytewax recovery state)."""

    partition: int
    heartbeat_ms: int
    max_event_ms: tuple[tuple[str, int], ...]
    open_windows: tuple[OpenWindowEntry, ...]
    rollups: RollupSnapshot
    alerts: Any
    log_ms: int = NO_TIME
    ids: IdMemorySnapshot | None = None
    duplicates: int = 0
    corrections: tuple[Correction, ...] = ()  # not yet handed to the store
    slicer: SlicerSnapshot = ()  # admitted dimension values (`pulse.dimensions`)
    limit: LimitSnapshot = ()  # admitted campaigns per day (`pulse.shedding`)


class PartitionWindows:
    """Open windows and watermarks of the campaigns of one partition.

    `correction_ms` is the correction horizon (0: late events are only routed aside),
    `dedup_s` the dedup horizon in seconds (0: no dedup), `group_by` the dimension sets
    whose slices are aggregated beside each campaign (`pulse.dimensions`),
    `max_campaigns` the campaigns aggregated per UTC day (0: no limit; `pulse.shedding`).
    Rows of open windows are refreshed at most every `refresh_ms`, rows of open hours
    and days at most every `rollup_refresh_ms` (each `now_ms` of `apply`).
    """

    def __init__(
        self,
        partition: int,
        window_ms: int,
        lateness_ms: int,
        idle_ms: int,
        alerts: AlertEvaluator | None = None,
        *,
        refresh_ms: float = 0,
        rollup_refresh_ms: float = 0,
        correction_ms: int = 0,
        dedup_s: int = 0,
        group_by: GroupBy = NO_GROUPS,
        max_campaigns: int = 0,
    ) -> None:
        self.partition = partition
        self._slicer = Slicer(group_by) if group_by else None
        self._limit = (
            CampaignLimit(max_campaigns, idle_ms, correction_ms + window_ms)
            if max_campaigns
            else None
        )
        self._correction_ms = correction_ms
        self._ids = IdMemory(dedup_s) if dedup_s else None
        self._log_ms = NO_TIME  # the partition's log time: highest event or heartbeat time
        self.duplicates = 0  # events dropped as retries since the partition's first record
        # Corrections for the store, gathered between refreshes: window -> in offset order.
        self._corrections: dict[WindowKey, list[Correction]] = {}
        self._refresh_ms = refresh_ms
        self._refreshed_at = float("-inf")
        # An open hour or day changes with every window of it that closes: at many keys
        # its rows, rewritten as often as those of windows, would outnumber them.
        self._rollup_refresh_ms = rollup_refresh_ms
        self._rollups_refreshed_at = float("-inf")
        # Open windows changed since their rows were last emitted.
        self._pending: dict[tuple[str, str, int], WindowAggregate] = {}
        self._window_ms = window_ms
        self._lateness_ms = lateness_ms
        self._idle_ms = idle_ms
        self._alerts = alerts
        self._heartbeat_ms = NO_TIME
        self._max_event_ms: dict[str, int] = {}
        # campaign -> (event type, window start) -> aggregate
        self._open: dict[str, dict[tuple[str, int], WindowAggregate]] = {}
        # The snapshot's entries of the open windows, refreshed for the windows changed
        # since the last snapshot (`_unsnapped`): a snapshot costs Python work per changed
        # window, not per open window (Bytewax takes one every epoch).
        self._frozen: dict[tuple[str, str, int], OpenWindowEntry] = {}
        self._unsnapped: dict[tuple[str, str, int], WindowAggregate] = {}
        self._rollups = Rollups()

    # -- queries --------------------------------------------------------------------

    def watermark(self, campaign_id: str) -> int:
        """The campaign's watermark: windows ending at or before it are closed."""
        floor = self._heartbeat_ms - self._idle_ms if self._heartbeat_ms != NO_TIME else NO_TIME
        seen = self._max_event_ms.get(campaign_id)
        if seen is None:
            return floor
        return max(seen - self._lateness_ms, floor)

    @property
    def max_watermark_ms(self) -> int:
        """The most advanced campaign watermark of the partition (NO_TIME before any)."""
        floor = self._heartbeat_ms - self._idle_ms if self._heartbeat_ms != NO_TIME else NO_TIME
        seen = max(self._max_event_ms.values(), default=NO_TIME)
        return floor if seen == NO_TIME else max(seen - self._lateness_ms, floor)

    @property
    def open_window_count(self) -> int:
        return sum(len(w) for w in self._open.values())

    @property
    def campaign_count(self) -> int:
        return len(self._max_event_ms)

    # -- the step -------------------------------------------------------------------

    def apply_batch(self, batch: RecordBatch, now_ms: float = 0) -> StepOutput:
        """Drop the batch's retries, pre-aggregate the rest, and `apply` it."""
        records, duplicates = self._admit(batch)
        shed: list[ShedEvent] = []
        if self._limit is not None:
            records, shed = self._limit.filter(records, self.partition, self._heartbeat_ms)
        chunk = preaggregate(
            batch.partition,
            records,
            self._window_ms,
            self._lateness_ms,
            self._idle_ms,
            correction_ms=self._correction_ms,
            slicer=self._slicer,
            known=self._max_event_ms,
            heartbeat_ms=self._heartbeat_ms,
        )
        chunk.trace_parents = batch.trace_parents
        out = self.apply(chunk, now_ms)
        out.duplicates = duplicates
        out.shed = shed
        if self._limit is not None:
            out.full_days = self._limit.take_full()
        return out

    def _admit(self, batch: RecordBatch) -> tuple[list[Record], int]:
        """The batch's records without retries, and how many retries there were."""
        before = self._log_ms
        self._log_ms = max(before, batch.last_log_ms)
        if self._ids is None or not batch.digests:
            return batch.records, 0
        keep = self._ids.admit(batch.digests, batch.event_log_ms(before))
        duplicates = len(keep) - int(np.count_nonzero(keep))
        if not duplicates:
            return batch.records, 0
        self.duplicates += duplicates
        verdicts = iter(keep.tolist())
        # Heartbeats (empty campaign id) always stay; each event takes its verdict.
        records = [r for r in batch.records if not r[0] or next(verdicts)]
        return records, duplicates

    def apply(self, chunk: PartitionChunk, now_ms: float = 0) -> StepOutput:
        """Merge one pre-aggregated batch; close what its watermarks passed.

        Closed windows and expired hours and days always yield their final rows. Rows of
        open windows and of open hours and days, which only show progress, are refreshed
        at most every `refresh_ms` and `rollup_refresh_ms` of `now_ms` (a monotonic clock
        of the caller's; it never affects results).
        """
        out = StepOutput()
        corrected: dict[WindowKey, list[_LatePart]] = {}
        before: dict[str, int] = {}  # campaign -> its watermark before this chunk
        touched = self._merge(chunk, out, corrected, before)
        self._pending.update(touched)
        self._unsnapped.update(touched)
        for campaign, seen in chunk.max_event_ms.items():
            if seen > self._max_event_ms.get(campaign, NO_TIME):
                self._max_event_ms[campaign] = seen
        heartbeat_moved = chunk.heartbeat_ms > self._heartbeat_ms
        if heartbeat_moved:
            self._heartbeat_ms = chunk.heartbeat_ms
        # A heartbeat may close windows of every campaign; events only their own.
        candidates = list(self._open) if heartbeat_moved else list(chunk.max_event_ms)
        closed = self._close(candidates)
        for window in closed:
            key = (window.campaign_id, window.event_type, window.start_ms)
            self._pending.pop(key, None)
            self._unsnapped.pop(key, None)
            self._frozen.pop(key, None)
        out.rows = [w.agg.row(w.campaign_id, w.event_type, w.start_ms, closed=True) for w in closed]
        self._rollups.add(closed)
        totals = [w for w in closed if not is_series(w.event_type)] if self._slicer else closed
        out.closed = len(totals)
        if self._alerts is not None and totals:
            out.alerts = self._alerts.on_closed(totals)
        # Corrections first: accumulators they reach must take them before they expire.
        for key, parts in corrected.items():
            self._corrections.setdefault(key, []).append(self._correct(key, parts, before[key[0]]))
        expiring = list(self._rollups.campaigns()) if heartbeat_moved else list(chunk.max_event_ms)
        for campaign in expiring:
            out.rollups += self._rollups.expire(campaign, self.watermark(campaign))
        if heartbeat_moved:
            self._forget_campaigns()
            if self._slicer is not None:  # no event of a day before this can count
                floor = self._heartbeat_ms - self._idle_ms - self._correction_ms
                self._slicer.forget_before(floor - self._window_ms)
        if self._slicer is not None:
            out.overflow = self._slicer.take_overflow()
        if now_ms - self._refreshed_at >= self._refresh_ms:
            out.rows += self.take_progress_rows()
            out.corrections = self.take_corrections()
            self._refreshed_at = now_ms
        if now_ms - self._rollups_refreshed_at >= self._rollup_refresh_ms:
            out.rollups += self._rollups.take_rows()
            self._rollups_refreshed_at = now_ms
        return out

    def next_refresh_ms(self) -> float | None:
        """When what waits for a refresh is due, in the clock of `apply`'s `now_ms`: rows
        of open windows and corrections a refresh interval after the last refresh, rows of
        changed hours and days a rollup interval after theirs; None when nothing waits
        (a quiet partition's shell calls `take_due` then)."""
        due = []
        if self._pending or self._corrections:
            due.append(self._refreshed_at + self._refresh_ms)
        if self._rollups.changed:
            due.append(self._rollups_refreshed_at + self._rollup_refresh_ms)
        return min(due) if due else None

    def take_due(self, now_ms: float) -> tuple[list[MetricRow], list[RollupRow], list[Correction]]:
        """What a batch at `now_ms` would have refreshed: progress rows of open windows and
        corrections, rows of changed hours and days, each once its interval has passed."""
        progress: list[MetricRow] = []
        corrections: list[Correction] = []
        rollups: list[RollupRow] = []
        if now_ms - self._refreshed_at >= self._refresh_ms:
            progress = self.take_progress_rows()
            corrections = self.take_corrections()
            self._refreshed_at = now_ms
        if now_ms - self._rollups_refreshed_at >= self._rollup_refresh_ms:
            rollups = self._rollups.take_rows()
            self._rollups_refreshed_at = now_ms
        return progress, rollups, corrections

    def take_pending(self) -> tuple[list[MetricRow], list[RollupRow], list[Correction]]:
        """Every row and correction waiting for a refresh (the input ended): progress rows
        of open windows, rows of changed hours and days, corrections."""
        return self.take_progress_rows(), self.take_rollup_rows(), self.take_corrections()

    def take_corrections(self) -> list[Correction]:
        """Every correction gathered since the last refresh, one per window.

        The store applies them together, so a row it corrects holds every late event of
        its own up to the offsets of this set (see `pulse.corrections`).
        """
        out = [Correction.combine(parts) for parts in self._corrections.values()]
        self._corrections.clear()
        return out

    def take_progress_rows(self) -> list[MetricRow]:
        """Rows of the open windows changed since the last refresh (e.g. at end of input)."""
        rows = [
            agg.row(campaign, event_type, start, closed=False)
            for (campaign, event_type, start), agg in self._pending.items()
        ]
        self._pending.clear()
        return rows

    def take_rollup_rows(self) -> list[RollupRow]:
        return self._rollups.take_rows()

    def _correct(self, key: WindowKey, parts: list["_LatePart"], before: int) -> Correction:
        """A closed window's late events, for the store; those of them that reach an hour or
        day before the watermark passes its end also go into its accumulator here.

        Each event is judged by the watermark at its own position in the partition (the
        state's before the chunk, or the chunk's own up to the event, whichever is higher),
        never by where the batch ends, so a replay that cuts batches elsewhere routes every
        event alike. The watermark only grows with the offset, so the events the store must
        merge into a bucket are those from some offset on.
        """
        campaign, event_type, start = key
        hour = bucket_start(start, ROLLUP_MS[Resolution.HOUR])
        correction = Correction.of(
            campaign, event_type, start, self.partition, [p for p, _ in parts]
        )
        by_store: list[tuple[str, int, int]] = []
        hour_from = _NEVER  # events from this offset on are not held by the hour
        for resolution, length in ROLLUP_MS.items():  # the hour first
            bucket = bucket_start(start, length)
            end = bucket + length
            if before >= end:
                from_offset = min(correction.offsets)  # the accumulator is gone: all of them
            else:
                from_offset = min(
                    (
                        offset
                        for part, marks in parts
                        for offset, mark in zip(part.offsets, marks or (), strict=False)
                        if mark >= end
                    ),
                    default=_NEVER,
                )
            held = correction if from_offset == _NEVER else correction.before(from_offset)
            if resolution is Resolution.HOUR:
                hour_from = from_offset
            elif held is not None and self._rollups.feeds_day(campaign, event_type, hour):
                # Those the hour holds reach the day when it expires.
                held = None if hour_from == _NEVER else held.newer_than(hour_from - 1)
            if held is not None:
                self._rollups.merge_late(resolution, bucket, held)
            if from_offset != _NEVER:
                by_store.append((resolution.value, bucket, from_offset))
        return dataclasses.replace(correction, sink_rollups=tuple(by_store))

    def _merge(
        self,
        chunk: PartitionChunk,
        out: StepOutput,
        corrected: dict[WindowKey, list["_LatePart"]],
        marks: dict[str, int],
    ) -> dict[tuple[str, str, int], WindowAggregate]:
        """Fold the chunk's partials into open windows; late ones into `corrected` (within
        the correction horizon) or aside.

        Each partial is judged against its campaign's watermark before this chunk (the
        chunk's own part of the watermark was applied event by event already).
        """
        window_ms = self._window_ms
        touched: dict[tuple[str, str, int], WindowAggregate] = {}
        late = list(chunk.late)

        def aside(key: WindowKey, part: Partial, mark: int) -> None:
            campaign, event_type, start = key
            if is_series(event_type):  # the campaign's own partial routes these events
                return
            late.extend(
                LateEvent(campaign, event_type, start, chunk.partition, offset, ts, raw, mark)
                for offset, ts, raw in zip(part.offsets, part.times, part.raws, strict=True)
            )

        for key, part in chunk.partials.items():
            campaign, event_type, start = key
            mark = marks.get(campaign)
            if mark is None:
                mark = marks[campaign] = self.watermark(campaign)
            if start + window_ms <= mark:
                if start + window_ms > mark - self._correction_ms:
                    corrected.setdefault(key, []).append((part, None))
                else:
                    aside(key, part, mark)
                continue
            agg = self._fold(campaign, event_type, start, part)
            if not is_series(event_type):
                out.counted += part.count
            touched[key] = agg
        # Late within the batch and within the horizon by the batch's own watermark; the
        # state's may still put them beyond it.
        for key, part in chunk.corrections.items():
            campaign, _event_type, start = key
            mark = marks.get(campaign)
            if mark is None:
                mark = marks[campaign] = self.watermark(campaign)
            if start + window_ms <= mark - self._correction_ms:
                aside(key, part, mark)
            else:
                corrected.setdefault(key, []).append((part, chunk.correction_marks[key]))
        late.sort(key=lambda e: e.offset)
        out.late = late
        return touched

    def _fold(self, campaign: str, event_type: str, start: int, part: Partial) -> WindowAggregate:
        """Merge an on-time partial into its open window (made of it if new)."""
        windows = self._open.get(campaign)
        if windows is None:
            windows = self._open[campaign] = {}
        agg = windows.get((event_type, start))
        if agg is None:
            agg = windows[(event_type, start)] = WindowAggregate.of(part)
        else:
            agg.merge(part)
        return agg

    def _close(self, campaigns: list[str]) -> list[ClosedWindow]:
        window_ms = self._window_ms
        closed: list[ClosedWindow] = []
        for campaign in campaigns:
            windows = self._open.get(campaign)
            if not windows:
                continue
            mark = self.watermark(campaign)
            ready = [k for k in windows if k[1] + window_ms <= mark]
            for event_type, start in ready:
                agg = windows.pop((event_type, start))
                closed.append(ClosedWindow(campaign, event_type, start, start + window_ms, agg))
            if not windows:
                del self._open[campaign]
        closed.sort(key=_CLOSE_ORDER)
        return closed

    def _forget_campaigns(self) -> None:
        """Forget campaigns whose own watermark the heartbeats have overtaken.

        Their watermark equals the heartbeat floor from now on, with or without their
        entry, so dropping it changes no decision and keeps the state bounded.
        """
        floor = self._heartbeat_ms - self._idle_ms
        for campaign in [
            c
            for c, seen in self._max_event_ms.items()
            if c not in self._open and seen - self._lateness_ms <= floor
        ]:
            del self._max_event_ms[campaign]

    # -- recovery -------------------------------------------------------------------

    def snapshot(self) -> PartitionSnapshot:
        frozen = self._frozen
        for key, agg in self._unsnapped.items():
            frozen[key] = (*key, agg.freeze())
        self._unsnapped.clear()
        return PartitionSnapshot(
            self.partition,
            self._heartbeat_ms,
            tuple(self._max_event_ms.items()),
            tuple(frozen.values()),
            self._rollups.snapshot(),
            self._alerts.snapshot() if self._alerts is not None else None,
            log_ms=self._log_ms,
            ids=self._ids.snapshot() if self._ids is not None else None,
            duplicates=self.duplicates,
            corrections=tuple(c for parts in self._corrections.values() for c in parts),
            slicer=self._slicer.snapshot() if self._slicer is not None else (),
            limit=self._limit.snapshot() if self._limit is not None else (),
        )

    @classmethod
    def restore(
        cls,
        snapshot: PartitionSnapshot,
        window_ms: int,
        lateness_ms: int,
        idle_ms: int,
        make_alerts: Callable[[Any], AlertEvaluator | None] = lambda _snapshot: None,
        *,
        refresh_ms: float = 0,
        rollup_refresh_ms: float = 0,
        correction_ms: int = 0,
        dedup_s: int = 0,
        group_by: GroupBy = NO_GROUPS,
        max_campaigns: int = 0,
    ) -> "PartitionWindows":
        """Rebuild a snapshot; `make_alerts` gets the alert state saved (None: start afresh)."""
        alerts = make_alerts(snapshot.alerts)
        state = cls(
            snapshot.partition,
            window_ms,
            lateness_ms,
            idle_ms,
            alerts,
            refresh_ms=refresh_ms,
            rollup_refresh_ms=rollup_refresh_ms,
            correction_ms=correction_ms,
            dedup_s=dedup_s,
            group_by=group_by,
            max_campaigns=max_campaigns,
        )
        if state._limit is not None:
            state._limit.restored(getattr(snapshot, "limit", ()))
        if group_by:
            state._slicer = Slicer.restore(group_by, getattr(snapshot, "slicer", ()))
        # Snapshots written before dedup and corrections lack their fields: start those
        # afresh (no ids remembered, no corrections pending).
        state._log_ms = getattr(snapshot, "log_ms", NO_TIME)
        state.duplicates = getattr(snapshot, "duplicates", 0)
        for c in getattr(snapshot, "corrections", ()):
            key = (c.campaign_id, c.event_type, c.bucket_start_ms)
            state._corrections.setdefault(key, []).append(c)
        ids = getattr(snapshot, "ids", None)
        if dedup_s and ids is not None:
            state._ids = IdMemory.restore(ids, dedup_s)
        state._heartbeat_ms = snapshot.heartbeat_ms
        state._max_event_ms = dict(snapshot.max_event_ms)
        for entry in snapshot.open_windows:
            campaign, event_type, start, frozen = entry
            state._open.setdefault(campaign, {})[(event_type, start)] = WindowAggregate.thaw(frozen)
            state._frozen[(campaign, event_type, start)] = entry
        state._rollups = Rollups.restore(snapshot.rollups)
        return state
