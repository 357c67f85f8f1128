"""The ``activate`` and ``health`` commands of an environment: ``/bin/sh -c COMMAND`` in the environment
directory, with the operator's environment plus ``GRAVEN_*`` variables naming the release.

The commands come from the artifact's graven.toml, which is only read after its provenance verified
against the operator's trust policy. Each run has a timeout; on expiry its whole process group is
killed, as it is when graven itself is killed meanwhile (a watchdog process). Output is kept (the last
4 KiB) for the error message and the history.

The output goes to an unnamed temp file, not a pipe: a daemon the command starts inherits it, and a
pipe whose reader goes away kills such a daemon (SIGPIPE), or keeps graven waiting for its end. The
file's disk use is capped while the command runs (:data:`OUTPUT_CAP`, checked every few ms): past
it, all but the last MiB is freed (a hole punched, else the file emptied and rewound), and the result
says how much was dropped. Not RLIMIT_FSIZE, which would also limit the files the command writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from graven.deploy.hook_result import OUTPUT_CAP, HookResult, redact_secrets, step_error
from graven.runtime import GroupWatchdog, HeldSignals

__all__ = ["OUTPUT_CAP", "HookResult", "run_health", "run_hook", "step_error"]

# The command's start: it waits for a line on the pipe that is its standard input (graven writes it
# once the command's watchdog runs), then becomes the command, its standard input /dev/null again.
_GATE = 'IFS= read -r go || exit 125; unset go; exec "$0" "$@" 0</dev/null'
_TAIL = 4096
_MARGIN = 65536  # read before the kept tail of a longer output: a secret the cut falls in is redacted whole
_KEEP = 1024 * 1024  # what a cut of an output past OUTPUT_CAP keeps of its end (more than _TAIL + _MARGIN)


def run_hook(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    warn: Callable[[str], None] | None = None,
) -> HookResult:
    """Run ``command`` with ``/bin/sh -c``; never raises for a failing command. ``warn`` is told when
    the command left processes behind that still write to its output (:func:`_holders`)."""
    import tempfile  # here: a deployment without hooks never needs it (start-up)

    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        # a Ctrl-C or SIGTERM while the command and its watchdog start is held, then raised below,
        # where it kills the command's group: else it would leave the command running, unwatched
        # The command waits at a gate until its watchdog runs: a graven SIGKILLed in between (no
        # signal can be held) closes the gate's pipe, and the gate exits without running it.
        gate_r, gate_w = os.pipe()
        try:
            with HeldSignals() as starting:
                try:
                    proc = subprocess.Popen(
                        ["/bin/sh", "-c", _GATE, "/bin/sh", "-c", command],
                        cwd=cwd,
                        env=dict(env),
                        stdin=gate_r,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                finally:
                    os.close(gate_r)
                watchdog = GroupWatchdog(proc.pid)  # kills the command's group if graven itself is killed
                with contextlib.suppress(OSError):  # a gate that is gone already: its exit status says it
                    os.write(gate_w, b"\n")
        finally:
            os.close(gate_w)
        try:
            if starting.stopped is not None:
                raise starting.stopped
            cap = _OutputCap(out.fileno())
            code: int | None = _wait(proc, timeout, cap)
        except subprocess.TimeoutExpired:
            _kill(proc, watchdog)
            code = None
        except BaseException:
            _kill(proc, watchdog)
            raise
        finally:
            watchdog.stop()  # a command that ended by itself keeps what it started (a daemon)
        if warn is not None and code is not None:
            holders = _holders(out.fileno())
            if holders:
                shown = ", ".join(str(pid) for pid in holders[:5]) + (" ..." if len(holders) > 5 else "")
                warn(
                    f"`{command}` left {len(holders)} process{'es' if len(holders) > 1 else ''} running "
                    f"(pid {shown}) that write{'' if len(holders) > 1 else 's'} to its output, a file graven "
                    "has removed: the disk space it takes cannot be seen, nor freed until they stop; "
                    "redirect a daemon's output (`nohup ./server >server.log 2>&1 &`) or start it with "
                    "a service manager"
                )
        size = out.tell()
        out.seek(max(0, size - _TAIL - _MARGIN))
        output = out.read().decode("utf-8", "replace")
        if cap.dropped:  # a rewound file can start with the zeros of a write the rewind raced with
            output = output.lstrip("\x00")
        if len(output) > _TAIL:  # the cut could leave the end of a secret, which no longer matches it
            output = redact_secrets(output, dict(env))[-_TAIL:]
    return HookResult(command, code, output, time.monotonic() - start, timeout=timeout, dropped=cap.dropped)


def _wait(proc: subprocess.Popen[bytes], timeout: float, cap: _OutputCap) -> int:
    """The command's exit status, checking its output's disk use meanwhile: every 2 ms while the
    output grows, up to every 50 ms while it does not. Raises TimeoutExpired after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        left = deadline - time.monotonic()
        try:
            return proc.wait(timeout=max(0.0, min(pause, left)))
        except subprocess.TimeoutExpired:
            if left <= pause:
                raise
        pause = 0.002 if cap.check() else min(pause * 2, 0.05)


