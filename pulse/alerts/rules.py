"""Alert rules: the typed model and the loader of the rules file (TOML).

A rules file is a list of `[[rule]]` tables. Every rule is checked when the file is
loaded; any problem raises `RuleConfigError` with a one-line message naming the file,
the rule (1-based index and name) and the field. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypedDict, TypeVar

from pulse.errors import RuleConfigError
from pulse.limits import MAX_EVENT_TYPE_CHARS, MAX_ID_CHARS

WILDCARD = "*"
MAX_FILE_BYTES = 1024 * 1024
MAX_RULES = 1000
MAX_WINDOW_SECONDS = 86_400
MAX_RESOLVE_AFTER = 10_000
MAX_WARMUP = 100_000
MAX_MIN_DENOMINATOR = 1_000_000_000
MAX_COOLDOWN_SECONDS = 30 * 86_400
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Metric(StrEnum):
    """What a threshold or anomaly rule measures over its sliding window."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    P50 = "p50"
    P95 = "p95"
    P99 = "p99"
    UNIQUE_USERS = "unique_users"


class Op(StrEnum):
    """The direction of a threshold: the condition holds strictly above or below it."""

    ABOVE = "above"
    BELOW = "below"

    def holds(self, observed: float, threshold: float) -> bool:
        return observed > threshold if self is Op.ABOVE else observed < threshold


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleBase:
    """Fields every rule kind has. Durations are in milliseconds."""

    kind: ClassVar[str]
    name: str
    campaign: str  # exact campaign id or WILDCARD
    window_ms: int  # sliding window length, a multiple of the base window
    slide_ms: int  # evaluate at window ends divisible by this; divides window_ms
    severity: Severity = Severity.WARNING
    resolve_after: int = 1  # consecutive clear evaluations that resolve an incident
    cooldown_ms: int = 0  # after a resolve, no new incident for this long


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule(RuleBase):
    """Fires while `metric` of the sliding window is above (below) `threshold`."""

    kind: ClassVar[str] = "threshold"
    event_type: str  # exact event type or WILDCARD
    metric: Metric
    op: Op
    threshold: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RatioRule(RuleBase):
    """Fires while count(numerator) / count(denominator) is above (below) `threshold`."""

    kind: ClassVar[str] = "ratio"
    numerator: str
    denominator: str
    op: Op
    threshold: float
    min_denominator: int = 1  # fewer denominator events in the window: not evaluated

    @property
    def label(self) -> str:
        """The event type of this rule's alerts: "numerator/denominator"."""
        return f"{self.numerator}/{self.denominator}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyRule(RuleBase):
    """Fires while `metric` is more than `k` standard deviations off its EWMA baseline."""

    kind: ClassVar[str] = "anomaly"
    event_type: str  # exact event type or WILDCARD
    metric: Metric
    k: float = 3.0
    alpha: float = 0.3  # EWMA smoothing factor, 0 < alpha <= 1
    warmup: int = 10  # evaluations feeding the baseline before the rule can fire
    min_stddev: float = 1.0  # floor of the standard deviation


Rule = ThresholdRule | RatioRule | AnomalyRule


def campaign_matches(rule: Rule, campaign_id: str) -> bool:
    return rule.campaign in (WILDCARD, campaign_id)


def matches(rule: Rule, campaign_id: str, event_type: str) -> bool:
    """Whether `rule` reads the windows of `(campaign_id, event_type)`."""
    if not campaign_matches(rule, campaign_id):
        return False
    if isinstance(rule, RatioRule):
        return event_type in (rule.numerator, rule.denominator)
    return rule.event_type in (WILDCARD, event_type)


def check_rules(rules: Iterable[Rule], window_ms: int) -> None:
    """Checks that rules built in code fit the base window and have unique names."""
    if window_ms <= 0:
        raise RuleConfigError(f"the base window must be positive, got {window_ms} ms")
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleConfigError(f'rule "{rule.name}": the name is used twice')
        seen.add(rule.name)
        ok = (
            rule.slide_ms > 0
            and rule.slide_ms % window_ms == 0
            and rule.window_ms % rule.slide_ms == 0
        )
        if not ok:
            msg = (
                f'rule "{rule.name}": window_ms={rule.window_ms} and slide_ms={rule.slide_ms} '
                f"must be multiples of the {window_ms} ms window, the slide dividing the window"
            )
            raise RuleConfigError(msg)


