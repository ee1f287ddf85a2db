"""The dataflow's Kafka source against the real broker."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, run_main
from confluent_kafka import OFFSET_BEGINNING, Message, Producer

from flows.kafka_source import MessageKafkaSource
from tests.conftest import Stack, Topics


def fill(bootstrap: str, topic: str, n: int) -> dict[tuple[int, int], bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    written: dict[tuple[int, int], bytes] = {}

    def on_delivery(err: object, msg: Message) -> None:
        assert err is None
        written[(msg.partition() or 0, msg.offset() or 0)] = msg.value() or b""

    for i in range(n):
        producer.produce(
            topic, f"value-{i}".encode(), f"key-{i % 7}".encode(), on_delivery=on_delivery
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    return written


def read_to_end(bootstrap: str, topic: str, batch_size: int) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    flow = Dataflow("source_test")
    source = MessageKafkaSource([bootstrap], [topic], tail=False, batch_size=batch_size)
    msgs: Stream[Message] = op.input("in", flow, source)  # type: ignore[arg-type]
    rows = op.flat_map_batch(
        "rows",
        msgs,
        lambda batch: [(m.partition() or 0, m.offset() or 0, m.value() or b"") for m in batch],
    )
    op.output("out", rows, TestingSink(out))
    run_main(flow)
    return out


def test_reads_every_record_once_and_stops_at_the_end(stack: Stack, topics: Topics) -> None:
    written = fill(stack.kafka_bootstrap, topics.raw, 2500)
    got = read_to_end(stack.kafka_bootstrap, topics.raw, batch_size=97)
    assert len(got) == len(written)
    assert {(p, o): v for p, o, v in got} == written


def test_resumes_after_the_snapshotted_offset(stack: Stack, topics: Topics) -> None:
    written = fill(stack.kafka_bootstrap, topics.raw, 300)
    source = MessageKafkaSource(
        [stack.kafka_bootstrap], [topics.raw], tail=False, starting_offset=OFFSET_BEGINNING
    )
    part_name = next(p for p in source.list_parts() if p.startswith("0-"))
    first = source.build_part("in", part_name, None)
    batch: list[Message] = []
    while not batch:
        batch = first.next_batch()
    resume = first.snapshot()
    first.close()
    assert resume == (batch[-1].offset() or 0) + 1

    second = source.build_part("in", part_name, resume)
    rest: list[Message] = []
    try:
        while True:
            rest += second.next_batch()
    except StopIteration:
        pass
    second.close()
    offsets = [m.offset() for m in batch + rest]
    assert offsets == sorted(o for p, o in written if p == 0)
