"""Composition root of the ingest edge: settings -> Kafka producer, TimescaleDB reader ->
gRPC and the HTTP/JSON gateway (one core, one event loop)."""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.admission import InFlight
from pulse.health import CheckResult
from pulse.settings import IngestSettings
from pulse.timeutil import now_ms
from query.metrics import TimescaleMetricsReader
from runtime import otel
from runtime.health import Check, HealthServer, Probes, kafka_check, postgres_check
from runtime.kafka_access import check_access
from runtime.logs import configure, log_config
from runtime.metrics_http import MetricsServer

from .core import IngestCore
from .gateway import Gateway, GatewayServer, bind
from .guard import Guard
from .heartbeat import HeartbeatWriter, edge_source
from .interceptors import MetricsInterceptor
from .messages import add_service
from .producer import KafkaEventProducer
from .recent_ids import RecentIds
from .servicer import AnalyticsServicer
from .tls import TlsFiles
from .tokens import TokenFile

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
HEALTH_INTERVAL_S = 5.0


def recent_ids(settings: IngestSettings) -> RecentIds | None:
    """The edge's memory of acknowledged ids, or None when dedup or the memory is off."""
    if not (settings.dedup_horizon_seconds and settings.edge_dedup_ids):
        return None
    return RecentIds(settings.dedup_horizon_seconds, settings.edge_dedup_ids, now_ms)


async def _watch_health(
    check_kafka: Callable[[], CheckResult], health_servicer: health.aio.HealthServicer
) -> None:
    """SERVING while Kafka answers metadata requests (/readyz's Kafka check), else NOT_SERVING.

    Ingest needs Kafka only, so the TimescaleDB check of /readyz does not count here.
    """
    last = None
    while True:
        result = await asyncio.to_thread(check_kafka)
        ok = result.status == "ok"
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        if status != last:
            if ok:
                log.info("health: SERVING")
            else:
                log.warning("health: NOT_SERVING (Kafka: %s)", result.reason)
            await health_servicer.set("", status)
            await health_servicer.set(SERVICE_NAME, status)
            last = status
        await asyncio.sleep(HEALTH_INTERVAL_S)


def security_summary(settings: IngestSettings) -> str:
    """One line on TLS and authentication, warning when an edge open to the network has
    neither."""
    transport = "plaintext"
    if settings.tls_cert_file:
        transport = "mutual TLS" if settings.tls_client_ca_file else "TLS"
    auth = "bearer tokens" if settings.tokens_file else "no authentication"
    summary = f"{transport}, {auth}"
    loopback = settings.grpc_host in ("127.0.0.1", "::1", "localhost")
    if not loopback and not (settings.tls_cert_file and settings.tokens_file):
        summary += " (WARNING: listening beyond loopback; see the README's Security section)"
    return summary


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("heartbeats stopped", exc_info=task.exception())


def _http_listeners(
    settings: IngestSettings,
    core: IngestCore,
    check_kafka: Check,
    started: float,
    tls: TlsFiles | None,
) -> tuple[Probes, HealthServer | None, GatewayServer | None]:
    """The readiness probes, the health server (started) and the HTTP gateway (bound,
    not started), each unless its port is 0. Both give the same health answers."""
    checks = {"kafka": check_kafka, "postgres": postgres_check(settings.pg_dsn.get_secret_value())}
    probes = Probes(checks, started=started)
    health_server = None
    if settings.health_port:
        health_server = HealthServer(settings.health_host, settings.health_port, probes).start()
    gateway = None
    if settings.http_port:
        app = Gateway(core, max_body_bytes=settings.http_max_body_bytes, probes=probes).app()
        gateway = GatewayServer(
            app,
            bind(settings.http_host, settings.http_port),
            tls=tls,
            max_head_bytes=settings.http_max_head_bytes,
            head_timeout_s=settings.http_head_timeout_seconds,
        )
    return probes, health_server, gateway


