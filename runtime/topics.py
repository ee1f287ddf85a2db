"""Kafka topic helpers: creation (idempotent), partition counts, reading stored records.

The readers let a sink find out, when it starts, what an earlier run of it already
wrote: the last record of each partition, or a whole (small) topic.
"""

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pulse.errors import KafkaAdminError

log = logging.getLogger(__name__)

# Offsets a last-record lookup steps back over when the newest offsets hold no data
# record (transaction markers, compacted-away records): 1, then 16, 256, 1024.
LAST_RECORD_LOOKBACKS = (1, 16, 256, 1024)


def ensure_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are.

    `security` (here and below): the librdkafka properties of `CommonSettings.kafka_security`.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, **(security or {})})
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
    _await_metadata(admin, missing, timeout_s)
    return created


def _await_metadata(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Wait until the broker's metadata shows every topic with a leader for each partition.

    A create is acknowledged once the controller has it; the broker answering metadata
    learns of it a moment later. Callers that look a new topic up right away (a sink's
    partition count, a reader) would otherwise be told it does not exist.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException:
            metadata = None
        if metadata is not None and all(_settled(metadata.topics.get(t)) for t in topics):
            return
        if time.monotonic() >= deadline:
            raise KafkaAdminError(
                f"topics {', '.join(topics)} created but not visible after {timeout_s:g} s"
            )
        time.sleep(0.05)


def _settled(topic: object) -> bool:
    if topic is None or getattr(topic, "error", None) is not None:
        return False
    partitions = getattr(topic, "partitions", {})
    return bool(partitions) and all(p.leader >= 0 for p in partitions.values())


def partition_counts(
    bootstrap: str,
    topics: list[str],
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Number of partitions of each topic; KafkaAdminError if one does not exist."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(security or {})})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    counts = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None:
            raise KafkaAdminError(f"topic {topic} does not exist (create it with `pulse migrate`)")
        if found.error is not None:
            raise KafkaAdminError(f"metadata of topic {topic} unavailable: {found.error}")
        counts[topic] = len(found.partitions)
    return counts


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back from Kafka (header values of None are read as b"")."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        """The value of the last header called `name`, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


def _consumer(bootstrap: str, security: Mapping[str, str] | None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Partitions are assigned by hand and nothing is committed: the group is unused.
            "group.id": f"pulse-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile
            "logger": logging.getLogger("librdkafka"),
            **(security or {}),
        }
    )


# Errors a broker gives while leadership moves or a new topic settles: retried.
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def _transient(error: object) -> bool:
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)


def _try_watermarks(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or (
        found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    ):
        raise KafkaAdminError(f"topic {topic} does not exist (create it with `pulse migrate`)")
    if found.error is not None:
        raise KafkaException(found.error)
    marks = {}
    for partition in sorted(found.partitions):
        offsets = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        if offsets is None:  # older clients report a timeout this way
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        marks[partition] = offsets
    return marks


def watermarks(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    """(low, high) watermark offsets of every partition of `topic`, retrying transient errors."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _try_watermarks(consumer, topic, max(deadline - time.monotonic(), 1.0))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not _transient(error) or time.monotonic() > deadline:
                msg = f"cannot read watermark offsets of {topic}: {exc}"
                raise KafkaAdminError(msg) from exc
            log.debug("reading watermark offsets of %s, retrying: %s", topic, exc)
            time.sleep(0.2)


def _header_bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def _stored(msg: Message) -> StoredRecord:
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return StoredRecord(
        msg.partition() or 0,
        msg.offset() or 0,
        msg.key(),
        msg.value(),
        tuple((name, _header_bytes(value)) for name, value in pairs),
    )


def _is_end(topic: str, partition: int, error: KafkaError) -> bool:
    """True for an end-of-partition event; raises on fatal errors, logs transient ones."""
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    if error.fatal():
        raise KafkaAdminError(f"reading {topic}[{partition}] failed: {error}")
    log.debug("reading %s[%d]: %s", topic, partition, error)  # librdkafka retries by itself
    return False


def _scan(
    consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], timeout_s: float
) -> Iterator[StoredRecord]:
    """Data records at offsets [start, end) of each partition, in offset order per partition.

    Stops a partition at `end` or at its end-of-partition event, whichever comes first.
    Raises KafkaAdminError when no partition progresses for `timeout_s`.
    """
    pending = {p: end for p, (start, end) in ranges.items() if start < end}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in pending])
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            if time.monotonic() > deadline:
                msg = (
                    f"reading {topic}: no progress for {timeout_s:.0f} s "
                    f"(partitions {sorted(pending)} not read up to their end)"
                )
                raise KafkaAdminError(msg)
            try:
                batch = consumer.consume(1000, timeout=0.2)
            except KafkaException as exc:
                raise KafkaAdminError(f"reading {topic} failed: {exc}") from exc
            for item in batch:
                partition = item.partition()
                if partition is None or partition not in pending:
                    continue
                error = item.error()
                if error is not None:
                    if _is_end(topic, partition, error):
                        del pending[partition]
                        deadline = time.monotonic() + timeout_s
                    continue
                offset = item.offset()
                end = pending[partition]
                if offset is None or offset >= end:
                    del pending[partition]
                    continue
                deadline = time.monotonic() + timeout_s
                yield _stored(item)
                if offset >= end - 1:
                    del pending[partition]
    finally:
        consumer.unassign()


def read_last_records(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> dict[int, StoredRecord | None]:
    """The last data record of every partition of `topic` (None for an empty partition).

    Reads from the high watermark minus one; when the newest offsets hold no data record
    (transaction markers, compaction) it steps further back (`LAST_RECORD_LOOKBACKS`) and
    gives None, with a warning, past the last step. KafkaAdminError when the topic does
    not exist or Kafka does not answer within `timeout_s`.
    """
    consumer = _consumer(bootstrap, security)
    try:
        marks = watermarks(consumer, topic, timeout_s)
        last: dict[int, StoredRecord | None] = dict.fromkeys(marks)
        todo = {p for p, (low, high) in marks.items() if high > low}
        for lookback in LAST_RECORD_LOOKBACKS:
            if not todo:
                break
            ranges = {p: (max(marks[p][0], marks[p][1] - lookback), marks[p][1]) for p in todo}
            for record in _scan(consumer, topic, ranges, timeout_s):
                last[record.partition] = record  # offsets ascend within a partition
            # Still nothing and more offsets below the window: look further back.
            todo = {p for p in todo if last[p] is None and ranges[p][0] > marks[p][0]}
        for p in sorted(todo):
            log.warning(
                "%s[%d]: no data record in the last %d offsets",
                topic,
                p,
                LAST_RECORD_LOOKBACKS[-1],
            )
    finally:
        consumer.close()
    return last


def read_records(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30,
    *,
    security: Mapping[str, str] | None = None,
) -> Iterator[StoredRecord]:
    """Every record of `topic`, up to the high watermarks seen when reading starts.

    Records come in offset order within a partition; partitions are interleaved. Records
    written after the start are not read. KafkaAdminError when the topic does not exist
    or reading makes no progress for `timeout_s`.
    """
    consumer = _consumer(bootstrap, security)
    try:
        marks = watermarks(consumer, topic, timeout_s)
        yield from _scan(consumer, topic, marks, timeout_s)
    finally:
        consumer.close()
