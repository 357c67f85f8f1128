"""The gate every step's launcher passes (a byte up, the limits set, the data down) and the watchdog:
one timeout for the whole step, one line (never a traceback) when the launcher stalls, and no step left
running when graven has no descriptor to spare for its watchdog."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graven import runtime
from graven.build import sandbox
from graven.runtime import GroupWatchdog


class _NoPipeOs:
    """``os`` for the watchdog alone, out of descriptors (EMFILE) when it makes its pipe: the step's own
    ``subprocess`` still gets its pipes."""

    @staticmethod
    def pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def _launcher(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL)


def test_a_launcher_that_never_takes_its_data_times_out_as_the_step_does() -> None:
    """The data is sent with the step's deadline: a launcher that passes the gate and then reads
    nothing (more data than a socket holds) is the step's timeout, not a TimeoutError traceback."""
    ours, theirs = socket.socketpair()
    proc = _launcher("import time; time.sleep(30)")
    try:
        theirs.sendall(b"\n")  # the gate's byte, then never a read
        start = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired) as caught:
            sandbox._start(proc, ours, b"x" * (64 << 20), (), deadline=time.monotonic() + 1.0, timeout=7)
        assert time.monotonic() - start < 10
        assert caught.value.timeout == 7  # named as the step's timeout, which the build reports
    finally:
        proc.kill()
        proc.wait()
        ours.close()
        theirs.close()


def test_a_launcher_that_ended_gets_nothing_and_no_error() -> None:
    ours, theirs = socket.socketpair()
    proc = _launcher("pass")
    try:
        theirs.sendall(b"\n")
        theirs.close()  # the command ended: what is sent is lost, its exit code tells
        sandbox._start(proc, ours, b"x" * (64 << 20), (), deadline=time.monotonic() + 5, timeout=5)
    finally:
        proc.wait()
        ours.close()


def test_the_gate_and_the_step_share_one_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher slow to pass the gate does not get a second full timeout for the step: what is left
    for the step when the gate is passed is the timeout less the gate's time (at least its 0.5 s
    sleep, more on a loaded machine), never the whole timeout again. No wall-clock bound: a busy
    machine only makes what is left smaller, and the timeout is far from reached."""
    script = "import os, time; time.sleep(0.5); os.write(0, b'\\n'); os.read(0, 1)"
    real_wait = sandbox._wait_exited
    left: list[float] = []

    def wait_exited(proc: subprocess.Popen[bytes], deadline: float, timeout: int) -> None:
        left.append(deadline - time.monotonic())
        real_wait(proc, deadline, timeout)

    monkeypatch.setattr(sandbox, "_wait_exited", wait_exited)
    with (tmp_path / "log").open("wb") as log:
        code = sandbox._run_logged(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=dict(os.environ),
            log=log,
            timeout=60,
            umask=0o022,
            stdin_data=b"\n",
        )
    assert code == 0
    assert len(left) == 1 and left[0] <= 60 - 0.5, left  # before: a full 60 s again for the step


def test_no_descriptor_for_the_watchdog_still_runs_and_ends_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE when the watchdog's pipe is made: the step runs without a watchdog (as when no process
    is left for one), and it is still killed and reaped at its end; before, the error escaped with
    the step's process left running."""

    monkeypatch.setattr(runtime, "os", _NoPipeOs())
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    with (tmp_path / "log").open("wb") as log, pytest.raises(subprocess.TimeoutExpired):
        sandbox._run_logged(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=dict(os.environ),
            log=log,
            timeout=2,
            umask=0o022,
            adopt_orphans=True,
        )
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_a_watchdog_without_a_pipe_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "os", _NoPipeOs())
    watchdog = GroupWatchdog(os.getpgrp())
    watchdog.stop()
    watchdog.stop()
