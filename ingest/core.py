"""The edge's transport-neutral core: ingest and query, shared by gRPC and HTTP.

A transport turns its requests into batches of `pb.RawEvent` (or a query's fields) and
turns the core's answer into its own: `IngestOutcome` carries the `IngestResponse`
and, when the call failed, a `Failure` with a transport-neutral `Code` that the gRPC
servicer maps to a status code and the HTTP gateway to an HTTP status. Validation,
rejection reasons, size limits, acknowledgement after Kafka, the edge's dedup memory
and the Prometheus counters all live here, once.
"""

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.admission import InFlight
from pulse.auth import Caller
from pulse.dedup import event_digest
from pulse.errors import KafkaDeliveryError, PulseError
from pulse.query import MetricPointRow, MetricsQuery
from pulse.validation import Limits, Reason, check_event
from runtime import otel

from . import metrics
from .guard import DeniedError, Guard, PermissionDeniedError, RefusedError, UnauthenticatedError
from .recent_ids import RecentIds

log = logging.getLogger(__name__)

MAX_LISTED_REJECTIONS = 1000
DELIVERY_EVENTS = 1000  # events whose Kafka acknowledgements are awaited together
MAX_INFLIGHT_EVENTS = 20_000  # events awaiting Kafka acknowledgement per call (backpressure)


class Code(Enum):
    """Why a call failed, independent of the transport (named as gRPC names them)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed call: its code, the message the client gets, and for RESOURCE_EXHAUSTED
    when to try again."""

    code: Code
    message: str
    retry_after_ms: int | None = None


def denied(exc: DeniedError) -> Failure:
    """The failure a transport answers for an authentication or admission refusal."""
    if isinstance(exc, UnauthenticatedError):
        return Failure(Code.UNAUTHENTICATED, str(exc))
    if isinstance(exc, PermissionDeniedError):
        return Failure(Code.PERMISSION_DENIED, str(exc))
    return Failure(Code.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_ms)


NO_GUARD_LIMIT = 2**62  # no authentication, no in-flight bound (tests, embedded use)


@dataclass(slots=True)
class IngestOutcome:
    """What the transport answers: the response, and a failure that overrides success.

    On a failure the response still says how many events were accepted before it.
    """

    response: pb.IngestResponse
    failure: Failure | None = None


def log_call_error(method: str, peer: str, problem: str) -> None:
    """A failed call, with its method and peer (also as JSON fields)."""
    log.warning("%s from %s: %s", method, peer, problem, extra={"rpc_method": method, "peer": peer})


class BadMessageError(PulseError):
    """A request message the call cannot go on with (ends it with INVALID_ARGUMENT).

    A transport raises it from the batches it hands `IngestCore.ingest`; the events
    before it are still acknowledged and counted.
    """


