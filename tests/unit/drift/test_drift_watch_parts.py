"""The parts of `graven watch`: the schedule, alert delivery (command, webhook with retries), metrics,
file system notifications (inotify, its overflow, watchdog)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graven.drift.alerts import AlertDispatcher, AlertSender
from graven.drift.metrics import DriftMetrics
from graven.drift.notify import IN_Q_OVERFLOW, InotifyNotifier, WatchdogNotifier
from graven.drift.watch import ROOT_SUFFIX, Schedule
from graven.errors import InputError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_schedule_notifications_debounce_interval_and_full_checks() -> None:
    clock = FakeClock()
    schedule = Schedule(interval=60, full_every=3600, debounce=0.05, clock=clock)
    schedule.add("prod")
    assert schedule.due() == [("prod", True)]  # a watcher starts with a full check
    schedule.checked("prod", full=True, started=clock.now)
    assert schedule.due() == []
    assert schedule.timeout() == pytest.approx(60)
    clock.now += 1
    schedule.notify("prod", False)
    assert schedule.due() == []  # within the debounce
    clock.now += 0.06
    assert schedule.due() == [("prod", False)]
    schedule.checked("prod", full=False, started=clock.now)
    schedule.notify("prod" + ROOT_SUFFIX, False, ".graven")  # graven's own files: ignored
    schedule.notify("prod" + ROOT_SUFFIX, False, "current")
    clock.now += 0.1
    assert schedule.due() == [("prod", False)]
    schedule.checked("prod", full=False, started=clock.now)
    schedule.notify(None, True)  # overflow: events were lost
    clock.now += 0.1
    assert schedule.due() == [("prod", True)] and schedule.overflows == 1
    schedule.checked("prod", full=True, started=clock.now)
    clock.now += 60
    assert schedule.due() == [("prod", False)]  # the periodic backstop
    schedule.checked("prod", full=False, started=clock.now)
    clock.now += 3600
    assert schedule.due() == [("prod", True)]  # full every hour
    schedule.postpone("prod", 5)  # a deployer holds the lock: not checked for 5 s
    assert schedule.due() == []
    assert schedule.timeout() == pytest.approx(5)
    clock.now += 4.9
    assert schedule.due() == []
    clock.now += 0.1
    assert schedule.due() == [("prod", True)]  # then the full check it was due for, at once
    schedule.forget("prod")
    assert schedule.due() == []


class Receiver:
    """A webhook on 127.0.0.1 that fails the first ``fail`` requests with 503."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(503)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(fail=2)
    yield made
    made.close()


def test_webhook_retries_with_backoff(receiver: Receiver) -> None:
    sender = AlertSender(webhook=receiver.url, retries=3, backoff=0.01)
    ok, channels = sender.send({"text": "hi"})
    assert ok and channels == {"webhook": "HTTP 204 after 3 attempts"}
    assert receiver.bodies == [{"text": "hi"}]


