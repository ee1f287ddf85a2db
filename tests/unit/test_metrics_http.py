"""The /metrics server binds the configured address only, and serves the default registry."""

import socket
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
    with pytest.raises(ConfigError, match=f"^PULSE_METRICS_PORT {port} cannot be bound on 192.0.2.1: "):
        MetricsServer("192.0.2.1", port)
