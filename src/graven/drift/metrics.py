"""Prometheus metrics of ``graven watch`` (prometheus-client), served on 127.0.0.1 only::

graven_drift_paths{env}                          paths that drift now (0: clean)
graven_last_check_timestamp_seconds{env}         when the last check finished (Unix time)
graven_release_info{env,digest,commit}           1 for the release that is checked
graven_checks_total{env,result}                  checks by result: clean | drift | error
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from graven.errors import InputError

__all__ = ["CONTENT_TYPE", "DriftMetrics"]

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
        self._releases: dict[str, tuple[str, str]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def observe(
        self, env: str, *, digest: str, commit: str | None, paths: int | None, timestamp: float
    ) -> None:
        """Record one check (``paths`` None: the check failed)."""
        result = "error" if paths is None else ("drift" if paths else "clean")
        self.checks.labels(env, result).inc()
        self.last_check.labels(env).set(timestamp)
        if paths is not None:
            self.paths.labels(env).set(paths)
        labels = (digest, commit or "")
        previous = self._releases.get(env)
        if previous != labels:
            if previous is not None:
                self.release.remove(env, *previous)
            self.release.labels(env, *labels).set(1)
            self._releases[env] = labels

    def forget(self, env: str) -> None:
        """Remove every label set of ``env`` (it is no longer watched)."""
        for gauge in (self.paths, self.last_check):
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

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: any free port); the port."""
        metrics = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise InputError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
            ) from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="graven-metrics", daemon=True
        )
        self._thread.start()
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
