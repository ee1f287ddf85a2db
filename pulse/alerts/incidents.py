"""Incidents: one alert when a condition starts to hold, one when it has cleared.

Per `(rule, campaign, event_type)`: OK -> FIRING when the condition holds (unless in
cooldown); FIRING -> OK after `resolve_after` consecutive clear evaluations. Both
transitions carry the id of the window the incident fired in.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pulse.alerts.model import AlertEvent, AlertState, alert_id
from pulse.alerts.rules import AnomalyRule, RatioRule, Rule
from pulse.timeutil import ms_to_datetime

StateKey = tuple[str, str, str]  # (rule name, campaign_id, event type or "num/den")


@dataclass(frozen=True, slots=True)
class Incident:
    """A firing incident (`alert_id` set) or a cooldown after one (`alert_id` None)."""

    alert_id: str | None
    clear_streak: int = 0  # consecutive clear evaluations while firing
    quiet_until_ms: int = 0  # no new incident in windows ending before this


@dataclass(frozen=True, slots=True)
class Reading:
    """One evaluation of a rule for one key, in the window ending at `end_ms`."""

    end_ms: int
    observed: float
    reference: float  # the threshold, or the anomaly baseline mean
    holds: bool  # whether the alert condition holds


class Incidents:
    """The incident of every key that has one; keys without an incident are OK."""

    __slots__ = ("_by_key",)

    def __init__(self, items: Iterable[tuple[StateKey, Incident]] = ()) -> None:
        self._by_key = dict(items)

    def items(self) -> tuple[tuple[StateKey, Incident], ...]:
        return tuple(self._by_key.items())

    def drop(self, dead: Callable[[StateKey], bool], now_ms: int) -> None:
        """Forgets incidents of dead keys and cooldowns that are over."""
        gone = [
            key
            for key, inc in self._by_key.items()
            if dead(key) or (inc.alert_id is None and inc.quiet_until_ms <= now_ms)
        ]
        for key in gone:
            del self._by_key[key]

    def evaluate(self, rule: Rule, key: StateKey, reading: Reading, out: list[AlertEvent]) -> None:
        """Applies one evaluation; appends the transition it causes, if any, to `out`."""
        end_ms = reading.end_ms
        incident = self._by_key.get(key)
        if incident is None or incident.alert_id is None:
            if not reading.holds or (incident is not None and end_ms < incident.quiet_until_ms):
                return
            start_ms = end_ms - rule.window_ms
            new_id = alert_id(rule.name, key[1], key[2], start_ms, end_ms)
            self._by_key[key] = Incident(new_id)
            out.append(_event(rule, key, new_id, AlertState.FIRING, reading))
            return
        if reading.holds:
            if incident.clear_streak:
                self._by_key[key] = Incident(incident.alert_id)
            return
        streak = incident.clear_streak + 1
        if streak < rule.resolve_after:
            self._by_key[key] = Incident(incident.alert_id, streak)
            return
        out.append(_event(rule, key, incident.alert_id, AlertState.RESOLVED, reading))
        if rule.cooldown_ms:
            self._by_key[key] = Incident(None, 0, end_ms + rule.cooldown_ms)
        else:
            del self._by_key[key]


def _event(rule: Rule, key: StateKey, id_: str, state: AlertState, reading: Reading) -> AlertEvent:
    _, campaign, event_type = key
    end_ms, observed, reference = reading.end_ms, reading.observed, reading.reference
    start_ms = end_ms - rule.window_ms
    metric = "ratio" if isinstance(rule, RatioRule) else rule.metric.value
    subject = f"{event_type} {metric} {number(observed)}"
    if isinstance(rule, AnomalyRule):
        verdict = "is anomalous" if state is AlertState.FIRING else "is back to normal"
        condition = f"{verdict}, baseline {number(reference)}"
    else:
        verdict = "" if state is AlertState.FIRING else "no longer "
        condition = f"{verdict}{rule.op.value} {number(reference)}"
    prefix = "" if state is AlertState.FIRING else "resolved: "
    where = f"for campaign {campaign} in {window_text(start_ms, end_ms)}"
    return AlertEvent(
        alert_id=id_,
        state=state,
        rule=rule.name,
        rule_kind=rule.kind,
        severity=rule.severity.value,
        campaign_id=campaign,
        event_type=event_type,
        metric=metric,
        window_start_ms=start_ms,
        window_end_ms=end_ms,
        observed=observed,
        threshold=reference,
        message=f"{prefix}{subject} {condition} {where}",
    )


def number(value: float) -> str:
    """A short rendering: integers without decimals, others to a few digits."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def window_text(start_ms: int, end_ms: int) -> str:
    """A window as "2025-11-24 10:01-10:02 UTC" (seconds shown only when not zero)."""
    start, end = ms_to_datetime(start_ms), ms_to_datetime(end_ms)
    fmt = "%H:%M" if start.second == end.second == 0 else "%H:%M:%S"
    end_fmt = fmt if start.date() == end.date() else f"%Y-%m-%d {fmt}"
    return f"{start.strftime('%Y-%m-%d ' + fmt)}-{end.strftime(end_fmt)} UTC"
