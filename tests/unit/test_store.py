"""The store step's writer thread: order, flushes that wait, failures, closing."""

import threading
from typing import Any

import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.store import PipelinedWriter, StoreStep


class _Part(StatelessSinkPartition[int]):
    """Records each batch; a write waits while `gate` is clear; may fail on an item."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on
        self.closed = 0

    def write_batch(self, items: list[int]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            msg = f"cannot write {self.fail_on}"
            raise RuntimeError(msg)
        self.batches.append(list(items))

    def close(self) -> None:
        self.closed += 1


class _Sink(DynamicSink[int]):
    def __init__(self) -> None:
        self.parts: list[_Part] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        part = _Part()
        self.parts.append(part)
        return part


def test_batches_are_written_in_order_and_waiting_ones_together() -> None:
    part = _Part()
    part.gate.clear()
    writer = PipelinedWriter(part, queued=10)
    writer.submit([1, 2])
    assert part.entered.wait(10)  # the thread holds [1, 2] while the gate is shut
    for batch in ([3], [4, 5], [], [6]):
        writer.submit(batch)
    part.gate.set()
    writer.flush()
    assert part.batches == [[1, 2], [3, 4, 5, 6]]
    writer.close()
    assert part.closed == 1


def test_batches_written_together_stay_under_the_item_limit() -> None:
    part = _Part()
    part.gate.clear()
    writer = PipelinedWriter(part, queued=10, max_items=3)
    writer.submit([0])
    assert part.entered.wait(10)
    for batch in ([1, 2], [3], [4, 5, 6, 7], [8]):
        writer.submit(batch)
    part.gate.set()
    writer.flush()
    assert part.batches == [[0], [1, 2, 3], [4, 5, 6, 7], [8]]
    writer.close()


def test_a_snapshot_waits_until_every_queued_item_is_written() -> None:
    sink = _Sink()
    step = StoreStep(sink, "store")
    logic = step.logic(None)
    part = sink.parts[0]
    part.gate.clear()
    logic.on_batch([[1, 2], [3]])
    assert part.entered.wait(10)
    done = threading.Event()

    def snapshot() -> None:
        logic.snapshot()
        done.set()

    thread = threading.Thread(target=snapshot)
    thread.start()
    assert not done.wait(0.3)  # the write is still held: no snapshot, no commit
    part.gate.set()
    assert done.wait(10)
    thread.join()
    assert part.batches == [[1, 2, 3]]


def test_the_keys_of_a_worker_share_one_writer_closed_after_the_last_end() -> None:
    sink = _Sink()
    step = StoreStep(sink, "store")
    first, second = step.logic(None), step.logic(None)
    assert len(sink.parts) == 1
    first.on_batch([[1]])
    second.on_batch([[2]])
    first.on_eof()
    assert sink.parts[0].closed == 0
    second.on_eof()
    assert sink.parts[0].closed == 1
    assert sink.parts[0].batches in ([[1], [2]], [[1, 2]])
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(step.logic(None)))
    thread.start()
    thread.join()
    assert len(sink.parts) == 2  # another worker thread builds its own partition


def test_a_failed_write_stops_the_step_at_its_next_batch_or_snapshot() -> None:
    part = _Part(fail_on=2)
    writer = PipelinedWriter(part)
    writer.submit([1])
    writer.flush()
    writer.submit([2])
    with pytest.raises(RuntimeError, match="cannot write 2"):
        writer.flush()
    with pytest.raises(RuntimeError, match="cannot write 2"):
        writer.submit([3])
    assert part.batches == [[1]]  # nothing after the failure is written
    assert part.closed == 1
