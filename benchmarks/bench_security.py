"""What TLS and token checks cost the edge: ingest events/s, off against on, in one run.

Starts one `pulse serve` per configuration (plaintext; TLS; a bearer token; TLS and a
token; mutual TLS and a token), all at once against the local stack, and streams the
same pre-built events to each in turn, round after round (the median is reported, so a
noisy neighbour hurts every configuration alike). Certificates come from a throwaway
CA made here.
"""

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ingest.client import Credentials, PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.auth import digest, new_token, toml_entry
from tests.ports import free_port

from .bench_gateway import http_rate
from .common import fresh_topics, pulse_process, stack, synthetic_events, with_new_ids


@dataclass(frozen=True)
class Config:
    name: str
    tls: bool = False
    mutual: bool = False
    token: bool = False


CONFIGS = [
    Config("plaintext"),
    Config("TLS", tls=True),
    Config("token", token=True),
    Config("TLS + token", tls=True, token=True),
    Config("mutual TLS + token", tls=True, mutual=True, token=True),
]


class Certificates:
    def __init__(self, workdir: Path) -> None:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        client = ca.issue_cert("bench.client")
        self.ca, self.cert, self.key = (str(workdir / n) for n in ("ca.pem", "c.pem", "k.pem"))
        self.client_cert, self.client_key = str(workdir / "cc.pem"), str(workdir / "ck.pem")
        ca.cert_pem.write_to_path(self.ca)
        server.cert_chain_pems[0].write_to_path(self.cert)
        server.private_key_pem.write_to_path(self.key)
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)


def edge_env(config: Config, certs: Certificates, tokens_file: Path, topic: str) -> dict[str, str]:
    env = {
        "PULSE_TOPIC_RAW": topic,
        "PULSE_GRPC_PORT": str(free_port()),
        "PULSE_HTTP_PORT": str(free_port()),
        "PULSE_METRICS_PORT": "0",
        "PULSE_HEALTH_PORT": "0",
        "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0",
    }
    if config.tls:
        env |= {"PULSE_TLS_CERT_FILE": certs.cert, "PULSE_TLS_KEY_FILE": certs.key}
    if config.mutual:
        env["PULSE_TLS_CLIENT_CA_FILE"] = certs.ca
    if config.token:
        env["PULSE_TOKENS_FILE"] = str(tokens_file)
    return env


def credentials(config: Config, certs: Certificates, token: str) -> Credentials:
    return Credentials(
        token=token if config.token else "",
        ca_file=certs.ca if config.tls else "",
        cert_file=certs.client_cert if config.mutual else "",
        key_file=certs.client_key if config.mutual else "",
    )


def http_tls(config: Config, certs: Certificates) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(cafile=certs.ca)
    if config.mutual:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


async def wait_serving(target: str, creds: Credentials) -> None:
    for _ in range(150):
        try:
            async with creds.channel(target, []) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"edge at {target} not SERVING")


async def measure(target: str, creds: Credentials, events: list[pb.RawEvent], size: int) -> float:
    """Events/s of one IngestEventBatches call per 10,000 events, 4 calls at once."""
    events = with_new_ids(events)
    per_call = 10_000
    chunks = [events[i : i + per_call] for i in range(0, len(events), per_call)]
    async with PulseClient(target, size, creds) as client:
        await client.ingest(with_new_ids(events[:size]))  # warm: handshake, first batch
        started = time.perf_counter()
        accepted = 0
        for i in range(0, len(chunks), 4):
            replies = await asyncio.gather(*(client.ingest(c) for c in chunks[i : i + 4]))
            accepted += sum(r.accepted for r in replies)
        elapsed = time.perf_counter() - started
    assert accepted == len(events), f"accepted {accepted} of {len(events)}"
    return accepted / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="10,500")
    parser.add_argument("--http-batch-size", type=int, default=500)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    bootstrap, _dsn = stack()
    topic = fresh_topics(bootstrap)["raw"]
    events = synthetic_events(args.events)
    token = new_token()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        certs = Certificates(workdir)
        tokens_file = workdir / "tokens.toml"
        tokens_file.write_text(
            toml_entry(
                name="bench",
                sha256=digest(token),
                tenant="bench",
                write_prefixes=[""],
                read_prefixes=[""],
            )
        )
        envs = [edge_env(c, certs, tokens_file, topic) for c in CONFIGS]
        targets = [f"127.0.0.1:{env['PULSE_GRPC_PORT']}" for env in envs]
        creds = [credentials(c, certs, token) for c in CONFIGS]
        rates: dict[tuple[str, int], list[float]] = {}
        with ExitStack() as edges:
            for config, env in zip(CONFIGS, envs, strict=True):
                edges.enter_context(pulse_process("serve", env, workdir / config.name))
            for target, cred in zip(targets, creds, strict=True):
                asyncio.run(wait_serving(target, cred))
            http = args.http_batch_size
            for _ in range(args.rounds):
                for size in sizes:
                    for config, target, cred in zip(CONFIGS, targets, creds, strict=True):
                        rate = asyncio.run(measure(target, cred, events, size))
                        rates.setdefault((config.name, size), []).append(rate)
                for config, env in zip(CONFIGS, envs, strict=True):
                    headers = f"Authorization: Bearer {token}\r\n" if config.token else ""
                    rate = asyncio.run(
                        http_rate(
                            int(env["PULSE_HTTP_PORT"]),
                            events,
                            http,
                            8,
                            headers=headers,
                            tls=http_tls(config, certs),
                        )
                    )
                    rates.setdefault((config.name, -http), []).append(rate)
    print(f"edge ingest with TLS and tokens, {args.events:,} events, median of {args.rounds}")
    columns = [*sizes, -args.http_batch_size]

    def label(size: int) -> str:
        return f"gRPC {size}/msg" if size > 0 else f"HTTP {-size}/req"

    print(f"{'configuration':<22}" + "".join(f"{label(s):>16}{'ratio':>7}" for s in columns))
    for config in CONFIGS:
        row = f"{config.name:<22}"
        for size in columns:
            rate = statistics.median(rates[(config.name, size)])
            base = statistics.median(rates[(CONFIGS[0].name, size)])
            row += f"{rate:>16,.0f}{rate / base:>7.2f}"
        print(row)


if __name__ == "__main__":
    main()
