"""Alert transitions as the dataflow emits them and the sinks store and publish them."""

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class AlertState(StrEnum):
    """An incident fires once and resolves once. Values are stored in `alerts.state`."""

    FIRING = "firing"
    RESOLVED = "resolved"


def alert_id(rule: str, campaign_id: str, event_type: str, start_ms: int, end_ms: int) -> str:
    """Deterministic id of an incident: the rule, the key and the window it fired in."""
    text = f"{rule}\x1f{campaign_id}\x1f{event_type}\x1f{start_ms}\x1f{end_ms}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One transition of one incident. `(alert_id, state)` is unique forever.

    The resolved transition keeps the `alert_id` of the firing one; its window is the
    window in which the condition cleared.
    """

    alert_id: str
    state: AlertState
    rule: str
    rule_kind: str  # "threshold", "ratio" or "anomaly"
    severity: str
    campaign_id: str
    event_type: str  # for ratio rules "numerator/denominator"
    metric: str
    window_start_ms: int
    window_end_ms: int
    observed: float
    threshold: float  # the threshold, or the EWMA baseline for anomaly rules
    message: str
