"""Sink throughput: `event_metrics` rows/s that the TimescaleDB sink writes.

Writes N window rows over K campaigns through the dataflow's sink partition, in batches
of B rows, into a fresh database: first as new open rows (inserts), then the same
windows again, closed, with their small sketches (updates of every row), as the
dataflow writes them at high cardinality. Each phase checks what the table holds.
"""

import argparse
import time

import psycopg

from pulse import sketches
from pulse.aggregation import MetricRow, WindowAggregate
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


def write(dsn: str, batch_rows: list[MetricRow], batch: int) -> float:
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
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE closed), sum(event_count)"
                " FROM event_metrics"
            ).fetchone()
    if row != (n, n, n):
        raise SystemExit(f"expected {n} closed rows of one event each, found {row}")
    print(f"sink, {n:,} window rows over {args.keys:,} campaigns, batches of {args.batch:,}")
    print(f"{'new open rows (insert)':<40}{n / inserted:>12,.0f} rows/s")
    print(f"{'the same windows closed (update)':<40}{n / updated:>12,.0f} rows/s")


if __name__ == "__main__":
    main()
