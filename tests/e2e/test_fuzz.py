"""100,000 mutated messages on every RPC and gateway route of a real edge: clear answers,
nothing lost.

The generator and sender are `benchmarks.fuzz_edge` (`make fuzz` runs a million); here
a fixed seed, bounded in time, about a third of the messages HTTP requests. Every gRPC
call must end with an allowed status (never UNKNOWN or INTERNAL), every HTTP request
with a status below 500 and no transport error; the edge must still be SERVING and
ready and take a fresh batch over gRPC and a fresh POST afterwards; and the events topic
must hold every acknowledged marker event (sent on either transport) exactly once, byte
for byte, none of a refused request, and exactly as many events as the edge said it
accepted.
"""

import asyncio
import time
from pathlib import Path

import pytest

from benchmarks.fuzz_edge import (
    ALLOWED_GRPC,
    check_log,
    fuzz_routes,
    read_to_end,
    rss_kb,
    still_serving,
)
from benchmarks.fuzz_http import GET_METRICS, HTTP_OTHER, HTTP_ROUTES, POST_JSON, POST_NDJSON
from benchmarks.fuzz_messages import INGEST_EVENT_BATCHES, INGEST_EVENTS, QUERY_METRICS, Plan
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline

MESSAGES = 100_000
SEED = 20_240_611
MAX_MESSAGE_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 20
MAX_BATCH_EVENTS = 1000
MAX_SECONDS = 150  # the fuzzing itself; about 60 s on two busy cores
GRPC_ROUTES = (INGEST_EVENTS, INGEST_EVENT_BATCHES, QUERY_METRICS)


@pytest.mark.timeout(300)
def test_fuzzed_messages_get_clear_answers_and_no_valid_event_is_lost(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    env = {
        "PULSE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "PULSE_HTTP_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "PULSE_MAX_BATCH_EVENTS": str(MAX_BATCH_EVENTS),
    }
    edge = Pipeline(stack, database, topics, tmp_path, env)  # its own free PULSE_HTTP_PORT
    plan = Plan(
        seed=SEED,
        now_ms=int(time.time() * 1000),
        marker_campaign="fuzz-valid",  # the topic is the test's own
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_batch_events=MAX_BATCH_EVENTS,
        max_body_bytes=MAX_BODY_BYTES,
    )
    try:
        edge.start("serve")
        edge.wait_serving()
        pid = edge.procs["serve"].pid
        rss_before = rss_kb(pid)
        report, fuzzer = asyncio.run(
            fuzz_routes(edge.target, edge.http_url, plan, MESSAGES, max_seconds=MAX_SECONDS)
        )
        after = asyncio.run(still_serving(edge.target, edge.http_url, fuzzer, report, 100))
        rss_after = rss_kb(pid)
    finally:
        edge.stop_all()
    print(report.summary())
    print(f"edge RSS {rss_before // 1024} MiB before, {rss_after // 1024} MiB after")

    assert report.mutated >= MESSAGES, report.summary()
    assert report.unexpected == 0, report.examples
    grpc_statuses = {status for route, status in report.statuses if route in GRPC_ROUTES}
    assert grpc_statuses <= ALLOWED_GRPC
    http_codes = {
        int(status.removeprefix("HTTP "))
        for route, status in report.statuses
        if route in HTTP_ROUTES
    }  # a transport error ("HTTP error ...") would fail here
    assert max(http_codes) < 500, http_codes
    # Each RPC was answered both ways, and messages over the size limit were refused.
    for route in GRPC_ROUTES:
        for status in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
            assert report.statuses[route, status] > 0, (route, status)
    # Each POST format was accepted, refused as malformed, too large and of a wrong type.
    for route in (POST_JSON, POST_NDJSON):
        for code in (200, 400, 413, 415):
            assert report.statuses[route, f"HTTP {code}"] > 0, (route, code)
    assert report.statuses[GET_METRICS, "HTTP 200"] > 0
    assert report.statuses[GET_METRICS, "HTTP 400"] > 0
    for code in (200, 404, 405):
        assert report.statuses[HTTP_OTHER, f"HTTP {code}"] > 0, code
    http_messages = sum(report.route_messages[route] for route in HTTP_ROUTES)
    assert http_messages > report.messages // 4
    assert after == ""
    assert report.unknown_calls == 0
    assert len(report.acknowledged) > 10_000
    for route in (POST_JSON, POST_NDJSON):
        assert report.route_markers[route] > 1000, route
    records = read_to_end(stack.kafka_bootstrap, topics.raw, 3)
    assert check_log(records, report, plan.marker_campaign) == []
