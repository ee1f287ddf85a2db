"""The gRPC metrics interceptor, on a real in-process server: every kind of RPC, aborts too."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from ingest.client import PulseClient
from ingest.core import IngestCore
from ingest.interceptors import MetricsInterceptor, status_name
from ingest.servicer import AnalyticsServicer
from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.validation import Limits
from tests.unit.test_servicer import NOW, FixedReader, RecordingProducer, event

SERVICE = "analytics.v1.AnalyticsService"
BATCHES = f"{SERVICE}/IngestEventBatches"
QUERY = f"{SERVICE}/QueryMetrics"
CHECK = "grpc.health.v1.Health/Check"


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "pulse_ingest_grpc_handled_total", {"method": method, "code": code}
    )
    return value or 0.0


def observed(method: str) -> float:
    value = REGISTRY.get_sample_value(
        "pulse_ingest_grpc_request_duration_seconds_count", {"method": method}
    )
    return value or 0.0


def inflight(method: str) -> float:
    value = REGISTRY.get_sample_value("pulse_ingest_grpc_inflight_requests", {"method": method})
    return value or 0.0


def with_server(test: Callable[[str], Awaitable[None]], reader: FixedReader | None = None) -> None:
    async def main() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor()])
        servicer = AnalyticsServicer(
            IngestCore(RecordingProducer(), reader or FixedReader(), Limits(), 100, lambda: NOW)
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await test(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_stream_unary_calls_count_ok_and_aborts_with_their_code() -> None:
    before = {code: handled(BATCHES, code) for code in ("OK", "INVALID_ARGUMENT")}
    count_before = observed(BATCHES)

    async def test(target: str) -> None:
        async with PulseClient(target, batch_size=10) as client:
            await client.ingest([event(i) for i in range(25)])
            await client.ingest([event(i) for i in range(3)])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ingest_batches([pb.EventBatch(events=[event(0)] * 101)])
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with_server(test)
    assert handled(BATCHES, "OK") - before["OK"] == 2
    assert handled(BATCHES, "INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 1
    assert observed(BATCHES) - count_before == 3
    assert inflight(BATCHES) == 0


def test_unary_stream_calls_count_ok_aborts_and_failures() -> None:
    codes = ("OK", "INVALID_ARGUMENT", "UNAVAILABLE")
    before = {code: handled(QUERY, code) for code in codes}
    request = pb.MetricsRequest(campaign_id="c1", start_ms=NOW, end_ms=NOW + 600_000)

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            assert len(await client.query(request)) == 5
            with pytest.raises(grpc.aio.AioRpcError):
                await client.query(pb.MetricsRequest(campaign_id="c1", start_ms=NOW, end_ms=NOW))

    with_server(test)

    async def failing(target: str) -> None:
        async with PulseClient(target) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.query(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    with_server(failing, FixedReader(fail=True))
    assert {code: handled(QUERY, code) - before[code] for code in codes} == {
        "OK": 1,
        "INVALID_ARGUMENT": 1,
        "UNAVAILABLE": 1,
    }
    assert inflight(QUERY) == 0


def test_unary_unary_calls_are_counted() -> None:
    before = handled(CHECK, "OK")

    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                await stub.Check(health_pb2.HealthCheckRequest(service=""))

    with_server(test)
    assert handled(CHECK, "OK") - before == 3


def test_unknown_methods_are_not_labelled() -> None:
    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/no.Such/Method"
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"")
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    with_server(test)
    assert handled("no.Such/Method", "UNIMPLEMENTED") == 0


class _Context:
    def __init__(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code


def test_status_names() -> None:
    assert status_name(_Context(None), None) == "OK"
    assert status_name(_Context(grpc.StatusCode.NOT_FOUND), None) == "NOT_FOUND"
    assert status_name(_Context(grpc.StatusCode.OK), RuntimeError()) == "UNKNOWN"
    assert status_name(_Context(None), RuntimeError()) == "UNKNOWN"
    assert status_name(_Context(5), None) == "NOT_FOUND"
    assert status_name(_Context(None), asyncio.CancelledError()) == "CANCELLED"


def test_cancelled_stream_is_counted_as_cancelled() -> None:
    before = handled(BATCHES, "CANCELLED")

    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.AnalyticsServiceStub(channel)
            sent = asyncio.Event()

            async def stream() -> AsyncIterator[pb.EventBatch]:
                yield pb.EventBatch(events=[event(0)])
                sent.set()
                await asyncio.sleep(30)

            call = stub.IngestEventBatches(stream())
            await sent.wait()
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            for _ in range(100):  # the server learns of the cancellation asynchronously
                if handled(BATCHES, "CANCELLED") > before:
                    break
                await asyncio.sleep(0.02)

    with_server(test)
    assert handled(BATCHES, "CANCELLED") - before == 1
    assert inflight(BATCHES) == 0
