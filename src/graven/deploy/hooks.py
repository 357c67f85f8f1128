"""The ``activate`` and ``health`` commands of an environment: ``/bin/sh -c COMMAND`` in the environment
directory, with the operator's environment plus ``GRAVEN_*`` variables naming the release.

The commands come from the artifact's graven.toml, which is only read after its provenance verified
against the operator's trust policy. Each run has a timeout; on expiry its whole process group is
killed. Output is kept (the last 4 KiB) for the error message and the history.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from graven.core.record import Frozen

__all__ = ["HookResult", "run_health", "run_hook", "step_error"]

_TAIL = 4096


class HookResult(Frozen):
    """How one command ended (a frozen value: graven.core.record)."""

    __slots__ = ("attempts", "command", "error", "output", "returncode", "seconds", "timeout")
    _fields = ("command", "returncode", "output", "seconds", "attempts", "error", "timeout")
    command: str
    returncode: int | None  # None: killed after the timeout
    output: str  # the last few KiB of stdout + stderr
    seconds: float
    attempts: int
    error: str | None  # the step could not run at all (see :func:`step_error`)
    timeout: float | None  # the limit of one attempt (what a timed-out run reports)

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        command: str,
        returncode: int | None,
        output: str,
        seconds: float,
        attempts: int = 1,
        error: str | None = None,
        timeout: float | None = None,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "command", command)
        set_field(self, "returncode", returncode)
        set_field(self, "output", output)
        set_field(self, "seconds", seconds)
        set_field(self, "attempts", attempts)
        set_field(self, "error", error)
        set_field(self, "timeout", timeout)

    @property
    def ok(self) -> bool:
        """True when the command exited 0 in time."""
        return self.returncode == 0 and self.error is None

    def describe(self) -> str:
        """``exit 3: <last line of output>``, ``timed out after 10s``, or the error that stopped the step."""
        if self.error is not None:
            return self.error
        if self.returncode is None:
            limit = self.timeout if self.timeout is not None else self.seconds
            status = f"timed out after {limit:g}s"
        else:
            status = f"exit {self.returncode}"
        last = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return f"{status}: {last[0][:200]}" if last else status


def step_error(what: str, exc: BaseException) -> HookResult:
    """A failed result for a deployment step that raised instead of running a command."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return HookResult(what, None, "", 0.0, error=text)


def run_hook(command: str, *, cwd: Path, env: Mapping[str, str], timeout: float) -> HookResult:
    """Run ``command`` with ``/bin/sh -c``; never raises for a failing command."""
    import tempfile  # here: a deployment without hooks never needs it (start-up)

    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        size = out.tell()
        out.seek(max(0, size - _TAIL))
        output = out.read().decode("utf-8", "replace")
    return HookResult(command, code, output, time.monotonic() - start, timeout=timeout)


def run_health(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    retries: int,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> HookResult:
    """Run the health command until it passes, at most ``retries + 1`` times, ``interval`` apart."""
    start = time.monotonic()
    result = run_hook(command, cwd=cwd, env=env, timeout=timeout)
    attempts = 1
    while not result.ok and attempts <= retries:
        sleep(interval)
        result = run_hook(command, cwd=cwd, env=env, timeout=timeout)
        attempts += 1
    return HookResult(
        command, result.returncode, result.output, time.monotonic() - start, attempts, timeout=timeout
    )
