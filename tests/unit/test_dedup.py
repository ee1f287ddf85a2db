"""The id memory behind dedup, against a plain dict of last-counted times."""

import math
import pickle
import random

import numpy as np
import pytest
from xxhash import xxh3_128_digest

from pulse.dedup import BYTES_PER_ID, DIGEST_BYTES, IdMemory, event_digest


def digest(key: str) -> bytes:
    return xxh3_128_digest(key.encode())


def reference(events: list[tuple[str, int]], horizon_s: int) -> list[bool]:
    """First sightings: no counted event with the key within `horizon_s` log seconds."""
    counted: dict[str, int] = {}
    out = []
    for key, log_ms in events:
        now = log_ms // 1000
        before = counted.get(key)
        if before is not None and now - before <= horizon_s:
            out.append(False)
        else:
            counted[key] = now
            out.append(True)
    return out


def events(seed: int, n: int, keys: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    clock = 1_764_000_000_000
    out = []
    for _ in range(n):
        clock += rng.randrange(0, 60)
        out.append((f"c\0{rng.randrange(keys)}", clock))
    return out


def decide(memory: IdMemory, batch: list[tuple[str, int]]) -> list[bool]:
    digests = b"".join(digest(key) for key, _ in batch)
    decided: list[bool] = memory.admit(digests, [t for _, t in batch]).tolist()
    return decided


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_match_the_reference_whatever_the_batches(seed: int) -> None:
    stream = events(seed, 60_000, keys=20_000)
    want = reference(stream, horizon_s=45)
    rng = random.Random(seed)
    memory = IdMemory(45)
    got: list[bool] = []
    i = 0
    while i < len(stream):
        size = rng.choice([1, 7, 500, 3000])
        got += decide(memory, stream[i : i + size])
        i += size
    assert got == want
    assert 0 < want.count(False) < len(want)


def test_a_retry_in_the_same_batch_is_a_duplicate() -> None:
    memory = IdMemory(60)
    t = 1_764_000_000_000
    batch = [("a", t), ("b", t), ("a", t + 1), ("a", t + 2), ("c", t + 3)]
    assert decide(memory, batch) == [True, True, False, False, True]
    assert decide(memory, [("b", t + 10_000), ("d", t + 10_000)]) == [False, True]


def test_ids_are_forgotten_after_the_horizon_and_memory_shrinks() -> None:
    memory = IdMemory(60)
    t = 1_764_000_000_000
    decide(memory, [(f"k{i}", t) for i in range(1000)])
    assert len(memory) == 1000
    # 60 s later: still within the horizon (inclusive, in whole seconds).
    assert decide(memory, [("k1", t + 60_999)]) == [False]
    # 61 s later: a new event, remembered anew; the old ids are dropped.
    assert decide(memory, [("k2", t + 61_000)]) == [True]
    assert decide(memory, [("k3", t + 130_000)]) == [True]
    assert len(memory) == 1


def test_memory_per_id_is_at_most_twenty_two_bytes() -> None:
    memory = IdMemory(3600)
    t = 1_764_000_000_000
    for start in range(0, 100_000, 5000):
        decide(memory, [(f"id-{i}", t + i) for i in range(start, start + 5000)])
    assert len(memory) == 100_000
    # 20 bytes of hash and time, and 1-2 bytes of each run's bitmap.
    assert (BYTES_PER_ID + 1) * 100_000 <= memory.nbytes <= (BYTES_PER_ID + 2) * 100_000
    assert memory.run_count == 2  # 16 batches merged into one run, the last 4 into another


def test_runs_stay_few_whatever_the_batch_sizes() -> None:
    """Four runs merge when the oldest is at most twice the newest, so of any four runs
    in a row the first is over twice the last: at most 3 log2(ids) + 1 runs."""
    rng = random.Random(7)
    memory = IdMemory(3600)
    t = 1_764_000_000_000
    i = 0
    while i < 200_000:
        size = rng.choice([1, 3, 40, 700, 5000])
        decide(memory, [(f"id-{k}", t + k) for k in range(i, i + size)])
        i += size
        assert memory.run_count <= 3 * math.ceil(math.log2(i)) + 1
    assert len(memory) == i


def test_a_64_bit_half_collision_is_not_a_duplicate() -> None:
    memory = IdMemory(60)
    a = b"\x01" * 8 + b"\x02" * 8
    b = b"\x01" * 8 + b"\x03" * 8  # the same first half, another id
    assert memory.admit(a, [1000]).tolist() == [True]
    assert memory.admit(b, [1000]).tolist() == [True]
    assert memory.admit(a + b, [2000, 2000]).tolist() == [False, False]
    assert len(a) == DIGEST_BYTES


def test_a_snapshot_restores_the_same_decisions() -> None:
    stream = events(9, 20_000, keys=5000)
    want = reference(stream, horizon_s=30)
    memory = IdMemory(30)
    first = decide(memory, stream[:10_000])
    restored = IdMemory.restore(pickle.loads(pickle.dumps(memory.snapshot())), 30)
    assert first + decide(restored, stream[10_000:]) == want
    assert np.array_equal(
        restored.admit(b"", []), np.ones(0, dtype=np.bool_)
    )  # an empty batch decides nothing


def test_the_decoder_hashes_ids_as_event_digest_does() -> None:
    from confluent_kafka import Message

    from flows.records import Decoder
    from protos.analytics.v1 import analytics_pb2 as pb

    events = [
        pb.RawEvent(
            campaign_id=f"c{i % 3}", event_type="view", timestamp=1000 + i, event_id=f"e{i}"
        )
        for i in range(10)
    ]
    messages = [
        Message(
            key=e.campaign_id.encode(),
            value=e.SerializeToString(),
            topic="t",
            partition=0,
            offset=i,
        )
        for i, e in enumerate(events)
    ]
    beat = pb.Heartbeat(wall_time_ms=5000, source="test").SerializeToString()
    messages.append(Message(key=b"", value=beat, topic="t", partition=0, offset=10))
    [(_key, batch)] = Decoder("dlq")(messages)  # type: ignore[misc]
    assert batch.digests == b"".join(event_digest(e.campaign_id, e.event_id) for e in events)
    [(_key, off)] = Decoder("dlq", dedup=False)(messages)  # type: ignore[misc]
    assert off.digests == b""
    assert batch.event_count == off.event_count == 10  # heartbeats excluded, dedup or not
    assert batch.last_log_ms == off.last_log_ms == 5000


def test_large_arrays_are_mapped_on_glibc() -> None:
    import platform

    from flows.memory import map_large_arrays

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert map_large_arrays()
