"""Bytewax sink that stores everything the dataflow emits in TimescaleDB.

Items are window rows (`event_metrics`), late events beyond the correction horizon
(counted in `event_metrics.late_events` through the `late_event_log` ledger), sketch
rollups (`event_sketch_rollups`), late corrections (merged into stored window and rollup
rows, `sinks/timescale_corrections.py`), alert transitions (`alerts`) and, when tracing,
`SpanMark`s of the dataflow's processing spans (no SQL: the batch's write span links to
them). Each batch is written in one transaction of a few statements, one per kind (two
reads and two writes for corrections). Window and rollup rows, the most numerous, go by
binary COPY into a staging table and one merge (`sinks/timescale_metrics.py`,
`sinks/timescale_rollups.py`); the other kinds are each a single round trip over
`unnest()`ed array parameters, sent in binary (the text format escapes every array
element, which cost more than the writes themselves).

Every statement is idempotent, so a replay after a crash (or a retry after a commit
whose acknowledgement was lost) changes nothing:
- a window row replaces the stored one only with a higher `revision`;
- a late event is counted only when its ledger row `(topic, partition, offset, bucket)`
  is new;
- a rollup replaces the stored one only with a higher merged `event_count`;
- a correction merges only the events above the row's `corrected_offset`;
- an alert transition is inserted once.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from psycopg import sql

from pulse.aggregation import LateEvent, MetricRow
from pulse.alerts.model import AlertEvent
from pulse.corrections import CorrectionBatch
from pulse.dimensions import is_series
from pulse.errors import SinkError, SinkRefusedError
from pulse.rollups import RollupRow
from pulse.timeutil import ms_to_datetime
from runtime.otel import SpanMark
from sinks.tables import SLICES, TOTALS, Tables
from sinks.timescale_corrections import apply_corrections
from sinks.timescale_metrics import write_metrics
from sinks.timescale_rollups import write_rollups

log = logging.getLogger(__name__)

# While TimescaleDB cannot be reached: waits between attempts double up to this, the
# first few failures are logged, then one line per interval while it lasts.
MAX_RETRY_DELAY_S = 5.0
RETRIES_LOGGED = 3
RETRY_LOG_INTERVAL_S = 30.0


def _schema(exc: psycopg.Error) -> bool:
    """Whether an error says the schema differs from this version's (a missing table,
    column or function)."""
    return isinstance(
        exc,
        psycopg.errors.UndefinedTable
        | psycopg.errors.UndefinedColumn
        | psycopg.errors.UndefinedFunction,
    )


StoreItem = MetricRow | RollupRow | LateEvent | CorrectionBatch | AlertEvent | SpanMark
WriteKind = Literal[
    "metrics", "slices", "late", "rollups", "slice_rollups", "corrections", "alerts"
]

# Only ledger rows inserted now are counted. A bucket without a row yet gets a closed,
# late-only row (revision 1 is below that of any row with an on-time event, 2 * count).
LATE_SQL = """
WITH logged AS (
    INSERT INTO late_event_log (
        bucket, campaign_id, event_type, source_topic, source_partition, source_offset,
        event_time, watermark
    )
    SELECT u.bucket, u.campaign_id, u.event_type, %(topic)b::text, u.source_partition,
           u.source_offset, u.event_time, u.watermark
    FROM unnest(
        %(bucket)b::timestamptz[], %(campaign_id)b::text[], %(event_type)b::text[],
        %(source_partition)b::integer[], %(source_offset)b::bigint[],
        %(event_time)b::timestamptz[], %(watermark)b::timestamptz[]
    ) AS u(bucket, campaign_id, event_type, source_partition, source_offset, event_time,
           watermark)
    ON CONFLICT (source_topic, source_partition, source_offset, bucket) DO NOTHING
    RETURNING bucket, campaign_id, event_type
), counted AS (
    SELECT bucket, campaign_id, event_type, count(*) AS n
    FROM logged
    GROUP BY bucket, campaign_id, event_type
)
INSERT INTO event_metrics (
    bucket, campaign_id, event_type, event_count, value_sum, closed, revision, late_events
)
SELECT bucket, campaign_id, event_type, 0, 0, true, 1, n FROM counted
ORDER BY campaign_id, event_type, bucket
ON CONFLICT (campaign_id, event_type, bucket) DO UPDATE
SET late_events = event_metrics.late_events + excluded.late_events,
    updated_at = now()
