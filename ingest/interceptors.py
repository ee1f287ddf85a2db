"""A grpc.aio server interceptor that measures every call: in flight, duration, status.

It works per call, never per message, for all four kinds of RPC. The status code is
the one the client sees: OK, the code `context.abort()` or `context.set_code()` set,
CANCELLED when the call was cancelled, UNKNOWN for any other exception. Only
registered methods are measured (an unknown method gets UNIMPLEMENTED from gRPC before
any handler runs), so the `method` label cannot grow with what clients send.

With a tracer (tracing on), each call is also a SERVER span named after the method,
continuing the client's trace when its metadata carries a W3C `traceparent`. For calls
with a single response the span is the current span while the handler runs, so spans
the handler starts (the servicer's produce spans) are its children. Without a tracer
the interceptor reads no metadata and starts no span.
"""

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from runtime import otel

from . import metrics

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _Call:
    """Measures one call: in flight from `__init__` until `finish`; traced with a tracer."""

    __slots__ = ("_inflight", "_method", "_span", "_start", "_token")

    def __init__(
        self,
        method: str,
        tracer: Tracer | None = None,
        context: Any = None,
        current: bool = False,
    ) -> None:
        self._method = method
        self._inflight = metrics.GRPC_INFLIGHT.labels(method)
        self._inflight.inc()
        self._start = time.perf_counter()
        self._span = self._token = None
        if tracer is not None:
            parent = otel.context_from_metadata(context.invocation_metadata())
            service, _, name = method.partition("/")
            self._span = tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            if current:
                self._token = otel.attach(self._span, parent)

    def finish(self, context: Any, error: BaseException | None) -> None:
        self._inflight.dec()
        metrics.GRPC_SECONDS.labels(self._method).observe(time.perf_counter() - self._start)
        code = status_name(context, error)
        metrics.GRPC_HANDLED.labels(self._method, code).inc()
        span = self._span
        if span is not None:
            if self._token is not None:
                otel.detach(self._token)
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
            if code != "OK":
                span.set_status(Status(StatusCode.ERROR, code))
            span.end()


def status_name(context: Any, error: BaseException | None) -> str:
    """The call's status code name, as the client receives it."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        if error is None or code is not grpc.StatusCode.OK:
            return code.name
    elif isinstance(code, int) and not isinstance(code, bool):
        for status in grpc.StatusCode:
            if status.value[0] == code and (error is None or code != 0):
                return status.name
    if error is not None:
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


def _wrap_unary_response(
    behavior: Callable[..., Any], method: str, tracer: Tracer | None
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(behavior):

        async def wrapped_async(request: Any, context: Any) -> Any:
            call = _Call(method, tracer, context, current=True)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                call.finish(context, exc)
                raise
            call.finish(context, None)
            return response

        return wrapped_async

    def wrapped_sync(request: Any, context: Any) -> Any:
        call = _Call(method, tracer, context, current=True)
        try:
            response = behavior(request, context)
        except BaseException as exc:
            call.finish(context, exc)
            raise
        call.finish(context, None)
        return response

    return wrapped_sync


def _wrap_stream_response(
    behavior: Callable[..., Any], method: str, tracer: Tracer | None
) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_agen(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(method, tracer, context, current=False)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                call.finish(context, exc)
                raise
            call.finish(context, None)

        return wrapped_agen

    if inspect.iscoroutinefunction(behavior):  # writes with context.write()

        async def wrapped_writer(request: Any, context: Any) -> None:
            call = _Call(method, tracer, context, current=True)
            try:
                await behavior(request, context)
            except BaseException as exc:
                call.finish(context, exc)
                raise
            call.finish(context, None)

        return wrapped_writer

    def wrapped_gen(request: Any, context: Any) -> Iterator[Any]:
        call = _Call(method, tracer, context, current=False)
        try:
            yield from behavior(request, context)
        except BaseException as exc:
            call.finish(context, exc)
            raise
        call.finish(context, None)

    return wrapped_gen


def _instrument(handler: Handler, method: str, tracer: Tracer | None) -> Handler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(handler.unary_unary, method, tracer),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(handler.stream_unary, method, tracer),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(handler.unary_stream, method, tracer),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method, tracer),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of every registered method; traces it with a tracer
    (see the module doc)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Req, Resp] | None"]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> "grpc.RpcMethodHandler[Req, Resp] | None":
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        method = handler_call_details.method.lstrip("/")
        return _instrument(handler, method, self._tracer)
