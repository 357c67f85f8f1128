"""The environments' tables: a database made at schema 4 before deployments.settings existed is upgraded."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from graven import db


def test_a_schema_4_database_without_the_settings_column_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graven.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        db.meta.create(conn)
        for migrate in db.MIGRATIONS[:3]:
            migrate(conn)
        conn.execute(
            sa.text(
                "CREATE TABLE deployments (id INTEGER PRIMARY KEY, env VARCHAR(64) NOT NULL, "
                "digest VARCHAR(71) NOT NULL, kind VARCHAR(16) NOT NULL, source_env VARCHAR(64), "
                "previous_digest VARCHAR(71), "
                "actor TEXT NOT NULL, started_at VARCHAR(32) NOT NULL, finished_at VARCHAR(32), result "
                "VARCHAR(16) NOT NULL, health VARCHAR(16) NOT NULL, override BOOLEAN NOT NULL, reason TEXT, "
                "detail TEXT)"
            )
        )
        db.deploy_envs.create(conn)
        db.rejections.create(conn)
        conn.execute(db.meta.insert().values(key="schema_version", value="4"))
    engine.dispose()
    database = db.Database.open(url)
    try:
        assert database.schema_version() == db.SCHEMA_VERSION
        columns = {c["name"] for c in sa.inspect(database.engine).get_columns("deployments")}
        assert "settings" in columns
        with database.begin() as conn:
            conn.execute(
                db.deployments.insert().values(
                    env="staging",
                    digest="sha256:" + "a" * 64,
                    kind="deploy",
                    actor="me",
                    started_at="2026-01-01T00:00:00Z",
                    result="ok",
                    health="none",
                    override=False,
                    settings="{}",
                )
            )
    finally:
        database.close()


def test_a_fresh_database_has_every_environment_table(tmp_path: Path) -> None:
    database = db.Database.open(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        names = set(sa.inspect(database.engine).get_table_names())
        assert {"deploy_envs", "deployments", "rejections"} <= names
    finally:
        database.close()
