"""Hooks and policy after a review: an override is logged whatever the deployment's outcome and only
when it bypassed something; credentials a hook prints never reach the records; a signal that killed a
hook is named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.deploy.hook_result import HookResult, redact_secrets
from graven.service import environments
from helpers_deploy import World, env_toml, make_world, staging_prod

FAIL = "echo bad; exit 3"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    yield made
    made.close()


def _log(world: World) -> list[dict[str, object]]:
    return [entry.to_json() for entry, _ in world.ctx().audit.entries()]


def test_an_override_is_logged_when_the_deployment_then_fails(world: World) -> None:
    bad = world.version(2, env_toml("app", staging_prod(health=FAIL)))
    result = world.deploy(bad, "prod", override=True, reason="hotfix")  # never healthy in staging
    assert not result.ok
    overrides = [e for e in _log(world) if e["event"] == "override"]
    assert len(overrides) == 1 and "requires staging bypassed: hotfix" in str(overrides[0]["reason"])


def test_an_override_that_bypassed_nothing_is_no_override(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(v1, "prod", override=True, reason="just in case").ok
    assert [h["override"] for h in environments.history(world.ctx(), "prod")] == [False]
    assert [e for e in _log(world) if e["event"] == "override"] == []


def test_credentials_a_failing_hook_prints_are_not_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "tok-4f9a2c")
    monkeypatch.setenv("SOME_DB_URL", "postgresql://app:s3cretpw@db/app")
    noisy = 'echo "token=$SERVICE_TOKEN url=$SOME_DB_URL pw=s3cretpw"; exit 1'
    digest = world.version(2, env_toml("app", staging_prod(health=noisy)))
    result = world.deploy(digest, "staging")
    assert not result.ok
    recorded = json.dumps(environments.history(world.ctx(), "staging")) + json.dumps(_log(world))
    assert "tok-4f9a2c" not in recorded and "s3cretpw" not in recorded
    assert "token=*** url=*** pw=***" in recorded


def test_redaction_and_signals_in_one_line() -> None:
    env = {"A_PASSWORD": "hunter22", "PATH": "/usr/bin", "X_DB_URL": "postgresql://u:pw1234@h/d"}
    assert redact_secrets("pw hunter22 at /usr/bin, pw1234", env) == "pw *** at /usr/bin, ***"
    assert HookResult("x", -9, "", 1.0).describe() == "killed by signal 9"
    assert HookResult("x", 3, "oops\n", 1.0).describe() == "exit 3: oops"
