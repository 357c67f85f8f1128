"""The environments' tables exist in a fresh database."""

from __future__ import annotations

from pathlib import Path

from graven import db


def test_a_fresh_database_has_every_environment_table(tmp_path: Path) -> None:
    database = db.Database.open(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        names = database.table_names()
        assert {"deploy_envs", "deployments", "rejections"} <= names
    finally:
        database.close()
