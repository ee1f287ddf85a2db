"""The edge's REST/JSON gateway: Starlette on uvicorn, over the same `IngestCore` as gRPC.

`POST /v1/events` takes a JSON array or NDJSON of events (`jsonevents.py`) and answers
with the `IngestResponse` as JSON; `GET /v1/metrics` answers a `QueryMetrics` query as
JSON, or streamed as NDJSON; `/healthz` and `/readyz` give the health server's answers;
`/openapi.json` serves the checked-in OpenAPI document (`OPENAPI_PATH`).

HTTP statuses follow the core's codes (`STATUS`): 400 INVALID_ARGUMENT, 401
UNAUTHENTICATED, 403 PERMISSION_DENIED, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE; a body
over `max_body_bytes` or more events than `max_batch_events` is 413 (nothing of it is
produced). Every error body is JSON with an `error` message.

The server runs inside the edge process, on its event loop (`GatewayServer`): one
Kafka producer, one dedup memory, one set of metrics for both transports.
"""

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.auth import Caller
from pulse.errors import QueryError, SinkError
from pulse.query import MetricPointRow, MetricsQuery, QueryResolution
from pulse.validation import Reason
from runtime.health import Probes

from . import metrics
from .core import (
    STORE_UNAVAILABLE,
    BadMessageError,
    BatchTooLargeError,
    Code,
    Failure,
    IngestCore,
    denied,
)
from .core import log_call_error as _log_call_error
from .guard import DeniedError
from .http_protocol import bounded_protocol
from .jsonevents import NDJSON, PARSERS
from .tls import TlsFiles

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "protos" / "analytics" / "v1" / "openapi.json"

# The HTTP status of each failure code of the core.
STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNAVAILABLE: 503,
}
TOO_LARGE = 413
UNSUPPORTED_MEDIA_TYPE = 415
RETRY_AFTER_S = "1"  # on 429 and 503: when a retry may succeed

_REASON_NAMES = {int(reason): reason.name for reason in Reason}
_RESOLUTIONS = {res.name.lower(): res for res in QueryResolution}
_INT = re.compile(r"-?[0-9]{1,19}")
_QUERY_PARAMS = frozenset(
    {"campaign_id", "event_type", "start_ms", "end_ms", "resolution", "group_by"}
)
DIMENSION = re.compile(r"dimension\[(.*)\]")  # dimension[country]=DE (OpenAPI deepObject)


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _error(status: int, message: str, retry_after_ms: int | None = None) -> Response:
    return _json({"error": message}, status, _retry_after(status, retry_after_ms))


