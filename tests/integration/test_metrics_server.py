"""The metrics server of `graven watch` against clients that misbehave: one that connects and sends
nothing, one that sends a byte at a time, one that sends too much, too many at once. None of them
keeps a scrape from being answered, holds a connection past the timeout, or holds up the stop."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_drift_watch import Watcher, wait_for

from graven.drift import metrics as metrics_module
from graven.drift.metrics import MAX_REQUEST_BYTES, DriftMetrics
from graven.drift.watch import WatchOptions
from helpers_deploy import World

DIGEST = "sha256:" + "ab" * 32


@contextlib.contextmanager
def serving(timeout: float) -> Iterator[tuple[DriftMetrics, int]]:
    metrics = DriftMetrics()
    metrics.observe("staging", digest=DIGEST, commit="c0ffee", paths=2, timestamp=1700000000.0)
    port = metrics.serve(0, timeout=timeout)
    try:
        yield metrics, port
    finally:
        metrics.close()


@contextlib.contextmanager
def connected(port: int, count: int = 1) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def scrape(port: int, timeout: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics, read by prometheus_client's own parser (valid text format, or it raises)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``sock`` (end of file or a reset); None if still open after
    ``within``. Whatever it sent before is discarded."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:  # reset
        pass
    return time.monotonic() - started


def test_an_idle_client_neither_holds_up_a_scrape_nor_stays_connected() -> None:
    """Not timed: a scrape held up by the idle client would be answered only once the server closed
    that client (a scrape under 1 s passed with a 0.5 s timeout and a server of one thread), so the
    idle client must still be connected when the answer is in."""
    with serving(timeout=2.0) as (_, port), connected(port) as (idle,):
        started = time.monotonic()
        samples = scrape(port, timeout=30.0)  # while the idle connection is open
        assert closed_by_server(idle, within=0.05) is None, "the scrape waited for the idle client"
        assert samples[("graven_drift_paths", (("env", "staging"),))] == 2
        assert samples[("graven_checks_total", (("env", "staging"), ("result", "drift")))] == 1
        info = ("graven_release_info", (("commit", "c0ffee"), ("digest", DIGEST), ("env", "staging")))
        assert samples[info] == 1
        # the server, not the client, ends the idle connection: after the timeout, not before
        waited = closed_by_server(idle, within=30.0)
        assert waited is not None, "the idle connection is still open"
        assert time.monotonic() - started >= 1.9
        assert scrape(port)  # and it still serves


def test_a_request_sent_a_byte_at_a_time_gets_no_more_than_the_timeout() -> None:
    """The timeout is for the whole request, not for each read: a client that keeps sending one byte
    before each read would time out never holds the connection past it. Not timed (a busy machine
    is slow at times): the client waits 0.05 s or more before each byte, so that the bytes it sent
    before it was closed tell how long it was given."""
    request = b"GET /metrics HTTP/1.0\r\nUser-Agent: " + b"x" * 200 + b"\r\n\r\n"
    with serving(timeout=0.5) as (_, port), connected(port) as (slow,):
        answer = b""
        closed = False
        sent = 0
        for byte in request:
            try:
                slow.send(bytes([byte]))
            except OSError:
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([slow], [], [], 0.05)
            if readable:
                try:
                    chunk = slow.recv(4096)
                except OSError:
                    chunk = b""
                answer += chunk
                if not chunk:
                    closed = True
                    break
        assert closed, f"still connected after {sent} bytes"
        # closed after its 0.5 s (10 bytes at most), not after 1 s; a timeout per read: never
        assert sent <= 20, f"closed after {sent} bytes"
        assert not answer.startswith(b"HTTP/1.0 200"), answer[:60]


def test_an_oversized_request_is_refused() -> None:
    head = b"GET /metrics HTTP/1.0\r\nX-Pad: "
    request = head + b"a" * (MAX_REQUEST_BYTES + 1 - len(head))  # one byte more than allowed, no end
    with serving(timeout=5.0) as (_, port), connected(port) as (big,):
        big.sendall(request)
        big.settimeout(5)
        answer = b""
        while chunk := big.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.0 431 "), answer[:60]


def test_a_scrape_request_with_bare_newlines_is_answered() -> None:
    with serving(timeout=5.0) as (_, port), connected(port) as (client,):
        client.sendall(b"GET /metrics HTTP/1.0\n\n")
        client.settimeout(5)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 "), head
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"graven_drift_paths", "graven_checks", "graven_release_info"} <= families


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"garbage", b"400"),  # one word: no request at all
        (b"GET /metrics HTTP/2.0", b"505"),  # a version this server does not speak
        (b"GET /metrics HTTP/1.x", b"400"),  # a version that is no version
        (b"GET /metrics", b"200"),  # HTTP/0.9: answered as HTTP/1.0, headers and all
    ],
    ids=["one-word", "http2", "bad-version", "http09"],
)
def test_a_malformed_request_line_gets_a_status_line(request_line: bytes, status: bytes) -> None:
    """Every answer starts with a status line: http.server's default (HTTP/0.9) would send an error's
    HTML, or the metrics, bare, which a client reads as garbage (curl: "Received HTTP/0.9")."""
    with serving(timeout=5.0) as (_, port), connected(port) as (client,):
        client.sendall(request_line + b"\r\n\r\n")
        client.settimeout(5)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 " + status + b" "), answer[:80]


def test_connections_past_the_limit_are_closed_and_a_stop_closes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_CONNECTIONS", 4)
    metrics = DriftMetrics()
    port = metrics.serve(0, timeout=60.0)  # idle clients could stay a minute
    try:
        with connected(port, 4) as idle:
            time.sleep(0.3)  # taken by the server
            with connected(port) as (extra,):
                assert closed_by_server(extra, within=2.0) is not None  # one more than the limit
            for sock in idle:
                assert closed_by_server(sock, within=0.05) is None  # still open (60 s timeout)
            started = time.monotonic()
            metrics.close()
            # not the idle clients' 60 s; generous (it needs ~0.1 s) as a busy machine is slow at times
            assert time.monotonic() - started < 30
            for sock in idle:
                assert closed_by_server(sock, within=2.0) is not None, "the stop left a client connected"
    finally:
        metrics.close()


def test_only_127_0_0_1_is_listened_on() -> None:
    with serving(timeout=5.0) as (_, port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        assert scrape(port)


def test_watch_with_an_idle_metrics_client(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_watch's metrics server: an idle client gets closed, scrapes go on, and the watcher stops at
    once although a client is connected."""
    monkeypatch.setattr(metrics_module, "CONNECTION_TIMEOUT", 0.5)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=60, metrics_port=0, as_json=True, full_every=3600))
    try:
        port = watcher.ready["metrics_port"]
        assert wait_for(lambda: watcher.checks() >= 1)
        with connected(port) as (idle,), connected(port) as (idle_at_stop,):
            samples = scrape(port)
            assert samples[("graven_drift_paths", (("env", "staging"),))] == 0
            assert closed_by_server(idle, within=5.0) is not None
            monkeypatch.setattr(metrics_module, "CONNECTION_TIMEOUT", 60.0)
            watcher.close(timeout=5.0)  # the client connected before the stop does not hold it up
            assert closed_by_server(idle_at_stop, within=2.0) is not None
    finally:
        watcher.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_cli_watcher_stops_with_an_idle_metrics_client(world: World, stop: signal.Signals) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = {**os.environ, "GRAVEN_HOME": str(world.home)}
    # a connection's timeout of 10 minutes: a stop that waited for the idle clients would take it,
    # which the 60 s wait below (far from what a stop needs on a busy machine) ends
    script = (
        "from graven.drift import metrics; metrics.CONNECTION_TIMEOUT = 600.0\n"
        "from graven.cli.main import entry; entry()"
    )
    argv = [sys.executable, "-c", script, "watch", "--metrics-port", "0", "--json", "staging"]
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            port = json.loads(proc.stdout.readline())["port"]
            with connected(port, 3):
                scrape(port)  # answered (maybe before the first check: no sample yet)
                proc.send_signal(stop)
                assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
