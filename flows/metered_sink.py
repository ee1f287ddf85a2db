"""A sink wrapper that times every batch written and counts the failed ones."""

import time
from typing import TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from . import metrics

X = TypeVar("X")


class _MeteredPartition(StatelessSinkPartition[X]):
    def __init__(self, inner: StatelessSinkPartition[X], sink: str) -> None:
        self._inner = inner
        self._seconds = metrics.SINK_SECONDS.labels(sink)
        self._errors = metrics.SINK_ERRORS.labels(sink)

    def write_batch(self, items: list[X]) -> None:
        start = time.perf_counter()
        try:
            self._inner.write_batch(items)
        except Exception:
            self._errors.inc()
            raise
        self._seconds.observe(time.perf_counter() - start)

    def close(self) -> None:
        self._inner.close()


class MeteredSink(DynamicSink[X]):
    """`inner`, with `pulse_flow_sink_batch_duration_seconds{sink}` per batch written and
    `pulse_flow_sink_errors_total{sink}` per batch that raised."""

    def __init__(self, inner: DynamicSink[X], sink: str) -> None:
        self._inner = inner
        self._sink = sink

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MeteredPartition[X]:
        part = self._inner.build(step_id, worker_index, worker_count)
        return _MeteredPartition(part, self._sink)
