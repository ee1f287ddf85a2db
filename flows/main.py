"""Composition root of the dataflow worker: settings -> Kafka source, sinks, rules -> flow.

`start_worker` is the one builder: `pulse flow` (and so the container) runs it through
`run`, and a Bytewax cluster started by hand through `get_flow`:
`python -m bytewax.run "flows.main:get_flow()" -w 1 -i 0 -a "host0:2101;host1:2101"`
(with `-r DIR -s SECONDS -b SECONDS` for recovery).
"""

import atexit
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from opentelemetry.trace import Tracer

from pulse import settings as settings_mod
from pulse.alerts.rules import Rule, load_rules
from pulse.errors import ConfigError, PulseError
from pulse.settings import FlowSettings
from runtime import otel
from runtime.health import HealthServer, kafka_admin, kafka_check, postgres_check
from runtime.kafka_access import check_access
from runtime.logs import configure, log_config
from runtime.metrics_http import MetricsServer
from sinks.kafka_outputs import NotificationSink, SideOutputSink
from sinks.timescale_writer import TimescaleSink

from . import metrics
from .aggregate import FlowConfig, build_flow
from .kafka_source import MessageKafkaSource
from .memory import collect_less, map_large_arrays
from .metered_sink import MeteredSink

log = logging.getLogger(__name__)


def _rules(s: FlowSettings) -> tuple[Rule, ...]:
    return load_rules(s.alert_rules, s.window_seconds * 1000) if s.alert_rules else ()


def flow_from_settings(s: FlowSettings, tracer: Tracer | None = None) -> Dataflow:
    map_large_arrays()  # freed id-memory arrays leave the resident set
    collect_less()  # the state is millions of small containers the collector traverses
    brokers = s.kafka_bootstrap.split(",")
    security = s.kafka_security()
    source = MessageKafkaSource(
        brokers,
        [s.topic_raw],
        tail=s.tail,
        starting_offset=OFFSET_BEGINNING if s.starting_offset == "beginning" else OFFSET_END,
        add_config=security or None,
        batch_size=s.kafka_batch_size,
    )
    config = FlowConfig(
        window_ms=s.window_seconds * 1000,
        lateness_ms=s.allowed_lateness_seconds * 1000,
        idle_ms=s.idle_timeout_seconds * 1000,
        source_topic=s.topic_raw,
        late_topic=s.topic_late,
        dlq_topic=s.topic_dlq,
        rules=_rules(s),
        refresh_ms=s.refresh_interval_seconds * 1000,
        rollup_refresh_ms=s.rollup_refresh_interval_seconds * 1000,
        correction_ms=s.correction_horizon_ms,
        dedup_s=s.dedup_horizon_seconds,
        group_by=s.dimension_sets,
        max_campaigns=s.max_campaigns_per_day,
        shed_topic=s.topic_shed,
    )

    def written(table: str, rows: int) -> None:
        metrics.ROWS_WRITTEN.labels(table).inc(rows)

    def retried() -> None:
        metrics.SINK_ERRORS.labels("timescale").inc()

    store = MeteredSink(
        TimescaleSink(
            s.pg_dsn.get_secret_value(),
            s.topic_raw,
            on_written=written,
            on_retry=retried,
            tracer=tracer,
        ),
        "timescale",
    )
    side_topics = [s.topic_late, s.topic_dlq, s.topic_shed]
    side = MeteredSink(SideOutputSink(s.kafka_bootstrap, side_topics, security=security), "side")
    notifications = MeteredSink(
        NotificationSink(s.kafka_bootstrap, s.topic_notifications, security=security),
        "notifications",
    )
    return build_flow(
        "pulse_aggregate",
        config,
        source,  # type: ignore[arg-type]
        store_sink=store,
        side_sink=side,
        notification_sink=notifications,
        tracer=tracer,
    )


def start_metrics(s: FlowSettings) -> MetricsServer | None:
    """/metrics of our registry on PULSE_METRICS_HOST:PULSE_METRICS_PORT; None if disabled.

    Served by the process itself, not by Bytewax's API, which binds every address.
    """
    if not s.metrics_port:
        return None
    return MetricsServer(s.metrics_host, s.metrics_port)


def enable_bytewax_api(s: FlowSettings) -> None:
    """Bytewax's own API server on PULSE_BYTEWAX_API_PORT, if set: /dataflow, and /metrics
    with Bytewax's step metrics (kept in Rust, outside our registry) beside ours.

    Bytewax binds it on every address from a thread whose failure leaves the dataflow
    running without it; a port already taken stops the process here instead.
    """
    port = s.bytewax_api_port
    if not port:
        return
    os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
    os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 (where Bytewax binds it)
        except OSError as exc:
            msg = f"PULSE_BYTEWAX_API_PORT {port} cannot be bound: {exc.strerror}"
            raise ConfigError(msg) from None
    log.info("Bytewax's API on port %d of every address (PULSE_BYTEWAX_API_PORT)", port)


