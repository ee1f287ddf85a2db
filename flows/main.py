"""Composition root of the dataflow worker: settings -> Kafka source, sinks -> flow.

Run with `pulse flow`, or as a Bytewax cluster:
`python -m bytewax.run "flows.main:get_flow()" -w 1 -i 0 -a "host0:2101;host1:2101"`.
"""

import os

from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from pulse import settings as settings_mod
from pulse.settings import FlowSettings
from sinks.timescale_writer import TimescaleMetricsSink

from . import metrics
from .aggregate import FlowConfig, build_flow
from .kafka_source import MessageKafkaSource


def flow_from_settings(s: FlowSettings) -> Dataflow:
    brokers = s.kafka_bootstrap.split(",")
    source = MessageKafkaSource(
        brokers,
        [s.topic_raw],
        tail=s.tail,
        starting_offset=OFFSET_BEGINNING if s.starting_offset == "beginning" else OFFSET_END,
        batch_size=s.kafka_batch_size,
    )
    config = FlowConfig(
        window_ms=s.window_seconds * 1000,
        lateness_ms=s.allowed_lateness_seconds * 1000,
        source_topic=s.topic_raw,
        late_topic=s.topic_late,
        dlq_topic=s.topic_dlq,
    )
    metrics_sink = TimescaleMetricsSink(
        s.pg_dsn.get_secret_value(), on_written=metrics.ROWS_WRITTEN.inc
    )
    kafka_sink = KafkaSink(
        brokers, topic=None, add_config={"enable.idempotence": "true", "acks": "all"}
    )
    return build_flow("pulse_aggregate", config, source, metrics_sink, kafka_sink)  # type: ignore[arg-type]


def get_flow() -> Dataflow:
    """Entry point for `python -m bytewax.run "flows.main:get_flow()"`."""
    return flow_from_settings(settings_mod.load(FlowSettings))


def enable_api(s: FlowSettings) -> None:
    """Bytewax serves /metrics (ours included) and /dataflow on the API port."""
    os.environ.setdefault("BYTEWAX_DATAFLOW_API_ENABLED", "1")
    os.environ.setdefault("BYTEWAX_DATAFLOW_API_PORT", str(s.api_port))
