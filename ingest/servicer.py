"""The AnalyticsService over gRPC: the edge's core (`core.py`) behind gRPC messages.

Request streams become batches of events for `IngestCore.ingest`; its outcome becomes
the reply or a status: INVALID_ARGUMENT for a bad message, UNAVAILABLE when Kafka did
not acknowledge everything (see `STATUS`).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.errors import QueryError, SinkError
from pulse.query import MetricsQuery

from .core import (
    DELIVERY_EVENTS,
    MAX_INFLIGHT_EVENTS,
    MAX_LISTED_REJECTIONS,
    STORE_UNAVAILABLE,
    BadMessageError,
    BatchTooLargeError,
    Code,
    Delivery,
    EventProducer,
    Failure,
    IngestCore,
    IngestOutcome,
    MetricsReader,
    denied,
    log_call_error,
)
from .guard import DeniedError
from .messages import Malformed

__all__ = [
    "DELIVERY_EVENTS",
    "MAX_INFLIGHT_EVENTS",
    "MAX_LISTED_REJECTIONS",
    "STATUS",
    "AnalyticsServicer",
    "Delivery",
    "EventProducer",
    "MetricsReader",
]

Context = grpc.aio.ServicerContext[Any, Any]
DRAIN_MESSAGES = 2
DRAIN_S = 0.2

# The gRPC status of each failure code of the core.
STATUS = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


class _MalformedMessageError(BadMessageError):
    """A request message that does not decode as its protobuf type."""

    def __init__(self, malformed: Malformed) -> None:
        super().__init__(str(malformed))


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Ingest and query RPCs over `core` (built from the same arguments as `IngestCore`),
    which the HTTP gateway of the same process shares."""

    def __init__(self, core: IngestCore) -> None:
        self.core = core

    async def IngestEvents(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.RawEvent], context: Context
    ) -> pb.IngestResponse:
        # Each event is produced as soon as it arrives: a slow stream never holds events back.
        async def batches() -> AsyncIterator[Sequence[pb.RawEvent]]:
            async for event in request_iterator:
                if isinstance(event, Malformed):
                    raise _MalformedMessageError(event)
                yield [event]

        return await self._ingest("IngestEvents", batches(), context, request_iterator)

    async def IngestEventBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.EventBatch], context: Context
    ) -> pb.IngestResponse:
        limit = self.core.max_batch_events

        async def batches() -> AsyncIterator[Sequence[pb.RawEvent]]:
            async for batch in request_iterator:
                if isinstance(batch, Malformed):
                    raise _MalformedMessageError(batch)
                if len(batch.events) > limit:
                    raise BatchTooLargeError(len(batch.events), limit)
                yield batch.events

        return await self._ingest("IngestEventBatches", batches(), context, request_iterator)

    async def _ingest(
        self,
        method: str,
        batches: AsyncIterator[Sequence[pb.RawEvent]],
        context: Context,
        requests: AsyncIterator[object],
    ) -> pb.IngestResponse:
        guard = self.core.guard
        try:
            with guard.call():
                caller = guard.caller(_authorization(context))
                outcome = await self.core.ingest(
                    batches, method=method, peer=context.peer(), caller=caller
                )
        except DeniedError as exc:
            outcome = IngestOutcome(pb.IngestResponse(), denied(exc))
        if outcome.failure is not None:
            await _wait_half_close(requests)
            await _abort(context, outcome.failure)
        return outcome.response

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
        try:
            guard = self.core.guard
            guard.check_read(guard.caller(_authorization(context)), query.campaign_id)
        except DeniedError as exc:
            await _abort(context, denied(exc))
        resolution = pb.Resolution.ValueType(query.resolution)
        try:
            async for row in self.core.points(query):
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
            log_call_error("QueryMetrics", context.peer(), f"the metrics store failed: {exc}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE)


def _authorization(context: Context) -> str | None:
    """The call's `authorization` metadata value, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


async def _wait_half_close(requests: AsyncIterator[object]) -> None:
    """Read what the client still sends, briefly (at most `DRAIN_MESSAGES` messages,
    `DRAIN_S` seconds), before a failure status: a status that overtakes the client's
    last message and half-close reaches a grpcio client as CANCELLED, not as the status
    sent."""
    with contextlib.suppress(TimeoutError, grpc.RpcError):
        async with asyncio.timeout(DRAIN_S):
            read = 0
            async for _ in requests:
                read += 1
                if read >= DRAIN_MESSAGES:
                    return


async def _abort(context: Context, failure: Failure) -> None:
    """End the call with the failure's status; a retry hint goes in the trailers."""
    if failure.retry_after_ms is not None:
        context.set_trailing_metadata((("retry-after-ms", str(failure.retry_after_ms)),))
    await context.abort(STATUS[failure.code], failure.message)
