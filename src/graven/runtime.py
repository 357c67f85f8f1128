"""How graven uses its own process: pausing the cyclic garbage collector around work that makes tens of
thousands of objects without cycles, and when forking a helper process is safe."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    import queue
    import subprocess
    from collections.abc import Callable, Iterator
    from types import FrameType
    from typing import Any

    SignalHandler = Callable[[int, FrameType | None], Any]

__all__ = [
    "GroupWatchdog",
    "HeldSignals",
    "can_fork",
    "end_queue",
    "host_token",
    "interrupt_handlers",
    "no_gc",
    "pid_runs",
    "random_uuid",
    "reap",
]


_HOST_TOKEN: list[str] = []  # host_token(), once computed


def random_uuid() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` gives, without
    importing :mod:`uuid` (which imports :mod:`platform`: ~2 ms of every build's start-up)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def host_token() -> str:
    """This host and pid namespace in 8 hex digits (two containers of one name share no pids): a
    temp file named with it and a pid is known to be a dead writer's when that pid is gone here
    (:func:`pid_runs`). Computed once per process."""
    if not _HOST_TOKEN:
        import hashlib

        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        _HOST_TOKEN.append(hashlib.sha256(f"{os.uname().nodename}\0{namespace}".encode()).hexdigest()[:8])
    return _HOST_TOKEN[0]


def pid_runs(pid: int) -> bool:
    """Whether a process ``pid`` runs in this pid namespace (another user's too: EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic collector off while the block runs (then as it was). For work such as building
    or checking a release: its many small objects (stat results, records, manifest entries) hold no
    cycles and live until it ends, and the collector would walk them again and again for nothing (a
    third of a drift check's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def interrupt_handlers(
    replace: Callable[[SignalHandler], SignalHandler],
) -> Iterator[dict[int, SignalHandler]]:
    """While the block runs, SIGINT's and SIGTERM's handlers are ``replace(handler)``; yields the
    handlers replaced (by signal number), put back when the block ends. A signal that is ignored
    (SIG_IGN: a job in the background) or has the default action is left as it is, and outside the
    main thread (graven as a library) nothing is changed: the signals are not graven's there."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    import signal

    previous: dict[int, SignalHandler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if not callable(handler):
            continue
        signal.signal(sig, replace(handler))
        previous[sig] = handler
    try:
        yield previous
    finally:
        for signum, restored in previous.items():
            signal.signal(signum, restored)


class HeldSignals:
    """While entered, in the main thread: SIGINT and SIGTERM are noted instead of handled (a signal
    whose handler is the default or ignored is left alone: it kills, or does nothing). On exit the
    handlers are put back and ``stopped`` is what the first noted signal's own handler raises
    (KeyboardInterrupt; graven.cli.app.Terminated), kept for the caller to raise. For the records
    of how something ended (a deployment's, a heal's), which a second Ctrl-C must not cut short."""

    __slots__ = ("_held", "_noted", "_previous", "stopped")

    def __init__(self) -> None:
        self.stopped: BaseException | None = None
        self._noted: list[int] = []
        self._held = interrupt_handlers(lambda _handler: self._note)
        self._previous: dict[int, SignalHandler] = {}

    def __enter__(self) -> HeldSignals:
        self._previous = self._held.__enter__()
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self._noted.append(signum)

    def __exit__(self, *exc_info: object) -> None:
        self._held.__exit__(None, None, None)
        for signum in self._noted:
            try:
                self._previous[signum](signum, None)
            except BaseException as exc:  # what the handler raises is the stop
                self.stopped = self.stopped or exc


def end_queue(handover: queue.Queue[Any]) -> None:
    """Hand ``None`` (the end) to the thread that takes items from ``handover``, and make sure it wakes.

    A plain ``put(None)`` is not enough once Ctrl-C or SIGTERM interrupted an earlier ``put``:
    landing in ``Condition.notify()`` between waking the thread and removing its waiter from the list
    (CPython 3.11), it leaves that waiter, locked again by the thread it woke, first in the list. The
    next ``notify()`` releases that stale waiter instead of the one the thread sleeps on, so the thread
    never sees the end and a ``join()`` on it (the cleanup of the interrupted command) waits forever.
    ``notify_all()`` releases every waiter in the list, the thread's own included: once before the
    ``put`` (the thread may sleep with a full queue, which the put would wait on) and once after it."""
    with handover.not_empty:
        handover.not_empty.notify_all()
    handover.put(None)
    with handover.not_empty:
        handover.not_empty.notify_all()


def reap(pid: int, *, kill: bool) -> int:
    """Wait for the forked process ``pid`` (killed first with ``kill``); its wait status. An interrupt
    while it waits (Ctrl-C, SIGTERM) goes on, but not before the process is killed and reaped: no
    forked process is left behind, running or not waited for."""
    import signal

    if kill:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    try:
        return os.waitpid(pid, 0)[1]
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise


def can_fork() -> bool:
    """Fork only where it is safe and worth it: Linux, two cores or more, and no other thread alive (a
    thread holding a lock at fork time would leave it locked in the child)."""
    return sys.platform == "linux" and (os.cpu_count() or 1) > 1 and threading.active_count() == 1


class GroupWatchdog:
    """A small process that kills process group ``group`` when graven dies (a host build step, an
    activate or health command): it waits for the end of a pipe whose only writer is graven (the
    kernel closes it however graven ends, SIGKILL included). Stopped (killed and reaped) by graven
    when the command ends; for a group graven kills itself, before the leader is reaped."""

    _SCRIPT = 'read _; kill -9 -"$1" 2>/dev/null'

    def __init__(self, group: int) -> None:
        import subprocess  # here: most commands run no command of their own (start-up)

        self._proc: subprocess.Popen[bytes] | None = None
        self._write_end = -1
        try:
            read_end, self._write_end = os.pipe()  # not inheritable: the step started before it anyway
        except OSError:  # no descriptor to spare (EMFILE): as with no process to spare, below
            return
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", self._SCRIPT, "graven-watchdog", str(group)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to graven's group is graven's to handle
                env={"PATH": os.defpath},
            )
        except OSError:  # no process to spare: the step still dies with a normal end of graven
            self._proc = None
        finally:
            os.close(read_end)

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1