class BatchTooLargeError(BadMessageError):
    """A batch over the size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"batch of {size} events exceeds the limit of {limit}")


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


class _Deliveries:
    """One call's records on their way to Kafka: the open group, the groups awaiting
    acknowledgement (at most `MAX_INFLIGHT_EVENTS` events, the caller's backpressure),
    and their share of the edge's in-flight bound, given back once Kafka answered."""

    def __init__(
        self,
        response: pb.IngestResponse,
        ids: _CallIds,
        guard: Guard,
        open_delivery: Callable[[], Delivery],
    ) -> None:
        self._response = response
        self._ids = ids
        self._guard = guard
        self._open_delivery = open_delivery
        self._open: Delivery | None = None
        self._held = (0, 0)  # events and bytes of the open group, held in the bound
        # (acknowledgement, events, held events and bytes, ids) of each closed group
        self._closed: deque[tuple[asyncio.Task[float], int, tuple[int, int], list[bytes]]]
        self._closed = deque()
        self.events = 0  # in closed groups
        self.failures: list[str] = []

    async def add(self, records: list[tuple[bytes, bytes]], size: int) -> None:
        """Produce admitted records (`size` bytes, already held in the bound)."""
        if self._open is None:
            self._open = self._open_delivery()
        self._held = (self._held[0] + len(records), self._held[1] + size)
        await self._open.add(records)
        if self._open.size >= DELIVERY_EVENTS:
            self._close_open()

    def _close_open(self) -> None:
        # Also an empty group: it may hold an error from a record Kafka refused.
        delivery = self._open
        if delivery is not None:
            task = asyncio.ensure_future(delivery.acknowledged())
            self._closed.append((task, delivery.size, self._held, self._ids.take_group()))
            self.events += delivery.size
        self._open = None
        self._held = (0, 0)

    async def settle(self) -> None:
        """Wait for the oldest group's acknowledgement; count it, or its failure."""
        task, size, held, digests = self._closed.popleft()
        self.events -= size
        try:
            metrics.PRODUCE_SECONDS.observe(await task)
            metrics.BATCH_EVENTS.observe(size)
            metrics.EVENTS_ACCEPTED.inc(size)
            self._response.accepted += size
            self._ids.acknowledged(digests)
        except KafkaDeliveryError as exc:
            metrics.DELIVERY_FAILURES.inc()
            self.failures.append(str(exc))
        finally:
            self._guard.release(*held)

    async def close(self) -> None:
        """Close the open group and wait for every acknowledgement."""
        self._close_open()
        while self._closed:
            await self.settle()


class IngestCore:
    """Validate, produce to Kafka, count; and read metrics. Stateless apart from its adapters.

    With a `tracer`, each group of records produced together (a `Delivery`) is a
    PRODUCER span, a child of the current span (the call's), and its records carry the
    span's W3C `traceparent` in their Kafka headers.

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
        guard: Guard | None = None,
    ) -> None:
        self.guard = guard or Guard(None, InFlight(NO_GUARD_LIMIT, NO_GUARD_LIMIT))
        self._producer = producer
        self._recent = recent
        self._tracer = tracer
        self._reader = reader
        self.limits = limits
        self.max_batch_events = max_batch_events
        self._clock_ms = clock_ms

    async def ingest(
        self,
        batches: AsyncIterator[Sequence[pb.RawEvent]],
        *,
        method: str,
        peer: str,
        caller: Caller | None = None,
    ) -> IngestOutcome:
        """Validate and produce every batch; the outcome once Kafka answered for all.

        `method` and `peer` name the call in logs. `caller` is the call's token (None:
        authentication is off): its rate limit counts each batch, and its write
        prefixes decide per event (PERMISSION_DENIED rejections). A `BadMessageError`
        raised by `batches` ends the call with INVALID_ARGUMENT, a rate limit or the
        edge's in-flight bound with RESOURCE_EXHAUSTED, Kafka failing with
        UNAVAILABLE. Either way the events acknowledged before it are counted in the
        response.
        """
        response = pb.IngestResponse()
        ids = _CallIds(self._recent)
        sent = _Deliveries(response, ids, self.guard, self._open_delivery)
        index = 0
        bad: BadMessageError | RefusedError | None = None
        try:
            async for events in batches:
                self.guard.take_rate(caller, len(events))
                records, size = self._validate(events, index, response, ids, caller)
                index += len(events)
                if records:
                    await sent.add(records, size)
                while sent.events > MAX_INFLIGHT_EVENTS:
                    await sent.settle()
                if sent.failures:
                    break  # Kafka is failing: stop taking events, report what was acknowledged
        except (BadMessageError, RefusedError) as exc:
            bad = exc
        finally:
            await sent.close()
        return IngestOutcome(response, _failure(method, peer, response, index, bad, sent.failures))

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
        ids: _CallIds,
        caller: Caller | None,
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """Check each event; admit the valid ones into the edge's in-flight bound (or
        raise RefusedError, changing nothing); record rejections and duplicates in the
        response; return the Kafka records to write and their bytes."""
        now = self._clock_ms()
        limits = self.limits
        records: list[tuple[bytes, bytes]] = []
        digests: list[bytes] = []
        rejected: list[tuple[int, pb.RawEvent, Reason, str]] = []
        max_bytes = limits.max_event_bytes
        size = 0
        for offset, event in enumerate(events):
            problem = check_event(event, now, limits)
            if problem is None and caller is not None and not caller.may_write(event.campaign_id):
                problem = (
                    Reason.PERMISSION_DENIED,
                    f"token {caller.name!r} may not write campaign {event.campaign_id!r}",
                )
            if problem is None:
                value = event.SerializeToString()
                if len(value) <= max_bytes:
                    records.append((event.campaign_id.encode(), value))
                    size += len(value)
                    if ids.enabled:
                        digests.append(event_digest(event.campaign_id, event.event_id))
                    continue
                problem = (
                    Reason.FIELD_TOO_LONG,
                    f"event is {len(value)} bytes serialized, limit {max_bytes} "
                    "(unknown fields count too)",
                )
            rejected.append((offset, event, *problem))
        if records:
            self.guard.admit(len(records), size)  # before anything of this batch is recorded
        for offset, event, reason, detail in rejected:
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
            fresh, duplicates = ids.new(records, digests)
            response.duplicates += duplicates
            metrics.DUPLICATES.inc(duplicates)
            if duplicates:  # not sent: give their share of the bound back
                kept = sum(len(value) for _key, value in fresh)
                self.guard.release(len(records) - len(fresh), size - kept)
                records, size = fresh, kept
        return records, size

    def points(self, query: MetricsQuery) -> AsyncIterator[MetricPointRow]:
        """The query's points from the store (raises SinkError, which is UNAVAILABLE:
        tell the client `STORE_UNAVAILABLE`, never the store's own message)."""
        return self._reader.query(query)


STORE_UNAVAILABLE = "the metrics store is unavailable"


def _failure(  # noqa: PLR0917
    method: str,
    peer: str,
    response: pb.IngestResponse,
    received: int,
    bad: BadMessageError | RefusedError | None,
    failures: list[str],
) -> Failure | None:
    """INVALID_ARGUMENT (a batch over the limit, a malformed message), RESOURCE_EXHAUSTED
    (a rate limit, the in-flight bound) or UNAVAILABLE (Kafka did not acknowledge
    everything), saying how many events were accepted."""
    if bad is not None:
        accepted = f"the {response.accepted} events before it were accepted"
        if isinstance(bad, RefusedError):
            return Failure(Code.RESOURCE_EXHAUSTED, f"{bad}; {accepted}", bad.retry_after_ms)
        return Failure(Code.INVALID_ARGUMENT, f"{bad}; {accepted}")
    if failures:
        valid = received - response.dropped - response.duplicates  # those sent to Kafka
        log_call_error(
            method,
            peer,
            f"UNAVAILABLE, {response.accepted} of {valid} valid events acknowledged: {failures[0]}",
        )
        return Failure(
            Code.UNAVAILABLE,
            f"Kafka did not acknowledge all events ({response.accepted} of {valid} valid "
            f"events were acknowledged): {failures[0]}",
        )
    return None
