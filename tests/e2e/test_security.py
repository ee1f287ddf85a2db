"""The edge faces the internet: TLS, mutual TLS, bearer tokens, rate limits.

One edge process (`pulse serve`) with a certificate from a CA the test makes, a client
CA (mutual TLS) and a tokens file; calls go through gRPC as clients send them, and what
the edge acknowledged is read back from Kafka, exactly.
"""

import asyncio
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ingest.client import Credentials, PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.auth import digest, new_token, toml_entry
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.kafka import consume_all
from tests.ports import free_port

RELOAD_S = 0.5


@dataclass
class Secured:
    pipeline: Pipeline
    ca_file: str
    client_cert: str
    client_key: str
    tokens_file: Path
    writer: str  # token: writes acme-*, reads acme-*
    limited: str  # token: writes every campaign, 50 events/s, burst 100
    workdir: Path

    def credentials(self, token: str = "", *, client_cert: bool = True) -> Credentials:
        if not client_cert:
            return Credentials(token=token, ca_file=self.ca_file)
        return Credentials(
            token=token, ca_file=self.ca_file, cert_file=self.client_cert, key_file=self.client_key
        )

    def client(self, token: str = "", *, client_cert: bool = True) -> PulseClient:
        return PulseClient(
            self.pipeline.target, 100, self.credentials(token, client_cert=client_cert)
        )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in self.workdir.glob("serve-*.log"))


def issue(name: str, token: str, writes: list[str], reads: list[str], rate: float = 0) -> str:
    return toml_entry(
        name=name,
        sha256=digest(token),
        tenant=name,
        write_prefixes=writes,
        read_prefixes=reads,
        events_per_second=rate,
        burst_events=2 * rate,
    )


