"""The gRPC servicer over a real in-process gRPC server, with fake ports."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pytest

from ingest.client import PulseClient
from ingest.core import IngestCore
from ingest.guard import Guard
from ingest.messages import SERVICE, add_service
from ingest.servicer import (
    DELIVERY_EVENTS,
    AnalyticsServicer,
    Delivery,
    EventProducer,
    MetricsReader,
)
from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.errors import KafkaDeliveryError, SinkError
from pulse.query import MetricPointRow, MetricsQuery
from pulse.validation import Limits

NOW = 1_764_000_000_000


class RecordingDelivery(Delivery):
    """Acknowledges its records, or fails once the producer's budget is spent."""

    def __init__(self, producer: "RecordingProducer") -> None:
        self.producer = producer
        self.records: list[tuple[bytes, bytes]] = []

    @property
    def size(self) -> int:
        return len(self.records)

    async def add(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        if self.producer.refuse:
            return  # like a record Kafka refuses at produce(): nothing is queued
        self.records.extend(records)
        self.producer.produced += len(records)

    async def acknowledged(self) -> float:
        await asyncio.sleep(0)
        if self.producer.refuse:
            raise KafkaDeliveryError("Kafka refused a record")
        budget = self.producer.fail_after
        if budget is not None and len(self.producer.records) + self.size > budget:
            raise KafkaDeliveryError("broker down")
        self.producer.records.extend(self.records)
        self.producer.deliveries.append(self.size)
        return 0.001


class RecordingProducer(EventProducer):
    def __init__(self, fail_after: int | None = None, refuse: bool = False) -> None:
        self.refuse = refuse
        self.records: list[tuple[bytes, bytes]] = []
        self.deliveries: list[int] = []
        self.produced = 0  # handed to Kafka, acknowledged or not
        self.fail_after = fail_after
        self.headers: list[list[tuple[str, str | bytes | None]] | None] = []  # per open()

    def open(
        self, headers: list[tuple[str, str | bytes | None]] | None = None
    ) -> RecordingDelivery:
        self.headers.append(headers)
        return RecordingDelivery(self)


class FixedReader(MetricsReader):
    def __init__(self, fail: bool = False) -> None:
        self.queries: list[MetricsQuery] = []
        self.fail = fail

    async def query(self, query: MetricsQuery) -> AsyncIterator[MetricPointRow]:
        self.queries.append(query)
        if self.fail:
            raise SinkError("metrics query failed: connection refused (password=secret)")
        for i in range(3):
            yield MetricPointRow(
                query.campaign_id, "click", query.start_ms + i * 60_000, i + 1, 0.5
            )
        # A closed bucket with every detail, then one that only received late events.
        yield MetricPointRow(
            *(query.campaign_id, "view", query.start_ms, 4, 2.0, 0.0, 1.5, 0.5, 3),
            *(0.25, 1.25, 1.5, query.start_ms + 1, query.start_ms + 9, 2, True),
        )
        yield MetricPointRow(
            query.campaign_id, "view", query.start_ms + 60_000, 0, 0.0, late_events=1, closed=True
        )
        if query.dimension_set is not None:  # a slice carries its values
            yield MetricPointRow(
                query.campaign_id, "click", query.start_ms, 1, 0.5, dimensions=query.dimensions
            )


def with_server(
    producer: RecordingProducer,
    reader: FixedReader,
    test: Callable[[str], Awaitable[None]],
    guard: Guard | None = None,
) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        core = IngestCore(producer, reader, Limits(), 100, lambda: NOW, guard=guard)
        add_service(AnalyticsServicer(core), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await test(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(main())


def event(i: int, **overrides: object) -> pb.RawEvent:
    fields: dict[str, object] = {
        "campaign_id": f"c{i % 3}",
        "event_type": "click",
        "event_id": f"e{i}",
        "timestamp": NOW - i,
        "value": 0.5,
    }
    fields.update(overrides)
    return pb.RawEvent(**fields)  # type: ignore[arg-type]


def test_valid_events_are_produced_and_invalid_ones_rejected_with_reasons() -> None:
    producer, reader = RecordingProducer(), FixedReader()
    events = [event(i) for i in range(250)]
    events[7] = event(7, campaign_id="")
    events[120] = event(120, timestamp=NOW + 3_600_000)
    events[249] = event(249, value=float("nan"))

    async def test(target: str) -> None:
        async with PulseClient(target, batch_size=40) as client:
            response = await client.ingest(events)
        assert (response.accepted, response.dropped) == (247, 3)
        assert [(r.index, r.event_id, r.reason) for r in response.rejections] == [
            (7, "e7", pb.REJECT_REASON_MISSING_FIELD),
            (120, "e120", pb.REJECT_REASON_TIMESTAMP_IN_FUTURE),
            (249, "e249", pb.REJECT_REASON_INVALID_VALUE),
        ]
        assert "campaign_id is empty" in response.rejections[0].detail

    with_server(producer, reader, test)
    assert len(producer.records) == 247
    expected = [e for i, e in enumerate(events) if i not in (7, 120, 249)]
    assert [pb.RawEvent.FromString(v) for _k, v in producer.records] == expected
    assert [k for k, _v in producer.records] == [e.campaign_id.encode() for e in expected]


def test_single_event_rpc_counts_the_same() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.AnalyticsServiceStub(channel)

            async def stream() -> AsyncIterator[pb.RawEvent]:
                for i in range(1203):
                    yield event(i, event_id="" if i == 1000 else f"e{i}")

            response = await stub.IngestEvents(stream())
        assert (response.accepted, response.dropped) == (1202, 1)
        assert response.rejections[0].index == 1000

    with_server(producer, reader, test)
    assert len(producer.records) == 1202


def test_single_events_are_produced_as_they_arrive() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.AnalyticsServiceStub(channel)

            async def slow_stream() -> AsyncIterator[pb.RawEvent]:
                for i in range(3):
                    yield event(i)
                    for _ in range(200):  # the edge must not hold the event back
                        if producer.produced == i + 1:
                            break
                        await asyncio.sleep(0.01)
                    assert producer.produced == i + 1

            response = await stub.IngestEvents(slow_stream())
        assert response.accepted == 3

    with_server(producer, reader, test)
    assert producer.deliveries == [3]


def test_acknowledgements_are_awaited_per_delivery_group() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target, batch_size=100) as client:
            response = await client.ingest([event(i) for i in range(2 * DELIVERY_EVENTS + 300)])
        assert response.accepted == 2 * DELIVERY_EVENTS + 300

    with_server(producer, reader, test)
    assert producer.deliveries == [DELIVERY_EVENTS, DELIVERY_EVENTS, 300]


def test_kafka_failure_is_an_error_status_never_a_false_accept() -> None:
    producer, reader = RecordingProducer(fail_after=DELIVERY_EVENTS), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target, batch_size=50) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ingest([event(i) for i in range(2500)])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details() or ""
        assert f"{DELIVERY_EVENTS} of 2500 valid events were acknowledged" in details
        assert "broker down" in (info.value.details() or "")

    with_server(producer, reader, test)


def test_oversized_batch_is_refused_saying_what_was_accepted_before_it() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            batches = [
                pb.EventBatch(events=[event(i) for i in range(60)]),
                pb.EventBatch(events=[event(i) for i in range(101)]),
                pb.EventBatch(events=[event(i) for i in range(5)]),
            ]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ingest_batches(batches)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            "batch of 101 events exceeds the limit of 100; the 60 events before it were accepted"
        )

    with_server(producer, reader, test)
    assert len(producer.records) == 60


