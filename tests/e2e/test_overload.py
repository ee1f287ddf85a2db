"""Ten times the edge's capacity: it refuses what it cannot hold, and loses nothing.

The edge's in-flight bound (`PULSE_MAX_INFLIGHT_EVENTS`/`_BYTES`) and call limit
(`PULSE_MAX_CONCURRENT_CALLS`) turn overload into RESOURCE_EXHAUSTED with a retry hint
instead of memory. The test measures the edge's capacity with a closed loop, then
offers ten times that rate in an open loop (calls launched on a clock, not when the
previous one returns), samples the edge's resident memory, retries every refused call
after its hint, and reads the topic back: every event exactly once.
"""

import asyncio
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.kafka import consume_all

METHOD = "/analytics.v1.AnalyticsService/IngestEventBatches"
EVENTS_PER_CALL = 1000
MAX_INFLIGHT_EVENTS = 10_000
MAX_CALLS = 64
OVERLOAD = 10
OVERLOAD_S = 3.0
# What the client may see of a refusal: the edge's own metrics (checked below) count
# every one as RESOURCE_EXHAUSTED; when that status overtakes the client's last write,
# grpcio's client reports the stream as CANCELLED, now and then as INTERNAL.
RETRIED = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
)


@pytest.fixture
def edge(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Pipeline]:
    env = {
        "PULSE_MAX_INFLIGHT_EVENTS": str(MAX_INFLIGHT_EVENTS),
        "PULSE_MAX_INFLIGHT_BYTES": str(4 * 1024 * 1024),
        "PULSE_MAX_CONCURRENT_CALLS": str(MAX_CALLS),
        "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0",
        # The edge's memory of acknowledged ids grows by design (20 bytes an id up to
        # PULSE_EDGE_DEDUP_IDS); off, what remains is what overload could pile up.
        "PULSE_EDGE_DEDUP_IDS": "0",
    }
    started = Pipeline(stack, database, topics, tmp_path, env)
    try:
        started.start("serve")
        started.wait_serving()
        yield started
    finally:
        started.stop_all()


class Messages:
    """Serialized one-message streams of EVENTS_PER_CALL events, every event id unique:
    one template batch whose ids carry a placeholder, filled in per message (building
    millions of events one by one would take longer than the test)."""

    PLACEHOLDER = b"#######"

    def __init__(self) -> None:
        now = int(time.time() * 1000)
        batch = pb.EventBatch()
        for i in range(EVENTS_PER_CALL):
            batch.events.add(
                campaign_id=f"c{i % 50}",
                event_type="impression",
                timestamp=now,
                event_id=f"{self.PLACEHOLDER.decode()}-{i:04d}",
                dimensions={"user_id": f"u{i % 997}"},
            )
        self._template = batch.SerializeToString()

    def __getitem__(self, number: int) -> bytes:
        return self._template.replace(self.PLACEHOLDER, b"%07d" % number)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


DETAILS: list[str] = []


async def send(call: Any, message: bytes) -> tuple[grpc.StatusCode, int, int]:
    """(status, accepted, retry hint in ms) of one call with one message.

    Written with the call's own `write`/`done_writing`: grpcio's request-iterator
    helper turns a write that the server's status overtook into a local CANCELLED,
    hiding the status the edge sent."""
    stream = call(timeout=60)
    try:
        await stream.write(message)
        await stream.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call ended already: its status says why
    try:
        reply = await stream
        return grpc.StatusCode.OK, pb.IngestResponse.FromString(reply).accepted, 0
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        DETAILS.append(f"{exc.code()} {exc.details()} {exc.debug_error_string()}")
        return exc.code(), 0, int(trailers.get("retry-after-ms", 0) or 100)


def scrape(edge: Pipeline) -> dict[str, float]:
    """The edge's per-call status counters."""
    url = f"http://127.0.0.1:{edge.metrics_ports['serve']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("pulse_ingest_grpc_handled_total{")
    }


