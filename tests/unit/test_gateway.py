"""The HTTP gateway over the shared core, with the fake ports of the servicer's tests."""

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import orjson
import pytest
from starlette.routing import Route

from ingest.client import PulseClient
from ingest.core import DELIVERY_EVENTS, IngestCore
from ingest.gateway import (
    OPENAPI_PATH,
    Gateway,
    GatewayServer,
    bind,
    point_json,
    response_json,
)
from ingest.jsonevents import FIELD_TYPES
from ingest.messages import add_service
from ingest.recent_ids import RecentIds
from ingest.servicer import AnalyticsServicer
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.health import CheckResult
from pulse.query import MetricPointRow
from pulse.validation import Limits, Reason
from runtime.health import Probes
from tests.unit.test_servicer import NOW, FixedReader, RecordingProducer, event

MAX_EVENTS = 100
MAX_BODY = 64 * 1024

Client = httpx.AsyncClient


def run(
    test: Callable[[Client], Awaitable[None]],
    producer: RecordingProducer | None = None,
    reader: FixedReader | None = None,
    *,
    recent: RecentIds | None = None,
    probes: Probes | None = None,
) -> None:
    core = IngestCore(
        producer or RecordingProducer(),
        reader or FixedReader(),
        Limits(),
        MAX_EVENTS,
        lambda: NOW,
        recent=recent,
    )
    app = Gateway(core, max_body_bytes=MAX_BODY, probes=probes).app()

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            await test(client)

    asyncio.run(main())


def as_json(events: list[pb.RawEvent]) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": e.campaign_id,
            "event_type": e.event_type,
            "timestamp": e.timestamp,
            "dimensions": dict(e.dimensions),
            "event_id": e.event_id,
            "value": e.value,
        }
        for e in events
    ]


def mixed_events() -> list[pb.RawEvent]:
    events = [event(i) for i in range(40)]
    events[3] = event(3, campaign_id="")
    events[17] = event(17, timestamp=NOW + 3_600_000)
    events[21] = event(21, value=2e15)  # beyond +-1e15 (JSON has no infinity)
    events[30] = event(30, event_id="x" * 200)
    events[39] = event(39, event_type="cl\x00ick")
    return events