def test_a_dead_webhook_fails_without_raising_and_the_command_gets_stdin(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    out = tmp_path / "alert.json"
    sender = AlertSender(
        command=f"cat > {out}", webhook=f"http://127.0.0.1:{port}/", retries=2, backoff=0.01, timeout=1
    )
    started = time.monotonic()
    ok, channels = sender.send({"event": "drift"})
    assert not ok and channels["command"] == "exit 0" and "unreachable" in channels["webhook"]
    assert time.monotonic() - started < 5
    assert json.loads(out.read_text()) == {"event": "drift"}
    failing = AlertSender(command="echo nope >&2; exit 3")
    assert failing.send({}) == (False, {"command": "exit 3: nope"})
    with pytest.raises(InputError):
        AlertSender(webhook="file:///etc/passwd")


def test_the_dispatcher_delivers_in_order_on_its_own_thread(receiver: Receiver) -> None:
    receiver.fail = 0
    done = threading.Event()
    dispatcher = AlertDispatcher(AlertSender(webhook=receiver.url), on_done=done.set)
    for i in range(3):
        dispatcher.submit({"n": i}, context=i)
    dispatcher.close(timeout=10)
    results = dispatcher.results()
    assert [r.context for r in results] == [0, 1, 2] and all(r.ok for r in results)
    assert [b["n"] for b in receiver.bodies] == [0, 1, 2] and done.is_set()


def test_a_failed_check_leaves_the_time_of_the_last_check_with_a_result() -> None:
    """A watcher whose checks all fail (a database gone, a release it cannot read) must show as stale:
    the staleness alert (time() - graven_last_check_timestamp_seconds) is how it is noticed."""
    metrics = DriftMetrics()
    metrics.observe("prod", digest="sha256:" + "a" * 64, commit="c1", paths=0, timestamp=100.0)
    metrics.observe("prod", digest="sha256:" + "a" * 64, commit="c1", paths=None, timestamp=200.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("graven_last_check_timestamp_seconds", (("env", "prod"),))] == 100.0
    assert samples[("graven_checks_total", (("env", "prod"), ("result", "error")))] == 1


def test_metrics_answer_head_as_get_without_a_body() -> None:
    metrics = DriftMetrics()
    port = metrics.serve(0)
    try:
        metrics.observe("prod", digest="sha256:" + "a" * 64, commit="c1", paths=0, timestamp=1.0)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert response.read() == b""
    finally:
        metrics.close()


def test_metrics_are_served_on_localhost_and_parse() -> None:
    metrics = DriftMetrics()
    port = metrics.serve(0)
    try:
        metrics.observe("prod", digest="sha256:" + "a" * 64, commit="c1", paths=3, timestamp=1234.5)
        metrics.observe("prod", digest="sha256:" + "b" * 64, commit="c2", paths=0, timestamp=1240.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
            # the header of the body: the text format 0.0.4 (not the 1.0.0 prometheus_client may name)
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    finally:
        metrics.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("graven_drift_paths", (("env", "prod"),))] == 0
    assert samples[("graven_last_check_timestamp_seconds", (("env", "prod"),))] == 1240.0
    assert samples[("graven_checks_total", (("env", "prod"), ("result", "drift")))] == 1
    assert samples[("graven_checks_total", (("env", "prod"), ("result", "clean")))] == 1
    info = {k: v for k, v in samples.items() if k[0] == "graven_release_info"}
    assert info == {
        ("graven_release_info", (("commit", "c2"), ("digest", "sha256:" + "b" * 64), ("env", "prod"))): 1
    }


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_inotify_reports_changes_not_reads_and_sees_overflows(tmp_path: Path) -> None:
    (tmp_path / "tree/sub").mkdir(parents=True)
    (tmp_path / "tree/sub/f").write_text("x")
    calls: list[tuple[str | None, bool, str | None]] = []
    notifier = InotifyNotifier(lambda key, overflow, name: calls.append((key, overflow, name)))
    try:
        notifier.watch("env", tmp_path / "tree", recursive=True)
        notifier.watch("env" + ROOT_SUFFIX, tmp_path, recursive=False)
        (tmp_path / "tree/sub/f").read_text()  # reading is not a change
        time.sleep(0.1)
        assert calls == []
        (tmp_path / "tree/sub/f").write_text("y")
        assert wait_for(lambda: ("env", False, None) in calls)
        (tmp_path / "tree/new").mkdir()  # a new directory is watched too
        time.sleep(0.1)
        calls.clear()
        (tmp_path / "tree/new/g").write_text("z")
        assert wait_for(lambda: ("env", False, None) in calls)
        (tmp_path / "current").symlink_to("tree")
        assert wait_for(lambda: ("env" + ROOT_SUFFIX, False, "current") in calls)
        notifier._dispatch(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
        assert (None, True, None) in calls
        notifier.unwatch("env")
        calls.clear()
        (tmp_path / "tree/sub/f").write_text("w")
        time.sleep(0.1)
        assert ("env", False, None) not in calls
    finally:
        notifier.close()


def test_watchdog_is_the_fallback(tmp_path: Path) -> None:
    calls: list[str | None] = []
    notifier = WatchdogNotifier(lambda key, overflow, name: calls.append(key))
    try:
        notifier.watch("env", tmp_path, recursive=True)
        (tmp_path / "f").write_text("x")
        assert wait_for(lambda: "env" in calls)
        notifier.unwatch("env")
    finally:
        notifier.close()


def test_a_webhook_that_redirects_is_not_delivered() -> None:
    """urllib followed a 302 with a GET without the alert and counted the 200 of the page it reached
    (a login page, say) as delivered: every alert silently lost."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/landing")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        sender = AlertSender(
            webhook=f"http://127.0.0.1:{server.server_address[1]}/hook", retries=2, backoff=0.01
        )
        ok, channels = sender.send({"text": "hi"})
    finally:
        server.shutdown()
        server.server_close()
    assert not ok and channels["webhook"].startswith("HTTP 302: redirects are not followed"), channels


def test_a_failing_alert_commands_output_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """What it printed goes into the watcher's output and the append-only audit log."""
    monkeypatch.setenv("SLACK_TOKEN", "supersecret123")
    sender = AlertSender(command='cat >/dev/null; echo "token=$SLACK_TOKEN" >&2; exit 3')
    ok, channels = sender.send({"text": "hi"})
    assert not ok and "supersecret123" not in channels["command"] and "***" in channels["command"], channels


def test_inotify_watches_every_directory_of_a_tree_moved_in(tmp_path: Path) -> None:
    """Only the top of a moved-in tree was watched: an edit deeper in it waited for the periodic check."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "outside/a/b").mkdir(parents=True)
    (tmp_path / "outside/a/b/f").write_text("x")
    calls: list[tuple[str | None, bool, str | None]] = []
    notifier = InotifyNotifier(lambda key, overflow, name: calls.append((key, overflow, name)))
    try:
        notifier.watch("env", tmp_path / "tree", recursive=True)
        (tmp_path / "outside/a").rename(tmp_path / "tree/a")
        assert wait_for(lambda: ("env", False, None) in calls)
        time.sleep(0.1)
        calls.clear()
        (tmp_path / "tree/a/b/f").write_text("y")
        assert wait_for(lambda: ("env", False, None) in calls)
    finally:
        notifier.close()


def test_inotify_watches_again_the_directories_made_while_events_were_lost(tmp_path: Path) -> None:
    """Events lost (IN_Q_OVERFLOW) may include the creation of a directory, which the notifier then never
    watched: an edit in it (a directory swapped for a copy while the queue overflowed, kept by a heal
    that rewrote its files) waited for the periodic check for as long as the watcher ran."""
    (tmp_path / "tree/sub").mkdir(parents=True)
    calls: list[tuple[str | None, bool, str | None]] = []
    notifier = InotifyNotifier(lambda key, overflow, name: calls.append((key, overflow, name)))
    dispatch = notifier._dispatch
    try:
        notifier.watch("env", tmp_path / "tree", recursive=True)
        notifier._dispatch = lambda data: None  # type: ignore[method-assign] # the kernel drops them
        (tmp_path / "tree/sub/new").mkdir()
        (tmp_path / "tree/sub/new/f").write_text("x")
        time.sleep(0.2)
        notifier._dispatch = dispatch  # type: ignore[method-assign]
        notifier._dispatch(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
        assert (None, True, None) in calls
        calls.clear()
        (tmp_path / "tree/sub/new/f").write_text("y")
        assert wait_for(lambda: ("env", False, None) in calls)
    finally:
        notifier.close()


def test_the_inotify_watch_limit_is_said_once_per_tree_and_named(tmp_path: Path) -> None:
    """Past fs.inotify.max_user_watches the watcher printed one warning per directory (thousands for a
    big release, at every deployment), each saying "No space left on device"."""
    import ctypes
    import errno

    for i in range(30):
        (tmp_path / f"tree/d{i}").mkdir(parents=True)
    notifier = InotifyNotifier(lambda key, overflow, name: None)
    real = notifier._libc
    added: list[bytes] = []

    class Limited:
        """libc whose inotify_add_watch fails with ENOSPC after 5 watches (the user's limit)."""

        def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
            if len(added) >= 5:
                ctypes.set_errno(errno.ENOSPC)
                return -1
            added.append(path)
            return int(real.inotify_add_watch(fd, path, mask))

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    notifier._libc = Limited()
    try:
        notifier.watch("env", tmp_path / "tree", recursive=True)
        notifier.watch("env\0root", tmp_path, recursive=False)
    finally:
        notifier.close()
    assert len(added) == 5
    assert len(notifier.failures) == 2, notifier.failures
    assert "cannot watch 26 of 31 directories" in notifier.failures[0]
    assert "cannot watch 1 of 1 directory" in notifier.failures[1]
    assert all("fs.inotify.max_user_watches" in f for f in notifier.failures)
    assert not any("No space left" in f for f in notifier.failures)


def test_an_alert_command_at_work_does_not_outlive_the_watcher(tmp_path: Path) -> None:
    """After SIGTERM the watcher closed its dispatcher and left a running alert command (and what it
    started) behind, recorded as not delivered."""
    import os

    pidfile = tmp_path / "pid"
    sender = AlertSender(command=f"cat >/dev/null; sleep 100 & echo $! > {pidfile}; wait", command_timeout=60)
    dispatcher = AlertDispatcher(sender)
    dispatcher.submit({"text": "hi"}, context=1)
    assert wait_for(pidfile.exists) and wait_for(lambda: pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    assert dispatcher.close(timeout=0.2) == 1
    results = dispatcher.results()
    assert [r.ok for r in results] == [False]

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_for(gone)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://u:Secret1@host/x", "must be an http:// or https:// URL"),
        ("https://u:Secret1@[::1", "is not a valid URL"),
        ("https://h:port/x", "is not a valid URL"),
        ("https:///path", "names no host"),
        ("https://u:Secret1@chat.example/hook", "holds credentials"),
        ("https://hookuser:Secret1/rest@hooks.example/x", "is not a valid URL"),  # 'port' Secret1
        # accepted, and every alert failed when it was sent
        ("http://exa mple/Secret1", "has a host that is no host name"),
        ("http://u:Secret1@exa mple/", "has a host that is no host name"),
        ("http://exa%20mple/Secret1", "has a host that is no host name"),
        ("http://ex\tample/Secret1", "holds a control character"),
        ("http://example/Secret1\n", "holds a control character"),
        ("http://example/a b?Secret1", "holds a space; write it %20"),
        ("http://example:0/Secret1", "has a port out of range"),
        ("http://example:70000/Secret1", "has a port out of range"),
        ("https://chat.example/hooks/caf\u00e9/Secret1", "not ASCII in its path or query"),
        ("https://chat.example/hook?token=Secret1&who=\u00e9", "not ASCII in its path or query"),
    ],
)
def test_a_webhook_that_could_not_be_used_is_refused_at_start_without_its_secret(
    url: str, message: str
) -> None:
    """A CLI review: these were accepted (an alert failed later with 'Name or service not known'),
    and the refused one echoed its password."""
    from graven.drift.alerts import AlertSender
    from graven.errors import InputError

    with pytest.raises(InputError, match=message) as refused:
        AlertSender(webhook=url)
    assert "Secret1" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/x?token=a%20b",
        "https://[::1]:8443/hook",
        "http://hook_host.internal:8080/",
        "https://b\u00fccher.example/hook/caf%C3%A9",  # a host name is sent IDNA-encoded
    ],
)
def test_a_webhook_that_can_be_used_is_taken(url: str) -> None:
    from graven.drift.alerts import AlertSender

    assert AlertSender(webhook=url).webhook == url


