"""A small async client for the ingest edge: batches events and streams them."""

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a client reaches a secured edge: TLS (with a client certificate for mutual
    TLS) and a bearer token. Files are PEM; empty fields are not used."""

    token: str = ""
    ca_file: str = ""  # trust this CA instead of the system's (a private CA)
    cert_file: str = ""  # client certificate, for mutual TLS
    key_file: str = ""
    tls: bool = False  # TLS even without a CA file (the system's roots)

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        if not self.secure:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            _read(self.ca_file), _read(self.key_file), _read(self.cert_file)
        )
        return grpc.aio.secure_channel(target, credentials, options=options)


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


class PulseClient:
    """Streams `RawEvent`s to `IngestEventBatches`, `batch_size` events per message."""

    def __init__(
        self, target: str, batch_size: int = 500, credentials: Credentials | None = None
    ) -> None:
        self._credentials = credentials or Credentials()
        self._channel = self._credentials.channel(
            target, [("grpc.max_send_message_length", 8 * 1024 * 1024)]
        )
        self._stub = pb_grpc.AnalyticsServiceStub(self._channel)
        self._batch_size = batch_size
        self._metadata = self._credentials.metadata()

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
            stream(), metadata=self._metadata + metadata
        )
        return response

    async def query(self, request: pb.MetricsRequest) -> list[pb.MetricPoint]:
        """All points of a QueryMetrics answer."""
        call = self._stub.QueryMetrics(request, metadata=self._metadata)
        return [point async for point in call]
