"""One deployer per environment: ``flock(2)`` on ``PATH/.graven/lock``.

The kernel drops the lock when its holder dies, however it dies, so a killed deployer never blocks the
next one. The holder writes who it is (actor, pid, host, since) into the file so that a second
deployer can name it; a record is named only while its pid holds the lock (``/proc/locks``), never
when what holds it is someone else.

Both lock files are mode 0600 (whatever the umask; older ones are tightened when their owner opens
them): ``flock(2)`` needs nothing but read access, so a lock file other users could open would let any
of them block every deployment and heal of the environment.

graven never follows a symbolic link under ``PATH/.graven`` (:func:`open_dir_nofollow`): whoever can
write ``PATH`` could otherwise make graven, often running as root, create, truncate or overwrite a file
anywhere. A symlinked lock file (or ``PATH/.graven`` itself) is an error naming the path.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from graven.errors import BackendError, CheckLockBusyError, EnvironmentBusyError, GravenError, PolicyError
from graven.home import make_dirs
from graven.runtime import pid_runs

__all__ = [
    "EnvLock",
    "LockHolder",
    "busy_env",
    "check_lock_path",
    "flock_holders",
    "open_dir_nofollow",
    "read_holder",
    "shared_lock",
]


class LockHolder(dict[str, object]):
    """What a holder wrote into the lock file (actor, pid, host, since, env)."""

    def describe(self) -> str:
        """``alice@box (pid 123 on box, since 2026-...)``."""
        return (
            f"{self.get('actor', '?')} (pid {self.get('pid', '?')} on {self.get('host', '?')}, "
            f"since {self.get('since', '?')})"
        )


def busy_env(env: str, holder: LockHolder | None) -> str:
    """``environment ENV``, named as the lock's holder recorded it: environments at one PATH share its
    lock, and the one at work there may be another (``environment a (at the same path as b)``)."""
    held = holder.get("env") if holder is not None else None
    if isinstance(held, str) and held and held != env:
        return f"environment {held} (at the same path as {env})"
    return f"environment {env}"


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" where there is no /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def holds_from_above(holder: LockHolder) -> bool:
    """Whether the lock's holder is an ancestor of this process: the same pid, on the same host, in
    the same PID namespace (two containers sharing a deploy root number their processes apart)."""
    same_place = holder.get("host") == os.uname().nodename and holder.get("pidns", "") == _pid_namespace()
    return same_place and is_ancestor(holder.get("pid"))


def is_ancestor(pid: object) -> bool:
    """Whether ``pid`` (as a lock file records it) is this process's parent, grandparent, ... (read
    from /proc; False where there is none). A hook of a deployment runs below the deployer."""
    if not isinstance(pid, int) or pid <= 1:
        return False
    current = os.getppid()
    for _ in range(64):  # a process tree is never that deep; stops a loop on odd /proc data
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            with open(f"/proc/{current}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            current = int(fields[1])  # the field after the state is the parent's pid
        except (OSError, ValueError, IndexError):
            return False
    return False


# O_PATH (Linux): a directory handle for *at() calls, which needs no read permission on the directory
_DIR_OPEN = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = _DIR_OPEN | os.O_NOFOLLOW
_HOLDER_MAX = 1 << 16  # bytes of a lock file read to name its holder


def open_dir_nofollow(directory: Path, depth: int, *, create: bool = True) -> int:
    """Open ``directory`` (for ``dir_fd`` calls) without following a symbolic link in its last ``depth``
    components: graven's own directories below an environment's ``PATH`` (``.graven``: 1;
    ``.graven/drift``: 2). With ``create``, missing ones are made (and ``PATH`` with its parents); the
    part above them may be a symlink. OSError when one is a symlink (ENOTDIR) or cannot be opened."""
    parts = directory.parts
    if depth < 0 or depth > len(parts) - (1 if directory.is_absolute() else 0):
        raise ValueError(f"{directory} has no {depth} components to check")
    top = Path(*parts[: len(parts) - depth])  # Path() is "."
    if create:
        make_dirs(top)  # PATH and its parents: 0755 whatever the umask (the location check)
    fd = os.open(top, _DIR_OPEN)
    try:
        for name in parts[len(parts) - depth :]:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                child = _make_dir(name, fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_dir(name: str, dir_fd: int) -> int:
    """Make ``name`` in ``dir_fd`` mode 0755 whatever the umask (a service user reads the environment;
    under umask 000 another user could otherwise replace ``.graven/stat`` with a directory, and every
    deploy would fail) and open it as :func:`open_dir_nofollow` does. One made meanwhile by another
    process is opened as it is."""
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    # an O_PATH descriptor cannot fchmod: the new directory is ours, readable whatever the umask
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fchmod(child, 0o755 | (os.fstat(child).st_mode & stat.S_ISGID))  # a setgid parent's bit stays
    except BaseException:
        os.close(child)
        raise
    return child


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link (graven never writes through one)"
    if exc.errno == errno.ENOTDIR:
        return "a directory on its way is a symbolic link or not a directory (graven never follows one)"
    return exc.strerror or str(exc)


def _open_lock(name: str, dir_fd: int) -> int:
    """Open (create) one lock file in ``dir_fd``: a regular file of its own (it is truncated and written),
    never through a symlink nor a hard link to another file. Mode 0600 whatever the umask, and a 0644
    one an older graven made is tightened: whoever can open it can flock it, and so hold off every
    deployer (see the module's docstring)."""
    fd = os.open(
        name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_nlink != 1:
            raise OSError(errno.EINVAL, "it has other hard links (graven never writes through one)")
        if stat.S_IMODE(st.st_mode) != 0o600 and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)  # only the owner's own file: root never re-modes another user's
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_holder_fd(fd: int) -> LockHolder | None:
    try:
        doc = json.loads(os.pread(fd, _HOLDER_MAX, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return LockHolder(doc) if isinstance(doc, dict) else None


def flock_holders(fd: int) -> set[int] | None:
    """The pids (as this PID namespace numbers them) that ``/proc/locks`` shows holding a ``flock`` on
    the file open at ``fd``, waiters left out (none for a holder on another host of a network file
    system); None when that cannot be told (no /proc)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids: set[int] = set()
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (device major:minor in hex, inode);
        # a waiter's line has "->" after the number
        fields = line.split()
        if len(fields) < 6 or fields[1] != b"FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(b":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                pids.add(int(fields[4]))
        except (ValueError, IndexError):
            continue
    return pids


def _in_namespace(pids: set[int], pidns: object) -> bool:
    """Whether one of ``pids`` (as this namespace numbers them) runs in the PID namespace ``pidns``:
    a deployer in a container on this host holds the lock under another number there."""
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == pidns:
                return True
        except OSError:
            continue
    return False


def _current_holder(fd: int) -> LockHolder | None:
    """The holder recorded in the lock file open at ``fd`` when it is the one holding the lock now;
    None when the record is stale: the last deployer wrote it, and someone else (any process that
    could open the file) holds the flock, or nobody does. A record from another host is taken as it
    is unless a process here holds the lock; without /proc/locks, a record of a process that is gone
    from this host is stale."""
    holder = _read_holder_fd(fd)
    if holder is None:
        return None
    pid = holder.get("pid")
    this_host = holder.get("host") == os.uname().nodename
    here = this_host and holder.get("pidns", "") == _pid_namespace()
    holders = flock_holders(fd)
    if holders is None:  # no /proc/locks: a record of a process gone from here is stale
        return holder if not here or (isinstance(pid, int) and pid > 0 and pid_runs(pid)) else None
    if here:
        return holder if pid in holders else None
    if this_host and holders:  # another PID namespace of this host (a container)
        return holder if _in_namespace(holders, holder.get("pidns")) else None
    return None if holders else holder  # another host's holder is not listed here; a local one is


def unknown_holder(fd: int) -> str:
    """How to name the holder of the lock open at ``fd`` whose record is stale or unreadable: by the
    pids /proc/locks shows holding it, when it shows any."""
    return f"another process ({_pids(flock_holders(fd))})"


def _pids(pids: set[int] | None) -> str:
    """``pid 12, 34`` (as /proc/locks shows them), or ``pid unknown``."""
    return f"pid {', '.join(str(p) for p in sorted(pids))}" if pids else "pid unknown"


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in the lock file ``path`` while it holds the lock (:func:`_current_holder`);
    None when nobody does, when the record is stale or cannot be read (a user other than the
    deployer), and when ``path`` is a symlink or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _current_holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


class EnvLock:
    """An exclusive lock on one environment directory; use as a context manager."""

    def __init__(
        self,
        path: Path,
        *,
        env: str,
        actor: str,
        since: str,
        warn: Callable[[str], None] | None = None,
        check_wait: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``warn``: where to say what the lock waits for, when it has to (the command's reporter).
        ``check_wait``: the seconds the check lock is waited for at most (None: as long as it takes, a
        command the user can interrupt), and ``stop``: it is not waited for once that is set; either
        way CheckLockBusyError, nothing of the lock kept (``graven watch``: its one loop must not
        stall on a check that hangs, nor outlive its service manager's stop)."""
        self.path = path
        self.env = env
        self._warn = warn
        self.check_wait = check_wait
        self._stop = stop
        self._info = {
            "env": env,
            "actor": actor,
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "pidns": _pid_namespace(),
            "since": since,
        }
        self._fd: int | None = None
        self._check_fd: int | None = None

    def acquire(self, *, wait: bool) -> None:
        """Take the lock; without ``wait`` fail at once (PolicyError) naming the holder. BackendError
        when the lock file, or ``PATH/.graven``, is a symbolic link (never followed)."""
        try:
            dir_fd = open_dir_nofollow(self.path.parent, 1, create=True)
        except OSError as exc:
            raise self._refusal(f"cannot open the deploy lock {self.path}", self.path.parent, exc) from None
        try:
            self._acquire(dir_fd, wait=wait)
        finally:
            os.close(dir_fd)

    def _acquire(self, dir_fd: int, *, wait: bool) -> None:
        try:
            fd = _open_lock(self.path.name, dir_fd)
        except OSError as exc:
            raise self._refusal(f"cannot open the deploy lock {self.path}", self.path, exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _current_holder(fd)
                if not wait or (holder is not None and holds_from_above(holder)):
                    raise
                self._say_queued(holder, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)  # queue behind the holder
        except BlockingIOError:
            holder = _current_holder(fd)
            who = holder.describe() if holder else unknown_holder(fd)
            os.close(fd)
            if wait:  # the holder is an ancestor: a hook of that deployment would wait for itself
                raise PolicyError(
                    f"{busy_env(self.env, holder)} is being deployed by {who}, which runs this "
                    "command from one of its hooks: it would wait for itself; run it once that "
                    "deployment is over"
                ) from None
            raise EnvironmentBusyError(
                f"{busy_env(self.env, holder)} is being deployed by {who}; wait for it to finish, "
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
            check_fd = _open_lock(check.name, dir_fd)
        except OSError as exc:
            self.release()
            raise self._refusal(f"cannot open the check lock {check}", check, exc) from None
        try:
            try:
                fcntl.flock(check_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                self._say_waiting(check, check_fd)
                taken = self._wait_check(check_fd)
        except OSError as exc:
            os.close(check_fd)
            self.release()
            raise BackendError(f"cannot lock {check}: {exc.strerror}") from None
        if not taken:
            who = _pids(flock_holders(check_fd))
            os.close(check_fd)
            self.release()
            why = (
                "the stop came first"
                if self._stop is not None and self._stop.is_set()
                else (f"waited {self.check_wait:g} s")
            )
            raise CheckLockBusyError(
                f"the check lock of {self.env} ({check}) is held by {who} ({why}): drift checks in "
                "flight hold it briefly; one held longer is a check that hangs, or another process "
                "holding the file"
            )
        self._check_fd = check_fd

    def _refusal(self, what: str, tried: Path, exc: OSError) -> GravenError:
        """``what`` refused by ``exc`` at ``tried``: permission denied names its remedy (the user who
        deploys the environment, fscheck.not_writable); anything else is the disk's (BackendError)."""
        if exc.errno == errno.EACCES:
            from graven.deploy.fscheck import not_writable  # only when refused

            return not_writable(what, self.path.parent.parent, tried, exc)
        return BackendError(f"{what}: {_why(exc)}")

    def _wait_check(self, check_fd: int) -> bool:
        """Wait for the check lock open at ``check_fd``: as long as it takes without ``check_wait`` and
        ``stop``; else until it is taken (True), ``check_wait`` seconds passed or ``stop`` is set
        (False)."""
        if self.check_wait is None and self._stop is None:
            fcntl.flock(check_fd, fcntl.LOCK_EX)
            return True
        limit = self.check_wait if self.check_wait is not None else float("inf")
        deadline = time.monotonic() + limit
        while True:
            try:
                fcntl.flock(check_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause = min(left, _CHECK_POLL)
            if self._stop is not None:
                if self._stop.wait(pause):
                    return False
            else:
                time.sleep(pause)

    def _say_queued(self, holder: LockHolder | None, fd: int) -> None:
        """Say whom ``--wait`` queues behind (the lock open at ``fd`` is held by ``holder``, as
        recorded): a deployment's health checks may take minutes, and a silent wait looks hung."""
        if self._warn is None:
            return
        who = holder.describe() if holder else unknown_holder(fd)
        self._warn(
            f"{busy_env(self.env, holder)} is being deployed by {who}; waiting for it to finish "
            "(interrupt to give up)"
        )

    def _say_waiting(self, check: Path, check_fd: int) -> None:
        """Say what the check lock waits for: drift checks in flight hold it shared, briefly; a wait
        that does not end is someone else holding the file, and the message names whom to look for."""
        if self._warn is None:
            return
        who = _pids(flock_holders(check_fd))
        give_up = "interrupt to give up" if self.check_wait is None else f"at most {self.check_wait:g} s"
        self._warn(
            f"waiting for the drift checks in flight on {self._info['env']} to finish ({check} is held "
            f"by {who}); {give_up}"
        )

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


_CHECK_POLL = 0.05  # seconds between two tries of a check lock waited for with a bound or a stop


def check_lock_path(lock: Path) -> Path:
    """``PATH/.graven/lock.check`` beside the deploy lock ``PATH/.graven/lock``."""
    return lock.with_name(lock.name + ".check")


@contextmanager
def shared_lock(
    path: Path, *, env: str, wait: bool, warn: Callable[[str], None] | None = None
) -> Iterator[bool]:
    """Hold the environment's check lock (beside the deploy lock ``path``) *shared* while its release
    is observed (a drift check). A deployer or healer holds it exclusively while it works, after
    waiting for the checks in flight, so no check sees its work half-way (a heal's temporary files, a
    release being switched); checks do not exclude each other, and never make a deployer fail.

    Without ``wait``, a deployer at work raises PolicyError at once, naming it; with it, ``warn`` is
    told whom the check waits for before it does (a deployment may hold the lock for minutes: a check
    run by cron would otherwise look hung). Yields False when there
    is no lock file to take (never deployed here, or not readable by this user): the check then goes
    ahead without it. The file is opened read-only and never written, and never through a symlink
    (a symlink or anything but a regular file there counts as no lock file: the deployer refuses it).
    """
    try:
        fd = os.open(check_lock_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            who = holder.describe() if holder else unknown_holder(fd)  # whoever holds lock.check
            if not wait:
                raise EnvironmentBusyError(
                    f"{busy_env(env, holder)} is being changed by {who}; check again when it is done"
                ) from None
            if warn is not None:
                warn(
                    f"{busy_env(env, holder)} is being changed by {who}; the check is waiting for it "
                    "to finish (interrupt to give up)"
                )
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)
