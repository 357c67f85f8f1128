"""Prometheus metrics of ``graven watch`` (prometheus-client), served on 127.0.0.1 only::

graven_drift_paths{env}                          paths that drift now (0: clean)
graven_last_check_timestamp_seconds{env}         when the last check with a result (clean or drift)
                                                 finished (Unix time): a watcher whose checks fail
                                                 shows as stale
graven_release_info{env,digest,commit}           1 for the release that is checked
graven_checks_total{env,result}                  checks by result: clean | drift | error
graven_pending_records{env}                      checks and alert deliveries not recorded yet (the
                                                 database is busy; 0 when all are recorded)
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from graven.errors import InputError

__all__ = ["CONNECTION_TIMEOUT", "CONTENT_TYPE", "MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "DriftMetrics"]

# What one client of the metrics server may hold: a scrape sends a request of a few hundred bytes at
# once and reads a few KiB back. A client that connects and sends nothing (or a byte at a time) is
# closed after CONNECTION_TIMEOUT seconds, whatever it sent; one more than MAX_CONNECTIONS at once is
# closed at once, so idle clients cost a bounded number of threads and descriptors.
CONNECTION_TIMEOUT = 5.0  # seconds for the whole request (line and headers), and again for the answer
MAX_REQUEST_BYTES = 16 * 1024  # the request line and headers (else 431)
MAX_CONNECTIONS = 32

# The header of what render() writes: the text format 0.0.4, the one every Prometheus (and Go's
# expfmt) reads. Not prometheus_client's CONTENT_TYPE_LATEST: in newer releases (0.26 here) that
# names the text format 1.0.0 (UTF-8 names, to be sent with an escaping= parameter), which
# prometheus_client itself serves only to a scraper that asks for it; expfmt.ResponseFormat reads it
# as an unknown format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DriftMetrics:
    """The watcher's metrics in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.paths = Gauge(
            "graven_drift_paths", "Paths of the environment that drift now", ["env"], registry=self.registry
        )
        self.last_check = Gauge(
            "graven_last_check_timestamp_seconds",
            "When the last drift check of the environment finished",
            ["env"],
            registry=self.registry,
        )
        self.release = Gauge(
            "graven_release_info",
            "The release checked in the environment (value 1)",
            ["env", "digest", "commit"],
            registry=self.registry,
        )
        self.checks = Counter(
            "graven_checks", "Drift checks by result", ["env", "result"], registry=self.registry
        )
        self.pending = Gauge(
            "graven_pending_records",
            "Checks and alert deliveries of the environment held until the database takes them",
            ["env"],
            registry=self.registry,
        )
        self._releases: dict[str, tuple[str, str]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def observe(
        self, env: str, *, digest: str, commit: str | None, paths: int | None, timestamp: float
    ) -> None:
        """Record one check (``paths`` None: the check failed; it counts as an error and leaves
        the time of the last check with a result as it was)."""
        result = "error" if paths is None else ("drift" if paths else "clean")
        self.checks.labels(env, result).inc()
        if paths is not None:
            self.last_check.labels(env).set(timestamp)
            self.paths.labels(env).set(paths)
        self.pending.labels(env)  # exported from the first check on (0 until something is held)
        labels = (digest, commit or "")
        previous = self._releases.get(env)
        if previous != labels:
            if previous is not None:
                self.release.remove(env, *previous)
            self.release.labels(env, *labels).set(1)
            self._releases[env] = labels

    def held(self, env: str, count: int) -> None:
        """``count`` checks and alert deliveries of ``env`` wait to be recorded (the database is busy)."""
        self.pending.labels(env).set(count)

    def forget(self, env: str) -> None:
        """Remove every label set of ``env`` (it is no longer watched)."""
        for gauge in (self.paths, self.last_check, self.pending):
            with contextlib.suppress(KeyError):
                gauge.remove(env)
        for result in ("clean", "drift", "error"):
            with contextlib.suppress(KeyError):
                self.checks.remove(env, result)
        previous = self._releases.pop(env, None)
        if previous is not None:
            with contextlib.suppress(KeyError):
                self.release.remove(env, *previous)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def serve(self, port: int, *, timeout: float | None = None) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: any free port); the port. ``timeout``: the
        seconds a client has to send its request, and again to take the answer (default
        :data:`CONNECTION_TIMEOUT`)."""
        metrics = self
        seconds = CONNECTION_TIMEOUT if timeout is None else timeout

        class _Handler(BaseHTTPRequestHandler):
            # StreamRequestHandler.setup gives the socket this timeout: it bounds every write
            # (sendall: the whole answer), and _read_head bounds the request as a whole
            timeout = seconds
            # what an answer says when the request line names no version it speaks (one word,
            # HTTP/2.0, HTTP/1.x, or HTTP/0.9's "GET /metrics"): http.server's default, HTTP/0.9,
            # sends the error page or the metrics with no status line nor headers
            default_request_version = "HTTP/1.0"

            def handle(self) -> None:
                # one request per connection (HTTP/1.0), its head read here under one deadline and
                # size bound, then parsed from memory: the parser never waits on the socket
                try:
                    head = _read_head(self.connection, seconds, MAX_REQUEST_BYTES)
                except _TooLargeError:
                    self.connection.settimeout(seconds)  # the answer's own time, not what was left
                    self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
                    self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                    return
                if head is None:  # nothing (complete) in time, or the client went away
                    return
                self.connection.settimeout(seconds)  # the answer's own time, not what was left
                self.rfile.close()  # the socket's reader (an open one would keep the descriptor)
                self.rfile = io.BytesIO(head)
                self.handle_one_request()

            def do_GET(self, *, head: bool = False) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # a probe's (curl -I): the headers of GET, no body
                self.do_GET(head=True)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise InputError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="graven-metrics", daemon=True
        )
        self._thread.start()
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving: no new connection is taken, and the open ones are closed now (an idle client
        never holds up the watcher's stop)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _TooLargeError(Exception):
    """A request whose line and headers exceed :data:`MAX_REQUEST_BYTES`."""


_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


def _read_head(sock: socket.socket, timeout: float, limit: int) -> bytes | None:
    """The request line and headers (through the blank line) read from ``sock`` within ``timeout``
    seconds in all (not per read: a client sending a byte at a time gets no longer); what came when the
    client closed its side; None when nothing came, or not all of it in time. _TooLargeError past ``limit``
    bytes."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        end = _END_OF_HEAD.search(data)
        if end is not None:
            return data[: end.end()]
        if len(data) > limit:
            raise _TooLargeError
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(limit + 1 - len(data))
        except OSError:  # TimeoutError too: nothing is answered
            return None
        if not chunk:
            return data or None
        data += chunk


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` at once (one more is closed at
    once); the server never waits for them to end (daemon threads, each bounded by its timeout), and
    :meth:`close_connections` ends the open ones."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._open_lock:
            if len(self._open) >= MAX_CONNECTIONS:
                return False  # BaseServer closes it
            self._open.add(request)
        return True

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection: its handler sees the end of it and returns."""
        with self._open_lock:
            connections = list(self._open)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that went away mid-answer: nothing to report (the default prints a traceback)
