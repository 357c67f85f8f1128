"""One deployer per environment: ``flock(2)`` on ``PATH/.graven/lock``.

The kernel drops the lock when its holder dies, however it dies, so a killed deployer never blocks the
next one. The holder writes who it is (actor, pid, host, since) into the file so that a second
deployer can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from graven.errors import BackendError, PolicyError

__all__ = ["EnvLock", "LockHolder", "check_lock_path", "read_holder", "shared_lock"]


class LockHolder(dict[str, object]):
    """What a holder wrote into the lock file (actor, pid, host, since, env)."""

    def describe(self) -> str:
        """``alice@box (pid 123 on box, since 2026-...)``."""
        return (
            f"{self.get('actor', '?')} (pid {self.get('pid', '?')} on {self.get('host', '?')}, "
            f"since {self.get('since', '?')})"
        )


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file (it may be stale when nobody holds the lock)."""
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, ValueError):
        return None
    return LockHolder(doc) if isinstance(doc, dict) else None


class EnvLock:
    """An exclusive lock on one environment directory; use as a context manager."""

    def __init__(self, path: Path, *, env: str, actor: str, since: str) -> None:
        self.path = path
        self._info = {
            "env": env,
            "actor": actor,
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "since": since,
        }
        self._fd: int | None = None
        self._check_fd: int | None = None

    def acquire(self, *, wait: bool) -> None:
        """Take the lock; without ``wait`` fail at once (PolicyError) naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BackendError(f"cannot open the deploy lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another process"
            raise PolicyError(
                f"environment {self._info['env']} is being deployed by {who}; wait for it to finish, "
                "or pass --wait to queue behind it"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise BackendError(f"cannot lock {self.path}: {exc.strerror}") from None
        data = (json.dumps(self._info, sort_keys=True) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)
            raise BackendError(f"cannot write the deploy lock {self.path}: {exc.strerror}") from None
        self._fd = fd
        # Then the check lock, exclusively: drift checks in flight (they hold it shared, briefly) finish
        # first, and no check sees this deployer's work half-way.
        check = check_lock_path(self.path)
        try:
            check_fd = os.open(check, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(check_fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.release()
            raise BackendError(f"cannot lock {check}: {exc.strerror}") from None
        self._check_fd = check_fd

    def release(self) -> None:
        """Drop the locks (closing the descriptors releases them)."""
        if self._check_fd is not None:
            fd, self._check_fd = self._check_fd, None
            os.close(fd)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> EnvLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def check_lock_path(lock: Path) -> Path:
    """``PATH/.graven/lock.check`` beside the deploy lock ``PATH/.graven/lock``."""
    return lock.with_name(lock.name + ".check")


@contextmanager
def shared_lock(path: Path, *, env: str, wait: bool) -> Iterator[bool]:
    """Hold the environment's check lock (beside the deploy lock ``path``) *shared* while its release
    is observed (a drift check). A deployer or healer holds it exclusively while it works, after
    waiting for the checks in flight, so no check sees its work half-way (a heal's temporary files, a
    release being switched); checks do not exclude each other, and never make a deployer fail.

    Without ``wait``, a deployer at work raises PolicyError at once, naming it. Yields False when there
    is no lock file to take (never deployed here, or not readable by this user): the check then goes
    ahead without it. The file is opened read-only and never written.
    """
    try:
        fd = os.open(check_lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = read_holder(path)
            who = holder.describe() if holder else "another process"
            raise PolicyError(
                f"environment {env} is being changed by {who}; check again when it is done"
            ) from None
        yield True
    finally:
        os.close(fd)
