"""Merging late corrections into stored rows: one read and one write per kind and batch.

Campaign totals and dimension slices alike (`sinks/tables.py`). Within the sink's
transaction, after the batch's window rows and rollups: lock the rows
the corrections touch (`SELECT ... FOR UPDATE`), merge in Python (`pulse.corrections`:
sketches cannot be merged in SQL here), and write the results back. Each stored row
keeps the highest source offset merged into it, so a replayed correction adds only
what the row has not seen (see `pulse.corrections`).
"""

from collections.abc import Sequence
from typing import Any

import psycopg

from pulse.corrections import (
    CorrectedRollup,
    CorrectedWindow,
    CorrectionBatch,
    RollupKey,
    StoredRollup,
    StoredWindow,
    WindowKey,
    by_row,
    correct_rollup,
    correct_window,
)
from pulse.timeutil import datetime_to_ms, ms_to_datetime
from sinks.tables import SLICES, TOTALS, Tables, key_columns, stored_series, tables_of

WINDOWS_SELECT = """
SELECT m.campaign_id, m.event_type, m.bucket, m.event_count, m.on_time_count, m.value_sum,
       m.value_min, m.value_max, m.first_event_at, m.last_event_at, m.late_events,
       m.users_sketch, m.values_sketch, m.corrected_offset{m_cols}
FROM {metrics} AS m
JOIN unnest(%b::text[], %b::text[], %b::timestamptz[]{arrays})
     AS k(campaign_id, event_type, bucket{cols})
  ON m.campaign_id = k.campaign_id AND m.event_type = k.event_type AND m.bucket = k.bucket{m_join}
ORDER BY m.campaign_id, m.event_type, m.bucket{m_cols}
FOR UPDATE OF m
"""

WINDOWS_UPSERT = """
INSERT INTO {metrics} (
    bucket, campaign_id, event_type, event_count, on_time_count, value_sum, value_min,
    value_max, value_avg, unique_users, value_p50, value_p95, value_p99, first_event_at,
    last_event_at, late_events, revision, users_sketch, values_sketch, corrected_offset{cols},
    closed, corrected_at
)
SELECT u.*, true, now() FROM unnest(
    %b::timestamptz[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[],
    %b::float8[], %b::float8[], %b::float8[], %b::bigint[], %b::float8[], %b::float8[],
    %b::float8[], %b::timestamptz[], %b::timestamptz[], %b::bigint[], %b::bigint[],
    %b::bytea[], %b::bytea[], %b::bigint[]{arrays}
) AS u
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
    late_events = excluded.late_events,
    revision = excluded.revision,
    users_sketch = excluded.users_sketch,
    values_sketch = excluded.values_sketch,
    corrected_offset = excluded.corrected_offset,
    closed = true,
    corrected_at = excluded.corrected_at,
    updated_at = now()
"""

ROLLUPS_SELECT = """
SELECT r.resolution, r.campaign_id, r.event_type, r.bucket, r.event_count, r.users_sketch,
       r.values_sketch, r.corrected_offset{r_cols}
FROM {rollups} AS r
JOIN unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[]{arrays})
     AS k(resolution, campaign_id, event_type, bucket{cols})
  ON r.resolution = k.resolution AND r.campaign_id = k.campaign_id
 AND r.event_type = k.event_type AND r.bucket = k.bucket{r_join}
ORDER BY r.resolution, r.campaign_id, r.event_type, r.bucket{r_cols}
FOR UPDATE OF r
"""

ROLLUPS_UPSERT = """
INSERT INTO {rollups} (
    resolution, bucket, campaign_id, event_type, event_count, unique_users, value_p50,
    value_p95, value_p99, users_sketch, values_sketch, corrected_offset{cols}
)
SELECT * FROM unnest(
    %b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
    %b::float8[], %b::float8[], %b::float8[], %b::bytea[], %b::bytea[], %b::bigint[]{arrays}
)
ON CONFLICT (resolution, campaign_id, event_type, bucket{cols}) DO UPDATE
SET event_count = excluded.event_count,
    unique_users = excluded.unique_users,
    value_p50 = excluded.value_p50,
    value_p95 = excluded.value_p95,
    value_p99 = excluded.value_p99,
    users_sketch = excluded.users_sketch,
    values_sketch = excluded.values_sketch,
    corrected_offset = excluded.corrected_offset,
    updated_at = now()
"""


WINDOWS = {t: (t.compose(WINDOWS_SELECT), t.compose(WINDOWS_UPSERT)) for t in (TOTALS, SLICES)}
ROLLUPS = {t: (t.compose(ROLLUPS_SELECT), t.compose(ROLLUPS_UPSERT)) for t in (TOTALS, SLICES)}


def _ms(value: Any) -> int | None:
    return None if value is None else datetime_to_ms(value)


def _event_types(event_types: list[str], tables: Tables) -> list[list[Any]]:
    """The event type column, and for slices the dimension columns, of rows' keys."""
    if not tables.sliced:
        return [event_types]
    return list(key_columns(event_types))


