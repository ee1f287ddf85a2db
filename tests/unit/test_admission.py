"""Per-token rate limits and the global in-flight bound (pure, with a fake clock)."""

from pulse.admission import InFlight, RateLimits, TokenBucket


def test_a_bucket_admits_its_burst_then_the_rate():
    bucket = TokenBucket(rate=100, burst=200, now_s=0.0)
    assert bucket.take(150, 0.0) == 0.0
    assert bucket.take(150, 0.0) == 0.0  # 50 left: admitted, 100 in debt
    wait = bucket.take(1, 0.0)
    assert wait == (100 + 1) / 100  # until the debt is paid and one event is back
    assert bucket.take(1, 0.5) > 0  # still 50 in debt
    assert bucket.take(100, 1.01) == 0.0
    admitted = 0
    t = 2.0
    while t < 12.0:  # ten seconds at 1 event per ms: about rate x 10 + burst get through
        if bucket.take(1, t) == 0.0:
            admitted += 1
        t += 0.001
    assert 1000 <= admitted <= 1000 + 200 + 1


def test_rate_limits_are_per_token_and_follow_a_changed_limit():
    limits = RateLimits()
    assert limits.take("a", 10, 10, 10, 0.0) is None
    refusal = limits.take("a", 10, 10, 1, 0.0)
    assert refusal is not None and refusal.reason == "rate_limited"
    assert refusal.retry_after_ms == 100
    assert "10 events/s" in refusal.message
    assert limits.take("b", 10, 10, 1, 0.0) is None  # another token, another bucket
    assert limits.take("a", 20, 20, 1, 0.0) is None  # a reloaded limit: a fresh bucket
    assert limits.take("c", 0, 0, 10**9, 0.0) is None  # no limit


def test_in_flight_refuses_past_its_bounds_and_always_admits_one_message():
    inflight = InFlight(max_events=100, max_bytes=1000)
    assert inflight.admit(500, 50_000) is None  # nothing in flight: one message always passes
    refusal = inflight.admit(1, 1)
    assert refusal is not None and refusal.reason == "overloaded"
    inflight.release(500, 50_000)
    assert inflight.admit(60, 100) is None
    assert inflight.admit(40, 900) is None
    assert inflight.admit(1, 0) is not None  # events bound
    inflight.release(40, 900)
    assert inflight.admit(40, 901) is not None  # bytes bound
    assert (inflight.events, inflight.bytes) == (60, 100)
