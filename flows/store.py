"""The store step: what the window step emits, written by a thread beside the dataflow.

The window step's rows go to a stateful step (keyed by partition, as the window step)
that queues them for a writer thread. The thread writes them with a `DynamicSink`'s
partition (the TimescaleDB sink in production), so the database works while the
dataflow goes on: at 100,000 campaigns the worker waited on TimescaleDB for a quarter of
its time when the sink was an `output` step.

No row is lost by writing later. Bytewax commits an epoch (with recovery) once every
stateful step has taken its snapshot for it, and this step's snapshot waits until every
item it queued is written: a crash before that resumes from the previous epoch, whose
replay writes the rows again (the sink's writes are idempotent). An `output` step's
writes are not part of that commit, so the store written as one could commit an epoch
before its last rows were written.

Queued batches that wait while the thread writes are written together, as one batch
(as Bytewax would have handed them to the sink in one call). A write that fails (after
the sink's own retries) stops the dataflow at the step's next batch or snapshot.
"""

import threading
from collections import deque
from typing import Generic, TypeVar

from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

X = TypeVar("X")

QUEUED_BATCHES = 2  # batches waiting for the thread before the dataflow waits too
MAX_WRITE_ITEMS = 50_000  # items written together at most (one transaction)


class PipelinedWriter(Generic[X]):
    """Writes batches with `part` from a thread, in order; `flush` waits for them."""

    def __init__(
        self,
        part: StatelessSinkPartition[X],
        queued: int = QUEUED_BATCHES,
        max_items: int = MAX_WRITE_ITEMS,
    ) -> None:
        self._part = part
        self._queued = queued
        self._max_items = max_items
        self._pending: deque[list[X]] = deque()
        self._writing = False
        self._error: BaseException | None = None
        self._closed = False
        self._users = 0  # store logics (keys) using this writer and not at their end
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pulse-store-writer", daemon=True)
        self._thread.start()

    def submit(self, items: list[X]) -> None:
        """Queue a batch (waits while `queued` batches wait already)."""
        with self._cond:
            while len(self._pending) >= self._queued and self._error is None:
                self._cond.wait()
            self._raise_failure()
            if items:
                self._pending.append(items)
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every batch queued so far is written; raise if a write failed."""
        with self._cond:
            while (self._pending or self._writing) and self._error is None:
                self._cond.wait()
            self._raise_failure()

    def attach(self) -> None:
        with self._cond:
            self._users += 1

    def detach(self) -> None:
        """One user reached the end of its input; the last one closes the writer."""
        with self._cond:
            self._users -= 1
            last = self._users == 0
        if last:
            self.close()
        else:
            self.flush()

    def close(self) -> None:
        """Write what is queued, stop the thread and close the partition."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()
            self._part.close()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending.popleft()
                while self._pending and len(batch) + len(self._pending[0]) <= self._max_items:
                    batch += self._pending.popleft()
                self._writing = True
                self._cond.notify_all()
            try:
                self._part.write_batch(batch)
            except BaseException as exc:  # handed to the dataflow's thread
                with self._cond:
                    self._error = exc
                    self._writing = False
                    self._pending.clear()
                    self._cond.notify_all()
                self._part.close()
                return
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _StoreLogic(StatefulBatchLogic[list[X], None, None]):
    """One key's (partition's) share of the store step; the writer is the worker's.
    Its items are lists (what one activation of the step before emitted)."""

    def __init__(self, writer: PipelinedWriter[X]) -> None:
        self._writer = writer
        writer.attach()

    def on_batch(self, values: list[list[X]]) -> tuple[list[None], bool]:
        self._writer.submit([item for batch in values for item in batch])
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[None], bool]:
        self._writer.detach()  # written (and closed after the worker's last key)
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        """Nothing to keep, but the epoch must not commit before its rows are written."""
        self._writer.flush()


class StoreStep(Generic[X]):
    """Builds the store step's logic: one writer (thread, sink partition) per worker
    thread, shared by the keys the worker holds.

    Bytewax does not tell a stateful step's builder its worker index, so the sink's
    partitions are built as worker 0 of 1; the sinks used here ignore both.
    """

    def __init__(self, sink: DynamicSink[X], step_id: str) -> None:
        self._sink = sink
        self._step_id = step_id
        self._writers: dict[int, PipelinedWriter[X]] = {}
        self._lock = threading.Lock()

    def logic(self, _resume: None) -> _StoreLogic[X]:
        worker = threading.get_ident()
        with self._lock:
            writer = self._writers.get(worker)
            if writer is None:
                part = self._sink.build(self._step_id, 0, 1)
                writer = self._writers[worker] = PipelinedWriter(part)
        return _StoreLogic(writer)
