"""AlertEngine: rule evaluation over closed windows, incidents, determinism, snapshots."""

import pickle
import random
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest

from pulse.aggregation import ClosedWindow, Partial, WindowAggregate
from pulse.alerts.baseline import Baseline
from pulse.alerts.engine import AlertEngine
from pulse.alerts.history import metric_value
from pulse.alerts.model import AlertEvent, AlertState, alert_id
from pulse.alerts.rules import Metric, parse_rules
from pulse.errors import ConfigError, RuleConfigError

MINUTE = 60_000
T0 = 1_764_000_000_000  # 2025-11-24 16:00 UTC, an hour boundary
FIRING, RESOLVED = AlertState.FIRING, AlertState.RESOLVED


def closed(
    minute: int,
    event_type: str = "click",
    campaign: str = "c1",
    *,
    count: int | None = None,
    values: Sequence[float] | None = None,
    users: Sequence[str] | None = None,
) -> ClosedWindow:
    """The closed base window starting `minute` minutes after T0, from real events."""
    vals = list(values) if values is not None else [1.0] * (count or 0)
    start = T0 + minute * MINUTE
    agg = WindowAggregate()
    if vals:
        agg.merge(
            Partial.of(
                [
                    (
                        start + i % MINUTE,
                        value,
                        users[i] if users is not None else f"user-{i}",
                        i,
                        b"",
                    )
                    for i, value in enumerate(vals)
                ]
            )
        )
    return ClosedWindow(campaign, event_type, start, start + MINUTE, agg)


def rule_text(name: str, kind: str, **fields: object) -> str:
    def show(value: object) -> str:
        return f'"{value}"' if isinstance(value, str) else str(value)

    body = "".join(f"{key} = {show(value)}\n" for key, value in fields.items())
    return f'[[rule]]\nname = "{name}"\nkind = "{kind}"\ncampaign = "*"\n{body}\n'


def count_rule(name: str = "flood", op: str = "above", threshold: float = 100.0, **more: object):
    fields = {"event_type": "click", "metric": "count", "op": op, "threshold": threshold}
    return rule_text(name, "threshold", **(fields | more))


def make_engine(*texts: str, **kwargs: int) -> AlertEngine:
    return AlertEngine(parse_rules("".join(texts), MINUTE), MINUTE, **kwargs)


def feed(engine: AlertEngine, batches: Iterable[Sequence[ClosedWindow]]) -> list[AlertEvent]:
    return [event for batch in batches for event in engine.on_closed(batch)]


def minute_of(ms: int) -> int:
    return (ms - T0) // MINUTE


def brief(events: Iterable[AlertEvent]) -> list[tuple[object, ...]]:
    """(state, rule, campaign, event type, window start/end minute, observed, threshold)."""
    return [
        (
            e.state,
            e.rule,
            e.campaign_id,
            e.event_type,
            minute_of(e.window_start_ms),
            minute_of(e.window_end_ms),
            e.observed,
            e.threshold,
        )
        for e in events
    ]


def counts(
    minutes_counts: Iterable[tuple[int, int]], event_type: str = "click", campaign: str = "c1"
) -> list[list[ClosedWindow]]:
    """One batch per (minute, event count) pair."""
    return [[closed(m, event_type, campaign, count=n)] for m, n in minutes_counts]


def test_threshold_fires_once_and_resolves_with_the_same_id() -> None:
    engine = make_engine(count_rule(severity="critical"))
    assert engine.on_closed([closed(0, count=50), closed(0, "view", count=500)]) == []
    fired = engine.on_closed([closed(1, count=150)])
    first_id = alert_id("flood", "c1", "click", T0 + MINUTE, T0 + 2 * MINUTE)
    assert fired == [
        AlertEvent(
            alert_id=first_id,
            state=FIRING,
            rule="flood",
            rule_kind="threshold",
            severity="critical",
            campaign_id="c1",
            event_type="click",
            metric="count",
            window_start_ms=T0 + MINUTE,
            window_end_ms=T0 + 2 * MINUTE,
            observed=150.0,
            threshold=100.0,
            message="click count 150 above 100 for campaign c1 in 2025-11-24 16:01-16:02 UTC",
        )
    ]
    assert engine.on_closed([closed(2, count=300)]) == []  # still firing: no new alert
    resolved = engine.on_closed([closed(3, count=99)])
    assert resolved == [
        AlertEvent(
            alert_id=first_id,
            state=RESOLVED,
            rule="flood",
            rule_kind="threshold",
            severity="critical",
            campaign_id="c1",
            event_type="click",
            metric="count",
            window_start_ms=T0 + 3 * MINUTE,
            window_end_ms=T0 + 4 * MINUTE,
            observed=99.0,
            threshold=100.0,
            message=(
                "resolved: click count 99 no longer above 100 for campaign c1"
                " in 2025-11-24 16:03-16:04 UTC"
            ),
        )
    ]