def test_a_record_kafka_refuses_fails_the_call_even_as_the_first_of_its_group() -> None:
    producer, reader = RecordingProducer(refuse=True), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ingest([event(i) for i in range(5)])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "0 of 5 valid events were acknowledged" in (info.value.details() or "")

    with_server(producer, reader, test)


def test_an_event_too_large_to_produce_is_rejected() -> None:
    producer, reader = RecordingProducer(), FixedReader()
    big = event(1)
    big.MergeFromString(b"\xfa\x07" + bytes([0x80, 0x80, 0x05]) + b"x" * 81_920)  # field 127

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            response = await client.ingest([event(0), big, event(2)])
        assert (response.accepted, response.dropped) == (2, 1)
        rejection = response.rejections[0]
        assert (rejection.index, rejection.reason) == (1, pb.REJECT_REASON_FIELD_TOO_LONG)
        assert "bytes serialized, limit 65536" in rejection.detail

    with_server(producer, reader, test)


def test_query_metrics_streams_points_and_refuses_bad_ranges() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            points = await client.query(
                pb.MetricsRequest(campaign_id="c1", start_ms=NOW, end_ms=NOW + 600_000)
            )
            assert [(p.event_type, p.bucket_start_ms, p.event_count) for p in points] == [
                ("click", NOW, 1),
                ("click", NOW + 60_000, 2),
                ("click", NOW + 120_000, 3),
                ("view", NOW, 4),
                ("view", NOW + 60_000, 0),
            ]
            assert {p.resolution for p in points} == {pb.RESOLUTION_MINUTE}
            assert points[3] == pb.MetricPoint(
                campaign_id="c1",
                event_type="view",
                bucket_start_ms=NOW,
                event_count=4,
                value_sum=2.0,
                resolution=pb.RESOLUTION_MINUTE,
                value_min=0.0,
                value_max=1.5,
                value_avg=0.5,
                unique_users=3,
                value_p50=0.25,
                value_p95=1.25,
                value_p99=1.5,
                first_event_ms=NOW + 1,
                last_event_ms=NOW + 9,
                late_events=2,
                closed=True,
            )
            assert points[3].HasField("value_min")  # 0.0 is a value, not "no value"
            # Equal messages have the same optional fields set: here none of them.
            assert points[4] == pb.MetricPoint(
                campaign_id="c1",
                event_type="view",
                bucket_start_ms=NOW + 60_000,
                resolution=pb.RESOLUTION_MINUTE,
                late_events=1,
                closed=True,
            )
            assert not points[4].HasField("value_min")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.query(pb.MetricsRequest(campaign_id="c1", start_ms=NOW, end_ms=NOW))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "must be after start_ms" in (info.value.details() or "")

    with_server(producer, reader, test)
    assert reader.queries[0].event_type is None


