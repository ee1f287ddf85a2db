"""The container image, built by scripts/image.sh and run with podman against the local stack.

From the image, on a read-only root filesystem: `pulse migrate` creates the schema in an empty
database and the test's topics, then the ingest edge and a dataflow worker aggregate a few
hundred events sent through gRPC, checked exactly against a reference. `pytest -s` prints the
image's size and build time.
"""

import asyncio
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from pulse.settings import FlowSettings, IngestSettings
from tests.conftest import Stack
from tests.ports import free_port
from tests.reference import aggregate
from tests.scratch import drop_database

# A cold build (podman, the base image, the wheels) takes about three minutes.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("PULSE_IMAGE", "localhost/pulse:dev")
PULSE_UID = 10001
MINUTE_MS = 60_000
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make", "ld")


def podman_env() -> dict[str, str]:
    """podman's settings for this host (runc, lower limits), as scripts/image.sh uses them."""
    conf = str(ROOT / "infra" / "podman" / "containers.conf")
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", conf)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built (or found up to date) by scripts/image.sh."""
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image.sh"), "build"],
        env={**podman_env(), "PULSE_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    elapsed = time.monotonic() - started
    if build.returncode != 0:
        pytest.fail(f"scripts/image.sh build exited {build.returncode}:\n{build.stderr[-4000:]}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE))
    print(f"\n[image] {IMAGE}: {size // 1_000_000} MB, built in {elapsed:.1f} s")
    print(build.stderr.rstrip())
    return IMAGE


def test_the_image_sets_real_settings(image: str) -> None:
    lines = podman(
        "image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", image
    )
    env = dict(line.split("=", 1) for line in lines.splitlines() if line)
    pulse = {key: value for key, value in env.items() if key.startswith("PULSE_")}
    fields = {*IngestSettings.model_fields, *FlowSettings.model_fields}
    assert {key.removeprefix("PULSE_").lower() for key in pulse} <= fields
    # The defaults (127.0.0.1) would hide the listeners inside the container's network.
    assert pulse == {
        "PULSE_GRPC_HOST": "0.0.0.0",
        "PULSE_HTTP_HOST": "0.0.0.0",
        "PULSE_HEALTH_HOST": "0.0.0.0",
        "PULSE_METRICS_HOST": "0.0.0.0",
        "PULSE_RECOVERY_DIR": "/var/lib/pulse",
    }
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_the_image_runs_as_pulse_and_holds_no_build_tools(image: str) -> None:
    assert podman("image", "inspect", "--format", "{{.Config.User}}", image).strip() == (
        f"{PULSE_UID}:{PULSE_UID}"
    )
    ids = podman("run", "--rm", "--read-only", "--entrypoint", "id", image).strip()
    assert ids == f"uid={PULSE_UID}(pulse) gid={PULSE_UID}(pulse) groups={PULSE_UID}(pulse)"
    probe = "; ".join(f"command -v {tool} || true" for tool in COMPILERS)
    found = podman("run", "--rm", "--entrypoint", "sh", image, "-c", probe).split()
    assert found == []
    # No pip either: the virtualenv holds the pinned packages and no installer.
    pip = "import importlib.util; print(importlib.util.find_spec('pip'))"
    assert podman("run", "--rm", "--entrypoint", "python3", image, "-c", pip).strip() == "None"


@dataclass(frozen=True)
class Names:
    """Unique topic and container names of one run."""

    prefix: str

    @property
    def topics(self) -> dict[str, str]:
        kinds = ("raw", "late", "dlq", "notifications", "shed")
        return {f"PULSE_TOPIC_{kind.upper()}": f"{self.prefix}.{kind}" for kind in kinds}

    def container(self, role: str) -> str:
        return f"{self.prefix}-{role}"


@pytest.fixture
def empty_database(stack: Stack) -> Iterator[str]:
    """A new database with no schema: the image's `pulse migrate` creates it."""
    name = f"pulse_image_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlsplit(stack.admin_dsn)._replace(path=f"/{name}").geturl()
    drop_database(stack.admin_dsn, name)


class Containers:
    """Containers started from the image on the host's network; removed at the end."""

    def __init__(self, image: str, env: dict[str, str]) -> None:
        self.image = image
        self.env = env
        self.names: list[str] = []

    def _args(self, name: str, env: dict[str, str], volumes: tuple[str, ...]) -> list[str]:
        args = ["--name", name, "--network", "host", "--read-only"]
        for key, value in {**self.env, **env}.items():
            args += ["-e", f"{key}={value}"]
        for volume in volumes:
            args += ["-v", volume]
        return args

    def run(self, name: str, command: str, args: tuple[str, ...] = ()) -> str:
        """Run to completion; its output."""
        self.names.append(name)
        return podman("run", "--rm", *self._args(name, {}, ()), self.image, command, *args)

    def start(
        self, name: str, command: str, env: dict[str, str], volumes: tuple[str, ...] = ()
    ) -> None:
        self.names.append(name)
        podman("run", "-d", *self._args(name, env, volumes), self.image, command)

    def running(self, name: str) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", name).strip() == "true"

    def logs(self, name: str) -> str:
        done = subprocess.run(
            ["podman", "logs", name], env=podman_env(), capture_output=True, text=True, check=False
        )
        return (done.stdout + done.stderr)[-4000:]

    def remove_all(self) -> None:
        for name in reversed(self.names):
            podman("rm", "--force", "--volumes", "--time", "5", name, check=False)


def wait_serving(containers: Containers, name: str, target: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not containers.running(name):
                pytest.fail(f"{name} stopped:\n{containers.logs(name)}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    pytest.fail(f"{name} at {target} not SERVING after {timeout_s} s:\n{containers.logs(name)}")


def listen_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on TCP `port` (/proc/net/tcp and tcp6, hex):
    all zeros is every address (0.0.0.0 or ::), 0100007F is 127.0.0.1."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                address, _, hex_port = fields[1].partition(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def binds_every_address(port: int) -> bool:
    addresses = listen_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    return all(set(a) == {"0"} for a in addresses)


Key = tuple[str, str, object]


def table(dsn: str, campaigns: list[str]) -> dict[Key, tuple[int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT campaign_id, event_type, bucket, event_count, value_sum FROM event_metrics"
            " WHERE campaign_id = ANY(%s)",
            (campaigns,),
        ).fetchall()
    return {(c, t, b): (n, s) for c, t, b, n, s in rows}


def events(campaigns: list[str], count: int) -> list[pb.RawEvent]:
    """`count` events of the campaigns over three whole minutes, ten minutes ago; values are
    multiples of 1/8, so their sums are exact in floating point."""
    rng = random.Random(11)
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS - 10 * MINUTE_MS
    return [
        pb.RawEvent(
            campaign_id=rng.choice(campaigns),
            event_type=rng.choice(["impression", "click", "conversion"]),
            timestamp=base + rng.randrange(3 * MINUTE_MS),
            value=rng.randrange(400) / 8,
            event_id=f"img-{i}",
            dimensions={"user_id": f"u{rng.randrange(50)}"},
        )
        for i in range(count)
    ]


def test_the_image_runs_migrate_the_edge_and_the_dataflow(
    image: str, stack: Stack, empty_database: str, tmp_path: Path
) -> None:
    names = Names(f"pulse-image-{uuid.uuid4().hex[:8]}")
    containers = Containers(
        image,
        {
            "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "PULSE_PG_DSN": empty_database,
            "PULSE_TOPIC_PARTITIONS": "3",
            **names.topics,
        },
    )
    ports = {
        name: free_port()
        for name in ("grpc", "metrics", "serve_health", "flow_metrics", "flow_health", "http")
    }
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    try:
        migrated = containers.run(names.container("migrate"), "migrate")
        assert "migrations applied: none" not in migrated
        created = migrated.split("topics created: ", 1)[1].strip().split(", ")
        assert sorted(created) == sorted(names.topics.values())
        # The alert follower reads the new notifications topic: nothing yet.
        notes = containers.run(
            names.container("notifications"), "notifications", args=("--timeout", "2")
        )
        assert notes == ""

        containers.start(
            names.container("serve"),
            "serve",
            {
                "PULSE_GRPC_PORT": str(ports["grpc"]),
                "PULSE_METRICS_PORT": str(ports["metrics"]),
                "PULSE_HEALTH_PORT": str(ports["serve_health"]),
                "PULSE_HTTP_PORT": str(ports["http"]),
                "PULSE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            },
        )
        containers.start(
            names.container("flow"),
            "flow",
            {
                "PULSE_METRICS_PORT": str(ports["flow_metrics"]),
                "PULSE_HEALTH_PORT": str(ports["flow_health"]),
                "PULSE_SNAPSHOT_INTERVAL_SECONDS": "1",
                "PULSE_IDLE_TIMEOUT_SECONDS": "3600",
                "PULSE_KAFKA_BATCH_SIZE": "500",
                "PULSE_ROLLUP_REFRESH_INTERVAL_SECONDS": "1",
            },
            # :U gives the directory to the image's user; the store must live on the volume.
            volumes=(f"{recovery}:/var/lib/pulse:U",),
        )
        target = f"127.0.0.1:{ports['grpc']}"
        wait_serving(containers, names.container("serve"), target)
        # The image's settings bind every address, not the defaults' 127.0.0.1.
        assert binds_every_address(ports["grpc"])
        assert binds_every_address(ports["metrics"])
        assert binds_every_address(ports["serve_health"])

        campaigns = [f"{names.prefix}-{i}" for i in range(3)]
        sent = events(campaigns, 600)

        async def send() -> pb.IngestResponse:
            async with PulseClient(target, batch_size=100) as client:
                return await client.ingest(sent)

        response = asyncio.run(send())
        assert (response.accepted, response.dropped) == (len(sent), 0)

        expected = aggregate((e.campaign_id, e.event_type, e.timestamp, e.value) for e in sent)
        deadline = time.monotonic() + 90
        got = table(empty_database, campaigns)
        while got != expected and time.monotonic() < deadline:
            assert containers.running(names.container("flow")), containers.logs(
                names.container("flow")
            )
            time.sleep(0.5)
            got = table(empty_database, campaigns)
        assert got == expected
        assert binds_every_address(ports["flow_health"])
        assert binds_every_address(ports["flow_metrics"])
        assert sorted(p.name for p in recovery.glob("part-*.sqlite3")) == ["part-0.sqlite3"]

        # Both stop cleanly on the image's stop signal, well before podman's SIGKILL.
        for role in ("serve", "flow"):
            started = time.monotonic()
            podman("stop", "--time", "30", names.container(role))
            stopped = time.monotonic() - started
            print(f"\n[image] {role} stopped in {stopped:.1f} s")
            assert stopped < 25, containers.logs(names.container(role))
    finally:
        containers.remove_all()
