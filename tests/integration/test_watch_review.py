"""`graven watch` under stress: an alert command's huge output, a hanging webhook, an environment that
stops being live, a metrics port in use, database errors in the loop."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_drift_watch import Watcher as DriftWatcher
from test_drift_watch import wait_for

from graven.drift.alerts import DROPPED, NOT_DELIVERED, QUEUE_MAX, AlertDispatcher, AlertSender
from graven.drift.watch import WatchOptions
from graven.errors import BackendError, DatabaseReplacedError, InputError
from graven.service import drift_watch
from graven.service.drift import run_watch
from helpers_deploy import World, append_to, opened_up


class Watcher(DriftWatcher):
    """The watcher of test_drift_watch, with its JSON lines sorted by type."""

    def docs(self, kind: str) -> list[dict[str, Any]]:
        return json_docs(self.lines, kind)


class Receiver:
    """A webhook receiver on 127.0.0.1 that takes everything."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        alerts = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                alerts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tamper(world: World, data: bytes) -> None:
    append_to((world.env_dir("staging") / "current").resolve() / "app/main.py", data)


def alert_rows(world: World) -> list[tuple[str, dict[str, Any]]]:
    with world.ctx().db.connect() as conn:
        return [
            (r.result, json.loads(r.detail))
            for r in conn.execute("SELECT result, detail FROM drift_events WHERE event = 'alert' ORDER BY id")
        ]


def json_docs(lines: list[str], kind: str) -> list[dict[str, Any]]:
    """The JSON lines of ``kind`` among ``lines`` (read while the watcher may still add to them)."""
    return [doc for doc in map(json.loads, list(lines)) if doc["type"] == kind]