"""

ALERTS_SQL = """
INSERT INTO alerts (
    alert_id, state, rule, rule_kind, severity, campaign_id, event_type, metric,
    window_start, window_end, observed, threshold, message
)
SELECT * FROM unnest(
    %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::text[], %b::timestamptz[], %b::timestamptz[], %b::float8[], %b::float8[],
    %b::text[]
)
ON CONFLICT (alert_id, state, window_start) DO NOTHING
"""


def latest_rows(rows: Sequence[MetricRow]) -> list[MetricRow]:
    """Keep, per window, the highest-revision row (one upsert may touch a row once).

    Rows come back in key order, so concurrent workers lock shared rows in one order.
    """
    best: dict[tuple[str, str, int], MetricRow] = {}
    for row in rows:
        key = (row.campaign_id, row.event_type, row.bucket_start_ms)
        seen = best.get(key)
        if seen is None or row.revision > seen.revision:
            best[key] = row
    return [best[key] for key in sorted(best)]


def latest_rollups(rows: Sequence[RollupRow]) -> list[RollupRow]:
    """Keep, per hour or day, the rollup that merged the most events (in key order)."""
    best: dict[tuple[str, str, str, int], RollupRow] = {}
    for row in rows:
        key = (row.resolution, row.campaign_id, row.event_type, row.bucket_start_ms)
        seen = best.get(key)
        if seen is None or row.event_count > seen.event_count:
            best[key] = row
    return [best[key] for key in sorted(best)]


class _Keyed(Protocol):
    @property
    def event_type(self) -> str: ...


K = TypeVar("K", bound=_Keyed)


def by_tables(rows: list[K]) -> list[tuple[Tables, list[K]]]:
    """Rows split into campaign totals and dimension slices (those present), in order."""
    totals = [r for r in rows if not is_series(r.event_type)]
    if len(totals) == len(rows):
        return [(TOTALS, rows)]
    slices = [r for r in rows if is_series(r.event_type)]
    return [(tables, part) for tables, part in ((TOTALS, totals), (SLICES, slices)) if part]


def unique_late(events: Sequence[LateEvent]) -> list[LateEvent]:
    """Drop repeats of a late event (same origin offset and bucket) within a batch."""
    seen: dict[tuple[int, int, int], LateEvent] = {}
    for event in events:
        seen.setdefault((event.partition, event.offset, event.bucket_start_ms), event)
    return list(seen.values())


def _late_params(events: Sequence[LateEvent], topic: str) -> dict[str, object]:
    return {
        "topic": topic,
        "bucket": [ms_to_datetime(e.bucket_start_ms) for e in events],
        "campaign_id": [e.campaign_id for e in events],
        "event_type": [e.event_type for e in events],
        "source_partition": [e.partition for e in events],
        "source_offset": [e.offset for e in events],
        "event_time": [ms_to_datetime(e.timestamp_ms) for e in events],
        "watermark": [ms_to_datetime(e.watermark_ms) for e in events],
    }


def _alerts_params(alerts: Sequence[AlertEvent]) -> tuple[list[object], ...]:
    return (
        [a.alert_id for a in alerts],
        [str(a.state) for a in alerts],
        [a.rule for a in alerts],
        [a.rule_kind for a in alerts],
        [a.severity for a in alerts],
        [a.campaign_id for a in alerts],
        [a.event_type for a in alerts],
        [a.metric for a in alerts],
        [ms_to_datetime(a.window_start_ms) for a in alerts],
        [ms_to_datetime(a.window_end_ms) for a in alerts],
        [a.observed for a in alerts],
        [a.threshold for a in alerts],
        [a.message for a in alerts],
    )


# (kind, sql, params, rows); window and rollup rows and corrections have no SQL of their
# own: their params are the rows, copied by `write_metrics` and `write_rollups`, or the
# corrections, merged by `apply_corrections`.
Params = (
    tuple[list[object], ...]
    | dict[str, object]
    | list[MetricRow]
    | list[RollupRow]
    | list[CorrectionBatch]
)
# The SQL, or for window and rollup rows the tables they are copied into.
Query = str | sql.Composed | Tables
Statement = tuple[WriteKind, Query, Params, int]


@dataclass(slots=True)
class _Kinds:
    """A batch's items, by kind."""

    metrics: list[MetricRow] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    rollups: list[RollupRow] = field(default_factory=list)
    corrections: list[CorrectionBatch] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)

    @classmethod
    def of(cls, items: Sequence[StoreItem]) -> "_Kinds":
        kinds = cls()
        for item in items:
            if isinstance(item, MetricRow):
                kinds.metrics.append(item)
            elif isinstance(item, LateEvent):
                kinds.late.append(item)
            elif isinstance(item, RollupRow):
                kinds.rollups.append(item)
            elif isinstance(item, CorrectionBatch):
                kinds.corrections.append(item)
            elif isinstance(item, AlertEvent):
                kinds.alerts.append(item)
            elif not isinstance(item, SpanMark):  # a SpanMark has no SQL: spans link to it
                msg = f"cannot store {type(item).__name__} in TimescaleDB"
                raise TypeError(msg)
        return kinds


