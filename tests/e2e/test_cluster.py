"""`pulse flow` as a Bytewax cluster of processes, on loopback.

One log, written once: events of 30 campaigns over 6 partitions, with stragglers (some
correct their closed windows, some go to the late topic), retries of events already
counted, records no edge would write (dead letters), a click spike that fires and
resolves an alert, and a last heartbeat per partition that closes every window.

- 1, 2 and 3 processes read it to its end: the same rows, late records, dead letters
  and alert ids, and the rows equal an independent reference (quantile estimates within
  their rank error: a KLL sketch's compactions depend on how records were batched).
- A cluster of 2 is SIGKILLed in one process while the log is still being written: the
  other stops too, as Bytewax clusters do. Restarted from the recovery store, the
  cluster is then rescaled by stop and start to 3 processes and back to 2. The rows are
  still exact, and nothing went aside twice.
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psycopg
import pytest
from confluent_kafka import Producer

from protos.analytics.v1 import analytics_pb2 as pb
from pulse import sketches
from pulse.timeutil import datetime_to_ms
from runtime.topics import ensure_topics
from sinks.kafka_outputs import from_notification
from tests.conftest import Stack
from tests.e2e.test_analytics import within_rank
from tests.kafka import consume_all, delete_topics
from tests.ports import free_port
from tests.reference import Bucket, Ev, windows_reference
from tests.scratch import create_database, drop_database

WINDOW_S, LATENESS_S, IDLE_S, CORRECTION_S, DEDUP_S = 10, 2, 5, 25, 3600
PARTITIONS = 6
CAMPAIGNS = [f"cl-{i:02d}" for i in range(30)]
SPIKE, THRESHOLD = CAMPAIGNS[0], 300
RULES = f"""
[[rule]]
name = "click-spike"
kind = "threshold"
campaign = "{SPIKE}"
event_type = "click"
metric = "count"
op = "above"
threshold = {THRESHOLD}
"""
COLUMNS = (
    "campaign_id, event_type, bucket, event_count, value_sum, value_min, value_max,"
    " first_event_at, last_event_at, late_events, closed, on_time_count, unique_users,"
    " value_p50, value_p95, value_p99"
)
Row = tuple[object, ...]


@dataclass(frozen=True)
class Outputs:
    raw: str
    late: str
    dlq: str
    notifications: str
    shed: str


def outputs(stack: Stack, raw: str) -> Outputs:
    tag = f"cl-{random.randrange(16**8):08x}"
    names = Outputs(raw, f"{tag}.late", f"{tag}.dlq", f"{tag}.notifications", f"{tag}.shed")
    side = [names.late, names.dlq, names.notifications, names.shed]
    ensure_topics(stack.kafka_bootstrap, side, PARTITIONS)  # side records keep their partition
    return names


class Cluster:
    """`pulse flow` processes of one cluster; each has its own recovery directory, as
    each pod of a StatefulSet has its own volume."""

    def __init__(self, stack: Stack, dsn: str, topics: Outputs, workdir: Path, tail: bool):
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = 0
        rules = workdir / "rules.toml"
        rules.write_text(RULES)
        self.env = {
            **os.environ,
            "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "PULSE_PG_DSN": dsn,
            "PULSE_TOPIC_RAW": topics.raw,
            "PULSE_TOPIC_LATE": topics.late,
            "PULSE_TOPIC_DLQ": topics.dlq,
            "PULSE_TOPIC_SHED": topics.shed,
            "PULSE_TOPIC_NOTIFICATIONS": topics.notifications,
            "PULSE_WINDOW_SECONDS": str(WINDOW_S),
            "PULSE_ALLOWED_LATENESS_SECONDS": str(LATENESS_S),
            "PULSE_IDLE_TIMEOUT_SECONDS": str(IDLE_S),
            "PULSE_CORRECTION_HORIZON_SECONDS": str(CORRECTION_S),
            "PULSE_DEDUP_HORIZON_SECONDS": str(DEDUP_S),
            "PULSE_ALERT_RULES": str(rules),
            "PULSE_TAIL": "true" if tail else "false",
            "PULSE_SNAPSHOT_INTERVAL_SECONDS": "0.5",
            "PULSE_KAFKA_BATCH_SIZE": "200",
            "PULSE_RECOVERY_PARTITIONS": "6",
            "PULSE_ROLLUP_REFRESH_INTERVAL_SECONDS": "1",
        }

    def start(self, processes: int) -> None:
        self.starts += 1
        ports: set[int] = set()
        while len(ports) < 3 * processes:  # none bound yet: each must differ from the rest
            ports.add(free_port())
        cluster, metrics, health = (sorted(ports)[i::3] for i in range(3))
        addresses = ";".join(f"127.0.0.1:{p}" for p in cluster)
        for i in range(processes):
            env = {
                **self.env,
                "PULSE_RECOVERY_DIR": str(self.workdir / f"recovery-{i}"),
                "PULSE_METRICS_PORT": str(metrics[i]),
                "PULSE_HEALTH_PORT": str(health[i]),
            }
            if processes > 1:
                env |= {"PULSE_CLUSTER_ADDRESSES": addresses, "PULSE_PROCESS_ID": str(i)}
            with (self.workdir / f"flow-{self.starts}-{i}.log").open("wb") as log:
                self.procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "cli", "flow"],
                    env=env,
                    stdout=log,
                    stderr=log,
                    cwd=self.workdir,
                )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log"))
        )

    def wait(self, timeout_s: float) -> dict[int, int]:
        """Every process's exit code, once all have exited."""
        deadline = time.monotonic() + timeout_s
        codes = {}
        for i, proc in self.procs.items():
            try:
                codes[i] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {i} still runs after {timeout_s} s\n{self.logs()}")
        self.procs.clear()
        return codes

    def kill(self, i: int) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        proc = self.procs.pop(i)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what still runs after 20 s, as Kubernetes does after a
        pod's grace period (a process still waiting for its peers to form the cluster
        does not see signals until they answer)."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()


