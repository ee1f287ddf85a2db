"""The edge's producer against the real broker: acknowledged means readable."""

import asyncio
import socket

import pytest
from confluent_kafka import Consumer, TopicPartition

from ingest.producer import KafkaEventProducer
from pulse.errors import KafkaDeliveryError
from tests.conftest import Stack, Topics


def read_all(
    bootstrap: str, topic: str, partitions: int, expected: int
) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, bytes, bytes]] = []
    for _ in range(100):
        for msg in consumer.consume(1000, timeout=0.2):
            assert msg.error() is None
            out.append((msg.partition() or 0, msg.key() or b"", msg.value() or b""))
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_acknowledged_records_are_in_the_topic_in_key_order(stack: Stack, topics: Topics) -> None:
    records = [(f"c{i % 5}".encode(), f"event-{i}".encode()) for i in range(5000)]

    async def produce() -> None:
        producer = KafkaEventProducer(stack.kafka_bootstrap, topics.raw, timeout_s=20)
        try:
            for start in range(0, len(records), 1000):
                await producer.send(records[start : start + 1000])
        finally:
            producer.close()

    asyncio.run(produce())
    got = read_all(stack.kafka_bootstrap, topics.raw, 3, len(records))
    assert sorted(v for _p, _k, v in got) == sorted(v for _k, v in records)
    # One key, one partition, produce order kept.
    for key in {k for k, _v in records}:
        assert len({p for p, k, _v in got if k == key}) == 1
        assert [v for _p, k, v in got if k == key] == [v for k2, v in records if k2 == key]


def test_unreachable_broker_fails_the_batch_instead_of_accepting(topics: Topics) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens there once closed

    async def produce() -> None:
        producer = KafkaEventProducer(f"127.0.0.1:{dead_port}", topics.raw, timeout_s=2)
        try:
            await producer.send([(b"k", b"v")] * 10)
        finally:
            producer.close(timeout_s=1)

    with pytest.raises(KafkaDeliveryError, match="acknowledge"):
        asyncio.run(produce())
