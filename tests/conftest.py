"""Fixtures for tests that need the local stack (Kafka, PostgreSQL + TimescaleDB).

`make test` starts the stack and exports PULSE_KAFKA_BOOTSTRAP and PULSE_PG_DSN. Each
test session gets its own database, each test its own topics.
"""

import dataclasses
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pulse.settings import CommonSettings
from runtime.topics import ensure_topics
from tests.kafka import delete_topics
from tests.scratch import create_database, drop_database

STACK_TIERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in STACK_TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    admin_dsn: str  # the stack's own database; tests create theirs beside it


@dataclass(frozen=True)
class Topics:
    raw: str
    late: str
    dlq: str
    notifications: str
    shed: str = ""


@pytest.fixture(scope="session")
def stack() -> Stack:
    defaults = CommonSettings()
    bootstrap = os.environ.get("PULSE_KAFKA_BOOTSTRAP", defaults.kafka_bootstrap)
    dsn = os.environ.get("PULSE_PG_DSN", defaults.pg_dsn.get_secret_value())
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"TimescaleDB is not reachable ({exc}); start the stack with `make up`")
    return Stack(bootstrap, dsn)


@pytest.fixture(scope="session")
def database(stack: Stack) -> Iterator[str]:
    """A fresh, migrated database for this test session; dropped afterwards."""
    name, dsn = create_database(stack.admin_dsn, "pulse_test")
    yield dsn
    drop_database(stack.admin_dsn, name)


@pytest.fixture
def topics(stack: Stack) -> Iterator[Topics]:
    """Unique raw/late/dlq/notifications/shed topics for one test; deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    names = Topics(
        f"{prefix}.raw",
        f"{prefix}.late",
        f"{prefix}.dlq",
        f"{prefix}.notifications",
        f"{prefix}.shed",
    )
    ensure_topics(
        stack.kafka_bootstrap,
        [names.raw, names.late, names.dlq, names.notifications, names.shed],
        partitions=3,
    )
    yield names
    delete_topics(stack.kafka_bootstrap, [t for t in dataclasses.astuple(names) if t])