async def grpc_server(
    settings: IngestSettings,
    servicer: AnalyticsServicer,
    tracer: Tracer | None,
    tls: TlsFiles | None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server: the service, health (NOT_SERVING until Kafka answers) and
    reflection, on PULSE_GRPC_HOST:PULSE_GRPC_PORT, with TLS when configured. Health and
    reflection need no token."""
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(tracer)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Without it gRPC takes any number of streams and buffers what each sends
            # before a handler sees it: an open-loop client grew the edge by 300 MB.
            ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ],
    )
    add_service(servicer, server)  # a malformed request gets INVALID_ARGUMENT, not UNKNOWN
    health_servicer = health.aio.HealthServicer()
    for service in ("", SERVICE_NAME):  # grpc_health starts "" as SERVING: not before Kafka answers
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if tls is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, tls.grpc_credentials())
    return server, health_servicer


def _start_heartbeats(
    settings: IngestSettings, producer: KafkaEventProducer
) -> tuple[HeartbeatWriter, asyncio.Task[None]] | None:
    """Heartbeat records into every partition, unless the interval is 0."""
    if settings.heartbeat_interval_seconds <= 0:
        return None
    writer = HeartbeatWriter(
        producer.raw_producer,
        settings.topic_raw,
        edge_source(settings.grpc_port),
        settings.heartbeat_interval_seconds,
    )
    task = asyncio.create_task(writer.run(), name="heartbeats")
    task.add_done_callback(_report_crash)
    return writer, task


def build_guard(settings: IngestSettings) -> tuple[Guard, TokenFile | None]:
    """Tokens (read now: a bad file stops the edge), rate limits and admission bounds."""
    tokens = TokenFile(settings.tokens_file) if settings.tokens_file else None
    inflight = InFlight(settings.max_inflight_events, settings.max_inflight_bytes)
    return Guard(tokens, inflight, settings.max_concurrent_calls), tokens


async def serve(settings: IngestSettings) -> None:
    """Run the gRPC server and the HTTP gateway until SIGINT/SIGTERM, then drain and close."""
    started = time.monotonic()
    # First: a taken port stops the process before it connects to anything.
    metrics_server = None
    if settings.metrics_port:
        metrics_server = MetricsServer(settings.metrics_host, settings.metrics_port)
    security = settings.kafka_security()
    await asyncio.to_thread(check_access, settings.kafka_bootstrap, security)
    tracing = otel.setup(otel.INGEST_SERVICE)  # off unless an OTLP endpoint is set
    producer = KafkaEventProducer(
        settings.kafka_bootstrap,
        settings.topic_raw,
        settings.produce_timeout_seconds,
        security=security,
    )
    tls = TlsFiles.of(settings)  # read and checked now: a wrong file stops the edge here
    guard, tokens = build_guard(settings)
    reader = TimescaleMetricsReader(settings.pg_dsn.get_secret_value())
    await reader.open()
    servicer = AnalyticsServicer(
        IngestCore(
            producer,
            reader,
            settings.limits(),
            settings.max_batch_events,
            now_ms,
            tracer=tracing.tracer,
            recent=recent_ids(settings),
            guard=guard,
        )
    )
    server, health_servicer = await grpc_server(settings, servicer, tracing.tracer, tls)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    check_kafka = kafka_check(producer.raw_producer, settings.topic_raw)
    probes, health_server, gateway = _http_listeners(
        settings, servicer.core, check_kafka, started, tls
    )
    await server.start()
    if gateway is not None:
        gateway.start()
    watcher = asyncio.create_task(_watch_health(check_kafka, health_servicer))
    reloads = None
    if tokens is not None:
        reloads = asyncio.create_task(tokens.watch(settings.tokens_reload_seconds))
    heartbeats = _start_heartbeats(settings, producer)
    log.info(
        "ingest edge listening on %s, producing to %s at %s",
        address,
        settings.topic_raw,
        settings.kafka_bootstrap,
    )
    log.info("edge security: %s", security_summary(settings))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls")
    watcher.cancel()
    if reloads is not None:
        reloads.cancel()
    await asyncio.gather(
        server.stop(grace=10), gateway.stop() if gateway is not None else asyncio.sleep(0)
    )
    if heartbeats is not None:  # after the drain, before the producer's final flush
        writer, task = heartbeats
        writer.stop()
        with contextlib.suppress(Exception):  # a crash was logged when it happened
            await task
    await asyncio.to_thread(producer.close)
    await reader.close()
    if health_server is not None:
        health_server.close()
    probes.close()
    if metrics_server is not None:
        metrics_server.close()
    await asyncio.to_thread(tracing.shutdown)  # the last spans, bounded by a timeout


def run(settings: IngestSettings) -> None:
    """The edge process: logging in the configured format, the config line, then `serve`."""
    configure(settings.log_level, settings.log_format)
    log_config(logging.getLogger("pulse.serve"), settings)
    asyncio.run(serve(settings))
