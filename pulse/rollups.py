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
    then another window of that hour or day may still close and merge into it.
    """

    __slots__ = ("_acc",)

    def __init__(self) -> None:
        # campaign -> (resolution, event type, bucket start) -> accumulator
        self._acc: dict[str, dict[tuple[Resolution, str, int], _Accumulator]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._acc.values())

    def add(self, closed: list[ClosedWindow]) -> list[RollupRow]:
        """Merge closed windows (in close order) into their hour and day; return new rows."""
        rows: dict[tuple[Resolution, str, str, int], RollupRow] = {}
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
                rows[(resolution, window.campaign_id, window.event_type, start)] = _row(
                    resolution, window.campaign_id, window.event_type, start, acc
                )
        return list(rows.values())

    def expire(self, campaign_id: str, watermark_ms: int) -> None:
        """Forget the campaign's buckets that ended at or before its watermark."""
        per_campaign = self._acc.get(campaign_id)
        if per_campaign is None:
            return
        for key in [k for k in per_campaign if k[2] + ROLLUP_MS[k[0]] <= watermark_ms]:
            del per_campaign[key]
        if not per_campaign:
            del self._acc[campaign_id]

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
        return rollups


def _row(
    resolution: Resolution, campaign_id: str, event_type: str, start: int, acc: _Accumulator
) -> RollupRow:
    users = acc.users.get_result(sketches.HLL_TYPE)
    q = sketches.quantiles(acc.values)
    p50, p95, p99 = q if q is not None else (None, None, None)
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
