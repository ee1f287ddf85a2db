"""Request messages decoded without raising: a malformed one becomes a `Malformed`.

grpcio decodes a request with the handler's deserializer before the servicer runs; one
that raises ends the call with `UNKNOWN` ("Unexpected <class 'DecodeError'>"), which
tells the client nothing. So the service is registered with deserializers that hand the
servicer a `Malformed` instead, and the servicer answers `INVALID_ARGUMENT` with the
reason (after acknowledging what came before it in a stream).
"""

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from protos.analytics.v1 import analytics_pb2 as pb
from protos.analytics.v1 import analytics_pb2_grpc as pb_grpc

SERVICE = "analytics.v1.AnalyticsService"
M = TypeVar("M", bound=Message)


class Malformed:
    """A request message that did not decode: its type, size and the decoder's reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def decoder(message: type[M]) -> Callable[[bytes], M | Malformed]:
    """`message.FromString`, returning a `Malformed` where it would raise."""
    name = message.DESCRIPTOR.name

    def decode(data: bytes) -> M | Malformed:
        try:
            return message.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            return Malformed(f"malformed {name} message ({len(data)} bytes): {exc}")

    return decode


def add_service(servicer: pb_grpc.AnalyticsServiceServicer, server: grpc.aio.Server) -> None:
    """Register the service as the generated code does, with decoders that never raise."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "IngestEvents": grpc.stream_unary_rpc_method_handler(
            servicer.IngestEvents,
            request_deserializer=decoder(pb.RawEvent),
            response_serializer=pb.IngestResponse.SerializeToString,
        ),
        "IngestEventBatches": grpc.stream_unary_rpc_method_handler(
            servicer.IngestEventBatches,
            request_deserializer=decoder(pb.EventBatch),
            response_serializer=pb.IngestResponse.SerializeToString,
        ),
        "QueryMetrics": grpc.unary_stream_rpc_method_handler(
            servicer.QueryMetrics,
            request_deserializer=decoder(pb.MetricsRequest),
            response_serializer=pb.MetricPoint.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
