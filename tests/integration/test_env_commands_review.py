"""The environment commands (hold, retire, rollback, promote) after a review: what they settle and
where, and what they tell the operator to do next."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
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
    code, _, err = run_cli("promote", "staging", "prod", *root)  # settles the dead deployer's record
    assert code == 1, err
    assert "its deployer stopped before its health check was recorded" in err, err
    assert f"`graven deploy {v2[7:19]} staging`" in err, err
    code, _, err = run_cli("deploy", v2[7:19], "staging", *root)  # as it says
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


def _deploy_and_die_at(home: str, digest: str, env: str, root: str, stage: str) -> None:
    with Context(home=Home(root=Path(home)), reporter=_KillAt(stage)) as ctx:
        deploy(ctx, digest, env, DeployOptions(root=root))


def _deployer_killed_at(world: World, digest: str, env: str, stage: str) -> None:
    """Deploy ``digest`` to ``env`` in a forked process that SIGKILLs itself at ``stage``."""
    fork = multiprocessing.get_context("fork")
    child = fork.Process(
        target=_deploy_and_die_at, args=(str(world.home), digest, env, str(world.root), stage)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL


def test_promote_settles_a_deployment_of_from_killed_before_its_switch(world: World, run_cli: Any) -> None:
    """A deployer of staging killed after recording its intent, before its switch, leaves a `pending`
    row: promote settles it (under staging's lock, as rollback does) and promotes what is live and
    healthy there, the release that never stopped being live, leaving no unsettled record behind."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    _deployer_killed_at(world, v2, "staging", "deploy:pending-recorded")
    assert world.live("staging") == v1
    code, _, err = run_cli("promote", "staging", "prod", "--root", world.root)
    assert code == 0, err
    assert world.live("prod") == v1
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["result"]) for h in history] == [(v1, "ok"), (v2, "interrupted")]


def _deploy_in_child(home: str, digest: str, root: str) -> None:
    with Context(home=Home(root=Path(home))) as ctx:
        result = deploy(ctx, digest, "staging", DeployOptions(root=root))
    os._exit(0 if result.ok else 1)


def test_promote_while_from_is_being_deployed_says_so(world: World, run_cli: Any, tmp_path: Path) -> None:
    """A deployer of staging at work (switched, its health check running) holds staging's lock: a
    promote from staging must say staging is being deployed (and queue with --wait), not report a
    directory that disagrees with the records and ask for a redeploy of staging."""
    started, go = tmp_path / "health-started", tmp_path / "health-go"
    health = f"touch {started}; while ! test -e {go}; do sleep 0.05; done"
    staging = {"path": "staging", "health": health, "health_interval": 0, "health_retries": 0}
    prod = {"path": "prod", "health_interval": 0, "requires": ["staging"]}
    toml = env_toml("app", {"staging": staging, "prod": prod})
    go.touch()
    v1 = world.version(1, toml)
    assert world.deploy(v1, "staging").ok
    go.unlink()
    started.unlink()
    v2 = world.version(2, toml)
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_deploy_in_child, args=(str(world.home), v2, str(world.root)))
    child.start()
    try:
        for _ in range(600):
            if started.exists():
                break
            time.sleep(0.05)
        assert started.exists(), "the staging deployment never reached its health check"
        code, _, err = run_cli("promote", "staging", "prod", "--root", world.root)
        assert code == 1, err
        assert "staging is being deployed by" in err and "--wait" in err, err
        assert "redeploy staging" not in err, err
        assert world.live("prod") is None
    finally:
        go.touch()
        child.join(60)
    assert child.exitcode == 0
    code, _, err = run_cli("promote", "staging", "prod", "--root", world.root)
    assert code == 0, err
    assert world.live("prod") == v2


def test_promote_from_a_first_deployment_whose_deployer_was_killed_says_what_is_live(
    world: World, run_cli: Any
) -> None:
    """staging's first deployment killed after its switch: nothing is recorded for staging but that
    `pending` row, yet its release is live. promote settles it and names it, rather than claiming
    staging was never deployed."""
    v1 = world.build()
    _killed_after_the_switch(world, v1, "staging", world.env_dir("staging"))
    code, _, err = run_cli("promote", "staging", "prod", "--root", world.root)
    assert code == 1, err
    assert "its deployer stopped before its health check was recorded" in err, err
    assert world.live("prod") is None


