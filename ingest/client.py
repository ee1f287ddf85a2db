"""A small async client for the ingest edge: batches events and streams them."""

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc


class PulseClient:
    """Streams `RawEvent`s to `IngestEventBatches`, `batch_size` events per message."""

    def __init__(self, target: str, batch_size: int = 500) -> None:
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
        )
        self._stub = pb_grpc.AnalyticsServiceStub(self._channel)
        self._batch_size = batch_size

    async def __aenter__(self) -> "PulseClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def ingest(
        self, events: Iterable[pb.RawEvent], metadata: tuple[tuple[str, str], ...] = ()
    ) -> pb.IngestResponse:
        """Send the events in one call; the response counts what Kafka acknowledged."""
        size = self._batch_size

        def batches() -> Iterator[pb.EventBatch]:
            batch = pb.EventBatch()
            for event in events:
                batch.events.append(event)
                if len(batch.events) >= size:
                    yield batch
                    batch = pb.EventBatch()
            if batch.events:
                yield batch

        return await self.ingest_batches(batches(), metadata)

    async def ingest_batches(
        self,
        batches: Iterable[pb.EventBatch] | AsyncIterable[pb.EventBatch],
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> pb.IngestResponse:
        """Send ready-made batches in one call (the cheapest way to stream many events)."""

        async def stream() -> AsyncIterator[pb.EventBatch]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield batch
            else:
                for batch in batches:
                    yield batch

        response: pb.IngestResponse = await self._stub.IngestEventBatches(
            stream(), metadata=metadata
        )
        return response

    async def query(self, request: pb.MetricsRequest) -> list[pb.MetricPoint]:
        """All points of a QueryMetrics answer."""
        return [point async for point in self._stub.QueryMetrics(request)]
