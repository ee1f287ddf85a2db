"""A real Prometheus server scrapes the edge and the dataflow while a known load goes through.

The counters Prometheus stores must equal, exactly, what was sent: events received,
accepted, rejected by reason, and folded into windows by the dataflow. Both /metrics
endpoints must also pass `promtool check metrics`.
"""

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline, running
from tests.ports import free_port

BATCHES_METHOD = "analytics.v1.AnalyticsService/IngestEventBatches"
INSTALL_HINT = "install it with `make install` (scripts/stack.sh install)"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: {INSTALL_HINT}")
    return path


def fetch(url: str, timeout_s: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        body: bytes = reply.read()
    return body.decode()


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    """Call `probe` until it returns something truthy; fail naming the last error."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
            last = result
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    pytest.fail(f"{what} not ready after {timeout_s} s (last: {last!r})")


def prometheus_config(path: Path, edge: str, flow: str) -> None:
    path.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pulse-ingest\n"
        "    static_configs:\n"
        f"      - targets: ['{edge}']\n"
        "  - job_name: pulse-flow\n"
        "    static_configs:\n"
        f"      - targets: ['{flow}']\n"
    )


@contextmanager
def prometheus(workdir: Path, edge: str, flow: str) -> Iterator[str]:
    """A Prometheus server of our own (own port, config and storage); its base URL."""
    config = workdir / "prometheus.yml"
    prometheus_config(config, edge, flow)
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}: {log_path.read_text()}")
            return "Ready" in fetch(f"{url}/-/ready", timeout_s=1)

        wait_for("prometheus", ready, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    """An instant query: (labels, value) per series."""
    qs = urllib.parse.urlencode({"query": promql})
    reply = json.loads(fetch(f"{url}/api/v1/query?{qs}"))
    if reply.get("status") != "success":
        raise ValueError(f"query {promql!r} failed: {reply}")
    return [(r["metric"], float(r["value"][1])) for r in reply["data"]["result"]]


def scalar(url: str, promql: str) -> float | None:
    result = query(url, promql)
    return result[0][1] if result else None


def promtool_check(text: str, what: str) -> None:
    done = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, f"promtool check metrics on {what}: {output}"


def event(campaign: str, ts: int, i: int, **overrides: Any) -> pb.RawEvent:
    fields: dict[str, Any] = {
        "campaign_id": campaign,
        "event_type": ("impression", "click")[i % 2],
        "event_id": f"ev-{i}",
        "timestamp": ts,
        "value": 0.5,
        "dimensions": {"user_id": f"u{i % 37}"},
    }
    fields.update(overrides)
    return pb.RawEvent(**fields)


def test_prometheus_scrapes_exact_counts_from_edge_and_flow(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    binary("prometheus")
    binary("promtool")
    # An hour of idle timeout: the heartbeats close nothing during the test.
    env = {"PULSE_IDLE_TIMEOUT_SECONDS": "3600"}
    with running(stack, database, topics, tmp_path, env) as pipeline:
        check_pipeline_metrics(pipeline, tmp_path)


def check_pipeline_metrics(pipeline: Pipeline, workdir: Path) -> None:
    edge = f"127.0.0.1:{pipeline.metrics_ports['serve']}"
    flow = f"127.0.0.1:{pipeline.metrics_ports['flow']}"
    wait_for("the edge's /metrics", lambda: fetch(f"http://{edge}/metrics"), 30)
    wait_for("the dataflow's /metrics", lambda: fetch(f"http://{flow}/metrics"), 60)

    # The load: every valid event within one second, five seconds ago, so none is late
    # (the allowed lateness is 10 s) whatever minute boundary lies near.
    now = int(time.time() * 1000)
    base = now - 5_000
    campaigns = [f"prom-{now}-{c}" for c in range(5)]
    first = [event(campaigns[i % 5], base + i % 1000, i) for i in range(1200)]
    second = [event(campaigns[i % 5], base + i % 1000, i) for i in range(1200, 1500)]
    invalid = {
        "missing_field": [event("", base, 9000 + i) for i in range(3)],
        "timestamp_in_future": [event(campaigns[0], now + 3_600_000, 9100 + i) for i in range(2)],
        "invalid_value": [event(campaigns[1], base, 9200 + i, value=math.nan) for i in range(4)],
        "field_too_long": [event(campaigns[2], base, 9300, event_type="x" * 65)],
    }
    bad = [e for events in invalid.values() for e in events]
    for k, e in enumerate(bad):  # spread among the valid ones
        first.insert(100 * k + 7, e)
    valid_count = 1500
    sent = valid_count + len(bad)

    async def send() -> tuple[pb.IngestResponse, pb.IngestResponse]:
        async with PulseClient(pipeline.target, batch_size=200) as client:
            return await client.ingest(first), await client.ingest(second)

    with prometheus(workdir, edge, flow) as url:
        one, two = asyncio.run(send())
        assert (one.accepted + two.accepted, one.dropped + two.dropped) == (valid_count, len(bad))

        expected: dict[str, float | None] = {
            "pulse_ingest_events_received_total": sent,
            "pulse_ingest_events_accepted_total": valid_count,
            **{
                f'pulse_ingest_events_rejected_total{{reason="{reason}"}}': len(events)
                for reason, events in invalid.items()
            },
            f'sum(pulse_ingest_events_rejected_total{{reason!~"{"|".join(invalid)}"}})': 0,
            f'pulse_ingest_grpc_handled_total{{method="{BATCHES_METHOD}",code="OK"}}': 2,
            "pulse_flow_events_processed_total": valid_count,
            "pulse_flow_late_events_total": 0,
            "pulse_flow_dead_letters_total": 0,
        }
        seen: dict[str, float | None] = {}

        def counters_match() -> bool:
            seen.update({promql: scalar(url, promql) for promql in expected})
            return seen == expected

        deadline = time.monotonic() + 90
        while not counters_match() and time.monotonic() < deadline:
            time.sleep(0.5)
        mismatched = {q: (seen[q], want) for q, want in expected.items() if seen[q] != want}
        assert not mismatched, f"Prometheus values (seen, expected) that differ: {mismatched}"

        # Both jobs are up; per-partition series exist: our watermark lag and Bytewax's
        # consumer lag (librdkafka statistics, in the Python registry the dataflow serves).
        assert {labels["job"]: v for labels, v in query(url, "up")} == {
            "pulse-ingest": 1.0,
            "pulse-flow": 1.0,
        }

        def per_partition(promql: str) -> dict[str, float]:
            return {labels["partition"]: v for labels, v in query(url, promql)}

        partitions = {"0", "1", "2"}

        def watermark_lags() -> dict[str, float] | None:
            got = per_partition("pulse_flow_watermark_lag_seconds")
            return got if set(got) == partitions else None

        lags = wait_for("watermark lag of every partition", watermark_lags, 30)
        assert all(0 <= lag < 3600 + 120 for lag in lags.values()), lags
        wait_for(
            "bytewax_kafka_consumer_lag of every partition",
            lambda: (
                set(per_partition(f'bytewax_kafka_consumer_lag{{topic="{pipeline.topics.raw}"}}'))
                == partitions
            ),
            30,
        )
        # The dataflow's own server, not Bytewax's API (off by default): its process
        # metrics, our sink's rows, and none of Bytewax's Rust-side step metrics.
        assert scalar(url, 'process_resident_memory_bytes{job="pulse-flow"}')
        assert scalar(url, 'sum(pulse_flow_sink_rows_written_total{table="metrics"})')
        assert query(url, "bytewax_item_inp_count_total") == []
        assert scalar(url, 'sum(pulse_flow_sink_batch_duration_seconds_count{sink="timescale"})')

        # The raw text of both endpoints passes promtool's checks.
        promtool_check(fetch(f"http://{edge}/metrics"), f"the edge's /metrics ({edge})")
        promtool_check(fetch(f"http://{flow}/metrics"), f"the dataflow's /metrics ({flow})")
