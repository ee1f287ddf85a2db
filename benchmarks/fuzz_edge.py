"""Fuzz the ingest edge: mutated messages on every RPC and HTTP route, every answer clear.

    python -m benchmarks.fuzz_edge --messages 1000000 --seed 1
    python -m benchmarks.fuzz_edge --messages 100000 --target 127.0.0.1:50051 \
        --http-url http://127.0.0.1:8080 --edge-pid PID

Without `--target` it starts `pulse serve` against the local stack (fresh topics and
database, `PULSE_MAX_MESSAGE_BYTES` and `PULSE_HTTP_MAX_BODY_BYTES` 1 MiB and
`PULSE_MAX_BATCH_EVENTS` 1,000 so that oversized messages stay cheap), and afterwards
reads the events topic back. It prints messages (per route), calls, the count of each
(route, status), messages/s and the edge's RSS before and after, and exits 1 when a
call got a status outside the allowed set, the edge no longer serves, or (own edge) an
acknowledged valid event is missing or doubled in Kafka, or one of a refused request
is there. `make fuzz` runs it with a million messages; `tests/e2e/test_fuzz.py` runs
100,000.

The messages come from `benchmarks.fuzz_messages` (the RPCs) and `benchmarks.fuzz_http`
(the gateway), deterministic from the seed; `ALL_WEIGHTS` makes about a third of the
messages HTTP requests (one message each; a stream call has about 25). A `Target` sends
one call and classifies the answer as an `Outcome`. Allowed gRPC statuses: OK,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED (a message over the size limit, refused by the
transport), UNAUTHENTICATED and PERMISSION_DENIED; never UNKNOWN, INTERNAL or anything
else. HTTP: any status below 500 (`http_outcome`); a 5xx or a broken connection fails.
Marker events go through both transports: in a gRPC stream before any breaker (so
acknowledged whenever the count is known), in an HTTP body that is all or nothing
(acknowledged on a 200, absent from Kafka when refused).
"""

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import grpc
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.analytics.v1 import analytics_pb2 as pb
from tests.kafka import delete_topics
from tests.ports import free_port

from .fuzz_http import (
    GET_METRICS,
    HTTP_INGEST_ROUTES,
    HTTP_OTHER,
    HTTP_ROUTES,
    POST_JSON,
    POST_NDJSON,
    add_http_makers,
    markers_body,
)
from .fuzz_messages import (
    DEFAULT_WEIGHTS,
    INGEST_EVENT_BATCHES,
    INGEST_EVENTS,
    QUERY_METRICS,
    Call,
    HttpRequest,
    MessageFuzzer,
    Plan,
    delimited,
)
from .rawhttp import HttpClientError, RawHttpClient

SERVICE = "analytics.v1.AnalyticsService"
ALLOWED_GRPC = frozenset(
    {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "PERMISSION_DENIED"}
)
INGEST_ROUTES = frozenset({INGEST_EVENTS, INGEST_EVENT_BATCHES, *HTTP_INGEST_ROUTES})
# Calls per route with the gateway: an HTTP call is one message, a stream call about 25,
# so that HTTP requests are about a third of the messages.
ALL_WEIGHTS = {
    INGEST_EVENTS: 0.04,
    INGEST_EVENT_BATCHES: 0.03,
    QUERY_METRICS: 0.03,
    POST_JSON: 0.35,
    POST_NDJSON: 0.25,
    GET_METRICS: 0.26,
    HTTP_OTHER: 0.04,
}
CALL_TIMEOUT_S = 60.0
# The edge's answer to a malformed message after a stream's valid prefix (ingest/servicer.py).
_ACCEPTED_BEFORE = re.compile(r"the (\d+) events before it were accepted")
PARTITIONS = 3


class Outcome(NamedTuple):
    """One call's answer: its status, the messages sent, the events the edge says it
    accepted (None: not an ingest call, or not known), whether the status is allowed,
    and whether the call's markers are in Kafka (True), not (False) or maybe (None)."""

    status: str
    sent: int
    accepted: int | None
    allowed: bool
    detail: str = ""
    markers_kept: bool | None = None


