"""What a deployment decided before it took the environment's lock is decided again once it holds it
(a review found each of these with two real processes and `--wait`): the lock is where another
deployer's changes become visible. Here the other deployer's work runs right before the lock is
taken, which is what waiting for it amounts to."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from graven.deploy.lock import EnvLock
from graven.errors import ConfigError, InputError, PolicyError
from graven.service import environments
from graven.service.deploy import promote, rollback
from graven.service.deploy_plan import plan_deploy
from helpers_deploy import World, env_toml, staging_prod
from helpers_repo import run_cli


def _while_waiting(monkeypatch: pytest.MonkeyPatch, env: str, action: Callable[[], object]) -> list[str]:
    """Run ``action`` once, the first time a deployment to ``env`` takes its lock, before it does."""
    real = EnvLock.acquire
    ran: list[str] = []

    def acquire(self: EnvLock, *, wait: bool) -> None:
        if self._info["env"] == env and not ran:
            ran.append(env)
            action()
        real(self, wait=wait)

    monkeypatch.setattr(EnvLock, "acquire", acquire)
    return ran


def test_an_environment_that_went_live_in_the_same_directory_while_waiting_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = world.version(1, env_toml("app", {"b": {"path": "shared"}}))
    da = world.version(2, env_toml("app", {"a": {"path": "shared"}}))
    ran = _while_waiting(monkeypatch, "a", lambda: world.deploy(db, "b"))
    with pytest.raises(ConfigError, match="is the directory of environment b"):
        world.deploy(da, "a")
    assert ran == ["a"]
    assert world.live("shared") == db  # b's release stays live: `a` changed nothing
    with world.ctx().db.connect() as conn:
        assert environments.load_state(conn, "a") is None


def test_a_promote_that_waited_refuses_what_from_rolled_away_from(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok  # live and healthy when the promote looks
    ran = _while_waiting(monkeypatch, "prod", lambda: rollback(world.ctx(), "staging", world.options()))
    with pytest.raises(PolicyError, match=r"staging changed while this promote waited: .* is live there now"):
        promote(world.ctx(), "staging", "prod", world.options())
    assert ran == ["prod"]
    assert world.live("staging") == v1
    assert world.live("prod") is None


def test_a_rollback_that_waited_goes_back_one_step_from_what_it_saw_or_refuses(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    v3 = world.version(3)
    ran = _while_waiting(monkeypatch, "staging", lambda: world.deploy(v3, "staging"))
    with pytest.raises(PolicyError, match="staging changed while this rollback waited"):
        rollback(world.ctx(), "staging", world.options())  # chose v1 (before v2): now two steps back
    assert ran == ["staging"]
    assert world.live("staging") == v3
    done = rollback(world.ctx(), "staging", world.options())  # run again: from v3, one step
    assert done.ok and done.digest == v2


def test_a_rollback_to_a_digest_rejected_while_it_ran_fails_and_says_so(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    from graven.service import deploy as deploy_module

    real = deploy_module.run_health

    def health_then_reject(*args: object, **kwargs: object) -> object:
        environments.reject(world.ctx(), v1, "bad schema migration")  # someone else, meanwhile
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(deploy_module, "run_health", health_then_reject)
    result = rollback(world.ctx(), "staging", world.options())
    assert not result.ok and result.held
    assert "was rejected during the rollback (bad schema migration)" in result.message
    assert "roll back --to another digest" in result.message
    assert world.live("staging") == v1  # a rollback is not switched back: it stays, held, and fails


def test_a_switch_back_to_a_release_that_fails_its_checks_too_says_so(world: World, tmp_path: Path) -> None:
    flag = tmp_path / "service-up"
    flag.write_text("")
    health = {"health": f"test -e {flag}", "health_interval": 0, "health_retries": 0}
    v1 = world.version(1, env_toml("app", {"staging": {"path": "staging", **health}}))
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    flag.unlink()  # something outside the artifact broke: the old release is unhealthy too
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1 and result.rolled_back_health == "failed"
    assert "which failed its checks too" in result.message and "fix the environment" in result.message
    flag.write_text("")
    v3 = world.version(3)
    good = world.deploy(v3, "staging")
    assert good.ok and good.rolled_back_health is None
    assert good.to_json()["rolled_back_health"] is None


def test_a_deploy_into_a_held_environment_reports_it_still_held(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    assert rollback(world.ctx(), "staging", world.options()).held
    again = world.deploy(v1, "staging")  # the held digest itself may be deployed again
    assert again.ok and again.held
    code, out, _err = run_cli(capsys, "deploy", v1, "staging", "--json", "--root", str(world.root))
    assert code == 0 and json.loads(out)["held"] is True


def test_a_plan_fails_where_the_deploy_does_and_memoizes_no_signature(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    signatures = world.home / "cache" / "signatures"
    before = sorted(p.name for p in signatures.rglob("*")) if signatures.exists() else []
    plan_deploy(world.ctx(), v2, "staging", world.options())
    after = sorted(p.name for p in signatures.rglob("*")) if signatures.exists() else []
    assert after == before
    config = world.env_dir("staging") / "config"
    config.unlink()
    config.write_text("edited by hand\n")
    with pytest.raises(InputError, match="not the symlink graven manages"):
        plan_deploy(world.ctx(), v2, "staging", world.options())
    with pytest.raises(InputError, match="not the symlink graven manages"):
        world.deploy(v2, "staging")


def test_staging_prod_is_unchanged_by_these_checks(world: World) -> None:
    # the recheck of a promote that did not wait changes nothing: it ships what staging runs
    v1 = world.version(1, env_toml("app", staging_prod()))
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).digest == v1
