"""Dataflow throughput: events/s of `pulse flow` reading a pre-filled topic to its end.

Three datasets of N events over 100 campaigns, each read by a fresh dataflow
(`PULSE_TAIL=false`, so it stops at the end of the topic) into a fresh database:

- on time: events spread over the last hour, in time order;
- on time with dedup off (`PULSE_DEDUP_HORIZON_SECONDS=0`): the cost of dedup per event;
- backfill: the same events an hour older, after a heartbeat at the current time in
  every partition, so every window is closed and every event corrects its window.

Each run checks the total count. A run can be slowed by the database still busy with the
previous one (a backfill writes much more), so each round runs the empty topic first,
then the two on-time runs in alternating order, then the backfill, with a pause before
each run. The best round of each is reported, after subtracting the time of the empty
run (start-up and shutdown). Dedup's cost is also reported round by round, from the
on-time runs with and without it that ran back to back, and their median: on shared
cores the machine's speed drifts between rounds, and a pair shares its drift.
"""

import argparse
import asyncio
import statistics
import time

from confluent_kafka import Producer

from ingest.producer import KafkaEventProducer
from protos.analytics.v1 import analytics_pb2 as pb

from .common import fresh_topics, run_flow, stack, synthetic_events

CAMPAIGNS = 100
PARTITIONS = 4
HOUR_MS = 3_600_000
SETTLE_S = 3.0  # before each run: let the database finish the previous one's writes


async def fill(bootstrap: str, topic: str, n: int, age_ms: int = 0, chunk: int = 100_000) -> None:
    producer = KafkaEventProducer(bootstrap, topic, timeout_s=60)
    try:
        for start in range(0, n, chunk):
            events = synthetic_events(
                min(chunk, n - start),
                campaigns=CAMPAIGNS,
                seed=start + 1,
                first=start,
                total=n,
                age_ms=age_ms,
            )
            records = [(e.campaign_id.encode(), e.SerializeToString()) for e in events]
            for i in range(0, len(records), 10_000):
                await producer.send(records[i : i + 10_000])
    finally:
        producer.close()


def heartbeats(bootstrap: str, topic: str) -> None:
    """One heartbeat at the current time in every partition, as the edge writes them."""
    producer = Producer({"bootstrap.servers": bootstrap})
    beat = pb.Heartbeat(wall_time_ms=int(time.time() * 1000), source="bench").SerializeToString()
    for partition in range(PARTITIONS):
        producer.produce(topic, beat, b"", partition=partition)
    if producer.flush(30):
        raise SystemExit("heartbeats were not acknowledged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.events
    bootstrap, admin_dsn = stack()
    on_time = fresh_topics(bootstrap, PARTITIONS)
    backfill = fresh_topics(bootstrap, PARTITIONS)
    empty = fresh_topics(bootstrap, PARTITIONS)
    t0 = time.perf_counter()
    asyncio.run(fill(bootstrap, on_time["raw"], n))
    heartbeats(bootstrap, backfill["raw"])
    asyncio.run(fill(bootstrap, backfill["raw"], n, age_ms=HOUR_MS))
    print(f"filled two topics with {n:,} events each in {time.perf_counter() - t0:.1f} s")
    runs = {
        "on time (dedup on)": (on_time, {}),
        "on time, dedup off": (on_time, {"PULSE_DEDUP_HORIZON_SECONDS": "0"}),
        "backfill, 1-2 h old (dedup on)": (backfill, {}),
    }
    best = dict.fromkeys(runs, float("inf"))
    cpu = dict.fromkeys(runs, float("inf"))
    idle = idle_cpu = float("inf")
    on, off, back = list(runs)
    paired: list[tuple[float, float]] = []  # per round: dedup on / off, rate and CPU
    for round_ in range(args.rounds):
        time.sleep(SETTLE_S)
        empty_run = run_flow(bootstrap, admin_dsn, empty, 0)
        wall, used = empty_run.wall_s, empty_run.cpu_s
        idle, idle_cpu = min(idle, wall), min(idle_cpu, used)
        this: dict[str, tuple[float, float]] = {}
        for name in [on, off, back] if round_ % 2 == 0 else [off, on, back]:
            topics, env = runs[name]
            time.sleep(SETTLE_S)
            run = run_flow(bootstrap, admin_dsn, topics, n, env)
            wall, used = run.wall_s, run.cpu_s
            best[name], cpu[name] = min(best[name], wall), min(cpu[name], used)
            this[name] = (wall, used)
        # On and off ran back to back: their ratio is steadier than ratios of bests
        # taken from different rounds, when the machine's speed drifts between rounds.
        paired.append(
            (
                (this[off][0] - idle) / (this[on][0] - idle),
                (this[on][1] - this[off][1]) / (this[off][1] - idle_cpu),
            )
        )
    title = f"dataflow run (best of {args.rounds})"
    print(f"{title:<34}{'seconds':>9}{'events/s':>12}{'CPU us/event':>14}")
    print(f"{'empty topic (start-up, shutdown)':<34}{idle:>9.2f}{'':>12}{idle_cpu:>13.2f}s")
    rate, per_event = {}, {}
    for name, seconds in best.items():
        rate[name] = n / max(seconds - idle, 1e-9)
        per_event[name] = (cpu[name] - idle_cpu) / n * 1e6
        print(f"{name:<34}{seconds:>9.2f}{rate[name]:>12,.0f}{per_event[name]:>14.2f}")
    print("(events/s and CPU exclude the empty run's start-up and shutdown)")
    print(
        f"backfill / on-time: rate {rate[back] / rate[on]:.2f}, "
        f"CPU per event {per_event[back] / per_event[on]:.2f}"
    )
    print(
        f"dedup: {per_event[on] - per_event[off]:+.2f} CPU us per event "
        f"({(best[on] - best[off]) / n * 1e6:+.2f} us wall); on-time rate with dedup / "
        f"without: {rate[on] / rate[off]:.2f}"
    )
    ratios = sorted(r for r, _ in paired)
    extra = sorted(c for _, c in paired)
    print(
        "dedup, round by round (on and off back to back): rate with / without "
        f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}); "
        f"extra CPU {', '.join(f'{c:+.0%}' for c in extra)} "
        f"(median {statistics.median(extra):+.0%})"
    )


if __name__ == "__main__":
    main()
