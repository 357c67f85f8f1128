"""Alert delivery for ``graven watch``: the alert JSON on an alert command's stdin and/or POSTed to a
webhook, with retries and exponential backoff.

Delivery runs on a thread of its own, so a slow or dead webhook never holds up the checks; outcomes come
back through :meth:`AlertDispatcher.results` for the watcher to record. Nothing here raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graven import __version__
from graven.errors import InputError

__all__ = ["AlertDispatcher", "AlertSender", "Delivery"]

_TAIL = 200


@dataclass(frozen=True)
class Delivery:
    """How one alert went: ``ok`` when every channel took it; per channel, what happened."""

    payload: dict[str, Any]
    ok: bool
    channels: dict[str, str]
    context: Any = None


class AlertSender:
    """Sends one payload to the configured channels (synchronously)."""

    def __init__(
        self,
        *,
        command: str | None = None,
        webhook: str | None = None,
        retries: int = 4,
        backoff: float = 0.5,
        timeout: float = 10.0,
        command_timeout: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.command = command
        if webhook is not None and not webhook.lower().startswith(("http://", "https://")):
            raise InputError(f"--webhook {webhook!r} must be an http:// or https:// URL")
        self.webhook = webhook
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.stop = stop or threading.Event()

    @property
    def configured(self) -> bool:
        """True when there is somewhere to send alerts."""
        return bool(self.command or self.webhook)

    def send(self, payload: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        """Deliver ``payload``; (every channel ok, outcome per channel)."""
        data = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        channels: dict[str, str] = {}
        ok = True
        if self.command:
            good, outcome = self._run_command(data)
            channels["command"] = outcome
            ok = ok and good
        if self.webhook:
            good, outcome = self._post(data)
            channels["webhook"] = outcome
            ok = ok and good
        return ok, channels

    def _run_command(self, data: bytes) -> tuple[bool, str]:
        """Run the alert command in a session of its own, ``data`` on its stdin; on timeout its whole
        process group is killed (not only ``/bin/sh``: a child it started would keep running, and keep
        its output pipe open)."""
        assert self.command is not None
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return False, f"cannot run: {exc.strerror}"
        try:
            stdout, stderr = proc.communicate(data, timeout=self.command_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return False, f"timed out after {self.command_timeout:.0f}s"
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode == 0:
            return True, "exit 0"
        tail = (stderr or stdout).decode("utf-8", "replace").strip()[-_TAIL:]
        return False, f"exit {proc.returncode}" + (f": {tail}" if tail else "")

    def _post(self, data: bytes) -> tuple[bool, str]:
        assert self.webhook is not None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), 60.0)
                if self.stop.wait(delay):
                    return False, f"{last}; stopped before retry {attempt}"
            request = urllib.request.Request(  # noqa: S310 (the scheme is checked: http or https)
                self.webhook,
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": f"graven/{__version__}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    status = int(response.status)
                    if 200 <= status < 300:
                        return True, f"HTTP {status}" + (f" after {attempt + 1} attempts" if attempt else "")
                    last = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    return False, last  # the receiver refuses it: retrying would not help
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"unreachable: {reason}"
        return False, f"{last} ({self.retries + 1} attempts)"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group of ``proc`` (it leads its own session) and reap it; a process that left
    the group and keeps the pipes open is not waited for."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()


class AlertDispatcher:
    """A queue of alerts delivered in order by one thread."""

    def __init__(self, sender: AlertSender, *, on_done: Callable[[], None] | None = None) -> None:
        self.sender = sender
        self._queue: queue.Queue[tuple[dict[str, Any], Any] | None] = queue.Queue()
        self._done: queue.Queue[Delivery] = queue.Queue()
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run, name="graven-alerts", daemon=True)
        self._thread.start()

    def submit(self, payload: dict[str, Any], context: Any = None) -> None:
        """Queue ``payload`` for delivery."""
        self._queue.put((payload, context))

    def results(self) -> list[Delivery]:
        """Deliveries finished since the last call."""
        out: list[Delivery] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._done.get_nowait())
        return out

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            payload, context = item
            try:
                ok, channels = self.sender.send(payload)
            except Exception as exc:
                ok, channels = False, {"error": str(exc)[:_TAIL]}
            self._done.put(Delivery(payload, ok, channels, context))
            if self._on_done is not None:
                self._on_done()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the queued alerts (waiting at most ``timeout`` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)