def plan(items: Sequence[StoreItem], source_topic: str) -> list[Statement]:
    """Split a batch by kind into at most five statements, corrections after the rows
    and rollups they merge into."""
    kinds = _Kinds.of(items)
    metrics, late, rollups = kinds.metrics, kinds.late, kinds.rollups
    corrections, alerts = kinds.corrections, kinds.alerts
    statements: list[Statement] = []
    if metrics:
        for tables, rows in by_tables(latest_rows(metrics)):
            kind: WriteKind = "slices" if tables.sliced else "metrics"
            statements.append((kind, tables, rows, len(rows)))
    if late:
        events = unique_late(late)
        statements.append(("late", LATE_SQL, _late_params(events, source_topic), len(events)))
    if rollups:
        for tables, merged in by_tables(latest_rollups(rollups)):
            kind = "slice_rollups" if tables.sliced else "rollups"
            statements.append((kind, tables, merged, len(merged)))
    if corrections:
        windows = sum(len(b.corrections) for b in corrections)
        statements.append(("corrections", "", corrections, windows))
    if alerts:
        statements.append(("alerts", ALERTS_SQL, _alerts_params(alerts), len(alerts)))
    return statements


def batch_origin(items: Sequence[StoreItem], source_topic: str) -> str:
    """Where a batch came from, for errors: `topic[partition]@first-last` of its late
    events; window rows, rollups and alerts aggregate many offsets, so only the topic."""
    spans: dict[int, tuple[int, int]] = {}
    for item in items:
        if isinstance(item, LateEvent):
            low, high = spans.get(item.partition, (item.offset, item.offset))
            spans[item.partition] = (min(low, item.offset), max(high, item.offset))
    if not spans:
        return source_topic
    return ", ".join(
        f"{source_topic}[{p}]@{low}" if low == high else f"{source_topic}[{p}]@{low}-{high}"
        for p, (low, high) in sorted(spans.items())
    )


