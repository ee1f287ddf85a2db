"""What tracing costs the ingest edge: the same load with tracing off and with every call
sampled and exported over OTLP/HTTP to a receiver in this process.

`pulse serve` runs as its own process (as in `bench_ingest.py`), once per mode, and the
modes alternate for `--rounds` rounds; the median of each is printed. The per-call cost
of the gRPC interceptor is measured in this process on unary health checks: no
interceptor, metrics only (always on), metrics and tracing.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ingest.interceptors import MetricsInterceptor
from protos.analytics.v1 import analytics_pb2 as pb
from runtime import otel
from tests.ports import free_port

from .bench_ingest import measure, wait_serving
from .common import fresh_topics, pulse_process, stack, synthetic_events


class Receiver:
    """A stand-in OTLP/HTTP collector: answers 200 to POST /v1/traces and counts."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    receiver.requests += 1
                    receiver.bytes += len(body)
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def edge_rates(
    env: dict[str, str], target: str, port: int, events: list[pb.RawEvent], singles: int
) -> tuple[float, float]:
    """(IngestEventBatches 500/message, IngestEvents) events/s of one `pulse serve` run."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        pulse_process(
            "serve", {**env, "PULSE_GRPC_PORT": str(port), "PULSE_HTTP_PORT": "0"}, Path(tmp)
        ) as proc,
    ):
        wait_serving(target, proc)
        batched = asyncio.run(measure(target, events, 500))
        single = asyncio.run(measure(target, events[:singles], 1))
    return batched, single


async def _checks(interceptors: list[grpc.aio.ServerInterceptor], calls: int) -> float:
    server = grpc.aio.server(interceptors=interceptors)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            for _ in range(200):
                await stub.Check(request)
            started = time.perf_counter()
            for _ in range(calls):
                await stub.Check(request)
            return (time.perf_counter() - started) / calls * 1e6
    finally:
        await server.stop(None)


@contextmanager
def traces_endpoint(endpoint: str) -> Iterator[None]:
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{endpoint}/v1/traces"
    try:
        yield
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]


def interceptor_costs(endpoint: str, calls: int, rounds: int) -> tuple[float, float, float]:
    """Median µs per unary call: no interceptor, metrics, metrics + tracing (exported)."""
    with traces_endpoint(endpoint):
        tracing = otel.setup("pulse-bench")
    samples: list[list[float]] = [[], [], []]
    try:
        for _ in range(rounds):
            samples[0].append(asyncio.run(_checks([], calls)))
            samples[1].append(asyncio.run(_checks([MetricsInterceptor()], calls)))
            samples[2].append(asyncio.run(_checks([MetricsInterceptor(tracing.tracer)], calls)))
    finally:
        tracing.shutdown()
    bare, metered, traced = (statistics.median(s) for s in samples)
    return bare, metered, traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=100_000)
    parser.add_argument("--single-events", type=int, default=20_000, help="for IngestEvents")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000, help="health checks per sample")
    args = parser.parse_args()
    bootstrap, _dsn = stack()
    topics = fresh_topics(bootstrap)
    receiver = Receiver()
    base = {"PULSE_TOPIC_RAW": topics["raw"], "PULSE_METRICS_PORT": "0", "PULSE_HEALTH_PORT": "0"}
    modes = {
        "off": base,
        "on": {
            **base,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SERVICE_NAME": "pulse-ingest-bench",
        },
    }
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        os.environ.pop(name, None)  # "off" must really be off
    events = synthetic_events(args.events)
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode, env in modes.items():
            port = free_port()
            results[mode].append(
                edge_rates(env, f"127.0.0.1:{port}", port, events, args.single_events)
            )
    print(
        f"ingest edge with tracing off / on (100% sampled, OTLP/HTTP to a local receiver), "
        f"median of {args.rounds} rounds"
    )
    print(f"{'RPC shape':<44}{'off, events/s':>15}{'on, events/s':>15}{'on/off':>9}")
    shapes = (
        (f"IngestEventBatches, 500/message ({args.events:,})", 0),
        (f"IngestEvents, 1/message ({args.single_events:,})", 1),
    )
    for label, i in shapes:
        off = statistics.median(r[i] for r in results["off"])
        on = statistics.median(r[i] for r in results["on"])
        print(f"{label:<44}{off:>15,.0f}{on:>15,.0f}{on / off:>9.3f}")
    print(f"receiver: {receiver.requests} OTLP export requests, {receiver.bytes:,} bytes")
    bare, metered, traced = interceptor_costs(receiver.endpoint, args.calls, args.rounds)
    print(f"per unary call (grpc.health.v1 Check, {args.calls:,} calls, median µs):")
    print(f"  no interceptor {bare:.1f}, metrics {metered:.1f} (+{metered - bare:.1f}),")
    print(f"  metrics and tracing {traced:.1f} (+{traced - metered:.1f} for the span)")
    receiver.close()


if __name__ == "__main__":
    main()
