"""Prometheus metrics of the ingest edge (names follow Prometheus conventions).

Served on `PULSE_METRICS_PORT` by prometheus_client. Labels are low-cardinality:
rejection reasons, registered gRPC methods with their status codes, the HTTP
gateway's routes with their statuses; never campaign ids.
"""

from prometheus_client import Counter, Gauge, Histogram

from pulse.validation import Reason

EVENTS_RECEIVED = Counter("pulse_ingest_events_received_total", "Events received (gRPC and HTTP)")
EVENTS_ACCEPTED = Counter(
    "pulse_ingest_events_accepted_total", "Events acknowledged by Kafka and reported accepted"
)
EVENTS_REJECTED = Counter(
    "pulse_ingest_events_rejected_total", "Events rejected by validation", ["reason"]
)
DUPLICATES = Counter(
    "pulse_ingest_duplicate_events_total",
    "Events not written because this edge had Kafka acknowledge them before (retries)",
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

# Authentication and admission (ingest/guard.py, ingest/tokens.py), by reason, never by token.
REFUSED_CALLS = Counter(
    "pulse_ingest_refused_calls_total",
    "Calls (or the rest of a stream) refused: unauthenticated, permission_denied (a query "
    "outside the token's prefixes), rate_limited, overloaded",
    ["reason"],
)
REFUSED_EVENTS = Counter(
    "pulse_ingest_refused_events_total",
    "Events in messages refused by a rate limit or the in-flight bound",
    ["reason"],
)
INFLIGHT_EVENTS = Gauge(
    "pulse_ingest_inflight_events", "Events admitted and not yet acknowledged by Kafka"
)
INFLIGHT_BYTES = Gauge(
    "pulse_ingest_inflight_bytes", "Bytes of events admitted and not yet acknowledged by Kafka"
)
TOKENS = Gauge("pulse_ingest_tokens", "Tokens in force (from PULSE_TOKENS_FILE)")
TOKEN_RELOADS = Counter(
    "pulse_ingest_token_reloads_total",
    "Changed tokens files read after the start: loaded, or failed (the old tokens stay)",
    ["result"],
)

# Per gRPC call (ingest/interceptors.py); `method` is a registered method's full name.
GRPC_INFLIGHT = Gauge(
    "pulse_ingest_grpc_inflight_requests", "gRPC calls being handled now", ["method"]
)
GRPC_HANDLED = Counter(
    "pulse_ingest_grpc_handled_total", "gRPC calls completed, by status code", ["method", "code"]
)
GRPC_SECONDS = Histogram(
    "pulse_ingest_grpc_request_duration_seconds",
    "Time from the start of a gRPC call to its status (streaming calls included)",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

# Per HTTP request of the gateway (ingest/gateway.py); `route` is one of its fixed paths.
HTTP_HANDLED = Counter(
    "pulse_ingest_http_handled_total", "HTTP requests answered, by status", ["route", "status"]
)
HTTP_REFUSED_HEADS = Counter(
    "pulse_ingest_http_refused_heads_total",
    "HTTP connections closed before routing: request head too large (431) or too slow (408)",
    ["reason"],
)
HTTP_SECONDS = Histogram(
    "pulse_ingest_http_request_duration_seconds",
    "Time from an HTTP request's routing to its response (to the first byte when streamed)",
    ["route"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

for _reason in Reason:  # every reason is exposed from the start, at 0
    EVENTS_REJECTED.labels(_reason.name.lower())
for _refusal in ("unauthenticated", "permission_denied", "rate_limited", "overloaded"):
    REFUSED_CALLS.labels(_refusal)
for _refusal in ("rate_limited", "overloaded"):
    REFUSED_EVENTS.labels(_refusal)
for _refusal in ("too_large", "timeout"):
    HTTP_REFUSED_HEADS.labels(_refusal)
for _result in ("loaded", "failed"):
    TOKEN_RELOADS.labels(_result)
