"""Small database helpers shared by the use cases."""

from __future__ import annotations

from collections.abc import Sequence

from graven.db import Connection

__all__ = ["insert_ignore", "insert_rows"]


def insert_rows(
    conn: Connection, table: str, rows: Sequence[dict[str, object]], *, ignore_conflicts: bool = False
) -> None:
    """Insert rows in one statement (executemany); with ``ignore_conflicts``, those that collide with
    an existing key are skipped (SQLite and PostgreSQL), else such a row is an error.

    Every row must have the same columns; ``table`` and the column names are trusted identifiers
    from graven's own code, never user input.
    """
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f":{c}" for c in columns)
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({values}){conflict}", rows)  # noqa: S608 (identifiers from code)


def insert_ignore(conn: Connection, table: str, rows: Sequence[dict[str, object]]) -> None:
    """Insert rows, skipping those that collide with an existing key (:func:`insert_rows`)."""
    insert_rows(conn, table, rows, ignore_conflicts=True)
