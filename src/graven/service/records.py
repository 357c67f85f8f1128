"""Small database helpers shared by the use cases."""

from __future__ import annotations

from collections.abc import Sequence

from graven.db import Connection

__all__ = ["insert_ignore"]


def insert_ignore(conn: Connection, table: str, rows: Sequence[dict[str, object]]) -> None:
    """Insert rows, skipping those that collide with an existing key (SQLite and PostgreSQL).

    Every row must have the same columns; ``table`` and the column names are trusted identifiers
    from graven's own code, never user input.
    """
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f":{c}" for c in columns)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT DO NOTHING", rows)  # noqa: S608 (identifiers from code)
