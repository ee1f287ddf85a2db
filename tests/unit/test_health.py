"""Liveness and readiness bodies, HTTP statuses and the check cache (pulse/health.py)."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

import runtime.health
from pulse.health import (
    MAX_REASON_CHARS,
    CachedChecks,
    CheckResult,
    liveness,
    readiness,
    respond,
    short_reason,
)
from runtime.health import HealthServer, postgres_check


def test_liveness_is_200_with_uptime() -> None:
    assert liveness(12.345) == (200, {"status": "ok", "uptime_seconds": 12.3})


def test_ready_when_every_check_is_ok() -> None:
    status, body = readiness(
        {"postgres": CheckResult.ok(1.23), "kafka": CheckResult.ok(3.14)}, 12.34
    )
    assert status == 200
    assert body == {
        "status": "ready",
        "uptime_seconds": 12.3,
        "checks": {
            "kafka": {"status": "ok", "latency_ms": 3.1},
            "postgres": {"status": "ok", "latency_ms": 1.2},
        },
    }
    assert list(body["checks"]) == ["kafka", "postgres"]


def test_one_failed_check_makes_it_503_with_the_reason() -> None:
    status, body = readiness(
        {
            "kafka": CheckResult.ok(2.0),
            "postgres": CheckResult.error(2000.04, "connection refused\nmore detail"),
        },
        1.0,
    )
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["postgres"] == {
        "status": "error",
        "latency_ms": 2000.0,
        "reason": "connection refused",
    }
    assert body["checks"]["kafka"]["status"] == "ok"


def test_no_checks_is_ready() -> None:
    assert readiness({}, 0.0)[0] == 200


def test_reasons_are_short_and_mask_secrets() -> None:
    assert short_reason("  \n password s3cret rejected \n trace", ("s3cret",)) == (
        "password *** rejected"
    )
    long = short_reason("x" * 1000)
    assert len(long) == MAX_REASON_CHARS
    assert long.endswith("...")
    assert CheckResult.error(1.0, "").as_json()["reason"] == "failed"


def test_routes() -> None:
    calls = []

    def run() -> dict[str, CheckResult]:
        calls.append(1)
        return {"kafka": CheckResult.ok(1.0)}

    assert respond("/healthz", 5.0, run)[0] == 200
    assert calls == []  # liveness never runs the checks
    assert respond("/readyz?verbose=1", 5.0, run)[0] == 200
    assert respond("/readyz/", 5.0, run)[0] == 200
    assert respond("/metrics", 5.0, run)[0] == 404
    assert len(calls) == 2


def test_cache_runs_the_checks_at_most_once_per_max_age() -> None:
    now = [100.0]
    runs = []

    def run() -> dict[str, CheckResult]:
        runs.append(now[0])
        return {"kafka": CheckResult.ok(float(len(runs)))}

    cached = CachedChecks(run, lambda: now[0], max_age_s=1.0)
    first = cached()
    now[0] += 0.5
    assert cached() is first
    now[0] += 0.5
    assert cached()["kafka"].latency_ms == 2.0
    assert runs == [100.0, 101.0]


def test_concurrent_callers_share_one_run() -> None:
    started = threading.Event()
    release = threading.Event()
    runs = []

    def run() -> dict[str, CheckResult]:
        runs.append(1)
        started.set()
        release.wait(5)
        return {"kafka": CheckResult.ok(1.0)}

    cached = CachedChecks(run, lambda: 0.0)
    threads = [threading.Thread(target=cached) for _ in range(5)]
    threads[0].start()
    started.wait(5)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(5)
    assert runs == [1]


def test_postgres_check_error_never_shows_the_password() -> None:
    # Nothing listens on port 1: the check fails fast with a reason.
    result = postgres_check("postgresql://pulse:t0p-s3cret@127.0.0.1:1/pulse", timeout_s=2)()
    assert result.status == "error"
    assert result.reason
    assert "t0p-s3cret" not in result.reason


def test_server_answers_both_paths_and_runs_checks_concurrently() -> None:
    barrier = threading.Barrier(2, timeout=2)

    def slow_ok() -> CheckResult:
        barrier.wait()  # both checks must be running at once to get past this
        return CheckResult.ok(1.0)

    def broken() -> CheckResult:
        barrier.wait()
        raise RuntimeError("bug")

    server = HealthServer("127.0.0.1", 0, {"kafka": slow_ok, "postgres": broken}).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/json"
            assert json.loads(reply.read())["status"] == "ok"
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            body = json.loads(exc.read())
        assert body["checks"]["kafka"]["status"] == "ok"
        assert body["checks"]["postgres"]["status"] == "error"
        assert "bug" in body["checks"]["postgres"]["reason"]
    finally:
        server.close()


def test_a_client_that_sends_nothing_is_dropped_after_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime.health, "REQUEST_TIMEOUT_S", 0.3)
    server = HealthServer("127.0.0.1", 0, {}).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
            started = time.monotonic()
            assert idle.recv(1024) == b""  # closed by the server, not by our 5 s timeout
            assert time.monotonic() - started < 3
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200  # and it still serves
    finally:
        server.close()
