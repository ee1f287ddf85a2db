"""Idempotent schema migrations: numbered SQL files applied once, in order, under a lock."""

import logging
from importlib import resources

import psycopg

from pulse.errors import SinkError

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every migrator of this schema.
_MIGRATION_LOCK_ID = 0x70756C7365  # "pulse"


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in version order."""
    found = []
    for entry in resources.files("sinks.sql").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(dsn: str) -> list[str]:
    """Create the TimescaleDB extension and apply pending migrations; return their names."""
    applied: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_ID,))
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                for version, name, sql in _migrations():
                    if version in done:
                        continue
                    with conn.transaction():
                        conn.execute(sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (version, name),
                        )
                    log.info("applied migration %s", name)
                    applied.append(name)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_ID,))
    except psycopg.Error as exc:
        raise SinkError(f"migration failed: {exc}") from exc
    return applied