def test_a_failing_metrics_store_is_unavailable_without_leaking_details() -> None:
    producer, reader = RecordingProducer(), FixedReader(fail=True)

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.query(
                    pb.MetricsRequest(campaign_id="c1", start_ms=NOW, end_ms=NOW + 1)
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "the metrics store is unavailable"

    with_server(producer, reader, test)


def test_query_metrics_passes_dimension_slices_and_refuses_bad_ones() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with PulseClient(target) as client:
            points = await client.query(
                pb.MetricsRequest(
                    campaign_id="c1",
                    start_ms=NOW,
                    end_ms=NOW + 600_000,
                    group_by="device, country",
                    dimensions={"country": "DE"},
                )
            )
            assert dict(points[-1].dimensions) == {"country": "DE"}
            assert all(not p.dimensions for p in points[:-1])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.query(
                    pb.MetricsRequest(
                        campaign_id="c1",
                        start_ms=NOW,
                        end_ms=NOW + 1,
                        dimensions={"country": "DE"},
                    )
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "needs group_by" in (info.value.details() or "")

    with_server(producer, reader, test)
    assert (reader.queries[0].dimension_set, reader.queries[0].dimensions) == (
        "country,device",
        (("country", "DE"),),
    )


MALFORMED = [b"\xff", b"\x0a\xff\xff\xff", b"\x08" * 3, b"\x12\x05ab"]


def test_a_malformed_message_is_invalid_argument_with_the_reason_never_unknown() -> None:
    producer, reader = RecordingProducer(), FixedReader()

    async def test(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            # No serializers: the bytes go as they are.
            batches: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
            events: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
            query: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
            batches = channel.stream_unary(f"/{SERVICE}/IngestEventBatches")
            events = channel.stream_unary(f"/{SERVICE}/IngestEvents")
            query = channel.unary_stream(f"/{SERVICE}/QueryMetrics")
            valid = pb.EventBatch(events=[event(i) for i in range(7)]).SerializeToString()
            for junk in MALFORMED:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await batches(iter([valid, junk, valid]))
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                details = info.value.details() or ""
                assert details.startswith("malformed EventBatch message"), details
                assert details.endswith("the 7 events before it were accepted"), details
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await events(iter([junk]))
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (info.value.details() or "").startswith("malformed RawEvent message")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _point in query(junk):
                        pass
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (info.value.details() or "").startswith("malformed MetricsRequest message")

    with_server(producer, reader, test)
    assert len(producer.records) == 7 * len(MALFORMED)
