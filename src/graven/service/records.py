"""Small database helpers shared by the use cases."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["insert_ignore"]


def insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[dict[str, object]]) -> None:
    """Insert rows, skipping those whose primary key exists (SQLite and PostgreSQL)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).on_conflict_do_nothing(), list(rows))
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).on_conflict_do_nothing(), list(rows))
    else:
        for row in rows:
            exists = conn.execute(
                sa.select(sa.literal(1))
                .select_from(table)
                .where(*(col == row[col.name] for col in table.primary_key.columns))
            ).first()
            if exists is None:
                conn.execute(table.insert().values(**row))
