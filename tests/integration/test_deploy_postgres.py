"""Environments with the metadata in PostgreSQL (GRAVEN_DB_URL): deploy, promote, roll back, status."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_deploy import make_world, tree_problems
from helpers_repo import run_cli
from helpers_services import PostgresServer

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="graven-pg-deploy-"))
    root.chmod(0o755)  # the server runs as the postgres user
    server = PostgresServer(root / "cluster")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


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
