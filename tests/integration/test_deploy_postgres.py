"""Environments with the metadata in PostgreSQL (GRAVEN_DB_URL): deploy, promote, roll back, status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_deploy import env_toml, make_world, tree_problems
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


def _fresh_database(postgres_url: str, name: str) -> str:
    """A new, empty database on the module's server (another test's home is in postgres_url's)."""
    import psycopg

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def test_a_hook_whose_output_holds_a_nul_byte_is_recorded_as_failed(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database review: a health check whose last line held a NUL byte (binary output: a curl of a
    compressed page) failed the deployment's record on PostgreSQL, whose text refuses NUL: the failure
    was never recorded (the row stayed pending) and the command ended with a database error."""
    nul_health = "printf 'broken\\000output'; exit 3"
    envs = {"staging": {"path": "staging", "health": nul_health, "health_interval": 0, "health_retries": 0}}
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    monkeypatch.setenv("GRAVEN_DB_URL", _fresh_database(postgres_url, "graven_nul"))
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(world.root))
    try:
        v1 = world.build()
        code, _, err = run_cli(capsys, "deploy", v1, "staging")
        assert code == 1 and "failed (exit 3: broken\\x00output)" in err, err
        assert "database error" not in err
        code, out, _ = run_cli(capsys, "history", "staging", "--json")
        (row,) = json.loads(out)
        assert row["result"] == "failed" and row["detail"].endswith("exit 3: broken\\x00output")
        assert run_cli(capsys, "log", "verify")[0] == 0
    finally:
        world.close()


def test_a_database_lost_while_the_hooks_ran_says_what_is_live_and_that_its_hooks_did_not_run(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL review: the server went away while a deployment's activate hook ran (a restart, a
    failover). The deployment was switched back to the previous release, whose own hooks could not run
    again (its settings are read from the database), and the failure could not be recorded; the command
    said only "database error: ... run this command again", not that the new release's activate had run
    and the old one was back without its own."""
    import subprocess

    import psycopg

    name = "graven_lost"
    url = _fresh_database(postgres_url, name)
    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    psql = Path(
        subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    )
    host, port = server.rsplit("@", 1)[1].split(":")
    cut_off = (
        f"{psql / 'psql'} -q -h {host} -p {port} -U postgres -d postgres"
        f" -c 'ALTER DATABASE {name} ALLOW_CONNECTIONS false'"
        f" -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'\" >/dev/null"
    )
    envs = {"staging": {"path": "staging", "activate": "true", "health": "true", "health_interval": 0}}
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(world.root))
    try:
        v1 = world.build()
        assert run_cli(capsys, "deploy", v1, "staging")[0] == 0
        envs["staging"]["activate"] = cut_off
        v2 = world.version(2, env_toml("app", envs))
        code, out, err = run_cli(capsys, "deploy", v2, "staging")
        assert code == 1 and err.startswith("graven: error: ") and err.count("\n") == 1, err
        assert world.live("staging") == v1
        assert f"switched back to {v1[7:19]}" in err, err
        assert "its activate and health not run" in err, err
        assert "could not be recorded either" in err and err.count("is not currently accepting") == 1, err
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        code, out, _ = run_cli(capsys, "status", "--json")
        assert code == 0 and json.loads(out)[0]["live"] == v1
        code, out, _ = run_cli(capsys, "deploy", v1, "staging")  # settles the pending row
        code, out, _ = run_cli(capsys, "history", "staging", "--json")
        assert [row["result"] for row in json.loads(out)] == ["ok", "interrupted", "ok"]
        assert run_cli(capsys, "log", "verify")[0] == 0
    finally:
        world.close()
