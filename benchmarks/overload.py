"""Overload soak: ten times the edge's capacity for minutes, its memory sampled each second.

`tests/e2e/test_overload.py` shows the edge refusing 10x for 3 s with memory bounded;
this runs the same open-loop offer for `--seconds` (default 60) and prints, per 10 s,
the edge's resident memory (peak), calls accepted and refused, so a plateau shows as a
plateau. The refused calls are retried after their hint once the offer stops, and the
topic is read back: every event of every call must be there (exactly once for calls
acknowledged at the first try).

    python -m benchmarks.overload --seconds 300
    make soak-overload

The client helpers here (`Messages`, `send`, `rss_mb`) are the test's too.
"""

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from tests.kafka import consume_all
from tests.ports import free_port

from .bench_ingest import wait_serving
from .common import fresh_topics, pulse_process, stack

METHOD = "/analytics.v1.AnalyticsService/IngestEventBatches"
EVENTS_PER_CALL = 1000
# What a client may see of a refusal: the edge answers RESOURCE_EXHAUSTED (its metrics
# count every one so); when that status overtakes the client's last write, grpcio's
# client reports the stream as CANCELLED, now and then as INTERNAL; a stream opened past
# the edge's streams per connection before the client learnt the limit is refused by
# HTTP/2 (UNAVAILABLE; the edge never saw it).
RETRIED = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
)
PARTITIONS = 4
# In the soak, calls the client queued for longer than their deadline (waiting for a
# stream of its connection) end DEADLINE_EXCEEDED too.
NOT_TAKEN = (*RETRIED, grpc.StatusCode.DEADLINE_EXCEEDED)
# The edge's bounds in both the test and the soak.
EDGE_ENV = {
    "PULSE_MAX_INFLIGHT_EVENTS": "10000",
    "PULSE_MAX_INFLIGHT_BYTES": str(4 * 1024 * 1024),
    "PULSE_MAX_CONCURRENT_CALLS": "64",
    "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0",
    # The edge's memory of acknowledged ids grows by design (20 bytes an id up to
    # PULSE_EDGE_DEDUP_IDS); off, what remains is what overload could pile up.
    "PULSE_EDGE_DEDUP_IDS": "0",
}


class Messages:
    """Serialized one-message streams of EVENTS_PER_CALL events, every event id unique:
    one template batch whose ids carry a placeholder, filled in per message (building
    millions of events one by one would take longer than the run)."""

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

    @staticmethod
    def ids(number: int) -> list[str]:
        return [f"{number:07d}-{i:04d}" for i in range(EVENTS_PER_CALL)]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


DETAILS: list[str] = []  # the last refusals' details, for an assertion's message


async def send(call: Any, message: bytes) -> tuple[grpc.StatusCode, int, int]:
    """(status, accepted, retry hint in ms) of one call with one message.

    Written with the call's own `write`/`done_writing`: grpcio's request-iterator
    helper turns a write that the server's status overtook into a local CANCELLED,
    hiding the status the edge sent."""
    stream = call(timeout=60)
    # Once the call has ended, these raise (grpcio's own types among them, such as
    # ExecuteBatchError): its status, awaited below, says why.
    with contextlib.suppress(Exception):
        await stream.write(message)
        await stream.done_writing()
    try:
        reply = await stream
        return grpc.StatusCode.OK, pb.IngestResponse.FromString(reply).accepted, 0
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        del DETAILS[:-3]
        DETAILS.append(f"{exc.code()} {exc.details()} {exc.debug_error_string()}")
        return exc.code(), 0, int(trailers.get("retry-after-ms", 0) or 100)


def stream_call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)


async def capacity(call: Any, messages: Messages, calls: int = 40) -> float:
    """Events/s with eight calls at a time, the next eight sent when they return
    (messages 0..calls-1)."""
    started = time.perf_counter()
    for i in range(0, calls, 8):
        outcomes = await asyncio.gather(*(send(call, messages[n]) for n in range(i, i + 8)))
        if any(code != grpc.StatusCode.OK for code, _, _ in outcomes):
            raise RuntimeError(f"a warm-up call failed: {DETAILS[-1:]}")
    return calls * EVENTS_PER_CALL / (time.perf_counter() - started)


async def retry_until_accepted(
    call: Any, messages: Messages, refused: list[tuple[int, int]], at_once: int = 16
) -> int:
    """Send refused calls (number, hint) again after their hints, `at_once` at a time,
    until each is accepted; returns the rounds it took."""
    rounds = 0
    while refused:
        rounds += 1
        if rounds > 100:
            raise RuntimeError(f"{len(refused)} calls still refused after 100 rounds")
        await asyncio.sleep(max(hint for _, hint in refused) / 1000)
        again = []
        for i in range(0, len(refused), at_once):
            group = [number for number, _hint in refused[i : i + at_once]]
            outcomes = await asyncio.gather(*(send(call, messages[n]) for n in group))
            for number, (code, _, hint) in zip(group, outcomes, strict=True):
                if code != grpc.StatusCode.OK:
                    if code not in RETRIED:
                        raise RuntimeError(f"unexpected {code}: {DETAILS[-1:]}")
                    again.append((number, hint))
        refused = again
    return rounds


