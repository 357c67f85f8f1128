"""Running ``[build]`` steps (and ``[build.fetch]`` steps) through a runner, in a clean environment.

The runner decides where a step runs (:mod:`graven.build.sandbox`: bubblewrap, or the host when the
pipeline says ``sandbox = "none"``); this module decides what it sees and how failures are reported.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from graven.build.sandbox import StepRunner
from graven.errors import BackendError, BuildError

__all__ = [
    "LOG_HEAD_BYTES",
    "LOG_TAIL_BYTES",
    "PINNED_ENV",
    "BuildLog",
    "clean_environment",
    "ensure_dirs",
    "run_steps",
]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
LOG_TAIL_LINES = 20
# The build log keeps the first and the last MiB of the output (fetch and build steps, one stream).
LOG_HEAD_BYTES = 1 << 20
LOG_TAIL_BYTES = 1 << 20
_TAIL_READ = 64 << 10  # what a failure message's last lines are taken from
# Read beyond each cut of the log (and before a failure message's window), redacted with what is kept,
# then dropped: a secret a cut falls in is recognised whole, not kept as two fragments (as a hook's
# output: graven.deploy.hooks). At the outer edge of such a margin, a secret cut there is left as it
# was by redaction: its first half of the margin is never kept.
_MARGIN = 64 << 10
_CHUNK = 1 << 16
_POLL_SECONDS = 0.1  # how often the log thread looks whether the step has finished
_DRAIN_SECONDS = 0.5  # how long output is still copied after the step exited (from what it left running)

# What graven sets itself; [build] env cannot pass these through from the host.
PINNED_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "LANG", "SOURCE_DATE_EPOCH", "PYTHONHASHSEED"}
)


def clean_environment(
    *,
    home: Path | str,
    tmp: Path | str,
    source_date_epoch: int,
    host_path: str | None,
    passed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment a step sees: the pinned values, PATH, and the ``passed`` variables.

    ``passed`` are the host values of the names in ``[build] env`` (only those that are set).
    """
    env = {
        "PATH": host_path or DEFAULT_PATH,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "PYTHONHASHSEED": "0",
    }
    for key, value in (passed or {}).items():
        if key not in PINNED_ENV:
            env[key] = value
    return env