def test_a_three_window_spike_is_one_incident() -> None:
    engine = make_engine(count_rule())
    events = feed(engine, counts([(0, 50), (1, 150), (2, 200), (3, 300), (4, 50), (5, 60)]))
    assert brief(events) == [
        (FIRING, "flood", "c1", "click", 1, 2, 150.0, 100.0),
        (RESOLVED, "flood", "c1", "click", 4, 5, 50.0, 100.0),
    ]
    assert (
        events[0].alert_id
        == events[1].alert_id
        == alert_id("flood", "c1", "click", T0 + MINUTE, T0 + 2 * MINUTE)
    )


def test_wildcards_and_exact_campaigns() -> None:
    engine = make_engine(
        rule_text("quiet", "threshold", event_type="*", metric="count", op="below", threshold=10),
        count_rule("c2-only", threshold=10).replace('campaign = "*"', 'campaign = "c2"'),
    )
    batch = [
        closed(0, "click", "c1", count=5),
        closed(0, "view", "c1", count=20),
        closed(0, "click", "c2", count=12),
        closed(0, "view", "c2", count=3),
    ]
    assert brief(engine.on_closed(batch)) == [
        (FIRING, "quiet", "c1", "click", 0, 1, 5.0, 10.0),
        (FIRING, "c2-only", "c2", "click", 0, 1, 12.0, 10.0),
        (FIRING, "quiet", "c2", "view", 0, 1, 3.0, 10.0),
    ]


def test_sliding_sum_counts_a_missing_window_as_zero() -> None:
    rule = rule_text(
        "spend",
        "threshold",
        event_type="click",
        metric="sum",
        op="above",
        threshold=100.0,
        window_seconds=300,
        slide_seconds=60,
    )
    engine = make_engine(rule)
    batches = [
        [closed(0, values=[10.0, 10.0, 10.0])],
        [closed(1, values=[30.0])],
        # no event in minute 2: that window never closes
        [closed(3, values=[15.0, 15.0])],
        [closed(4, values=[20.0])],  # 30 + 30 + 0 + 30 + 20 = 110
        [closed(5, values=[10.0])],  # 30 + 0 + 30 + 20 + 10 = 90
    ]
    assert brief(feed(engine, batches)) == [
        (FIRING, "spend", "c1", "click", 0, 5, 110.0, 100.0),
        (RESOLVED, "spend", "c1", "click", 1, 6, 90.0, 100.0),
    ]


def test_every_metric_over_a_sliding_window_with_a_gap() -> None:
    metrics = ["count", "sum", "avg", "min", "max", "p50", "p95", "p99", "unique_users"]
    engine = make_engine(
        *(
            rule_text(
                m,
                "threshold",
                event_type="click",
                metric=m,
                op="above",
                threshold=-1.0,
                window_seconds=300,
                slide_seconds=300,
            )
            for m in metrics
        )
    )
    first, second = [f"u{i}" for i in range(25)], [f"u{i}" for i in range(25, 50)]
    batches = [
        [closed(0, values=[float(v) for v in range(1, 26)], users=first)],
        [closed(1, values=[float(v) for v in range(26, 51)], users=first)],
        [closed(3, values=[float(v) for v in range(51, 76)], users=second)],
        [closed(4, values=[float(v) for v in range(76, 101)], users=second)],
    ]
    events = feed(engine, batches)
    assert {e.rule: e.observed for e in events} == {
        "count": 100.0,
        "sum": 5050.0,
        "avg": 50.5,
        "min": 1.0,
        "max": 100.0,
        "p50": 51.0,
        "p95": 96.0,
        "p99": 100.0,
        "unique_users": 50.0,
    }
    assert {(minute_of(e.window_start_ms), minute_of(e.window_end_ms)) for e in events} == {(0, 5)}


