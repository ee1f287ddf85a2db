"""Recent closed base windows of one `(campaign, event_type)` and sliding-window metrics.

Base windows without events never close, so a sliding window is whichever base windows
of the series end inside it: missing ones count as zero events and no values.
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pulse import sketches
from pulse.aggregation import FrozenAggregate, WindowAggregate
from pulse.alerts.rules import Metric

_QUANTILE_INDEX = {Metric.P50: 0, Metric.P95: 1, Metric.P99: 2}


@dataclass(slots=True)
class Slot:
    """One closed base window; its frozen form is made once, for snapshots."""

    end_ms: int
    agg: WindowAggregate
    frozen: FrozenAggregate | None = None

    def freeze(self) -> FrozenAggregate:
        if self.frozen is None:
            self.frozen = self.agg.freeze()
        return self.frozen


@dataclass(slots=True)
class Series:
    """The closed base windows of one key that some rule can still read, oldest first."""

    last_end_ms: int
    slots: deque[Slot] = field(default_factory=deque)

    def add(self, slot: Slot, keep_ms: int) -> None:
        """Appends a newer window and forgets those no window of `keep_ms` reaches."""
        self.slots.append(slot)
        self.last_end_ms = slot.end_ms
        horizon = slot.end_ms - keep_ms
        while self.slots[0].end_ms <= horizon:
            self.slots.popleft()

    def span(self, end_ms: int, length_ms: int) -> list[WindowAggregate]:
        """Aggregates of the base windows inside `[end_ms - length_ms, end_ms)`."""
        start = end_ms - length_ms
        out: list[WindowAggregate] = []
        for slot in reversed(self.slots):
            if slot.end_ms <= start:
                break
            if slot.end_ms <= end_ms:
                out.append(slot.agg)
        out.reverse()
        return out


def total_count(aggs: Sequence[WindowAggregate]) -> int:
    return sum(agg.count for agg in aggs)


def metric_value(aggs: Sequence[WindowAggregate], metric: Metric) -> float | None:
    """`metric` over the merged windows; None when it is undefined (no values)."""
    if metric is Metric.COUNT:
        return float(total_count(aggs))
    if metric is Metric.SUM:
        return sum((agg.value_sum for agg in aggs), 0.0)
    if metric is Metric.UNIQUE_USERS:
        return float(sketches.distinct(sketches.merge_hll(agg.users for agg in aggs)))
    filled = [agg for agg in aggs if agg.count]
    if not filled:
        return None
    if metric is Metric.AVG:
        return sum(agg.value_sum for agg in filled) / total_count(filled)
    if metric is Metric.MIN:
        return min(agg.value_min for agg in filled)
    if metric is Metric.MAX:
        return max(agg.value_max for agg in filled)
    merged = sketches.quantiles(sketches.merge_kll(agg.values for agg in filled))
    return None if merged is None else merged[_QUANTILE_INDEX[metric]]
