"""Who may call the edge, and how much it takes in: tokens, rate limits, in-flight bound.

Transport-neutral: the gRPC servicer and the HTTP gateway pass the `Authorization`
value and map the `DeniedError`s to their status codes (UNAUTHENTICATED 401,
PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429 with a retry hint). Metrics count
refusals by reason, never by token.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pulse.admission import InFlight, RateLimits, Refusal
from pulse.auth import Caller, bearer
from pulse.errors import PulseError

from . import metrics
from .tokens import TokenFile


class DeniedError(PulseError):
    """A call (or the rest of a stream) the edge refuses."""

    retry_after_ms: int | None = None


class UnauthenticatedError(DeniedError):
    """No bearer token, or one the tokens file does not hold."""


class PermissionDeniedError(DeniedError):
    """A query for a campaign outside the token's read prefixes."""


class RefusedError(DeniedError):
    """Over the token's rate limit or the edge's in-flight bound: retry later."""

    retryable = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.reason = refusal.reason
        self.retry_after_ms = refusal.retry_after_ms


class Guard:
    """The edge's admission decisions; without a tokens file every caller is anonymous
    (`None`) and may write and read every campaign."""

    def __init__(
        self,
        tokens: TokenFile | None,
        inflight: InFlight,
        max_calls: int = 2**31,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._inflight = inflight
        self._max_calls = max_calls
        self._calls = 0
        self._limits = RateLimits()
        self._clock_s = clock_s

    @property
    def authenticates(self) -> bool:
        return self._tokens is not None

    def caller(self, authorization: str | None) -> Caller | None:
        """The token's caller; None when authentication is off. Raises UnauthenticatedError."""
        if self._tokens is None:
            return None
        token = bearer(authorization) if authorization else None
        caller = self._tokens.authenticate(token) if token else None
        if caller is None:
            metrics.REFUSED_CALLS.labels("unauthenticated").inc()
            problem = "invalid bearer token" if token else "missing bearer token"
            raise UnauthenticatedError(f"{problem} (send `authorization: Bearer <token>`)")
        return caller

    @contextmanager
    def call(self) -> Iterator[None]:
        """One call of at most `max_calls` at once; RefusedError past it.

        (grpc.aio's own `maximum_concurrent_rpcs` answers a streaming call it turns away
        with CANCELLED, which tells the client nothing.)"""
        if self._calls >= self._max_calls:
            self._refuse(
                Refusal(
                    "overloaded",
                    f"the edge is handling its limit of {self._max_calls} calls; retry in 1 s",
                    1.0,
                ),
                0,
            )
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1

    def check_read(self, caller: Caller | None, campaign_id: str) -> None:
        if caller is not None and not caller.may_read(campaign_id):
            metrics.REFUSED_CALLS.labels("permission_denied").inc()
            msg = f"token {caller.name!r} may not read campaign {campaign_id[:128]!r}"
            raise PermissionDeniedError(msg)

    def take_rate(self, caller: Caller | None, events: int) -> None:
        """Count `events` against the caller's rate limit; RefusedError when over it."""
        if caller is None or caller.events_per_second <= 0:
            return
        refusal = self._limits.take(
            caller.name, caller.events_per_second, caller.burst_events, events, self._clock_s()
        )
        if refusal is not None:
            self._refuse(refusal, events)

    def admit(self, events: int, size: int) -> None:
        """Hold `events` (`size` bytes) until `release`; RefusedError past the in-flight bound."""
        refusal = self._inflight.admit(events, size)
        if refusal is not None:
            self._refuse(refusal, events)
        metrics.INFLIGHT_EVENTS.inc(events)
        metrics.INFLIGHT_BYTES.inc(size)

    def release(self, events: int, size: int) -> None:
        self._inflight.release(events, size)
        metrics.INFLIGHT_EVENTS.dec(events)
        metrics.INFLIGHT_BYTES.dec(size)

    @staticmethod
    def _refuse(refusal: Refusal, events: int) -> None:
        metrics.REFUSED_CALLS.labels(refusal.reason).inc()
        metrics.REFUSED_EVENTS.labels(refusal.reason).inc(events)
        raise RefusedError(refusal)
