"""Heartbeat rounds with a fake producer: placement, failures counted, logged once."""

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from ingest.heartbeat import HeartbeatWriter, edge_source
from protos.analytics.v1 import analytics_pb2 as pb

TOPIC = "events.raw"


class FakeProducer:
    """Records produce() calls; `refuse_from` makes the n-th call on raise BufferError."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self.metadata_error: KafkaException | None = None
        self.refuse_from: int | None = None
        self.produced: list[tuple[str, bytes, bytes, int, Any]] = []
        self.callbacks: list[Any] = []

    def list_topics(self, topic: str, timeout: float) -> Any:
        if self.metadata_error is not None:
            raise self.metadata_error
        found = SimpleNamespace(partitions=dict.fromkeys(range(self.partitions)), error=None)
        return SimpleNamespace(topics={topic: found})

    def produce(self, topic, value, key, *, partition, headers, on_delivery) -> None:
        if self.refuse_from is not None and len(self.produced) >= self.refuse_from:
            raise BufferError("queue full")
        self.produced.append((topic, value, key, partition, headers))
        self.callbacks.append(on_delivery)

    def deliver(self, err: KafkaError | None = None) -> None:
        for callback in self.callbacks:
            callback(err, None)
        self.callbacks.clear()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def writer(producer: FakeProducer, clock: Any = lambda: 42) -> HeartbeatWriter:
    return HeartbeatWriter(producer, TOPIC, "edge@h:1", 1.0, clock=clock)  # type: ignore[arg-type]


def test_a_round_is_one_heartbeat_per_partition() -> None:
    producer = FakeProducer(partitions=4)
    w = writer(producer)
    assert w.beat() == 0  # no partitions known yet
    w.refresh_partitions()
    sent = sample("pulse_ingest_heartbeats_total")

    assert w.beat() == 4
    producer.deliver()

    assert [(t, k, p, h) for t, _v, k, p, h in producer.produced] == [
        (TOPIC, b"", p, [("pulse.kind", b"heartbeat")]) for p in range(4)
    ]
    beat = pb.Heartbeat.FromString(producer.produced[0][1])
    assert (beat.wall_time_ms, beat.source) == (42, "edge@h:1")
    assert sample("pulse_ingest_heartbeats_total") - sent == 4


def test_failures_are_counted_and_logged_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer(partitions=3)
    w = writer(producer)
    w.refresh_partitions()
    failed = sample("pulse_ingest_heartbeat_failures_total")
    caplog.set_level(logging.INFO, logger="ingest.heartbeat")

    producer.refuse_from = 1
    assert w.beat() == 1  # the rest of the round is dropped
    producer.refuse_from = 0
    assert w.beat() == 0
    producer.metadata_error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    w.refresh_partitions()  # keeps the partitions it knew
    assert w.partitions == (0, 1, 2)
    producer.deliver(KafkaError(KafkaError._MSG_TIMED_OUT))

    assert sample("pulse_ingest_heartbeat_failures_total") - failed == 2 + 3 + 1 + 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "queue full" in warnings[0].getMessage()

    producer.refuse_from = None
    w.beat()
    producer.deliver()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO][-1] == (
        f"heartbeats to {TOPIC} are acknowledged again"
    )
    producer.refuse_from = 0
    w.beat()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_run_beats_on_schedule_and_stops() -> None:
    producer = FakeProducer(partitions=2)
    times = iter(range(1000, 100_000, 1000))
    w = HeartbeatWriter(producer, TOPIC, "edge@h:1", 0.02, clock=lambda: next(times))  # type: ignore[arg-type]

    async def run() -> None:
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0.2)
        w.stop()
        await asyncio.wait_for(task, 1)

    asyncio.run(run())
    stamps = [pb.Heartbeat.FromString(v).wall_time_ms for _t, v, _k, _p, _h in producer.produced]
    rounds = len(stamps) // 2
    assert rounds >= 3
    assert stamps == [t for t in range(1000, 1000 * (rounds + 1), 1000) for _p in range(2)]
    assert [p for *_x, p, _h in producer.produced] == [0, 1] * rounds


def test_a_missing_topic_is_a_failure_not_a_crash() -> None:
    producer = FakeProducer()
    producer.metadata_error = KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    w = HeartbeatWriter(producer, TOPIC, "edge@h:1", 0.01)  # type: ignore[arg-type]

    async def run() -> None:
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0.1)
        w.stop()
        await asyncio.wait_for(task, 1)

    asyncio.run(run())
    assert producer.produced == []
    assert w.partitions == ()


def test_edge_source() -> None:
    assert edge_source(50051, "edge-1") == "edge@edge-1:50051"
    assert edge_source(1).startswith("edge@")
    with pytest.raises(ValueError, match="positive"):
        HeartbeatWriter(FakeProducer(), TOPIC, "s", 0)  # type: ignore[arg-type]
