"""The AnalyticsService implementation: validate, produce to Kafka, answer with counts."""

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.errors import KafkaDeliveryError, QueryError
from pulse.query import MetricPointRow, MetricsQuery
from pulse.validation import Limits, check_event

from . import metrics

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_LISTED_REJECTIONS = 1000
SINGLE_EVENT_CHUNK = 500  # single-event RPC: events produced together
MAX_INFLIGHT_EVENTS = 20_000  # events awaiting Kafka acknowledgement per call (backpressure)


class EventProducer(Protocol):
    """Port to Kafka: resolves once every record is acknowledged."""

    async def send(self, records: Sequence[tuple[bytes, bytes]]) -> None: ...


class MetricsReader(Protocol):
    """Port to the aggregate store."""

    def query(self, query: MetricsQuery) -> AsyncIterator[MetricPointRow]: ...


async def _chunked(
    events: AsyncIterator[pb.RawEvent], size: int
) -> AsyncIterator[list[pb.RawEvent]]:
    chunk: list[pb.RawEvent] = []
    async for event in events:
        chunk.append(event)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Ingest and query RPCs. Stateless apart from its adapters."""

    def __init__(
        self,
        producer: EventProducer,
        reader: MetricsReader,
        limits: Limits,
        max_batch_events: int,
        clock_ms: Callable[[], int],
    ) -> None:
        self._producer = producer
        self._reader = reader
        self._limits = limits
        self._max_batch_events = max_batch_events
        self._clock_ms = clock_ms

    async def IngestEvents(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.RawEvent], context: Context
    ) -> pb.IngestResponse:
        return await self._ingest(_chunked(request_iterator, SINGLE_EVENT_CHUNK), context)

    async def IngestEventBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.EventBatch], context: Context
    ) -> pb.IngestResponse:
        async def batches() -> AsyncIterator[Sequence[pb.RawEvent]]:
            async for batch in request_iterator:
                if len(batch.events) > self._max_batch_events:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"batch of {len(batch.events)} events exceeds the limit of "
                        f"{self._max_batch_events}",
                    )
                yield batch.events

        return await self._ingest(batches(), context)

    async def _ingest(
        self, batches: AsyncIterator[Sequence[pb.RawEvent]], context: Context
    ) -> pb.IngestResponse:
        response = pb.IngestResponse()
        inflight: deque[tuple[asyncio.Task[None], int]] = deque()
        inflight_events = 0
        index = 0
        failures: list[str] = []

        async def settle() -> None:
            nonlocal inflight_events
            task, size = inflight.popleft()
            inflight_events -= size
            try:
                await task
                response.accepted += size
            except KafkaDeliveryError as exc:
                metrics.DELIVERY_FAILURES.inc()
                failures.append(str(exc))

        try:
            async for events in batches:
                records = self._validate(events, index, response)
                index += len(events)
                if records:
                    inflight.append((asyncio.ensure_future(self._send(records)), len(records)))
                    inflight_events += len(records)
                while inflight_events > MAX_INFLIGHT_EVENTS:
                    await settle()
        finally:
            while inflight:
                await settle()
        if failures:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"Kafka did not acknowledge all events ({response.accepted} of "
                f"{index - response.dropped} valid events were acknowledged): {failures[0]}",
            )
        return response

    def _validate(
        self, events: Sequence[pb.RawEvent], first_index: int, response: pb.IngestResponse
    ) -> list[tuple[bytes, bytes]]:
        """Check each event; record rejections in the response; return Kafka records."""
        now = self._clock_ms()
        limits = self._limits
        records: list[tuple[bytes, bytes]] = []
        for offset, event in enumerate(events):
            problem = check_event(event, now, limits)
            if problem is None:
                records.append((event.campaign_id.encode(), event.SerializeToString()))
                continue
            reason, detail = problem
            response.dropped += 1
            metrics.EVENTS_REJECTED.labels(reason.name.lower()).inc()
            if len(response.rejections) < MAX_LISTED_REJECTIONS:
                response.rejections.add(
                    index=first_index + offset,
                    event_id=event.event_id[: limits.max_id_chars],
                    reason=int(reason),
                    detail=detail,
                )
        metrics.EVENTS_RECEIVED.inc(len(events))
        return records

    async def _send(self, records: list[tuple[bytes, bytes]]) -> None:
        metrics.BATCH_EVENTS.observe(len(records))
        with metrics.PRODUCE_SECONDS.time():
            await self._producer.send(records)
        metrics.EVENTS_ACCEPTED.inc(len(records))

    async def QueryMetrics(  # noqa: N802
        self, request: pb.MetricsRequest, context: Context
    ) -> AsyncIterator[pb.MetricPoint]:
        try:
            query = MetricsQuery.parse(
                request.campaign_id,
                request.event_type,
                request.start_ms,
                request.end_ms,
                request.resolution,
            )
        except QueryError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async for row in self._reader.query(query):
            yield pb.MetricPoint(
                campaign_id=row.campaign_id,
                event_type=row.event_type,
                bucket_start_ms=row.bucket_start_ms,
                event_count=row.event_count,
                value_sum=row.value_sum,
                resolution=pb.Resolution.ValueType(query.resolution),
            )
