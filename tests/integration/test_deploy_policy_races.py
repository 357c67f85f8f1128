"""Policy and its records when something happens at the wrong moment: a deployer killed after its
switch, then a hold, or after an override's switch; a rejection right before the success is
recorded."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from graven.errors import PolicyError
from graven.home import Home
from graven.service import environments
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployOptions, deploy, rollback
from helpers_deploy import World


class _KillAt(NullReporter):
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _deploy_and_die(home: str, digest: str, env: str, root: str, opts: dict[str, object]) -> None:
    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched")) as ctx:
        deploy(ctx, digest, env, DeployOptions(root=root, **opts))  # type: ignore[arg-type]


def _killed_after_the_switch(world: World, digest: str, env: str, **opts: object) -> None:
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_deploy_and_die, args=(str(world.home), digest, env, str(world.root), opts))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live(env) == digest


def test_a_hold_after_a_deployer_was_killed_holds_what_is_live(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    _killed_after_the_switch(world, v2, "staging")
    held = environments.hold(world.ctx(), "staging", "freeze")
    assert held.digest == v2 == world.live("staging")
    status = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert status.live == status.held_digest == status.on_disk == v2
    with pytest.raises(PolicyError, match="staging is held on"):  # the hold keeps what is live
        world.deploy(v1, "staging")
    assert world.live("staging") == v2


def test_an_override_whose_deployer_was_killed_after_the_switch_is_logged_with_who_and_why(
    world: World,
) -> None:
    v1 = world.build()
    _killed_after_the_switch(world, v1, "prod", override=True, reason="staging is down")
    settler = world.ctx()
    actor = settler.audit.actor
    environments.hold(settler, "prod", "look at it")  # settles the dead deployer's row
    entries = [e for e, _ in world.ctx().audit.entries() if e.env == "prod"]
    deployed = [e for e in entries if e.event == "deploy"]
    assert [e.result for e in deployed] == ["interrupted"]
    assert f"started by {actor}: staging is down" in str(deployed[0].reason)
    overrides = [e for e in entries if e.event == "override"]
    assert [(e.artifact, e.result) for e in overrides] == [(v1, "interrupted")], entries
    assert overrides[0].reason == f"requires staging bypassed: staging is down (started by {actor})"
    history = environments.history(world.ctx(), "prod")
    assert [(h["result"], h["override"]) for h in history] == [("interrupted", True)]


def test_a_rejection_right_before_the_success_is_recorded_is_not_left_live(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    real = environments.rejection

    def then_rejected(conn: object, digest: str) -> str | None:
        found = real(conn, digest)  # type: ignore[arg-type]
        if digest == v2:  # another operator's reject lands right after this look
            environments.reject(world.ctx(), v2, "found a bug")
        return found

    monkeypatch.setattr("graven.service.deploy.rejection", then_rejected)
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1, result
    assert "rejected" in result.message
    assert world.live("staging") == v1
    status = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert status.live == v1 and not status.rejected


def test_a_rollback_rejected_right_before_its_success_is_recorded_fails_and_holds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    real = environments.rejection

    def then_rejected(conn: object, digest: str) -> str | None:
        found = real(conn, digest)  # type: ignore[arg-type]
        if digest == v1:
            environments.reject(world.ctx(), v1, "found a bug")
        return found

    monkeypatch.setattr("graven.service.deploy.rejection", then_rejected)
    result = rollback(world.ctx(), "staging", world.options())
    assert not result.ok and result.held, result
    assert "rejected during the rollback (found a bug)" in result.message
    history = environments.history(world.ctx(), "staging")
    assert (history[-1]["kind"], history[-1]["result"]) == ("rollback", "failed")