@contextlib.contextmanager
def watching(
    world: World, opts: WatchOptions, out: Callable[[str], None]
) -> Iterator[tuple[threading.Thread, list[BaseException]]]:
    """``run_watch`` with the output ``out`` in a thread, and what it raised; stopped and joined on
    leaving."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_watch(world.ctx(), opts, stop, out=out)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread, errors
    finally:
        stop.set()
        thread.join(timeout=30)


# -- 1. an alert command's output ---------------------------------------------------------------------


def test_alert_command_output_is_capped_and_escaped() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sender = AlertSender(command="head -c 300000000 /dev/zero; printf 'end\\033[31m'; exit 3")
    ok, channels = sender.send({"text": "hi"})
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert not ok
    outcome = channels["command"]
    assert outcome.startswith("exit 3: ")
    assert outcome.endswith("end\\x1b[31m")  # the tail, non-printable characters escaped
    assert "\\x00" in outcome
    assert all(c.isprintable() for c in outcome)
    assert len(outcome) < 300
    assert grown < 100_000, f"the output was buffered: {grown} KiB more"


def test_alert_command_prefers_stderr_and_still_gets_stdin(tmp_path: Path) -> None:
    seen = tmp_path / "stdin.json"
    sender = AlertSender(command=f"cat > {seen}; echo out; echo 'err\tline' >&2; exit 1")
    ok, channels = sender.send({"text": "hi"})
    assert not ok and channels == {"command": "exit 1: err\\tline"}
    assert json.loads(seen.read_text()) == {"text": "hi"}
    assert AlertSender(command="cat >/dev/null").send({"a": 1}) == (True, {"command": "exit 0"})


def test_alert_command_timeout_kills_it() -> None:
    sender = AlertSender(command="sleep 120 & sleep 120", command_timeout=0.5)
    started = time.monotonic()
    ok, channels = sender.send({"text": "hi"})
    assert not ok and channels["command"].startswith("timed out after")
    # not the command's 120 s; generous (it needs ~0.5 s) as a busy machine is slow at times
    assert time.monotonic() - started < 30


# -- 2. a hanging webhook -----------------------------------------------------------------------------


class HangingSender:
    """Stands for a webhook that never answers (until released)."""

    configured = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def send_each(self, payload: dict[str, Any]) -> dict[str, tuple[bool, str]]:
        self.entered.set()
        self.release.wait(30)
        return {"webhook": (True, "HTTP 200")}

    def kill_running(self) -> None:
        """No command runs: a webhook is abandoned, not killed."""


def test_the_alert_queue_is_bounded_and_undelivered_alerts_are_reported() -> None:
    sender = HangingSender()
    warnings: list[str] = []
    dispatcher = AlertDispatcher(sender, warn=warnings.append)  # type: ignore[arg-type]
    try:
        dispatcher.submit({"env": "staging", "event": "drift", "n": 0}, context=0)
        assert sender.entered.wait(5)
        for n in range(1, QUEUE_MAX + 51):
            dispatcher.submit({"env": "staging", "event": "drift", "n": n}, context=n)
        assert dispatcher.dropped == 50
        assert len(warnings) == 50 and "dropped the oldest alert (staging drift); 50 dropped" in warnings[-1]
        left = dispatcher.close(timeout=0.2)
        assert left == QUEUE_MAX + 1  # the one in flight and the queue
        results = dispatcher.results()
        dropped, stopped = results[:50], results[50:]
        assert [d.context for d in dropped] == list(range(1, 51))  # the oldest were dropped ...
        assert all(not d.ok and d.channels == {"queue": DROPPED} for d in dropped)  # ... and reported
        assert [d.context for d in stopped] == [0, *range(51, QUEUE_MAX + 51)]
        assert all(not d.ok and d.channels == {"queue": NOT_DELIVERED} for d in stopped)
    finally:
        sender.release.set()
    time.sleep(0.1)
    assert dispatcher.results() == []  # the abandoned one is not reported twice


def test_an_alert_dropped_from_a_full_queue_comes_back_as_a_failed_delivery() -> None:
    """A hanging webhook filled the queue: the alert dropped for a newer one only went to stderr, and
    the watcher, which records what results() returns, wrote no `alert-failed` for it: the audit log
    showed a drift found and no alert ever tried for it."""
    sender = HangingSender()
    dispatcher = AlertDispatcher(sender, warn=lambda _: None, maxsize=2)  # type: ignore[arg-type]
    try:
        dispatcher.submit({"env": "staging", "event": "drift"}, context="in flight")
        assert sender.entered.wait(5)
        for context in ("first", "second", "third"):
            dispatcher.submit({"env": "staging", "event": "resolved"}, context=context)
        (delivery,) = dispatcher.results()
        assert delivery.context == "first"
        assert not delivery.ok and delivery.channels == {"queue": DROPPED}
    finally:
        sender.release.set()
        dispatcher.close(timeout=5)


def test_alerts_left_at_stop_are_reported_and_recorded_as_failed(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    hang = socket.socket()  # accepts connections (the backlog) and never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    url = f"http://127.0.0.1:{hang.getsockname()[1]}/alerts"
    watcher = Watcher(world, WatchOptions(interval=60, webhook=url, as_json=True, full_every=3600))
    try:
        assert wait_for(lambda: len(watcher.docs("check")) >= 1)
        tamper(world, b"# hang\n")
        assert wait_for(lambda: len(watcher.docs("alert")) >= 1)
        time.sleep(0.2)  # the delivery is in flight
    finally:
        watcher.close(timeout=30)
        hang.close()
    deliveries = watcher.docs("delivery")
    assert [(d["event"], d["ok"], d["channels"]) for d in deliveries] == [
        ("drift", False, {"queue": NOT_DELIVERED})
    ]
    assert alert_rows(world) == [("failed", {"event": "drift", "channels": {"queue": NOT_DELIVERED}})]


# -- 3. an environment that stops being live ----------------------------------------------------------


def scrape(port: int) -> list[tuple[str, dict[str, str]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [(s.name, s.labels) for family in text_string_to_metric_families(text) for s in family.samples]


def test_an_environment_no_longer_live_is_forgotten(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=0.2, metrics_port=0, as_json=True))
    try:
        port = watcher.ready["metrics_port"]
        assert wait_for(lambda: len(watcher.docs("check")) >= 1)
        assert any(labels.get("env") == "staging" for _, labels in scrape(port))
        with world.ctx().db.begin() as conn:
            conn.execute("UPDATE deploy_envs SET live_digest = NULL WHERE name = 'staging'")
        assert wait_for(lambda: watcher.docs("unwatch") != [])
        assert [d["env"] for d in watcher.docs("unwatch")] == ["staging"]
        assert [labels for _, labels in scrape(port) if labels.get("env") == "staging"] == []
        checks = len(watcher.docs("check"))
        time.sleep(0.5)
        assert len(watcher.docs("check")) == checks  # no longer checked
    finally:
        watcher.close()


# -- 4. a metrics port in use -------------------------------------------------------------------------


def test_a_metrics_port_in_use_is_an_input_error(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    alert_threads = sum(1 for t in threading.enumerate() if t.name == "graven-alerts")
    try:
        with pytest.raises(InputError, match=f"--metrics-port {port}") as raised:
            run_watch(
                world.ctx(),
                WatchOptions(interval=60, metrics_port=port, webhook="http://127.0.0.1:9/x"),
                threading.Event(),
                out=lambda line: None,
            )
        assert "\n" not in str(raised.value)
    finally:
        busy.close()
    assert sum(1 for t in threading.enumerate() if t.name == "graven-alerts") == alert_threads


# -- 5. database errors in the loop -------------------------------------------------------------------


def test_database_errors_in_the_loop_are_survived(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    failures = {"live_targets": 1, "alerted_keys": 1, "record_alert": 1}
    calls = {"live_targets": 0}

    def flaky(name: str, real: Callable[..., Any], *, after: int = 0) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > after and failures[name] > 0:
                failures[name] -= 1
                raise BackendError(f"database is locked ({name})")
            return real(*args, **kwargs)

        return call

    from graven.service.drift_records import alerted_keys, record_alert  # what drift_watch calls
    from graven.service.drift_targets import live_targets

    monkeypatch.setattr(drift_watch, "live_targets", flaky("live_targets", live_targets, after=1))
    monkeypatch.setattr(drift_watch, "alerted_keys", flaky("alerted_keys", alerted_keys))
    monkeypatch.setattr(drift_watch, "record_alert", flaky("record_alert", record_alert))
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: failures["live_targets"] == 0 and failures["alerted_keys"] == 0)
        assert wait_for(lambda: len(watcher.docs("check")) >= 3)
        tamper(world, b"# drift\n")
        assert wait_for(lambda: [a["event"] for a in receiver.alerts] == ["drift"])
        assert wait_for(lambda: len(alert_rows(world)) == 1)  # recorded on the second try
        assert failures["record_alert"] == 0
        assert watcher.thread.is_alive()
    finally:
        watcher.close()
        receiver.close()
    errors = [d["error"] for d in watcher.docs("error")]
    assert len(errors) == 2 and all("database is locked" in e for e in errors)
    # the alert's record that failed: said once on stderr, and once recorded
    assert len(watcher.warnings) == 1 and "database is locked (record_alert)" in watcher.warnings[0]
    assert [d["alerts"] for d in watcher.docs("recorded")] == [1]
    assert alert_rows(world) == [("ok", {"event": "drift", "channels": {"webhook": "HTTP 200"}})]


# -- 6. the database replaced or removed under the watcher --------------------------------------------


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_database_replaced_or_removed_stops_the_watcher(world: World, how: str) -> None:
    """A watcher whose graven.db was replaced (a restore moved into place) said "check failed ...
    start it again; trying again" twice a second, forever: the file it opened is gone for good. One
    whose graven.db was removed said "nothing is live there now" and went on watching nothing. It
    stops instead, with the database layer's error (a service manager starts it again on the new
    file)."""
    import sqlite3

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=0.1, as_json=True))
    path = watcher.ctx.home.db_path
    try:
        assert wait_for(lambda: len(watcher.docs("check")) >= 2)
        if how == "replaced":
            copy = path.with_name("copy.db")
            source = sqlite3.connect(path)
            source.execute(f"VACUUM INTO '{copy}'")
            source.close()
            copy.replace(path)
        else:
            for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
                path.with_name(name).unlink(missing_ok=True)
        assert wait_for(lambda: not watcher.thread.is_alive(), timeout=10)
    finally:
        watcher.stop.set()
        watcher.thread.join(timeout=15)
    assert isinstance(watcher.error, DatabaseReplacedError)
    assert "start it again" in str(watcher.error)
    assert watcher.docs("unwatch") == []  # never "nothing is live there now"


# -- 7. the output gone at the stop (a closed terminal: SIGHUP) ---------------------------------------


def test_an_output_gone_at_the_stop_still_records_what_was_left(world: World) -> None:
    """SIGHUP from a closed terminal or ssh session: the stop's last lines (an alert not delivered)
    could not be written (EIO), and that error ended the watcher before it recorded them: the audit
    log lost the alert's outcome. Everything is recorded; the error still ends the command (the CLI
    never exits 0 when its output was lost)."""
    import errno

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    lines: list[str] = []
    gone = threading.Event()

    def out(line: str) -> None:
        if gone.is_set():
            raise OSError(errno.EIO, "Input/output error")
        lines.append(line)

    opts = WatchOptions(interval=60, alert_command="sleep 30", as_json=True, full_every=3600)
    with watching(world, opts, out) as (thread, errors):
        try:
            assert wait_for(lambda: len(json_docs(lines, "check")) >= 1)
            tamper(world, b"# gone\n")
            assert wait_for(lambda: len(json_docs(lines, "alert")) >= 1)
            time.sleep(0.2)  # the alert command is at work
        finally:
            gone.set()  # before the stop
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OSError) and errors[0].errno == errno.EIO
    assert alert_rows(world) == [("failed", {"event": "drift", "channels": {"queue": NOT_DELIVERED}})]


def test_an_output_gone_while_running_still_records_every_delivery_it_was_saying(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven watch | head`: the output gone (EPIPE) while the watcher says the deliveries finished
    in one round ended it before it took the rest of them from the dispatcher: the drift's alert was
    recorded, the resolution's was lost (not recorded, not even counted). Both are recorded; the
    error still ends the command."""
    import errno

    from graven.service.drift import heal

    real_results = AlertDispatcher.results
    finished: list[Any] = []

    def two_at_once(self: AlertDispatcher) -> list[Any]:  # both deliveries end in the same round
        finished.extend(real_results(self))
        if len(finished) < 2:
            return []
        out, finished[:] = list(finished), []
        return out

    monkeypatch.setattr(AlertDispatcher, "results", two_at_once)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    lines: list[str] = []

    def out(line: str) -> None:
        if json.loads(line)["type"] == "delivery":  # the reader went away
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        lines.append(line)

    opts = WatchOptions(interval=60, alert_command="cat >/dev/null", as_json=True, full_every=3600)
    with watching(world, opts, out) as (thread, errors):
        assert wait_for(lambda: len(json_docs(lines, "check")) >= 1)
        tamper(world, b"# drift\n")
        assert wait_for(lambda: len(json_docs(lines, "alert")) >= 1)
        heal(world.ctx(), "staging")
        assert wait_for(lambda: not thread.is_alive(), timeout=30)  # ended by the lost output
    assert [d["event"] for d in json_docs(lines, "alert")] == ["drift", "resolved"]
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)
    assert [(r, d["event"]) for r, d in alert_rows(world)] == [("ok", "drift"), ("ok", "resolved")]