class Target(Protocol):
    """Sends one call's messages to one route."""

    async def send(self, call: Call) -> Outcome: ...


class ClientStream:
    """A client-streaming RPC (IngestEvents, IngestEventBatches) sent raw bytes."""

    def __init__(self, channel: grpc.aio.Channel, method: str) -> None:
        self._call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )

    async def send(self, call: Call) -> Outcome:
        messages = call.messages
        sent = 0

        def requests() -> Iterator[bytes]:
            nonlocal sent
            for message in messages:
                sent += 1
                yield message

        try:
            reply = await self._call(requests(), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return _grpc_failure(exc, sent, len(messages))
        accepted = pb.IngestResponse.FromString(reply).accepted
        return Outcome("OK", sent, accepted, True, markers_kept=True)


class UnaryStream:
    """A server-streaming RPC (QueryMetrics) sent one raw request."""

    def __init__(self, channel: grpc.aio.Channel, method: str) -> None:
        self._call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )

    async def send(self, call: Call) -> Outcome:
        (message,) = call.messages
        try:
            async for _point in self._call(message, timeout=CALL_TIMEOUT_S):
                pass
        except grpc.aio.AioRpcError as exc:
            return _grpc_failure(exc, 1, 1)
        return Outcome("OK", 1, None, True)


def _grpc_failure(exc: grpc.aio.AioRpcError, sent: int, messages: int) -> Outcome:
    """The outcome of a failed call; the events accepted are known when the edge says so
    (a malformed message after a valid prefix) or when a lone message was refused."""
    status, detail = exc.code().name, exc.details() or ""
    accepted: int | None = None
    found = _ACCEPTED_BEFORE.search(detail)
    if status == "INVALID_ARGUMENT" and found:
        accepted = int(found.group(1))
    elif status == "RESOURCE_EXHAUSTED" and messages == 1:
        accepted = 0  # the transport refused the only message: the edge never saw it
    # The markers come before any breaker: acknowledged whenever the count is known.
    kept = None if accepted is None else True
    return Outcome(status, sent, accepted, status in ALLOWED_GRPC, detail, kept)


def http_outcome(status_code: int, body: bytes, *, ingest: bool = False) -> Outcome:
    """An HTTP answer: 2xx, 3xx and 4xx are clear answers, 5xx is a failure. For a POST
    of events, the events accepted: the body's count (an error before the core, such as
    400, 413 or 415, produced nothing); unknown on a 5xx. Its markers are in Kafka on a
    200, not on an answer that accepted nothing, and maybe otherwise."""
    allowed = status_code < 500
    detail = body[:200].decode(errors="replace")
    if not ingest or not allowed:
        return Outcome(f"HTTP {status_code}", 1, None, allowed, detail)
    try:
        reply = orjson.loads(body)
        accepted = int(reply.get("accepted", 0)) if isinstance(reply, dict) else 0
    except orjson.JSONDecodeError:
        accepted = 0
    kept = True if status_code == 200 else (False if accepted == 0 else None)
    return Outcome(f"HTTP {status_code}", 1, accepted, True, detail, kept)


class HttpTarget:
    """The gateway's routes: each call one request, its message the body, its
    `HttpRequest` the rest. Transport errors count as failures."""

    def __init__(self, client: RawHttpClient, *, ingest: bool = False) -> None:
        self._client = client
        self._ingest = ingest

    async def send(self, call: Call) -> Outcome:
        (body,) = call.messages
        request = call.request
        assert request is not None, call.route
        try:
            status, reply = await self._client.request(
                request.method, request.target, request.headers, body, chunked=request.chunked
            )
        except HttpClientError as exc:
            what = f"{request.method} {request.target[:80]} {request.headers} {len(body)} bytes"
            return Outcome("HTTP error", 1, None, False, f"{exc} ({what})")
        return http_outcome(status, reply, ingest=self._ingest)


