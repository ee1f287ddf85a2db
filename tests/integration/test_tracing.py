"""One trace from a client's gRPC call to the TimescaleDB write, through the real Kafka.

The edge (real servicer, interceptor and Kafka producer on an in-process gRPC server)
and the dataflow (real Kafka source and TimescaleDB sink) each export their spans to
memory through `runtime.otel.setup`, as two services would.
"""

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from bytewax.testing import TestingSink, run_main
from confluent_kafka import OFFSET_BEGINNING
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flows.aggregate import FlowConfig, build_flow
from flows.kafka_source import MessageKafkaSource
from ingest.core import IngestCore
from ingest.interceptors import MetricsInterceptor
from ingest.producer import KafkaEventProducer
from ingest.servicer import DELIVERY_EVENTS, AnalyticsServicer
from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.timeutil import now_ms
from pulse.validation import Limits
from runtime import otel
from sinks.kafka_outputs import SideRecord
from sinks.timescale_writer import TimescaleSink
from tests.conftest import Stack, Topics
from tests.kafka import consume_all
from tests.unit.test_servicer import FixedReader

CLIENT_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN_ID = 0x00F067AA0BA902B7
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"
EVENTS = 2_500


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def linked(span: ReadableSpan) -> set[tuple[int, int]]:
    return {(link.context.trace_id, link.context.span_id) for link in span.links}