@pytest.fixture
def raw_topic(stack: Stack) -> Iterator[str]:
    name = f"cl-{random.randrange(16**8):08x}.raw"
    ensure_topics(stack.kafka_bootstrap, [name], PARTITIONS)
    yield name
    delete_topics(stack.kafka_bootstrap, [name])


@pytest.fixture
def fresh_db(stack: Stack) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name, dsn = create_database(stack.admin_dsn, "pulse_cluster")
        made.append(name)
        return dsn

    yield make
    for name in made:
        drop_database(stack.admin_dsn, name)


class Log:
    """Writes the scenario's records, chunk by chunk, in event-time order."""

    def __init__(self, bootstrap: str, topic: str, seed: int) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.rng = random.Random(seed)
        self.t0 = (int(time.time()) - 900) // WINDOW_S * WINDOW_S * 1000
        self.sent: list[pb.RawEvent] = []
        self.junk = 0  # records no edge would write: each must be dead-lettered once

    def chunk(self, i: int, events: int) -> None:
        """Events of seconds [2i, 2i + 2) after the start, with stragglers, retries, junk,
        and the spike's clicks in chunks 10 to 14 (windows 2 and 3)."""
        rng = self.rng
        start = self.t0 + i * 2000
        for n in range(events):
            spike = 10 <= i < 15 and n < 150
            campaign = SPIKE if spike else rng.choice(CAMPAIGNS)
            ts = start + n * 2000 // events
            if not spike and rng.random() < 0.01:
                ts -= rng.randrange(15_000, 45_000)  # late: corrected or aside
            event = pb.RawEvent(
                campaign_id=campaign,
                event_type="click" if spike else rng.choice(["impression", "click"]),
                timestamp=ts,
                value=rng.randrange(0, 4000) / 8,
                event_id=f"{i}-{n}",
                dimensions={"user_id": f"u{rng.randrange(500)}"},
            )
            self.send(event)
            if self.sent and rng.random() < 0.005:  # a retry of an earlier event
                self.send(rng.choice(self.sent))
            self.sent.append(event)
        if i % 5 == 2:
            for j in range(3):
                self.producer.produce(self.topic, b"\x08\xff" * (j + 1), b"junk")
                self.junk += 1
        self.producer.flush(30)

    def send(self, event: pb.RawEvent) -> None:
        self.producer.produce(self.topic, event.SerializeToString(), event.campaign_id.encode())

    def close_windows(self) -> None:
        """A heartbeat on every partition, far past the last window."""
        beat = pb.Heartbeat(wall_time_ms=self.t0 + 600_000).SerializeToString()
        for p in range(PARTITIONS):
            self.producer.produce(self.topic, beat, b"", partition=p)
        self.producer.flush(30)