def _retry_after(status: int, retry_after_ms: int | None) -> dict[str, str] | None:
    """`Retry-After` (whole seconds, rounded up) on 429 and 503."""
    if status not in {429, 503}:
        return None
    if retry_after_ms is None:
        return {"Retry-After": RETRY_AFTER_S}
    return {"Retry-After": str(max(1, -(-retry_after_ms // 1000)))}


def _failed(failure: Failure) -> Response:
    return _error(STATUS[failure.code], failure.message, failure.retry_after_ms)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


def response_json(response: pb.IngestResponse) -> dict[str, Any]:
    """The `IngestResponse` under its proto field names; reasons without their prefix."""
    return {
        "accepted": response.accepted,
        "dropped": response.dropped,
        "duplicates": response.duplicates,
        "rejections": [
            {
                "index": r.index,
                "event_id": r.event_id,
                "reason": _REASON_NAMES.get(r.reason, "UNSPECIFIED"),
                "detail": r.detail,
            }
            for r in response.rejections
        ],
    }


def point_json(row: MetricPointRow, resolution: str) -> dict[str, Any]:
    """A `MetricPoint` under its proto field names; unset optional values are null."""
    return {
        "campaign_id": row.campaign_id,
        "event_type": row.event_type,
        "bucket_start_ms": row.bucket_start_ms,
        "event_count": row.event_count,
        "value_sum": row.value_sum,
        "resolution": resolution,
        "value_min": row.value_min,
        "value_max": row.value_max,
        "value_avg": row.value_avg,
        "unique_users": row.unique_users,
        "value_p50": row.value_p50,
        "value_p95": row.value_p95,
        "value_p99": row.value_p99,
        "first_event_ms": row.first_event_ms or 0,
        "last_event_ms": row.last_event_ms or 0,
        "late_events": row.late_events,
        "closed": row.closed,
        "on_time_count": row.on_time_count,
        "dimensions": dict(row.dimensions),
    }


class _BodyTooLargeError(BadMessageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (before reading it all) once it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


Endpoint = Callable[[Request], Awaitable[Response]]


def _measured(route: str, endpoint: Endpoint) -> Endpoint:
    """Counts the endpoint's answers by status and times them (up to the first byte)."""
    seconds = metrics.HTTP_SECONDS.labels(route)

    async def measured(request: Request) -> Response:
        started = time.perf_counter()
        response = await endpoint(request)
        seconds.observe(time.perf_counter() - started)
        metrics.HTTP_HANDLED.labels(route, str(response.status_code)).inc()
        return response

    return measured


class Gateway:
    """The endpoints, over one `IngestCore` and the process's health `Probes`."""

    def __init__(
        self, core: IngestCore, *, max_body_bytes: int, probes: Probes | None = None
    ) -> None:
        self._core = core
        self._max_body_bytes = max_body_bytes
        self._probes = probes
        self._openapi = OPENAPI_PATH.read_bytes()

    def app(self) -> Starlette:
        routes = [
            ("/v1/events", self.post_events, ["POST"]),
            ("/v1/metrics", self.get_metrics, ["GET"]),
            ("/healthz", self.health, ["GET"]),
            ("/readyz", self.health, ["GET"]),
            ("/openapi.json", self.openapi, ["GET"]),
        ]
        return Starlette(
            routes=[
                Route(path, _measured(path, endpoint), methods=methods)
                for path, endpoint, methods in routes
            ]
        )

    async def post_events(self, request: Request) -> Response:
        guard = self._core.guard
        try:
            with guard.call():  # before the body is read: a refusal costs no parsing
                caller = guard.caller(request.headers.get("authorization"))
                return await self._post_events(request, caller)
        except DeniedError as exc:
            return _failed(denied(exc))

    async def _post_events(self, request: Request, caller: Caller | None) -> Response:
        parse = PARSERS.get(_media_type(request.headers.get("content-type", "")))
        if parse is None:
            return _error(
                UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be application/json or {NDJSON}"
            )
        try:
            body = await _read_body(request, self._max_body_bytes)
            events = parse(body, self._core.max_batch_events)
        except (_BodyTooLargeError, BatchTooLargeError) as exc:
            return _error(TOO_LARGE, str(exc))
        except BadMessageError as exc:
            return _error(400, str(exc))
        except ClientDisconnect:
            return _error(400, "the client disconnected before sending the whole body")

        async def batches() -> AsyncIterator[list[pb.RawEvent]]:
            yield events

        outcome = await self._core.ingest(
            batches(), method="POST /v1/events", peer=_peer(request), caller=caller
        )
        reply = response_json(outcome.response)
        failure = outcome.failure
        if failure is None:
            return _json(reply)
        reply["error"] = failure.message
        status = STATUS[failure.code]
        return _json(reply, status, _retry_after(status, failure.retry_after_ms))

    async def get_metrics(self, request: Request) -> Response:
        try:
            query, resolution = _parse_query(request)
        except QueryError as exc:
            return _error(400, str(exc))
        guard = self._core.guard
        try:
            guard.check_read(guard.caller(request.headers.get("authorization")), query.campaign_id)
        except DeniedError as exc:
            return _failed(denied(exc))
        rows = self._core.points(query).__aiter__()
        peer = _peer(request)
        try:
            first = await anext(rows, None)  # a store that is down fails before the headers
        except SinkError as exc:
            _log_call_error("GET /v1/metrics", peer, f"the metrics store failed: {exc}")
            return _error(503, STORE_UNAVAILABLE)
        if NDJSON in request.headers.get("accept", ""):
            return StreamingResponse(
                _ndjson_points(first, rows, resolution, peer), media_type=NDJSON
            )
        points = []
        try:
            if first is not None:
                points.append(point_json(first, resolution))
                async for row in rows:
                    points.append(point_json(row, resolution))
        except SinkError as exc:
            _log_call_error("GET /v1/metrics", peer, f"the metrics store failed: {exc}")
            return _error(503, STORE_UNAVAILABLE)
        return _json({"points": points})

    async def health(self, request: Request) -> Response:
        if self._probes is None:
            return _error(404, "no health checks in this process")
        status, body = await asyncio.to_thread(self._probes.answer, request.url.path)
        return _json(body, status, {"Cache-Control": "no-store"})

    async def openapi(self, _request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")


async def _ndjson_points(
    first: MetricPointRow | None,
    rows: AsyncIterator[MetricPointRow],
    resolution: str,
    peer: str,
) -> AsyncIterator[bytes]:
    """One point per line. The status is sent already: a store failing midway ends the
    stream with an `{"error": ...}` line instead."""
    if first is None:
        return
    yield orjson.dumps(point_json(first, resolution)) + b"\n"
    try:
        async for row in rows:
            yield orjson.dumps(point_json(row, resolution)) + b"\n"
    except SinkError as exc:
        _log_call_error("GET /v1/metrics", peer, f"the metrics store failed: {exc}")
        yield orjson.dumps({"error": STORE_UNAVAILABLE}) + b"\n"


def _int_param(params: dict[str, str], name: str) -> int:
    text = params.get(name)
    if text is None:
        raise QueryError(f"{name} is required")
    if not _INT.fullmatch(text):
        raise QueryError(f"{name} must be an integer (Unix milliseconds)")
    return int(text)


def _parse_query(request: Request) -> tuple[MetricsQuery, str]:
    """The query string as a validated `MetricsQuery`, and its resolution's name."""
    params: dict[str, str] = {}
    dimensions: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        dimension = DIMENSION.fullmatch(name)
        if dimension is not None:
            target, key = dimensions, dimension.group(1)
        elif name in _QUERY_PARAMS:
            target, key = params, name
        else:
            raise QueryError(f"unknown query parameter {name!r}")
        if key in target:
            raise QueryError(f"query parameter {name!r} given twice")
        target[key] = value
    resolution_name = params.get("resolution", "minute").lower()
    resolution = _RESOLUTIONS.get(resolution_name)
    if resolution is None:
        raise QueryError(f"resolution must be one of {', '.join(_RESOLUTIONS)}")
    query = MetricsQuery.parse(
        params.get("campaign_id", ""),
        params.get("event_type", ""),
        _int_param(params, "start_ms"),
        _int_param(params, "end_ms"),
        int(resolution),
        params.get("group_by", ""),
        dimensions,
    )
    return query, resolution.name


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the edge's handlers stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (binding now: a port in use fails the edge's start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _report_stop(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP gateway stopped", exc_info=task.exception())


class GatewayServer:
    """uvicorn (httptools) serving `app` on the running event loop, until `stop`.

    Request heads are bounded in size and time (`http_protocol`); bodies by the `Gateway`.
    """

    def __init__(
        self,
        app: Starlette,
        sock: socket.socket,
        *,
        grace_s: float = 10.0,
        tls: TlsFiles | None = None,
        max_head_bytes: int = 64 * 1024,
        head_timeout_s: float = 10.0,
    ) -> None:
        config = uvicorn.Config(
            app,
            loop="none",
            http=bounded_protocol(max_head_bytes, head_timeout_s),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(grace_s),
            **(tls.uvicorn_options() if tls is not None else {}),
        )
        self._scheme = "https" if tls is not None else "http"
        self._sock = sock
        self._server = _Server(config)
        # uvicorn logs its start and stop at INFO under "uvicorn.error": the edge says
        # itself where it listens, so only uvicorn's warnings and errors are kept.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="http-gateway")
        self._task.add_done_callback(_report_stop)
        host, port = self._sock.getsockname()[:2]
        log.info("HTTP gateway listening on %s://%s:%d", self._scheme, host, port)

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight (bounded by the grace period)."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()
