"""Dedup cost: hashing and deciding per event, and memory per remembered id.

In-process, no services: `pulse.dedup.IdMemory` as the dataflow uses it (batches of
5,000 events in log-time order, large arrays mapped as in the worker), filled to N ids,
with 10% of the events retries of recent ones. Memory is measured three ways: the
arrays' bytes, the process's resident memory growth, and the size of a recovery
snapshot, each per remembered id.
"""

import argparse
import ctypes
import pickle
import random
import time
from pathlib import Path

import numpy as np

from flows.memory import map_large_arrays
from pulse.dedup import IdMemory, event_digest

BATCH = 5000


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--ids", type=int, default=5_000_000)
    parser.add_argument(
        "--heap", action="store_true", help="keep glibc's dynamic mmap threshold (the default)"
    )
    args = parser.parse_args()
    n = args.ids
    rng = random.Random(1)
    pairs = [(f"campaign-{rng.randrange(100):03d}", f"evt-{i}") for i in range(n)]

    started = time.perf_counter()
    digests = [event_digest(c, e) for c, e in pairs]
    hashing = (time.perf_counter() - started) / n

    # 10% of each batch re-sends events of the previous 50,000.
    batches: list[tuple[bytes, np.ndarray]] = []
    retries = 0
    clock = 1_764_000_000_000
    for start in range(0, n, BATCH):
        chunk = digests[start : start + BATCH]
        if start:
            again = [
                digests[rng.randrange(max(0, start - 50_000), start)] for _ in range(BATCH // 10)
            ]
            retries += len(again)
            chunk = chunk + again
        # 10,000 events a second of log time: every id stays within the one-hour horizon.
        at = clock + start // 10
        batches.append((b"".join(chunk), np.full(len(chunk), at, dtype=np.int64)))

    if not args.heap:
        map_large_arrays()  # as the dataflow worker does
    before = rss_bytes()
    memory = IdMemory(3600)
    dropped = 0
    started = time.perf_counter()
    for joined, log_ms in batches:
        dropped += int(np.count_nonzero(~memory.admit(joined, log_ms)))
    deciding = (time.perf_counter() - started) / (n + retries)
    grown = rss_bytes() - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the system
    trimmed = rss_bytes() - before
    if dropped != retries or len(memory) != n:
        raise SystemExit(f"dropped {dropped} of {retries} retries; {len(memory)} ids remembered")
    snapshot = len(pickle.dumps(memory.snapshot(), protocol=pickle.HIGHEST_PROTOCOL))

    print(f"{n:,} ids remembered, {retries:,} retries dropped, {memory.run_count} sorted runs")
    print(f"{'hash (xxh3-128 of campaign and event id)':<46}{hashing * 1e6:>8.2f} us/event")
    print(f"{'decide and remember (batches of 5,000)':<46}{deciding * 1e6:>8.2f} us/event")
    print(f"{'memory: the arrays':<46}{memory.nbytes / n:>8.1f} bytes/id")
    print(f"{'memory: resident growth of the process':<46}{grown / n:>8.1f} bytes/id")
    print(f"{'  after malloc_trim (freed heap returned)':<46}{trimmed / n:>8.1f} bytes/id")
    print(f"{'memory: recovery snapshot (pickled)':<46}{snapshot / n:>8.1f} bytes/id")


if __name__ == "__main__":
    main()
