"""Window rows into `event_metrics`: binary COPY into a staging table, then one merge.

At high cardinality the dataflow writes a row per (key, window), several times (open
progress, then closed), so the rows' transfer is the sink's hot path. Binary COPY sends
them with psycopg's C row encoder (no Python per array element, unlike `unnest()`ed
array parameters); one `INSERT ... SELECT ... ON CONFLICT` then merges the staged rows,
keeping the stored row unless the new one has a higher `revision` (so replays and stale
rows are no-ops). Times travel as epoch milliseconds and become timestamps in SQL.

Campaign totals and dimension slices (`sinks/tables.py`) share the staging table; each
kind's merge takes only its own rows from it. The staging table is a session's temporary table,
emptied at each commit.
"""

from collections.abc import Iterator, Sequence

import psycopg

from pulse.aggregation import MetricRow
from pulse.dimensions import split_series
from sinks.staging import Stage, copy_and_merge
from sinks.tables import SLICES, TOTALS, Tables

STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS pulse_metrics_stage (
    bucket_ms bigint, campaign_id text, event_type text, event_count bigint,
    value_sum float8, value_min float8, value_max float8, value_avg float8,
    unique_users bigint, value_p50 float8, value_p95 float8, value_p99 float8,
    first_ms bigint, last_ms bigint, closed boolean, revision bigint,
    users_sketch bytea, values_sketch bytea, dimension_set text, dimensions jsonb
) ON COMMIT DELETE ROWS
"""

COPY_TYPES = (
    "int8", "text", "text", "int8", "float8", "float8", "float8", "float8", "int8",
    "float8", "float8", "float8", "int8", "int8", "bool", "int8", "bytea", "bytea", "text",
    "jsonb",
)  # fmt: skip
STAGE = Stage(STAGE_SQL, "pulse_metrics_stage", COPY_TYPES)

# Every on-time column; `late_events` belongs to the late-event statement alone.
MERGE_SQL = """
INSERT INTO {metrics} (
    bucket, campaign_id, event_type, event_count, value_sum, value_min, value_max,
    value_avg, unique_users, value_p50, value_p95, value_p99, first_event_at,
    last_event_at, closed, revision, users_sketch, values_sketch, on_time_count{cols}
)
SELECT to_timestamp(0) + s.bucket_ms * interval '1 millisecond', s.campaign_id,
       s.event_type, s.event_count, s.value_sum, s.value_min, s.value_max, s.value_avg,
       s.unique_users, s.value_p50, s.value_p95, s.value_p99,
       to_timestamp(0) + s.first_ms * interval '1 millisecond',
       to_timestamp(0) + s.last_ms * interval '1 millisecond',
       s.closed, s.revision, s.users_sketch, s.values_sketch, s.event_count{s_cols}
FROM pulse_metrics_stage AS s
WHERE {staged}
ON CONFLICT (campaign_id, event_type, bucket{cols}) DO UPDATE
SET event_count = excluded.event_count,
    on_time_count = excluded.on_time_count,
    value_sum = excluded.value_sum,
    value_min = excluded.value_min,
    value_max = excluded.value_max,
    value_avg = excluded.value_avg,
    unique_users = excluded.unique_users,
    value_p50 = excluded.value_p50,
    value_p95 = excluded.value_p95,
    value_p99 = excluded.value_p99,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    closed = excluded.closed,
    revision = excluded.revision,
    users_sketch = excluded.users_sketch,
    values_sketch = excluded.values_sketch,
    updated_at = now()
WHERE {metrics}.revision < excluded.revision
"""
MERGES = {tables: tables.compose(MERGE_SQL) for tables in (TOTALS, SLICES)}


def write_metrics(
    conn: psycopg.Connection[tuple[object, ...]],
    rows: Sequence[MetricRow],
    tables: Tables = TOTALS,
) -> None:
    """Upsert window rows of one kind of table (at most one per window) inside the
    caller's transaction."""
    copy_and_merge(conn, STAGE, _staged(rows, tables), MERGES[tables])


def _staged(rows: Sequence[MetricRow], tables: Tables) -> Iterator[tuple[object, ...]]:
    for r in rows:
        event_type, name, dims = r.event_type, None, None
        if tables.sliced:
            event_type, name, dims = split_series(event_type)
        yield (
            r.bucket_start_ms,
            r.campaign_id,
            event_type,
            r.event_count,
            r.value_sum,
            r.value_min,
            r.value_max,
            r.value_avg,
            r.unique_users,
            r.value_p50,
            r.value_p95,
            r.value_p99,
            r.first_event_ms,
            r.last_event_ms,
            r.closed,
            r.revision,
            r.users_sketch,
            r.values_sketch,
            name,
            dims,
        )
