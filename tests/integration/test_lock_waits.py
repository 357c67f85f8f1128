"""A command that queues behind another one's lock says so before it waits, naming whom it waits for.

Two graven processes on one environment: a CI job's `deploy --wait` behind another deployment (whose
health checks may take minutes), cron's `graven drift` behind a deployer or a heal. Each of them used
to block in ``flock(2)`` without a word: no way to tell a queued command from a hung one. Here the
test holds the lock itself (as a deployer does) and runs the waiting command as a real process; the
lock is released only once the waiter has said what it waits for, so nothing depends on timing (the
deadline only keeps a broken waiter from hanging the suite).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock, shared_lock
from helpers_deploy import World

_DEADLINE = 60.0  # seconds a waiter may take to say that it waits (it says so at once)


def _waiting_line(proc: subprocess.Popen[bytes], needle: str) -> str:
    """The first line of ``proc``'s stderr that holds ``needle`` (read while the lock is still held);
    fails when the process ends or the deadline passes first."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    end = time.monotonic() + _DEADLINE
    buffer = b""
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], end - time.monotonic())
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
        for line in buffer.decode(errors="replace").splitlines():
            if needle in line:
                return line
    raise AssertionError(f"no {needle!r} on stderr while waiting (exit {proc.poll()}): {buffer!r}")


def _graven(world: World, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GRAVEN_HOME=str(world.home), GRAVEN_DEPLOY_ROOT=str(world.root))
    env.pop("GRAVEN_DB_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "graven", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # read raw from its descriptor (select)
    )


def _finish(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(_DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _hold(lock: str, ready: Any, done: Any) -> None:
    """Hold the environment's locks as a deployer does, from ``ready`` until ``done`` is set."""
    with EnvLock(Path(lock), env="staging", actor="alice@ci", since="2026-01-01T00:00:00Z") as holder:
        holder.acquire(wait=False)
        ready.set()
        done.wait(_DEADLINE)


def test_deploy_wait_says_which_deployer_it_queues_behind(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    layout = EnvLayout(world.env_dir("staging"))
    # another process holds it (this one is the waiter's parent: a hook's command, refused at once)
    fork = multiprocessing.get_context("fork")
    ready, done = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold, args=(str(layout.lock), ready, done))
    holder.start()
    try:
        assert ready.wait(_DEADLINE)
        proc = _graven(world, "deploy", "--wait", v2, "staging")
        line = _waiting_line(proc, "waiting")
        assert line.startswith("graven: warning: "), line
        assert f"alice@ci (pid {holder.pid}" in line and "staging" in line, line
        assert world.live("staging") == v1  # it waits: nothing changed yet
    finally:
        done.set()
        holder.join(_DEADLINE)
    assert _finish(proc) == 0
    assert world.live("staging") == v2


def test_drift_says_which_deployer_it_waits_for(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    layout = EnvLayout(world.env_dir("staging"))
    for args in (("drift",), ("drift", "--full")):
        holder = EnvLock(layout.lock, env="staging", actor="bob@deploy", since="2026-01-01T00:00:00Z")
        holder.acquire(wait=False)  # the deploy lock and the check lock, as a deployer holds them
        try:
            proc = _graven(world, *args)
            line = _waiting_line(proc, "waiting")
            assert line.startswith("graven: warning: "), line
            assert f"bob@deploy (pid {os.getpid()}" in line and "staging" in line, line
        finally:
            holder.release()
        assert _finish(proc) == 0, args


def _released_on_warning(
    holder: EnvLock, wait: Callable[[Callable[[str], None]], None]
) -> tuple[list[str], bool]:
    """Run ``wait(warn)`` in a thread while ``holder`` is held; ``warn`` records the message and releases
    the holder. What was said, and whether the waiter got through."""
    said: list[str] = []

    def warn(message: str) -> None:
        said.append(message)
        holder.release()

    waiter = threading.Thread(target=wait, args=(warn,), daemon=True)
    waiter.start()
    waiter.join(_DEADLINE)
    done = not waiter.is_alive()
    holder.release()  # a waiter that said nothing is let through: the thread ends
    waiter.join(_DEADLINE)
    return said, done


def test_the_locks_say_whom_they_wait_for_before_waiting(tmp_path: Path) -> None:
    lock = tmp_path / ".graven" / "lock"
    holder = EnvLock(lock, env="staging", actor="carol@box", since="2026-01-01T00:00:00Z")
    holder.acquire(wait=False)

    def deployer(warn: Callable[[str], None]) -> None:
        with EnvLock(lock, env="staging", actor="me", since="now", warn=warn) as waiting:
            waiting.acquire(wait=True)

    said, done = _released_on_warning(holder, deployer)
    assert done and len(said) == 1, said
    assert "environment staging is being deployed by carol@box" in said[0] and "waiting" in said[0]

    holder.acquire(wait=False)

    def checker(warn: Callable[[str], None]) -> None:
        with shared_lock(lock, env="staging", wait=True, warn=warn) as held:
            assert held

    said, done = _released_on_warning(holder, checker)
    assert done and len(said) == 1, said
    assert "environment staging is being changed by carol@box" in said[0] and "waiting" in said[0]
