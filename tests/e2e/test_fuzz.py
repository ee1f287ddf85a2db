"""100,000 mutated messages on every RPC of a real edge: clear answers, nothing lost.

The generator and sender are `benchmarks.fuzz_edge` (`make fuzz` runs a million); here
a fixed seed, bounded in time. Every call must end with an allowed status (never
UNKNOWN or INTERNAL), the edge must still be SERVING and take a fresh batch afterwards,
and the events topic must hold every acknowledged marker event exactly once, byte for
byte, and exactly as many events as the edge said it accepted.
"""

import asyncio
import time
from pathlib import Path

import pytest

from benchmarks.fuzz_edge import (
    ALLOWED_GRPC,
    check_log,
    fuzz_grpc,
    read_to_end,
    rss_kb,
    still_serving,
)
from benchmarks.fuzz_messages import INGEST_EVENT_BATCHES, INGEST_EVENTS, QUERY_METRICS, Plan
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline

MESSAGES = 100_000
SEED = 20_240_611
MAX_MESSAGE_BYTES = 1 << 20
MAX_BATCH_EVENTS = 1000
MAX_SECONDS = 150  # the fuzzing itself; about 40 s on two busy cores


@pytest.mark.timeout(300)
def test_fuzzed_messages_get_clear_answers_and_no_valid_event_is_lost(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    env = {
        "PULSE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "PULSE_MAX_BATCH_EVENTS": str(MAX_BATCH_EVENTS),
    }
    edge = Pipeline(stack, database, topics, tmp_path, env)
    plan = Plan(
        seed=SEED,
        now_ms=int(time.time() * 1000),
        marker_campaign="fuzz-valid",  # the topic is the test's own
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_batch_events=MAX_BATCH_EVENTS,
    )
    try:
        edge.start("serve")
        edge.wait_serving()
        pid = edge.procs["serve"].pid
        rss_before = rss_kb(pid)
        report, fuzzer = asyncio.run(
            fuzz_grpc(edge.target, plan, MESSAGES, max_seconds=MAX_SECONDS)
        )
        after = asyncio.run(still_serving(edge.target, fuzzer, report, 100))
        rss_after = rss_kb(pid)
    finally:
        edge.stop_all()
    print(report.summary())
    print(f"edge RSS {rss_before // 1024} MiB before, {rss_after // 1024} MiB after")

    assert report.mutated >= MESSAGES, report.summary()
    assert report.unexpected == 0, report.examples
    assert {status for _route, status in report.statuses} <= ALLOWED_GRPC
    # Each RPC was answered both ways, and messages over the size limit were refused.
    for route in (INGEST_EVENTS, INGEST_EVENT_BATCHES, QUERY_METRICS):
        for status in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
            assert report.statuses[route, status] > 0, (route, status)
    assert after == ""
    assert report.unknown_calls == 0
    assert len(report.acknowledged) > 10_000
    records = read_to_end(stack.kafka_bootstrap, topics.raw, 3)
    assert check_log(records, report, plan.marker_campaign) == []
