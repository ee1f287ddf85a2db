"""Tokens, prefixes, rate limits and the in-flight bound, through the gRPC servicer on a
real in-process server (fake Kafka and store ports, a fake clock)."""

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from ingest.client import Credentials, PulseClient
from ingest.guard import Guard
from ingest.tokens import TokenFile
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.admission import InFlight
from pulse.auth import digest, new_token, toml_entry
from tests.unit.test_servicer import FixedReader, RecordingProducer, event, with_server

WRITER, LIMITED = new_token(), new_token()


def tokens_file(tmp_path: Path) -> TokenFile:
    path = tmp_path / "tokens.toml"
    path.write_text(
        toml_entry(
            name="writer",
            sha256=digest(WRITER),
            tenant="acme",
            write_prefixes=["c1", "c2"],
            read_prefixes=["c1"],
        )
        + toml_entry(
            name="limited",
            sha256=digest(LIMITED),
            tenant="p",
            write_prefixes=[""],
            read_prefixes=[""],
            events_per_second=10,
            burst_events=10,
        )
    )
    return TokenFile(str(path))


def serve(
    guard: Guard, producer: RecordingProducer, test: Callable[[str], Awaitable[None]]
) -> None:
    with_server(producer, FixedReader(), test, guard)


def client(target: str, token: str = "", batch: int = 100) -> PulseClient:
    return PulseClient(target, batch, Credentials(token=token))


def test_tokens_decide_who_writes_which_campaigns(tmp_path: Path) -> None:
    producer = RecordingProducer()
    guard = Guard(tokens_file(tmp_path), InFlight(10_000, 10**9))

    async def test(target: str) -> None:
        async with client(target) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anonymous.ingest([event(1)])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with client(target, WRITER) as writer:
            reply = await writer.ingest([event(i) for i in range(30)])  # c0, c1, c2 in turn
            assert (reply.accepted, reply.dropped) == (20, 10)
            assert [r.index for r in reply.rejections] == list(range(0, 30, 3))
            assert {r.reason for r in reply.rejections} == {pb.REJECT_REASON_PERMISSION_DENIED}
            assert "may not write campaign 'c0'" in reply.rejections[0].detail
            ok = await writer.query(pb.MetricsRequest(campaign_id="c1", start_ms=0, end_ms=60_000))
            assert len(ok) > 0
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await writer.query(pb.MetricsRequest(campaign_id="c2", start_ms=0, end_ms=60_000))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

    serve(guard, producer, test)
    assert sorted(key for key, _ in producer.records) == sorted(
        f"c{i % 3}".encode() for i in range(30) if i % 3
    )


def test_over_the_rate_the_rest_of_a_stream_is_refused_with_a_retry_hint(tmp_path: Path) -> None:
    producer = RecordingProducer()
    clock = [0.0]
    guard = Guard(tokens_file(tmp_path), InFlight(10_000, 10**9), clock_s=lambda: clock[0])

    async def test(target: str) -> None:
        async with client(target, LIMITED, batch=6) as limited:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await limited.ingest([event(i) for i in range(18)])  # 6 + 6 pass, then 6 refused
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the 12 events before it were accepted" in (info.value.details() or "")
            trailers = dict(info.value.trailing_metadata() or ())
            assert trailers["retry-after-ms"] == str((2 + 1) * 100)  # 2 in debt at 10/s
            clock[0] += 0.3
            reply = await limited.ingest([event(i) for i in range(12, 18)])
            assert reply.accepted == 6

    serve(guard, producer, test)
    assert len(producer.records) == 18


def test_past_the_in_flight_bound_a_stream_is_refused_and_the_bound_is_given_back() -> None:
    producer = RecordingProducer()
    inflight = InFlight(max_events=50, max_bytes=10**9)
    guard = Guard(None, inflight)

    async def test(target: str) -> None:
        async with client(target, batch=40) as anyone:
            # 40 events held until the call's group is acknowledged; 40 more exceed 50.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anyone.ingest([event(i) for i in range(120)])
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "in-flight limit" in (info.value.details() or "")
            assert (inflight.events, inflight.bytes) == (0, 0)
            reply = await anyone.ingest([event(i) for i in range(40, 80)])
            assert reply.accepted == 40
        assert (inflight.events, inflight.bytes) == (0, 0)

    serve(guard, producer, test)
    assert len(producer.records) == 80


def test_past_the_call_bound_a_call_is_refused() -> None:
    guard = Guard(None, InFlight(10_000, 10**9), max_calls=0)

    async def test(target: str) -> None:
        async with client(target) as anyone:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anyone.ingest([event(1)])
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 0 calls" in (info.value.details() or "")

    serve(guard, RecordingProducer(), test)