def test_avg_below_and_p95_above() -> None:
    sliding = {"window_seconds": 300, "slide_seconds": 60}
    engine = make_engine(
        rule_text("cheap", "threshold", event_type="click", metric="avg", op="below", threshold=5)
        .replace("threshold = 5", "threshold = 5\nwindow_seconds = 300\nslide_seconds = 60"),
        rule_text(
            "slow", "threshold", event_type="click", metric="p95", op="above", threshold=50,
            **sliding,
        ),
    )  # fmt: skip
    batches = [
        [closed(0, values=[10.0] * 10)],
        [closed(1, values=[10.0] * 10)],
        [closed(2, values=[1.0] * 30)],  # avg (100 + 100 + 30) / 50 = 4.6
        [closed(3, values=[100.0] * 5)],  # avg 730 / 55; p95 of 55 values: 100
        [closed(6, values=[10.0] * 20)],  # window 2..6: 30 x 1, 5 x 100, 20 x 10
        [closed(8, values=[10.0] * 20)],  # window 4..8: 20 x 10
    ]
    assert brief(feed(engine, batches)) == [
        (FIRING, "cheap", "c1", "click", -2, 3, 4.6, 5.0),
        (RESOLVED, "cheap", "c1", "click", -1, 4, 730 / 55, 5.0),
        (FIRING, "slow", "c1", "click", -1, 4, 100.0, 50.0),
        (RESOLVED, "slow", "c1", "click", 4, 9, 10.0, 50.0),
    ]


def test_metrics_of_no_values_are_undefined() -> None:
    assert {m.value: metric_value([], m) for m in Metric} == {
        "count": 0.0,
        "sum": 0.0,
        "avg": None,
        "min": None,
        "max": None,
        "p50": None,
        "p95": None,
        "p99": None,
        "unique_users": 0.0,
    }


def test_ratio_needs_min_denominator() -> None:
    rule = rule_text(
        "low-ctr",
        "ratio",
        numerator="click",
        denominator="impression",
        op="below",
        threshold=0.05,
        min_denominator=100,
        window_seconds=120,
        slide_seconds=60,
    )
    engine = make_engine(rule)
    imp = "impression"
    batches = [
        [closed(0, count=1), closed(0, imp, count=50)],  # 50 impressions: not judged
        [closed(1, count=2), closed(1, imp, count=60)],  # 3 / 110
        [closed(2, count=10), closed(2, imp, count=40)],  # 12 / 100
        [closed(3, imp, count=200)],  # 10 / 240, no click window needed
    ]
    events = feed(engine, batches)
    assert brief(events) == [
        (FIRING, "low-ctr", "c1", "click/impression", 0, 2, 3 / 110, 0.05),
        (RESOLVED, "low-ctr", "c1", "click/impression", 1, 3, 12 / 100, 0.05),
        (FIRING, "low-ctr", "c1", "click/impression", 2, 4, 10 / 240, 0.05),
    ]
    assert [(e.metric, e.rule_kind) for e in events] == [("ratio", "ratio")] * 3
    assert events[0].alert_id == alert_id("low-ctr", "c1", "click/impression", T0, T0 + 2 * MINUTE)
    assert events[0].message == (
        "click/impression ratio 0.0273 below 0.05 for campaign c1 in 2025-11-24 16:00-16:02 UTC"
    )


def test_anomaly_warms_up_fires_keeps_its_baseline_and_resolves() -> None:
    rule = rule_text(
        "odd", "anomaly", event_type="click", metric="count", k=3.0, alpha=0.5, warmup=3
    )
    engine = make_engine(rule)
    warmup = [(0, 10), (1, 40), (2, 10)]  # c2: a jump during warm-up never fires
    assert feed(engine, counts(warmup, campaign="c2")) == []
    sequence = [(0, 10), (1, 10), (2, 10), (3, 30), (4, 31), (5, 11), (6, 14)]
    events = feed(engine, counts(sequence))
    assert brief(events) == [
        (FIRING, "odd", "c1", "click", 3, 4, 30.0, 10.0),
        (RESOLVED, "odd", "c1", "click", 5, 6, 11.0, 10.0),  # 30 and 31 did not move it
        (FIRING, "odd", "c1", "click", 6, 7, 14.0, 10.5),
    ]
    assert events[0].message == (
        "click count 30 is anomalous, baseline 10 for campaign c1 in 2025-11-24 16:03-16:04 UTC"
    )
    baselines = dict(engine.snapshot().baselines)
    assert baselines[("odd", "c1", "click")] == Baseline(4, 10.5, 0.25)
    assert baselines[("odd", "c2", "click")] == Baseline(3, 17.5, 168.75)


