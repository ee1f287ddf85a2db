"""Merging late corrections into stored rows: one read and one write per kind and batch.

Within the sink's transaction, after the batch's window rows and rollups: lock the rows
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

WINDOWS_SELECT = """
SELECT m.campaign_id, m.event_type, m.bucket, m.event_count, m.on_time_count, m.value_sum,
       m.value_min, m.value_max, m.first_event_at, m.last_event_at, m.late_events,
       m.users_sketch, m.values_sketch, m.corrected_offset
FROM event_metrics AS m
JOIN unnest(%b::text[], %b::text[], %b::timestamptz[]) AS k(campaign_id, event_type, bucket)
  ON m.campaign_id = k.campaign_id AND m.event_type = k.event_type AND m.bucket = k.bucket
ORDER BY m.campaign_id, m.event_type, m.bucket
FOR UPDATE OF m
"""

WINDOWS_UPSERT = """
INSERT INTO event_metrics (
    bucket, campaign_id, event_type, event_count, on_time_count, value_sum, value_min,
    value_max, value_avg, unique_users, value_p50, value_p95, value_p99, first_event_at,
    last_event_at, late_events, revision, users_sketch, values_sketch, corrected_offset,
    closed, corrected_at
)
SELECT u.*, true, now() FROM unnest(
    %b::timestamptz[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[],
    %b::float8[], %b::float8[], %b::float8[], %b::bigint[], %b::float8[], %b::float8[],
    %b::float8[], %b::timestamptz[], %b::timestamptz[], %b::bigint[], %b::bigint[],
    %b::bytea[], %b::bytea[], %b::bigint[]
) AS u
ON CONFLICT (campaign_id, event_type, bucket) DO UPDATE
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
       r.values_sketch, r.corrected_offset
FROM event_sketch_rollups AS r
JOIN unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[])
     AS k(resolution, campaign_id, event_type, bucket)
  ON r.resolution = k.resolution AND r.campaign_id = k.campaign_id
 AND r.event_type = k.event_type AND r.bucket = k.bucket
ORDER BY r.resolution, r.campaign_id, r.event_type, r.bucket
FOR UPDATE OF r
"""

ROLLUPS_UPSERT = """
INSERT INTO event_sketch_rollups (
    resolution, bucket, campaign_id, event_type, event_count, unique_users, value_p50,
    value_p95, value_p99, users_sketch, values_sketch, corrected_offset
)
SELECT * FROM unnest(
    %b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
    %b::float8[], %b::float8[], %b::float8[], %b::bytea[], %b::bytea[], %b::bigint[]
)
ON CONFLICT (resolution, campaign_id, event_type, bucket) DO UPDATE
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


def _ms(value: Any) -> int | None:
    return None if value is None else datetime_to_ms(value)


def _stored_windows(
    conn: psycopg.Connection[Any], keys: Sequence[WindowKey]
) -> dict[WindowKey, StoredWindow]:
    rows = conn.execute(
        WINDOWS_SELECT,
        (
            [k[0] for k in keys],
            [k[1] for k in keys],
            [ms_to_datetime(k[2]) for k in keys],
        ),
    ).fetchall()
    return {
        (r[0], r[1], datetime_to_ms(r[2])): StoredWindow(
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


def _windows_params(rows: Sequence[CorrectedWindow]) -> tuple[list[object], ...]:
    return (
        [ms_to_datetime(r.bucket_start_ms) for r in rows],
        [r.campaign_id for r in rows],
        [r.event_type for r in rows],
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
    )


def _stored_rollups(
    conn: psycopg.Connection[Any], keys: Sequence[RollupKey]
) -> dict[RollupKey, StoredRollup]:
    rows = conn.execute(
        ROLLUPS_SELECT,
        (
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [ms_to_datetime(k[3]) for k in keys],
        ),
    ).fetchall()
    return {
        (r[0], r[1], r[2], datetime_to_ms(r[3])): StoredRollup(
            event_count=r[4], users_sketch=r[5], values_sketch=r[6], corrected_offset=r[7]
        )
        for r in rows
    }


def _rollups_params(rows: Sequence[CorrectedRollup]) -> tuple[list[object], ...]:
    return (
        [r.resolution for r in rows],
        [ms_to_datetime(r.bucket_start_ms) for r in rows],
        [r.campaign_id for r in rows],
        [r.event_type for r in rows],
        [r.event_count for r in rows],
        [r.unique_users for r in rows],
        [r.value_p50 for r in rows],
        [r.value_p95 for r in rows],
        [r.value_p99 for r in rows],
        [r.users_sketch for r in rows],
        [r.values_sketch for r in rows],
        [r.corrected_offset for r in rows],
    )


def apply_corrections(conn: psycopg.Connection[Any], batches: Sequence[CorrectionBatch]) -> int:
    """Merge corrections into their windows and store-held rollups; rows written.

    Call within a transaction, after the batch's window rows and rollups are written.
    """
    per_window, per_rollup = by_row(batches)
    keys = sorted(per_window)  # one lock order for every writer
    stored = _stored_windows(conn, keys)
    windows = [
        row
        for row in (correct_window(stored.get(key), per_window[key]) for key in keys)
        if row is not None
    ]
    if windows:
        conn.execute(WINDOWS_UPSERT, _windows_params(windows))
    rollup_keys = sorted(per_rollup)
    rollups: list[CorrectedRollup] = []
    if rollup_keys:
        stored_rollups = _stored_rollups(conn, rollup_keys)
        for key in rollup_keys:
            rollup = correct_rollup(stored_rollups.get(key), key[0], key[3], per_rollup[key])
            if rollup is not None:
                rollups.append(rollup)
        if rollups:
            conn.execute(ROLLUPS_UPSERT, _rollups_params(rollups))
    return len(windows) + len(rollups)
