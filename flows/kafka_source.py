"""Bytewax's Kafka source, emitting confluent-kafka `Message`s as they come.

Bytewax 0.21.1's `KafkaSource` wraps every record in a `KafkaSourceMessage` dataclass,
which costs more than decoding and aggregating the record (about half of the dataflow's
time, measured with `benchmarks/bench_flow.py`). This subclass keeps the rest of the
connector (partition listing, offsets in recovery snapshots, end-of-partition handling,
consumer-lag metrics) and hands the batch of `Message`s on unwrapped. Errors stay in the
batch (`Message.error()` is set) so the flow can dead-letter them.
"""

from bytewax.connectors.kafka import KafkaSource
from bytewax.connectors.kafka import _KafkaSourcePartition as _BytewaxPartition
from confluent_kafka import KafkaError, Message


class _MessagePartition(_BytewaxPartition):
    def next_batch(self) -> list[Message]:  # type: ignore[override]
        if self._eof:
            raise StopIteration
        msgs: list[Message] = self._consumer.consume(self._batch_size, 0.001)
        for i, msg in enumerate(msgs):
            error = msg.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                # End of a non-tailing partition: emit what came before, stop next time.
                self._eof = True
                del msgs[i:]
                break
        # Resume after the last record handed on.
        for msg in reversed(msgs):
            offset = msg.offset()
            if offset is not None and offset >= 0:
                self._offset = offset + 1
                break
        return msgs


class MessageKafkaSource(KafkaSource):
    """`KafkaSource` whose items are confluent-kafka `Message` objects (errors included)."""

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _MessagePartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            msg = f"cannot resume: topic {topic!r} is not among {self._topics!r}"
            raise ValueError(msg)
        config = {
            # Offsets live in Bytewax's recovery snapshots, not in a consumer group.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        return _MessagePartition(
            step_id,
            config,
            topic,
            int(idx),
            self._starting_offset,
            resume_state,
            self._batch_size,
            False,  # raise_on_errors: errors are data here
        )