def grpc_answer(events: list[pb.RawEvent]) -> pb.IngestResponse:
    """What the gRPC edge answers for the same events (one batch)."""

    async def main() -> pb.IngestResponse:
        server = grpc.aio.server()
        servicer = AnalyticsServicer(
            IngestCore(RecordingProducer(), FixedReader(), Limits(), 100, lambda: NOW)
        )
        add_service(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with PulseClient(f"127.0.0.1:{port}", batch_size=len(events)) as client:
                return await client.ingest(events)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def test_json_events_get_the_answer_grpc_gives_and_the_same_records() -> None:
    events = mixed_events()
    producer = RecordingProducer()
    expected = response_json(grpc_answer(events))

    async def test(client: Client) -> None:
        reply = await client.post("/v1/events", json=as_json(events))
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert body == expected
        assert (body["accepted"], body["dropped"], body["duplicates"]) == (35, 5, 0)
        assert [(r["index"], r["reason"]) for r in body["rejections"]] == [
            (3, "MISSING_FIELD"),
            (17, "TIMESTAMP_IN_FUTURE"),
            (21, "INVALID_VALUE"),
            (30, "FIELD_TOO_LONG"),
            (39, "INVALID_CHARACTERS"),
        ]
        assert body["rejections"][0]["detail"] == "campaign_id is empty"

    run(test, producer)
    kept = [e for i, e in enumerate(events) if i not in {3, 17, 21, 30, 39}]
    assert [pb.RawEvent.FromString(v) for _k, v in producer.records] == kept
    assert [k for k, _v in producer.records] == [e.campaign_id.encode() for e in kept]


def test_ndjson_events_count_the_same_as_json() -> None:
    events = mixed_events()
    producer = RecordingProducer()
    expected = response_json(grpc_answer(events))

    async def test(client: Client) -> None:
        body = b"\n".join(orjson.dumps(e) for e in as_json(events)) + b"\n"
        reply = await client.post(
            "/v1/events",
            content=body,
            headers={"content-type": "application/x-ndjson; charset=utf-8"},
        )
        assert reply.status_code == 200
        assert reply.json() == expected

    run(test, producer)
    assert len(producer.records) == 35


def test_a_body_that_is_not_events_is_400_and_nothing_is_produced() -> None:
    producer = RecordingProducer()

    async def test(client: Client) -> None:
        good = as_json([event(i) for i in range(5)])
        for body, message in [
            (b"[{", "malformed JSON: "),
            (orjson.dumps([*good, {"bogus": 1}]), "event 5: unknown field 'bogus'"),
            (orjson.dumps([*good[:2], {"timestamp": "now"}]), "event 2: field 'timestamp'"),
        ]:
            reply = await client.post(
                "/v1/events", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == 400
            assert reply.json()["error"].startswith(message), reply.json()

    run(test, producer)
    assert producer.produced == 0


def test_size_limits_are_413_and_other_media_types_415() -> None:
    producer = RecordingProducer()

    async def test(client: Client) -> None:
        reply = await client.post("/v1/events", json=as_json([event(0)] * (MAX_EVENTS + 1)))
        assert reply.status_code == 413
        assert reply.json() == {"error": "batch of 101 events exceeds the limit of 100"}
        big = b"[" + b" " * MAX_BODY + b"]"
        reply = await client.post(
            "/v1/events", content=big, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 413
        assert reply.json() == {"error": f"request body exceeds the limit of {MAX_BODY} bytes"}

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b"["
            for _ in range(MAX_BODY // 1024):
                yield b" " * 1024

        reply = await client.post(
            "/v1/events", content=chunks(), headers={"content-type": "application/json"}
        )
        assert reply.status_code == 413
        reply = await client.post("/v1/events", content=b"[]")
        assert reply.status_code == 415
        reply = await client.post(
            "/v1/events", content=b"[]", headers={"content-type": "text/plain"}
        )
        assert reply.status_code == 415
        assert (await client.get("/v1/events")).status_code == 405

    run(test, producer)
    assert producer.produced == 0


def test_kafka_failing_is_503_saying_how_many_were_accepted() -> None:
    producer = RecordingProducer(fail_after=DELIVERY_EVENTS)

    async def test(client: Client) -> None:
        for start in range(0, 2000, MAX_EVENTS):  # fill the budget: 10 calls of 100
            reply = await client.post(
                "/v1/events", json=as_json([event(i) for i in range(start, start + 100)])
            )
            if start < DELIVERY_EVENTS:
                assert reply.status_code == 200
                continue
            assert reply.status_code == 503
            assert reply.headers["retry-after"] == "1"
            body = reply.json()
            assert (body["accepted"], body["dropped"], body["duplicates"]) == (0, 0, 0)
            assert body["error"] == (
                "Kafka did not acknowledge all events (0 of 100 valid events were "
                "acknowledged): broker down"
            )

    run(test, producer)
    assert len(producer.records) == DELIVERY_EVENTS


def test_a_request_sent_again_is_answered_as_duplicates() -> None:
    producer = RecordingProducer()
    events = as_json([event(i) for i in range(50)])

    async def test(client: Client) -> None:
        first = (await client.post("/v1/events", json=events)).json()
        again = (await client.post("/v1/events", json=[*events[10:20], *events[10:20]])).json()
        assert (first["accepted"], first["duplicates"]) == (50, 0)
        assert (again["accepted"], again["duplicates"]) == (0, 20)

    run(test, producer, recent=RecentIds(3600, 1000, lambda: NOW))
    assert len(producer.records) == 50


def rows(campaign: str, start: int, dims: tuple[tuple[str, str], ...] = ()) -> list[dict[str, Any]]:
    """What FixedReader yields, as JSON points."""
    out = [MetricPointRow(campaign, "click", start + i * 60_000, i + 1, 0.5) for i in range(3)]
    out.append(
        MetricPointRow(
            *(campaign, "view", start, 4, 2.0, 0.0, 1.5, 0.5, 3),
            *(0.25, 1.25, 1.5, start + 1, start + 9, 2, True),
        )
    )
    out.append(MetricPointRow(campaign, "view", start + 60_000, 0, 0.0, late_events=1, closed=True))
    if dims:
        out.append(MetricPointRow(campaign, "click", start, 1, 0.5, dimensions=dims))
    return [point_json(row, "MINUTE") for row in out]


def test_metrics_as_json_and_as_streamed_ndjson() -> None:
    reader = FixedReader()
    params: dict[str, str | int] = {"campaign_id": "c1", "start_ms": NOW, "end_ms": NOW + 600_000}

    async def test(client: Client) -> None:
        reply = await client.get("/v1/metrics", params=params)
        assert reply.status_code == 200
        points = reply.json()["points"]
        assert points == rows("c1", NOW)
        assert points[3]["value_min"] == 0.0 and points[4]["value_min"] is None
        assert set(points[0]) == set(pb.MetricPoint.DESCRIPTOR.fields_by_name)
        reply = await client.get(
            "/v1/metrics",
            params={**params, "group_by": "device,country", "dimension[country]": "DE"},
            headers={"accept": "application/x-ndjson"},
        )
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = reply.content.decode().splitlines()
        assert [json.loads(line) for line in lines] == rows("c1", NOW, (("country", "DE"),))

    run(test, reader=reader)
    assert reader.queries[0].event_type is None
    assert (reader.queries[1].dimension_set, reader.queries[1].dimensions) == (
        "country,device",
        (("country", "DE"),),
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"campaign_id": "c1", "start_ms": NOW, "end_ms": NOW},
            "end_ms (1764000000000) must be after",
        ),
        ({"campaign_id": "c1", "end_ms": NOW}, "start_ms is required"),
        ({"campaign_id": "c1", "start_ms": "1e3", "end_ms": NOW}, "start_ms must be an integer"),
        ({"start_ms": NOW, "end_ms": NOW + 1}, "campaign_id must have 1..128 characters"),
        (
            {"campaign_id": "c", "start_ms": NOW, "end_ms": NOW + 1, "resolution": "week"},
            "resolution must be one of minute, hour, day",
        ),
        (
            {"campaign_id": "c", "start_ms": NOW, "end_ms": NOW + 1, "limit": "5"},
            "unknown query parameter 'limit'",
        ),
        (
            {"campaign_id": "c", "start_ms": NOW, "end_ms": NOW + 1, "dimension[country]": "DE"},
            "a dimensions filter needs group_by",
        ),
        ({"campaign_id": "c", "start_ms": -(10**19), "end_ms": NOW}, "start_ms must be an integer"),
    ],
)
def test_a_bad_query_is_400_with_the_reason(params: dict[str, Any], message: str) -> None:
    async def test(client: Client) -> None:
        reply = await client.get("/v1/metrics", params=params)
        assert reply.status_code == 400
        assert reply.json()["error"].startswith(message), reply.json()

    run(test)


def test_a_repeated_query_parameter_is_400() -> None:
    async def test(client: Client) -> None:
        reply = await client.get("/v1/metrics?campaign_id=a&campaign_id=b&start_ms=1&end_ms=2")
        assert reply.status_code == 400
        assert reply.json() == {"error": "query parameter 'campaign_id' given twice"}

    run(test)


def test_a_failing_store_is_503_without_its_details() -> None:
    async def test(client: Client) -> None:
        params: dict[str, str | int] = {"campaign_id": "c1", "start_ms": NOW, "end_ms": NOW + 1}
        for accept in ("application/json", "application/x-ndjson"):
            reply = await client.get("/v1/metrics", params=params, headers={"accept": accept})
            assert reply.status_code == 503
            assert reply.json() == {"error": "the metrics store is unavailable"}
            assert reply.headers["retry-after"] == "1"

    run(test, reader=FixedReader(fail=True))


def test_health_endpoints_answer_as_the_health_server() -> None:
    checks = {
        "kafka": lambda: CheckResult.ok(1.0),
        "postgres": lambda: CheckResult.error(2.0, "connection refused"),
    }
    probes = Probes(checks, started=0.0)

    async def test(client: Client) -> None:
        live = await client.get("/healthz")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["postgres"] == {
            "status": "error",
            "latency_ms": 2.0,
            "reason": "connection refused",
        }
        assert probes.answer("/readyz")[1]["checks"] == body["checks"]

    try:
        run(test, probes=probes)
    finally:
        probes.close()


# -- the OpenAPI document ---------------------------------------------------------------

OPENAPI = json.loads(OPENAPI_PATH.read_text())
SCHEMAS = OPENAPI["components"]["schemas"]


def test_the_served_openapi_document_is_the_checked_in_one() -> None:
    async def test(client: Client) -> None:
        reply = await client.get("/openapi.json")
        assert reply.status_code == 200
        assert reply.json() == OPENAPI

    assert OPENAPI["openapi"].startswith("3.1")
    run(test)


def test_openapi_paths_and_methods_are_the_routes() -> None:
    app = Gateway(
        IngestCore(RecordingProducer(), FixedReader(), Limits(), 1, lambda: NOW),
        max_body_bytes=MAX_BODY,
    ).app()
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"  # Starlette answers HEAD wherever GET is
    }
    documented = {(path, method) for path, item in OPENAPI["paths"].items() for method in item}
    assert documented == routes


