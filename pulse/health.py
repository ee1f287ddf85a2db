"""Liveness and readiness: check results in, JSON body and HTTP status out (no I/O here).

`/healthz` says the process works; `/readyz` says whether its dependencies answer:
ready (200) when every check passed, not ready (503) when any failed.
"""

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

HTTP_OK = 200
HTTP_UNAVAILABLE = 503
HTTP_NOT_FOUND = 404
MAX_REASON_CHARS = 200

CheckStatus = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one dependency check."""

    status: CheckStatus
    latency_ms: float
    reason: str = ""

    @classmethod
    def ok(cls, latency_ms: float) -> "CheckResult":
        return cls("ok", latency_ms)

    @classmethod
    def error(cls, latency_ms: float, reason: str) -> "CheckResult":
        return cls("error", latency_ms, short_reason(reason))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "latency_ms": round(self.latency_ms, 1)}
        if self.status != "ok":
            out["reason"] = self.reason or "failed"
        return out


def short_reason(text: str, secrets: tuple[str, ...] = ()) -> str:
    """The first line of an error message, secrets masked, at most MAX_REASON_CHARS."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > MAX_REASON_CHARS:
        first = first[: MAX_REASON_CHARS - 3] + "..."
    return first


def liveness(uptime_s: float) -> tuple[int, dict[str, Any]]:
    """`/healthz`: answering at all means the process works."""
    return HTTP_OK, {"status": "ok", "uptime_seconds": round(uptime_s, 1)}


def readiness(checks: Mapping[str, CheckResult], uptime_s: float) -> tuple[int, dict[str, Any]]:
    """`/readyz`: 200 and "ready" when every check is ok, else 503 and "not_ready"."""
    ready = all(result.status == "ok" for result in checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "uptime_seconds": round(uptime_s, 1),
        "checks": {name: checks[name].as_json() for name in sorted(checks)},
    }
    return (HTTP_OK if ready else HTTP_UNAVAILABLE), body


def respond(
    path: str, uptime_s: float, run_checks: Callable[[], Mapping[str, CheckResult]]
) -> tuple[int, dict[str, Any]]:
    """Route a request path (query string ignored) to its status and JSON body."""
    route = path.split("?", 1)[0].rstrip("/") or "/"
    if route == "/healthz":
        return liveness(uptime_s)
    if route == "/readyz":
        return readiness(run_checks(), uptime_s)
    return HTTP_NOT_FOUND, {"status": "not_found", "paths": ["/healthz", "/readyz"]}


class CachedChecks:
    """Runs the checks at most once per `max_age_s`; concurrent callers share one run.

    `run` performs every check and returns the results by name; `clock` is monotonic
    seconds. A caller arriving while a run is in progress waits for it.
    """

    def __init__(
        self,
        run: Callable[[], Mapping[str, CheckResult]],
        clock: Callable[[], float],
        max_age_s: float = 1.0,
    ) -> None:
        self._run = run
        self._clock = clock
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._results: Mapping[str, CheckResult] | None = None
        self._at = 0.0

    def __call__(self) -> Mapping[str, CheckResult]:
        with self._lock:
            if self._results is None or self._clock() - self._at >= self._max_age_s:
                self._results = dict(self._run())
                self._at = self._clock()
            return self._results
