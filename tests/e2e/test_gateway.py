"""HTTP/JSON -> the edge -> Kafka -> Bytewax -> TimescaleDB, exact; and fuzzed for 5xx.

Events go through the real edge process's gateway as JSON arrays and as NDJSON, with
invalid events among them (each rejected with its reason), a request that does not
parse (nothing of it counted) and requests sent again (answered as duplicates). The
rows must equal the reference computed from the valid events, and `GET /v1/metrics`
must answer the same numbers. Then schemathesis generates requests from the OpenAPI
document, valid and invalid, against the running gateway: none may get a 5xx.
"""

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, SerializationContext
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from ingest.gateway import OPENAPI_PATH
from tests.e2e.conftest import Pipeline
from tests.e2e.test_pipeline import MINUTE_MS, wait_for
from tests.reference import aggregate

NDJSON = "application/x-ndjson"


def raw(campaign: str, event_type: str, ts: int, value: float, event_id: str) -> dict[str, Any]:
    return {
        "campaign_id": campaign,
        "event_type": event_type,
        "timestamp": ts,
        "value": value,
        "event_id": event_id,
        "dimensions": {"user_id": f"u{ts % 97}"},
    }


def post(client: httpx.Client, events: list[dict[str, Any]], ndjson: bool) -> httpx.Response:
    if ndjson:
        body = b"".join(orjson.dumps(e) + b"\n" for e in events)
        return client.post("/v1/events", content=body, headers={"content-type": NDJSON})
    return client.post("/v1/events", json=events)


def test_events_over_http_are_aggregated_exactly(pipeline: Pipeline) -> None:
    rng = random.Random(21)
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS - 10 * MINUTE_MS
    campaigns = [f"gw-{rng.randrange(10**9)}-{i}" for i in range(3)]
    types = ["impression", "click"]
    valid = [
        raw(
            rng.choice(campaigns),
            rng.choice(types),
            base + rng.randrange(4 * MINUTE_MS),
            rng.randrange(0, 400) / 8,
            f"v{i}",
        )
        for i in range(3000)
    ]
    invalid = {
        7: (raw("", "click", base, 1.0, "bad-campaign"), "MISSING_FIELD"),
        812: (
            raw(campaigns[0], "click", now + 3_600_000, 1.0, "bad-future"),
            "TIMESTAMP_IN_FUTURE",
        ),
        1500: (raw(campaigns[1], "click", base, 2e15, "bad-value"), "INVALID_VALUE"),
        2222: (raw(campaigns[2], "x" * 65, base, 1.0, "bad-type"), "FIELD_TOO_LONG"),
        2999: (raw(campaigns[0], "cl\x07ick", base, 1.0, "bad-chars"), "INVALID_CHARACTERS"),
    }
    stream = list(valid)
    for index in sorted(invalid):
        stream.insert(index, invalid[index][0])

    replies = []
    with httpx.Client(base_url=pipeline.http_url, timeout=60) as client:
        for n, start in enumerate(range(0, len(stream), 500)):
            chunk = stream[start : start + 500]
            reply = post(client, chunk, ndjson=n % 2 == 1)
            assert reply.status_code == 200, reply.text
            replies.append((start, reply.json()))
            if n % 3 == 0:  # a retry of the whole request: duplicates, not written again
                again = post(client, chunk, ndjson=n % 2 == 0).json()
                assert again["accepted"] == 0
                assert again["duplicates"] == reply.json()["accepted"]
                assert again["rejections"] == reply.json()["rejections"]
        # A request that does not parse: nothing of it is produced.
        unparsed = [raw(campaigns[0], "click", base, 1.0, "never-1"), {"campaign_id": 5}]
        reply = post(client, unparsed, ndjson=False)
        assert reply.status_code == 400
        assert reply.json() == {
            "error": "event 1: field 'campaign_id' must be a string, got integer"
        }

    rejected = [
        (start + r["index"], r["event_id"], r["reason"])
        for start, body in replies
        for r in body["rejections"]
    ]
    assert rejected == [(i, invalid[i][0]["event_id"], invalid[i][1]) for i in sorted(invalid)]
    assert sum(body["accepted"] for _start, body in replies) == len(valid)
    assert sum(body["dropped"] for _start, body in replies) == len(invalid)

    expected = aggregate(
        (e["campaign_id"], e["event_type"], e["timestamp"], e["value"]) for e in valid
    )
    wait_for(pipeline.dsn, campaigns, expected)

    # GET /v1/metrics answers the same numbers, as JSON and as NDJSON.
    with httpx.Client(base_url=pipeline.http_url, timeout=30) as client:
        for accept in ("application/json", NDJSON):
            got: dict[tuple[str, str, int], tuple[int, float]] = {}
            for campaign in campaigns:
                params: dict[str, str | int] = {
                    "campaign_id": campaign,
                    "start_ms": base,
                    "end_ms": base + 5 * MINUTE_MS,
                }
                reply = client.get("/v1/metrics", params=params, headers={"accept": accept})
                assert reply.status_code == 200
                if accept == NDJSON:
                    points = [orjson.loads(line) for line in reply.content.splitlines()]
                else:
                    points = reply.json()["points"]
                for p in points:
                    got[(p["campaign_id"], p["event_type"], p["bucket_start_ms"])] = (
                        p["event_count"],
                        p["value_sum"],
                    )
            assert got == {
                (c, t, int(minute.timestamp() * 1000)): v for (c, t, minute), v in expected.items()
            }


@pytest.fixture
def ndjson_serializer() -> Iterator[None]:
    """Schemathesis writes an NDJSON body as one JSON value per line (an array: its items)."""

    @schemathesis.serializer(NDJSON)
    def serialize(_ctx: SerializationContext, value: Any) -> bytes:
        items = value if isinstance(value, list) else [value]
        return b"".join(json.dumps(item).encode() + b"\n" for item in items)  # any int

    yield


def fuzz(operation: Any, base_url: str, calls: dict[str, int]) -> None:
    """Valid and invalid requests of one operation, seeded; counted in `calls`."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @seed(20_260_101)
    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=base_url, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        calls[operation.label] = calls.get(operation.label, 0) + 1

    check()


def test_no_generated_request_gets_a_server_error(
    pipeline: Pipeline, ndjson_serializer: None
) -> None:
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document is valid
        fuzz(result.ok(), pipeline.http_url, calls)
    assert set(calls) == {
        "POST /v1/events",
        "GET /v1/metrics",
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.json",
    }
