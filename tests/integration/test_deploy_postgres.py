"""Environments with the metadata in PostgreSQL (GRAVEN_DB_URL): deploy, promote, roll back, status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_deploy import make_world, tree_problems
from helpers_repo import run_cli

pytestmark = pytest.mark.services


def test_deploy_promote_rollback_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = make_world(tmp_path, monkeypatch)
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(world.root))
    try:
        v1 = world.build()
        v2 = world.version(2)
        assert run_cli(capsys, "deploy", v1, "staging")[0] == 0
        assert run_cli(capsys, "promote", "staging", "prod")[0] == 0
        assert run_cli(capsys, "deploy", v2, "staging")[0] == 0
        code, out, _ = run_cli(capsys, "rollback", "staging", "--reason", "pg", "--json")
        assert code == 0 and json.loads(out)["digest"] == v1
        code, _, err = run_cli(capsys, "deploy", v2, "staging")
        assert code == 1 and "held" in err
        code, out, _ = run_cli(capsys, "status", "--json")
        status = {s["env"]: s for s in json.loads(out)}
        assert status["staging"]["live"] == v1 and status["staging"]["held"] is True
        assert status["prod"]["live"] == v1 and status["prod"]["health"] == "healthy"
        code, out, _ = run_cli(capsys, "history", "staging", "--json")
        assert [h["kind"] for h in json.loads(out)] == ["deploy", "deploy", "rollback"]
        assert tree_problems(world.root / "prod" / "current", world.manifest(v1)) == []
        assert run_cli(capsys, "log", "verify")[0] == 0
        assert not (world.home / "graven.db").exists()
    finally:
        world.close()
