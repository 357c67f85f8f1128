"""The environment's lock files are the deployer's alone: ``flock(2)`` needs only read access, so
any local user who could open ``PATH/.graven/lock`` or ``lock.check`` could hold off every deploy
and heal (a review did it as an unprivileged user); a deploy that must wait for ``lock.check`` says
so, and a lock held by someone else is never blamed on the last deployer's stale record."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.deploy.layout import EnvLayout
from graven.deploy.lock import check_lock_path
from graven.errors import PolicyError
from graven.home import Home
from graven.service.context import Context
from graven.service.deploy import deploy
from helpers_deploy import World, make_world

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    yield made
    made.close()


@pytest.fixture
def holder() -> Iterator[Any]:
    """Start a process that flocks a file (read-only, as any user could) until the test ends."""
    started: list[subprocess.Popen[str]] = []

    def hold(path: Path, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path), mode], stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    yield hold
    for proc in started:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _modes(world: World) -> tuple[int, int]:
    lock = EnvLayout(world.env_dir("staging")).lock
    return stat.S_IMODE(lock.stat().st_mode), stat.S_IMODE(check_lock_path(lock).stat().st_mode)


def test_the_lock_files_are_0600_whatever_the_umask(world: World) -> None:
    digest = world.build()
    old = os.umask(0)
    try:
        assert world.deploy(digest, "staging").ok
    finally:
        os.umask(old)
    assert _modes(world) == (0o600, 0o600)


def test_lock_files_an_older_graven_made_0644_are_tightened(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    lock = EnvLayout(world.env_dir("staging")).lock
    for path in (lock, check_lock_path(lock)):
        path.chmod(0o644)
    assert world.deploy(world.version(2), "staging").ok
    assert _modes(world) == (0o600, 0o600)


def test_a_lock_held_by_another_process_is_not_blamed_on_the_last_deployer(world: World, holder: Any) -> None:
    """The record in the lock file is the last deployer's (here this very process, still alive); the
    flock is held by a process that never wrote one."""
    assert world.deploy(world.build(), "staging").ok
    holder(EnvLayout(world.env_dir("staging")).lock, "ex")
    with pytest.raises(PolicyError, match=r"being deployed by another process \(pid unknown\)") as raised:
        world.deploy(world.version(2), "staging")
    assert f"pid {os.getpid()}" not in str(raised.value)


class _Warnings:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        pass


def test_a_deploy_waiting_for_the_check_lock_says_for_whom(world: World, holder: Any) -> None:
    """A shared flock on lock.check (a drift check in flight, or anyone who could open the file) made
    the deployer wait in silence, for ever if it never ended."""
    assert world.deploy(world.build(), "staging").ok
    v2 = world.version(2)
    proc = holder(check_lock_path(EnvLayout(world.env_dir("staging")).lock), "sh")
    warnings = _Warnings()
    results: list[Any] = []
    ctx = Context(home=Home(root=world.home), reporter=warnings)
    world.contexts.append(ctx)
    waiter = threading.Thread(target=lambda: results.append(deploy(ctx, v2, "staging", world.options())))
    waiter.start()
    try:
        deadline = time.monotonic() + 20
        while not warnings.lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(warnings.lines) == 1, "the deployer waited without a word"
        assert "lock.check is held by pid" in warnings.lines[0] and str(proc.pid) in warnings.lines[0]
        assert not results
    finally:
        _stop(proc)
        waiter.join(60)
    assert results and results[0].ok


def test_a_check_refused_by_a_held_check_lock_does_not_blame_the_last_deployer(
    world: World, holder: Any
) -> None:
    from graven.deploy.lock import shared_lock

    assert world.deploy(world.build(), "staging").ok
    lock = EnvLayout(world.env_dir("staging")).lock
    holder(check_lock_path(lock), "ex")
    with (
        pytest.raises(PolicyError, match=r"being changed by another process \(pid unknown\)"),
        shared_lock(lock, env="staging", wait=False),
    ):
        pass
