"""`AlertEngine`: evaluates alert rules over closed windows and tracks incidents.

One engine holds the state of one Kafka partition of campaigns. It is pure and
deterministic: the same sequence of `on_closed` calls yields the same alerts (with the
same ids), which replays after a crash rely on. Time is event time only: window ends.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pulse.aggregation import ClosedWindow, FrozenAggregate, WindowAggregate
from pulse.alerts.baseline import Baseline
from pulse.alerts.history import Series, Slot, metric_value, total_count
from pulse.alerts.incidents import Incident, Incidents, Reading, StateKey
from pulse.alerts.model import AlertEvent
from pulse.alerts.rules import (
    AnomalyRule,
    Metric,
    RatioRule,
    Rule,
    ThresholdRule,
    campaign_matches,
    check_rules,
    matches,
)
from pulse.errors import ConfigError
from pulse.windows import DAY_MS

SeriesKey = tuple[str, str]  # (campaign_id, event_type)
_PLAN_CACHE_LIMIT = 100_000
# Sweeps free memory only. Whether a key's state has expired is decided on its own next
# window (so the same in every replay, whatever other campaigns did); the sweep waits
# this much longer, so it never drops state that decision would still keep, as long as
# campaigns of one partition close windows within an hour of each other (heartbeats keep
# them within minutes).
_SWEEP_MARGIN_MS = 3_600_000
_NO_BASELINE = Baseline()


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    campaign_id: str
    event_type: str
    last_end_ms: int
    windows: tuple[tuple[int, FrozenAggregate], ...]  # (end_ms, aggregate), oldest first


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The whole state of an `AlertEngine`: immutable, picklable, sketches as bytes."""

    window_ms: int
    max_end_ms: int | None
    swept_at_ms: int | None
    series: tuple[SeriesSnapshot, ...]
    campaigns: tuple[tuple[str, int], ...]  # (campaign_id, last window end)
    baselines: tuple[tuple[StateKey, Baseline], ...]
    incidents: tuple[tuple[StateKey, Incident], ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one series needs: its threshold/anomaly rules and how much history to keep."""

    rules: tuple[ThresholdRule | AnomalyRule, ...]
    keep_ms: int


class AlertEngine:
    """Alert rules over the closed windows of one partition; see the module docstring."""

    def __init__(
        self, rules: Sequence[Rule], window_ms: int, *, state_ttl_ms: int = DAY_MS
    ) -> None:
        check_rules(rules, window_ms)
        if state_ttl_ms <= 0:
            raise ConfigError(f"the alert state TTL must be positive, got {state_ttl_ms} ms")
        self._window_ms = window_ms
        self._ttl_ms = state_ttl_ms
        self._rules = {rule.name: rule for rule in rules}
        self._series_rules = tuple(r for r in rules if not isinstance(r, RatioRule))
        self._ratio_rules = tuple(r for r in rules if isinstance(r, RatioRule))
        self._series: dict[SeriesKey, Series] = {}
        self._campaigns: dict[str, int] = {}  # campaigns with ratio rules: last window end
        self._baselines: dict[StateKey, Baseline] = {}
        self._incidents = Incidents()
        self._max_end_ms: int | None = None
        self._swept_at_ms: int | None = None
        self._plans: dict[SeriesKey, _Plan] = {}
        self._ratio_plans: dict[str, tuple[RatioRule, ...]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(self._rules.values())

    def on_closed(self, windows: Sequence[ClosedWindow]) -> list[AlertEvent]:
        """Feeds the windows that closed in one step; returns the alert transitions.

        A window not newer than the last one of its series (a replayed duplicate) is
        ignored. Ratio rules of a campaign are evaluated once per window end, after all
        of the campaign's windows ending there in this call.
        """
        ordered = sorted(windows, key=lambda w: (w.end_ms, w.campaign_id, w.event_type))
        out: list[AlertEvent] = []
        for i, window in enumerate(ordered):
            self._advance(window.end_ms)
            self._on_window(window, out)
            following = ordered[i + 1] if i + 1 < len(ordered) else None
            if (
                following is None
                or following.end_ms != window.end_ms
                or following.campaign_id != window.campaign_id
            ):
                self._on_campaign(window.campaign_id, window.end_ms, out)
        return out

    def _advance(self, end_ms: int) -> None:
        """Tracks event-time progress; sweeps expired state once per base window of it."""
        if self._max_end_ms is None or end_ms > self._max_end_ms:
            self._max_end_ms = end_ms
        if self._swept_at_ms is None:
            self._swept_at_ms = end_ms
        elif self._max_end_ms - self._swept_at_ms >= self._window_ms:
            self._swept_at_ms = self._max_end_ms
            self._sweep(self._max_end_ms)

    def _sweep(self, now_ms: int) -> None:
        """Drops the state of series and campaigns without a window for the TTL."""
        cutoff_ms = now_ms - self._ttl_ms - _SWEEP_MARGIN_MS
        for key in [k for k, s in self._series.items() if s.last_end_ms <= cutoff_ms]:
            del self._series[key]
        for campaign in [c for c, end in self._campaigns.items() if end <= cutoff_ms]:
            del self._campaigns[campaign]
        for state_key in [k for k in self._baselines if not self._alive(k)]:
            del self._baselines[state_key]
        self._incidents.drop(lambda k: not self._alive(k), now_ms)
        if len(self._plans) > _PLAN_CACHE_LIMIT:
            self._plans.clear()
        if len(self._ratio_plans) > _PLAN_CACHE_LIMIT:
            self._ratio_plans.clear()

    def _forget(self, dead: Callable[[StateKey], bool], now_ms: int) -> None:
        """Drops baselines and incidents of the state keys `dead` names."""
        for state_key in [k for k in self._baselines if dead(k)]:
            del self._baselines[state_key]
        self._incidents.drop(dead, now_ms)

    def _alive(self, key: StateKey) -> bool:
        rule_name, campaign, event_type = key
        if isinstance(self._rules.get(rule_name), RatioRule):
            return campaign in self._campaigns
        return (campaign, event_type) in self._series

    def _plan(self, key: SeriesKey) -> _Plan:
        plan = self._plans.get(key)
        if plan is None:
            campaign, event_type = key
            rules = tuple(r for r in self._series_rules if matches(r, campaign, event_type))
            readers = rules + tuple(
                r for r in self._ratio_rules if matches(r, campaign, event_type)
            )
            plan = _Plan(rules, max((r.window_ms for r in readers), default=0))
            self._plans[key] = plan
        return plan

    def _ratio_plan(self, campaign: str) -> tuple[RatioRule, ...]:
        plan = self._ratio_plans.get(campaign)
        if plan is None:
            plan = tuple(r for r in self._ratio_rules if campaign_matches(r, campaign))
            self._ratio_plans[campaign] = plan
        return plan

    def _on_window(self, window: ClosedWindow, out: list[AlertEvent]) -> None:
        key = (window.campaign_id, window.event_type)
        plan = self._plan(key)
        if not plan.keep_ms:
            return
        end = window.end_ms
        series = self._series.get(key)
        if series is not None and end - series.last_end_ms > self._ttl_ms:
            self._forget(lambda k: (k[1], k[2]) == key, end)  # silent beyond the TTL
            del self._series[key]
            series = None
        if series is None:
            series = self._series[key] = Series(end)
        elif end <= series.last_end_ms:
            return
        series.add(Slot(end, window.agg), plan.keep_ms)
        values: dict[tuple[int, Metric], float | None] = {}
        for rule in plan.rules:
            if end % rule.slide_ms:
                continue
            if (rule.window_ms, rule.metric) not in values:
                aggs = series.span(end, rule.window_ms)
                values[rule.window_ms, rule.metric] = metric_value(aggs, rule.metric)
            value = values[rule.window_ms, rule.metric]
            if value is None:
                continue
            state_key = (rule.name, window.campaign_id, window.event_type)
            if isinstance(rule, ThresholdRule):
                reading = Reading(end, value, rule.threshold, rule.op.holds(value, rule.threshold))
            else:
                baseline = self._baselines.get(state_key, _NO_BASELINE)
                anomalous = baseline.samples >= rule.warmup and baseline.is_anomalous(
                    value, rule.k, rule.min_stddev
                )
                if not anomalous:  # a spike must not move the baseline it is judged by
                    self._baselines[state_key] = baseline.updated(value, rule.alpha)
                reading = Reading(end, value, baseline.mean, anomalous)
            self._incidents.evaluate(rule, state_key, reading, out)

    def _on_campaign(self, campaign: str, end: int, out: list[AlertEvent]) -> None:
        rules = self._ratio_plan(campaign)
        if not rules:
            return
        last = self._campaigns.get(campaign)
        if last is not None and end - last > self._ttl_ms:
            ratio_keys = {(r.name, campaign, r.label) for r in rules}
            self._forget(ratio_keys.__contains__, end)  # silent beyond the TTL
        elif last is not None and end <= last:
            return
        self._campaigns[campaign] = end
        for rule in rules:
            if end % rule.slide_ms:
                continue
            numerator = self._count(campaign, rule.numerator, end, rule.window_ms)
            denominator = self._count(campaign, rule.denominator, end, rule.window_ms)
            if denominator == 0 or denominator < rule.min_denominator:
                continue
            ratio = numerator / denominator
            reading = Reading(end, ratio, rule.threshold, rule.op.holds(ratio, rule.threshold))
            self._incidents.evaluate(rule, (rule.name, campaign, rule.label), reading, out)

    def _count(self, campaign: str, event_type: str, end: int, length_ms: int) -> int:
        series = self._series.get((campaign, event_type))
        return 0 if series is None else total_count(series.span(end, length_ms))

    def snapshot(self) -> EngineSnapshot:
        return EngineSnapshot(
            self._window_ms,
            self._max_end_ms,
            self._swept_at_ms,
            tuple(
                SeriesSnapshot(
                    campaign,
                    event_type,
                    series.last_end_ms,
                    tuple((slot.end_ms, slot.freeze()) for slot in series.slots),
                )
                for (campaign, event_type), series in self._series.items()
            ),
            tuple(self._campaigns.items()),
            tuple(self._baselines.items()),
            self._incidents.items(),
        )

    @classmethod
    def restore(
        cls,
        snapshot: EngineSnapshot,
        rules: Sequence[Rule],
        window_ms: int,
        *,
        state_ttl_ms: int = DAY_MS,
    ) -> "AlertEngine":
        """An engine continuing from `snapshot`; state of rules no longer present is dropped."""
        if snapshot.window_ms != window_ms:
            msg = (
                f"the alert state was saved with a {snapshot.window_ms} ms window and "
                f"cannot continue with {window_ms} ms"
            )
            raise ConfigError(msg)
        engine = cls(rules, window_ms, state_ttl_ms=state_ttl_ms)
        engine._max_end_ms = snapshot.max_end_ms
        engine._swept_at_ms = snapshot.swept_at_ms
        for s in snapshot.series:
            series = Series(s.last_end_ms)
            for end_ms, frozen in s.windows:
                series.slots.append(Slot(end_ms, WindowAggregate.thaw(frozen), frozen))
            engine._series[s.campaign_id, s.event_type] = series
        engine._campaigns = dict(snapshot.campaigns)
        known = engine._rules
        engine._baselines = {k: b for k, b in snapshot.baselines if k[0] in known}
        engine._incidents = Incidents((k, i) for k, i in snapshot.incidents if k[0] in known)
        return engine