class _Partition(StatelessSinkPartition[StoreItem]):
    def __init__(
        self,
        dsn: str,
        source_topic: str,
        max_attempts: int | None,
        on_written: Callable[[str, int], None],
        on_retry: Callable[[], None],
        *,
        tracer: Tracer | None,
    ) -> None:
        self._dsn = dsn
        self._source_topic = source_topic
        self._max_attempts = max_attempts
        self._on_written = on_written
        self._on_retry = on_retry
        self._tracer = tracer
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True)
        return self._conn

    def _write(self, statements: list[Statement]) -> None:
        conn = self._connection()
        with conn.transaction():
            for kind, query, params, _rows in statements:
                if kind in {"rollups", "slice_rollups"}:
                    write_rollups(conn, params, query)  # type: ignore[arg-type]
                elif isinstance(query, Tables):
                    write_metrics(conn, params, query)  # type: ignore[arg-type]
                elif kind == "corrections":
                    apply_corrections(conn, params)  # type: ignore[arg-type]
                else:
                    conn.execute(query, params)

    def write_batch(self, items: list[StoreItem]) -> None:
        statements = plan(items, self._source_topic)
        if not statements:
            return
        if self._tracer is None:
            self._write_with_retries(statements, items)
            return
        span = self._start_span(self._tracer, statements, items)
        try:
            self._write_with_retries(statements, items)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def _start_span(
        self, tracer: Tracer, statements: list[Statement], items: list[StoreItem]
    ) -> Span:
        """The batch's write span, linked to the processing spans whose rows it writes."""
        links = [item.link() for item in items if isinstance(item, SpanMark)]
        attributes: dict[str, str | int] = {
            "db.system.name": "postgresql",
            "db.operation.name": "INSERT",
        }
        for kind, _query, _params, rows in statements:
            attributes[f"pulse.rows.{kind}"] = rows
        return tracer.start_span(
            "write timescaledb", kind=SpanKind.CLIENT, links=links, attributes=attributes
        )

    def _write_with_retries(self, statements: list[Statement], items: list[StoreItem]) -> None:
        """Write, retrying while TimescaleDB cannot be reached (for ever by default: the
        dataflow holds back and Kafka buffers); refused batches stop the dataflow."""
        failing_since: float | None = None
        logged_at = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write(statements)
            except psycopg.OperationalError as exc:
                if self._conn is not None:
                    self._conn.close()
                origin = batch_origin(items, self._source_topic)
                if self._max_attempts is not None and attempt >= self._max_attempts:
                    msg = (
                        f"writing a batch of {len(items)} items to TimescaleDB failed "
                        f"{attempt} times (from {origin}): {exc}"
                    )
                    raise SinkError(msg) from exc
                self._on_retry()
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if attempt <= RETRIES_LOGGED or now - logged_at >= RETRY_LOG_INTERVAL_S:
                    logged_at = now
                    log.warning(
                        "TimescaleDB write failed (attempt %d, for %.0f s), retrying: %s "
                        "(%d items from %s)",
                        attempt,
                        now - failing_since,
                        str(exc).strip(),
                        len(items),
                        origin,
                        extra={"topic": self._source_topic},
                    )
                time.sleep(min(0.25 * 2**attempt, MAX_RETRY_DELAY_S))
            except psycopg.Error as exc:
                origin = batch_origin(items, self._source_topic)
                hint = "; is the schema migrated (`pulse migrate`)?" if _schema(exc) else ""
                detail = exc.diag.message_primary or str(exc).strip().splitlines()[0]
                msg = (  # one line: the server's primary message, not its query excerpt
                    f"TimescaleDB refused a batch of {len(items)} items (from {origin}): "
                    f"{type(exc).__name__} ({exc.sqlstate}): {detail}{hint}"
                )
                raise SinkRefusedError(msg) from exc
            else:
                if failing_since is not None:
                    log.info(
                        "TimescaleDB written again after %.1f s (%d attempts)",
                        time.monotonic() - failing_since,
                        attempt,
                    )
                for kind, _query, _params, rows in statements:
                    self._on_written(kind, rows)
                return

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class TimescaleSink(DynamicSink[StoreItem]):
    """One connection per worker; each batch is one transaction of a few statements.

    `on_written(kind, rows)` is called after each commit, per kind in the batch
    ("metrics", "late", "rollups", "corrections", "alerts"), with the number of rows sent
    (repeats within the batch dropped; rows the database kept unchanged as stale or
    replayed included; for corrections, the windows corrected).
    `on_retry()` is called after each failed attempt that is retried. While TimescaleDB
    cannot be reached (`OperationalError`: refused, reset, shutting down, disk full) a
    batch is retried for ever, or `max_attempts` times then SinkError; an error of the
    batch itself (schema, data) raises SinkRefusedError at once. With a `tracer`, each
    batch written is a span linked to the `SpanMark`s in it.
    """

    def __init__(
        self,
        dsn: str,
        source_topic: str,
        max_attempts: int | None = None,
        on_written: Callable[[str, int], None] | None = None,
        on_retry: Callable[[], None] | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._dsn = dsn
        self._source_topic = source_topic
        self._max_attempts = max_attempts
        self._on_written = on_written or (lambda _kind, _rows: None)
        self._on_retry = on_retry or (lambda: None)
        self._tracer = tracer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(
            self._dsn,
            self._source_topic,
            self._max_attempts,
            self._on_written,
            self._on_retry,
            tracer=self._tracer,
        )
