"""Errors no retry can mend stop the dataflow: exit code 1 and one line saying why.

- A recovery store of another partition count than the settings name.
- A database whose schema is not this version's (never migrated): the first batch is
  refused, not retried.
"""

import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from bytewax.recovery import init_db_dir
from confluent_kafka import Producer
from psycopg import sql

from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.test_real_clients import now_ms
from tests.ports import free_port


def run_flow(stack: Stack, dsn: str, topics: Topics, extra: dict[str, str]) -> tuple[int, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PULSE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "PULSE_PG_DSN": dsn,
        "PULSE_TOPIC_RAW": topics.raw,
        "PULSE_TOPIC_LATE": topics.late,
        "PULSE_TOPIC_DLQ": topics.dlq,
        "PULSE_TOPIC_SHED": topics.shed,
        "PULSE_TOPIC_NOTIFICATIONS": topics.notifications,
        "PULSE_TAIL": "false",
        "PULSE_METRICS_PORT": str(free_port()),
        "PULSE_HEALTH_PORT": "0",
        **extra,
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "flow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


def stop_lines(stderr: str) -> list[str]:
    """The lines that say why the dataflow stopped (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if "dataflow stopped" in line]


def test_a_recovery_store_of_another_partition_count_stops_the_dataflow(
    stack: Stack, database: str, topics: Topics, tmp_path: Path
) -> None:
    store = tmp_path / "recovery"
    store.mkdir()
    init_db_dir(store, 2)
    code, stderr = run_flow(
        stack,
        database,
        topics,
        {"PULSE_RECOVERY_DIR": str(store), "PULSE_RECOVERY_PARTITIONS": "3"},
    )
    assert code == 1
    [line] = stop_lines(stderr)
    assert "has 2 partitions but PULSE_RECOVERY_PARTITIONS=3" in line


def test_a_database_of_another_schema_stops_the_dataflow_at_its_first_batch(
    stack: Stack, topics: Topics
) -> None:
    name = f"pulse_bare_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    bare = urlsplit(stack.admin_dsn)._replace(path=f"/{name}").geturl()
    try:
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        event = pb.RawEvent(
            campaign_id="c", event_type="click", timestamp=now_ms(), value=1.0, event_id="e1"
        )
        producer.produce(topics.raw, event.SerializeToString(), b"c")
        producer.flush(30)
        code, stderr = run_flow(stack, bare, topics, {})
    finally:
        with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    assert code == 1
    [line] = stop_lines(stderr)
    assert "TimescaleDB refused a batch" in line
    assert "UndefinedTable" in line
    assert "is the schema migrated (`pulse migrate`)?" in line
