"""Deployments after a review: nothing half-switched is ever left live, rollbacks walk back through
history and settle what a killed deployer left, environments cannot share a directory, and policy
cannot be weakened by rebuilding an old commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.errors import InputError
from graven.service import environments
from helpers_deploy import World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    yield made
    made.close()


def kinds(world: World, env: str = "staging") -> list[tuple[str, str]]:
    return [(h["kind"], h["result"]) for h in environments.history(world.ctx(), env)]


def test_something_in_the_way_of_the_config_link_is_refused_before_anything_changes(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    config = world.env_dir("staging") / "config"
    config.unlink()
    config.mkdir()
    (config / "x").write_text("runtime data\n")
    v2 = world.version(2)
    with pytest.raises(InputError, match="not the symlink graven manages"):
        world.deploy(v2, "staging")
    assert world.live("staging") == v1
    assert kinds(world) == [("deploy", "ok")]  # nothing pending, nothing half-done
    assert (config / "x").read_text() == "runtime data\n"


def _raise(exc: BaseException) -> Any:
    def run(*_args: object, **_kwargs: object) -> None:
        raise exc

    return run


def test_an_error_after_the_switch_switches_back(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    monkeypatch.setattr("graven.service.deploy.run_health", _raise(OSError("no such health checker")))
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1, result
    assert "no such health checker" in result.message and "switched back" in result.message
    assert world.live("staging") == v1
    assert (world.env_dir("staging") / "config").read_text().startswith("port = 8001")
    assert kinds(world) == [("deploy", "ok"), ("deploy", "failed"), ("auto-rollback", "ok")]


def test_ctrl_c_during_the_health_check_switches_back_then_stops(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    monkeypatch.setattr("graven.service.deploy.run_health", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        world.deploy(v2, "staging")
    assert world.live("staging") == v1
    history = environments.history(world.ctx(), "staging")
    assert [(h["kind"], h["result"]) for h in history] == [
        ("deploy", "ok"),
        ("deploy", "failed"),
        ("auto-rollback", "ok"),
    ]
    assert "interrupted" in str(history[1]["detail"])