def test_an_output_gone_while_saying_an_alert_still_delivers_and_records_it(world: World) -> None:
    """`graven watch | head` whose reader went away just as the watcher said an alert: the alert was
    said first and handed to the alert command after, so the error ended the watcher before anyone
    was alerted (and nothing recorded it: a restarted watcher alerted it late). It is handed over
    first: delivered and recorded at the stop; the error still ends the command."""
    import errno

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    lines: list[str] = []
    alerted = world.root / "alerted"

    def out(line: str) -> None:
        if json.loads(line)["type"] == "alert":  # the reader went away
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        lines.append(line)

    opts = WatchOptions(interval=60, alert_command=f"cat > {alerted}", as_json=True, full_every=3600)
    with watching(world, opts, out) as (thread, errors):
        assert wait_for(lambda: len(json_docs(lines, "check")) >= 1)
        tamper(world, b"# drift\n")
        assert wait_for(lambda: not thread.is_alive(), timeout=30)  # ended by the lost output
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)
    assert json.loads(alerted.read_text())["event"] == "drift"
    assert [(r, d["event"]) for r, d in alert_rows(world)] == [("ok", "drift")]


# -- 8. the environment directory's own entries: releases, current, config --------------------------


def first_drift_seen(
    world: World,
    change: Callable[[], None],
    prepare: Callable[[list[str]], None] | None = None,
    settled: tuple[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Watch (periodic checks an hour apart, so that only a notification can wake one), wait for the
    first check, ``prepare`` (given the output lines), ``change``, and wait for a check that finds
    drift: its (path, kind) differences. With ``settled``, the first check that finds that one (a
    change of two steps may be seen half-way first). The watcher reported no error."""
    lines: list[str] = []
    opts = WatchOptions(interval=3600, as_json=True, full_every=3600)

    def found() -> list[list[tuple[str, str]]]:
        drifted = [d for d in json_docs(lines, "check")[seen:] if not d["clean"]]
        each = [[(x["path"], x["kind"]) for x in d["differences"]] for d in drifted]
        return [f for f in each if settled is None or settled in f]

    with watching(world, opts, lines.append) as (_thread, errors):
        assert wait_for(lambda: len(json_docs(lines, "check")) >= 1)
        if prepare is not None:
            prepare(lines)
        seen = len(json_docs(lines, "check"))
        change()
        assert wait_for(lambda: bool(found()), timeout=10)
    assert errors == []
    return found()[0]


def test_releases_replaced_by_a_link_is_checked_at_once(world: World) -> None:
    """PATH/releases renamed away and a symlink to it put in its place (the drift kind `releases`): the
    notifications of PATH other than `current` and `config` were all dropped as graven's own, and the
    release itself did not change, so the watcher found it only at its next periodic check (60 s by
    default)."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")

    def replace_releases() -> None:
        (env / "releases").rename(env / "releases.old")
        (env / "releases").symlink_to("releases.old")

    # two steps: a check between them sees the releases gone ('.' removed), then the link
    seen = first_drift_seen(world, replace_releases, settled=("releases", "releases"))
    assert seen == [("releases", "releases")]


def repoint_config(world: World) -> None:
    """Point staging's config link at prod's config (a `config` drift, seen through PATH's watch only)."""
    config = world.env_dir("staging") / "config"
    config.unlink()
    config.symlink_to("current/config/prod.toml")


def test_a_config_link_repointed_is_checked_at_once_when_path_is_a_symlink(world: World) -> None:
    """An environment whose PATH is a symlink to its directory (which deploy takes): PATH was watched
    with IN_DONT_FOLLOW, which watches no symlink (ENOTDIR, taken for a directory gone meanwhile), so no
    change of `current` or `config` woke a check: only the periodic one found them."""
    world.root.mkdir()
    (world.root / "staging-data").mkdir()
    world.env_dir("staging").symlink_to("staging-data")
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert first_drift_seen(world, lambda: repoint_config(world)) == [("config", "config")]


def test_a_config_link_repointed_is_checked_at_once_in_a_replaced_environment_directory(
    world: World,
) -> None:
    """PATH replaced by a new directory that took over its releases and .graven (renamed: the release
    keeps its inode) and links like its own: the watcher went on watching the old directory, so a later
    change of `current` or `config` in the new one waited for the periodic check."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok

    def replace_path(lines: list[str]) -> None:
        env = world.env_dir("staging")
        old = env.with_name("staging-old")
        env.rename(old)
        env.mkdir()
        for name in ("releases", ".graven"):
            (old / name).rename(env / name)
        for name in ("current", "config"):
            (env / name).symlink_to((old / name).readlink())
        # the watcher takes the new directory (read again at least every 2 s), and finds it clean
        time.sleep(2.5)
        assert wait_for(lambda: json_docs(lines, "check")[-1]["clean"], timeout=10)
        time.sleep(0.3)

    found = first_drift_seen(world, lambda: repoint_config(world), prepare=replace_path)
    assert found == [("config", "config")]


def test_a_directory_the_watch_limit_leaves_unwatched_later_is_warned(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory made in a watched release while the watcher ran, which inotify could not watch (the
    user's fs.inotify.max_user_watches reached: ENOSPC), was never said: the failure waited in the
    notifier's list for a redeploy, and changes in that directory silently waited for the periodic
    check."""
    from graven.drift.notify import InotifyNotifier

    real_add = InotifyNotifier._add

    def limited(self: InotifyNotifier, key: str, directory: str, recursive: bool) -> bool:
        if directory.endswith("/late"):
            return False  # ENOSPC: the limit is reached
        return real_add(self, key, directory, recursive)

    monkeypatch.setattr(InotifyNotifier, "_add", limited)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=60, as_json=True, full_every=3600))
    try:
        assert watcher.ready["backend"] == "InotifyNotifier"
        assert wait_for(lambda: watcher.checks() >= 1)
        assert watcher.warnings == []
        release = (world.env_dir("staging") / "current").resolve()
        with opened_up(release):
            (release / "late").mkdir()

        def said() -> bool:
            return any("inotify watch limit" in w for w in watcher.warnings)

        assert wait_for(said, 10), watcher.warnings
        assert any("late" in w and "periodic checks still run" in w for w in watcher.warnings)
    finally:
        watcher.close()