def _stored_windows(
    conn: psycopg.Connection[Any], keys: Sequence[WindowKey], tables: Tables
) -> dict[WindowKey, StoredWindow]:
    campaigns = [k[0] for k in keys]
    buckets = [ms_to_datetime(k[2]) for k in keys]
    event_type, *slices = _event_types([k[1] for k in keys], tables)
    rows = conn.execute(WINDOWS[tables][0], (campaigns, event_type, buckets, *slices)).fetchall()
    return {
        (r[0], stored_series(r[1], *r[14:16]), datetime_to_ms(r[2])): StoredWindow(
            event_count=r[3],
            on_time_count=r[4],
            value_sum=r[5],
            value_min=r[6],
            value_max=r[7],
            first_event_ms=_ms(r[8]),
            last_event_ms=_ms(r[9]),
            late_events=r[10],
            users_sketch=r[11],
            values_sketch=r[12],
            corrected_offset=r[13],
        )
        for r in rows
    }


def _windows_params(rows: Sequence[CorrectedWindow], tables: Tables) -> tuple[list[Any], ...]:
    event_type, *slices = _event_types([r.event_type for r in rows], tables)
    return (
        [ms_to_datetime(r.bucket_start_ms) for r in rows],
        [r.campaign_id for r in rows],
        event_type,
        [r.event_count for r in rows],
        [r.on_time_count for r in rows],
        [r.value_sum for r in rows],
        [r.value_min for r in rows],
        [r.value_max for r in rows],
        [r.value_avg for r in rows],
        [r.unique_users for r in rows],
        [r.value_p50 for r in rows],
        [r.value_p95 for r in rows],
        [r.value_p99 for r in rows],
        [ms_to_datetime(r.first_event_ms) for r in rows],
        [ms_to_datetime(r.last_event_ms) for r in rows],
        [r.late_events for r in rows],
        [r.revision for r in rows],
        [r.users_sketch for r in rows],
        [r.values_sketch for r in rows],
        [r.corrected_offset for r in rows],
        *slices,
    )


def _stored_rollups(
    conn: psycopg.Connection[Any], keys: Sequence[RollupKey], tables: Tables
) -> dict[RollupKey, StoredRollup]:
    resolutions = [k[0] for k in keys]
    campaigns = [k[1] for k in keys]
    buckets = [ms_to_datetime(k[3]) for k in keys]
    event_type, *slices = _event_types([k[2] for k in keys], tables)
    params = (resolutions, campaigns, event_type, buckets, *slices)
    rows = conn.execute(ROLLUPS[tables][0], params).fetchall()
    return {
        (r[0], r[1], stored_series(r[2], *r[8:10]), datetime_to_ms(r[3])): StoredRollup(
            event_count=r[4], users_sketch=r[5], values_sketch=r[6], corrected_offset=r[7]
        )
        for r in rows
    }


def _rollups_params(rows: Sequence[CorrectedRollup], tables: Tables) -> tuple[list[Any], ...]:
    event_type, *slices = _event_types([r.event_type for r in rows], tables)
    return (
        [r.resolution for r in rows],
        [ms_to_datetime(r.bucket_start_ms) for r in rows],
        [r.campaign_id for r in rows],
        event_type,
        [r.event_count for r in rows],
        [r.unique_users for r in rows],
        [r.value_p50 for r in rows],
        [r.value_p95 for r in rows],
        [r.value_p99 for r in rows],
        [r.users_sketch for r in rows],
        [r.values_sketch for r in rows],
        [r.corrected_offset for r in rows],
        *slices,
    )


def apply_corrections(conn: psycopg.Connection[Any], batches: Sequence[CorrectionBatch]) -> int:
    """Merge corrections into their windows and store-held rollups; rows written.

    Call within a transaction, after the batch's window rows and rollups are written.
    Campaign totals first, then dimension slices, each in key order (one lock order for
    every writer).
    """
    per_window, per_rollup = by_row(batches)
    written = 0
    for tables in (TOTALS, SLICES):
        keys = sorted(k for k in per_window if tables_of(k[1]) is tables)
        if keys:
            stored = _stored_windows(conn, keys, tables)
            windows = [
                row
                for row in (correct_window(stored.get(key), per_window[key]) for key in keys)
                if row is not None
            ]
            if windows:
                conn.execute(WINDOWS[tables][1], _windows_params(windows, tables))
            written += len(windows)
        rollup_keys = sorted(k for k in per_rollup if tables_of(k[2]) is tables)
        if rollup_keys:
            stored_rollups = _stored_rollups(conn, rollup_keys, tables)
            rollups = [
                row
                for row in (
                    correct_rollup(stored_rollups.get(key), key[0], key[3], per_rollup[key])
                    for key in rollup_keys
                )
                if row is not None
            ]
            if rollups:
                conn.execute(ROLLUPS[tables][1], _rollups_params(rollups, tables))
            written += len(rollups)
    return written