@dataclass
class Report:
    """What a run sent and got back."""

    messages: int = 0  # sent
    mutated: int = 0  # sent, not counting the messages of markers
    calls: int = 0
    marker_events: int = 0  # in the calls made (their messages are counted in `messages`)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    route_messages: Counter[str] = field(default_factory=Counter)
    route_markers: Counter[str] = field(default_factory=Counter)  # acknowledged, by route
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)  # the first unexpected answers
    accepted: int = 0  # events the edge said it accepted, in calls where it said so
    unknown_calls: int = 0  # ingest calls whose accepted count is not known
    acknowledged: dict[str, bytes] = field(default_factory=dict)  # marker id -> event bytes
    unconfirmed: dict[str, bytes] = field(default_factory=dict)  # in calls not acknowledged
    elapsed_s: float = 0.0

    def add(self, route: str, call: Call, outcome: Outcome) -> None:
        self.messages += outcome.sent
        self.mutated += outcome.sent - call.marker_messages  # markers come before the rest
        self.calls += 1
        self.marker_events += len(call.markers)
        self.statuses[route, outcome.status] += 1
        self.route_messages[route] += outcome.sent
        if not outcome.allowed:
            self.unexpected += 1
            if len(self.examples) < 20:
                self.examples.append(f"{route} {outcome.status}: {outcome.detail[:300]}")
        if route not in INGEST_ROUTES:
            return
        if outcome.accepted is None:
            self.unknown_calls += 1
        else:
            self.accepted += outcome.accepted
        if outcome.markers_kept:
            self.acknowledged.update(call.markers)
            self.route_markers[route] += len(call.markers)
        elif outcome.markers_kept is None:
            self.unconfirmed.update(call.markers)
        # else refused: `check_log` finds them in Kafka as markers never acknowledged

    def summary(self) -> str:
        rate = self.messages / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"messages {self.messages:,} (mutated {self.mutated:,}; "
            f"marker events {self.marker_events:,}), "
            f"calls {self.calls:,}, {self.elapsed_s:.1f} s, {rate:,.0f} messages/s",
            f"events accepted {self.accepted:,}, ingest calls with unknown acknowledgement "
            f"{self.unknown_calls:,}, unexpected answers {self.unexpected:,}",
        ]
        lines += [
            f"  {route:<24}messages {n:>10,} ({n / max(1, self.messages):.0%}), "
            f"acknowledged markers {self.route_markers[route]:,}"
            for route, n in sorted(self.route_messages.items())
        ]
        lines += [
            f"  {route:<24}{status:<20}{n:>10,}"
            for (route, status), n in sorted(self.statuses.items())
        ]
        lines += [f"  unexpected: {example}" for example in self.examples]
        return "\n".join(lines)


def grpc_targets(channel: grpc.aio.Channel) -> dict[str, Target]:
    return {
        INGEST_EVENTS: ClientStream(channel, INGEST_EVENTS),
        INGEST_EVENT_BATCHES: ClientStream(channel, INGEST_EVENT_BATCHES),
        QUERY_METRICS: UnaryStream(channel, QUERY_METRICS),
    }


async def fuzz(
    targets: Mapping[str, Target],
    calls: Iterator[Call],
    messages: int,
    *,
    concurrency: int = 16,
    max_seconds: float = float("inf"),
) -> Report:
    """Send `calls` with `concurrency` calls in flight until `messages` mutated ones were
    sent (or `max_seconds` passed)."""
    report = Report()
    started = time.monotonic()
    deadline = started + max_seconds

    async def worker() -> None:
        while report.mutated < messages and time.monotonic() < deadline:
            call = next(calls)
            outcome = await targets[call.route].send(call)
            report.add(call.route, call, outcome)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.elapsed_s = time.monotonic() - started
    return report


@contextlib.asynccontextmanager
async def http_client(http_url: str) -> AsyncIterator[RawHttpClient]:
    """A keep-alive client (a connection per request in flight) for http://host:port."""
    url = urllib.parse.urlsplit(http_url)
    client = RawHttpClient(url.hostname or "127.0.0.1", url.port or 80)
    try:
        yield client
    finally:
        await client.aclose()


def http_targets(client: RawHttpClient) -> dict[str, Target]:
    return {route: HttpTarget(client, ingest=route in HTTP_INGEST_ROUTES) for route in HTTP_ROUTES}


