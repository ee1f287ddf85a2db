"""The AnalyticsService implementation: validate, produce to Kafka, answer with counts."""

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.dedup import event_digest
from pulse.errors import KafkaDeliveryError, PulseError, QueryError, SinkError
from pulse.query import MetricPointRow, MetricsQuery
from pulse.validation import Limits, Reason, check_event
from runtime import otel

from . import metrics
from .messages import Malformed
from .recent_ids import RecentIds

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_LISTED_REJECTIONS = 1000
DELIVERY_EVENTS = 1000  # events whose Kafka acknowledgements are awaited together
MAX_INFLIGHT_EVENTS = 20_000  # events awaiting Kafka acknowledgement per call (backpressure)


def _log_rpc_error(method: str, context: Context, problem: str) -> None:
    """A failed call, with its RPC method and peer (also as JSON fields)."""
    peer = context.peer()
    log.warning("%s from %s: %s", method, peer, problem, extra={"rpc_method": method, "peer": peer})


class _BadMessageError(PulseError):
    """A request message the call cannot go on with (ends it with INVALID_ARGUMENT)."""


class _BatchTooLargeError(_BadMessageError):
    """An EventBatch over the size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"batch of {size} events exceeds the limit of {limit}")


class _MalformedMessageError(_BadMessageError):
    """A request message that does not decode as its protobuf type."""

    def __init__(self, malformed: Malformed) -> None:
        super().__init__(str(malformed))


async def _fail_if(
    method: str,
    context: Context,
    response: pb.IngestResponse,
    *,
    received: int,
    bad: _BadMessageError | None,
    failures: list[str],
) -> None:
    """End the call with INVALID_ARGUMENT (a batch over the limit, a malformed message)
    or UNAVAILABLE (Kafka did not acknowledge everything), saying how many events were
    accepted."""
    if bad is not None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{bad}; the {response.accepted} events before it were accepted",
        )
    if failures:
        valid = received - response.dropped - response.duplicates  # those sent to Kafka
        _log_rpc_error(
            method,
            context,
            f"UNAVAILABLE, {response.accepted} of {valid} valid events acknowledged: {failures[0]}",
        )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"Kafka did not acknowledge all events ({response.accepted} of {valid} valid "
            f"events were acknowledged): {failures[0]}",
        )


class _CallIds:
    """One call's view of event ids: acknowledged before, or already sent in this call."""

    __slots__ = ("_group", "_pending", "_recent")

    def __init__(self, recent: RecentIds | None) -> None:
        self._recent = recent
        self._pending: set[bytes] = set()  # sent in this call, not yet acknowledged
        self._group: list[bytes] = []  # the ids of the group being produced

    @property
    def enabled(self) -> bool:
        return self._recent is not None

    def new(
        self, records: list[tuple[bytes, bytes]], digests: list[bytes]
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """The records whose ids are new, and how many were duplicates."""
        assert self._recent is not None
        known = self._recent.seen(b"".join(digests)).tolist()
        fresh: list[tuple[bytes, bytes]] = []
        pending = self._pending
        for record, digest, seen in zip(records, digests, known, strict=True):
            if seen or digest in pending:
                continue
            pending.add(digest)
            self._group.append(digest)
            fresh.append(record)
        return fresh, len(records) - len(fresh)

    def take_group(self) -> list[bytes]:
        group, self._group = self._group, []
        return group

    def acknowledged(self, digests: list[bytes]) -> None:
        if self._recent is not None and digests:
            self._recent.remember(b"".join(digests))
            self._pending.difference_update(digests)


class Delivery(Protocol):
    """Records produced now, acknowledged together."""

    @property
    def size(self) -> int: ...
    async def add(self, records: Sequence[tuple[bytes, bytes]]) -> None: ...
    async def acknowledged(self) -> float: ...


class EventProducer(Protocol):
    """Port to Kafka."""

    def open(self, headers: otel.KafkaHeaders | None = None) -> Delivery:
        """A new group; `headers` (if any) go with each of its records."""
        ...


class MetricsReader(Protocol):
    """Port to the aggregate store."""

    def query(self, query: MetricsQuery) -> AsyncIterator[MetricPointRow]: ...


class _TracedDelivery:
    """A `Delivery` whose span ends once Kafka has answered for all of it."""

    __slots__ = ("_inner", "_span")

    def __init__(self, inner: Delivery, span: Span) -> None:
        self._inner = inner
        self._span = span

    @property
    def size(self) -> int:
        return self._inner.size

    async def add(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._inner.add(records)

    async def acknowledged(self) -> float:
        span = self._span
        try:
            return await self._inner.acknowledged()
        except KafkaDeliveryError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.set_attribute("messaging.batch.message_count", self._inner.size)
            span.end()


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Ingest and query RPCs. Stateless apart from its adapters.

    With a `tracer`, each group of records produced together (a `Delivery`) is a
    PRODUCER span, a child of the current span (the RPC's, see `interceptors.py`), and
    its records carry the span's W3C `traceparent` in their Kafka headers.

    With `recent` ids, events this edge had acknowledged before (and repeats within a
    call) are not written again but counted in `duplicates`.
    """

    def __init__(
        self,
        producer: EventProducer,
        reader: MetricsReader,
        limits: Limits,
        max_batch_events: int,
        clock_ms: Callable[[], int],
        *,
        tracer: Tracer | None = None,
        recent: RecentIds | None = None,
    ) -> None:
        self._producer = producer
        self._recent = recent
        self._tracer = tracer
        self._reader = reader
        self._limits = limits
        self._max_batch_events = max_batch_events
        self._clock_ms = clock_ms

    async def IngestEvents(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.RawEvent], context: Context
    ) -> pb.IngestResponse:
        # Each event is produced as soon as it arrives: a slow stream never holds events back.
        async def batches() -> AsyncIterator[Sequence[pb.RawEvent]]:
            async for event in request_iterator:
                if isinstance(event, Malformed):
                    raise _MalformedMessageError(event)
                yield [event]

        return await self._ingest("IngestEvents", batches(), context)

    async def IngestEventBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.EventBatch], context: Context
    ) -> pb.IngestResponse:
        async def batches() -> AsyncIterator[Sequence[pb.RawEvent]]:
            async for batch in request_iterator:
                if isinstance(batch, Malformed):
                    raise _MalformedMessageError(batch)
                if len(batch.events) > self._max_batch_events:
                    raise _BatchTooLargeError(len(batch.events), self._max_batch_events)
                yield batch.events

        return await self._ingest("IngestEventBatches", batches(), context)

    async def _ingest(
        self, method: str, batches: AsyncIterator[Sequence[pb.RawEvent]], context: Context
    ) -> pb.IngestResponse:
        response = pb.IngestResponse()
        inflight: deque[tuple[asyncio.Task[float], int, list[bytes]]] = deque()
        inflight_events = 0
        index = 0
        failures: list[str] = []
        delivery: Delivery | None = None
        ids = _CallIds(self._recent)

        def close_delivery() -> None:
            # Also an empty group: it may hold an error from a record Kafka refused.
            nonlocal delivery, inflight_events
            if delivery is not None:
                task = asyncio.ensure_future(delivery.acknowledged())
                inflight.append((task, delivery.size, ids.take_group()))
                inflight_events += delivery.size
            delivery = None

        async def settle() -> None:
            nonlocal inflight_events
            task, size, digests = inflight.popleft()
            inflight_events -= size
            try:
                metrics.PRODUCE_SECONDS.observe(await task)
                metrics.BATCH_EVENTS.observe(size)
                metrics.EVENTS_ACCEPTED.inc(size)
                response.accepted += size
                ids.acknowledged(digests)
            except KafkaDeliveryError as exc:
                metrics.DELIVERY_FAILURES.inc()
                failures.append(str(exc))

        bad: _BadMessageError | None = None
        try:
            async for events in batches:
                records = self._validate(events, index, response, ids)
                index += len(events)
                if records:
                    if delivery is None:
                        delivery = self._open_delivery()
                    await delivery.add(records)
                    if delivery.size >= DELIVERY_EVENTS:
                        close_delivery()
                while inflight_events > MAX_INFLIGHT_EVENTS:
                    await settle()
                if failures:
                    break  # Kafka is failing: stop taking events, report what was acknowledged
        except _BadMessageError as exc:
            bad = exc
        finally:
            close_delivery()
            while inflight:
                await settle()
        await _fail_if(method, context, response, received=index, bad=bad, failures=failures)
        return response

    def _open_delivery(self) -> Delivery:
        """A new group; when tracing, with its PRODUCER span, named in the records' headers."""
        if self._tracer is None:
            return self._producer.open()
        span = self._tracer.start_span(
            "produce events",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.operation.type": "send"},
        )
        return _TracedDelivery(self._producer.open(otel.kafka_headers(span)), span)

    def _validate(
        self,
        events: Sequence[pb.RawEvent],
        first_index: int,
        response: pb.IngestResponse,
        ids: "_CallIds",
    ) -> list[tuple[bytes, bytes]]:
        """Check each event; record rejections and duplicates in the response; return
        the Kafka records to write."""
        now = self._clock_ms()
        limits = self._limits
        records: list[tuple[bytes, bytes]] = []
        digests: list[bytes] = []
        max_bytes = limits.max_event_bytes
        for offset, event in enumerate(events):
            problem = check_event(event, now, limits)
            if problem is None:
                value = event.SerializeToString()
                if len(value) <= max_bytes:
                    records.append((event.campaign_id.encode(), value))
                    if ids.enabled:
                        digests.append(event_digest(event.campaign_id, event.event_id))
                    continue
                problem = (
                    Reason.FIELD_TOO_LONG,
                    f"event is {len(value)} bytes serialized, limit {max_bytes} "
                    "(unknown fields count too)",
                )
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
        if ids.enabled and records:
            records, duplicates = ids.new(records, digests)
            response.duplicates += duplicates
            metrics.DUPLICATES.inc(duplicates)
        return records

    async def QueryMetrics(  # noqa: N802
        self, request: pb.MetricsRequest, context: Context
    ) -> AsyncIterator[pb.MetricPoint]:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request))
        try:
            query = MetricsQuery.parse(
                request.campaign_id,
                request.event_type,
                request.start_ms,
                request.end_ms,
                request.resolution,
                request.group_by,
                request.dimensions,
            )
        except QueryError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        resolution = pb.Resolution.ValueType(query.resolution)
        try:
            async for row in self._reader.query(query):
                yield pb.MetricPoint(
                    campaign_id=row.campaign_id,
                    event_type=row.event_type,
                    bucket_start_ms=row.bucket_start_ms,
                    event_count=row.event_count,
                    value_sum=row.value_sum,
                    resolution=resolution,
                    # Optional fields: None leaves them unset.
                    value_min=row.value_min,
                    value_max=row.value_max,
                    value_avg=row.value_avg,
                    unique_users=row.unique_users,
                    value_p50=row.value_p50,
                    value_p95=row.value_p95,
                    value_p99=row.value_p99,
                    first_event_ms=row.first_event_ms or 0,
                    last_event_ms=row.last_event_ms or 0,
                    late_events=row.late_events,
                    closed=row.closed,
                    on_time_count=row.on_time_count,
                    dimensions=dict(row.dimensions),
                )
        except SinkError as exc:
            _log_rpc_error("QueryMetrics", context, f"the metrics store failed: {exc}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the metrics store is unavailable")
