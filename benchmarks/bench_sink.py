"""Sink throughput: `event_metrics` and `event_sketch_rollups` rows/s that the
TimescaleDB sink writes.

Writes N window rows over K campaigns through the dataflow's sink partition, in batches
of B rows, into a fresh database: first as new open rows (inserts), then the same
windows again, closed, with their small sketches (updates of every row), as the
dataflow writes them at high cardinality. Then N hour rollup rows the same way: new,
then each merging one more event. Each phase checks what the table holds.
"""

import argparse
import time

import psycopg

from pulse import sketches
from pulse.aggregation import MetricRow, WindowAggregate
from pulse.rollups import Resolution, RollupRow
from pulse.windows import HOUR_MS
from sinks.timescale_writer import TimescaleSink

from .common import fresh_database, stack

WINDOW_MS = 60_000
T0 = 1_764_000_000_000


def rows(n: int, keys: int, *, closed: bool) -> list[MetricRow]:
    """One row per (campaign, window): window w of campaign c for the i-th row."""
    out = []
    agg = WindowAggregate()
    agg.count, agg.sum_micros = 1, 2_500_000
    agg.value_min = agg.value_max = 2.5
    sketches.add_users(agg.users, ["user-1"])
    sketches.add_values(agg.values, [2.5])
    for i in range(n):
        campaign, window = f"c{i % keys}", i // keys
        start = T0 + window * WINDOW_MS
        agg.first_ms = agg.last_ms = start + 1
        out.append(agg.row(campaign, "impression", start, closed))
    return out


def rollups(n: int, keys: int, events: int) -> list[RollupRow]:
    """One hour rollup per (campaign, hour), each of `events` merged events."""
    users = sketches.hll_bytes(sketches.hll_of([f"user-{u}" for u in range(events)]))
    values = sketches.kll_bytes(sketches.kll_of([2.5] * events))
    return [
        RollupRow(
            Resolution.HOUR,
            f"c{i % keys}",
            "impression",
            T0 + (i // keys) * HOUR_MS,
            events,
            events,
            2.5,
            2.5,
            2.5,
            users,
            values,
        )
        for i in range(n)
    ]


def write(dsn: str, batch_rows: list[MetricRow] | list[RollupRow], batch: int) -> float:
    """Seconds to write the rows in batches of `batch`."""
    sink = TimescaleSink(dsn, "events.raw").build("bench", 0, 1)
    try:
        started = time.perf_counter()
        for i in range(0, len(batch_rows), batch):
            sink.write_batch(list(batch_rows[i : i + batch]))
        return time.perf_counter() - started
    finally:
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--rows", type=int, default=200_000)
    parser.add_argument("-k", "--keys", type=int, default=100_000)
    parser.add_argument("-b", "--batch", type=int, default=10_000)
    args = parser.parse_args()
    n = args.rows
    _, admin_dsn = stack()
    opened, final = rows(n, args.keys, closed=False), rows(n, args.keys, closed=True)
    with fresh_database(admin_dsn) as dsn:
        inserted = write(dsn, opened, args.batch)
        updated = write(dsn, final, args.batch)
        new_rollups = write(dsn, rollups(n, args.keys, 1), args.batch)
        merged_rollups = write(dsn, rollups(n, args.keys, 2), args.batch)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE closed), sum(event_count)"
                " FROM event_metrics"
            ).fetchone()
            merged = conn.execute(
                "SELECT count(*), sum(event_count) FROM event_sketch_rollups"
            ).fetchone()
    if row != (n, n, n):
        raise SystemExit(f"expected {n} closed rows of one event each, found {row}")
    if merged != (n, 2 * n):
        raise SystemExit(f"expected {n} rollups of two events each, found {merged}")
    print(f"sink, {n:,} window rows over {args.keys:,} campaigns, batches of {args.batch:,}")
    print(f"{'new open rows (insert)':<40}{n / inserted:>12,.0f} rows/s")
    print(f"{'the same windows closed (update)':<40}{n / updated:>12,.0f} rows/s")
    print(f"{'new hour rollups (insert)':<40}{n / new_rollups:>12,.0f} rows/s")
    print(f"{'the same hours, one more event (update)':<40}{n / merged_rollups:>12,.0f} rows/s")


if __name__ == "__main__":
    main()