@pytest.mark.parametrize("stage", ["deploy:pending-recorded", "deploy:switched"])
def test_status_lists_an_environment_whose_first_deployment_is_pending(
    world: World, run_cli: Any, stage: str
) -> None:
    """staging's first deployer killed before or after its switch: its only record is a `pending`
    row (no deploy_envs row yet). status lists it all the same, with nothing live recorded, the
    pending digest, what PATH/current shows, and what to do; history shows the row."""
    import json

    v1 = world.build()
    _deployer_killed_at(world, v1, "staging", stage)
    switched = stage == "deploy:switched"
    on_disk = v1 if switched else None
    (status,) = environments.status(world.ctx())
    assert (status.env, status.live, status.pending, status.on_disk) == ("staging", None, v1, on_disk)
    assert status.path == str(world.env_dir("staging"))
    assert (status.held, status.rejected, status.on_disk_error) == (False, False, None)
    code, out, err = run_cli("status", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert set(row) == set(environments.EnvStatus._fields)
    assert (row["env"], row["live"], row["pending"], row["on_disk"]) == ("staging", None, v1, on_disk)
    code, out, err = run_cli("status")
    assert code == 0, err
    assert "staging" in out and "no environments yet" not in out, out
    assert f"a deployment of {v1[7:19]} is pending since " in err, err
    assert f"`graven deploy {v1[7:19]} staging`" in err, err
    code, out, err = run_cli("history", "staging")
    assert code == 0, err
    assert "pending" in out and v1[7:19] in out, out
    code, _, err = run_cli("deploy", v1[7:19], "staging", "--root", world.root)  # as status says
    assert code == 0, err
    (status,) = environments.status(world.ctx())
    assert (status.live, status.pending, status.pending_since, status.on_disk) == (v1, None, None, v1)
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["result"]) for h in history] == [(v1, "interrupted"), (v1, "ok")]


@pytest.mark.parametrize("stage", ["deploy:pending-recorded", "deploy:switched"])
def test_rollback_settles_a_first_deployment_whose_deployer_was_killed(
    world: World, run_cli: Any, stage: str
) -> None:
    """staging's only record is its first deployment, `pending`, its deployer killed before or after
    its switch: rollback settles it (as deploy and promote do) rather than claiming staging was never
    deployed, then says truthfully what is live and that there is nothing earlier to go to."""
    v1 = world.build()
    _deployer_killed_at(world, v1, "staging", stage)
    switched = stage == "deploy:switched"
    code, _, err = run_cli("rollback", "staging", "--root", world.root)
    assert code == 2, err
    assert "never been deployed" not in err, err
    assert "no earlier release to roll back to" in err, err
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["result"]) for h in history] == [(v1, "interrupted")]
    (status,) = environments.status(world.ctx())
    assert (status.live, status.pending, status.held) == (v1 if switched else None, None, False)
    assert f"`graven deploy {v1[7:19]} staging`" in err, err
    if switched:  # live, its health never checked
        assert "its deployer stopped before its health check was recorded" in err, err
    else:  # nothing ever went live: no --to DIGEST to name
        assert "nothing was ever live in it" in err and "--to" not in err, err
    assert world.live("staging") == (v1 if switched else None)


def test_status_reads_a_moved_environment_where_its_pending_deployment_is(world: World, run_cli: Any) -> None:
    """staging, nothing live at its recorded directory, is deployed to another one (graven.toml moved
    it) by a deployer killed after its switch: status shows the directory that pending deployment
    names and what its `current` shows (where hold, retire, rollback and deploy settle it), not the
    old directory, where nothing is, which read as a deployment that never switched."""
    import json

    v2, path = _moved_after_a_failed_first_deployment(world)
    (status,) = environments.status(world.ctx())
    assert (status.live, status.pending, status.path, status.on_disk) == (None, v2, str(path), v2)
    code, out, err = run_cli("status", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["path"], row["on_disk"], row["pending"]) == (str(path), v2, v2)
    code, _, err = run_cli("hold", "staging", "--reason", "look at it")  # settled there: the same place
    assert code == 0, err
    (status,) = environments.status(world.ctx())
    assert (status.live, status.pending, status.path, status.on_disk) == (v2, None, str(path), v2)
