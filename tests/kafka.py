"""Reading topics back in tests, with a plain consumer of their own (not Pulse's readers)."""

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int = 0) -> list[Record]:
    """Every record of the topic as (partition, offset, key, value, headers), partition by
    partition in offset order, up to the end of each partition (`expected`: about how
    many there are, to wait long enough for large topics)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Record] = []
    at_end: set[int] = set()
    for _ in range(max(600, 2 * expected // 1000)):
        for msg in consumer.consume(1000, timeout=0.1):
            error = msg.error()
            if error is not None:
                assert not error.fatal(), error  # transient ones are retried by librdkafka
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                continue
            at_end.discard(msg.partition() or 0)
            raw = msg.headers() or []
            assert isinstance(raw, list)
            headers = [(k, v if isinstance(v, bytes) else b"") for k, v in raw]
            out.append((msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(), headers))
        if len(at_end) == partitions:
            break
    consumer.close()
    return sorted(out, key=lambda r: (r[0], r[1]))


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete a test's topics, so the broker's log directory does not grow run after run
    (a broker holding thousands of test partitions takes minutes to start)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
