"""`graven watch`: a file write becomes exactly one alert (webhook, command), its repair exactly one
`resolved`, metrics are served, --heal restores the release, SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graven.drift.watch import WatchOptions
from graven.service.drift import heal, run_watch
from helpers_deploy import World, append_to, tree_problems


class Receiver:
    """A webhook receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        alerts = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                alerts.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def events(self) -> list[str]:
        return [a["event"] for _, a in self.alerts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class Watcher:
    """run_watch on a thread of the test (stopped, and joined, at the end)."""

    def __init__(self, world: World, opts: WatchOptions) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self.ready: dict[str, Any] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.ctx = world.ctx(reporter=self)

        def run() -> None:
            try:
                run_watch(self.ctx, opts, self.stop, out=self.lines.append, on_ready=self.ready.update)
            except BaseException as exc:  # surfaced by close()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert wait_for(lambda: bool(self.ready) or self.error is not None)

    def warn(self, message: str) -> None:
        """The watcher's warnings (the CLI's stderr), kept."""
        self.warnings.append(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """No progress is drawn."""

    def checks(self) -> int:
        return sum(1 for line in self.lines if json.loads(line)["type"] == "check")

    def close(self, timeout: float = 15.0) -> None:
        self.stop.set()
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the watcher did not stop"
        if self.error is not None:
            raise self.error


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def tamper(world: World, data: bytes) -> None:
    """Append to app/main.py of staging's live release: only its content changes."""
    append_to((world.env_dir("staging") / "current").resolve() / "app/main.py", data)


def test_one_alert_per_drift_one_resolve_and_metrics(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(
        world,
        WatchOptions(interval=60, webhook=receiver.url, metrics_port=0, as_json=True, full_every=3600),
    )
    try:
        port = watcher.ready["metrics_port"]
        assert wait_for(lambda: watcher.checks() >= 1)
        assert receiver.alerts == []  # a clean start alerts nothing
        tamper(world, b"# 1\n")
        assert wait_for(lambda: len(receiver.alerts) >= 1)
        first = receiver.alerts[0][1]
        assert first["event"] == "drift" and first["env"] == "staging" and first["digest"] == digest
        assert first["paths"] == ["app/main.py"] and "modified" in first["kinds"]
        assert "DRIFT in staging" in first["text"] and first["commit"] and first["time"]
        checks = watcher.checks()
        tamper(world, b"# 2\n")  # the same path drifts again: no new alert
        assert wait_for(lambda: watcher.checks() > checks)
        metrics = scrape(port)
        assert metrics[("graven_drift_paths", (("env", "staging"),))] == 1
        assert metrics[("graven_checks_total", (("env", "staging"), ("result", "drift")))] >= 1
        heal(world.ctx(), "staging")
        assert wait_for(lambda: receiver.events() == ["drift", "resolved"])
        time.sleep(0.3)
        assert receiver.events() == ["drift", "resolved"]
        metrics = scrape(port)
        assert metrics[("graven_drift_paths", (("env", "staging"),))] == 0
        assert metrics[("graven_checks_total", (("env", "staging"), ("result", "clean")))] >= 2
        assert metrics[("graven_last_check_timestamp_seconds", (("env", "staging"),))] > time.time() - 60
        commit = first["commit"]
        key = ("graven_release_info", (("commit", commit), ("digest", digest), ("env", "staging")))
        assert metrics[key] == 1
    finally:
        watcher.close()
        receiver.close()
    with world.ctx().db.connect() as conn:
        alerts = [
            (r.result, json.loads(r.detail)["event"])
            for r in conn.execute("SELECT result, detail FROM drift_events WHERE event = 'alert' ORDER BY id")
        ]
    assert alerts == [("ok", "drift"), ("ok", "resolved")]


def test_self_heal_and_a_dead_webhook(world: World, tmp_path: Path) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    log = tmp_path / "alerts.jsonl"
    watcher = Watcher(
        world,
        WatchOptions(
            interval=60,
            heal=True,
            alert_command=f"cat >> {log}; echo >> {log}",
            webhook="http://127.0.0.1:9/nobody",  # discard port: refused
            webhook_retries=1,
            webhook_backoff=0.01,
            as_json=True,
        ),
    )
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        tamper(world, b"evil()\n")

        def events() -> list[str]:
            text = log.read_text() if log.exists() else ""
            return [json.loads(line)["event"] for line in text.splitlines() if line.strip()]

        assert wait_for(lambda: events() == ["drift", "resolved"])
        release = world.env_dir("staging") / "current"
        assert tree_problems(release, world.manifest(digest)) == []
        assert wait_for(
            lambda: any('"type": "delivery"' in line and '"ok": false' in line for line in watcher.lines)
        )
    finally:
        watcher.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_ends_the_cli_watcher_cleanly(world: World, stop: signal.Signals) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = {**os.environ, "GRAVEN_HOME": str(world.home)}
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from graven.cli.main import main; raise SystemExit(main())",
            "watch",
            "staging",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "staging: clean" in line, line
            proc.send_signal(stop)  # SIGHUP: a closed ssh session; a clean stop too, never a kill
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_deployments_while_watching_raise_no_alarm(world: World) -> None:
    from graven.service.deploy import promote, rollback

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))

    def checked(digest: str, env: str = "staging") -> Callable[[], bool]:
        def seen() -> bool:
            for line in watcher.lines:
                doc = json.loads(line)
                if doc["type"] == "check" and doc["env"] == env and doc["digest"] == digest and doc["clean"]:
                    return True
            return False

        return seen

    try:
        assert wait_for(checked(v1))
        v2 = world.version(2)
        assert world.deploy(v2, "staging").ok
        assert wait_for(checked(v2))
        assert promote(world.ctx(), "staging", "prod", world.options()).ok
        assert wait_for(checked(v2, "prod"))
        assert rollback(world.ctx(), "staging", world.options()).ok
        assert wait_for(checked(v1))
        assert world.deploy(v1, "staging").ok  # the same digest again: its release is re-checked
        time.sleep(0.5)
        assert receiver.alerts == []
        assert not [line for line in watcher.lines if json.loads(line)["type"] in ("alert", "error")]
    finally:
        watcher.close()
        receiver.close()


def test_work_in_progress_under_the_deploy_lock_is_never_alerted(world: World) -> None:
    """A deploy or heal by another process holds the environment's lock while the release is half-way
    (here: a temporary file in it). The watcher waits for it instead of alerting, then finds it clean;
    a deployer never fails because a check holds the lock shared."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.lock import EnvLock, shared_lock

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    layout = EnvLayout(world.env_dir("staging"))
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        release = (layout.root / "current").resolve()
        stray = release / "app" / ".graven-heal-inprogress"
        lock = EnvLock(layout.lock, env="staging", actor="test", since="now")
        lock.acquire(wait=False)
        try:
            release.joinpath("app").chmod(0o755)
            stray.write_bytes(b"half-way")  # an inotify event: the watcher wants to check now
            before = watcher.checks()
            time.sleep(1.0)
            assert watcher.checks() == before  # postponed while the lock is held, not alerted
            stray.unlink()
            release.joinpath("app").chmod(0o555)
        finally:
            lock.release()
        assert wait_for(lambda: watcher.checks() > before)
        time.sleep(0.5)
        assert receiver.alerts == []
        # a check holding the lock shared never makes a deployer fail: the deployer waits for it
        held = threading.Event()

        def check_in_flight() -> None:
            with shared_lock(layout.lock, env="staging", wait=True):
                held.set()
                time.sleep(0.5)

        checker = threading.Thread(target=check_in_flight)
        checker.start()
        assert held.wait(5)
        started = time.monotonic()
        assert world.deploy(world.version(2), "staging").ok
        assert time.monotonic() - started >= 0.3  # it waited for the check in flight
        checker.join()
    finally:
        watcher.close()
        receiver.close()


class FlakyReceiver(Receiver):
    """A webhook receiver that answers 503 to its first ``failures`` requests, then 200."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.refused < outer.failures:
                    outer.refused += 1
                    self.send_response(503)
                else:
                    outer.alerts.append((time.monotonic(), json.loads(body)))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server.RequestHandlerClass = Handler


def test_an_alert_no_channel_took_is_sent_again_while_its_drift_lasts(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook down for longer than its retries lost the alert for good: what it said was taken as
    alerted, so the drift, still there, was never sent again (after a restart neither). It is now
    sent again after a check at its retry time, with what it said as new; a drift already alerted
    is not."""
    from graven.service import drift_watch

    monkeypatch.setattr(drift_watch, "ALERT_RETRY", 0.3)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = FlakyReceiver(failures=2)  # the first alert and its first retry are refused
    watcher = Watcher(world, WatchOptions(interval=60, webhook=receiver.url, webhook_retries=0, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        tamper(world, b"# 1\n")
        assert wait_for(lambda: len(receiver.alerts) >= 1)
        assert receiver.refused == 2
        alert = receiver.alerts[0][1]
        assert alert["event"] == "drift" and alert["paths"] == ["app/main.py"]
        assert [d["path"] for d in alert["new"]] == ["app/main.py"]
        checks = watcher.checks()
        assert wait_for(lambda: watcher.checks() >= checks + 1, timeout=5) is False  # nothing due
        assert receiver.events() == ["drift"]  # delivered once: not sent again
    finally:
        watcher.close()
        receiver.close()
    with world.ctx().db.connect() as conn:
        results = [
            r.result
            for r in conn.execute("SELECT result FROM drift_events WHERE event = 'alert' ORDER BY id")
        ]
    assert results == ["failed", "failed", "ok"]


def test_a_restarted_watcher_sends_again_what_no_channel_took(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    down = Watcher(
        world, WatchOptions(interval=60, webhook="http://127.0.0.1:9/nobody", webhook_retries=0, as_json=True)
    )
    try:
        assert wait_for(lambda: down.checks() >= 1)
        tamper(world, b"# 1\n")
        assert wait_for(lambda: any('"ok": false' in line for line in down.lines if '"delivery"' in line))
    finally:
        down.close()
    receiver = Receiver()
    up = Watcher(world, WatchOptions(interval=60, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: receiver.events() == ["drift"])
        assert [d["path"] for d in receiver.alerts[0][1]["new"]] == ["app/main.py"]
    finally:
        up.close()
        receiver.close()


def test_the_heal_line_counts_one_difference_in_the_singular(world: World) -> None:
    """The watcher said "healed 1 differences" after healing one changed file."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=60, heal=True))
    try:
        assert wait_for(lambda: any(": clean (" in line for line in watcher.lines))
        tamper(world, b"evil()\n")
        assert wait_for(lambda: any(": healed " in line for line in watcher.lines))
    finally:
        watcher.close()
    healed = [line for line in watcher.lines if ": healed " in line]
    assert healed and healed[0].endswith("staging: healed 1 difference"), healed
