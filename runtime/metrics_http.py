"""The Prometheus endpoint of a long-running process: `GET /metrics` on a configured address.

prometheus_client's own HTTP server serves its default registry (every `pulse_*` metric of
the process, `bytewax_kafka_consumer_lag` in the dataflow, `process_*` and `python_*`)
from a daemon thread. Each process binds it itself, so that its address is a setting
(`PULSE_METRICS_HOST`, default 127.0.0.1) like every other listening port.
"""

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from pulse.errors import ConfigError

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves /metrics on `host:port` until `close`; a port that cannot be bound is a
    ConfigError naming the setting, raised here rather than lost in a thread."""

    def __init__(self, host: str, port: int) -> None:
        try:
            server, _thread = start_http_server(port, addr=host)
        except OSError as exc:  # taken, or an address this machine does not have
            reason = exc.strerror or str(exc)
            msg = f"PULSE_METRICS_PORT {port} cannot be bound on {host}: {reason}"
            raise ConfigError(msg) from None
        self._server: WSGIServer = server
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
