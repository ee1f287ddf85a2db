"""Admission at the edge: per-token rate limits and a global bound on in-flight work.

Pure: the clock is passed in. A refusal carries how long the client should wait, which
the edge sends as a retry hint (gRPC trailing metadata `retry-after-ms`, HTTP
`Retry-After`).
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why events were not admitted, and when to try again."""

    reason: str  # "rate_limited" or "overloaded": a metric label
    message: str
    retry_after_s: float

    @property
    def retry_after_ms(self) -> int:
        return max(1, math.ceil(self.retry_after_s * 1000))


class TokenBucket:
    """Events per second with a burst. A message is admitted while the bucket is not
    empty and may take it below zero (a batch larger than the burst still passes when
    the bucket is full); the debt is paid back before the next one is admitted."""

    __slots__ = ("_burst", "_level", "_rate", "_stamp")

    def __init__(self, rate: float, burst: float, now_s: float) -> None:
        self._rate = rate
        self._burst = burst
        self._level = burst
        self._stamp = now_s

    def take(self, events: int, now_s: float) -> float:
        """Admit `events` (return 0.0) or return the seconds until the bucket refills."""
        level = min(self._burst, self._level + (now_s - self._stamp) * self._rate)
        self._stamp = now_s
        if level <= 0:
            self._level = level
            return (-level + 1) / self._rate
        self._level = level - events
        return 0.0


class RateLimits:
    """One bucket per token (by name), created on first use, refreshed when the token's
    limit changes in a reloaded tokens file."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float, TokenBucket]] = {}

    def take(
        self, name: str, rate: float, burst: float, events: int, now_s: float
    ) -> Refusal | None:
        if rate <= 0:
            return None
        known = self._buckets.get(name)
        if known is None or known[:2] != (rate, burst):
            known = (rate, burst, TokenBucket(rate, burst, now_s))
            self._buckets[name] = known
        wait = known[2].take(events, now_s)
        if wait == 0.0:
            return None
        return Refusal(
            "rate_limited",
            f"rate limit of {rate:g} events/s (burst {burst:g}) exceeded; retry in {wait:.2f} s",
            wait,
        )


class InFlight:
    """A global bound on events and bytes accepted but not yet acknowledged by Kafka.

    Under overload the edge refuses new work instead of queueing it in memory. One
    message is always admitted when nothing is in flight, so a single message at the
    size limits cannot be refused forever.
    """

    __slots__ = ("bytes", "events", "max_bytes", "max_events", "retry_after_s")

    def __init__(self, max_events: int, max_bytes: int, retry_after_s: float = 1.0) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        self.events = 0
        self.bytes = 0

    def admit(self, events: int, size: int) -> Refusal | None:
        if self.events and (
            self.events + events > self.max_events or self.bytes + size > self.max_bytes
        ):
            return Refusal(
                "overloaded",
                f"the edge is at its in-flight limit ({self.events} events, {self.bytes} "
                f"bytes awaiting Kafka); retry in {self.retry_after_s:g} s",
                self.retry_after_s,
            )
        self.events += events
        self.bytes += size
        return None

    def release(self, events: int, size: int) -> None:
        self.events -= events
        self.bytes -= size
