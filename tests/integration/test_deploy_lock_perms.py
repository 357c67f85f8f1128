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
from helpers_deploy import World

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


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
    proc = holder(EnvLayout(world.env_dir("staging")).lock, "ex")
    # named by the pid /proc/locks shows (a review: "pid unknown" although the kernel knew it)
    with pytest.raises(PolicyError, match=rf"being deployed by another process \(pid {proc.pid}\)") as raised:
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
    proc = holder(check_lock_path(lock), "ex")
    with (
        pytest.raises(PolicyError, match=rf"being changed by another process \(pid {proc.pid}\)"),
        shared_lock(lock, env="staging", wait=False),
    ):
        pass


def test_flock_holders_match_the_device_as_well_as_the_inode(tmp_path: Path) -> None:
    """A review: /proc/locks was matched by inode alone, so a lock on another file system's file of the
    same inode number could make a live record look stale, or hide a holder."""
    from graven.deploy import lock as lock_module

    path = tmp_path / "f"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        here = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        elsewhere = f"{os.major(st.st_dev) + 1:02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        table = (
            f"1: FLOCK  ADVISORY  WRITE 4242 {here} 0 EOF\n2: FLOCK  ADVISORY  WRITE 4343 {elsewhere} 0 EOF\n"
        )
        real_open = open

        def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if file == "/proc/locks":
                import io

                return io.BytesIO(table.encode())
            return real_open(file, *args, **kwargs)

        import builtins

        original = builtins.open
        builtins.open = fake_open
        try:
            assert lock_module.flock_holders(fd) == {4242}
        finally:
            builtins.open = original
    finally:
        os.close(fd)


@pytest.mark.needs_root("a deployer in another PID namespace needs unshare")
def test_a_deployer_in_a_container_on_this_host_is_named(world: World) -> None:
    """A review: a deploy running in another PID namespace of this host (unshare -pf) was named
    "another process (pid unknown)"; 0.3.0 named it from its record."""
    import signal

    assert world.deploy(world.build(), "staging").ok
    lock = EnvLayout(world.env_dir("staging")).lock
    script = (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "holder = {'env': 'staging', 'actor': 'ci@box', 'pid': os.getpid(), 'host': os.uname().nodename,"
        " 'pidns': os.readlink('/proc/self/ns/pid'), 'since': '2026-11-27T00:00:00Z', 'start': 0}\n"
        "os.ftruncate(fd, 0); os.pwrite(fd, json.dumps(holder).encode(), 0)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        with pytest.raises(PolicyError, match=r"being deployed by ci@box") as raised:
            world.deploy(world.version(2), "staging")
        assert "pid unknown" not in str(raised.value)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
