"""The pipeline over TLS: Kafka with SASL_SSL (SCRAM-SHA-512), TimescaleDB with
`sslmode=verify-full`, every password from a `PULSE_*_FILE` file.

The test runs its own broker and PostgreSQL server (the project's stack scripts, a
second data directory, free ports): the broker gets a SASL_SSL listener beside its
PLAINTEXT one, the server accepts TCP clients over TLS only. Certificates come from a
CA made for the test. `pulse migrate`, `pulse serve` and `pulse flow` then run over
the secure listener only; the aggregates match the events sent exactly, and no
password shows in any output or in `/readyz`. A wrong password, a wrong CA or a wrong
host name stops a process with a line that says so, again without the password.
"""

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trustme
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography.hazmat.primitives import serialization
from psycopg import sql

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.e2e.test_outages import PrivateStack
from tests.e2e.test_pipeline import MINUTE_MS, raw, wait_for
from tests.ports import free_port
from tests.reference import aggregate

ROOT = Path(__file__).resolve().parents[2]
USER = "pulse-edge"


@dataclass
class Secure:
    """The private stack with TLS, its CA and its secrets (written to files)."""

    stack: PrivateStack
    dir: Path
    ca: Path
    sasl_port: int
    kafka_password: str
    pg_password: str

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def dsn(self, host: str = "localhost", ca: Path | None = None) -> str:
        """verify-full against `ca` (default: the test's CA); connects to 127.0.0.1 and
        checks the certificate against `host`."""
        return (
            f"postgresql://pulse:{self.pg_password}@{host}:{self.stack.pg_port}/pulse"
            f"?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca or self.ca}"
        )

    def secret_file(self, name: str, value: str) -> Path:
        path = self.dir / name
        path.write_text(value + "\n")  # as `echo` or a mounted Secret leave it
        return path

    def env(self, *, kafka_password: str | None = None, ca: Path | None = None) -> dict[str, str]:
        """Settings of a process talking SASL_SSL and verify-full, secrets in files."""
        password = self.kafka_password if kafka_password is None else kafka_password
        return {
            "PULSE_KAFKA_BOOTSTRAP": self.sasl_bootstrap,
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PULSE_KAFKA_SASL_USERNAME": USER,
            "PULSE_KAFKA_SASL_PASSWORD_FILE": str(self.secret_file("kafka-password", password)),
            "PULSE_KAFKA_SSL_CA_LOCATION": str(ca or self.ca),
            "PULSE_PG_DSN_FILE": str(self.secret_file("pg-dsn", self.dsn())),
        }

    def leaks(self, text: str) -> list[str]:
        return [s for s in (self.kafka_password, self.pg_password) if s in text]