def test_an_empty_alert_command_is_refused() -> None:
    from graven.drift.alerts import AlertSender
    from graven.errors import InputError

    with pytest.raises(InputError, match="--alert-command is empty"):
        AlertSender(command="  ")
    assert AlertSender(webhook="https://chat.example/hook?token=x").configured


def test_held_checks_keep_each_change_in_order_and_are_bounded() -> None:
    """What `graven watch` holds while the database is busy: every change of what drifts (each is an
    event to record), of a run of equal checks only the first and the last, at most HELD_MAX."""
    from graven.core.drift import Difference
    from graven.service.drift_report import DriftReport
    from graven.service.drift_watch import HELD_MAX, HeldChecks

    def report(n: int, *paths: str) -> DriftReport:
        diffs = [Difference(p, "modified", "a", "b") for p in paths]
        return DriftReport(
            env="prod", path="/srv/prod", digest="sha256:" + "a" * 64, name="app", commit=None,
            mode="fast", differences=diffs, checked_at=f"2026-01-01T00:00:{n:02d}.000000Z",
        )  # fmt: skip

    held = HeldChecks()
    assert not held and held.envs() == []
    for n, paths in enumerate([(), ("x",), ("x",), ("x",), ("x",), (), ("y",)]):
        held.add(report(n, *paths))
    kept = [(r.checked_at[17:19], [d.path for d in r.differences]) for r in held._held["prod"]]
    assert kept == [("00", []), ("01", ["x"]), ("04", ["x"]), ("05", []), ("06", ["y"])]
    assert held and held.envs() == ["prod"] and held.count("prod") == 5
    for n in range(HELD_MAX * 2):
        held.add(report(n % 60, "x" if n % 2 else "y"))
    assert held.count("prod") == HELD_MAX and held.dropped == HELD_MAX + 5
    held.forget("prod")
    assert not held and held.count("prod") == 0


