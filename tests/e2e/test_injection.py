"""Hostile strings reach TimescaleDB byte for byte, or get a clear rejection.

Through the real edge and dataflow, with a dimension set named like an injection
attempt: campaign ids, event types, dimension names and values that look like SQL or
format strings, multi-byte text (emoji, combining marks, right-to-left) at the length
limits, are stored unchanged and counted exactly, in `event_metrics`, in the slices of
`event_metrics_by_dimensions`, and as `QueryMetrics` answers them. Just over a limit an
event is rejected with FIELD_TOO_LONG, with control characters in an id with
INVALID_CHARACTERS (a dimension value with them counts under `__other__`), and a
message with invalid UTF-8 in a string does not decode: INVALID_ARGUMENT.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.dimensions import MISSING, OTHER
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline, running
from tests.kafka import consume_all

MINUTE_MS = 60_000
# A dimension name as hostile as PULSE_GROUP_BY allows (no `;` or `,`, which separate).
NAME = "k' OR '1'='1 -- $$%s{}\\\""
SQLISH = [
    "'; DROP TABLE event_metrics; --",
    '" OR 1=1 --',
    "x'); DELETE FROM event_metrics_by_dimensions; --",
    "$$; SELECT pg_sleep(5); $$ $tag$",
    "%s %(campaign_id)s %% {} {0} {campaign_id}",
    "back\\slash \\' \\\\ \\x00 \\u0000",
    '{"country": "DE"} @> ?| ?&',
    "__missing__ look-alike: __missing",
]
LONG_IDS = [
    "\U0001f680" * 128,
    "e\u0301" * 64,
    "\u05e9\u05dc\u05d5\u05dd " * 25 + "abc",
    "日本" * 64,
]
LONG_TYPES = ["é" * 64, "\U0001f680" * 64, "x'); --" + "ü" * 57]
LONG_VALUES = ["\U0001f680" * 256, "\u05e9" * 256, "e\u0301" * 128]
CONTROLS = ["a\x01b", "tab\there", "\x1b[31m", "line\nbreak", "\x7f", "\u0085", "\u202e", "\x1f"]


def raw(campaign: str, event_type: str, ts: int, event_id: str, **dims: str) -> pb.RawEvent:
    return pb.RawEvent(
        campaign_id=campaign,
        event_type=event_type,
        timestamp=ts,
        event_id=event_id,
        value=len(event_id) / 8,
        dimensions=dims,
    )


@pytest.fixture
def sliced(stack: Stack, database: str, topics: Topics, tmp_path: Path):
    env = {"PULSE_IDLE_TIMEOUT_SECONDS": "3600", "PULSE_GROUP_BY": f"country;{NAME}"}
    with running(stack, database, topics, tmp_path, env) as started:
        yield started


def test_hostile_strings_are_stored_byte_for_byte_or_clearly_rejected(sliced: Pipeline) -> None:
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS - 10 * MINUTE_MS
    campaigns = SQLISH + LONG_IDS
    types = ["click", *SQLISH[:3], *LONG_TYPES]
    values = SQLISH + LONG_VALUES + ["DE"]
    valid: list[pb.RawEvent] = []
    for i, campaign in enumerate(campaigns):
        for j, event_type in enumerate(types):
            for k in range((i + j) % 3 + 1):  # 1 to 3 events of each pair
                dims = {"country": values[(i + j + k) % len(values)]}
                if k != 1:
                    dims[NAME] = values[(i * j + k) % len(values)]
                ts = base + (i * 7 + j * 3 + k) % MINUTE_MS
                valid.append(raw(campaign, event_type, ts, f"ok-{i}-{j}-{k}", **dims))
    # Dimension values with control characters are accepted, and sliced as __other__.
    for n, control in enumerate(CONTROLS):
        valid.append(raw(SQLISH[0], "click", base + n, f"ctl-{n}", country=control))

    invalid: list[tuple[pb.RawEvent, pb.RejectReason.ValueType]] = []
    for n, control in enumerate(CONTROLS):
        reason = pb.REJECT_REASON_INVALID_CHARACTERS
        invalid.append((raw(f"c{control}", "click", base, f"bad-c{n}"), reason))
        invalid.append((raw(SQLISH[1], f"t{control}", base, f"bad-t{n}"), reason))
        invalid.append((raw(SQLISH[1], "click", base, f"bad-i{n}{control}"), reason))
    too_long = pb.REJECT_REASON_FIELD_TOO_LONG
    invalid += [
        (raw("\U0001f680" * 129, "click", base, "long-c"), too_long),
        (raw(SQLISH[0], "é" * 65, base, "long-t"), too_long),
        (raw(SQLISH[0], "click", base, "i" * 129), too_long),
        (raw(SQLISH[0], "click", base, "long-v", country="\U0001f680" * 257), too_long),
        (raw(SQLISH[0], "click", base, "long-k", **{"k" * 65: "v"}), too_long),
    ]
    stream = list(valid)
    positions: dict[int, tuple[str, pb.RejectReason.ValueType]] = {}
    for n, (event, reason) in enumerate(invalid):
        at = n * 5 + 3
        stream.insert(at, event)
        positions[at] = (event.event_id[:128], reason)

    reply = asyncio.run(ingest(sliced.target, stream))
    assert (reply.accepted, reply.dropped, reply.duplicates) == (len(valid), len(invalid), 0)
    got = [(r.index, r.event_id, r.reason) for r in reply.rejections]
    assert got == [(at, *positions[at]) for at in sorted(positions)]

    # Invalid UTF-8 in a string field does not decode: the call ends with INVALID_ARGUMENT
    # after acknowledging the events before it.
    for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80"):
        before = raw(SQLISH[2], "click", base + 1, f"utf8-{bad.hex()}")
        code, detail = asyncio.run(ingest_raw(sliced.target, before, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.startswith("malformed RawEvent message (")
        assert detail.endswith("; the 1 events before it were accepted")
        valid.append(before)

    # Kafka holds every accepted event as sent.
    records = consume_all(sliced.bootstrap, sliced.topics.raw, 3)
    logged = [pb.RawEvent.FromString(value or b"") for _p, _o, k, value, _h in records if k]
    assert sorted(e.event_id for e in logged) == sorted(e.event_id for e in valid)
    by_id = {e.event_id: e for e in valid}
    assert all(e == by_id[e.event_id] for e in logged)

    totals: Counter[tuple[str, str]] = Counter()
    sums: Counter[tuple[str, str]] = Counter()
    country: Counter[tuple[str, str, str]] = Counter()
    named: Counter[tuple[str, str, str]] = Counter()
    for e in valid:
        totals[e.campaign_id, e.event_type] += 1
        sums[e.campaign_id, e.event_type] += int(e.value * 8)
        value = e.dimensions.get("country") or MISSING
        country[e.campaign_id, e.event_type, value if value.isprintable() else OTHER] += 1
        named[e.campaign_id, e.event_type, e.dimensions.get(NAME) or MISSING] += 1
    wait_stored(sliced.dsn, campaigns, totals, country, named)
    with psycopg.connect(sliced.dsn) as conn:
        stored = conn.execute(
            "SELECT convert_to(campaign_id, 'UTF8'), convert_to(event_type, 'UTF8'),"
            " sum(value_sum) FROM event_metrics WHERE campaign_id = ANY(%s) GROUP BY 1, 2",
            (campaigns,),
        ).fetchall()
    assert {(c, t): round(s * 8) for c, t, s in stored} == {
        (c.encode(), t.encode()): s for (c, t), s in sums.items()
    }

    # QueryMetrics answers the same strings and counts, per campaign and per slice.
    assert asyncio.run(query(sliced, campaigns, base, "")) == dict(totals)
    want_country = {(c, t, v): n for (c, t, v), n in country.items()}
    assert asyncio.run(query(sliced, campaigns, base, "country")) == want_country
    assert asyncio.run(query(sliced, campaigns, base, NAME)) == dict(named)
    for value in SQLISH[:3] + LONG_VALUES[:1]:
        only = asyncio.run(query(sliced, campaigns, base, "country", {"country": value}))
        assert only == {k: n for k, n in want_country.items() if k[2] == value}


async def ingest(target: str, events: list[pb.RawEvent]) -> pb.IngestResponse:
    async with PulseClient(target, batch_size=100) as client:
        return await client.ingest(events)


async def ingest_raw(target: str, before: pb.RawEvent, bad: bytes) -> tuple[grpc.StatusCode, str]:
    """A valid event, then one whose campaign_id is `bad` bytes: (status, details)."""
    broken = b"\x0a" + bytes([len(bad)]) + bad + b"\x12\x05click"
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            "/analytics.v1.AnalyticsService/IngestEvents",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            await call(iter([before.SerializeToString(), broken]), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def rows(dsn: str, campaigns: list[str]):
    with psycopg.connect(dsn) as conn:
        totals = conn.execute(
            "SELECT campaign_id, event_type, sum(event_count)::bigint FROM event_metrics"
            " WHERE campaign_id = ANY(%s) GROUP BY 1, 2",
            (campaigns,),
        ).fetchall()
        slices = conn.execute(
            "SELECT dimension_set, campaign_id, event_type, dimensions, sum(event_count)::bigint"
            " FROM event_metrics_by_dimensions WHERE campaign_id = ANY(%s) GROUP BY 1, 2, 3, 4",
            (campaigns,),
        ).fetchall()
    country = {(c, t, d["country"]): n for s, c, t, d, n in slices if s == "country"}
    named = {(c, t, d[NAME]): n for s, c, t, d, n in slices if s == NAME}
    return {(c, t): n for c, t, n in totals}, country, named


def wait_stored(dsn: str, campaigns: list[str], *want: Mapping[Any, int]) -> None:
    expected = tuple(dict(w) for w in want)
    deadline = time.monotonic() + 90
    got = rows(dsn, campaigns)
    while got != expected and time.monotonic() < deadline:
        time.sleep(1)
        got = rows(dsn, campaigns)
    for have, need in zip(got, expected, strict=True):
        wrong = {k: (have.get(k), need.get(k)) for k in have.keys() | need.keys()}
        assert {k: v for k, v in wrong.items() if v[0] != v[1]} == {}


async def query(
    pipeline: Pipeline,
    campaigns: list[str],
    base: int,
    group_by: str,
    dimensions: dict[str, str] | None = None,
) -> dict[tuple[str, ...], int]:
    """Event counts per (campaign, event type[, the slice's value]) from QueryMetrics."""
    out: Counter[tuple[str, ...]] = Counter()
    async with PulseClient(pipeline.target) as client:
        for campaign in campaigns:
            request = pb.MetricsRequest(
                campaign_id=campaign,
                start_ms=base - MINUTE_MS,
                end_ms=base + 2 * MINUTE_MS,
                group_by=group_by,
                dimensions=dimensions or {},
            )
            for p in await client.query(request):
                slice_value = (p.dimensions[group_by],) if group_by else ()
                out[(p.campaign_id, p.event_type, *slice_value)] += p.event_count
    return dict(out)
