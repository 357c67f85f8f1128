"""Alert delivery for ``graven watch``: the alert JSON on an alert command's stdin and/or POSTed to a
webhook, with retries and exponential backoff.

Delivery runs on a thread of its own, so a slow or dead webhook never holds up the checks; outcomes come
back through :meth:`AlertDispatcher.results` for the watcher to record. Nothing here raises.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graven import __version__
from graven.deploy.hook_result import redact_secrets
from graven.errors import InputError

__all__ = [
    "DROPPED",
    "NOT_DELIVERED",
    "QUEUE_MAX",
    "RETRY_AFTER_MAX",
    "AlertDispatcher",
    "AlertSender",
    "Delivery",
    "retry_after",
]

_TAIL = 200  # characters of a failed command's output shown (escaped)
_CAPTURE = 4096  # bytes kept of each output stream of an alert command (its last ones)
# seconds the output of an alert command that exited is still read while a process it left in the
# background holds its pipes open (what the command itself wrote last comes within it)
_GRACE = 0.5
_POLL = 0.05  # seconds between two looks at whether the alert command exited, while its pipes are open
QUEUE_MAX = 100  # alerts waiting for delivery; when full, the oldest is dropped
RETRY_AFTER_MAX = 60.0  # seconds a webhook's Retry-After may hold a retry back (the backoff's own bound)
NOT_DELIVERED = "not delivered: the watcher stopped first"
DROPPED = "not delivered: dropped, the alert queue was full"


@dataclass(frozen=True)
class Delivery:
    """How one alert went: ``ok`` when every channel took it, ``reached`` when one did at least; per
    channel, what happened."""

    payload: dict[str, Any]
    ok: bool
    channels: dict[str, str]
    context: Any = None
    reached: bool = False


# A host name or an IPv4 address as a request can send it: letters (an internationalized name too),
# digits, '-', '_' (some internal names hold one) and '.'.
_HOST_NAME = re.compile(r"[\w.-]+")


def check_webhook(url: str) -> None:
    """Refuse, when the watcher starts rather than at its first alert, a webhook URL it could not use:
    not http(s), no host or a host that is no host name (a space, a control character), a port that is
    no number or out of range, a space or a control character anywhere, a character that is not ASCII
    in the path or the query (http.client cannot write it in the request line), or credentials in it
    (``user:password@``: the request would not send them). The URL is never echoed whole: it may hold a
    secret."""
    from urllib.parse import urlsplit

    scheme = url.partition("://")[0].lower() if "://" in url else ""
    shown = f"{scheme}://..." if scheme else "(not a URL)"
    if scheme not in ("http", "https"):
        raise InputError(f"--webhook {shown} must be an http:// or https:// URL")
    # before urlsplit, which drops a tab or a newline where the request would send it (or refuse it)
    if not url.isprintable():
        raise InputError(f"--webhook {shown} holds a control character (a tab, a newline); remove it")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # its text may quote the URL (a "port" that is part of a password)
        if str(exc).startswith("Port out of range"):
            raise InputError(f"--webhook {shown} has a port out of range (1 to 65535)") from None
        raise InputError(f"--webhook {shown} is not a valid URL (a bad host, port or bracket)") from None
    if not parts.hostname:
        raise InputError(f"--webhook {shown} names no host")
    if port == 0:
        raise InputError(f"--webhook {shown} has a port out of range (1 to 65535)")
    if "[" not in parts.netloc and not _HOST_NAME.fullmatch(parts.hostname):
        raise InputError(
            f"--webhook {shown} has a host that is no host name (a space or a character a host name "
            "cannot hold); give letters, digits, '-' and '.', or an address ([::1] for IPv6)"
        )
    if parts.username is not None or parts.password is not None:
        raise InputError(
            f"--webhook {scheme}://{parts.hostname}/... holds credentials (user:password@), which the "
            "request would not send; put the webhook's token in its path or query, as chat webhooks do"
        )
    if any(ch.isspace() for ch in url):
        raise InputError(f"--webhook {shown} holds a space; write it %20 in the path or the query")
    if not (parts.path + parts.query).isascii():  # the request line is ASCII (a host is sent IDNA-encoded)
        raise InputError(
            f"--webhook {shown} holds a character that is not ASCII in its path or query; write it "
            "percent-encoded (its UTF-8 bytes: %C3%A9 for \u00e9)"
        )


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
        if command is not None and not command.strip():
            raise InputError("--alert-command is empty; give the command that receives alerts")
        self.command = command
        if webhook is not None:
            check_webhook(webhook)
        self.webhook = webhook
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.stop = stop or threading.Event()
        self._running: subprocess.Popen[bytes] | None = None  # the alert command at work, if any

    @property
    def configured(self) -> bool:
        """True when there is somewhere to send alerts."""
        return bool(self.command or self.webhook)

    def send(self, payload: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        """Deliver ``payload``; (every channel ok, outcome per channel)."""
        each = self.send_each(payload)
        return all(good for good, _ in each.values()), {name: outcome for name, (_, outcome) in each.items()}

    def send_each(self, payload: dict[str, Any]) -> dict[str, tuple[bool, str]]:
        """Deliver ``payload``; per channel, whether it took it and what happened."""
        data = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        each: dict[str, tuple[bool, str]] = {}
        if self.command:
            each["command"] = self._run_command(data)
        if self.webhook:
            each["webhook"] = self._post(data)
        return each

    def _run_command(self, data: bytes) -> tuple[bool, str]:
        """Run the alert command in a session of its own, ``data`` on its stdin; only the last
        :data:`_CAPTURE` bytes of its stdout and stderr are kept. Its own exit status is the outcome: a
        process it started in the background (``notify &``) is neither waited for nor killed once it
        exited (:func:`_exchange`). On timeout its whole process group is killed (not only
        ``/bin/sh``: a child it started would keep running, and keep its pipes open)."""
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
        self._running = proc
        try:
            return self._wait_command(proc, data)
        finally:
            self._running = None

    def kill_running(self) -> None:
        """Kill the alert command that is running, with its process group (the watcher is stopping:
        it must not outlive it)."""
        proc = self._running
        if proc is not None:
            _kill_group(proc)

    def _wait_command(self, proc: subprocess.Popen[bytes], data: bytes) -> tuple[bool, str]:
        assert self.command is not None
        try:
            tails = _exchange(proc, data, time.monotonic() + self.command_timeout)
        except BaseException:
            _kill_group(proc)
            raise
        if tails is None:
            _kill_group(proc)
            return False, f"timed out after {self.command_timeout:.0f}s"
        if proc.returncode == 0:
            return True, "exit 0"
        text = (tails[1] or tails[0]).decode("utf-8", "replace").strip()
        # recorded in the watcher's output and the append-only audit log: no credentials in it
        shown = _printable(redact_secrets(text))[-_TAIL:]
        return False, f"exit {proc.returncode}" + (f": {shown}" if shown else "")

    def _post(self, data: bytes) -> tuple[bool, str]:
        assert self.webhook is not None
        last = ""
        asked: float | None = None  # the seconds the last answer's Retry-After asked for
        for attempt in range(self.retries + 1):
            if attempt:
                delay = max(min(self.backoff * 2 ** (attempt - 1), 60.0), asked or 0.0)
                asked = None
                if self.stop.wait(delay):
                    return False, f"{last}; stopped before retry {attempt}"
            request = urllib.request.Request(  # noqa: S310 (the scheme is checked: http or https)
                self.webhook,
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": f"graven/{__version__}"},
            )
            deadline = _Deadline(self.timeout)
            try:
                response = deadline.opener().open(request, timeout=self.timeout)
                try:
                    status = int(response.status)
                finally:
                    deadline.end()  # before the socket is closed (and its number given to another)
                    response.close()
                if deadline.expired:  # the headers the shut socket ended: not the receiver's answer
                    raise TimeoutError
                if 200 <= status < 300:
                    return True, f"HTTP {status}" + (f" after {attempt + 1} attempts" if attempt else "")
                last = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                asked = retry_after(exc.headers.get("Retry-After"), time.time()) if exc.headers else None
                if 300 <= exc.code < 400:  # a login page or http -> https: the alert never arrived
                    return False, f"{last}: redirects are not followed; give the webhook's final URL"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    return False, last  # the receiver refuses it: retrying would not help
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"unreachable: {reason}"
                if isinstance(exc, ValueError):  # urllib's words quote the proxy URL it read, password too
                    last = "unreachable: a proxy variable (http_proxy, https_proxy, all_proxy) is not a URL"
                if deadline.expired:  # whatever the shut socket made of it
                    last = f"unreachable: timed out after {self.timeout:g}s"
            except http.client.HTTPException as exc:  # no OSError: a bad status line, a header too long
                # its class only: its text quotes what the receiver sent (recorded in the audit log)
                last = f"not an HTTP answer: {type(exc).__name__}"
                if deadline.expired:
                    last = f"unreachable: timed out after {self.timeout:g}s"
            finally:
                deadline.end()
        return False, f"{last} ({self.retries + 1} attempts)"


def retry_after(value: str | None, now: float) -> float | None:
    """The seconds a ``Retry-After`` header asks a client to wait (RFC 9110: whole seconds, or an HTTP
    date, ``now`` being the Unix time), at most :data:`RETRY_AFTER_MAX`; None when there is none or it
    cannot be read."""
    import email.utils

    text = (value or "").strip()
    if text.isascii() and text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": a time in no known zone
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would turn the POST into a GET without the alert, and count
    whatever answered that as the alert delivered."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Deadline:
    """The whole time of one webhook attempt. urllib's timeout bounds each socket operation, not the
    request: a receiver answering a byte at a time would hold the delivery thread as long as it liked.
    When the time is up, the attempt's socket is shut down (not closed: http.client still owns it),
    which ends the read or write that waits; the connection and the TLS handshake are bounded by what
    is left of it."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._ended = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds left (a little at least: a socket timeout of 0 would make it non-blocking)."""
        return max(self.at - time.monotonic(), 0.01)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down when the time is up (now, if it is)."""
        with self._lock:
            if sock is None or self._ended:
                return
            self._socks.append(sock)
            if self.expired:
                _shut(sock)

    def end(self) -> None:
        """The attempt is over: its sockets are left alone from now on."""
        with self._lock:
            self._ended = True
            self._socks.clear()
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener (no redirects) whose connections are bounded by this deadline."""
        deadline = self

        class _Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.timeout = min(self.timeout or deadline.left(), deadline.left())
                super().connect()
                deadline.watch(self.sock)

        class _TLSConnection(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.timeout = min(self.timeout or deadline.left(), deadline.left())
                super().connect()  # the handshake too: bounded as a whole by the socket's timeout
                deadline.watch(self.sock)

        class _HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(_Connection, req)

        class _HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(_TLSConnection, req)  # the default context: certificates checked

        return urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop its TLS state
    # under the thread that reads it
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x00``, ``\\n``, ...), a backslash
    left as it is.

    The outcome of a failed alert command is stored text, not a terminal's rendering: it is the
    channel's outcome in ``watch --json`` (``channels``), in the drift event's JSON and in the audit
    log's reason (``alert-failed``), which keep it as it was first written. It escapes what would
    break a line or drive a terminal, so the watch line that quotes it is safe to print; it is not
    meant to read back one way (a backslash in the command's output is not doubled), and ``graven log``
    shows it escaped once more, as every field (``printable``: its backslashes doubled)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _exchange(proc: subprocess.Popen[bytes], data: bytes, deadline: float) -> tuple[bytes, bytes] | None:
    """Write ``data`` to the alert command's stdin (a command that does not read it is fine) and keep
    the last :data:`_CAPTURE` bytes of its stdout and stderr, until it has exited (and is reaped) and
    its pipes are closed. A process it left in the background that holds a pipe open is not waited
    for: the output is read for :data:`_GRACE` seconds more after the command's exit (what it wrote
    last), then no longer; the command's own exit status is the outcome. Returns (stdout, stderr)
    tails, or None when ``deadline`` passes before the command exits (it still runs: the caller kills
    it). One thread, no other: the three pipes are non-blocking, and closed before this returns."""
    import selectors

    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    streams = (proc.stdin, proc.stdout, proc.stderr)
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    tails = {out_fd: bytearray(), err_fd: bytearray()}
    pending = memoryview(data)
    try:
        with selectors.DefaultSelector() as selector:
            for fd in tails:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            if pending:
                os.set_blocking(in_fd, False)
                selector.register(in_fd, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            exited: float | None = None
            while True:
                now = time.monotonic()
                if exited is None and proc.poll() is not None:
                    exited = now
                if exited is not None:
                    if not selector.get_map() or now >= exited + _GRACE:
                        break
                    wait = exited + _GRACE - now
                elif now >= deadline:
                    return None
                elif not selector.get_map():  # every pipe is closed: only its exit is waited for
                    try:
                        proc.wait(timeout=deadline - now)
                    except subprocess.TimeoutExpired:
                        return None
                    continue
                else:  # its exit is looked for between reads: a child keeping the pipes open
                    wait = min(_POLL, deadline - now)
                for key, _events in selector.select(wait):
                    fd = key.fd
                    if fd == in_fd:
                        try:
                            pending = pending[os.write(fd, pending) :]
                        except BlockingIOError:
                            continue
                        except OSError:  # EPIPE: it closed its stdin unread
                            pending = pending[:0]
                        if not pending:
                            selector.unregister(fd)
                            proc.stdin.close()
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(fd)
                        continue
                    tail = tails[fd]
                    tail += chunk
                    if len(tail) > _CAPTURE:
                        del tail[: len(tail) - _CAPTURE]
    finally:
        for stream in streams:
            with contextlib.suppress(OSError):
                stream.close()
    return bytes(tails[out_fd]), bytes(tails[err_fd])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group of ``proc`` (it leads its own session) and reap it (a process that left
    the group is not waited for)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class AlertDispatcher:
    """A bounded queue of alerts delivered in order by one thread: when :data:`QUEUE_MAX` alerts wait
    (a hanging webhook), the oldest is dropped and ``warn`` says so; alerts not delivered when it is
    closed, and those dropped, come back from :meth:`results` as failed deliveries."""

    def __init__(
        self,
        sender: AlertSender,
        *,
        on_done: Callable[[], None] | None = None,
        warn: Callable[[str], None] | None = None,
        maxsize: int = QUEUE_MAX,
    ) -> None:
        self.sender = sender
        self.maxsize = maxsize
        self.dropped = 0
        self._cond = threading.Condition()
        self._pending: deque[tuple[dict[str, Any], Any]] = deque()
        self._current: tuple[dict[str, Any], Any] | None = None
        self._closing = False
        self._abandoned = False
        self._done: queue.Queue[Delivery] = queue.Queue()
        self._on_done = on_done
        self._warn = warn
        self._thread = threading.Thread(target=self._run, name="graven-alerts", daemon=True)
        self._thread.start()

    def submit(self, payload: dict[str, Any], context: Any = None) -> None:
        """Queue ``payload`` for delivery (dropping the oldest waiting alert when the queue is full)."""
        dropped: dict[str, Any] | None = None
        with self._cond:
            if self._abandoned:
                self._done.put(Delivery(payload, False, {"queue": NOT_DELIVERED}, context))
                return
            if len(self._pending) >= self.maxsize:
                dropped, dropped_context = self._pending.popleft()
                self.dropped += 1
                # recorded as a failed delivery, as one left at the stop is: never lost without a trace
                self._done.put(Delivery(dropped, False, {"queue": DROPPED}, dropped_context))
            self._pending.append((payload, context))
            self._cond.notify()
            count = self.dropped
        if dropped is not None and self._warn is not None:
            what = " ".join(str(dropped[k]) for k in ("env", "event") if k in dropped)
            self._warn(
                f"alert queue full ({self.maxsize} waiting): dropped the oldest alert"
                + (f" ({what})" if what else "")
                + f"; {count} dropped since the start"
            )

    def results(self) -> list[Delivery]:
        """Deliveries finished since the last call."""
        out: list[Delivery] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._done.get_nowait())
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                item = self._current = self._pending.popleft()
            payload, context = item
            try:
                each = self.sender.send_each(payload)
                ok, reached = all(good for good, _ in each.values()), any(good for good, _ in each.values())
                channels = {name: outcome for name, (_, outcome) in each.items()}
            except Exception as exc:
                ok, reached, channels = False, False, {"error": str(exc)[:_TAIL]}
            with self._cond:
                self._current = None
                if self._abandoned:  # reported as not delivered already
                    return
                self._done.put(Delivery(payload, ok, channels, context, reached))
            if self._on_done is not None:
                self._on_done()

    def close(self, timeout: float = 5.0) -> int:
        """Deliver the queued alerts, waiting at most ``timeout`` seconds; those that are left (and the
        one in flight) are reported by :meth:`results` as not delivered. Returns how many."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():  # an alert command still at work: it dies with the watcher
            self.sender.kill_running()
        with self._cond:
            self._abandoned = True
            left = list(self._pending)
            if self._current is not None:
                left.insert(0, self._current)
            self._pending.clear()
            for payload, context in left:
                self._done.put(Delivery(payload, False, {"queue": NOT_DELIVERED}, context))
        return len(left)
