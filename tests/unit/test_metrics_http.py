"""The /metrics server binds the configured address only, and serves the default registry."""

import socket
import subprocess
import sys
import urllib.request

import pytest

import flows.metrics  # noqa: F401 (registers the dataflow's metrics)
from pulse.errors import ConfigError
from runtime.metrics_http import MetricsServer
from tests.ports import free_port


def _refused(host: str, port: int) -> bool:
    with socket.socket() as client:
        client.settimeout(2)
        return client.connect_ex((host, port)) != 0


def test_metrics_answer_on_the_configured_address_only() -> None:
    """127.0.0.2 is loopback too on Linux: bound there, 127.0.0.1 is refused."""
    port = free_port()
    server = MetricsServer("127.0.0.2", port)
    try:
        assert server.port == port
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
            content_type = reply.headers["Content-Type"]
        assert content_type.startswith("text/plain; version=0.0.4")
        assert "# TYPE pulse_flow_events_processed_total counter" in text.splitlines()
        assert _refused("127.0.0.1", port)
    finally:
        server.close()
    assert _refused("127.0.0.2", port)  # closed: the port is free again


def test_an_address_this_machine_lacks_is_one_config_error() -> None:
    port = free_port()
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    with pytest.raises(ConfigError) as raised:
        MetricsServer("192.0.2.1", port)
    assert str(raised.value) == (
        f"PULSE_METRICS_PORT {port} cannot be bound on 192.0.2.1: Cannot assign requested address"
    )


@pytest.mark.parametrize("command", ["serve", "flow"])
def test_a_taken_metrics_port_stops_the_process_with_one_line(command: str) -> None:
    """Before the process connects to anything: exit status 2, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cli", command],
            env={
                "PATH": "",
                "PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
                "PULSE_PG_DSN": "postgresql://pulse:pulse@127.0.0.1:1/pulse",
                "PULSE_METRICS_PORT": str(port),
                "PULSE_HEALTH_PORT": "0",
                "PULSE_STARTING_OFFSET": "end",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"pulse: PULSE_METRICS_PORT {port} cannot be bound on 127.0.0.1: Address already in use"
    )
