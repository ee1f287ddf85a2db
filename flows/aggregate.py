"""The aggregation dataflow: Kafka records -> per-campaign windows -> sinks.

    input -> decode_batch -> [dead letters] -------------------------> dead-letter sink
                          -> keyed chunks -> windows -> rows --------> metrics sink
                                                      -> late events -> dead-letter sink

Sources and sinks are parameters, so tests run the same flow on `TestingSource`.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from confluent_kafka import Message

from pulse.aggregation import (
    CampaignSnapshot,
    CampaignWindows,
    EventChunk,
    LateEvent,
    MetricRow,
)
from pulse.windows import TumblingWindows

from . import metrics
from .records import (
    DeadLetter,
    OutMessage,
    dead_letter_message,
    decode_batch,
    late_message,
)


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """What shapes the results. Changing it between runs invalidates recovery state."""

    window_ms: int
    lateness_ms: int
    source_topic: str
    late_topic: str
    dlq_topic: str


class _WindowLogic(StatefulBatchLogic[EventChunk, MetricRow | LateEvent, CampaignSnapshot]):
    """Bytewax shell around the pure `CampaignWindows` state of one campaign."""

    def __init__(self, config: FlowConfig, resume: CampaignSnapshot | None) -> None:
        self._windows = TumblingWindows(config.window_ms)
        self._lateness_ms = config.lateness_ms
        self._state: CampaignWindows | None = (
            None
            if resume is None
            else CampaignWindows.restore(resume, self._windows, self._lateness_ms)
        )

    def on_batch(self, values: list[EventChunk]) -> tuple[Iterable[MetricRow | LateEvent], bool]:
        if self._state is None:
            self._state = CampaignWindows(values[0].campaign_id, self._windows, self._lateness_ms)
        events = values[0].events if len(values) == 1 else [e for v in values for e in v.events]
        rows, late = self._state.add(events)
        metrics.EVENTS_PROCESSED.inc(len(events) - len(late))
        if late:
            metrics.LATE_EVENTS.inc(len(late))
        out: list[MetricRow | LateEvent] = [*rows, *late]
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> CampaignSnapshot:
        assert self._state is not None  # snapshot follows at least one batch
        return self._state.snapshot()


def _is_dead(item: tuple[str, EventChunk] | DeadLetter) -> TypeGuard[DeadLetter]:
    return isinstance(item, DeadLetter)


def _is_row(item: MetricRow | LateEvent) -> TypeGuard[MetricRow]:
    return isinstance(item, MetricRow)


def build_flow(
    flow_id: str,
    config: FlowConfig,
    source: Source[Message],
    metrics_sink: Sink[MetricRow],
    kafka_sink: Sink[OutMessage],
) -> Dataflow:
    """Wire the aggregation dataflow between the given source and sinks."""
    TumblingWindows(config.window_ms)  # validates the length before anything runs
    flow = Dataflow(flow_id)
    records = op.input("kafka_in", flow, source)
    decoded = op.flat_map_batch("decode", records, decode_batch)
    split = op.branch("split_dead", decoded, _is_dead)
    dead = split.trues
    chunks: op.KeyedStream[EventChunk] = split.falses  # type: ignore[assignment]

    windowed = op.stateful_batch("windows", chunks, lambda resume: _WindowLogic(config, resume))
    results = op.map("drop_key", windowed, lambda kv: kv[1])
    by_kind = op.branch("split_late", results, _is_row)
    op.output("timescale_out", by_kind.trues, metrics_sink)

    def to_late_message(item: MetricRow | LateEvent) -> OutMessage:
        assert isinstance(item, LateEvent)
        return late_message(item, config.late_topic, config.source_topic)

    late_out = op.map("late_to_kafka", by_kind.falses, to_late_message)
    dead_out = op.map("dead_to_kafka", dead, lambda d: dead_letter_message(d, config.dlq_topic))
    counted_dead = op.inspect("count_dead", dead_out, lambda _step, _m: metrics.DEAD_LETTERS.inc())
    op.output("kafka_out", op.merge("side_outputs", late_out, counted_dead), kafka_sink)
    return flow
