"""The ``activate`` and ``health`` commands of an environment: ``/bin/sh -c COMMAND`` in the environment
directory, with the operator's environment plus ``GRAVEN_*`` variables naming the release.

The commands come from the artifact's graven.toml, which is only read after its provenance verified
against the operator's trust policy. Each run has a timeout; on expiry its whole process group is
killed, as it is when graven itself is killed meanwhile (a watchdog process). Output is kept (the last
4 KiB) for the error message and the history.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from graven.deploy.hook_result import HookResult, redact_secrets, step_error
from graven.runtime import GroupWatchdog, HeldSignals

__all__ = ["HookResult", "run_health", "run_hook", "step_error"]

_TAIL = 4096
_MARGIN = 65536  # read before the kept tail of a longer output: a secret the cut falls in is redacted whole


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
        with HeldSignals() as starting:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            watchdog = GroupWatchdog(proc.pid)  # kills the command's group if graven itself is killed
        try:
            if starting.stopped is not None:
                raise starting.stopped
            code: int | None = proc.wait(timeout=timeout)
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
        if len(output) > _TAIL:  # the cut could leave the end of a secret, which no longer matches it
            output = redact_secrets(output, dict(env))[-_TAIL:]
    return HookResult(command, code, output, time.monotonic() - start, timeout=timeout)


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
        command, result.returncode, result.output, time.monotonic() - start, attempts, timeout=timeout
    )
