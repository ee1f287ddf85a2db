"""Loading and checking alert rules files."""

import json
from pathlib import Path

import pytest

from pulse.alerts.rules import (
    MAX_FILE_BYTES,
    AnomalyRule,
    Metric,
    Op,
    RatioRule,
    Severity,
    ThresholdRule,
    campaign_matches,
    check_rules,
    load_rules,
    matches,
    parse_rules,
)
from pulse.errors import ConfigError, RuleConfigError

MINUTE = 60_000
DEMO = Path(__file__).resolve().parents[2] / "config" / "alerts.toml"

THRESHOLD = {
    "name": "r",
    "kind": "threshold",
    "campaign": "*",
    "event_type": "click",
    "metric": "count",
    "op": "above",
    "threshold": 100.0,
}
RATIO = {
    "name": "r",
    "kind": "ratio",
    "campaign": "*",
    "numerator": "click",
    "denominator": "impression",
    "op": "below",
    "threshold": 0.01,
}
ANOMALY = {
    "name": "r",
    "kind": "anomaly",
    "campaign": "*",
    "event_type": "impression",
    "metric": "count",
}
DROP = object()


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    return json.dumps(value)


def rules_text(*tables: dict[str, object]) -> str:
    parts = []
    for table in tables:
        lines = [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not DROP]
        parts.append("[[rule]]\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def error_of(text: str, window_ms: int = MINUTE) -> str:
    with pytest.raises(RuleConfigError) as info:
        parse_rules(text, window_ms, "rules.toml")
    return str(info.value)


def test_the_demo_file_loads() -> None:
    assert load_rules(DEMO, MINUTE) == (
        ThresholdRule(
            name="click-flood",
            campaign="*",
            window_ms=MINUTE,
            slide_ms=MINUTE,
            severity=Severity.WARNING,
            resolve_after=2,
            cooldown_ms=300_000,
            event_type="click",
            metric=Metric.COUNT,
            op=Op.ABOVE,
            threshold=750.0,
        ),
        RatioRule(
            name="ctr-spike",
            campaign="*",
            window_ms=2 * MINUTE,
            slide_ms=MINUTE,
            severity=Severity.CRITICAL,
            numerator="click",
            denominator="impression",
            op=Op.ABOVE,
            threshold=0.4,
            min_denominator=500,
        ),
        AnomalyRule(
            name="click-anomaly",
            campaign="*",
            window_ms=5 * MINUTE,
            slide_ms=MINUTE,
            severity=Severity.INFO,
            event_type="click",
            metric=Metric.COUNT,
            k=4.0,
            alpha=0.3,
            warmup=10,
            min_stddev=50.0,
        ),
    )


def test_defaults() -> None:
    text = rules_text(THRESHOLD, {**RATIO, "name": "q"}, {**ANOMALY, "name": "a"})
    threshold, ratio, anomaly = parse_rules(text, MINUTE)
    assert threshold == ThresholdRule(
        name="r",
        campaign="*",
        window_ms=MINUTE,
        slide_ms=MINUTE,
        severity=Severity.WARNING,
        resolve_after=1,
        cooldown_ms=0,
        event_type="click",
        metric=Metric.COUNT,
        op=Op.ABOVE,
        threshold=100.0,
    )
    assert isinstance(ratio, RatioRule)
    assert (ratio.min_denominator, ratio.label) == (1, "click/impression")
    assert isinstance(anomaly, AnomalyRule)
    assert (anomaly.k, anomaly.alpha, anomaly.warmup, anomaly.min_stddev) == (3.0, 0.3, 10, 1.0)


def test_window_defaults_follow_the_base_window() -> None:
    (rule,) = parse_rules(rules_text({**THRESHOLD, "window_seconds": 300}), 30_000)
    assert (rule.window_ms, rule.slide_ms) == (300_000, 30_000)


def test_an_empty_file_has_no_rules() -> None:
    assert parse_rules("# nothing yet\n", MINUTE) == ()


def test_the_message_names_file_rule_and_field() -> None:
    text = rules_text(THRESHOLD, {**RATIO, "name": "low-ctr", "window_seconds": 90})
    assert error_of(text) == (
        'rules.toml: rule 2 ("low-ctr"): window_seconds=90 is not a multiple of the 60 s window'
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({**THRESHOLD, "name": DROP}, "rule 1: name is required"),
        ({**THRESHOLD, "name": "a b"}, 'rule 1: name="a b" must match [A-Za-z0-9_.-]{1,64}'),
        ({**THRESHOLD, "name": "x" * 65}, f'rule 1: name="{"x" * 65}" must match'),
        ({**THRESHOLD, "kind": DROP}, 'rule 1 ("r"): kind is required'),
        (
            {**THRESHOLD, "kind": "rate"},
            'rule 1 ("r"): kind="rate" is not one of threshold, ratio, anomaly',
        ),
        (
            {**THRESHOLD, "treshold": 5},
            'rule 1 ("r"): unknown key "treshold" for a threshold rule (did you mean "threshold"?)',
        ),
        (
            {**RATIO, "event_type": "click"},
            'rule 1 ("r"): unknown key "event_type" for a ratio rule',
        ),
        ({**THRESHOLD, "campaign": DROP}, 'rule 1 ("r"): campaign is required'),
        ({**THRESHOLD, "campaign": ""}, 'rule 1 ("r"): campaign="" must be non-empty printable'),
        ({**THRESHOLD, "campaign": 7}, 'rule 1 ("r"): campaign=7 must be a string'),
        (
            {**THRESHOLD, "event_type": "e" * 65},
            f'rule 1 ("r"): event_type="{"e" * 65}" is longer than 64 characters',
        ),
        (
            {**THRESHOLD, "metric": "p90"},
            'rule 1 ("r"): metric="p90" is not one of count, sum, avg, min, max, p50, p95, p99,'
            " unique_users",
        ),
        ({**THRESHOLD, "op": DROP}, 'rule 1 ("r"): op is required'),
        ({**THRESHOLD, "op": ">"}, 'rule 1 ("r"): op=">" is not one of above, below'),
        ({**THRESHOLD, "threshold": "high"}, 'rule 1 ("r"): threshold="high" must be a number'),
        ({**THRESHOLD, "threshold": True}, 'rule 1 ("r"): threshold=true must be a number'),
        (
            {**THRESHOLD, "threshold": float("nan")},
            'rule 1 ("r"): threshold=nan must be a finite number',
        ),
        (
            {**THRESHOLD, "window_seconds": 30},
            'rule 1 ("r"): window_seconds=30 is not a multiple of the 60 s window',
        ),
        (
            {**THRESHOLD, "window_seconds": 172_800},
            'rule 1 ("r"): window_seconds=172800 must be between 1 and 86400',
        ),
        (
            {**THRESHOLD, "window_seconds": 60.0},
            'rule 1 ("r"): window_seconds=60.0 must be an integer',
        ),
        (
            {**THRESHOLD, "slide_seconds": 90},
            'rule 1 ("r"): slide_seconds=90 is not a multiple of the 60 s window',
        ),
        (
            {**THRESHOLD, "slide_seconds": 120},
            'rule 1 ("r"): slide_seconds=120 does not divide window_seconds=60',
        ),
        (
            {**THRESHOLD, "window_seconds": 300, "slide_seconds": 120},
            'rule 1 ("r"): slide_seconds=120 does not divide window_seconds=300',
        ),
        (
            {**THRESHOLD, "severity": "high"},
            'rule 1 ("r"): severity="high" is not one of info, warning, critical',
        ),
        (
            {**THRESHOLD, "resolve_after": 0},
            'rule 1 ("r"): resolve_after=0 must be between 1 and 10000',
        ),
        (
            {**THRESHOLD, "cooldown_seconds": -5},
            'rule 1 ("r"): cooldown_seconds=-5 must be between 0 and 2592000',
        ),
        ({**RATIO, "numerator": "*"}, 'rule 1 ("r"): numerator="*" must be an exact event type'),
        (
            {**RATIO, "denominator": "click"},
            'rule 1 ("r"): denominator="click" is the numerator too',
        ),
        (
            {**RATIO, "min_denominator": 0},
            'rule 1 ("r"): min_denominator=0 must be between 1 and 1000000000',
        ),
        ({**ANOMALY, "k": 0}, 'rule 1 ("r"): k=0 must be above 0'),
        ({**ANOMALY, "alpha": 0.0}, 'rule 1 ("r"): alpha=0.0 must be in (0, 1]'),
        ({**ANOMALY, "alpha": 1.5}, 'rule 1 ("r"): alpha=1.5 must be in (0, 1]'),
        ({**ANOMALY, "warmup": 0}, 'rule 1 ("r"): warmup=0 must be between 1 and 100000'),
        ({**ANOMALY, "min_stddev": -1}, 'rule 1 ("r"): min_stddev=-1 must not be negative'),
        ({**ANOMALY, "op": "above"}, 'rule 1 ("r"): unknown key "op" for an anomaly rule'),
    ],
)
def test_invalid_fields(table: dict[str, object], message: str) -> None:
    assert error_of(rules_text(table)).startswith(f"rules.toml: {message}")