def pem_files(directory: Path, name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
    """The certificate chain and its key as PKCS#8 (what Kafka's PEM key store reads)."""
    chain, key = directory / f"{name}.crt", directory / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    private = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return chain, key


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """One secure stack for the module's tests (starting it is most of their time)."""
    tmp_path = tmp_path_factory.mktemp("secure")
    workdir = tmp_path / "tls"
    workdir.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    # The broker advertises 127.0.0.1; the PostgreSQL certificate names localhost only,
    # so connecting by address fails its host name check.
    kafka_cert, kafka_key = pem_files(workdir, "kafka", ca.issue_cert("127.0.0.1"))
    pg_cert, pg_key = pem_files(workdir, "postgres", ca.issue_cert("localhost"))
    own = PrivateStack(tmp_path / "stack")
    sasl_port = free_port()
    own.env |= {
        "PULSE_KAFKA_SASL_SSL_PORT": str(sasl_port),
        "PULSE_KAFKA_TLS_CERT": str(kafka_cert),
        "PULSE_KAFKA_TLS_KEY": str(kafka_key),
        "PULSE_PG_TLS_CERT": str(pg_cert),
        "PULSE_PG_TLS_KEY": str(pg_key),
    }
    try:
        own.stack("up")
        yield setup(own, workdir, sasl_port)
    finally:
        own.stack("clean")


def setup(own: PrivateStack, workdir: Path, sasl_port: int) -> Secure:
    """The SCRAM user (over the loopback PLAINTEXT listener) and a PostgreSQL password of
    the test's own, so that a leak of either is recognisable."""
    secure = Secure(
        own,
        workdir,
        workdir / "ca.pem",
        sasl_port,
        f"kafka-{secrets.token_hex(12)}",
        f"pg-{secrets.token_hex(12)}",
    )
    admin = AdminClient({"bootstrap.servers": own.bootstrap})
    credential = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upsert = UserScramCredentialUpsertion(USER, credential, secure.kafka_password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    with psycopg.connect(secure.dsn().replace(secure.pg_password, "pulse")) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE pulse PASSWORD {}").format(sql.Literal(secure.pg_password))
        )
    return secure


def pulse(command: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str]:
    """Run `pulse <command>`; its exit status and output (stdout and stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    result = subprocess.run(
        [sys.executable, "-m", "cli", command],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_pipeline_runs_over_sasl_ssl_and_verify_full(secure: Secure, tmp_path: Path) -> None:
    topics = Topics(*(f"tls.{name}" for name in ("raw", "late", "dlq", "notifications", "shed")))
    names = {
        "PULSE_TOPIC_RAW": topics.raw,
        "PULSE_TOPIC_LATE": topics.late,
        "PULSE_TOPIC_DLQ": topics.dlq,
        "PULSE_TOPIC_NOTIFICATIONS": topics.notifications,
        "PULSE_TOPIC_SHED": topics.shed,
        "PULSE_TOPIC_PARTITIONS": "3",
    }
    code, output = pulse("migrate", {**secure.env(), **names})
    assert code == 0, output
    assert "topics created: tls.raw, tls.late, tls.dlq, tls.notifications, tls.shed" in output
    assert secure.leaks(output) == []

    pipeline = Pipeline(
        Stack(secure.sasl_bootstrap, ""),
        secure.dsn(),
        topics,
        tmp_path,
        {**secure.env(), "PULSE_IDLE_TIMEOUT_SECONDS": "3600"},
    )
    del pipeline.env["PULSE_PG_DSN"]  # from PULSE_PG_DSN_FILE only
    rng = random.Random(5)
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS - 10 * MINUTE_MS
    campaigns = [f"tls-{i}" for i in range(3)]
    events = [
        raw(
            rng.choice(campaigns),
            rng.choice(["impression", "click"]),
            base + rng.randrange(3 * MINUTE_MS),
            rng.randrange(400) / 8,
            f"tls-{i}",
        )
        for i in range(3000)
    ]

    async def send() -> pb.IngestResponse:
        async with PulseClient(pipeline.target, batch_size=500) as client:
            return await client.ingest(events)

    try:
        pipeline.start("serve")
        pipeline.start("flow")
        pipeline.wait_serving()
        reply = asyncio.run(send())
        assert (reply.accepted, reply.dropped) == (len(events), 0)
        expected = aggregate((e.campaign_id, e.event_type, e.timestamp, e.value) for e in events)
        wait_for(secure.dsn(), campaigns, expected)
        for name, port in pipeline.health_ports.items():
            status, body = readyz(port)
            assert status == 200, (name, body)
            assert json.loads(body)["status"] == "ready"
            assert secure.leaks(body) == []
    finally:
        pipeline.stop_all()
    logs = "".join(path.read_text() for path in tmp_path.glob("*.log"))
    assert '"kafka_sasl_password": "**********"' in logs  # the config line, masked
    assert secure.leaks(logs) == []


def test_a_wrong_password_ca_or_host_stops_a_process_with_the_reason(secure: Secure) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    code, output = pulse("migrate", secure.env(kafka_password=wrong))
    assert code == 2, output
    assert f"pulse: Kafka at {secure.sasl_bootstrap} refused this process:" in output
    assert "SASL authentication error" in output
    assert secure.leaks(output) == [] and wrong not in output

    other = trustme.CA()
    other_ca = secure.dir / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    ports = {
        "PULSE_GRPC_PORT": str(free_port()),
        "PULSE_METRICS_PORT": "0",
        "PULSE_HEALTH_PORT": "0",
    }
    code, output = pulse("serve", {**secure.env(ca=other_ca), **ports})
    assert code == 2, output
    assert "refused this process" in output and "certificate verify failed" in output
    assert secure.leaks(output) == []

    def migrate_with(dsn: str) -> str:
        env = {**secure.env(), "PULSE_PG_DSN_FILE": str(secure.secret_file("bad-dsn", dsn))}
        code, output = pulse("migrate", env)
        assert code == 2, output
        assert secure.leaks(output) == []
        return output

    output = migrate_with(secure.dsn(ca=other_ca))
    assert "pulse: migration failed:" in output and "certificate verify failed" in output
    output = migrate_with(secure.dsn(host="127.0.0.1"))
    assert 'server certificate for "localhost" does not match host name "127.0.0.1"' in output
    output = migrate_with(secure.dsn().replace("sslmode=verify-full", "sslmode=disable"))
    assert "no encryption" in output  # the server takes TCP clients over TLS only