def ingest(
    stack: Stack,
    topic: str,
    tracing: otel.Tracing,
    events: list[pb.RawEvent],
    traceparent: str | None = CLIENT_TRACEPARENT,
) -> None:
    producer = KafkaEventProducer(stack.kafka_bootstrap, topic, 30)

    async def main() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(tracing.tracer)])
        servicer = AnalyticsServicer(
            IngestCore(producer, FixedReader(), Limits(), 10_000, now_ms, tracer=tracing.tracer)
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        async def batches() -> AsyncIterator[pb.EventBatch]:
            for i in range(0, len(events), 500):
                yield pb.EventBatch(events=events[i : i + 500])

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.AnalyticsServiceStub(channel)
                metadata = (("traceparent", traceparent),) if traceparent else None
                reply = await stub.IngestEventBatches(batches(), metadata=metadata)
                assert reply.accepted == len(events)
        finally:
            await server.stop(None)

    try:
        asyncio.run(main())
    finally:
        producer.close()


def test_an_event_is_followed_from_the_client_call_to_the_timescaledb_write(
    stack: Stack, topics: Topics, database: str
) -> None:
    edge_spans, flow_spans = InMemorySpanExporter(), InMemorySpanExporter()
    edge = otel.setup(otel.INGEST_SERVICE, exporter=edge_spans)
    flow_tracing = otel.setup(otel.FLOW_SERVICE, exporter=flow_spans)
    now = now_ms()
    events = [
        pb.RawEvent(
            campaign_id=f"trace-{i % 7}",
            event_type="click",
            event_id=f"t{i}",
            timestamp=now - 1000 + i % 500,
            value=1.0,
        )
        for i in range(EVENTS)
    ]
    ingest(stack, topics.raw, edge, events)

    # The edge: the RPC span continues the client's trace; each produce group is its child.
    finished = edge_spans.get_finished_spans()
    [rpc] = [s for s in finished if s.kind is SpanKind.SERVER]
    produce = {span_id(s): s for s in finished if s.kind is SpanKind.PRODUCER}
    assert rpc.context is not None and rpc.parent is not None
    assert rpc.context.trace_id == CLIENT_TRACE_ID
    assert rpc.parent.span_id == CLIENT_SPAN_ID
    assert len(produce) == -(-EVENTS // DELIVERY_EVENTS)
    for span in produce.values():
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == CLIENT_TRACE_ID
        assert span.parent.span_id == rpc.context.span_id
        assert span.resource.attributes["service.name"] == "pulse-ingest"

    # Kafka: every record names the produce span of its group.
    records = consume_all(stack.kafka_bootstrap, topics.raw, 3)
    assert len(records) == EVENTS
    named: dict[tuple[int, int], int] = {}
    for partition, offset, _key, _value, headers in records:
        value = otel.traceparent_of(headers)
        assert value is not None
        ctx = otel.span_context_of(value)
        assert ctx is not None
        assert ctx.trace_id == CLIENT_TRACE_ID
        assert ctx.span_id in produce
        named[(partition, offset)] = ctx.span_id
    assert set(named.values()) == set(produce)
    counts = {sid: 0 for sid in produce}
    for sid in named.values():
        counts[sid] += 1
    assert sorted(counts.values()) == sorted(
        int(str((s.attributes or {})["messaging.batch.message_count"])) for s in produce.values()
    )

    # The dataflow: processing spans link to the produce spans, write spans to those.
    config = FlowConfig(
        window_ms=60_000,
        lateness_ms=10_000,
        idle_ms=30_000,
        source_topic=topics.raw,
        late_topic=topics.late,
        dlq_topic=topics.dlq,
    )
    source = MessageKafkaSource(
        [stack.kafka_bootstrap], [topics.raw], tail=False, starting_offset=OFFSET_BEGINNING
    )
    side: list[SideRecord] = []
    flow = build_flow(
        "tracing_test",
        config,
        source,  # type: ignore[arg-type]
        store_sink=TimescaleSink(database, topics.raw, tracer=flow_tracing.tracer),
        side_sink=TestingSink(side),
        notification_sink=TestingSink([]),
        tracer=flow_tracing.tracer,
    )
    run_main(flow)
    assert side == []
    finished = flow_spans.get_finished_spans()
    aggregate = {span_id(s): s for s in finished if s.name.startswith("aggregate partition ")}
    writes = [s for s in finished if s.name == "write timescaledb"]
    assert aggregate and writes
    print(f"{len(aggregate)} processing spans, {len(writes)} write spans")
    produce_contexts = {(CLIENT_TRACE_ID, sid) for sid in produce}
    for span in aggregate.values():
        assert span.parent is None  # a trace of its own, linked to the producers
        assert linked(span) <= produce_contexts
        assert span.resource.attributes["service.name"] == "pulse-flow"
    assert set().union(*(linked(s) for s in aggregate.values())) == produce_contexts
    aggregate_contexts = {(s.context.trace_id, sid) for sid, s in aggregate.items() if s.context}
    for span in writes:
        assert span.kind is SpanKind.CLIENT
        assert linked(span) and linked(span) <= aggregate_contexts
    assert set().union(*(linked(s) for s in writes)) == aggregate_contexts

    # Follow one event: record -> produce span -> processing span -> write span.
    partition, offset = sorted(named)[len(named) // 2]
    produced_by = named[(partition, offset)]
    processed_by = [
        s
        for s in aggregate.values()
        if s.name == f"aggregate partition {partition}"
        and (CLIENT_TRACE_ID, produced_by) in linked(s)
    ]
    assert processed_by  # more than one if the group's records came in several polls
    for span in processed_by:
        assert span.context is not None
        context = (span.context.trace_id, span.context.span_id)
        assert len([s for s in writes if context in linked(s)]) == 1
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT sum(event_count) FROM event_metrics WHERE campaign_id LIKE 'trace-%'"
        ).fetchone()
    assert row is not None and row[0] == EVENTS


def test_an_unreachable_collector_never_breaks_ingestion(
    stack: Stack, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real OTLP exporter, pointed at a port nobody listens on: every event is accepted,
    the spans are made and dropped, and shutdown gives up instead of hanging."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export (and fail) while ingesting
    tracing = otel.setup("pulse-ingest")
    assert tracing.enabled
    now = now_ms()
    events = [
        pb.RawEvent(campaign_id="nc", event_type="view", timestamp=now, event_id=f"nc-{i}")
        for i in range(5 * DELIVERY_EVENTS)
    ]
    for _ in range(4):  # several calls, so exports fail while later calls run
        ingest(stack, topics.raw, tracing, events, traceparent=None)
    tracing.shutdown(timeout_s=1)
    assert len(consume_all(stack.kafka_bootstrap, topics.raw, 3)) == 4 * len(events)
