"""Prometheus metrics of the dataflow, served by Bytewax's API beside its own."""

from prometheus_client import Counter

EVENTS_PROCESSED = Counter("pulse_flow_events_processed_total", "Events folded into windows")
LATE_EVENTS = Counter("pulse_flow_late_events_total", "Events behind the watermark")
DEAD_LETTERS = Counter("pulse_flow_dead_letters_total", "Records sent to the dead-letter topic")
CONSUMER_ERRORS = Counter("pulse_flow_consumer_errors_total", "Kafka consumer errors (not records)")
WINDOWS_CLOSED = Counter("pulse_flow_windows_closed_total", "Windows the watermark passed")
ALERTS = Counter("pulse_flow_alerts_total", "Alert transitions emitted", ["rule", "state"])
ROWS_WRITTEN = Counter(
    "pulse_flow_sink_rows_written_total", "Rows written to TimescaleDB", ["table"]
)