def test_ten_times_the_capacity_is_refused_not_buffered_and_nothing_is_lost(
    edge: Pipeline,
) -> None:
    pid = edge.procs["serve"].pid
    messages = Messages()

    async def scenario() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(edge.target) as channel:
            call: Any = channel.stream_unary(
                METHOD, request_serializer=None, response_deserializer=None
            )
            # Capacity: eight calls at a time, the next eight sent when they return.
            warm = [messages[n] for n in range(40)]
            started = time.perf_counter()
            for i in range(0, len(warm), 8):
                outcomes = await asyncio.gather(*(send(call, m) for m in warm[i : i + 8]))
                assert all(code == grpc.StatusCode.OK for code, _, _ in outcomes)
            capacity = len(warm) * EVENTS_PER_CALL / (time.perf_counter() - started)
            baseline = rss_mb(pid)

            # Overload: calls launched on a clock at ten times that rate.
            interval = EVENTS_PER_CALL / (capacity * OVERLOAD)
            pending: dict[int, asyncio.Task[tuple[grpc.StatusCode, int, int]]] = {}
            launched = 40
            t0 = time.perf_counter()
            samples = []
            while time.perf_counter() - t0 < OVERLOAD_S:
                pending[launched] = asyncio.ensure_future(send(call, messages[launched]))
                launched += 1
                if launched % 10 == 0:
                    samples.append(rss_mb(pid))
                await asyncio.sleep(max(0.0, t0 + (launched - 40) * interval - time.perf_counter()))
            offered = (launched - 40) * EVENTS_PER_CALL / (time.perf_counter() - t0)
            codes: Counter[str] = Counter()
            retry = []
            retried = []
            for index, task in pending.items():
                code, accepted, hint = await task
                codes[code.name] += 1
                if code == grpc.StatusCode.OK:
                    assert accepted == EVENTS_PER_CALL
                else:
                    # The edge answers RESOURCE_EXHAUSTED (its metrics below say so for
                    # every refused call); when that status overtakes the client's own
                    # write, grpcio reports the stream as CANCELLED instead.
                    assert code in RETRIED, (code, DETAILS[-3:])
                    retry.append((index, hint))
                    retried.append(index)

            # The refused calls, retried after their hint until accepted.
            rounds = 0
            while retry:
                rounds += 1
                await asyncio.sleep(max(hint for _, hint in retry) / 1000)
                again = []
                for index, _hint in retry:
                    code, _, hint = await send(call, messages[index])
                    if code != grpc.StatusCode.OK:
                        assert code in RETRIED, (code, DETAILS[-3:])
                        again.append((index, hint))
                retry = again
                assert rounds < 100
            half = len(samples) // 2
            first, second = max(samples[:half]), max(samples[half:])
            print(
                f"\ncapacity {capacity:,.0f} events/s; offered {offered:,.0f} "
                f"({offered / capacity:.1f}x) for {OVERLOAD_S:g} s in {launched - 40} calls: "
                f"{dict(codes)}; RSS {baseline:.0f} MB, peak {first:.0f} MB in the first half, "
                f"{second:.0f} MB in the second"
            )
            return {
                "ok": codes["OK"],
                "not_ok": sum(codes.values()) - codes["OK"],
                "capacity": capacity,
                "offered": offered,
                "refused": codes["RESOURCE_EXHAUSTED"],
                "baseline": baseline,
                "first": first,
                "second": second,
                "launched": launched,
                "retried": retried,
            }

    figures = asyncio.run(scenario())
    assert figures["offered"] >= 5 * figures["capacity"], figures  # the client kept up
    assert figures["refused"] > 0, figures
    # Held: the in-flight bound, the calls the edge takes at once (64 calls of 120 KB
    # messages, decoded) and gRPC's buffers of calls it has not yet turned away; measured
    # 66-122 MB over the baseline at 10x.
    assert max(figures["first"], figures["second"]) - figures["baseline"] < 200, figures

    # The edge's own count: every call it handled was OK or RESOURCE_EXHAUSTED (never
    # UNKNOWN or INTERNAL), and it refused at least as many as the client retried bar
    # those grpcio reported as CANCELLED although the edge had answered (see RETRIED).
    handled = scrape(edge)
    method = 'method="analytics.v1.AnalyticsService/IngestEventBatches"'
    assert set(handled) <= {
        f'pulse_ingest_grpc_handled_total{{code="{c}",{method}}}'
        for c in ("OK", "RESOURCE_EXHAUSTED")
    } | {'pulse_ingest_grpc_handled_total{code="OK",method="grpc.health.v1.Health/Check"}'}

    # Nothing acknowledged is lost: every event of every call is in the topic, once for a
    # call acknowledged at the first try; a call retried may be there twice when the edge
    # had in fact taken it (with PULSE_EDGE_DEDUP_IDS off here, the dataflow drops such
    # retries by their ids).
    launched, retried = int(figures["launched"]), set(figures["retried"])
    counts: Counter[str] = Counter()
    for _p, _o, key, value, _h in consume_all(
        edge.bootstrap, edge.topics.raw, 3, launched * EVENTS_PER_CALL
    ):
        if key:
            counts[pb.RawEvent.FromString(value or b"").event_id] += 1
    for n in range(launched):
        ids = [f"{n:07d}-{i:04d}" for i in range(EVENTS_PER_CALL)]
        times = {counts[i] for i in ids}
        assert times == {1} or (n in retried and times == {2}), (n, times)