def test_an_environment_no_longer_watched_keeps_no_pending_records_series(monkeypatch: Any) -> None:
    """An alert delivery of an environment that stopped being live is still recorded (after the
    metrics of the environment were removed, when the database was busy or the delivery slow): its
    held count was exported again then, and graven_pending_records{env} came back for good."""
    from graven.core.drift import Alert
    from graven.drift.alerts import Delivery
    from graven.drift.watch import WatchOptions
    from graven.service import drift_watch
    from graven.service.drift_watch import HealBackoff, HeldChecks, _BusyEpisode, _Watcher

    class Notifier:
        def unwatch(self, name: str) -> None:
            del name

    class Dispatcher:
        def __init__(self) -> None:
            self.done: list[Delivery] = []

        def results(self) -> list[Delivery]:
            done, self.done = self.done, []
            return done

    recorded: list[str] = []
    monkeypatch.setattr(drift_watch, "record_alert", lambda ctx, alert, **kw: recorded.append(alert.env))
    watcher = _Watcher.__new__(_Watcher)
    dispatcher = Dispatcher()
    metrics = DriftMetrics()
    schedule = Schedule(interval=60, full_every=3600, debounce=0.05)
    schedule.add("gone")
    watcher.__dict__.update(
        metrics=metrics, targets={}, watched={"gone": ("r", "p", 1)}, notifier=Notifier(), schedule=schedule,
        held=HeldChecks(), unrecorded=[], episode=_BusyEpisode(), heal_after=set(), alerted={},
        alert_retry={}, backoff=HealBackoff(60), dispatcher=dispatcher, lost_output=[], out=lambda line: None,
        opts=WatchOptions(), stop=threading.Event(), ctx=None, locked={}, unchecked={},
    )  # fmt: skip
    metrics.observe("gone", digest="sha256:" + "a" * 64, commit=None, paths=1, timestamp=1.0)
    alert = Alert("drift", "gone", "/srv/gone", None, None, None, "t", ())
    dispatcher.done.append(Delivery({}, True, {"webhook": "ok"}, alert))  # finished meanwhile
    watcher._unwatch_gone()  # the environment is no longer live: its series go
    assert 'env="gone"' not in metrics.render().decode()
    watcher._finish_deliveries()  # its delivery is still recorded ...
    assert recorded == ["gone"]
    assert 'env="gone"' not in metrics.render().decode()  # ... and its series stay gone