def test_openapi_schemas_are_the_json_the_gateway_reads_and_writes() -> None:
    raw = SCHEMAS["RawEvent"]
    assert set(raw["properties"]) == set(FIELD_TYPES)
    assert raw["additionalProperties"] is False
    response = response_json(grpc_answer(mixed_events()))
    assert set(SCHEMAS["IngestResponse"]["properties"]) == {*response, "error"}
    assert set(SCHEMAS["Rejection"]["properties"]) == set(response["rejections"][0])
    assert SCHEMAS["Rejection"]["properties"]["reason"]["enum"] == [r.name for r in Reason]
    point = point_json(MetricPointRow("c", "t", 0, 1, 0.0), "MINUTE")
    assert set(SCHEMAS["MetricPoint"]["properties"]) == set(point)
    assert set(SCHEMAS["MetricPoint"]["required"]) == set(point)
    assert set(point) == set(pb.MetricPoint.DESCRIPTOR.fields_by_name)
    params = {p["name"] for p in OPENAPI["paths"]["/v1/metrics"]["get"]["parameters"]}
    assert params == set(pb.MetricsRequest.DESCRIPTOR.fields_by_name) - {"dimensions"} | {
        "dimension"
    }


# -- the server inside the edge's event loop ------------------------------------------


def test_the_server_answers_on_its_socket_and_leaves_the_signal_handlers_alone() -> None:
    core = IngestCore(RecordingProducer(), FixedReader(), Limits(), MAX_EVENTS, lambda: NOW)
    app = Gateway(core, max_body_bytes=MAX_BODY).app()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)  # as the edge does
        before = signal.getsignal(signal.SIGTERM)
        sock = bind("127.0.0.1", 0)
        # asyncio sets TCP_NODELAY only on sockets that say they are TCP: without it a
        # response written in two parts waited ~40 ms for the client's delayed ACK.
        assert sock.proto == socket.IPPROTO_TCP
        server = GatewayServer(app, sock)
        port = server.port
        server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(50):  # until uvicorn has started serving
                    try:
                        reply = await client.post("/v1/events", json=as_json([event(1)]))
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.02)
                assert reply.json()["accepted"] == 1
                assert signal.getsignal(signal.SIGTERM) is before
        finally:
            await server.stop()
            loop.remove_signal_handler(signal.SIGTERM)
        with pytest.raises(OSError):  # stopped: nothing listens any more
            socket.create_connection(("127.0.0.1", port), timeout=1)

    asyncio.run(main())