def test_an_environment_whose_check_lock_stays_held_is_said_not_checked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever held PATH/.graven/lock.check (a deployment whose hook hangs; an intruder with the
    deployer's rights, before changing the release) kept the watcher from checking the environment
    for as long as it liked, and the watcher said nothing: each check was put off 0.2 s, silently, and
    the drift made meanwhile was neither said nor alerted."""
    import fcntl
    import os

    monkeypatch.setattr(drift_watch, "LOCKED_WARN", 0.5)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = Watcher(world, WatchOptions(interval=60, as_json=True, full_every=3600))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        fd = os.open(world.env_dir("staging") / ".graven" / "lock.check", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            append_to((world.env_dir("staging") / "current").resolve() / "app/main.py", b"evil()\n")
            assert wait_for(lambda: bool(watcher.docs("error")), 5), watcher.lines
            time.sleep(1.5)
            (said,) = watcher.docs("error")  # once while it lasts
            assert said["env"] == "staging" and "not checked for" in said["error"], said
            assert "is being changed by" in said["error"], said
        finally:
            os.close(fd)
        assert wait_for(lambda: any(not d["clean"] for d in watcher.docs("check")), 5)
        assert wait_for(lambda: len(watcher.docs("alert")) >= 3, 5)
        assert [d["event"] for d in watcher.docs("alert")] == ["check-failed", "check-resumed", "drift"]
    finally:
        watcher.close()


def test_a_check_refused_by_policy_is_a_failed_check_not_a_held_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher took every PolicyError of a check for its lock held by a deployment: a check refused
    because no trusted key signed the artifact any more was put off 0.2 s, again and again, and said
    as 'not checked ... being changed' at best. Only a held lock is waited for; any other refusal is
    the environment's failed check, said at once."""
    from graven.errors import UntrustedSignerError

    digest = world.build()
    assert world.deploy(digest, "staging").ok

    def untrusted(*_args: object, **_kwargs: object) -> object:
        raise UntrustedSignerError("only keys this home does not trust signed it")

    monkeypatch.setattr(drift_watch, "check_target", untrusted)
    watcher = Watcher(world, WatchOptions(interval=60, as_json=True, full_every=3600))
    try:
        assert wait_for(lambda: bool(watcher.docs("error")), 5), watcher.lines
        said = watcher.docs("error")[0]
        assert said["error"] == "only keys this home does not trust signed it", said
    finally:
        watcher.close()
