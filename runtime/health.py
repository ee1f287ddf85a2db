"""Health endpoints of a long-running process: dependency checks and a tiny HTTP server.

`GET /healthz` (liveness) and `GET /readyz` (readiness: Kafka metadata and a PostgreSQL
`SELECT 1`, each bounded by a 2 s timeout, run concurrently, the result cached ~1 s).
The server runs in daemon threads: it never blocks the process's own work.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pulse.health import CachedChecks, CheckResult, respond, short_reason

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
CACHE_S = 1.0
REQUEST_TIMEOUT_S = 10.0  # per socket read of a health request

Check = Callable[[], CheckResult]


class _MetadataClient(Protocol):
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


def _elapsed_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


def kafka_check(client: _MetadataClient, topic: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Kafka answers a metadata request for `topic` (which must exist) within the timeout.

    `client` is any confluent-kafka client (Producer, Consumer, AdminClient): the edge
    passes its producer, so the check uses the connections it produces on.
    """

    def check() -> CheckResult:
        start = time.monotonic()
        try:
            metadata = client.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            reason = error.str() if hasattr(error, "str") else str(error)
            return CheckResult.error(_elapsed_ms(start), f"metadata request failed: {reason}")
        found = metadata.topics.get(topic)
        if found is None:
            return CheckResult.error(_elapsed_ms(start), f"topic {topic} not found")
        if found.error is not None:
            return CheckResult.error(_elapsed_ms(start), f"topic {topic}: {found.error.str()}")
        return CheckResult.ok(_elapsed_ms(start))

    return check


def kafka_admin(bootstrap: str, security: Mapping[str, str] | None = None) -> AdminClient:
    """A long-lived admin client for `kafka_check` in processes without a producer
    (`security`: the librdkafka properties of `CommonSettings.kafka_security`)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": logging.getLogger("librdkafka"),
        **(security or {}),
    }
    return AdminClient(config)


def postgres_check(dsn: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """A new connection answers `SELECT 1` (connect and statement bounded by the timeout).

    The reason of a failure never contains the DSN's password.
    """
    password = urlsplit(dsn).password or ""
    connect_timeout = max(2, round(timeout_s))  # libpq's minimum is 2 s
    options = f"-c statement_timeout={int(timeout_s * 1000)}"

    def check() -> CheckResult:
        start = time.monotonic()
        try:
            with psycopg.connect(
                dsn, connect_timeout=connect_timeout, options=options, autocommit=True
            ) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            reason = short_reason(str(exc), (password,)) or type(exc).__name__
            return CheckResult.error(_elapsed_ms(start), reason)
        return CheckResult.ok(_elapsed_ms(start))

    return check


class ConcurrentChecks:
    """Runs named checks concurrently; a check still running after the deadline is an error."""

    def __init__(self, checks: Mapping[str, Check], deadline_s: float = CHECK_TIMEOUT_S + 0.5):
        self._checks = dict(checks)
        self._deadline_s = deadline_s
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, 2 * len(self._checks)), thread_name_prefix="health-check"
        )

    def __call__(self) -> dict[str, CheckResult]:
        start = time.monotonic()
        futures = {name: self._pool.submit(check) for name, check in self._checks.items()}
        results: dict[str, CheckResult] = {}
        for name, future in futures.items():
            remaining = max(self._deadline_s - (time.monotonic() - start), 0.0)
            try:
                results[name] = future.result(timeout=remaining)
            except FutureTimeout:
                results[name] = CheckResult.error(
                    _elapsed_ms(start), f"no answer within {self._deadline_s:.1f} s"
                )
            except Exception as exc:  # a bug in a check must not take the endpoint down
                results[name] = CheckResult.error(_elapsed_ms(start), f"check failed: {exc!r}")
        for name, result in results.items():
            if result.status != "ok":
                log.debug("readiness check %s failed: %s", name, result.reason)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Probes:
    """The answers of /healthz and /readyz: checks run concurrently, results cached.

    One instance serves the health server and the edge's HTTP gateway alike, so both
    give the same answers from the same cache. `answer` may block for up to the checks'
    deadline: call it from a thread in async code.
    """

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        started: float | None = None,
        cache_s: float = CACHE_S,
    ) -> None:
        self._started = time.monotonic() if started is None else started
        self._checks = ConcurrentChecks(checks)
        self._cached = CachedChecks(self._checks, time.monotonic, cache_s)

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body for `path`."""
        return respond(path, self.uptime_s(), self._cached)

    def close(self) -> None:
        self._checks.close()


class HealthServer:
    """Serves /healthz and /readyz on `host:port` from daemon threads.

    `checks` are the named readiness checks, or `Probes` already built over them (to
    share them with another listener).
    """

    def __init__(
        self,
        host: str,
        port: int,
        checks: Mapping[str, Check] | Probes,
        *,
        started: float | None = None,
        cache_s: float = CACHE_S,
    ) -> None:
        if isinstance(checks, Probes):
            self.probes = checks
        else:
            self.probes = Probes(checks, started=started, cache_s=cache_s)
        answer = self.probes.answer

        class Handler(BaseHTTPRequestHandler):
            server_version = "pulse-health"
            # A connection's socket reads time out: an idle or trickling client does not
            # keep a thread. (Request lines and headers are bounded by http.server.)
            timeout = REQUEST_TIMEOUT_S

            def _answer(self, body: bool) -> None:
                status, payload = answer(self.path)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def uptime_s(self) -> float:
        return self.probes.uptime_s()

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("health endpoints on http://%s:%d/healthz and /readyz", *self._address())
        return self

    def _address(self) -> tuple[str, int]:
        host = self._server.server_address[0]
        return (host if isinstance(host, str) else str(host)), self.port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.probes.close()
