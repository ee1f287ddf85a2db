"""Asyncio adapter over confluent-kafka's idempotent producer.

`send()` resolves only when Kafka has acknowledged every message of the batch
(`acks=all`), which is what lets the edge report an event as accepted.
"""

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pulse.errors import KafkaDeliveryError

log = logging.getLogger(__name__)


class _BatchAck:
    """Counts the acknowledgements of one batch; resolves its future on the loop thread."""

    __slots__ = ("error", "future", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = size
        self.error: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        # Runs on the poll thread.
        if err is not None and self.error is None:
            self.error = err
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.future.done():
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(
                KafkaDeliveryError(f"Kafka did not acknowledge the batch: {self.error.str()}")
            )


class KafkaEventProducer:
    """Produces `(key, value)` batches to one topic and awaits their acknowledgement."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float) -> None:
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 500_000,
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": logging.getLogger("librdkafka"),
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce the records and wait until Kafka acknowledged all of them.

        Raises KafkaDeliveryError when any record was not acknowledged in time.
        """
        if not records:
            return
        ack = _BatchAck(asyncio.get_running_loop(), len(records))
        produce = self._producer.produce
        topic = self._topic
        callback = ack.on_delivery
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    # Local queue full: let the poll thread drain acknowledgements.
                    await asyncio.sleep(0.005)
                except KafkaException as exc:
                    msg = f"Kafka refused a record: {exc}"
                    raise KafkaDeliveryError(msg) from exc
        try:
            await asyncio.wait_for(asyncio.shield(ack.future), self._timeout_s + 5)
        except TimeoutError as exc:
            msg = f"no acknowledgement from Kafka within {self._timeout_s:.0f} s"
            raise KafkaDeliveryError(msg) from exc

    def ping(self, timeout_s: float = 2.0) -> bool:
        """True when the broker answers a metadata request for our topic."""
        try:
            metadata = self._producer.list_topics(self._topic, timeout=timeout_s)
        except KafkaException:
            return False
        topic = metadata.topics.get(self._topic)
        return topic is not None and topic.error is None

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush outstanding records, then stop the poll thread."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("closing producer with %d unacknowledged records", remaining)
        self._stop.set()
        self._poller.join(timeout=2)