async def soak(target: str, pid: int, seconds: float, factor: float) -> dict[str, Any]:
    messages = Messages()
    async with grpc.aio.insecure_channel(target) as channel:
        call = stream_call(channel)
        rate = await capacity(call, messages)
        baseline = rss_mb(pid)
        print(f"closed-loop capacity {rate:,.0f} events/s; edge RSS {baseline:.0f} MB", flush=True)
        interval = EVENTS_PER_CALL / (rate * factor)
        first = launched = 40
        pending: dict[int, asyncio.Task[tuple[grpc.StatusCode, int, int]]] = {}
        codes: Counter[str] = Counter()
        refused: list[tuple[int, int]] = []
        peaks: list[float] = []
        t0 = time.perf_counter()
        next_sample = t0 + 1
        period: Counter[str] = Counter()
        period_peak = 0.0
        samples = 0
        while time.perf_counter() - t0 < seconds:
            pending[launched] = asyncio.ensure_future(send(call, messages[launched]))
            launched += 1
            now = time.perf_counter()
            if now >= next_sample:
                period_peak = max(period_peak, rss_mb(pid))
                next_sample += 1
                samples += 1
                for number in [n for n, task in pending.items() if task.done()]:
                    code, _accepted, hint = pending.pop(number).result()
                    codes[code.name] += 1
                    period[code.name] += 1
                    if code != grpc.StatusCode.OK:
                        if code not in NOT_TAKEN:
                            raise RuntimeError(f"unexpected {code}: {DETAILS[-1:]}")
                        refused.append((number, hint))
                if samples % 10 == 0:
                    peaks.append(period_peak)
                    print(
                        f"  {now - t0:5.0f} s: RSS peak {period_peak:.0f} MB, "
                        f"calls in the last 10 s {dict(period)}, open {len(pending)}",
                        flush=True,
                    )
                    period.clear()
                    period_peak = 0.0
            await asyncio.sleep(max(0.0, t0 + (launched - first) * interval - time.perf_counter()))
        offered = (launched - first) * EVENTS_PER_CALL / (time.perf_counter() - t0)
        for number, task in pending.items():
            code, _accepted, hint = await task
            codes[code.name] += 1
            if code != grpc.StatusCode.OK:
                if code not in NOT_TAKEN:
                    raise RuntimeError(f"unexpected {code}: {DETAILS[-1:]}")
                refused.append((number, hint))
    return {
        "capacity": rate,
        "offered": offered,
        "baseline": baseline,
        "peaks": peaks,
        "codes": dict(codes),
        "launched": launched,
        "refused": {number for number, _ in refused},
    }


def check_topic(
    bootstrap: str, topic: str, partitions: int, launched: int, refused: set[int]
) -> int:
    """Every event of every acknowledged call in the topic exactly once; a refused call's
    events there at most once (grpcio may report as CANCELLED a call the edge took).
    Returns the events read."""
    counts: Counter[str] = Counter()
    for _p, _o, key, value, _h in consume_all(
        bootstrap, topic, partitions, launched * EVENTS_PER_CALL
    ):
        if key:
            counts[pb.RawEvent.FromString(value or b"").event_id] += 1
    for number in range(launched):
        times = {counts[i] for i in Messages.ids(number)}
        if not (times == {1} or (number in refused and times in ({0}, {1}))):
            raise RuntimeError(f"call {number}: its events are in the topic {times} times")
    return sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=10, help="offer, times the capacity")
    args = parser.parse_args()
    bootstrap, _dsn = stack()
    topics = fresh_topics(bootstrap, partitions=PARTITIONS)
    port = free_port()
    env = {
        **EDGE_ENV,
        "PULSE_TOPIC_RAW": topics["raw"],
        "PULSE_GRPC_PORT": str(port),
        "PULSE_HTTP_PORT": "0",
        "PULSE_HEALTH_PORT": "0",
        "PULSE_METRICS_PORT": "0",
    }
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp, pulse_process("serve", env, Path(tmp)) as proc:
        wait_serving(target, proc)
        figures = asyncio.run(soak(target, proc.pid, args.seconds, args.factor))
    read = check_topic(
        bootstrap, topics["raw"], PARTITIONS, figures["launched"], figures["refused"]
    )
    peaks, offered = figures["peaks"], figures["offered"]
    print(
        f"offered {offered:,.0f} events/s ({offered / figures['capacity']:.1f}x"
        f" the capacity) for {args.seconds:g} s: {figures['codes']}; {read:,} events in the"
        f" topic: every acknowledged call's once.\nedge RSS {figures['baseline']:.0f} MB"
        " before, peak per 10 s:"
        f" {', '.join(f'{p:.0f}' for p in peaks)} MB; first half max"
        f" {max(peaks[: len(peaks) // 2] or [0]):.0f}, second half max"
        f" {max(peaks[len(peaks) // 2 :] or [0]):.0f}"
    )


if __name__ == "__main__":
    main()