async def fuzz_routes(
    target: str,
    http_url: str | None,
    plan: Plan,
    messages: int,
    *,
    concurrency: int = 16,
    max_seconds: float = float("inf"),
    weights: Mapping[str, float] | None = None,
) -> tuple[Report, MessageFuzzer]:
    """Fuzz the edge's three RPCs at `target` and, given `http_url`, the gateway's
    routes, with the calls of `plan` (`weights`: ALL_WEIGHTS, or the RPCs' alone)."""
    fuzzer = MessageFuzzer(plan)
    add_http_makers(fuzzer)
    async with (
        grpc.aio.insecure_channel(target) as channel,
        http_client(http_url or "http://unused") as client,
    ):
        targets = grpc_targets(channel)
        if http_url:
            targets |= http_targets(client)
        chosen = weights or (ALL_WEIGHTS if http_url else DEFAULT_WEIGHTS)
        calls = fuzzer.calls(chosen)
        report = await fuzz(
            targets, calls, messages, concurrency=concurrency, max_seconds=max_seconds
        )
    return report, fuzzer


async def still_serving(
    target: str, http_url: str | None, fuzzer: MessageFuzzer, report: Report, events: int
) -> str:
    """The edge's health, then a fresh batch of `events` markers on gRPC and (given
    `http_url`) /readyz and a fresh POST of `events` markers on HTTP (acknowledged ones
    are added to the report). Returns "" when it is SERVING, ready and took them all."""
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        markers = tuple(fuzzer.marker() for _ in range(events))
        batch = b"".join(delimited(1, data) for _, data in markers)
        call = Call(INGEST_EVENT_BATCHES, (batch,), markers)
        outcome = await ClientStream(channel, INGEST_EVENT_BATCHES).send(call)
        report.add(INGEST_EVENT_BATCHES, call, outcome)
    if (outcome.status, outcome.accepted) != ("OK", events):
        return f"a fresh batch of {events} events got {outcome.status}, {outcome.accepted} accepted"
    if not http_url:
        return ""
    async with http_client(http_url) as client:
        status, reply = await client.request("GET", "/readyz")
        if status != 200:
            return f"/readyz answers {status}: {reply[:300]!r}"
        body, markers = markers_body(fuzzer, events)
        headers = (("content-type", "application/json"),)
        call = Call(POST_JSON, (body,), markers, 1, HttpRequest("POST", "/v1/events", headers))
        outcome = await HttpTarget(client, ingest=True).send(call)
        report.add(POST_JSON, call, outcome)
    if (outcome.status, outcome.accepted) != ("HTTP 200", events):
        return f"a fresh POST of {events} events got {outcome.status}, {outcome.accepted} accepted"
    return ""


def read_to_end(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of the topic up to its end as of now, however many
    (`tests.kafka.consume_all` stops after a bounded number of polls)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions) if ends[p]])
    out: list[tuple[bytes, bytes]] = []
    todo = {p for p, end in ends.items() if end}
    while todo:
        for msg in consumer.consume(10_000, timeout=1):
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                continue
            out.append((msg.key() or b"", msg.value() or b""))
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                todo.discard(msg.partition() or 0)
    consumer.close()
    return out


