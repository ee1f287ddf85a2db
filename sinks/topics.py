"""Creates the Kafka topics Pulse uses (idempotent)."""

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pulse.errors import KafkaAdminError

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, timeout_s: float = 30
) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(topic)
            log.info("created topic %s with %d partitions", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaAdminError(f"creating topic {topic} failed: {exc}") from exc
    return created