def test_resolve_after_needs_consecutive_clear_evaluations() -> None:
    engine = make_engine(count_rule(resolve_after=3))
    sequence = [(0, 150), (1, 50), (2, 150), (3, 50), (4, 50), (5, 50), (6, 50)]
    events = feed(engine, counts(sequence))
    assert brief(events) == [
        (FIRING, "flood", "c1", "click", 0, 1, 150.0, 100.0),
        (RESOLVED, "flood", "c1", "click", 5, 6, 50.0, 100.0),
    ]
    assert events[0].alert_id == events[1].alert_id


def test_cooldown_suppresses_new_incidents_after_a_resolve() -> None:
    engine = make_engine(count_rule(cooldown_seconds=180))
    sequence = [(0, 50), (1, 150), (2, 50), (3, 150), (4, 150), (5, 150)]
    events = feed(engine, counts(sequence))
    assert brief(events) == [
        (FIRING, "flood", "c1", "click", 1, 2, 150.0, 100.0),
        (RESOLVED, "flood", "c1", "click", 2, 3, 50.0, 100.0),  # quiet until minute 6
        (FIRING, "flood", "c1", "click", 5, 6, 150.0, 100.0),
    ]
    assert events[2].alert_id == alert_id("flood", "c1", "click", T0 + 5 * MINUTE, T0 + 6 * MINUTE)


def test_a_replayed_window_is_not_counted_twice() -> None:
    engine = make_engine(count_rule(window_seconds=120))
    window = closed(0, count=60)
    assert feed(engine, [[window], [window], [closed(1, count=30)]]) == []


RULES = "".join(
    [
        count_rule("flood", threshold=40.0, resolve_after=2),
        rule_text(
            "ctr",
            "ratio",
            numerator="click",
            denominator="impression",
            op="above",
            threshold=0.3,
            min_denominator=50,
            window_seconds=120,
            slide_seconds=60,
        ),
        rule_text(
            "odd", "anomaly", event_type="impression", metric="count", k=4.0, warmup=5,
            min_stddev=10.0,
        ),
        rule_text(
            "slow", "threshold", event_type="click", metric="p95", op="above", threshold=40.0,
            window_seconds=180, slide_seconds=60,
        ),
        rule_text(
            "users", "threshold", event_type="click", metric="unique_users", op="above",
            threshold=45.0, cooldown_seconds=120,
        ),
    ]
)  # fmt: skip


def demo_batches(minutes: int, seed: int = 7) -> list[list[ClosedWindow]]:
    """Steady traffic of three campaigns with a few spikes (fewer than 400 values per key)."""
    rng = random.Random(seed)
    batches = []
    for m in range(minutes):
        batch = []
        for campaign in ("c1", "c2", "c3"):
            impressions = rng.randrange(80, 120) * (3 if (campaign, m) == ("c2", 20) else 1)
            clicks = rng.randrange(5, 25)
            values = [float(rng.randrange(30)) for _ in range(clicks)]
            users = [f"u{rng.randrange(40)}" for _ in range(clicks)]
            if campaign == "c1" and m in (12, 13, 25):  # a click spike, from other users
                values += [50.0] * 60
                users += [f"s{i}" for i in range(60)]
            if (campaign, m) != ("c3", 8):  # c3 has no clicks at all in minute 8
                batch.append(closed(m, "click", campaign, values=values, users=users))
            batch.append(closed(m, "impression", campaign, count=impressions))
        batches.append(batch)
    return batches


