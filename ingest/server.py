"""Composition root of the ingest edge: settings -> Kafka producer, TimescaleDB reader -> gRPC."""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.health import CheckResult
from pulse.settings import IngestSettings
from pulse.timeutil import now_ms
from query.metrics import TimescaleMetricsReader
from runtime import otel
from runtime.health import HealthServer, kafka_check, postgres_check
from runtime.kafka_access import check_access
from runtime.logs import configure, log_config

from .heartbeat import HeartbeatWriter, edge_source
from .interceptors import MetricsInterceptor
from .messages import add_service
from .producer import KafkaEventProducer
from .recent_ids import RecentIds
from .servicer import AnalyticsServicer

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


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("heartbeats stopped", exc_info=task.exception())


async def serve(settings: IngestSettings) -> None:
    """Run the gRPC server until SIGINT/SIGTERM, then drain and close."""
    started = time.monotonic()
    security = settings.kafka_security()
    await asyncio.to_thread(check_access, settings.kafka_bootstrap, security)
    tracing = otel.setup(otel.INGEST_SERVICE)  # off unless an OTLP endpoint is set
    producer = KafkaEventProducer(
        settings.kafka_bootstrap,
        settings.topic_raw,
        settings.produce_timeout_seconds,
        security=security,
    )
    reader = TimescaleMetricsReader(settings.pg_dsn.get_secret_value())
    await reader.open()
    servicer = AnalyticsServicer(
        producer,
        reader,
        settings.limits(),
        settings.max_batch_events,
        now_ms,
        tracer=tracing.tracer,
        recent=recent_ids(settings),
    )
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(tracing.tracer)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
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
    server.add_insecure_port(address)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.grpc_host)
    check_kafka = kafka_check(producer.raw_producer, settings.topic_raw)
    health_server = None
    if settings.health_port:
        checks = {
            "kafka": check_kafka,
            "postgres": postgres_check(settings.pg_dsn.get_secret_value()),
        }
        health_server = HealthServer(
            settings.health_host, settings.health_port, checks, started=started
        ).start()
    await server.start()
    watcher = asyncio.create_task(_watch_health(check_kafka, health_servicer))
    heartbeats = None
    if settings.heartbeat_interval_seconds > 0:
        heartbeats = HeartbeatWriter(
            producer.raw_producer,
            settings.topic_raw,
            edge_source(settings.grpc_port),
            settings.heartbeat_interval_seconds,
        )
        heartbeat_task = asyncio.create_task(heartbeats.run(), name="heartbeats")
        heartbeat_task.add_done_callback(_report_crash)
    log.info(
        "ingest edge listening on %s (metrics on :%s), producing to %s at %s",
        address,
        settings.metrics_port,
        settings.topic_raw,
        settings.kafka_bootstrap,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls")
    watcher.cancel()
    await server.stop(grace=10)
    if heartbeats is not None:  # after the drain, before the producer's final flush
        heartbeats.stop()
        with contextlib.suppress(Exception):  # a crash was logged when it happened
            await heartbeat_task
    await asyncio.to_thread(producer.close)
    await reader.close()
    if health_server is not None:
        health_server.close()
    await asyncio.to_thread(tracing.shutdown)  # the last spans, bounded by a timeout


def run(settings: IngestSettings) -> None:
    """The edge process: logging in the configured format, the config line, then `serve`."""
    configure(settings.log_level, settings.log_format)
    log_config(logging.getLogger("pulse.serve"), settings)
    asyncio.run(serve(settings))