class _OutputCap:
    """Keeps the disk space of the output file at ``fd`` near :data:`OUTPUT_CAP`: past it, everything
    but the last :data:`_KEEP` bytes is freed. The file offset is the command's too (its stdout is a
    duplicate of ``fd``), so a hole is punched below it, where nothing writes (FALLOC_FL_PUNCH_HOLE);
    where the file system cannot, the file is rewound and emptied (a write meanwhile can be lost)."""

    __slots__ = ("_fd", "_punch", "_size", "dropped")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = 0
        self._punch = True
        self.dropped = 0

    def check(self) -> bool:
        """Whether the output grew since the last check (cut when it takes more than the cap)."""
        try:
            st = os.fstat(self._fd)
        except OSError:
            return False
        grew = st.st_size != self._size
        self._size = st.st_size
        if st.st_blocks * 512 <= OUTPUT_CAP:
            return grew
        end = (st.st_size - _KEEP) // _KEEP * _KEEP  # whole MiB: the holes a file system can free
        if self._punch and end > self.dropped:
            try:
                _punch_hole(self._fd, self.dropped, end - self.dropped)
            except OSError:
                self._punch = False  # not on this file system (or no fallocate): rewind instead
            else:
                self.dropped = end
                return grew
        if not self._punch:
            with contextlib.suppress(OSError):
                # rewound first: a write after the rewind lands below the cut and is dropped with it,
                # while one between a cut and a rewind would leave the file its old size
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.ftruncate(self._fd, 0)
                self.dropped += st.st_size
                self._size = 0
        return grew


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """``fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)``; OSError when it
    fails or there is no such call (imported here: only a hook printing more than the cap needs it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # the C library this process runs with
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is None:
        raise OSError(38, "no fallocate")
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, 0x02 | 0x01, offset, length) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _holders(fd: int) -> list[int]:
    """The processes of this user, other than this one, that hold the file open at ``fd`` (a hook's
    output, which a daemon the hook started inherits as its stdout or stderr): found through
    ``/proc``; none where it cannot be read."""
    try:
        st = os.fstat(fd)
        names = os.listdir("/proc")
    except OSError:
        return []
    me, uid, target = os.getpid(), os.geteuid(), (st.st_dev, st.st_ino)
    found: list[int] = []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        base = f"/proc/{name}/fd"
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            fds = os.listdir(base)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for entry in fds:
            try:
                held = os.stat(f"{base}/{entry}")
            except OSError:
                continue
            if (held.st_dev, held.st_ino) == target:
                found.append(int(name))
                break
    return sorted(found)


def _kill(proc: subprocess.Popen[bytes], watchdog: GroupWatchdog) -> None:
    """Kill the command's whole process group, then reap its leader (after the watchdog is stopped:
    until the leader is reaped, its group id cannot be another's)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    watchdog.stop()
    proc.wait()


def run_health(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    retries: int,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    warn: Callable[[str], None] | None = None,
) -> HookResult:
    """Run the health command until it passes, at most ``retries + 1`` times, ``interval`` apart."""
    start = time.monotonic()
    result = run_hook(command, cwd=cwd, env=env, timeout=timeout, warn=warn)
    attempts = 1
    while not result.ok and attempts <= retries:
        sleep(interval)
        result = run_hook(command, cwd=cwd, env=env, timeout=timeout, warn=warn)
        attempts += 1
    return HookResult(
        command,
        result.returncode,
        result.output,
        time.monotonic() - start,
        attempts,
        timeout=timeout,
        dropped=result.dropped,
    )
