"""Hourly and daily rollups of the sketch columns, merged in the dataflow.

Additive columns (counts, sums, min, max, late events) roll up in SQL with
`time_bucket`. Distinct users and quantiles cannot be added, so the dataflow merges each
closed window's sketches into the hour and the day holding it and emits the merged
estimate (and the merged sketch) as a `RollupRow`.
"""

from dataclasses import dataclass
from enum import StrEnum

import datasketches as ds

from pulse import sketches
from pulse.aggregation import ClosedWindow
from pulse.corrections import Correction
from pulse.windows import DAY_MS

HOUR_MS = 3_600_000


class Resolution(StrEnum):
    """Rollup resolutions, as stored in `event_sketch_rollups.resolution`."""

    HOUR = "hour"
    DAY = "day"


ROLLUP_MS = {Resolution.HOUR: HOUR_MS, Resolution.DAY: DAY_MS}


@dataclass(frozen=True, slots=True)
class RollupRow:
    """Merged sketch columns of one hour or day; `event_count` (merged events) only grows."""

    resolution: Resolution
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


class _Accumulator:
    """Merged sketches of the closed windows of one hour or day so far."""

    __slots__ = ("count", "users", "values")

    def __init__(self) -> None:
        self.count = 0
        self.users = ds.hll_union(sketches.HLL_LG_K)
        self.values = sketches.new_kll()


@dataclass(frozen=True, slots=True)
class RollupSnapshot:
    """Immutable, picklable copy of `Rollups` (sketches as bytes)."""

    entries: tuple[tuple[str, Resolution, str, int, int, bytes, bytes], ...]


class Rollups:
    """Hour and day accumulators of one partition's campaigns, fed with closed windows.

    An accumulator lives until its campaign's watermark passes the bucket's end: until
    then another window of that hour or day may still close and merge into it. Changed
    accumulators are remembered until their rows are taken, so a caller may refresh rows
    less often than windows close; an expiring accumulator always yields its final row.
    """

    __slots__ = ("_acc", "_dirty")

    def __init__(self) -> None:
        # campaign -> (resolution, event type, bucket start) -> accumulator
        self._acc: dict[str, dict[tuple[Resolution, str, int], _Accumulator]] = {}
        self._dirty: dict[tuple[str, Resolution, str, int], None] = {}  # an ordered set

    def __len__(self) -> int:
        return sum(len(v) for v in self._acc.values())

    def add(self, closed: list[ClosedWindow]) -> None:
        """Merge closed windows (in close order) into their hour and day."""
        for window in closed:
            if not window.agg.count:
                continue
            per_campaign = self._acc.setdefault(window.campaign_id, {})
            for resolution, length in ROLLUP_MS.items():
                start = window.start_ms - window.start_ms % length
                key = (resolution, window.event_type, start)
                acc = per_campaign.get(key)
                if acc is None:
                    acc = per_campaign[key] = _Accumulator()
                acc.count += window.agg.count
                acc.users.update(window.agg.users)
                acc.values.merge(window.agg.values)
                self._dirty[(window.campaign_id, *key)] = None

    def merge_late(self, resolution: Resolution, bucket_start_ms: int, late: Correction) -> None:
        """Merge late events of a closed window into its hour or day, still held here
        (created if need be: its end is after the watermark at those events)."""
        per_campaign = self._acc.setdefault(late.campaign_id, {})
        key = (resolution, late.event_type, bucket_start_ms)
        acc = per_campaign.get(key)
        if acc is None:
            acc = per_campaign[key] = _Accumulator()
        acc.count += late.count
        acc.users.update(sketches.hll_from(late.users_sketch))
        acc.values.merge(sketches.kll_from(late.values_sketch))
        self._dirty[(late.campaign_id, *key)] = None

    def take_rows(self) -> list[RollupRow]:
        """Rows of every accumulator changed since the last call."""
        rows = [
            _row(res, campaign, event_type, start, self._acc[campaign][(res, event_type, start)])
            for campaign, res, event_type, start in self._dirty
        ]
        self._dirty.clear()
        return rows

    def expire(self, campaign_id: str, watermark_ms: int) -> list[RollupRow]:
        """Forget the campaign's buckets that ended at or before its watermark.

        Returns the final rows of those that changed since their rows were last taken.
        """
        per_campaign = self._acc.get(campaign_id)
        if per_campaign is None:
            return []
        rows = []
        for key in [k for k in per_campaign if k[2] + ROLLUP_MS[k[0]] <= watermark_ms]:
            acc = per_campaign.pop(key)
            dirty = (campaign_id, *key)
            if dirty in self._dirty:
                del self._dirty[dirty]
                rows.append(_row(key[0], campaign_id, key[1], key[2], acc))
        if not per_campaign:
            del self._acc[campaign_id]
        return rows

    def campaigns(self) -> list[str]:
        return list(self._acc)

    def snapshot(self) -> RollupSnapshot:
        return RollupSnapshot(
            tuple(
                (
                    campaign,
                    res,
                    event_type,
                    start,
                    acc.count,
                    sketches.hll_bytes(acc.users.get_result(sketches.HLL_TYPE)),
                    sketches.kll_bytes(acc.values),
                )
                for campaign, per_campaign in self._acc.items()
                for (res, event_type, start), acc in per_campaign.items()
            )
        )

    @classmethod
    def restore(cls, snapshot: RollupSnapshot) -> "Rollups":
        rollups = cls()
        for campaign, res, event_type, start, count, users, values in snapshot.entries:
            acc = _Accumulator()
            acc.count = count
            acc.users.update(sketches.hll_from(users))
            acc.values = sketches.kll_from(values)
            rollups._acc.setdefault(campaign, {})[(res, event_type, start)] = acc
            rollups._dirty[(campaign, res, event_type, start)] = None  # rows may be unwritten
        return rollups


def _row(
    resolution: Resolution, campaign_id: str, event_type: str, start: int, acc: _Accumulator
) -> RollupRow:
    users = acc.users.get_result(sketches.HLL_TYPE)
    p50, p95, p99 = sketches.percentiles(acc.values)
    return RollupRow(
        resolution,
        campaign_id,
        event_type,
        start,
        acc.count,
        sketches.distinct(users),
        p50,
        p95,
        p99,
        sketches.hll_bytes(users),
        sketches.kll_bytes(acc.values),
    )