def read_log(bootstrap: str, topic: str) -> list[Ev]:
    out = []
    for p, offset, key, value, _headers in consume_all(bootstrap, topic, PARTITIONS):
        if key == b"":
            out.append(Ev(p, offset, heartbeat=pb.Heartbeat.FromString(value or b"").wall_time_ms))
        elif key != b"junk":
            e = pb.RawEvent.FromString(value or b"")
            user = e.dimensions.get("user_id", "")
            ev = (p, offset, e.campaign_id, e.event_type, e.timestamp, e.value, user)
            out.append(Ev(*ev, event_id=e.event_id))
    return out


def reference(bootstrap: str, topic: str) -> tuple[dict[tuple[str, str, int], Bucket], int]:
    buckets, late = windows_reference(
        read_log(bootstrap, topic),
        WINDOW_S * 1000,
        LATENESS_S * 1000,
        IDLE_S * 1000,
        CORRECTION_S * 1000,
        DEDUP_S,
    )
    return buckets, len(late)


def exact(b: Bucket) -> Row:
    return (b.count, b.total, b.low, b.high, b.first, b.last, b.late, True, b.on_time)


def stored(dsn: str) -> dict[tuple[str, str, int], Row]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT {COLUMNS} FROM event_metrics").fetchall()
    out = {}
    for c, t, bucket, *rest in rows:
        rest[4] = datetime_to_ms(rest[4]) if rest[4] else None
        rest[5] = datetime_to_ms(rest[5]) if rest[5] else None
        out[(c, t, datetime_to_ms(bucket))] = tuple(rest)
    return out


def aside(bootstrap: str, topic: str) -> list[bytes]:
    """The `pulse.source` header of every record of a late or dead-letter topic."""
    return sorted(dict(h)["pulse.source"] for *_r, h in consume_all(bootstrap, topic, PARTITIONS))


def alerts(bootstrap: str, topic: str, dsn: str) -> list[tuple[str, str, int]]:
    published = []
    for _p, _o, _key, value, _h in consume_all(bootstrap, topic, PARTITIONS):
        alert = from_notification(value or b"")
        published.append((alert.alert_id, alert.state.value, alert.window_start_ms))
    with psycopg.connect(dsn) as conn:
        table = conn.execute("SELECT alert_id, state, window_start FROM alerts").fetchall()
    assert sorted(published) == sorted((i, s, datetime_to_ms(w)) for i, s, w in table)
    return sorted(published, key=lambda a: (a[2], a[1]))


@dataclass(frozen=True)
class Results:
    rows: dict[tuple[str, str, int], Row]
    late: list[bytes]
    dead: list[bytes]
    alerts: list[tuple[str, str, int]]


def results(stack: Stack, topics: Outputs, dsn: str) -> Results:
    bootstrap = stack.kafka_bootstrap
    return Results(
        stored(dsn),
        aside(bootstrap, topics.late),
        aside(bootstrap, topics.dlq),
        alerts(bootstrap, topics.notifications, dsn),
    )


def expected_alerts(buckets: dict[tuple[str, str, int], Bucket]) -> list[tuple[str, int]]:
    """Fire at the first window above the threshold, resolve at the next one not above,
    on the counts at close."""
    windows = sorted(
        (s, b.on_time) for (c, t, s), b in buckets.items() if (c, t) == (SPIKE, "click")
    )
    out, firing = [], False
    for start, count in windows:
        if firing != (count > THRESHOLD):
            out.append(("resolved" if firing else "firing", start))
            firing = not firing
    return out


def check_exact(
    got: Results, buckets: dict[tuple[str, str, int], Bucket], late: int, junk: int
) -> None:
    assert {k: v[:9] for k, v in got.rows.items()} == {k: exact(b) for k, b in buckets.items()}
    assert len(got.late) == len(set(got.late)) == late > 0
    assert len(got.dead) == len(set(got.dead)) == junk
    want = expected_alerts(buckets)
    assert [s for s, _w in want] == ["firing", "resolved"]
    assert [(s, w) for _id, s, w in got.alerts] == want
    assert got.alerts[0][0] == got.alerts[1][0]  # the resolve names the incident it ends


def check_sketches(got: Results, buckets: dict[tuple[str, str, int], Bucket]) -> None:
    """Distinct users exactly or within the HLL bound; quantiles within KLL's rank error
    (their compactions depend on how records were batched, so runs may differ)."""
    for key, row in got.rows.items():
        b = buckets[key]
        if not b.count:
            continue
        users = cast(int, row[9])
        assert abs(users - len(b.users)) <= sketches.HLL_RELATIVE_ERROR * len(b.users)
        for q, estimate in zip(sketches.QUANTILES, row[10:13], strict=True):
            assert within_rank(b.values, q, cast(float | None, estimate)), (key, q)


