"""The aggregation dataflow: Kafka records -> decoded batches -> partition state -> sinks.

    input -> decode (parse, validate, hash event ids) -> dead letters -> side sink
                 |
                 v  keyed by Kafka partition
             windows (dedup, pre-aggregation, watermarks, open windows, corrections,
                      rollups, alert rules)
                 |-> rows, corrections, rollups, late events, alerts -> store step
                 |       (a writer thread with the TimescaleDB sink, `flows/store.py`)
                 |-> late and shed events --------------------> side sink
                 '-> alerts ---------------------------------> notification sink

With a tracer, each batch of the window step is a span `aggregate partition N` linked to
the edge's produce spans of its records (their `traceparent` headers, collected by the
decoder), and it emits a `SpanMark` of that span after its rows: the TimescaleDB sink
links its write span to it.

The window state is keyed by source partition: the partition's records arrive in
offset order, and its heartbeats reach every campaign in it. Sources and sinks are
parameters, so tests run the same flow on `TestingSource` and `TestingSink`.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink
from confluent_kafka import Message
from opentelemetry.trace import Span, Tracer

from pulse.aggregation import LateEvent, MetricRow
from pulse.alerts.engine import AlertEngine
from pulse.alerts.model import AlertEvent
from pulse.alerts.rules import Rule
from pulse.corrections import Correction, CorrectionBatch
from pulse.dimensions import GroupBy
from pulse.preagg import NO_TIME, RecordBatch
from pulse.rollups import RollupRow
from pulse.shedding import ShedEvent
from pulse.windowing import NO_GROUPS, PartitionWindows, corrected_events
from pulse.windows import TumblingWindows
from runtime import otel
from sinks.kafka_outputs import SideRecord
from sinks.timescale_writer import StoreItem

from . import metrics
from .records import Decoder, late_record, shed_record
from .routing import KeyedSnapshot, state_key, unwrap
from .store import StoreStep

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """What shapes the results. Changing it between runs invalidates recovery state."""

    window_ms: int
    lateness_ms: int
    idle_ms: int
    source_topic: str
    late_topic: str
    dlq_topic: str
    rules: tuple[Rule, ...] = ()
    refresh_ms: float = 0  # rows of open windows at most this often (0: every batch)
    rollup_refresh_ms: float = 0  # rows of open hours and days at most this often
    correction_ms: int = 0  # late events of windows closed this recently correct them
    dedup_s: int = 0  # retries of an event id seen this recently are dropped (0: no dedup)
    group_by: GroupBy = NO_GROUPS  # dimension sets aggregated beside campaigns
    max_campaigns: int = 0  # campaigns aggregated per partition and UTC day (0: no limit)
    shed_topic: str = "events.shed"  # where events past `max_campaigns` go


# What the window step emits: one list per activation (not an item per row), so the
# steps after it pay Bytewax's per-item cost per batch.
Emitted = list[StoreItem | ShedEvent]


class _PartitionLogic(StatefulBatchLogic[RecordBatch, Emitted, KeyedSnapshot]):
    """Bytewax shell around the pure `PartitionWindows` of one source partition."""

    def __init__(
        self,
        config: FlowConfig,
        resume: KeyedSnapshot | None,
        clock: Callable[[], float],
        tracer: Tracer | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._tracer = tracer
        self._state: PartitionWindows | None = None
        if resume is not None:
            self._state = PartitionWindows.restore(
                unwrap(resume),
                config.window_ms,
                config.lateness_ms,
                config.idle_ms,
                self._alerts,
                refresh_ms=config.refresh_ms,
                rollup_refresh_ms=config.rollup_refresh_ms,
                correction_ms=config.correction_ms,
                dedup_s=config.dedup_s,
                group_by=config.group_by,
                max_campaigns=config.max_campaigns,
            )
            # The counter goes on from the count at the snapshot; the replay adds the rest.
            metrics.DUPLICATES.labels(str(self._state.partition)).inc(self._state.duplicates)

    def _alerts(self, saved: Any) -> AlertEngine | None:
        config = self._config
        if not config.rules:
            return None
        if saved is None:
            return AlertEngine(config.rules, config.window_ms)
        return AlertEngine.restore(saved, config.rules, config.window_ms)

    def on_batch(self, values: list[RecordBatch]) -> tuple[Iterable[Emitted], bool]:
        config = self._config
        if self._state is None:
            self._state = PartitionWindows(
                values[0].partition,
                config.window_ms,
                config.lateness_ms,
                config.idle_ms,
                self._alerts(None),
                refresh_ms=config.refresh_ms,
                rollup_refresh_ms=config.rollup_refresh_ms,
                correction_ms=config.correction_ms,
                dedup_s=config.dedup_s,
                group_by=config.group_by,
                max_campaigns=config.max_campaigns,
            )
        out: list[StoreItem | ShedEvent] = []
        span = None if self._tracer is None else self._start_span(self._tracer, values)
        now_ms = self._clock() * 1000  # paces progress rows only; results never see it
        duplicates = metrics.DUPLICATES.labels(str(self._state.partition))
        for batch in values:
            step = self._state.apply_batch(batch, now_ms)
            # Window rows and rollups before the corrections the store merges into them.
            out += step.rows
            out += step.rollups
            if step.corrections:  # one item: the store applies them in one transaction
                out.append(CorrectionBatch(tuple(step.corrections)))
            out += step.late
            out += step.alerts
            metrics.EVENTS_PROCESSED.inc(step.counted)
            metrics.CORRECTED_EVENTS.inc(step.corrected)
            metrics.LATE_EVENTS.inc(len(step.late))
            duplicates.inc(step.duplicates)
            metrics.WINDOWS_CLOSED.inc(step.closed)
            for dimension, count in step.overflow.items():
                metrics.DIMENSION_OVERFLOW.labels(dimension).inc(count)
            out += step.shed
            metrics.SHED_EVENTS.inc(len(step.shed))
            for day in step.full_days:
                log.warning(
                    "partition %d reached %d campaigns on %s: events of further campaigns "
                    "of that day are not aggregated but written to %s "
                    "(PULSE_MAX_CAMPAIGNS_PER_DAY)",
                    self._state.partition,
                    config.max_campaigns,
                    time.strftime("%Y-%m-%d", time.gmtime(day / 1000)),
                    config.shed_topic,
                    extra={"partition": self._state.partition},
                )
            for alert in step.alerts:
                metrics.ALERTS.labels(alert.rule, alert.state.value).inc()
        watermark_ms = self._state.max_watermark_ms
        if watermark_ms != NO_TIME:
            metrics.set_watermark(self._state.partition, watermark_ms / 1000)
        if span is not None:
            span.set_attribute("pulse.items", len(out))
            span.end()
            if out:  # the sink links its write span to this one
                out.append(otel.SpanMark.of(span))
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def _start_span(self, tracer: Tracer, values: list[RecordBatch]) -> Span:
        parents: dict[bytes, None] = {}
        for batch in values:
            parents.update(dict.fromkeys(batch.trace_parents))
        partition = values[0].partition
        return tracer.start_span(
            f"aggregate partition {partition}",
            links=otel.links_to(parents),
            attributes={
                "messaging.destination.partition.id": str(partition),
                "pulse.events": sum(batch.event_count for batch in values),
            },
        )

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        """The input ended (a non-tailing run): write the rows still pending."""
        if self._state is None:
            return [], StatefulBatchLogic.RETAIN
        return self._emit(*self._state.take_pending()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """When rows or corrections waiting for a refresh are due: a partition that goes
        quiet still writes them (a batch before then refreshes them itself)."""
        due_ms = None if self._state is None else self._state.next_refresh_ms()
        if due_ms is None:
            return None
        wait_ms = max(due_ms - self._clock() * 1000, 0.0)
        return datetime.now(UTC) + timedelta(milliseconds=wait_ms)

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        if self._state is None:
            return [], StatefulBatchLogic.RETAIN
        due = self._state.take_due(self._clock() * 1000)
        return self._emit(*due), StatefulBatchLogic.RETAIN

    @staticmethod
    def _emit(
        progress: list[MetricRow], rollups: list[RollupRow], corrections: list[Correction]
    ) -> list[Emitted]:
        rows: Emitted = [*progress, *rollups]
        if corrections:
            rows.append(CorrectionBatch(tuple(corrections)))
            metrics.CORRECTED_EVENTS.inc(corrected_events(corrections))
        return [rows] if rows else []

    def snapshot(self) -> KeyedSnapshot:
        state = self._state
        assert state is not None  # a snapshot follows at least one batch
        return KeyedSnapshot(state_key(state.partition), state.snapshot())


def _is_dead(item: tuple[str, RecordBatch] | SideRecord) -> TypeGuard[SideRecord]:
    return isinstance(item, SideRecord)


def _side_records(items: Emitted, config: FlowConfig) -> list[SideRecord]:
    out = []
    for item in items:
        if isinstance(item, LateEvent):
            out.append(late_record(item, config.late_topic, config.source_topic))
        elif isinstance(item, ShedEvent):
            out.append(
                shed_record(item, config.shed_topic, config.source_topic, config.max_campaigns)
            )
    return out


def _alerts(items: Emitted) -> list[AlertEvent]:
    return [item for item in items if isinstance(item, AlertEvent)]


def _store_items(items: Emitted) -> list[StoreItem] | None:
    kept = [item for item in items if not isinstance(item, ShedEvent)]
    return kept or None


def _nothing(_step: str, _item: object) -> None:
    return None


def build_flow(
    flow_id: str,
    config: FlowConfig,
    source: Source[Message],
    *,
    store_sink: DynamicSink[StoreItem],
    side_sink: Sink[SideRecord],
    notification_sink: Sink[AlertEvent],
    clock: Callable[[], float] = time.monotonic,
    tracer: Tracer | None = None,
) -> Dataflow:
    """Wire the aggregation dataflow between the given source and sinks.

    `clock` (seconds) only paces the progress rows of open windows. With a `tracer`
    the window step records spans (see the module doc); give the store sink the same one.
    """
    TumblingWindows(config.window_ms)  # validates the length before anything runs
    decoder = Decoder(
        config.dlq_topic,
        trace=tracer is not None,
        dedup=config.dedup_s > 0,
        dimensions=config.group_by.names,
    )
    flow = Dataflow(flow_id)
    records = op.input("kafka_in", flow, source)
    decoded = op.flat_map_batch("decode", records, decoder)
    split = op.branch("split_dead", decoded, _is_dead)
    dead = op.inspect("count_dead", split.trues, lambda _s, _d: metrics.DEAD_LETTERS.inc())
    batches: op.KeyedStream[RecordBatch] = split.falses  # type: ignore[assignment]

    windowed = op.stateful_batch(
        "windows", batches, lambda resume: _PartitionLogic(config, resume, clock, tracer)
    )
    stored = op.filter_map_value("store_items", windowed, _store_items)
    store = StoreStep[StoreItem](store_sink, "timescale_out")
    written = op.stateful_batch("timescale_out", stored, store.logic)
    # Emits nothing; as a step's end it makes the dataflow's end wait for the writes.
    op.inspect("stored", written, _nothing)
    results = op.map("drop_key", windowed, lambda kv: kv[1])

    aside = op.flat_map("aside_to_kafka", results, lambda items: _side_records(items, config))
    op.output("side_out", op.merge("side_records", aside, dead), side_sink)
    alerts = op.flat_map("alerts", results, _alerts)
    op.output("notifications_out", alerts, notification_sink)
    return flow
