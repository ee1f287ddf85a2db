"""Prometheus metrics of the ingest edge (names follow Prometheus conventions)."""

from prometheus_client import Counter, Histogram

EVENTS_RECEIVED = Counter("pulse_ingest_events_received_total", "Events received over gRPC")
EVENTS_ACCEPTED = Counter(
    "pulse_ingest_events_accepted_total", "Events acknowledged by Kafka and reported accepted"
)
EVENTS_REJECTED = Counter(
    "pulse_ingest_events_rejected_total", "Events rejected by validation", ["reason"]
)
DELIVERY_FAILURES = Counter(
    "pulse_ingest_delivery_failures_total", "Batches Kafka did not acknowledge"
)
BATCH_EVENTS = Histogram(
    "pulse_ingest_batch_events",
    "Events per produced batch",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000),
)
PRODUCE_SECONDS = Histogram(
    "pulse_ingest_produce_duration_seconds",
    "Time from producing a batch to Kafka's acknowledgement of all of it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HEARTBEATS = Counter(
    "pulse_ingest_heartbeats_total", "Heartbeat records acknowledged by Kafka (one per partition)"
)
HEARTBEAT_FAILURES = Counter(
    "pulse_ingest_heartbeat_failures_total",
    "Heartbeat records Kafka refused or did not acknowledge, and failed partition lookups",
)