def test_same_input_same_alerts() -> None:
    batches = demo_batches(40)
    first = feed(AlertEngine(parse_rules(RULES, MINUTE), MINUTE), batches)
    second = feed(AlertEngine(parse_rules(RULES, MINUTE), MINUTE), batches)
    rng = random.Random(1)
    shuffled = [rng.sample(batch, len(batch)) for batch in batches]
    third = feed(AlertEngine(parse_rules(RULES, MINUTE), MINUTE), shuffled)
    assert first == second == third
    assert [(e.state.value, e.rule, e.campaign_id, minute_of(e.window_end_ms)) for e in first] == [
        ("firing", "flood", "c1", 13),
        ("firing", "slow", "c1", 13),
        ("firing", "users", "c1", 13),
        ("firing", "ctr", "c1", 13),
        ("resolved", "users", "c1", 15),
        ("resolved", "flood", "c1", 16),  # resolve_after = 2
        ("resolved", "ctr", "c1", 16),
        ("resolved", "slow", "c1", 17),
        ("firing", "odd", "c2", 21),
        ("resolved", "odd", "c2", 22),
        ("firing", "flood", "c1", 26),
        ("firing", "slow", "c1", 26),
        ("firing", "users", "c1", 26),
        ("firing", "ctr", "c1", 26),
        ("resolved", "users", "c1", 27),
        ("resolved", "flood", "c1", 28),
        ("resolved", "ctr", "c1", 28),
        ("resolved", "slow", "c1", 29),
    ]
    ids = Counter(e.alert_id for e in first)
    assert set(ids.values()) == {2}  # every incident: one firing, one resolved, one id


@pytest.mark.parametrize("cut", [5, 13, 21, 26])
def test_a_restored_engine_continues_exactly(cut: int) -> None:
    batches = demo_batches(40)
    rules = parse_rules(RULES, MINUTE)
    original = AlertEngine(rules, MINUTE)
    before = feed(original, batches[:cut])
    after = feed(original, batches[cut:])

    engine = AlertEngine(rules, MINUTE)
    assert feed(engine, batches[:cut]) == before
    saved = pickle.loads(pickle.dumps(engine.snapshot()))
    restored = AlertEngine.restore(saved, rules, MINUTE)
    assert feed(restored, batches[cut:]) == after
    assert restored.snapshot() == original.snapshot()


def test_restore_drops_the_state_of_removed_rules() -> None:
    rules = parse_rules(count_rule("a") + count_rule("b"), MINUTE)
    engine = AlertEngine(rules, MINUTE)
    feed(engine, counts([(0, 150)]))
    assert [key for key, _ in engine.snapshot().incidents] == [
        ("a", "c1", "click"),
        ("b", "c1", "click"),
    ]
    restored = AlertEngine.restore(engine.snapshot(), rules[1:], MINUTE)
    assert [key for key, _ in restored.snapshot().incidents] == [("b", "c1", "click")]
    assert brief(feed(restored, counts([(1, 50)]))) == [
        (RESOLVED, "b", "c1", "click", 1, 2, 50.0, 100.0)
    ]
    with pytest.raises(ConfigError):
        AlertEngine.restore(engine.snapshot(), rules, 2 * MINUTE)


def test_state_expires_after_the_ttl() -> None:
    """A key silent for longer than the TTL starts afresh on its next window; sweeps that
    free the memory of silent keys come an hour later and change no decision."""
    engine = make_engine(count_rule(), state_ttl_ms=10 * MINUTE)
    assert len(engine.on_closed([closed(0, count=150)])) == 1
    feed(engine, counts([(m, 5) for m in range(1, 11)], campaign="c2"))
    snap = engine.snapshot()
    assert [(s.campaign_id, s.last_end_ms) for s in snap.series] == [
        ("c1", T0 + MINUTE),
        ("c2", T0 + 11 * MINUTE),
    ]
    assert [key for key, _ in snap.incidents] == [("flood", "c1", "click")]

    # c1 was silent for 11 minutes: its open incident is forgotten, this is a new one.
    events = engine.on_closed([closed(12, count=150)])
    assert brief(events) == [(FIRING, "flood", "c1", "click", 12, 13, 150.0, 100.0)]

    # An hour and ten minutes after c1's last window, the sweep frees its state.
    feed(engine, counts([(m, 5) for m in range(13, 82)], campaign="c2"))
    assert sorted(s.campaign_id for s in engine.snapshot().series) == ["c1", "c2"]
    feed(engine, counts([(82, 5)], campaign="c2"))
    snap = engine.snapshot()
    assert [s.campaign_id for s in snap.series] == ["c2"]
    assert snap.incidents == ()


def test_rules_must_fit_the_base_window() -> None:
    rules = parse_rules(count_rule(window_seconds=120), MINUTE)
    with pytest.raises(RuleConfigError):
        AlertEngine(rules, 90_000)
