"""Prometheus metrics of the dataflow, in prometheus_client's default registry.

The process serves that registry itself (`runtime/metrics_http.py`, on
`PULSE_METRICS_HOST:PULSE_METRICS_PORT`): these, and `bytewax_kafka_consumer_lag` (per
partition, from librdkafka's statistics in `flows/kafka_source.py`). Bytewax's API, when
`PULSE_BYTEWAX_API_PORT` enables it, serves them too, beside Bytewax's own. Labels are
low-cardinality: Kafka partitions, tables, sinks, alert rules, configured dimension
names; never campaign ids or dimension values.
"""

import time

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PROCESSED = Counter(
    "pulse_flow_events_processed_total", "Events folded into open windows (on time)"
)
CORRECTED_EVENTS = Counter(
    "pulse_flow_corrected_events_total",
    "Late events folded into their closed windows (within the correction horizon)",
)
LATE_EVENTS = Counter(
    "pulse_flow_late_events_total",
    "Events behind the watermark beyond the correction horizon, sent to the late topic",
)
DUPLICATES = Counter(
    "pulse_flow_duplicate_events_total",
    "Events dropped as retries of an event with the same campaign and event id "
    "(restored from the recovery state on restart)",
    ["partition"],
)
DEAD_LETTERS = Counter("pulse_flow_dead_letters_total", "Records sent to the dead-letter topic")
CONSUMER_ERRORS = Counter("pulse_flow_consumer_errors_total", "Kafka consumer errors (not records)")
WINDOWS_CLOSED = Counter("pulse_flow_windows_closed_total", "Windows the watermark passed")
SHED_EVENTS = Counter(
    "pulse_flow_shed_events_total",
    "Events of campaigns past PULSE_MAX_CAMPAIGNS_PER_DAY, not aggregated but written to "
    "the shed topic",
)
DIMENSION_OVERFLOW = Counter(
    "pulse_flow_dimension_overflow_total",
    "Slice values counted under __other__: past the distinct values limit of their "
    "dimension, or too long, or holding control characters",
    ["dimension"],
)
ALERTS = Counter("pulse_flow_alerts_total", "Alert transitions emitted", ["rule", "state"])
ROWS_WRITTEN = Counter(
    "pulse_flow_sink_rows_written_total", "Rows written to TimescaleDB", ["table"]
)
WATERMARK_LAG = Gauge(
    "pulse_flow_watermark_lag_seconds",
    "Wall clock minus the most advanced campaign watermark of the Kafka partition",
    ["partition"],
)
SINK_SECONDS = Histogram(
    "pulse_flow_sink_batch_duration_seconds",
    "Time to write one batch to a sink (retries included)",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_ERRORS = Counter(
    "pulse_flow_sink_errors_total",
    "Failed sink writes (TimescaleDB attempts that are retried included)",
    ["sink"],
)

SINKS = ("timescale", "side", "notifications")
for _sink in SINKS:  # exposed from the start, at 0
    SINK_ERRORS.labels(_sink)

_watermarks: dict[str, float] = {}  # partition -> watermark, Unix seconds


def set_watermark(partition: int, watermark_s: float) -> None:
    """Record a partition's watermark; its lag is computed when scraped.

    Computing at scrape time keeps the lag honest when the flow stalls: it grows
    with the wall clock even while no batch arrives.
    """
    key = str(partition)
    known = key in _watermarks
    _watermarks[key] = watermark_s
    if not known:
        WATERMARK_LAG.labels(key).set_function(lambda: time.time() - _watermarks[key])