def test_duplicate_names() -> None:
    text = rules_text(THRESHOLD, {**RATIO, "name": "q"}, {**ANOMALY, "name": "r"})
    assert error_of(text) == 'rules.toml: rule 3 ("r"): name is already used by rule 1'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("window = 60\n", 'rules.toml: unknown top-level key "window" (rules are [[rule]])'),
        ("rule = 1\n", 'rules.toml: "rule" must be an array of tables ([[rule]])'),
        (
            'name "x"\n',
            "rules.toml: invalid TOML: Expected '=' after a key in a key/value pair"
            " (at line 1, column 6)",
        ),
        (rules_text(THRESHOLD) * 1001, "rules.toml: 1001 rules, the limit is 1000"),
    ],
)
def test_invalid_files(text: str, message: str) -> None:
    assert error_of(text) == message


def test_load_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(RuleConfigError) as info:
        load_rules(missing, MINUTE)
    assert str(info.value) == f"{missing}: cannot read the rules file: No such file or directory"

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"# \xff\n")
    with pytest.raises(RuleConfigError) as info:
        load_rules(binary, MINUTE)
    assert str(info.value) == f"{binary}: not UTF-8 text (byte 2)"

    big = tmp_path / "big.toml"
    big.write_text("#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(RuleConfigError) as info:
        load_rules(str(big), MINUTE)
    assert str(info.value) == f"{big}: larger than the limit of 1048576 bytes"


def test_rule_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        parse_rules("rule = 1\n", MINUTE)


def test_matches_wildcards_and_exact_ids() -> None:
    every, one = parse_rules(
        rules_text(
            {**THRESHOLD, "name": "every", "event_type": "*"},
            {**THRESHOLD, "name": "one", "campaign": "c1"},
        ),
        MINUTE,
    )
    (ratio,) = parse_rules(rules_text(RATIO), MINUTE)
    assert [matches(every, c, t) for c, t in [("c1", "click"), ("c2", "view")]] == [True, True]
    assert [matches(one, c, t) for c, t in [("c1", "click"), ("c2", "click"), ("c1", "view")]] == [
        True,
        False,
        False,
    ]
    assert [matches(ratio, "c9", t) for t in ("click", "impression", "conversion")] == [
        True,
        True,
        False,
    ]
    assert (campaign_matches(one, "c1"), campaign_matches(one, "c10")) == (True, False)


def test_rules_built_in_code_are_checked_against_the_window() -> None:
    (rule,) = parse_rules(rules_text({**THRESHOLD, "window_seconds": 120}), MINUTE)
    check_rules([rule], MINUTE)
    with pytest.raises(RuleConfigError) as info:
        check_rules([rule], 90_000)
    assert str(info.value) == (
        'rule "r": window_ms=120000 and slide_ms=60000 must be multiples of the 90000 ms'
        " window, the slide dividing the window"
    )
    with pytest.raises(RuleConfigError) as info:
        check_rules([rule, rule], MINUTE)
    assert str(info.value) == 'rule "r": the name is used twice'
