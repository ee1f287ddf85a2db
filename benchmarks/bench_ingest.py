"""Ingest edge throughput: events/s acknowledged by Kafka, per RPC shape.

Starts `pulse serve` as its own process against the local stack and streams pre-built
messages from this process, so the figures measure the edge (parse, validate, produce,
wait for acknowledgements), not event generation.
"""

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from tests.ports import free_port

from .common import (
    fresh_topics,
    pulse_process,
    stack,
    synthetic_events,
    with_new_ids,
)


async def _single(stub: "pb_grpc.AnalyticsServiceAsyncStub", events: list[pb.RawEvent]) -> int:
    async def stream() -> AsyncIterator[pb.RawEvent]:
        for event in events:
            yield event

    reply: pb.IngestResponse = await stub.IngestEvents(stream())
    return reply.accepted


async def _batched(stub: "pb_grpc.AnalyticsServiceAsyncStub", batches: list[pb.EventBatch]) -> int:
    async def stream() -> AsyncIterator[pb.EventBatch]:
        for batch in batches:
            yield batch

    reply: pb.IngestResponse = await stub.IngestEventBatches(stream())
    return reply.accepted


async def measure(target: str, events: list[pb.RawEvent], batch_size: int) -> float:
    warm_up, events = with_new_ids(events[:1000]), with_new_ids(events)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        if batch_size == 1:
            await _single(stub, warm_up[:500])
            started = time.perf_counter()
            accepted = await _single(stub, events)
        else:
            batches = [
                pb.EventBatch(events=events[i : i + batch_size])
                for i in range(0, len(events), batch_size)
            ]
            await _batched(stub, [pb.EventBatch(events=warm_up[:batch_size])])
            started = time.perf_counter()
            accepted = await _batched(stub, batches)
        elapsed = time.perf_counter() - started
    assert accepted == len(events), f"accepted {accepted} of {len(events)}"
    return accepted / elapsed


def wait_serving(target: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"pulse serve exited with {proc.returncode}")
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=0.2)
                return
        except grpc.FutureTimeoutError:
            time.sleep(0.2)
    raise SystemExit("pulse serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=100_000)
    args = parser.parse_args()
    bootstrap, _dsn = stack()
    topics = fresh_topics(bootstrap)
    port = free_port()
    env = {
        "PULSE_TOPIC_RAW": topics["raw"],
        "PULSE_GRPC_PORT": str(port),
        "PULSE_METRICS_PORT": "0",
        "PULSE_HTTP_PORT": "0",
    }
    target = f"127.0.0.1:{port}"
    events = synthetic_events(args.events)
    shapes = [
        (1, min(args.events, 20_000)),
        (10, args.events),
        (100, args.events),
        (500, args.events),
    ]
    with tempfile.TemporaryDirectory() as tmp, pulse_process("serve", env, Path(tmp)) as proc:
        wait_serving(target, proc)
        print(f"ingest edge, {args.events:,} events per shape, ~{events[0].ByteSize()} bytes/event")
        print(f"{'RPC shape':<34}{'events/s':>12}{'vs single':>11}")
        base = None
        for batch_size, count in shapes:
            rate = asyncio.run(measure(target, events[:count], batch_size))
            base = base or rate
            label = (
                "IngestEvents, 1 event/message"
                if batch_size == 1
                else (f"IngestEventBatches, {batch_size}/message")
            )
            print(f"{label:<34}{rate:>12,.0f}{rate / base:>10.1f}x")


if __name__ == "__main__":
    main()
