"""The HTTP gateway's throughput next to gRPC's, per request size: events/s acknowledged.

Starts `pulse serve` (gRPC and the gateway in one process) against the local stack and
sends the same events both ways, one request (one `IngestEventBatches` call with one
batch, or one `POST /v1/events`) carrying 1 or 500 events, from `--concurrency`
connections at once. The HTTP client is a minimal keep-alive HTTP/1.1 client on raw
asyncio streams with the request bytes built beforehand, so the figures measure the
edge (parse, validate, produce, wait for Kafka), not the client.
"""

import argparse
import asyncio
import ssl
import tempfile
import time
from pathlib import Path

import grpc
import orjson

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from tests.ports import free_port

from .bench_ingest import wait_serving
from .common import fresh_topics, pulse_process, stack, synthetic_events, with_new_ids


def _json(event: pb.RawEvent) -> dict[str, object]:
    return {
        "campaign_id": event.campaign_id,
        "event_type": event.event_type,
        "timestamp": event.timestamp,
        "dimensions": dict(event.dimensions),
        "event_id": event.event_id,
        "value": event.value,
    }


def _requests(port: int, events: list[pb.RawEvent], size: int, headers: str = "") -> list[bytes]:
    """Whole HTTP/1.1 requests, `size` events each, as JSON arrays (`headers`: extra
    header lines, each ending in CRLF)."""
    out = []
    for i in range(0, len(events), size):
        body = orjson.dumps([_json(e) for e in events[i : i + size]])
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        )
        out.append(head.encode() + body)
    return out


async def _http_worker(port: int, queue: list[bytes], tls: ssl.SSLContext | None = None) -> int:
    """Sends requests from `queue` one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    accepted = 0
    try:
        while queue:
            writer.write(queue.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            if status != b"200":
                raise SystemExit(f"HTTP {status.decode()}: {body[:300]!r}")
            accepted += orjson.loads(body)["accepted"]
    finally:
        writer.close()
    return accepted


async def http_rate(
    port: int,
    events: list[pb.RawEvent],
    size: int,
    concurrency: int,
    *,
    headers: str = "",
    tls: ssl.SSLContext | None = None,
) -> float:
    """Events/s of `POST /v1/events` from `concurrency` keep-alive connections (with
    `tls`, over TLS: one handshake per connection)."""
    warm = _requests(port, with_new_ids(events[: size * concurrency]), size, headers)
    await asyncio.gather(*(_http_worker(port, warm, tls) for _ in range(concurrency)))
    queue = _requests(port, with_new_ids(events), size, headers)
    started = time.perf_counter()
    counts = await asyncio.gather(*(_http_worker(port, queue, tls) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    assert sum(counts) == len(events), f"accepted {sum(counts)} of {len(events)}"
    return len(events) / elapsed


async def _grpc_worker(
    stub: "pb_grpc.AnalyticsServiceAsyncStub", queue: list[pb.EventBatch]
) -> int:
    accepted = 0
    while queue:
        reply: pb.IngestResponse = await stub.IngestEventBatches(iter([queue.pop()]))
        accepted += reply.accepted
    return accepted


async def grpc_rate(target: str, events: list[pb.RawEvent], size: int, concurrency: int) -> float:
    def batches(chosen: list[pb.RawEvent]) -> list[pb.EventBatch]:
        return [pb.EventBatch(events=chosen[i : i + size]) for i in range(0, len(chosen), size)]

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        warm = batches(with_new_ids(events[: size * concurrency]))
        await asyncio.gather(*(_grpc_worker(stub, warm) for _ in range(concurrency)))
        queue = batches(with_new_ids(events))
        started = time.perf_counter()
        counts = await asyncio.gather(*(_grpc_worker(stub, queue) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    assert sum(counts) == len(events), f"accepted {sum(counts)} of {len(events)}"
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=10_000, help="events sent 1 per request")
    parser.add_argument("--concurrency", type=int, default=8, help="connections (HTTP) or calls")
    args = parser.parse_args()
    bootstrap, _dsn = stack()
    topics = fresh_topics(bootstrap)
    grpc_port, http_port = free_port(), free_port()
    env = {
        "PULSE_TOPIC_RAW": topics["raw"],
        "PULSE_GRPC_PORT": str(grpc_port),
        "PULSE_HTTP_PORT": str(http_port),
        "PULSE_HEALTH_PORT": "0",
        "PULSE_METRICS_PORT": "0",
    }
    target = f"127.0.0.1:{grpc_port}"
    events = synthetic_events(args.events)
    shapes = [(1, min(args.singles, args.events)), (500, args.events)]
    with tempfile.TemporaryDirectory() as tmp, pulse_process("serve", env, Path(tmp)) as proc:
        wait_serving(target, proc)
        print(
            f"HTTP gateway against gRPC, {args.concurrency} concurrent requests, "
            f"~{events[0].ByteSize()} bytes/event (protobuf)"
        )
        print(f"{'events/request':<16}{'gRPC events/s':>15}{'HTTP events/s':>15}{'HTTP/gRPC':>11}")
        for size, count in shapes:
            chosen = events[:count]
            via_grpc = asyncio.run(grpc_rate(target, chosen, size, args.concurrency))
            via_http = asyncio.run(http_rate(http_port, chosen, size, args.concurrency))
            print(f"{size:<16}{via_grpc:>15,.0f}{via_http:>15,.0f}{via_http / via_grpc:>10.2f}x")


if __name__ == "__main__":
    main()