def test_one_two_and_three_processes_give_the_same_exact_results(
    stack: Stack, raw_topic: str, fresh_db: Callable[[], str], tmp_path: Path
) -> None:
    log = Log(stack.kafka_bootstrap, raw_topic, seed=31)
    for i in range(40):
        log.chunk(i, 500)
    log.close_windows()
    buckets, late = reference(stack.kafka_bootstrap, raw_topic)
    runs = {}
    for processes in (1, 2, 3):
        topics = outputs(stack, raw_topic)
        dsn = fresh_db()
        workdir = tmp_path / f"run-{processes}"
        workdir.mkdir()
        cluster = Cluster(stack, dsn, topics, workdir, tail=False)
        try:
            cluster.start(processes)
            codes = cluster.wait(180)
        finally:
            cluster.close()
        assert set(codes.values()) == {0}, cluster.logs()
        runs[processes] = results(stack, topics, dsn)
        delete_topics(
            stack.kafka_bootstrap, [topics.late, topics.dlq, topics.notifications, topics.shed]
        )
    for processes, got in runs.items():
        check_exact(got, buckets, late, log.junk)
        check_sketches(got, buckets)
        assert (got.late, got.dead, got.alerts) == (runs[1].late, runs[1].dead, runs[1].alerts)
        assert {k: v[:10] for k, v in got.rows.items()} == {
            k: v[:10] for k, v in runs[1].rows.items()
        }, f"{processes} processes"
        print(f"{processes} process(es): {len(got.rows)} rows exact, {len(got.late)} late")


def wait_for(what: str, check: Callable[[], bool], cluster: Cluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not after {timeout_s} s\n{cluster.logs()}")
        time.sleep(0.2)


def test_a_killed_process_stops_the_cluster_and_restarts_and_rescales_exactly(
    stack: Stack, raw_topic: str, fresh_db: Callable[[], str], tmp_path: Path
) -> None:
    dsn = fresh_db()
    topics = outputs(stack, raw_topic)
    log = Log(stack.kafka_bootstrap, raw_topic, seed=32)
    cluster = Cluster(stack, dsn, topics, tmp_path, tail=True)

    def counted() -> int:
        return sum(cast(int, row[0]) for row in stored(dsn).values())

    def write(chunks: range) -> None:
        for i in chunks:
            log.chunk(i, 500)
            time.sleep(0.1)

    try:
        cluster.start(2)
        write(range(10))
        wait_for("rows", lambda: counted() > 0, cluster, 60)
        before = counted()
        cluster.kill(1)  # SIGKILL, while records are still coming
        survivor = cluster.procs[0]
        started = time.monotonic()
        try:
            code = survivor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still runs 60 s after process 1 died\n{cluster.logs()}")
        stopped_s = time.monotonic() - started
        assert code != 0
        cluster.procs.clear()
        write(range(10, 14))
        cluster.start(2)  # from the recovery store
        write(range(14, 20))
        wait_for("progress", lambda: counted() > before, cluster, 60)
        cluster.stop()
        cluster.start(3)  # rescaled: process 2 starts with an empty volume
        before = counted()
        write(range(20, 30))
        wait_for("progress of 3 processes", lambda: counted() > before, cluster, 60)
        cluster.stop()
        cluster.start(2)  # and back
        write(range(30, 40))
        log.close_windows()
        buckets, late = reference(stack.kafka_bootstrap, raw_topic)
        want = {k: exact(b) for k, b in buckets.items()}

        def same() -> bool:
            return {k: v[:9] for k, v in stored(dsn).items()} == want

        wait_for("exact rows", same, cluster, 120)
        time.sleep(2)  # the side records of the last batches
        got = results(stack, topics, dsn)
    finally:
        cluster.close()
        delete_topics(
            stack.kafka_bootstrap, [topics.late, topics.dlq, topics.notifications, topics.shed]
        )
    check_exact(got, buckets, late, log.junk)
    check_sketches(got, buckets)
    assert not list((tmp_path / "recovery-1").iterdir())  # process 0 holds the partitions
    print(
        f"process 0 stopped {stopped_s:.1f} s after process 1 was killed;"
        f" {len(got.rows)} rows exact"
    )
