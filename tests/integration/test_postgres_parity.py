"""The same pipeline on SQLite and on PostgreSQL gives the same answers: build, deploy, promote, roll
back, hold, drift, heal and the audit log, compared over their ``--json`` outputs (times, the log's
origin, key ids and the directories of each run put aside)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from helpers_deploy import make_world
from helpers_repo import run_cli

pytestmark = pytest.mark.services

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
_ORIGIN = re.compile(r"graven\.invalid/log/[0-9a-f-]{36}")
# what differs between any two runs: durations, random ids, and what hashes a time or a key's signature
_MASKED = frozenset(
    {"seconds", "invocation_id", "provenance", "envelope", "root", "leaf_hash", "proof", "checkpoint"}
)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "<masked>" if k in _MASKED and not isinstance(v, dict) else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def _fresh_database(postgres_url: str, name: str) -> str:
    import psycopg

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def _pipeline(
    base: Path, url: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[tuple[str, int, Any]]:
    """Every step's (command, exit code, parsed --json output), with what differs by nature masked."""
    base.mkdir()
    world = make_world(base, monkeypatch)
    if url is not None:
        monkeypatch.setenv("GRAVEN_DB_URL", url)
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(world.root))
    outputs: list[tuple[str, int, Any]] = []
    secrets: list[str] = []

    def step(*args: str) -> Any:
        code, out, _ = run_cli(capsys, *args, "--json")
        text = out
        for secret in secrets:
            text = text.replace(secret, "<secret>")
        text = text.replace(str(base), "<base>")
        text = _ORIGIN.sub("<origin>", _TIME.sub("<time>", text))
        try:
            parsed = _masked(json.loads(text)) if text.strip() else None
        except json.JSONDecodeError:  # a line per item
            parsed = [_masked(json.loads(line)) for line in text.splitlines()]
        outputs.append((" ".join(args).replace(str(base), "<base>"), code, parsed))
        return json.loads(out) if out.strip() and code == 0 else None

    try:
        keys = json.loads(run_cli(capsys, "keys", "list", "--json")[1])
        for key in keys["signing"]:  # whole, then as messages shorten it
            secrets.extend((str(key["keyid"]), str(key["keyid"])[:16]))
        v1 = step("build", "-C", str(world.repo))["digest"]
        world.commit({"app/version.txt": "version 2\n"})
        v2 = step("build", "-C", str(world.repo))["digest"]
        step("artifacts")
        step("show", v1)
        step("verify", v1)
        step("deploy", v1, "staging")
        step("promote", "staging", "prod")
        step("deploy", v2, "staging")
        step("rollback", "staging", "--reason", "parity")
        step("deploy", v2, "staging")  # held: refused
        step("unhold", "staging")
        step("deploy", v2, "staging")
        step("reject", v1, "--reason", "parity")
        step("status")
        step("history", "staging")
        step("history", "prod")
        step("drift")
        live = world.root / "prod" / "current" / "app" / "main.py"
        live.chmod(0o644)
        live.write_text("print('changed')\n")
        step("drift")
        step("heal", "prod")
        step("drift")
        step("log")
        step("log", "verify")
        step("log", "prove", "3")
    finally:
        world.close()
    return outputs


def test_the_pipeline_answers_the_same_on_postgres_as_on_sqlite(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    on_sqlite = _pipeline(tmp_path / "lite", None, monkeypatch, capsys)
    url = _fresh_database(postgres_url, "graven_parity")
    on_postgres = _pipeline(tmp_path / "pg", url, monkeypatch, capsys)
    assert [o[:2] for o in on_sqlite] == [o[:2] for o in on_postgres]
    assert [o[1] for o in on_sqlite] == [0] * 9 + [1] + [0] * 7 + [1] + [0] * 5  # the refusals, the drift
    for lite, pg in zip(on_sqlite, on_postgres, strict=True):
        assert lite == pg, lite[0]