class BuildLog:
    """The build log file, capped while it is written: its first ``head`` and last ``tail`` bytes.

    What lies between is dropped as it arrives (a line ``[graven: N bytes of output cut here]`` takes
    its place when the log is closed), so neither the file nor graven's memory grows with a step that
    prints without end. The first bytes go straight to the file; the last ones are held in memory (at
    most ``tail`` plus a margin plus one chunk) until :meth:`close` writes them after the marker. Both
    sides of the cut are redacted (:func:`graven.deploy.hook_result.redact_secrets`) with a margin of
    what was dropped before they are cut, so that a secret printed across a cut is not kept in pieces
    the redaction of the stored log could not recognise.
    """

    def __init__(self, path: Path, *, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> None:
        self.path = path
        self._head = head
        self._tail = tail
        self._file: BinaryIO | None = path.open("w+b")  # read back at a cut: its end is redacted
        self._written = 0  # bytes of the head in the file
        self._after = bytearray()  # the first bytes after the head (a margin), for a cut there
        self._held: deque[bytes] = deque()  # after the head: the newest bytes, oldest chunk first
        self.held = 0  # their total size
        self.cut = 0  # bytes dropped between head and tail

    def __enter__(self) -> BuildLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        """Append output: to the file while the head lasts, then to the held tail (the oldest dropped)."""
        if self._file is None:
            raise ValueError("the build log is closed")
        if self._written < self._head:
            first = data[: self._head - self._written]
            self._file.write(first)
            self._written += len(first)
            data = data[len(first) :]
        if not data:
            return
        if len(self._after) < _MARGIN:
            self._after += data[: _MARGIN - len(self._after)]
        self._held.append(data)
        self.held += len(data)
        while len(self._held) > 1 and self.held - len(self._held[0]) >= self._tail + _MARGIN:
            dropped = self._held.popleft()
            self.held -= len(dropped)
            self.cut += len(dropped)

    def _tail_bytes(self) -> bytes:
        """The held bytes, trimmed to ``tail`` (what :meth:`close` keeps)."""
        data = b"".join(self._held)
        return data[-self._tail :] if len(data) > self._tail else data

    def last_bytes(self, size: int) -> bytes:
        """The last ``size`` bytes of what is kept (the head file's end, when little is held)."""
        held = self._tail_bytes()
        if len(held) >= size or self._written == 0 or self.cut:
            return held[-size:]
        if self._file is not None:
            self._file.flush()
        with self.path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            want = min(end, size - len(held))
            handle.seek(end - want)
            return handle.read(want) + held

    def close(self) -> None:
        """Write the marker (when bytes were cut) and the kept tail; close the file. Idempotent."""
        if self._file is None:
            return
        held = b"".join(self._held)
        cut = self.cut + max(0, len(held) - self._tail)
        if cut:
            self._redact_head_end()
            held = _redacted_end(held, self._tail, after_cut=self.cut > 0)
            self._file.write(f"\n[graven: {cut} bytes of output cut here]\n".encode())
        self._file.write(held)
        self._held.clear()
        self.held = 0
        self._file.close()
        self._file = None

    def _redact_head_end(self) -> None:
        """Redact the head's last bytes with the first ones cut after it (the margin), in the file."""
        assert self._file is not None
        start = max(0, self._written - _MARGIN)
        self._file.seek(start)
        end = self._file.read(self._written - start)
        window = _decoded(end + self._after)
        redacted = _redact(window)
        if redacted == window:
            return
        data = redacted.encode("utf-8", "surrogateescape")
        keep = min(len(end), len(data) - min(len(self._after), _MARGIN // 2))
        self._file.seek(start)
        self._file.write(data[: max(0, keep)])
        self._file.truncate()


def _decoded(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 go through unchanged


def _redact(text: str) -> str:
    from graven.deploy.hook_result import redact_secrets

    return redact_secrets(text)


def _redacted_end(held: bytes, size: int, *, after_cut: bool) -> bytes:
    """The last ``size`` bytes of ``held`` once redacted with what comes before them (a margin, or
    all since the head); ``after_cut``: ``held`` itself begins at a cut, whose side of a secret
    redaction left as it was is never kept."""
    text = _decoded(held)
    redacted = _redact(text)
    if redacted == text:
        return held[-size:]
    data = redacted.encode("utf-8", "surrogateescape")
    return data[max(len(data) - size, min(len(data), _MARGIN // 2) if after_cut else 0) :]


class _Pump:
    """Copies a step's output from a pipe to the build log, in a thread, while the step runs."""

    def __init__(self, log: BuildLog) -> None:
        self._log = log
        self._read, write = os.pipe()
        self.writer: BinaryIO = open(write, "wb", buffering=0)  # noqa: SIM115 - closed by finish()
        self._stop_at: float | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, name="graven-step-log", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        try:
            poller = select.poll()  # not select(): graven may hold more than FD_SETSIZE descriptors
            poller.register(self._read, select.POLLIN)
            while True:
                stop_at = self._stop_at
                wait = _POLL_SECONDS if stop_at is None else max(0.0, stop_at - time.monotonic())
                if poller.poll(wait * 1000):
                    chunk = os.read(self._read, _CHUNK)
                    if not chunk:
                        return  # every writer is gone
                    self._log.write(chunk)
                if stop_at is not None and time.monotonic() >= stop_at:
                    return  # something the step left running still holds the pipe open
        except BaseException as exc:  # handed to the main thread by finish()
            self._error = exc

    def finish(self) -> None:
        """After the step: close graven's end of the pipe, copy what is left, stop the thread."""
        self.writer.close()
        self._stop_at = time.monotonic() + _DRAIN_SECONDS
        self._thread.join()
        os.close(self._read)
        if isinstance(self._error, OSError):
            raise BackendError(f"cannot write the build log {self._log.path}: {self._error}") from None
        if self._error is not None:
            raise self._error


def _run_one(runner: StepRunner, step: str, *, log: BuildLog, timeout: int, network: bool) -> int:
    """Run one step with its output (stdout and stderr) going through a pipe into ``log``."""
    pump = _Pump(log)
    try:
        return runner.run(step, log=pump.writer, timeout=timeout, network=network)
    finally:
        pump.finish()


def run_steps(
    steps: Sequence[str],
    *,
    runner: StepRunner,
    log: BuildLog,
    timeout: int,
    phase: str = "build",
    network: bool = False,
) -> None:
    """Run each step with ``/bin/sh -c`` through ``runner``; the first failure raises BuildError.

    The output goes to ``log`` (capped: see :class:`BuildLog`). The error is one line: ``<phase> step N
    ('...') failed with exit code X; last lines: ...``.
    """
    for number, step in enumerate(steps, start=1):
        label = "" if phase == "build" else f"[{phase}] "
        log.write(f"$ {label}{step}\n".encode())
        try:
            code = _run_one(runner, step, log=log, timeout=timeout, network=network)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{phase} step {number} ({step!r}) timed out after {timeout} s") from None
        if code != 0:
            tail = _tail(log)
            # this step's own output: the whole tail once its header scrolled out of it
            own = tail.rpartition(f"$ {label}{step}")[2]
            hint = "" if network or not _wanted_network(own) else _OFFLINE_HINT
            raise BuildError(
                f"{phase} step {number} ({step!r}) failed with exit code {code}{hint}; last lines: {tail}"
            )


# What tools print when they cannot reach the network (resolvers of glibc and musl, curl, Go, Node,
# Python's urllib3/requests, Java, Rust's reqwest/cargo): an offline step that fails with one of them
# most likely tried to download what the fetch phase should have.
_NETWORK_ERRORS = (
    "Temporary failure in name resolution",
    "Name or service not known",
    "Name does not resolve",
    "Could not resolve host",
    "Network is unreachable",
    "No address associated with hostname",
    "dial tcp: lookup",
    "getaddrinfo",
    "UnknownHostException",
    "failed to lookup address",
)
_OFFLINE_HINT = (
    " (it seems to have needed the network, which build steps do not have: download what they need in "
    "[build.fetch] steps, locked by a lockfile)"
)


def _wanted_network(tail: str) -> bool:
    return any(error in tail for error in _NETWORK_ERRORS)


def _tail(log: BuildLog) -> str:
    """The last lines of the log, joined on one line (read from its end only)."""
    # shown on terminals and kept in CI logs: a URL's password, a secret-looking variable's value;
    # redacted with a margin before the window, so that a secret the window begins in is found whole
    data = log.last_bytes(_TAIL_READ + _MARGIN)
    text = _redact(data.decode(errors="replace"))
    if len(data) == _TAIL_READ + _MARGIN:  # it begins inside the log: a secret may begin before it
        text = text[max(len(text) - _TAIL_READ, _MARGIN // 2) :]
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return " | ".join(line for line in lines if line.strip())[-2000:]


def ensure_dirs(*paths: Path) -> None:
    """Create directories (0755)."""
    for path in paths:
        os.makedirs(path, mode=0o755, exist_ok=True)
