"""Where the deployables listen: with the default settings, on loopback only.

`pulse serve` and `pulse flow` run with no `PULSE_*_HOST` variable set; every TCP socket
either process listens on (read from /proc: its file descriptors, and the kernel's
tables of listening sockets) must be bound to 127.0.0.1, never 0.0.0.0 or ::. The
dataflow's /metrics (its own server, on PULSE_METRICS_PORT) answers there with its
`pulse_flow_*` counters, exact to the events sent.
"""

import asyncio
import ipaddress
import os
import time
from pathlib import Path

import pytest

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.e2e.test_real_clients import flow_metric

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp (IPv4) or tcp6 (IPv6): 32-bit words, host byte order.

    An IPv4-mapped IPv6 address (gRPC listens on IPv6 sockets) is shown as its IPv4 one.
    """
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == LISTEN and inode in inodes:
                    address, _, port = local.partition(":")
                    found.add((_address(address), int(port, 16)))
    return found


def test_by_default_every_listening_socket_is_on_loopback(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    pipeline = Pipeline(stack, database, topics, tmp_path, {"PULSE_IDLE_TIMEOUT_SECONDS": "3600"})
    for name in [n for n in pipeline.env if n.startswith("PULSE_") and n.endswith("_HOST")]:
        del pipeline.env[name]  # the defaults, whatever the environment of the tests
    try:
        pipeline.start("serve")
        pipeline.start("flow")
        pipeline.wait_serving()
        now = int(time.time() * 1000)
        events = [
            pb.RawEvent(
                campaign_id=f"binds-{now}",
                event_type="impression",
                event_id=f"ev-{i}",
                timestamp=now - 5_000,
                value=1.0,
            )
            for i in range(200)
        ]

        async def send() -> pb.IngestResponse:
            async with PulseClient(pipeline.target, batch_size=100) as client:
                return await client.ingest(events)

        assert asyncio.run(send()).accepted == len(events)
        metric = "pulse_flow_events_processed_total"
        deadline = time.monotonic() + 60
        while flow_metric(pipeline, metric) != len(events) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert flow_metric(pipeline, metric) == len(events)  # from 127.0.0.1:PULSE_METRICS_PORT

        flow = listening(pipeline.procs["flow"].pid)
        assert flow == {
            ("127.0.0.1", pipeline.metrics_ports["flow"]),
            ("127.0.0.1", pipeline.health_ports["flow"]),
        }, "the dataflow listens beyond its metrics and health servers on loopback"
        edge = listening(pipeline.procs["serve"].pid)
        assert {
            ("127.0.0.1", int(pipeline.target.rsplit(":", 1)[1])),
            ("127.0.0.1", pipeline.metrics_ports["serve"]),
            ("127.0.0.1", pipeline.health_ports["serve"]),
        } <= edge
        beyond = {(address, port) for address, port in edge if address != "127.0.0.1"}
        assert not beyond, f"the edge listens beyond loopback: {sorted(beyond)}"
    except BaseException:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
        print(logs)
        raise
    finally:
        pipeline.stop_all()


@pytest.mark.parametrize(
    ("hex_address", "address"),
    [
        ("0100007F", "127.0.0.1"),
        ("00000000", "0.0.0.0"),
        ("00000000000000000000000001000000", "::1"),
        ("0000000000000000FFFF00000100007F", "127.0.0.1"),
        ("00000000000000000000000000000000", "::"),
    ],
)
def test_proc_net_addresses_are_decoded(hex_address: str, address: str) -> None:
    assert _address(hex_address) == address
