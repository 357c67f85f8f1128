"""`graven watch --heal` and an environment's check lock (PATH/.graven/lock.check) held by another
process: a `graven drift` that hangs (on a dead NFS mount, say) or anyone with the deployer's rights
holding the file. The heal takes the deploy lock, then the check lock exclusively; it waited for the
check lock without bound, in the watcher's one loop: no other environment was checked, alerted or
exported meanwhile, the deploy lock stayed held (deployments refused as "being deployed"), and SIGTERM
could not end it (the signal only sets the stop, and the kernel's flock is retried). The watcher's heal
now waits :data:`HEAL_LOCK_WAIT` seconds at most (then it fails, backed off as any failed heal), and
not at all once the watcher is stopping."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_drift_watch import Watcher, tamper, wait_for

from graven.deploy.lock import EnvLock
from graven.drift.watch import WatchOptions
from graven.errors import CheckLockBusyError
from graven.service.drift_watch import HEAL_LOCK_WAIT
from helpers_deploy import World


@contextmanager
def check_lock_held(world: World, env: str) -> Iterator[None]:
    """``env``'s check lock held shared by another open file (as a running `graven drift` holds it)."""
    fd = os.open(world.env_dir(env) / ".graven" / "lock.check", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def heal_lines(watcher: Watcher) -> list[dict[str, object]]:
    return [d for d in map(json.loads, watcher.lines) if d["type"] == "heal"]


def test_a_held_check_lock_fails_the_heal_in_bounded_time_and_the_watcher_stops(world: World) -> None:
    assert world.deploy(world.build(), "staging").ok
    with check_lock_held(world, "staging"):
        watcher = Watcher(world, WatchOptions(as_json=True, heal=True, interval=3600))
        try:
            assert wait_for(lambda: watcher.checks() >= 1)
            tamper(world, b"# drift\n")
            assert wait_for(lambda: bool(heal_lines(watcher)), timeout=HEAL_LOCK_WAIT + 15), watcher.warnings
            (failed,) = heal_lines(watcher)[:1]
            assert failed["ok"] is False and "lock.check" in str(failed["error"])
            assert float(str(failed["retry_in"])) >= 3600  # backed off as a failed heal, not retried at once
            # the deploy lock is not kept: a deployment may go on (it waits for the check lock itself)
            path = world.env_dir("staging") / ".graven" / "lock"
            lock = EnvLock(path, env="staging", actor="t", since="", check_wait=0.1)
            with pytest.raises(CheckLockBusyError, match=r"lock\.check"):
                lock.acquire(wait=False)
            started = time.monotonic()
            watcher.stop.set()
            watcher.thread.join(timeout=15)
            assert not watcher.thread.is_alive(), "the watcher did not stop"
            assert time.monotonic() - started < 10
        finally:
            watcher.stop.set()
    watcher.close()


def test_the_check_lock_wait_ends_at_the_stop(world: World) -> None:
    assert world.deploy(world.build(), "staging").ok
    stop = threading.Event()
    path: Path = world.env_dir("staging") / ".graven" / "lock"
    with check_lock_held(world, "staging"):
        lock = EnvLock(path, env="staging", actor="t", since="", check_wait=3600.0, stop=stop)
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(CheckLockBusyError):
                lock.acquire(wait=False)
        finally:
            timer.cancel()
            timer.join()
        assert time.monotonic() - started < 10
    # nothing of it stays held: the deploy lock and the check lock are free again
    again = EnvLock(path, env="staging", actor="t", since="")
    again.acquire(wait=False)
    again.release()
