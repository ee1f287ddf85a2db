"""Shared helpers for benchmarks: stack settings, fresh topics and databases, subprocesses."""

import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.settings import CommonSettings, load
from runtime.topics import ensure_topics
from tests.ports import free_port
from tests.scratch import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


def stack() -> tuple[str, str]:
    s = load(CommonSettings)
    return s.kafka_bootstrap, s.pg_dsn.get_secret_value()


def fresh_topics(bootstrap: str, partitions: int = 4) -> dict[str, str]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    names = {
        "raw": f"{prefix}.raw",
        "late": f"{prefix}.late",
        "dlq": f"{prefix}.dlq",
        "notifications": f"{prefix}.notifications",
        "shed": f"{prefix}.shed",
    }
    ensure_topics(bootstrap, list(names.values()), partitions)
    return names


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    name, dsn = create_database(admin_dsn, "pulse_bench")
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, name)


def synthetic_events(
    n: int,
    campaigns: int = 50,
    seed: int = 1,
    first: int = 0,
    total: int | None = None,
    *,
    age_ms: int = 0,
) -> list[pb.RawEvent]:
    """Events `first..first+n` of `total` spread evenly over the last hour, a little shuffled
    (never late at the default 10 s lateness); `age_ms` older still."""
    rng = random.Random(seed)
    total = total or n
    start = int(time.time() * 1000) - 3_700_000 - age_ms
    types = ["impression"] * 16 + ["click"] * 3 + ["conversion"]
    return [
        pb.RawEvent(
            campaign_id=f"campaign-{rng.randrange(campaigns):03d}",
            event_type=rng.choice(types),
            timestamp=start + i * 3_600_000 // total + rng.randrange(2000),
            event_id=f"bench-{seed}-{i}",
            value=rng.randrange(400) / 8,
            dimensions={"user_id": f"user-{rng.randrange(100_000)}"},
        )
        for i in range(first, first + n)
    ]


def with_new_ids(events: list[pb.RawEvent]) -> list[pb.RawEvent]:
    """Copies with event ids never sent before: the edge and the dataflow count repeated
    ids as retries, so every measured call needs its own."""
    run = uuid.uuid4().hex[:12]
    out = []
    for i, event in enumerate(events):
        copy = pb.RawEvent()
        copy.CopyFrom(event)
        copy.event_id = f"{run}-{i}"
        out.append(copy)
    return out


@contextmanager
def pulse_process(
    command: str, env: dict[str, str], workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / f"{command}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", command],
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class PeakRss:
    """Polls a process's peak resident memory (VmHWM) until it exits."""

    def __init__(self, pid: int) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                text = self._status.read_text()
            except OSError:
                return  # the process is gone
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.1)

    def join(self) -> None:
        self._thread.join(timeout=5)


@dataclass(frozen=True, slots=True)
class FlowRun:
    """One `pulse flow` run to the end of its topic."""

    wall_s: float
    cpu_s: float  # of the flow process (and its threads)
    peak_rss: int  # bytes
    rows: int  # written to event_metrics
    slice_rows: int = 0  # written to event_metrics_by_dimensions


def run_flow(
    bootstrap: str,
    admin_dsn: str,
    topics: dict[str, str],
    expect: int,
    extra_env: dict[str, str] | None = None,
    *,
    processes: int = 1,
) -> FlowRun:
    """Run `pulse flow` (not tailing; `processes` of a cluster) over `topics` into a fresh
    database; check that it counted `expect` events. Peak RSS: the largest process's."""
    with fresh_database(admin_dsn) as dsn, tempfile.TemporaryDirectory() as tmp:
        env = {
            "PULSE_KAFKA_BOOTSTRAP": bootstrap,
            "PULSE_PG_DSN": dsn,
            "PULSE_TOPIC_RAW": topics["raw"],
            "PULSE_TOPIC_LATE": topics["late"],
            "PULSE_TOPIC_DLQ": topics["dlq"],
            "PULSE_TOPIC_SHED": topics["shed"],
            "PULSE_TOPIC_NOTIFICATIONS": topics["notifications"],
            "PULSE_TAIL": "false",
            "PULSE_MAX_CAMPAIGNS_PER_DAY": "0",  # every event counted: nothing shed
            **(extra_env or {}),
        }
        ports: set[int] = set()
        while len(ports) < 3 * processes:  # none bound yet: each must differ from the rest
            ports.add(free_port())
        cluster, metrics, health = (sorted(ports)[i::3] for i in range(3))
        addresses = ";".join(f"127.0.0.1:{port}" for port in cluster)
        started = time.perf_counter()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with ExitStack() as running:
            procs = []
            for i in range(processes):
                own = {"PULSE_METRICS_PORT": str(metrics[i]), "PULSE_HEALTH_PORT": str(health[i])}
                if processes > 1:
                    own |= {"PULSE_CLUSTER_ADDRESSES": addresses, "PULSE_PROCESS_ID": str(i)}
                workdir = Path(tmp) / f"p{i}"
                procs.append(running.enter_context(pulse_process("flow", env | own, workdir)))
            peaks = [PeakRss(proc.pid) for proc in procs]
            codes = [proc.wait(timeout=7200) for proc in procs]
            for peak in peaks:
                peak.join()
        elapsed = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        for i, code in enumerate(codes):
            if code != 0:
                log = (Path(tmp) / f"p{i}" / "flow.log").read_text()[-4000:]
                raise SystemExit(f"pulse flow (process {i}) exited with {code}: {log}")
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(event_count), 0), count(*) FROM event_metrics"
            ).fetchone()
            sets = conn.execute(
                "SELECT dimension_set, sum(event_count), count(*)"
                " FROM event_metrics_by_dimensions GROUP BY 1"
            ).fetchall()
        counted, rows = (int(row[0]), int(row[1])) if row else (0, 0)
        if counted != expect:
            raise SystemExit(f"counted {counted} events, expected {expect}")
        for name, in_set, _rows in sets:
            if in_set != expect:
                raise SystemExit(f"dimension set {name}: {in_set} events, expected {expect}")
        slice_rows = sum(int(r[2]) for r in sets)
        peak_kb = max(peak.peak_kb for peak in peaks)
        return FlowRun(elapsed, cpu, peak_kb * 1024, rows, slice_rows)
