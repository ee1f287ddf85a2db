"""Tracing: setup from the environment, W3C propagation helpers, and the traced edge and flow
pieces without services (spans kept in memory)."""

import asyncio

import grpc
import pytest
from confluent_kafka import Message
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flows.records import MAX_TRACE_PARENTS, Decoder
from ingest.client import PulseClient
from ingest.core import IngestCore
from ingest.interceptors import MetricsInterceptor
from ingest.servicer import DELIVERY_EVENTS, AnalyticsServicer
from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.aggregation import MetricRow
from pulse.validation import Limits
from runtime import otel
from sinks.timescale_writer import plan
from tests.unit.test_servicer import NOW, FixedReader, RecordingProducer, event

OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)
CLIENT_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN_ID = 0xB7AD6B7169203331
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def in_memory(service: str = otel.INGEST_SERVICE) -> tuple[otel.Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = otel.setup(service, exporter=exporter)
    assert tracing.tracer is not None
    return tracing, exporter


def test_tracing_is_off_without_an_endpoint() -> None:
    tracing = otel.setup(otel.INGEST_SERVICE)
    assert tracing.tracer is None
    assert not tracing.enabled
    tracing.shutdown()  # nothing to do


def test_an_endpoint_turns_tracing_on_unless_the_sdk_is_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nobody listens
    tracing = otel.setup(otel.FLOW_SERVICE)
    assert tracing.enabled
    assert tracing.provider is not None
    assert tracing.provider.resource.attributes["service.name"] == "pulse-flow"
    tracing.shutdown(timeout_s=2)

    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-eu-1")
    tracing = otel.setup(otel.INGEST_SERVICE)
    assert tracing.provider is not None
    assert tracing.provider.resource.attributes["service.name"] == "edge-eu-1"
    tracing.shutdown(timeout_s=2)

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not otel.setup(otel.INGEST_SERVICE).enabled
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    tracing = otel.setup(otel.INGEST_SERVICE)
    assert tracing.enabled
    tracing.shutdown(timeout_s=2)


def test_kafka_headers_round_trip() -> None:
    tracing, _ = in_memory()
    assert tracing.tracer is not None
    span = tracing.tracer.start_span("produce")
    headers = otel.kafka_headers(span)
    ctx = span.get_span_context()
    flags = int(ctx.trace_flags)
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}".encode()
    assert headers == [("traceparent", expected)]
    value = otel.traceparent_of(headers)
    assert value is not None
    got = otel.span_context_of(value)
    assert got is not None
    assert (got.trace_id, got.span_id, got.is_remote) == (ctx.trace_id, ctx.span_id, True)
    parent = otel.context_from_kafka_headers(headers)
    child = tracing.tracer.start_span("child", context=parent)
    assert isinstance(child, ReadableSpan)
    assert child.parent is not None and child.parent.span_id == ctx.span_id
    [link] = otel.links_to([value, b"not a traceparent"])
    assert link.context.span_id == ctx.span_id
    assert otel.traceparent_of([("other", b"x")]) is None
    assert otel.traceparent_of(None) is None
    span.end()
    child.end()


def test_grpc_metadata_round_trip() -> None:
    tracing, _ = in_memory()
    assert tracing.tracer is not None
    client = tracing.tracer.start_span("client")
    metadata = otel.metadata_for(client)
    assert [key for key, _ in metadata] == ["traceparent"]
    server = tracing.tracer.start_span("server", context=otel.context_from_metadata(metadata))
    assert isinstance(server, ReadableSpan)
    assert server.get_span_context().trace_id == client.get_span_context().trace_id
    assert server.parent is not None and server.parent.span_id == client.get_span_context().span_id
    assert otel.context_from_metadata([("user-agent", "x")]) == Context()
    assert otel.context_from_metadata(None) == Context()


def test_span_mark_links_back_and_writes_no_sql() -> None:
    tracing, _ = in_memory()
    assert tracing.tracer is not None
    span = tracing.tracer.start_span("aggregate partition 0")
    mark = otel.SpanMark.of(span)
    ctx = span.get_span_context()
    link = mark.link()
    assert (link.context.trace_id, link.context.span_id) == (ctx.trace_id, ctx.span_id)
    row = MetricRow("c", "click", 0, 1, 1.0)
    assert plan([mark], "events.raw") == []
    assert [kind for kind, *_ in plan([row, mark], "events.raw")] == ["metrics"]


