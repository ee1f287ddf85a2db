"""The edge answers retries it can see: acknowledged ids are not written twice."""

import asyncio

import grpc

from ingest.client import PulseClient
from ingest.core import IngestCore
from ingest.recent_ids import RecentIds
from ingest.servicer import AnalyticsServicer
from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc
from pulse.dedup import event_digest
from pulse.validation import Limits
from tests.unit.test_servicer import NOW, FixedReader, RecordingProducer, event


def serve(
    producer: RecordingProducer, recent: RecentIds, calls: list[list[pb.RawEvent]]
) -> list[pb.IngestResponse | grpc.StatusCode]:
    """Send each call in turn; a reply, or the status code of a failed call."""

    async def main() -> list[pb.IngestResponse | grpc.StatusCode]:
        server = grpc.aio.server()
        servicer = AnalyticsServicer(
            IngestCore(producer, FixedReader(), Limits(), 1000, lambda: NOW, recent=recent)
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: list[pb.IngestResponse | grpc.StatusCode] = []
        try:
            async with PulseClient(f"127.0.0.1:{port}", batch_size=100) as client:
                for events in calls:
                    try:
                        out.append(await client.ingest(events))
                    except grpc.aio.AioRpcError as exc:
                        out.append(exc.code())
        finally:
            await server.stop(None)
        return out

    return asyncio.run(main())


def memory() -> RecentIds:
    return RecentIds(3600, 1_000_000, lambda: NOW)


def test_a_call_sent_again_is_answered_as_duplicates() -> None:
    producer = RecordingProducer()
    first = [event(i) for i in range(300)]
    again, part = serve(producer, memory(), [first, first, [*first[100:150], event(300)]])[1:]
    assert isinstance(again, pb.IngestResponse) and isinstance(part, pb.IngestResponse)
    assert (again.accepted, again.duplicates) == (0, 300)
    assert (part.accepted, part.duplicates) == (1, 50)
    assert len(producer.records) == 301  # each event written once


def test_repeats_within_a_call_are_written_once() -> None:
    producer = RecordingProducer()
    events = [event(i % 40) for i in range(120)]
    [reply] = serve(producer, memory(), [events])
    assert isinstance(reply, pb.IngestResponse)
    assert (reply.accepted, reply.duplicates) == (40, 80)
    assert len(producer.records) == 40


def test_events_kafka_did_not_acknowledge_are_written_again_on_retry() -> None:
    producer = RecordingProducer(fail_after=0)  # every group fails
    events = [event(i) for i in range(200)]
    recent = memory()
    failed = serve(producer, recent, [events])
    assert failed == [grpc.StatusCode.UNAVAILABLE]
    producer.fail_after = None
    [retry] = serve(producer, recent, [events])
    assert isinstance(retry, pb.IngestResponse)
    assert (retry.accepted, retry.duplicates) == (200, 0)


def test_the_memory_keeps_at_most_its_size_and_forgets_the_oldest() -> None:
    clock = [NOW]
    recent = RecentIds(3600, 1000, lambda: clock[0])
    for k in range(10):
        clock[0] = NOW + k * 1000
        recent.remember(b"".join(event_digest("c", f"e{k}-{i}") for i in range(500)))
    assert 1000 <= len(recent) <= 1250
    newest = b"".join(event_digest("c", f"e9-{i}") for i in range(500))
    oldest = b"".join(event_digest("c", f"e0-{i}") for i in range(500))
    assert recent.seen(newest).all()
    assert not recent.seen(oldest).any()
