"""Rows into a table by binary COPY into a session's staging table, then one merge.

The sink's most numerous rows (windows, rollups) go this way: psycopg's C row encoder
sends them, with no Python work per element (unlike `unnest()`ed array parameters), and
one `INSERT ... SELECT ... ON CONFLICT` merges them. The staging table is a temporary
table emptied at each commit, so the caller's transaction holds the whole write.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True, slots=True)
class Stage:
    """A staging table: its `CREATE TEMP TABLE IF NOT EXISTS ... ON COMMIT DELETE ROWS`,
    its name, and its columns' types as COPY sends them."""

    create: str
    name: str
    types: tuple[str, ...]

    @property
    def copy(self) -> sql.Composed:
        return sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(sql.Identifier(self.name))


def copy_and_merge(
    conn: psycopg.Connection[tuple[object, ...]],
    stage: Stage,
    rows: Iterable[tuple[object, ...]],
    merge: sql.Composed,
) -> None:
    """Create the staging table if need be, copy `rows` into it and run `merge`."""
    with conn.cursor() as cur:
        cur.execute(stage.create)
        with cur.copy(stage.copy) as copy:
            copy.set_types(stage.types)
            write = copy.write_row
            for row in rows:
                write(row)
        cur.execute(merge)
