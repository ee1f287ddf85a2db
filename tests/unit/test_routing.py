"""Balanced state keys: checked against Bytewax's own routing, in-process."""

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

from flows.routing import SPREAD, KeyedSnapshot, key_hash, state_key, unwrap
from pulse.errors import ConfigError
from pulse.windowing import PartitionWindows


def workers_of(keys: list[str], workers: int) -> list[set[str]]:
    """The keys each worker thread held, as Bytewax routed them."""
    flow = Dataflow("routing")
    stream = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    held = op.stateful_map("hold", stream, lambda s, _v: (s, threading.get_ident()))
    seen: list[tuple[str, int]] = []
    op.inspect("seen", held, lambda _s, kv: seen.append(kv))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    by_thread: dict[int, set[str]] = {}
    for key, thread in seen:
        by_thread.setdefault(thread, set()).add(key)
    return sorted(by_thread.values(), key=sorted)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_key_hash_predicts_where_bytewax_routes_a_key(workers: int) -> None:
    keys = [str(p) for p in range(12)] + ["campaign-001", "a longer key of several blocks"]
    predicted: dict[int, set[str]] = {}
    for key in keys:
        predicted.setdefault(key_hash(key) % workers, set()).add(key)
    assert workers_of(keys, workers) == sorted(predicted.values(), key=sorted)


@pytest.mark.parametrize("workers", [2, 3, 4, 6])
def test_partitions_spread_round_robin_over_any_worker_count(workers: int) -> None:
    keys = [state_key(p) for p in range(12)]
    assert all(key_hash(k) % SPREAD == p for p, k in enumerate(keys))
    groups = workers_of(keys, workers)
    assert sorted(len(g) for g in groups) == [12 // workers] * workers
    assert {frozenset(g) for g in groups} == {
        frozenset(state_key(p) for p in range(12) if p % workers == w) for w in range(workers)
    }


def test_a_store_of_partition_number_keys_is_refused_with_the_reason() -> None:
    snapshot = PartitionWindows(3, 60_000, 10_000, 30_000).snapshot()
    assert unwrap(KeyedSnapshot(state_key(3), snapshot)) is snapshot
    with pytest.raises(ConfigError, match="keyed by partition number"):
        unwrap(snapshot)
