"""Dataflow throughput: events/s of `pulse flow` reading a pre-filled topic to its end.

Fills a fresh topic with N events, runs the dataflow (`PULSE_TAIL=false`, so it stops at
the end of the topic) into a fresh database, checks the total count, and reports
events/s including start-up, and after subtracting the time of an empty run.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psycopg

from ingest.producer import KafkaEventProducer

from .common import free_port, fresh_database, fresh_topics, pulse_process, stack, synthetic_events


async def fill(bootstrap: str, topic: str, n: int, chunk: int = 100_000) -> None:
    producer = KafkaEventProducer(bootstrap, topic, timeout_s=60)
    try:
        for start in range(0, n, chunk):
            events = synthetic_events(min(chunk, n - start), seed=start + 1, first=start, total=n)
            records = [(e.campaign_id.encode(), e.SerializeToString()) for e in events]
            for i in range(0, len(records), 10_000):
                await producer.send(records[i : i + 10_000])
    finally:
        producer.close()


def run_flow(bootstrap: str, admin_dsn: str, topics: dict[str, str], expect: int) -> float:
    with fresh_database(admin_dsn) as dsn, tempfile.TemporaryDirectory() as tmp:
        env = {
            "PULSE_KAFKA_BOOTSTRAP": bootstrap,
            "PULSE_PG_DSN": dsn,
            "PULSE_TOPIC_RAW": topics["raw"],
            "PULSE_TOPIC_LATE": topics["late"],
            "PULSE_TOPIC_DLQ": topics["dlq"],
            "PULSE_TOPIC_NOTIFICATIONS": topics["notifications"],
            "PULSE_TAIL": "false",
            "PULSE_API_PORT": str(free_port()),
        }
        started = time.perf_counter()
        with pulse_process("flow", env, Path(tmp)) as proc:
            code = proc.wait(timeout=3600)
        elapsed = time.perf_counter() - started
        if code != 0:
            raise SystemExit(
                f"pulse flow exited with {code}: {(Path(tmp) / 'flow.log').read_text()}"
            )
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT coalesce(sum(event_count), 0) FROM event_metrics").fetchone()
        counted = int(row[0]) if row else 0
        if counted != expect:
            raise SystemExit(f"counted {counted} events, expected {expect}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=200_000)
    args = parser.parse_args()
    bootstrap, admin_dsn = stack()
    topics = fresh_topics(bootstrap)
    empty = fresh_topics(bootstrap)
    t0 = time.perf_counter()
    asyncio.run(fill(bootstrap, topics["raw"], args.events))
    print(f"filled {topics['raw']} with {args.events:,} events in {time.perf_counter() - t0:.1f} s")
    idle = run_flow(bootstrap, admin_dsn, empty, 0)
    total = run_flow(bootstrap, admin_dsn, topics, args.events)
    print(f"{'dataflow run':<40}{'seconds':>9}{'events/s':>12}")
    print(f"{'empty topic (start-up and shutdown)':<40}{idle:>9.2f}{'':>12}")
    print(f"{'pre-filled topic, end to end':<40}{total:>9.2f}{args.events / total:>12,.0f}")
    print(
        f"{'pre-filled topic, minus start-up':<40}{total - idle:>9.2f}"
        f"{args.events / max(total - idle, 1e-9):>12,.0f}"
    )


if __name__ == "__main__":
    main()
