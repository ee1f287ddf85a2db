"""Dataflow cluster: one process against two (and more) on the same pre-filled topic.

The topic is `bench_cardinality`'s (N events 1 ms apart over K campaigns, 4 partitions).
Each run is a fresh `pulse flow` cluster (`PULSE_TAIL=false`, one worker per process,
every process on this machine, with Kafka and TimescaleDB) into a fresh database, and
checks that every event was counted. Per run: wall seconds with and without start-up
(an empty topic's run with the same process count is subtracted), events/s, CPU seconds
of all processes, the largest process's peak RSS, and the rate relative to one process.

    python -m benchmarks.bench_cluster --events 1000000 --keys 10000 --processes 1,2
"""

import argparse
import asyncio
import time

from .bench_cardinality import PARTITIONS, fill
from .common import fresh_topics, run_flow, stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    bootstrap, admin_dsn = stack()
    topics = fresh_topics(bootstrap, PARTITIONS)
    asyncio.run(fill(bootstrap, topics["raw"], args.events, args.keys))
    empty = fresh_topics(bootstrap, PARTITIONS)
    time.sleep(3.0)  # let the broker settle after the fill
    print(
        f"cluster: {args.events:,} events over {args.keys:,} campaigns, "
        f"{PARTITIONS} partitions, one worker per process, on {len(counts)} process counts"
    )
    print("processes | wall s | s w/o start-up | events/s | CPU s | peak RSS | rate / 1")
    base = 0.0
    for processes in counts:
        idle = run_flow(bootstrap, admin_dsn, empty, 0, processes=processes).wall_s
        run = run_flow(bootstrap, admin_dsn, topics, args.events, processes=processes)
        work = max(run.wall_s - idle, 1e-9)
        rate = args.events / work
        base = base or rate
        print(
            f"{processes:9d} | {run.wall_s:6.1f} | {work:14.1f} | {rate:8,.0f} | "
            f"{run.cpu_s:5.1f} | {run.peak_rss / 2**20:5.0f} MB | {rate / base:.2f}"
        )


if __name__ == "__main__":
    main()
