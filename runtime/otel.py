"""OpenTelemetry tracing: setup from the standard `OTEL_*` variables, and W3C propagation.

Tracing is on only when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not `true`. Otherwise
`setup()` returns a `Tracing` whose `tracer` is None, and every component that takes a
tracer does no tracing work at all (it checks for None once per batch or call).

Spans are exported over OTLP/HTTP by a `BatchSpanProcessor`: a bounded queue
(`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 spans; more are dropped) drained by a background
thread, so a slow or missing collector never holds up the process; failed exports are
logged by the SDK (repeats suppressed). The sampler comes from `OTEL_TRACES_SAMPLER` /
`OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on), the service name from
`OTEL_SERVICE_NAME` (default: the caller's, e.g. `pulse-ingest`).

The propagation helpers move a span context in W3C Trace Context form (`traceparent`,
and `tracestate` when set) through gRPC metadata and Kafka record headers.
"""

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pulse.headers import TRACEPARENT, TRACESTATE

log = logging.getLogger(__name__)

INGEST_SERVICE = "pulse-ingest"
FLOW_SERVICE = "pulse-flow"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SHUTDOWN_TIMEOUT_S = 5.0

KafkaHeaders = list[tuple[str, str | bytes | None]]  # as confluent-kafka takes them

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Tracing:
    """The process's tracer (None: tracing is off) and the provider `shutdown()` stops."""

    tracer: Tracer | None = None
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export the spans still queued and stop; gives up after `timeout_s` (a collector
        that does not answer would otherwise hold the exit up for the exporter's retries)."""
        if self.provider is None:
            return
        stopping = threading.Thread(target=self.provider.shutdown, name="otel-shutdown")
        stopping.daemon = True
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():
            log.warning("tracing: spans not exported within %.0f s of shutdown dropped", timeout_s)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def endpoint_configured() -> bool:
    """Whether an OTLP endpoint for traces is set (and the SDK not disabled)."""
    if _flag("OTEL_SDK_DISABLED"):
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARS)


def setup(default_service_name: str, exporter: SpanExporter | None = None) -> Tracing:
    """Tracing for one process, from the `OTEL_*` environment (see the module doc).

    `exporter` (tests) replaces the OTLP exporter and exports each span synchronously
    as it ends; tracing is then on even without an endpoint (unless the SDK is disabled).
    """
    if _flag("OTEL_SDK_DISABLED") or (exporter is None and not endpoint_configured()):
        return Tracing()
    processor: SpanProcessor
    if exporter is None:
        # Imported here: without an endpoint the exporter (and `requests`) is never loaded.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = Resource.create({SERVICE_NAME: default_service_name})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("pulse")
    if exporter is None:
        endpoint = next(os.environ[n] for n in ENDPOINT_VARS if os.environ.get(n, "").strip())
        log.info(
            "tracing: exporting spans of %s over OTLP/HTTP to %s",
            resource.attributes.get(SERVICE_NAME),
            endpoint,
        )
    return Tracing(tracer, provider)


# --- gRPC metadata ---------------------------------------------------------------------


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC invocation metadata (empty if it sent none)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in (TRACEPARENT, TRACESTATE):
            carrier[key] = value.decode() if isinstance(value, bytes) else value
    if not carrier:
        return Context()
    return _PROPAGATOR.extract(carrier, context=Context())


def metadata_for(span: Span) -> list[tuple[str, str]]:
    """gRPC metadata that continues `span`'s trace (for clients)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, Context()))
    return list(carrier.items())


# --- Kafka headers ---------------------------------------------------------------------


def kafka_headers(span: Span) -> KafkaHeaders:
    """Kafka record headers naming `span` as the producer of the records (W3C form)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, Context()))
    return [(key, value.encode()) for key, value in carrier.items()]


def traceparent_of(headers: Sequence[tuple[str, str | bytes | None]] | None) -> bytes | None:
    """The `traceparent` value of a Kafka record's headers, if any."""
    for key, value in headers or ():
        if key == TRACEPARENT and value:
            return value if isinstance(value, bytes) else value.encode()
    return None


def span_context_of(traceparent: bytes | str) -> SpanContext | None:
    """The (remote) span context a `traceparent` value names; None if it is invalid."""
    value = traceparent if isinstance(traceparent, str) else traceparent.decode("ascii", "replace")
    ctx = _PROPAGATOR.extract({TRACEPARENT: value}, context=Context())
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def context_from_kafka_headers(
    headers: Sequence[tuple[str, str | bytes | None]] | None,
) -> Context:
    """The producer's trace context from Kafka record headers (empty if none)."""
    carrier = {
        key: value if isinstance(value, str) else value.decode("ascii", "replace")
        for key, value in headers or ()
        if key in (TRACEPARENT, TRACESTATE) and value
    }
    return _PROPAGATOR.extract(carrier, context=Context()) if carrier else Context()


def links_to(traceparents: Iterable[bytes]) -> list[Link]:
    """Links to the spans that produced records (their `traceparent` header values)."""
    links = []
    for value in traceparents:
        span_context = span_context_of(value)
        if span_context is not None:
            links.append(Link(span_context))
    return links


# --- span marks: a processing span's context, carried next to the rows it produced ------


@dataclass(frozen=True, slots=True)
class SpanMark:
    """The context of a span that produced the items around it in a stream (picklable).

    The dataflow emits one after the rows of a traced processing step; the TimescaleDB
    sink writes no SQL for it and links its write span to it.
    """

    trace_id: int
    span_id: int
    trace_flags: int

    @staticmethod
    def of(span: Span) -> "SpanMark":
        ctx = span.get_span_context()
        return SpanMark(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))

    def link(self) -> Link:
        flags = TraceFlags(self.trace_flags)
        return Link(SpanContext(self.trace_id, self.span_id, is_remote=True, trace_flags=flags))


def attach(span: Span, parent: Context) -> object:
    """Make `span` current (its children follow it); returns the token for `detach`."""
    return otel_context.attach(trace.set_span_in_context(span, parent))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
