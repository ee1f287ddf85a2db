"""Asyncio adapter over confluent-kafka's idempotent producer (`acks=all`).

Records are produced as soon as they arrive and grouped into a `KafkaDelivery` (what
the servicer's `Delivery` port is here), whose `acknowledged()` resolves only once Kafka
has acknowledged every one of its records: that is what lets the edge report an event
as accepted.
"""

import asyncio
import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pulse.errors import KafkaDeliveryError

log = logging.getLogger(__name__)


class KafkaDelivery:
    """A group of produced records whose acknowledgements are awaited together.

    `produced` is written only by the event loop and `delivered` only by the poll
    thread, so neither count needs a lock; whichever side completes the group last
    resolves the future (on the loop thread).
    """

    __slots__ = (
        "_closed",
        "_delivered",
        "_error",
        "_future",
        "_headers",
        "_loop",
        "_owner",
        "_produced",
        "_started",
    )

    def __init__(
        self,
        owner: "KafkaEventProducer",
        loop: asyncio.AbstractEventLoop,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        self._owner = owner
        self._headers = headers
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._produced = 0
        self._delivered = 0
        self._closed = False
        self._error: str | None = None
        self._started = loop.time()

    @property
    def size(self) -> int:
        """Records produced into this group so far."""
        return self._produced

    async def add(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce `(key, value)` records now; waits only while the local queue is full."""
        if self._error is not None:
            return  # the group has failed already; its caller will be told
        produce = self._owner.raw_producer.produce
        if self._headers is not None:  # the same headers (trace context) on every record
            produce = functools.partial(produce, headers=self._headers)
        topic = self._owner.topic
        callback = self._on_delivery
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    self._produced += 1
                    break
                except BufferError:
                    # Local queue full: let the poll thread drain acknowledgements.
                    await asyncio.sleep(0.005)
                except KafkaException as exc:
                    self._error = self._error or f"Kafka refused a record: {exc}"
                    return

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        # Runs on the poll thread.
        if err is not None and self._error is None:
            self._error = f"Kafka did not acknowledge a record: {err.str()}"
        self._delivered += 1
        if self._closed and self._delivered == self._produced:
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self._future.done():
            return
        if self._error is None:
            self._future.set_result(None)
        else:
            self._future.set_exception(KafkaDeliveryError(self._error))

    async def acknowledged(self) -> float:
        """Close the group and wait for every acknowledgement; return the seconds taken.

        Raises KafkaDeliveryError when any record was refused or not acknowledged in time.
        """
        self._closed = True
        if self._delivered == self._produced:
            self._finish()
        timeout = self._owner.timeout_s + 5  # librdkafka itself gives up after timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError as exc:
            msg = f"no acknowledgement from Kafka within {timeout:.0f} s"
            raise KafkaDeliveryError(msg) from exc
        return self._loop.time() - self._started


class KafkaEventProducer:
    """Produces records to one topic; a background thread serves delivery reports.

    `security`: the librdkafka properties of `CommonSettings.kafka_security`.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_s: float,
        *,
        security: Mapping[str, str] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.raw_producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 500_000,
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": logging.getLogger("librdkafka"),
                **(security or {}),
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.raw_producer.poll(0.05)

    def open(self, headers: list[tuple[str, str | bytes | None]] | None = None) -> KafkaDelivery:
        """Start a group of records acknowledged together (call on the event loop);
        `headers`, if any, are sent with each of its records."""
        return KafkaDelivery(self, asyncio.get_running_loop(), headers)

    async def send(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce the records and wait until Kafka acknowledged all of them."""
        delivery = self.open()
        await delivery.add(records)
        await delivery.acknowledged()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the poll thread, then flush outstanding records (callbacks on one thread)."""
        self._stop.set()
        self._poller.join()
        remaining = self.raw_producer.flush(timeout_s)
        if remaining:
            log.warning("closing producer with %d unacknowledged records", remaining)
