"""The environment commands (hold, retire, rollback, promote) after a review: what they settle and
where, and what they tell the operator to do next."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from graven.home import Home
from graven.service import environments
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployOptions, deploy
from helpers_deploy import CONFIG_PARSES, World, env_toml


class _KillAt(NullReporter):
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _deploy_and_die(home: str, digest: str, env: str, root: str) -> None:
    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched")) as ctx:
        deploy(ctx, digest, env, DeployOptions(root=root))


def _killed_after_the_switch(world: World, digest: str, env: str, path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_deploy_and_die, args=(str(world.home), digest, env, str(world.root)))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert os.readlink(path / "current") == f"releases/{digest.removeprefix('sha256:')}"


def _moved_after_a_failed_first_deployment(world: World) -> tuple[str, Path]:
    """staging's first deployment failed its health check (recorded, nothing live, at srv/staging);
    graven.toml then moves it to srv/staging2, and the deployer of that is killed after its switch."""
    failing = {"path": "staging", "health": "false", "health_retries": 0, "health_interval": 0}
    v1 = world.version(1, env_toml("app", {"staging": failing}))
    assert not world.deploy(v1, "staging").ok
    assert environments.status(world.ctx())[0].live is None
    moved = {"path": "staging2", "health": CONFIG_PARSES, "config": "config/staging.toml"}
    v2 = world.version(2, env_toml("app", {"staging": moved}))
    _killed_after_the_switch(world, v2, "staging", world.root / "staging2")
    return v2, world.root / "staging2"


@pytest.mark.parametrize("command", ["hold", "retire", "rollback"])
def test_a_killed_deployment_at_a_new_path_is_settled_there(world: World, run_cli: Any, command: str) -> None:
    """The recorded row still names the old directory (nothing was live there, so the environment
    could move): the dead deployer's record is settled from the directory it switched, not from the
    old one, where nothing is live (which would record a live release as never live)."""
    v2, path = _moved_after_a_failed_first_deployment(world)
    root = ("--root", world.root) if command == "rollback" else ()
    code, _, err = run_cli(command, "staging", "--reason", "look at it", *root)
    if command == "rollback":  # settled first: v2 is live, and nothing was live before it
        assert code == 2 and "no earlier release to roll back to" in err, err
    else:
        assert code == 0, err
    settled = environments.history(world.ctx(), "staging")[-1]
    assert (settled["digest"], settled["result"]) == (v2, "interrupted")
    assert "the release is live" in settled["detail"]
    if command != "retire":
        (status,) = environments.status(world.ctx())
        held = v2 if command == "hold" else None
        assert (status.live, status.held_digest, status.path) == (v2, held, str(path))
    else:
        retired = [e for e, _ in world.ctx().audit.entries() if e.event == "retire"]
        assert retired[-1].artifact == v2 and str(path) in str(retired[-1].reason)


def test_promote_from_a_release_whose_deployer_was_killed_says_how_to_check_it(
    world: World, run_cli: Any
) -> None:
    """A deployer killed after its switch leaves its release live with health unknown once settled:
    promote refuses it (exit 1) and says what makes it promotable, a deploy of it that runs the
    health check, rather than an unexplained `fix staging`."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    _killed_after_the_switch(world, v2, "staging", world.env_dir("staging"))
    root = ("--root", world.root)
    code, _, err = run_cli("promote", "staging", "prod", *root)  # not settled yet: current moved
    assert code == 1 and "redeploy staging (or roll it back)" in err, err
    environments.hold(world.ctx(), "staging", "look at it")  # settles the dead deployer's record
    code, _, err = run_cli("promote", "staging", "prod", *root)
    assert code == 1, err
    assert "its deployer stopped before its health check was recorded" in err, err
    assert f"`graven deploy {v2[7:19]} staging`" in err, err
    code, _, err = run_cli("deploy", v2[7:19], "staging", *root)  # as it says (the hold is on v2)
    assert code == 0, err
    code, _, err = run_cli("promote", "staging", "prod", *root)
    assert code == 0, err
    assert world.live("prod") == v2


def test_retire_says_that_a_deploy_to_the_name_manages_it_again(world: World, run_cli: Any) -> None:
    """retire stops checks and listings, not deploys: its words must not claim graven will no longer
    deploy ENV, since the next deploy to the name makes it an environment again (its history goes on)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    code, out, err = run_cli("retire", "staging", "--reason", "decommissioned")
    assert code == 0, err
    assert "no longer deploys" not in out
    assert "a deploy to staging manages it again" in out, out
    assert environments.status(world.ctx()) == []
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    assert [(s.env, s.live) for s in environments.status(world.ctx())] == [("staging", v2)]
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["result"]) for h in history] == [(v1, "ok"), (v2, "ok")]
