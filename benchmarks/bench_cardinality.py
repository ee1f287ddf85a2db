"""Cardinality sweep: the dataflow's cost per event and per (key, window).

For each key count K, a fresh topic is filled with N events (default 1,000,000), event
times 1 ms apart (so N / 60,000 one-minute windows), event i for campaign i mod K, one
event type, users drawn from 100,000, a `country` of 20 and a `device` of 3. A fresh
`pulse flow` (`PULSE_TAIL=false`) reads it to the end into a fresh database; the run
checks that every event was counted.

Per run: wall seconds (start-up and shutdown excluded: the time of an empty topic's run
is subtracted), events/s, key-windows (rows written to `event_metrics`), peak resident
memory of the dataflow process, and the rate relative to the smallest K. Then a least
squares fit of the wall time over the sweep, `seconds = a * events + b * key-windows`,
gives the cost per event `a` and per key-window `b` (N is the same in every run, so `a`
comes from the fit's intercept). The topic holds no heartbeats, so a window closes only
when a later event of its campaign passes it: with as many keys as events nothing
closes, and that run measures the memory of N open keys instead (left out of the fit).

Then the same topic of `--dims-keys` campaigns (default 100) again with one dimension
set (`country`) and with two (`country;country,device`): events/s, slice rows written,
peak RSS, and the rate relative to the run without slices. Each run checks that every
set's slices add up to every event.
"""

import argparse
import asyncio
import random
import time

from ingest.producer import KafkaEventProducer
from protos.analytics.v1 import analytics_pb2 as pb

from .common import fresh_topics, run_flow, stack

PARTITIONS = 4
USERS = 100_000
CHUNK = 50_000
COUNTRIES = [f"C{i:02d}" for i in range(20)]
DEVICES = ["ios", "android", "web"]
GROUP_BYS = ("country", "country;country,device")


async def fill(bootstrap: str, topic: str, n: int, keys: int) -> None:
    """N events, 1 ms apart, ending a minute ago; campaign of event i: i mod `keys`."""
    rng = random.Random(keys)
    start = int(time.time() * 1000) - n - 60_000
    producer = KafkaEventProducer(bootstrap, topic, timeout_s=120)
    try:
        for first in range(0, n, CHUNK):
            records = []
            for i in range(first, min(first + CHUNK, n)):
                campaign = f"c{i % keys}"
                event = pb.RawEvent(
                    campaign_id=campaign,
                    event_type="impression",
                    timestamp=start + i,
                    event_id=f"k{keys}-{i}",
                    value=rng.randrange(400) / 8,
                    dimensions={
                        "user_id": f"user-{rng.randrange(USERS)}",
                        "country": COUNTRIES[rng.randrange(len(COUNTRIES))],
                        "device": DEVICES[rng.randrange(len(DEVICES))],
                    },
                )
                records.append((campaign.encode(), event.SerializeToString()))
            for i in range(0, len(records), 10_000):
                await producer.send(records[i : i + 10_000])
    finally:
        producer.close()


def fit(points: list[tuple[int, float]], events: int) -> tuple[float, float]:
    """Least squares `seconds = c + b * key_windows`; returns (a = c / events, b)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return (mean_y - b * mean_x) / events, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=1_000_000)
    parser.add_argument(
        "--keys", default="100,10000,100000,1000000", help="comma-separated key counts"
    )
    parser.add_argument(
        "--dims-keys", type=int, default=100, help="key count of the dimension runs (0: none)"
    )
    args = parser.parse_args()
    n = args.events
    sweep = [int(k) for k in args.keys.split(",")]
    bootstrap, admin_dsn = stack()
    empty = fresh_topics(bootstrap, PARTITIONS)
    empty_run = run_flow(bootstrap, admin_dsn, empty, 0)
    idle, idle_cpu, idle_rss = empty_run.wall_s, empty_run.cpu_s, empty_run.peak_rss
    print(f"empty topic: {idle:.2f} s (start-up and shutdown), peak RSS {idle_rss / 2**20:.0f} MB")
    print(
        f"{'keys':>10}{'key-windows':>13}{'seconds':>9}{'events/s':>11}"
        f"{'CPU s':>8}{'peak RSS MB':>13}{'rate / first':>14}"
    )
    results: list[tuple[int, int, float]] = []
    filled: dict[int, dict[str, str]] = {}
    first_rate = 0.0
    for keys in sweep:
        topics = filled[keys] = filled_topics(bootstrap, n, keys)
        run = run_flow(bootstrap, admin_dsn, topics, n)
        wall, cpu, rss, rows = run.wall_s, run.cpu_s, run.peak_rss, run.rows
        seconds = wall - idle
        if seconds < 1.0:
            raise SystemExit(f"{keys} keys: {seconds:.2f} s is too short to measure; add events")
        rate = n / seconds
        first_rate = first_rate or rate
        results.append((keys, rows, seconds))
        print(
            f"{keys:>10,}{rows:>13,}{seconds:>9.1f}{rate:>11,.0f}"
            f"{cpu - idle_cpu:>8.1f}{rss / 2**20:>13,.0f}{rate / first_rate:>14.3f}"
        )
    # With as many keys as events, every key has one event and no later one closes its
    # window (the topic has no heartbeats): that run measures open keys, not closing.
    closing = [(rows, s) for keys, rows, s in results if keys < n]
    if len(closing) >= 2:
        per_event, per_window = fit(closing, n)
        print(
            f"fit over the runs with fewer keys than events: {per_event * 1e6:.2f} us per "
            f"event + {per_window * 1e6:.1f} us per key-window"
        )
    if args.dims_keys:
        keys = args.dims_keys
        topics = filled.get(keys) or filled_topics(bootstrap, n, keys)
        dimension_runs(bootstrap, admin_dsn, topics, n, keys, idle)


def filled_topics(bootstrap: str, n: int, keys: int) -> dict[str, str]:
    topics = fresh_topics(bootstrap, PARTITIONS)
    asyncio.run(fill(bootstrap, topics["raw"], n, keys))
    time.sleep(3.0)  # let the broker settle after the fill
    return topics


def dimension_runs(  # noqa: PLR0917 (the sweep's context)
    bootstrap: str, admin_dsn: str, topics: dict[str, str], n: int, keys: int, idle: float
) -> None:
    """The same topic without slices, with one dimension set and with two."""
    print(f"dimension sets at {keys:,} keys:")
    print(
        f"{'PULSE_GROUP_BY':>26}{'slice rows':>12}{'seconds':>9}{'events/s':>11}"
        f"{'peak RSS MB':>13}{'rate / none':>13}"
    )
    base = 0.0
    for group_by in ("", *GROUP_BYS):
        run = run_flow(bootstrap, admin_dsn, topics, n, {"PULSE_GROUP_BY": group_by})
        rate = n / max(run.wall_s - idle, 1e-9)
        base = base or rate
        print(
            f"{group_by or '(none)':>26}{run.slice_rows:>12,}{run.wall_s - idle:>9.1f}"
            f"{rate:>11,.0f}{run.peak_rss / 2**20:>13,.0f}{rate / base:>13.3f}"
        )


if __name__ == "__main__":
    main()