@pytest.fixture
def secured(stack: Stack, database: str, topics: Topics, tmp_path: Path) -> Iterator[Secured]:
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("client.acme.example")
    files = {
        name: str(tmp_path / f"{name}.pem")
        for name in ("ca", "cert", "key", "cca", "ccert", "ckey")
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(files["cert"], append=True)
    server.private_key_pem.write_to_path(files["key"])
    client_ca.cert_pem.write_to_path(files["cca"])
    client.cert_chain_pems[0].write_to_path(files["ccert"])
    client.private_key_pem.write_to_path(files["ckey"])
    writer, limited = new_token(), new_token()
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(
        issue("acme-web", writer, ["acme-"], ["acme-"])
        + issue("partner", limited, [""], [""], rate=50)
    )
    env = {
        "PULSE_TLS_CERT_FILE": files["cert"],
        "PULSE_TLS_KEY_FILE": files["key"],
        "PULSE_TLS_CLIENT_CA_FILE": files["cca"],
        "PULSE_TOKENS_FILE": str(tokens_file),
        "PULSE_TOKENS_RELOAD_SECONDS": str(RELOAD_S),
        "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0",
    }
    pipeline = Pipeline(stack, database, topics, tmp_path, env)
    secured = Secured(
        pipeline, files["ca"], files["ccert"], files["ckey"], tokens_file, writer, limited, tmp_path
    )
    pipeline.start("serve")
    try:
        wait_serving(secured)
        yield secured
    finally:
        pipeline.stop_all()


def wait_serving(secured: Secured, timeout_s: float = 30) -> None:
    """gRPC health over mutual TLS, without a token."""

    async def check() -> int:
        channel = secured.credentials().channel(secured.pipeline.target, [])
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return int(reply.status)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = secured.pipeline.procs["serve"]
        if proc.poll() is not None:
            pytest.fail(f"pulse serve exited with {proc.returncode}: {secured.logs()}")
        try:
            if asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    pytest.fail(f"edge not SERVING over TLS after {timeout_s} s: {secured.logs()}")


def events(campaign: str, first: int, count: int) -> list[pb.RawEvent]:
    now = int(time.time() * 1000)
    return [
        pb.RawEvent(
            campaign_id=campaign, event_type="click", timestamp=now, event_id=f"e{first + i}"
        )
        for i in range(count)
    ]


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def accepted_ids(secured: Secured) -> list[tuple[str, str]]:
    topic = secured.pipeline.topics.raw
    records = consume_all(secured.pipeline.bootstrap, topic, 3)  # the topics fixture's
    out = []
    for _partition, _offset, key, value, _headers in records:
        if key:  # heartbeats have no key
            event = pb.RawEvent.FromString(value or b"")
            out.append((event.campaign_id, event.event_id))
    return sorted(out)


def test_tls_tokens_and_prefixes_decide_who_writes_what(secured: Secured) -> None:
    async def scenario() -> None:
        # Not TLS, or TLS without a client certificate: the handshake fails.
        async with PulseClient(secured.pipeline.target, 100) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain.ingest(events("acme-1", 0, 1))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with secured.client(secured.writer, client_cert=False) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await no_cert.ingest(events("acme-1", 0, 1))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        # Mutual TLS, but no token or an unknown one.
        for token in ("", new_token()):
            async with secured.client(token) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await anonymous.ingest(events("acme-1", 0, 1))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in (info.value.details() or "")

        # The writer's events outside acme-* are rejected one by one; the rest counted.
        mixed = events("acme-1", 0, 30) + events("other-1", 30, 10) + events("acme-2", 40, 5)
        async with secured.client(secured.writer) as writer:
            reply = await writer.ingest(mixed)
            assert (reply.accepted, reply.dropped) == (35, 10)
            assert [r.index for r in reply.rejections] == list(range(30, 40))
            assert {r.reason for r in reply.rejections} == {pb.REJECT_REASON_PERMISSION_DENIED}

            # Reading: its own prefix yes, another no.
            own = pb.MetricsRequest(campaign_id="acme-1", start_ms=0, end_ms=86_400_000)
            assert await writer.query(own) == []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await writer.query(
                    pb.MetricsRequest(campaign_id="other-1", start_ms=0, end_ms=86_400_000)
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # Health and reflection answer without a token.
        channel = secured.credentials().channel(secured.pipeline.target, [])
        async with channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert "analytics.v1.AnalyticsService" in names

    asyncio.run(scenario())
    expected = [("acme-1", f"e{i}") for i in range(30)] + [
        ("acme-2", f"e{i}") for i in range(40, 45)
    ]
    assert accepted_ids(secured) == sorted(expected)
    logs = secured.logs()
    assert secured.writer not in logs and secured.limited not in logs


def test_a_token_over_its_rate_is_told_when_to_retry_and_loses_nothing(secured: Secured) -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        sent = accepted = 0
        hints = []
        async with secured.client(secured.limited) as client:
            for call in range(12):  # 12 x 30 events against 50/s with a burst of 100
                batch = events("p-1", call * 30, 30)
                try:
                    reply = await client.ingest(batch)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    trailers = dict(exc.trailing_metadata() or ())
                    hints.append(int(trailers["retry-after-ms"]))
                    await asyncio.sleep(hints[-1] / 1000)
                    reply = await client.ingest(batch)  # the retry after the hint passes
                sent += len(batch)
                accepted += reply.accepted
        return sent, accepted, hints

    sent, accepted, hints = asyncio.run(scenario())
    assert sent == accepted == 360
    assert hints and all(0 < h <= 2000 for h in hints)
    assert accepted_ids(secured) == sorted(("p-1", f"e{i}") for i in range(360))
    metrics = scrape(secured.pipeline)
    assert metric(metrics, 'pulse_ingest_refused_calls_total{reason="rate_limited"}') == len(hints)


def test_a_new_token_works_without_a_restart_and_a_removed_one_stops(secured: Secured) -> None:
    late = new_token()
    tokens = secured.tokens_file
    # As Kubernetes updates a mounted Secret: a new file swapped in.
    replacement = tokens.with_suffix(".new")
    replacement.write_text(issue("late", late, ["late-"], []))
    os.replace(replacement, tokens)
    time.sleep(RELOAD_S * 4)

    async def scenario() -> tuple[int, grpc.StatusCode]:
        async with secured.client(late) as client:
            reply = await client.ingest(events("late-1", 0, 3))
        async with secured.client(secured.writer) as removed:
            code = await code_of(removed.ingest(events("acme-1", 0, 1)))
        return reply.accepted, code

    accepted, code = asyncio.run(scenario())
    assert accepted == 3
    assert code == grpc.StatusCode.UNAUTHENTICATED


def scrape(pipeline: Pipeline) -> str:
    url = f"http://127.0.0.1:{pipeline.metrics_ports['serve']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_gateway_applies_the_same_tls_tokens_and_limits(secured: Secured) -> None:
    url = f"https://127.0.0.1:{secured.pipeline.http_port}"
    now = int(time.time() * 1000)

    def body(campaign: str, first: int, count: int) -> list[dict[str, object]]:
        return [
            {"campaign_id": campaign, "event_type": "view", "timestamp": now, "event_id": f"h{i}"}
            for i in range(first, first + count)
        ]

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    # Not TLS, or TLS without a client certificate: no HTTP exchange at all.
    with pytest.raises(httpx.HTTPError):
        httpx.post(url.replace("https", "http") + "/v1/events", json=body("acme-h", 0, 1))
    trust = ssl.create_default_context(cafile=secured.ca_file)
    with pytest.raises(httpx.HTTPError):
        httpx.post(url + "/v1/events", json=body("acme-h", 0, 1), verify=trust)

    mutual = ssl.create_default_context(cafile=secured.ca_file)
    mutual.load_cert_chain(secured.client_cert, secured.client_key)
    with httpx.Client(base_url=url, timeout=10, verify=mutual) as client:
        assert client.get("/healthz").status_code == 200  # no token needed
        assert client.post("/v1/events", json=body("acme-h", 0, 1)).status_code == 401
        bad = client.post("/v1/events", json=body("acme-h", 0, 1), headers=bearer(new_token()))
        assert (bad.status_code, "bearer token" in bad.json()["error"]) == (401, True)

        mixed = body("acme-h", 0, 20) + body("other-h", 20, 5)
        reply = client.post("/v1/events", json=mixed, headers=bearer(secured.writer))
        assert reply.status_code == 200
        answer = reply.json()
        assert (answer["accepted"], answer["dropped"]) == (20, 5)
        assert {r["reason"] for r in answer["rejections"]} == {"PERMISSION_DENIED"}

        query = {"start_ms": 0, "end_ms": 86_400_000}
        own = client.get(
            "/v1/metrics", params={"campaign_id": "acme-h", **query}, headers=bearer(secured.writer)
        )
        other = client.get(
            "/v1/metrics",
            params={"campaign_id": "other-h", **query},
            headers=bearer(secured.writer),
        )
        assert (own.status_code, other.status_code) == (200, 403)

        # The rate-limited token: 50 events/s, a burst of 100.
        statuses, hints = [], []
        for call in range(8):
            reply = client.post(
                "/v1/events", json=body("p-h", call * 40, 40), headers=bearer(secured.limited)
            )
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                hints.append(int(reply.headers["retry-after"]))
        assert statuses[:3] == [200, 200, 200] and 429 in statuses
        assert all(1 <= h <= 2 for h in hints)

    accepted = [i for i in accepted_ids(secured) if i[0] in ("acme-h", "other-h")]
    assert accepted == sorted(("acme-h", f"h{i}") for i in range(20))


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"PULSE_TLS_CERT_FILE": "absent.pem", "PULSE_TLS_KEY_FILE": "absent.key"},
            "pulse: TLS files (absent.pem, absent.key): [Errno 2] No such file or directory",
        ),
        (
            {"PULSE_TOKENS_FILE": "absent.toml"},
            "pulse: tokens file absent.toml: No such file or directory",
        ),
        (
            {"PULSE_TOKENS_FILE": "tokens.toml"},
            "pulse: tokens file tokens.toml: token 1: unknown field 'token'",
        ),
    ],
)
def test_a_missing_or_bad_tls_or_tokens_file_stops_the_edge_in_one_line(
    stack: Stack, tmp_path: Path, env: dict[str, str], line: str
) -> None:
    (tmp_path / "tokens.toml").write_text('[[tokens]]\ntoken = "a plain token"\n')
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve"],
        env={
            **os.environ,
            "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "PULSE_GRPC_PORT": str(free_port()),
            **{f"PULSE_{p}_PORT": "0" for p in ("HTTP", "METRICS", "HEALTH")},
            **env,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in done.stderr and "a plain token" not in done.stderr