def recovery(s: FlowSettings) -> RecoveryConfig | None:
    """The recovery store; None without one.

    Bytewax finds each partition in the local directory of the process that holds it;
    every partition must exist exactly once in the cluster. So only process 0 creates
    them, all of them, on its first start (the others start with an empty directory),
    and process 0 exists in a cluster of any size: stop-and-start with another process
    count resumes from the same partitions.
    """
    if not s.recovery_dir:
        return None
    path = Path(s.recovery_dir)
    path.mkdir(parents=True, exist_ok=True)
    existing = sorted(path.glob("part-*.sqlite3"))
    clustered = len(s.addresses) > 1
    if not existing and s.cluster_process_id == 0:
        init_db_dir(path, s.recovery_partitions)  # type: ignore[no-untyped-call]
        log.info("created recovery store %s with %d partitions", path, s.recovery_partitions)
    elif existing and not clustered and len(existing) != s.recovery_partitions:
        msg = (
            f"recovery store {path} has {len(existing)} partitions but "
            f"PULSE_RECOVERY_PARTITIONS={s.recovery_partitions}; the count is fixed at creation"
        )
        raise ConfigError(msg)
    backup = timedelta(seconds=s.backup_interval_seconds)
    return RecoveryConfig(path, backup)  # type: ignore[no-untyped-call]


def start_health(s: FlowSettings, started: float) -> HealthServer | None:
    """/healthz and /readyz (Kafka, TimescaleDB) from daemon threads; None if disabled."""
    if not s.health_port:
        return None
    checks = {
        "kafka": kafka_check(kafka_admin(s.kafka_bootstrap, s.kafka_security()), s.topic_raw),
        "postgres": postgres_check(s.pg_dsn.get_secret_value()),
    }
    return HealthServer(s.health_host, s.health_port, checks, started=started).start()


def _pulse_error(exc: BaseException) -> PulseError | None:
    """The PulseError a Bytewax error was raised from, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PulseError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True, slots=True)
class Worker:
    """A started dataflow process, before its workers run: the flow and what `close` stops."""

    flow: Dataflow
    tracing: otel.Tracing
    health_server: HealthServer | None
    metrics_server: MetricsServer | None

    def close(self) -> None:
        """Stop the health and metrics endpoints and export the last spans (bounded by a
        timeout)."""
        if self.health_server is not None:
            self.health_server.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.tracing.shutdown()


def start_worker(s: FlowSettings) -> Worker:
    """Everything a dataflow process does before its workers run, however it was started.

    Configures logging, logs the effective config and the start-up warnings, sets up
    tracing, builds the flow, starts /metrics, enables Bytewax's API if asked, and starts
    the health endpoints.
    SIGTERM (Kubernetes, podman stop) stops the workers as SIGINT does: without a
    handler, Python ignores it as a container's process 1.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    configure(s.log_level, s.log_format)
    startup = logging.getLogger("pulse.flow")
    log_config(startup, s)
    if s.starting_offset == "end" and not s.recovery_dir:
        startup.warning(
            "PULSE_STARTING_OFFSET=end: without a recovery store, events produced while the "
            "dataflow is down are never counted"
        )
    check_access(s.kafka_bootstrap, s.kafka_security())  # a refused login stops it here
    tracing = otel.setup(otel.FLOW_SERVICE)  # off unless an OTLP endpoint is set
    flow = flow_from_settings(s, tracing.tracer)
    metrics_server = start_metrics(s)
    enable_bytewax_api(s)
    return Worker(flow, tracing, start_health(s, started), metrics_server)


def get_flow() -> Dataflow:
    """Entry point for `python -m bytewax.run "flows.main:get_flow()"`: settings from the
    environment, the cluster and recovery from Bytewax's own arguments."""
    worker = start_worker(settings_mod.load(FlowSettings))
    atexit.register(worker.close)
    return worker.flow


def run(s: FlowSettings) -> None:
    """Run this process's workers until the input ends or the process is stopped."""
    worker = start_worker(s)
    try:
        cli_main(  # type: ignore[no-untyped-call]
            worker.flow,
            workers_per_process=s.workers,
            process_id=s.cluster_process_id if s.addresses else None,
            addresses=s.addresses or None,
            epoch_interval=timedelta(seconds=s.snapshot_interval_seconds),
            recovery_config=recovery(s),
        )
    except Exception as exc:
        cause = _pulse_error(exc)
        if cause is not None:  # ours: the message says what and where, in one line
            log.error("dataflow stopped: %s", cause)
        else:  # logged once, in the configured format, with its traceback
            log.exception("dataflow stopped: %s", exc)
        raise SystemExit(1) from None
    finally:
        worker.close()
