"""Rollup rows into `event_sketch_rollups`: binary COPY into a staging table, one merge.

As window rows (`sinks/timescale_metrics.py`, both through `sinks/staging.py`): psycopg's
C row encoder instead of `unnest()`ed arrays, whose binary dumpers spend Python work per
element. The merge keeps
the stored row unless the new one merged more events (`event_count`), so replays and
stale rows are no-ops. Campaign totals and dimension slices share the staging table; each
kind's merge takes only its own rows. The staging table is emptied at each commit.
"""

from collections.abc import Iterator, Sequence

import psycopg

from pulse.dimensions import split_series
from pulse.rollups import RollupRow
from sinks.staging import Stage, copy_and_merge
from sinks.tables import SLICES, TOTALS, Tables

STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS pulse_rollups_stage (
    resolution text, bucket_ms bigint, campaign_id text, event_type text,
    event_count bigint, unique_users bigint, value_p50 float8, value_p95 float8,
    value_p99 float8, users_sketch bytea, values_sketch bytea, dimension_set text,
    dimensions jsonb
) ON COMMIT DELETE ROWS
"""

COPY_TYPES = (
    "text", "int8", "text", "text", "int8", "int8", "float8", "float8", "float8", "bytea",
    "bytea", "text", "jsonb",
)  # fmt: skip
STAGE = Stage(STAGE_SQL, "pulse_rollups_stage", COPY_TYPES)

MERGE_SQL = """
INSERT INTO {rollups} (
    resolution, bucket, campaign_id, event_type, event_count, unique_users, value_p50,
    value_p95, value_p99, users_sketch, values_sketch{cols}
)
SELECT s.resolution, to_timestamp(0) + s.bucket_ms * interval '1 millisecond',
       s.campaign_id, s.event_type, s.event_count, s.unique_users, s.value_p50,
       s.value_p95, s.value_p99, s.users_sketch, s.values_sketch{s_cols}
FROM pulse_rollups_stage AS s
WHERE {staged}
ON CONFLICT (resolution, campaign_id, event_type, bucket{cols}) DO UPDATE
SET event_count = excluded.event_count,
    unique_users = excluded.unique_users,
    value_p50 = excluded.value_p50,
    value_p95 = excluded.value_p95,
    value_p99 = excluded.value_p99,
    users_sketch = excluded.users_sketch,
    values_sketch = excluded.values_sketch,
    updated_at = now()
WHERE {rollups}.event_count < excluded.event_count
"""
MERGES = {tables: tables.compose(MERGE_SQL) for tables in (TOTALS, SLICES)}


def write_rollups(
    conn: psycopg.Connection[tuple[object, ...]],
    rows: Sequence[RollupRow],
    tables: Tables = TOTALS,
) -> None:
    """Upsert rollup rows of one kind of table (at most one per hour or day) inside the
    caller's transaction."""
    copy_and_merge(conn, STAGE, _staged(rows, tables), MERGES[tables])


def _staged(rows: Sequence[RollupRow], tables: Tables) -> Iterator[tuple[object, ...]]:
    for r in rows:
        event_type, name, dims = r.event_type, None, None
        if tables.sliced:
            event_type, name, dims = split_series(event_type)
        yield (
            str(r.resolution),
            r.bucket_start_ms,
            r.campaign_id,
            event_type,
            r.event_count,
            r.unique_users,
            r.value_p50,
            r.value_p95,
            r.value_p99,
            r.users_sketch,
            r.values_sketch,
            name,
            dims,
        )
