"""``graven status`` as an operator reads it during an incident: why an environment is held, and a
deployment recorded pending (at work, or its deployer killed) told as such."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from graven.home import Home
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployOptions, deploy
from helpers_deploy import World


class _KillAt(NullReporter):
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _deploy_and_die(home: str, digest: str, env: str, root: str) -> None:
    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched")) as ctx:
        deploy(ctx, digest, env, DeployOptions(root=root))


def test_status_shows_why_an_environment_is_held(world: World, run_cli: Any) -> None:
    """The hold's reason is what the operator needs before unholding: the table shows it, not only
    --json."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    code, _, err = run_cli("hold", "staging", "--reason", "investigating INC-43")
    assert code == 0, err
    code, out, err = run_cli("status")
    assert code == 0, err
    assert "investigating INC-43" in out, out
    assert f"yes ({v1[7:19]}: investigating INC-43)" in out, out


def test_status_tells_a_pending_deployment_from_a_crash_to_settle(world: World, run_cli: Any) -> None:
    """Between a deployment's switch and its record (its hooks at work, or its deployer killed there),
    current points to its release: status says a deployment of it is pending, and does not tell the
    operator to redeploy or roll back over a deployment that may be at work; --json names it."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_and_die, args=(str(world.home), v2, "staging", str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    code, out, err = run_cli("status")
    assert code == 0, err
    assert "redeploy or roll back" not in err, err
    assert f"a deployment of {v2[7:19]} is pending" in err, err
    assert "`graven history staging`" in err, err
    code, out, err = run_cli("status", "--json")
    assert code == 0, err
    (staging,) = [e for e in json.loads(out) if e["env"] == "staging"]
    assert (staging["live"], staging["on_disk"], staging["pending"]) == (v1, v2, v2)
    (prod,) = [e for e in json.loads(out) if e["env"] == "prod"] or [None]
    assert prod is None
    # settled (hold takes the lock): nothing is pending any more
    code, _, err = run_cli("hold", "staging", "--reason", "look")
    assert code == 0, err
    code, out, err = run_cli("status", "--json")
    (staging,) = json.loads(out)
    assert (staging["live"], staging["pending"]) == (v2, None)


def test_status_says_when_current_cannot_be_read(
    world: World, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment directory this user may not search (a deployer's, status run as another user):
    PATH/current cannot be read, which status said was "not a link to a release" (`graven heal`
    points it back). It says it cannot be read, and how to read it; --json says why."""

    v1 = world.build()
    assert world.deploy(v1, "staging").ok

    def denied(real: Any) -> Any:  # as the kernel answers below a directory this user may not search
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).endswith("/current"):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "readlink", denied(os.readlink))
    monkeypatch.setattr(os, "lstat", denied(os.lstat))
    code, _, err = run_cli("status")
    assert code == 0, err
    assert "is not a link" not in err and "graven heal" not in err, err
    assert "/current cannot be read: permission denied" in err, err
    assert "search permission" in err, err
    code, out, err = run_cli("status", "--json")
    assert code == 0, err
    (staging,) = json.loads(out)
    assert staging["on_disk"] is None
    assert "permission denied" in staging["on_disk_error"], staging


def test_history_shows_when_an_interrupted_deployment_started_not_when_it_was_settled(
    world: World, run_cli: Any
) -> None:
    """A deployment whose deployer was killed is settled (result interrupted) by the next deployer,
    hold or rollback, maybe days later: its finished_at is that moment. The table's time column is
    when each deployment started (--json's started_at), for it as for every other row."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_and_die, args=(str(world.home), v2, "staging", str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    time.sleep(1.1)  # settled in another second than it started
    code, _, err = run_cli("hold", "staging", "--reason", "look")
    assert code == 0, err
    code, out, err = run_cli("history", "staging", "--json")
    assert code == 0, err
    rows = json.loads(out)
    interrupted = next(r for r in rows if r["result"] == "interrupted")
    assert interrupted["started_at"][:19] != interrupted["finished_at"][:19]
    code, out, err = run_cli("history", "staging")
    assert code == 0, err
    shown = {line.split()[0]: line for line in out.splitlines()[1:] if line.split()}
    for row in rows:
        assert row["started_at"][:19].replace("T", " ") in shown[str(row["id"])], out
    assert interrupted["finished_at"][:19].replace("T", " ") not in shown[str(interrupted["id"])], out
