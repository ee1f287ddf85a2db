"""The edge's heartbeats against the real broker: every partition, in order, fake clock."""

import asyncio
import uuid

from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]
from prometheus_client import REGISTRY

from ingest.heartbeat import HeartbeatWriter
from ingest.producer import KafkaEventProducer
from protos.analytics.v1 import analytics_pb2 as pb
from runtime.topics import ensure_topics
from tests.conftest import Stack
from tests.kafka import consume_all

SOURCE = "edge@test-host:50051"


class FakeClock:
    """Wall time that moves one second per reading; remembers what it returned."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.readings: list[int] = []
        self._next = start_ms

    def __call__(self) -> int:
        self.readings.append(self._next)
        self._next += 1000
        return self.readings[-1]


def read_heartbeats(bootstrap: str, topic: str, partitions: int) -> dict[int, list[int]]:
    """Wall times per partition, in offset order; checks key, header and source."""
    out: dict[int, list[int]] = {p: [] for p in range(partitions)}
    for partition, _offset, key, value, headers in consume_all(bootstrap, topic, partitions):
        assert key == b""
        assert headers == [("pulse.kind", b"heartbeat")]
        beat = pb.Heartbeat.FromString(value or b"")
        assert beat.source == SOURCE
        out[partition].append(beat.wall_time_ms)
    return out


def sent_total() -> float:
    return REGISTRY.get_sample_value("pulse_ingest_heartbeats_total") or 0.0


def failures_total() -> float:
    return REGISTRY.get_sample_value("pulse_ingest_heartbeat_failures_total") or 0.0


def test_every_partition_gets_every_heartbeat_in_order(stack: Stack) -> None:
    topic = f"test-{uuid.uuid4().hex[:10]}.raw"
    ensure_topics(stack.kafka_bootstrap, [topic], partitions=3)
    clock = FakeClock()
    sent, failed = sent_total(), failures_total()

    async def run() -> None:
        producer = KafkaEventProducer(stack.kafka_bootstrap, topic, timeout_s=10)
        writer = HeartbeatWriter(producer.raw_producer, topic, SOURCE, 0.1, clock=clock)
        try:
            task = asyncio.create_task(writer.run())
            await asyncio.sleep(1.0)
            writer.stop()
            await task
            assert writer.partitions == (0, 1, 2)
        finally:
            await asyncio.to_thread(producer.close)

    asyncio.run(run())

    rounds = len(clock.readings)
    assert 5 <= rounds <= 12  # ten rounds in a second, give or take scheduling
    assert clock.readings == [1_700_000_000_000 + 1000 * i for i in range(rounds)]
    got = read_heartbeats(stack.kafka_bootstrap, topic, 3)
    assert got == {p: clock.readings for p in range(3)}
    assert sent_total() - sent == 3 * rounds
    assert failures_total() == failed


def test_partitions_added_later_get_heartbeats_too(stack: Stack) -> None:
    topic = f"test-{uuid.uuid4().hex[:10]}.raw"
    ensure_topics(stack.kafka_bootstrap, [topic], partitions=2)
    clock = FakeClock()

    async def run() -> int:
        producer = KafkaEventProducer(stack.kafka_bootstrap, topic, timeout_s=10)
        writer = HeartbeatWriter(
            producer.raw_producer, topic, SOURCE, 0.05, clock=clock, refresh_s=0.2
        )
        try:
            task = asyncio.create_task(writer.run())
            await asyncio.sleep(0.4)
            assert sorted(writer.partitions) == [0, 1]
            admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
            futures = admin.create_partitions([NewPartitions(topic, 3)])
            await asyncio.to_thread(futures[topic].result, 10)
            before = len(clock.readings)
            for _ in range(100):
                if len(writer.partitions) == 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            writer.stop()
            await task
            assert sorted(writer.partitions) == [0, 1, 2]
            return before
        finally:
            await asyncio.to_thread(producer.close)

    before = asyncio.run(run())

    got = read_heartbeats(stack.kafka_bootstrap, topic, 3)
    assert got[0] == got[1] == clock.readings
    # The new partition gets every round from some round after it was added on.
    first = clock.readings.index(got[2][0])
    assert first >= before
    assert got[2] == clock.readings[first:]
    assert len(got[2]) >= 3
