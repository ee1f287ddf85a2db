"""Following the notifications topic: the alert transitions the dataflow publishes.

`NotificationTail` reads every partition of the topic by assignment (no consumer group,
nothing committed), from the end or from the oldest record kept, and yields each
notification decoded as an `AlertEvent`. `format_line` and `format_json` render one for
people and for scripts. `pulse notifications` is the command-line front end.
"""

import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from types import TracebackType
from typing import Self

from confluent_kafka import Consumer, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from pulse.alerts.model import AlertEvent, AlertState
from pulse.errors import KafkaAdminError
from pulse.timeutil import ms_to_datetime
from runtime.topics import watermarks
from sinks.kafka_outputs import from_notification

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # longest wait inside one poll: bounds how late a deadline is noticed


class NotificationTail:
    """Yields the notifications of `topic` as they arrive, in offset order per partition.

    Entering the context reads the topic's partitions and their offsets and assigns
    them: from the high watermarks of that moment (so every notification published
    afterwards is read), or with `from_beginning` from the oldest offsets kept.
    Partitions added to the topic later are not followed. KafkaAdminError when the
    topic does not exist or Kafka does not answer within `timeout_s`. `security`: the
    librdkafka properties of `CommonSettings.kafka_security`.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_beginning: bool = False,
        timeout_s: float = 30.0,
        security: Mapping[str, str] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = dict(security or {})
        self._topic = topic
        self._from_beginning = from_beginning
        self._timeout_s = timeout_s
        self._consumer: Consumer | None = None
        self.start_offsets: dict[int, int] = {}

    def __enter__(self) -> Self:
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                # Partitions are assigned by hand and nothing is committed: the group is unused.
                "group.id": f"pulse-notifications-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile
                "logger": logging.getLogger("librdkafka"),
                **self._security,
            }
        )
        try:
            self.start_offsets = self._starts(consumer)
            consumer.assign(
                [TopicPartition(self._topic, p, o) for p, o in self.start_offsets.items()]
            )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _starts(self, consumer: Consumer) -> dict[int, int]:
        """Start offsets per partition; transient broker errors (a broker just started,
        a leader moving) are retried until `timeout_s`."""
        marks = watermarks(consumer, self._topic, self._timeout_s)
        return {p: low if self._from_beginning else high for p, (low, high) in marks.items()}

    def events(
        self, *, max_events: int | None = None, seconds: float | None = None
    ) -> Iterator[AlertEvent]:
        """Notifications as they arrive; ends after `max_events` or `seconds`, else never.

        A record that is not a notification is logged and skipped.
        """
        if self._consumer is None:
            msg = "NotificationTail.events() outside its `with` block"
            raise RuntimeError(msg)
        consumer = self._consumer
        deadline = None if seconds is None else time.monotonic() + seconds
        count = 0
        while max_events is None or count < max_events:
            wait = POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            try:
                batch = consumer.consume(
                    100 if max_events is None else min(100, max_events - count), timeout=wait
                )
            except KafkaException as exc:
                raise KafkaAdminError(f"reading {self._topic} failed: {exc}") from exc
            for record in batch:
                error = record.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaAdminError(f"reading {self._topic} failed: {error}")
                    log.debug("reading %s: %s", self._topic, error)  # librdkafka retries
                    continue
                value = record.value()
                try:
                    if value is None:
                        raise ValueError("no value")
                    event = from_notification(value)
                except (DecodeError, ValueError) as exc:
                    log.warning(
                        "%s[%s]@%s is not a notification: %s",
                        self._topic,
                        record.partition(),
                        record.offset(),
                        exc,
                    )
                    continue
                count += 1
                yield event


def _number(value: float) -> str:
    """A short rendering with thousands separators: 3,225 / 0.431 / 12.5."""
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _comparison(event: AlertEvent) -> str:
    """What to print after the observed value: the threshold or the baseline, if at all."""
    if event.rule_kind == "anomaly":
        return f" baseline {_number(event.threshold)}"
    if event.state is AlertState.RESOLVED:
        return ""
    # A rule fires while its metric is above (or below) the threshold.
    op = ">" if event.observed >= event.threshold else "<"
    return f" {op} {_number(event.threshold)}"


def format_line(event: AlertEvent) -> str:
    """One line per notification, e.g.

    `FIRING   click-flood  warning  campaign-000 click  count 3,225 > 750
    window 16:20:00-16:21:00 UTC  id 3f2a9c01` (on one line). The id is the alert id's
    first 8 characters, shared by an incident's FIRING and RESOLVED lines.
    """
    start = ms_to_datetime(event.window_start_ms).strftime("%H:%M:%S")
    end = ms_to_datetime(event.window_end_ms).strftime("%H:%M:%S")
    return (
        f"{event.state.value.upper():<8} {event.rule:<12} {event.severity:<8} "
        f"{event.campaign_id} {event.event_type}  "
        f"{event.metric} {_number(event.observed)}{_comparison(event)}  "
        f"window {start}-{end} UTC  id {event.alert_id[:8]}"
    )


def format_json(event: AlertEvent) -> str:
    """One notification as a JSON object on one line, with the `AlertEvent` field names."""
    return json.dumps(asdict(event), ensure_ascii=False)
