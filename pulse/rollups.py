"""Hourly and daily rollups of the sketch columns, merged in the dataflow.

Additive columns (counts, sums, min, max, late events) roll up in SQL with
`time_bucket`. Distinct users and quantiles cannot be added, so the dataflow merges each
closed window's sketches into the hour holding it, each hour into its day when the hour
expires, and emits the merged estimates (and the merged sketches) as `RollupRow`s. A
day's row adds the hours of it still open, so it holds every closed window as before,
for one merge per window instead of two (at high cardinality most windows hold an event
or two, and the merges were a large part of the window step).
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import datasketches as ds

from pulse import sketches
from pulse.aggregation import ClosedWindow, WindowAggregate
from pulse.corrections import Correction
from pulse.windows import DAY_MS, HOUR_MS, bucket_start


class Resolution(StrEnum):
    """Rollup resolutions, as stored in `event_sketch_rollups.resolution` (and pickled in
    recovery snapshots: the class keeps this name and module). A query's resolution is
    `pulse.query.QueryResolution`."""

    HOUR = "hour"
    DAY = "day"


ROLLUP_MS = {Resolution.HOUR: HOUR_MS, Resolution.DAY: DAY_MS}


def _hours_first(key: tuple[Resolution, str, int]) -> bool:
    return key[0] is not Resolution.HOUR


class RollupRow(NamedTuple):
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


Frozen = tuple[bytes | tuple[str, ...], bytes | tuple[float, ...]]  # users, values


class _Accumulator:
    """Merged users and values of the closed windows of one hour or day so far: exact (a
    set, a list) while few, as `WindowAggregate` keeps them, then sketches. Most hours of
    a high-cardinality stream merge a few events, and a KLL sketch alone takes 3.5 KB."""

    __slots__ = ("_frozen", "_union", "_user_tuple", "_value_tuple", "_values", "count")

    def __init__(self) -> None:
        self.count = 0
        # Exact users and values as tuples (shared with the frozen copy); None once
        # `_union` or `_values` holds them.
        self._user_tuple: tuple[str, ...] | None = ()
        self._union: ds.hll_union | None = None
        self._value_tuple: tuple[float, ...] | None = ()
        self._values: ds.kll_doubles_sketch | None = None
        self._frozen: Frozen | None = None  # `frozen()` since the last change

    def add_window(self, agg: WindowAggregate) -> None:
        self._frozen = None
        self.count += agg.count
        users, values = agg.exact_users(), agg.exact_values()
        mine = self._user_tuple
        if users is not None and mine is not None:
            if len(users) > 1:
                mine = tuple({*mine, *users})
            elif users and users[0] not in mine:  # most windows at high cardinality
                mine += users
            self._user_tuple = mine
            if len(mine) > WindowAggregate.SMALL:
                self._sketched_users()
        else:
            self._sketched_users().update(agg.users)
        if values is not None and self._value_tuple is not None:
            self._value_tuple += values
            if len(self._value_tuple) > WindowAggregate.SMALL:
                self._sketched_values()
        else:
            self._sketched_values().merge(agg.values)

    def add_sketches(self, count: int, users: ds.hll_sketch, values: ds.kll_doubles_sketch) -> None:
        self._frozen = None
        self.count += count
        self._sketched_users().update(users)
        self._sketched_values().merge(values)

    def add_accumulator(self, other: "_Accumulator") -> None:
        """Merge another accumulator (an hour into its day)."""
        self._frozen = None
        self.count += other.count
        users, values = other._user_tuple, other._value_tuple
        if users is not None and self._user_tuple is not None:
            self._user_tuple = tuple({*self._user_tuple, *users})
            if len(self._user_tuple) > WindowAggregate.SMALL:
                self._sketched_users()
        else:
            self._sketched_users().update(other.users_sketch())
        if values is not None and self._value_tuple is not None:
            self._value_tuple += values
            if len(self._value_tuple) > WindowAggregate.SMALL:
                self._sketched_values()
        else:
            self._sketched_values().merge(other.values_sketch())

    def _sketched_users(self) -> ds.hll_union:
        if self._union is None:
            self._union = ds.hll_union(sketches.HLL_LG_K)
            if self._user_tuple:
                self._union.update(sketches.hll_of(self._user_tuple))
            self._user_tuple = None
        return self._union

    def _sketched_values(self) -> ds.kll_doubles_sketch:
        if self._values is None:
            self._values = sketches.kll_of(self._value_tuple or ())
            self._value_tuple = None
        return self._values

    def users_sketch(self) -> ds.hll_sketch:
        """The merged users as one sketch (the accumulator stays as it is)."""
        if self._union is not None:
            return self._union.get_result(sketches.HLL_TYPE)
        return sketches.hll_of(self._user_tuple or ())

    def values_sketch(self) -> ds.kll_doubles_sketch:
        """The merged values as one sketch (the accumulator stays as it is)."""
        if self._values is not None:
            return self._values
        return sketches.kll_of(self._value_tuple or ())

    def estimates(
        self, users: ds.hll_sketch, values: ds.kll_doubles_sketch
    ) -> tuple[int, float | None, float | None, float | None]:
        """(distinct users, p50, p95, p99): exact while the sets are, else from `users`
        and `values` (`users_sketch()` and `values_sketch()`, made once by the caller)."""
        exact = self._user_tuple
        distinct = len(exact) if exact is not None else sketches.distinct(users)
        if self._value_tuple is not None:
            q = sketches.exact_quantiles(self._value_tuple)
            p50, p95, p99 = q if q is not None else (None, None, None)
        else:
            p50, p95, p99 = sketches.percentiles(values)
        return distinct, p50, p95, p99

    def frozen(self) -> "Frozen":
        """Users and values for a snapshot: exact as tuples, sketches as bytes (made once
        per change: every snapshot holds every accumulator, most unchanged)."""
        if self._frozen is None:
            self._frozen = self._make_frozen()
        return self._frozen

    def _make_frozen(self) -> "Frozen":
        users: bytes | tuple[str, ...] = (
            self._user_tuple
            if self._user_tuple is not None
            else sketches.hll_bytes(self.users_sketch())
        )
        values: bytes | tuple[float, ...] = (
            self._value_tuple
            if self._value_tuple is not None
            else sketches.kll_bytes(self.values_sketch())
        )
        return users, values

    @classmethod
    def thawed(
        cls, count: int, users: bytes | tuple[str, ...], values: bytes | tuple[float, ...]
    ) -> "_Accumulator":
        acc = cls()
        acc.count = count
        if isinstance(users, bytes):
            acc._sketched_users().update(sketches.hll_from(users))
        else:
            acc._user_tuple = tuple(users)
        if isinstance(values, bytes):
            acc._values, acc._value_tuple = sketches.kll_from(values), None
        else:
            acc._value_tuple = tuple(values)
        return acc


SnapshotEntry = tuple[
    str, Resolution, str, int, int, bytes | tuple[str, ...], bytes | tuple[float, ...]
]


@dataclass(frozen=True, slots=True)
class RollupSnapshot:
    """Immutable, picklable copy of `Rollups` (sketches as bytes)."""

    # (campaign, resolution, event type, bucket start, count, users, values): users and
    # values exact (tuples) or as sketch bytes.
    entries: tuple["SnapshotEntry", ...]
    # Days hold their expired hours (not their windows). Snapshots from before lack the
    # field: their days hold the windows of the hours still open too.
    days_of_hours: bool = True
    legacy_hours: tuple[tuple[str, str, int], ...] = ()  # see `Rollups._legacy`


class Rollups:
    """Hour and day accumulators of one partition's campaigns, fed with closed windows.

    An accumulator lives until its campaign's watermark passes the bucket's end: until
    then another window of that hour or day may still close and merge into it. A closed
    window merges into its hour; an hour merges into its day when it expires (hours
    expire first), and a day's row merges in its hours still open. Changed accumulators
    are remembered until their rows are taken, so a caller may refresh rows less often
    than windows close; an expiring accumulator always yields its final row.
    """

    __slots__ = ("_acc", "_dirty", "_frozen", "_legacy", "_unsnapped")

    def __init__(self) -> None:
        # campaign -> (resolution, event type, bucket start) -> accumulator
        self._acc: dict[str, dict[tuple[Resolution, str, int], _Accumulator]] = {}
        self._dirty: dict[tuple[str, Resolution, str, int], None] = {}  # an ordered set
        # Snapshot entries, refreshed for the accumulators changed since the last snapshot
        # (as `PartitionWindows` keeps its windows'): a snapshot costs per change.
        self._frozen: dict[tuple[str, Resolution, str, int], SnapshotEntry] = {}
        self._unsnapped: dict[tuple[str, Resolution, str, int], _Accumulator] = {}
        # Hours restored from a snapshot whose days already held their windows: their
        # windows (and late events) keep going into the day too, and they are not merged
        # into it when they expire. (campaign, event type, hour start); gone within hours.
        self._legacy: set[tuple[str, str, int]] = set()

    def __len__(self) -> int:
        return sum(len(v) for v in self._acc.values())

    def add(self, closed: list[ClosedWindow]) -> None:
        """Merge closed windows (in close order) into their hour; their day's row changes."""
        by_campaign, dirty, unsnapped = self._acc, self._dirty, self._unsnapped
        legacy = self._legacy
        for campaign, event_type, start, _end, agg in closed:
            if not agg.count:
                continue
            per_campaign = by_campaign.get(campaign)
            if per_campaign is None:
                per_campaign = by_campaign[campaign] = {}
            hour = bucket_start(start, HOUR_MS)
            key = (Resolution.HOUR, event_type, hour)
            acc = per_campaign.get(key)
            if acc is None:
                acc = per_campaign[key] = _Accumulator()
            acc.add_window(agg)
            full = (campaign, *key)
            dirty[full] = None
            unsnapped[full] = acc
            day_key = (Resolution.DAY, event_type, bucket_start(start, DAY_MS))
            day = per_campaign.get(day_key)
            day_full = (campaign, *day_key)
            if day is None:
                day = per_campaign[day_key] = _Accumulator()
                unsnapped[day_full] = day
            if legacy and (campaign, event_type, hour) in legacy:
                day.add_window(agg)
                unsnapped[day_full] = day
            dirty[day_full] = None

    def merge_late(self, resolution: Resolution, bucket_start_ms: int, late: Correction) -> None:
        """Merge late events of a closed window into its hour or day, still held here
        (created if need be: its end is after the watermark at those events).

        Late events an hour holds change its day's row too (a day's row merges in its
        open hours), even when no window of that day closed on time: the day is held
        and its row refreshed as `add` does for a closed window.
        """
        campaign, event_type = late.campaign_id, late.event_type
        per_campaign = self._acc.setdefault(campaign, {})
        key = (resolution, event_type, bucket_start_ms)
        acc = per_campaign.get(key)
        if acc is None:
            acc = per_campaign[key] = _Accumulator()
        acc.add_sketches(
            late.count, sketches.hll_from(late.users_sketch), sketches.kll_from(late.values_sketch)
        )
        self._dirty[(campaign, *key)] = None
        self._unsnapped[(campaign, *key)] = acc
        if resolution is Resolution.HOUR:
            day_key = (Resolution.DAY, event_type, bucket_start(bucket_start_ms, DAY_MS))
            if day_key not in per_campaign:
                day = per_campaign[day_key] = _Accumulator()
                self._unsnapped[(campaign, *day_key)] = day
            self._dirty[(campaign, *day_key)] = None

    @property
    def changed(self) -> bool:
        """Whether an accumulator changed since the last `take_rows`."""
        return bool(self._dirty)

    def take_rows(self) -> list[RollupRow]:
        """Rows of every accumulator changed since the last call."""
        rows = [self._row(*key) for key in self._dirty]
        self._dirty.clear()
        return rows

    def _row(self, campaign: str, res: Resolution, event_type: str, start: int) -> RollupRow:
        """The bucket's row; a day's merges in the hours of it still open."""
        per_campaign = self._acc[campaign]
        acc = per_campaign[(res, event_type, start)]
        if res is Resolution.DAY:
            hours = [
                hour
                for (r, t, s), hour in per_campaign.items()
                if r is Resolution.HOUR
                and t == event_type
                and start <= s < start + DAY_MS
                and (campaign, t, s) not in self._legacy
            ]
            if hours:
                merged = _Accumulator()
                for part in (acc, *hours):
                    merged.add_accumulator(part)
                acc = merged
        return _row(res, campaign, event_type, start, acc)

    def expire(self, campaign_id: str, watermark_ms: int) -> list[RollupRow]:
        """Forget the campaign's buckets that ended at or before its watermark.

        Returns the final rows of those that changed since their rows were last taken.
        """
        per_campaign = self._acc.get(campaign_id)
        if per_campaign is None:
            return []
        rows = []
        ended = [k for k in per_campaign if k[2] + ROLLUP_MS[k[0]] <= watermark_ms]
        ended.sort(key=_hours_first)  # a day takes its hours before it ends itself
        for key in ended:
            res, event_type, start = key
            full = (campaign_id, *key)
            if full in self._dirty:
                del self._dirty[full]
                rows.append(self._row(*full))
            acc = per_campaign.pop(key)
            self._frozen.pop(full, None)
            self._unsnapped.pop(full, None)
            if res is Resolution.HOUR and not self._forget_legacy(campaign_id, event_type, start):
                # The day's total is unchanged (its row counted the hour as open).
                day_key = (Resolution.DAY, event_type, bucket_start(start, DAY_MS))
                day = per_campaign.get(day_key)
                if day is None:
                    day = per_campaign[day_key] = _Accumulator()
                day.add_accumulator(acc)
                self._unsnapped[(campaign_id, *day_key)] = day
        if not per_campaign:
            del self._acc[campaign_id]
        return rows

    def campaigns(self) -> list[str]:
        return list(self._acc)

    def snapshot(self) -> RollupSnapshot:
        frozen = self._frozen
        for key, acc in self._unsnapped.items():
            frozen[key] = (*key, acc.count, *acc.frozen())
        self._unsnapped.clear()
        return RollupSnapshot(tuple(frozen.values()), legacy_hours=tuple(self._legacy))

    def _forget_legacy(self, campaign: str, event_type: str, start: int) -> bool:
        """Forget an expired hour's `_legacy` mark; whether it had one."""
        key = (campaign, event_type, start)
        if key in self._legacy:
            self._legacy.discard(key)
            return True
        return False

    def feeds_day(self, campaign: str, event_type: str, hour_start: int) -> bool:
        """Whether the hour, if held, reaches its day when it expires (late events held by
        it must not go into the day directly)."""
        return (campaign, event_type, hour_start) not in self._legacy

    @classmethod
    def restore(cls, snapshot: RollupSnapshot) -> "Rollups":
        rollups = cls()
        for entry in snapshot.entries:
            campaign, res, event_type, start, count, users, values = entry
            acc = _Accumulator.thawed(count, users, values)
            rollups._acc.setdefault(campaign, {})[(res, event_type, start)] = acc
            rollups._dirty[(campaign, res, event_type, start)] = None  # rows may be unwritten
            rollups._frozen[(campaign, res, event_type, start)] = entry
        if getattr(snapshot, "days_of_hours", False):
            rollups._legacy = set(getattr(snapshot, "legacy_hours", ()))
        else:  # days of this snapshot hold the windows of their open hours
            rollups._legacy = {
                (campaign, event_type, start)
                for campaign, res, event_type, start, *_ in snapshot.entries
                if res is Resolution.HOUR
            }
        return rollups


def _row(
    resolution: Resolution, campaign_id: str, event_type: str, start: int, acc: _Accumulator
) -> RollupRow:
    users, values = acc.users_sketch(), acc.values_sketch()
    distinct, p50, p95, p99 = acc.estimates(users, values)
    return RollupRow(
        resolution,
        campaign_id,
        event_type,
        start,
        acc.count,
        distinct,
        p50,
        p95,
        p99,
        sketches.hll_bytes(users),
        sketches.kll_bytes(values),
    )