def load_rules(path: str | Path, window_ms: int) -> tuple[Rule, ...]:
    """Reads and checks a rules file; `window_ms` is the dataflow's base window."""
    source = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleConfigError(f"{source}: cannot read the rules file: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise RuleConfigError(f"{source}: larger than the limit of {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    return parse_rules(text, window_ms, source)


def parse_rules(text: str, window_ms: int, source: str = "<rules>") -> tuple[Rule, ...]:
    """Parses and checks the text of a rules file; `source` names it in errors."""
    if window_ms <= 0:
        raise RuleConfigError(f"{source}: the base window must be positive, got {window_ms} ms")
    if len(text.encode()) > MAX_FILE_BYTES:
        raise RuleConfigError(f"{source}: larger than the limit of {MAX_FILE_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleConfigError(f"{source}: invalid TOML: {exc}") from None
    for key in doc:
        if key != "rule":
            msg = f"{source}: unknown top-level key {_show(key)} (rules are [[rule]])"
            raise RuleConfigError(msg)
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RuleConfigError(f'{source}: "rule" must be an array of tables ([[rule]])')
    if len(tables) > MAX_RULES:
        raise RuleConfigError(f"{source}: {len(tables)} rules, the limit is {MAX_RULES}")
    rules: list[Rule] = []
    first_use: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        rule = _Fields(table, source, index, window_ms).rule()
        if rule.name in first_use:
            msg = f'{source}: rule {index} ("{rule.name}"): name is already used by rule '
            raise RuleConfigError(msg + str(first_use[rule.name]))
        first_use[rule.name] = index
        rules.append(rule)
    return tuple(rules)


_COMMON = (
    "name",
    "kind",
    "campaign",
    "window_seconds",
    "slide_seconds",
    "severity",
    "resolve_after",
    "cooldown_seconds",
)
_KIND_KEYS: Mapping[str, tuple[str, ...]] = {
    "threshold": ("event_type", "metric", "op", "threshold"),
    "ratio": ("numerator", "denominator", "op", "threshold", "min_denominator"),
    "anomaly": ("event_type", "metric", "k", "alpha", "warmup", "min_stddev"),
}
_MISSING = object()


class _Common(TypedDict):
    name: str
    campaign: str
    window_ms: int
    slide_ms: int
    severity: Severity
    resolve_after: int
    cooldown_ms: int


E = TypeVar("E", bound=StrEnum)


def _show(value: object) -> str:
    """A value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    return f"<{type(value).__name__}>"


def _seconds(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else str(ms / 1000)


class _Fields:
    """Typed access to one `[[rule]]` table, with errors that name the rule and field."""

    def __init__(self, table: dict[str, Any], source: str, index: int, window_ms: int) -> None:
        self.table = table
        self.where = f"{source}: rule {index}"
        self.window_ms = window_ms

    def error(self, message: str) -> RuleConfigError:
        return RuleConfigError(f"{self.where}: {message}")

    def bad(self, key: str, problem: str) -> RuleConfigError:
        return self.error(f"{key}={_show(self.table[key])} {problem}")

    def get(self, key: str, default: object) -> object:
        value = self.table.get(key, default)
        if value is _MISSING:
            raise self.error(f"{key} is required")
        return value

    def text(self, key: str, max_chars: int, *, wildcard: bool = True) -> str:
        value = self.get(key, _MISSING)
        if not isinstance(value, str):
            raise self.bad(key, "must be a string")
        if not value or value.isspace() or not value.isprintable():
            raise self.bad(key, "must be non-empty printable text")
        if len(value) > max_chars:
            raise self.bad(key, f"is longer than {max_chars} characters")
        if value == WILDCARD and not wildcard:
            raise self.bad(key, "must be an exact event type")
        return value

    def integer(self, key: str, default: object, low: int, high: int) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.bad(key, "must be an integer")
        if not low <= value <= high:
            raise self.bad(key, f"must be between {low} and {high}")
        return value

    def number(self, key: str, default: object = _MISSING) -> float:
        value = self.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.bad(key, "must be a number")
        if not math.isfinite(value):
            raise self.bad(key, "must be a finite number")
        return float(value)

    def choice(self, key: str, enum: type[E], default: object = _MISSING) -> E:
        value = self.get(key, default)
        allowed = [member.value for member in enum]
        if value not in allowed:
            raise self.bad(key, f"is not one of {', '.join(allowed)}")
        return enum(value)

    def duration_ms(self, key: str, default_ms: int) -> int:
        """A window length in seconds: a positive multiple of the base window."""
        if key not in self.table:
            return default_ms
        ms = self.integer(key, _MISSING, 1, MAX_WINDOW_SECONDS) * 1000
        if ms % self.window_ms:
            raise self.bad(key, f"is not a multiple of the {_seconds(self.window_ms)} s window")
        return ms

    def rule(self) -> Rule:
        name = self.get("name", _MISSING)
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise self.bad("name", f"must match {NAME_PATTERN.pattern}")
        self.where += f' ("{name}")'
        kind = self.get("kind", _MISSING)
        if kind not in _KIND_KEYS:
            raise self.bad("kind", f"is not one of {', '.join(_KIND_KEYS)}")
        allowed = (*_COMMON, *_KIND_KEYS[str(kind)])
        for key in self.table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did_you_mean = f' (did you mean "{hint[0]}"?)' if hint else ""
                article = "an" if kind == "anomaly" else "a"
                raise self.error(
                    f"unknown key {_show(key)} for {article} {kind} rule{did_you_mean}"
                )
        window_ms = self.duration_ms("window_seconds", self.window_ms)
        slide_ms = self.duration_ms("slide_seconds", self.window_ms)
        if window_ms % slide_ms:
            msg = f"does not divide window_seconds={_seconds(window_ms)}"
            raise self.bad("slide_seconds", msg)
        common: _Common = {
            "name": name,
            "campaign": self.text("campaign", MAX_ID_CHARS),
            "window_ms": window_ms,
            "slide_ms": slide_ms,
            "severity": self.choice("severity", Severity, Severity.WARNING.value),
            "resolve_after": self.integer("resolve_after", 1, 1, MAX_RESOLVE_AFTER),
            "cooldown_ms": self.integer("cooldown_seconds", 0, 0, MAX_COOLDOWN_SECONDS) * 1000,
        }
        if kind == "threshold":
            return ThresholdRule(
                **common,
                event_type=self.text("event_type", MAX_EVENT_TYPE_CHARS),
                metric=self.choice("metric", Metric),
                op=self.choice("op", Op),
                threshold=self.number("threshold"),
            )
        if kind == "ratio":
            return self.ratio(common)
        return self.anomaly(common)

    def ratio(self, common: _Common) -> RatioRule:
        numerator = self.text("numerator", MAX_EVENT_TYPE_CHARS, wildcard=False)
        denominator = self.text("denominator", MAX_EVENT_TYPE_CHARS, wildcard=False)
        if numerator == denominator:
            raise self.bad("denominator", "is the numerator too")
        return RatioRule(
            **common,
            numerator=numerator,
            denominator=denominator,
            op=self.choice("op", Op),
            threshold=self.number("threshold"),
            min_denominator=self.integer("min_denominator", 1, 1, MAX_MIN_DENOMINATOR),
        )

    def anomaly(self, common: _Common) -> AnomalyRule:
        k = self.number("k", 3.0)
        if k <= 0:
            raise self.bad("k", "must be above 0")
        alpha = self.number("alpha", 0.3)
        if not 0 < alpha <= 1:
            raise self.bad("alpha", "must be in (0, 1]")
        min_stddev = self.number("min_stddev", 1.0)
        if min_stddev < 0:
            raise self.bad("min_stddev", "must not be negative")
        return AnomalyRule(
            **common,
            event_type=self.text("event_type", MAX_EVENT_TYPE_CHARS),
            metric=self.choice("metric", Metric),
            k=k,
            alpha=alpha,
            warmup=self.integer("warmup", 10, 1, MAX_WARMUP),
            min_stddev=min_stddev,
        )
