"""Reads aggregates back from TimescaleDB for the QueryMetrics RPC."""

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from pulse.errors import SinkError
from pulse.query import MetricPointRow, MetricsQuery, QueryResolution
from pulse.timeutil import datetime_to_ms, ms_to_datetime

_RELATIONS = {
    QueryResolution.MINUTE: "event_metrics",
    QueryResolution.HOUR: "event_metrics_hourly",
    QueryResolution.DAY: "event_metrics_daily",
}
_SLICE_RELATIONS = {
    QueryResolution.MINUTE: "event_metrics_by_dimensions",
    QueryResolution.HOUR: "event_metrics_by_dimensions_hourly",
    QueryResolution.DAY: "event_metrics_by_dimensions_daily",
}

# The same columns, in `MetricPointRow` order, in the table and in both views.
_QUERY = """
SELECT campaign_id, event_type, bucket, event_count, value_sum, value_min, value_max,
       value_avg, unique_users, value_p50, value_p95, value_p99, first_event_at,
       last_event_at, late_events, closed, on_time_count
FROM {relation}
WHERE campaign_id = %(campaign_id)s
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
  AND bucket >= %(start)s AND bucket < %(end)s
ORDER BY bucket, event_type
"""

# The same for slices: one set's, those whose values contain the filter's.
_SLICES_QUERY = """
SELECT campaign_id, event_type, bucket, event_count, value_sum, value_min, value_max,
       value_avg, unique_users, value_p50, value_p95, value_p99, first_event_at,
       last_event_at, late_events, closed, on_time_count, dimensions
FROM {relation}
WHERE campaign_id = %(campaign_id)s
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
  AND dimension_set = %(dimension_set)s
  AND dimensions @> %(dimensions)s
  AND bucket >= %(start)s AND bucket < %(end)s
ORDER BY bucket, event_type, dimensions
"""


def _optional_ms(value: datetime | None) -> int | None:
    return None if value is None else datetime_to_ms(value)


def _point(row: tuple[Any, ...]) -> MetricPointRow:
    campaign_id, event_type, bucket, count, total, vmin, vmax, avg, users = row[:9]
    p50, p95, p99, first, last, late, closed, on_time = row[9:17]
    dims = row[17] if len(row) > 17 else {}
    return MetricPointRow(
        campaign_id,
        event_type,
        datetime_to_ms(bucket),
        count,
        total,
        vmin,
        vmax,
        avg,
        users,
        p50,
        p95,
        p99,
        _optional_ms(first),
        _optional_ms(last),
        late,
        closed,
        on_time,
        tuple(sorted(dims.items())),
    )


class TimescaleMetricsReader:
    """Streams query answers from a small async connection pool."""

    def __init__(self, dsn: str, max_connections: int = 4) -> None:
        self._pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def query(self, query: MetricsQuery) -> AsyncIterator[MetricPointRow]:
        params: dict[str, Any] = {
            "campaign_id": query.campaign_id,
            "event_type": query.event_type,
            "start": ms_to_datetime(query.start_ms),
            "end": ms_to_datetime(query.end_ms),
        }
        if query.dimension_set is None:
            relation, template = _RELATIONS[query.resolution], _QUERY
        else:
            relation, template = _SLICE_RELATIONS[query.resolution], _SLICES_QUERY
            params["dimension_set"] = query.dimension_set
            params["dimensions"] = Jsonb(dict(query.dimensions))
        statement = sql.SQL(template).format(relation=sql.Identifier(relation))
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                await cur.execute(statement, params)
                async for row in cur:
                    yield _point(row)
        except psycopg.Error as exc:
            raise SinkError(f"metrics query failed: {exc}") from exc
