"""Scratch databases, as tests and benchmarks use them: created migrated, then dropped."""

import time
import uuid
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from sinks.schema import migrate

DROP_ATTEMPTS = 240  # 2 minutes: a scheduler busy with a large database takes its time
DROP_RETRY_S = 0.5


def create_database(admin_dsn: str, prefix: str) -> tuple[str, str]:
    """A new database named `prefix` plus a random suffix, migrated: (name, its DSN)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    migrate(dsn)
    return name, dsn


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database, waiting out TimescaleDB's scheduler for it: that worker connects
    as the superuser, so `WITH (FORCE)` cannot end it and fails while it is connected.
    New connections are refused first, so the scheduler does not come back."""
    refuse = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(refuse)
    for attempt in range(DROP_ATTEMPTS):
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(drop)
        except psycopg.errors.InsufficientPrivilege:
            if attempt == DROP_ATTEMPTS - 1:
                raise
            time.sleep(DROP_RETRY_S)
        else:
            return
