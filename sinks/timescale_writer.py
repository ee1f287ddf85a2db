"""Bytewax sink that upserts window rows into the `event_metrics` hypertable.

Idempotent by construction: a row replaces the stored one only when its event count is
higher. Within one run a window's rows only grow, and a replay after a crash re-emits
the same prefix sequence, so stale or repeated rows are no-ops.
"""

import logging
import time
from collections.abc import Callable

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from pulse.aggregation import MetricRow
from pulse.errors import SinkError
from pulse.timeutil import ms_to_datetime

log = logging.getLogger(__name__)

UPSERT_SQL = """
INSERT INTO event_metrics (bucket, campaign_id, event_type, event_count, value_sum)
SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::bigint[], %s::float8[])
ON CONFLICT (campaign_id, event_type, bucket) DO UPDATE
SET event_count = excluded.event_count,
    value_sum = excluded.value_sum,
    updated_at = now()
WHERE event_metrics.event_count < excluded.event_count
"""


def latest_rows(rows: list[MetricRow]) -> list[MetricRow]:
    """Keep, per window, the row with the highest count (one upsert may touch a row once)."""
    best: dict[tuple[str, str, int], MetricRow] = {}
    for row in rows:
        key = (row.campaign_id, row.event_type, row.bucket_start_ms)
        seen = best.get(key)
        if seen is None or row.event_count > seen.event_count:
            best[key] = row
    return list(best.values())


class _Partition(StatelessSinkPartition[MetricRow]):
    def __init__(self, dsn: str, max_attempts: int, on_written: Callable[[int], None]) -> None:
        self._dsn = dsn
        self._max_attempts = max_attempts
        self._on_written = on_written
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True)
        return self._conn

    def write_batch(self, items: list[MetricRow]) -> None:
        rows = latest_rows(items)
        if not rows:
            return
        params = (
            [ms_to_datetime(r.bucket_start_ms) for r in rows],
            [r.campaign_id for r in rows],
            [r.event_type for r in rows],
            [r.event_count for r in rows],
            [r.value_sum for r in rows],
        )
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._connection().execute(UPSERT_SQL, params)
                self._on_written(len(rows))
                return
            except psycopg.OperationalError as exc:
                if self._conn is not None:
                    self._conn.close()
                if attempt == self._max_attempts:
                    msg = f"writing {len(rows)} rows to event_metrics failed: {exc}"
                    raise SinkError(msg) from exc
                delay = min(0.5 * 2**attempt, 10.0)
                log.warning(
                    "event_metrics write failed (attempt %d), retrying in %.1f s: %s",
                    attempt,
                    delay,
                    exc,
                )
                time.sleep(delay)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class TimescaleMetricsSink(DynamicSink[MetricRow]):
    """One connection per worker; each batch is a single round trip."""

    def __init__(
        self, dsn: str, max_attempts: int = 6, on_written: Callable[[int], None] | None = None
    ) -> None:
        self._dsn = dsn
        self._max_attempts = max_attempts
        self._on_written = on_written or (lambda _n: None)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._dsn, self._max_attempts, self._on_written)