def _stop_serving(server: socket.socket, *threads: threading.Thread) -> None:
    """Close ``server`` and wait for its threads. close() alone does not wake a thread blocked in
    accept(): it stayed alive, and every later test in the process found a thread running, so
    graven.runtime.can_fork() said no and the forked paths (a release's build and check, drift's
    full check) were silently not tested, or failed (test_drift_early)."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes accept() (EINVAL)
    server.close()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)


def test_a_webhook_that_answers_no_http_fails_its_channel_without_raising() -> None:
    """http.client's own errors (a status line that is no HTTP, a header line too long) are no
    OSError: they escaped the webhook's retries, and the dispatcher recorded the alert as reaching no
    channel although the alert command had taken it (it was then sent to the command again)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    try:
        sender = AlertSender(
            command="cat >/dev/null",
            webhook=f"http://127.0.0.1:{server.getsockname()[1]}/hook",
            retries=1,
            backoff=0.01,
        )
        each = sender.send_each({"text": "hi"})
    finally:
        _stop_serving(server, serving)
    assert each == {
        "command": (True, "exit 0"),
        "webhook": (False, "not an HTTP answer: BadStatusLine (2 attempts)"),
    }


class Dripping:
    """A webhook on 127.0.0.1 that reads the request, then answers one byte every ``pause`` seconds
    (a header that does not end): no read waits ``pause``, and the answer takes ``length`` seconds."""

    def __init__(self, pause: float = 0.05, length: float = 6.0) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.pause, self.length = pause, length
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            dripping = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            self.threads.append(dripping)
            dripping.start()

    def _drip(self, conn: Any) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                end = time.monotonic() + self.length
                while time.monotonic() < end and not self.stop.wait(self.pause):
                    conn.sendall(b"a")
                conn.sendall(b"\r\n\r\n")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        _stop_serving(self.server, self.threads[0])  # no connection is taken after this
        for dripping in self.threads[1:]:
            dripping.join(10)
            assert not dripping.is_alive()