def check_log(
    records: Sequence[tuple[bytes, bytes]], report: Report, marker_campaign: str
) -> list[str]:
    """Problems with the events topic against the report: every acknowledged marker
    exactly once and byte for byte, no other marker more than once or unsent, and (when
    every ingest call's count is known) as many events as the edge accepted."""
    problems = []
    marker_key = marker_campaign.encode()
    events = [r for r in records if r[0]]  # heartbeats have empty keys
    seen: Counter[str] = Counter()
    for _key, value in (r for r in events if r[0] == marker_key):
        event = pb.RawEvent.FromString(value)
        seen[event.event_id] += 1
        sent = report.acknowledged.get(event.event_id) or report.unconfirmed.get(event.event_id)
        if sent != value:
            problems.append(
                f"marker {event.event_id} in Kafka is not the event sent or was refused"
            )
    missing = [i for i in report.acknowledged if seen[i] != 1]
    if missing:
        counts = [(i, seen[i]) for i in missing[:10]]
        problems.append(f"{len(missing)} acknowledged markers not once in Kafka: {counts}")
    doubled = [i for i in report.unconfirmed if seen[i] > 1]
    if doubled:
        problems.append(f"{len(doubled)} unconfirmed markers more than once: {doubled[:10]}")
    if report.unknown_calls == 0 and len(events) != report.accepted:
        problems.append(f"{len(events)} events in Kafka, the edge accepted {report.accepted}")
    return problems


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _edge_env(bootstrap: str, dsn: str, topic: str, port: int, http_port: int) -> dict[str, str]:
    return {
        "PULSE_KAFKA_BOOTSTRAP": bootstrap,
        "PULSE_PG_DSN": dsn,
        "PULSE_TOPIC_RAW": topic,
        "PULSE_GRPC_PORT": str(port),
        "PULSE_HTTP_PORT": str(http_port),
        "PULSE_HTTP_MAX_BODY_BYTES": str(1 << 20),
        "PULSE_METRICS_PORT": "0",
        "PULSE_HEALTH_PORT": "0",
        "PULSE_MAX_MESSAGE_BYTES": str(1 << 20),
        "PULSE_MAX_BATCH_EVENTS": "1000",
    }


def _run(
    args: argparse.Namespace, target: str, http_url: str | None, pid: int | None, plan: Plan
) -> tuple[Report, str]:
    before = rss_kb(pid) if pid else 0
    report, fuzzer = asyncio.run(
        fuzz_routes(target, http_url, plan, args.messages, concurrency=args.concurrency)
    )
    problem = asyncio.run(still_serving(target, http_url, fuzzer, report, 100))
    after = rss_kb(pid) if pid else 0
    print(report.summary())
    if pid:
        print(f"edge RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after")
    return report, problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--target", help="a running edge, host:port (default: start one)")
    parser.add_argument(
        "--http-url", help="the running edge's gateway, http://host:port (default: gRPC only)"
    )
    parser.add_argument("--edge-pid", type=int, help="the running edge's pid, for its RSS")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-batch-events", type=int, default=1000)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    plan = Plan(
        seed=args.seed,
        now_ms=int(time.time() * 1000),
        marker_campaign=f"fuzz-valid-{uuid.uuid4().hex[:8]}",
        max_message_bytes=args.max_message_bytes,
        max_batch_events=args.max_batch_events,
        max_body_bytes=args.max_body_bytes,
    )
    print(f"fuzzing with seed {args.seed}, markers in campaign {plan.marker_campaign}")
    problems: list[str] = []
    if args.target:
        report, problem = _run(args, args.target, args.http_url, args.edge_pid, plan)
        problems += [problem] if problem else []
    else:
        from .bench_ingest import wait_serving
        from .common import fresh_database, fresh_topics, pulse_process, stack

        bootstrap, admin_dsn = stack()
        topics = fresh_topics(bootstrap, PARTITIONS)
        port, http_port = free_port(), free_port()
        target = f"127.0.0.1:{port}"
        try:
            with (
                fresh_database(admin_dsn) as dsn,
                tempfile.TemporaryDirectory() as tmp,
                pulse_process(
                    "serve", _edge_env(bootstrap, dsn, topics["raw"], port, http_port), Path(tmp)
                ) as proc,
            ):
                wait_serving(target, proc)
                http_url = f"http://127.0.0.1:{http_port}"
                report, problem = _run(args, target, http_url, proc.pid, plan)
                problems += [problem] if problem else []
            records = read_to_end(bootstrap, topics["raw"], PARTITIONS)
            problems += check_log(records, report, plan.marker_campaign)
            print(
                f"Kafka: {sum(1 for r in records if r[0]):,} events; "
                f"{len(report.acknowledged):,} acknowledged markers checked"
            )
        finally:
            delete_topics(bootstrap, list(topics.values()))
    if report.unexpected:
        problems.append(
            f"{report.unexpected} calls got a status outside {sorted(ALLOWED_GRPC)} or an HTTP 5xx"
        )
    for problem in problems:
        print(f"FAIL: {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
