"""Heartbeats: the edge's wall clock, written into every partition of the events topic.

Each round produces one `analytics.v1.Heartbeat` into every partition, with an empty key
and the header `pulse.kind: heartbeat`, through the edge's own idempotent producer: in
a partition a heartbeat comes after every event produced before it. The dataflow reads
them in the log, so time advances for idle campaigns too, and deterministically on a
replay.

Kafka trouble never reaches ingestion: a round that cannot be produced is counted in
`pulse_ingest_heartbeat_failures_total` and dropped (the next round carries a newer
time anyway), and a streak of failures is logged once.
"""

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.headers import HEARTBEAT_KEY, HEARTBEAT_KIND, KIND_HEADER
from pulse.timeutil import now_ms

from . import metrics

log = logging.getLogger(__name__)


def edge_source(port: int, host: str | None = None) -> str:
    """The `source` of this edge's heartbeats: "edge@host:port" (host: this machine's name)."""
    return f"edge@{host or socket.gethostname()}:{port}"


class HeartbeatWriter:
    """Produces a heartbeat into every partition of `topic` every `interval_s` seconds.

    `run()` is the task; `stop()` ends it after the current round. Partitions are looked
    up when it starts and every `refresh_s` seconds (in a thread), so partitions added
    to the topic get heartbeats too. `clock` gives the wall time in Unix milliseconds.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        source: str,
        interval_s: float,
        *,
        clock: Callable[[], int] = now_ms,
        refresh_s: float = 30.0,
        metadata_timeout_s: float = 5.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval_s}")
        self._producer = producer
        self._topic = topic
        self._source = source
        self._interval_s = interval_s
        self._clock = clock
        self._refresh_s = refresh_s
        self._metadata_timeout_s = metadata_timeout_s
        self._partitions: tuple[int, ...] = ()
        self._stop = asyncio.Event()
        self._lock = threading.Lock()  # delivery reports arrive on the producer's poll thread
        self._failing = False

    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions that get heartbeats (empty until the first successful lookup)."""
        return self._partitions

    def _outcome(self, ok: bool, count: int, problem: str = "") -> None:
        with self._lock:
            if ok:
                metrics.HEARTBEATS.inc(count)
                if self._failing:
                    self._failing = False
                    log.info("heartbeats to %s are acknowledged again", self._topic)
            else:
                metrics.HEARTBEAT_FAILURES.inc(count)
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "heartbeats to %s fail (not logged again until they recover): %s",
                        self._topic,
                        problem,
                    )

    def _on_delivery(self, err: KafkaError | None, msg: Message | None) -> None:
        if err is None:
            self._outcome(True, 1)
        else:
            where = self._topic if msg is None else f"{msg.topic()}[{msg.partition()}]"
            self._outcome(
                False, 1, f"Kafka did not acknowledge a heartbeat to {where}: {err.str()}"
            )

    def refresh_partitions(self) -> None:
        """Look the topic's partitions up (blocking: call it in a thread)."""
        try:
            metadata = self._producer.list_topics(self._topic, timeout=self._metadata_timeout_s)
            found = metadata.topics.get(self._topic)
            if found is None or found.error is not None:
                problem = "not found" if found is None else found.error
                self._outcome(False, 1, f"no partitions for topic {self._topic}: {problem}")
                return
            partitions = tuple(sorted(found.partitions))
        except KafkaException as exc:
            self._outcome(False, 1, f"partition lookup failed: {exc}")
            return
        if partitions != self._partitions:
            log.info("heartbeats go to %d partitions of %s", len(partitions), self._topic)
            self._partitions = partitions

    def beat(self) -> int:
        """Produce one heartbeat into every known partition, without blocking.

        Returns the number of records handed to the producer. When the producer refuses
        one (local queue full, Kafka error), the rest of the round is dropped and counted
        as failures.
        """
        partitions = self._partitions
        if not partitions:
            return 0
        value = pb.Heartbeat(wall_time_ms=self._clock(), source=self._source).SerializeToString()
        headers: list[tuple[str, str | bytes | None]] = [(KIND_HEADER, HEARTBEAT_KIND)]
        for i, partition in enumerate(partitions):
            try:
                self._producer.produce(
                    self._topic,
                    value,
                    HEARTBEAT_KEY,
                    partition=partition,
                    headers=headers,
                    on_delivery=self._on_delivery,
                )
            except (BufferError, KafkaException) as exc:
                self._outcome(False, len(partitions) - i, f"producer refused a heartbeat: {exc}")
                return i
        return len(partitions)

    async def run(self) -> None:
        """Beat every interval until `stop()` (or cancellation); never blocks the loop."""
        loop = asyncio.get_running_loop()
        lookup: asyncio.Future[None] | None = None
        next_lookup = loop.time()
        next_beat = loop.time()
        try:
            while not self._stop.is_set():
                now = loop.time()
                if lookup is None and (now >= next_lookup or not self._partitions):
                    lookup = asyncio.ensure_future(asyncio.to_thread(self.refresh_partitions))
                    next_lookup = now + self._refresh_s
                # Wait for the lookup only while no partition is known yet.
                if lookup is not None and (lookup.done() or not self._partitions):
                    await lookup
                    lookup = None
                    if self._stop.is_set():
                        break
                self.beat()
                next_beat = max(next_beat + self._interval_s, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), next_beat - loop.time())
        finally:
            if lookup is not None:
                lookup.cancel()  # the thread finishes its bounded lookup on its own

    def stop(self) -> None:
        """End `run()` before its next round (call on the event loop)."""
        self._stop.set()