def test_the_webhook_timeout_bounds_a_whole_attempt_not_each_read() -> None:
    """The timeout was urllib's, per socket read: a receiver that answered a byte at a time held the
    delivery thread as long as it liked (every alert after it queued, then dropped)."""
    dripping = Dripping()
    try:
        sender = AlertSender(webhook=dripping.url, retries=1, backoff=0.01, timeout=0.5)
        started = time.monotonic()
        ok, channels = sender.send({"text": "hi"})
        elapsed = time.monotonic() - started
    finally:
        dripping.close()
    assert not ok and channels == {"webhook": "unreachable: timed out after 0.5s (2 attempts)"}, channels
    assert elapsed < 3, elapsed


def test_a_webhooks_retry_after_is_obeyed_up_to_a_bound() -> None:
    """A rate-limited chat webhook (429, Retry-After: 1) was asked again after the backoff's 0.01 s,
    4 times within moments: every retry refused, the alert failed. Its Retry-After is now waited for,
    up to RETRY_AFTER_MAX (a day asked for is not a day without alerts)."""
    times: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            times.append(time.monotonic())
            if len(times) == 1:
                self.send_response(429)
                self.send_header("Retry-After", "1")
            else:
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/h"
        sender = AlertSender(webhook=url, retries=2, backoff=0.01)
        assert sender.send({"text": "hi"}) == (True, {"webhook": "HTTP 204 after 2 attempts"})
    finally:
        server.shutdown()
        server.server_close()
    assert times[1] - times[0] >= 0.9
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from graven.drift.alerts import RETRY_AFTER_MAX, retry_after

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("7", now.timestamp()) == 7
    assert retry_after(" 86400 ", now.timestamp()) == RETRY_AFTER_MAX
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0
    for unreadable in (None, "", "soon", "-5", "1.5", "\u0661"):
        assert retry_after(unreadable, now.timestamp()) is None


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY"])
def test_a_proxy_urllib_cannot_read_is_named_without_its_password(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib's ValueError quotes the whole proxy URL it read (user and password): the outcome is
    printed by the watcher and kept in the append-only audit log."""
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # urllib ignores HTTP_PROXY under CGI
    monkeypatch.setenv(variable, "http:/user:S3CR3T-xyz@proxy.invalid:3128")
    sender = AlertSender(webhook="http://hooks.invalid/services/T0/B0/S3CR3T-path", retries=0)
    ok, channels = sender.send({"event": "drift"})
    assert not ok
    assert "S3CR3T" not in channels["webhook"]
    assert channels["webhook"].startswith("unreachable: ") and "proxy" in channels["webhook"]