def ingest_over_grpc(
    producer: RecordingProducer, tracing: otel.Tracing, events: list[pb.RawEvent]
) -> None:
    async def main() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(tracing.tracer)])
        servicer = AnalyticsServicer(
            IngestCore(
                producer, FixedReader(), Limits(), 10_000, lambda: NOW, tracer=tracing.tracer
            )
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.AnalyticsServiceStub(channel)

                async def batches():
                    for i in range(0, len(events), 500):
                        yield pb.EventBatch(events=events[i : i + 500])

                reply = await stub.IngestEventBatches(
                    batches(), metadata=(("traceparent", CLIENT_TRACEPARENT),)
                )
                assert reply.accepted == len(events)
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_the_edge_adds_no_headers_when_tracing_is_off() -> None:
    producer = RecordingProducer()
    ingest_over_grpc(producer, otel.Tracing(), [event(i) for i in range(2500)])
    assert producer.headers == [None, None, None]
    assert len(producer.records) == 2500


def test_the_edge_continues_the_client_trace_and_names_each_produce_group() -> None:
    tracing, exporter = in_memory()
    producer = RecordingProducer()
    ingest_over_grpc(producer, tracing, [event(i) for i in range(2500)])
    spans = exporter.get_finished_spans()
    [rpc] = [s for s in spans if s.kind is SpanKind.SERVER]
    produce = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert rpc.name == "analytics.v1.AnalyticsService/IngestEventBatches"
    assert rpc.context is not None and rpc.parent is not None
    assert rpc.context.trace_id == CLIENT_TRACE_ID
    assert rpc.parent.span_id == CLIENT_SPAN_ID
    assert len(produce) == 3  # groups of up to DELIVERY_EVENTS
    sizes = sorted(int(str(span_attribute(s, "messaging.batch.message_count"))) for s in produce)
    assert sizes == [500, DELIVERY_EVENTS, DELIVERY_EVENTS]
    for span in produce:
        assert span.parent is not None and span.parent.span_id == rpc.context.span_id
    # One prebuilt header list per group, naming that group's span.
    named = []
    for headers in producer.headers:
        assert headers is not None
        value = otel.traceparent_of(headers)
        assert value is not None
        ctx = otel.span_context_of(value)
        assert ctx is not None and ctx.trace_id == CLIENT_TRACE_ID
        named.append(ctx.span_id)
    assert sorted(named) == sorted(s.context.span_id for s in produce if s.context is not None)


def test_a_call_without_client_context_starts_a_trace() -> None:
    tracing, exporter = in_memory()

    async def main() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(tracing.tracer)])
        servicer = AnalyticsServicer(
            IngestCore(
                RecordingProducer(),
                FixedReader(),
                Limits(),
                100,
                lambda: NOW,
                tracer=tracing.tracer,
            )
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with PulseClient(f"127.0.0.1:{port}", batch_size=10) as client:
                await client.ingest([event(i) for i in range(5)])
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.ingest_batches([pb.EventBatch(events=[event(0)] * 101)])
        finally:
            await server.stop(None)

    asyncio.run(main())
    rpcs = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(rpcs) == 2
    assert all(s.parent is None for s in rpcs)
    assert [s.status.is_ok for s in rpcs] == [True, False]
    assert (
        span_attribute(rpcs[1], "rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )


def span_attribute(span: ReadableSpan, name: str) -> object:
    assert span.attributes is not None
    return span.attributes[name]


def message(partition: int, offset: int, traceparent: bytes | None) -> Message:
    raw = event(offset, timestamp=NOW).SerializeToString()
    headers: list[tuple[str, str | bytes | None]] | None = None
    if traceparent is not None:
        headers = [("traceparent", traceparent)]
    return Message(
        key=b"c", value=raw, topic="events.raw", partition=partition, offset=offset, headers=headers
    )


def test_the_decoder_collects_distinct_trace_parents_only_when_tracing() -> None:
    parents = [f"00-{i + 1:032x}-{i + 1:016x}-01".encode() for i in range(3)]
    batch = [
        message(0, 0, parents[0]),
        message(0, 1, parents[0]),
        message(0, 2, parents[1]),
        message(1, 0, parents[2]),
        message(1, 1, None),
    ]
    off = Decoder("events.dlq")(batch)
    assert [chunk.trace_parents for _key, chunk in off] == [(), ()]  # type: ignore[misc]
    on = Decoder("events.dlq", trace=True)(batch)
    got = {chunk.partition: chunk.trace_parents for _key, chunk in on}  # type: ignore[misc]
    assert got == {0: (parents[0], parents[1]), 1: (parents[2],)}
    many = [message(0, i, f"00-{i + 1:032x}-{i + 1:016x}-01".encode()) for i in range(200)]
    [(_key, chunk)] = Decoder("events.dlq", trace=True)(many)  # type: ignore[misc]
    assert len(chunk.trace_parents) == MAX_TRACE_PARENTS
