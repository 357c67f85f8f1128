"""`graven watch` while another writer holds the database: drift is alerted at once, the checks stay
short and the metrics fresh, and what was found is recorded once the database is free (in order,
once). Before, each check waited up to 60 s for the database and alerted nothing meanwhile."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import Receiver, Watcher, scrape, tamper, wait_for

from graven.drift.watch import WatchOptions
from graven.service.context import utc_now
from helpers_deploy import BASE_FILES, World, opened_up


@contextmanager
def write_locked(world: World) -> Iterator[None]:
    """Another writer holds graven.db's write lock (readers still read: WAL)."""
    conn = sqlite3.connect(world.home / "graven.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def recorded(world: World) -> list[tuple[str, str]]:
    """(event, result) of the log entries after the deployment: what drift recorded."""
    with world.ctx().db.connect() as conn:
        entries = [json.loads(e) for (e,) in conn.execute("SELECT entry FROM log_entries ORDER BY idx")]
    return [(e["event"], e["result"]) for e in entries if e["event"] in ("drift", "heal")]


def docs(watcher: Watcher, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in map(json.loads, list(watcher.lines)) if doc["type"] == kind]


def metric(port: int, name: str) -> float:
    return scrape(port)[(name, (("env", "staging"),))]


def test_drift_is_alerted_while_the_database_is_locked_and_recorded_once_it_is_free(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, metrics_port=0, as_json=True))
    try:
        port = watcher.ready["metrics_port"]
        assert wait_for(lambda: watcher.checks() >= 1)
        with write_locked(world):
            tamper(world, b"# while the database is locked\n")
            # while the lock is held (before: only after it, each check waiting 60 s to record); not
            # timed further, a busy machine is slow at times
            assert wait_for(lambda: receiver.events() == ["drift"], timeout=30)
            since, checks = time.time(), watcher.checks()
            assert wait_for(lambda: watcher.checks() >= checks + 3)  # each check bounded
            # the metric tells of a check that began after `since` (before: 60 s stale)
            assert metric(port, "graven_last_check_timestamp_seconds") >= since
            assert metric(port, "graven_pending_records") >= 2  # the drift found and its alert
            assert metric(port, "graven_drift_paths") == 1
            assert recorded(world) == []  # nothing could be written yet
            busy = [w for w in watcher.warnings if "database busy" in w]
            assert len(busy) == 1, watcher.warnings  # said once, not once per check
            assert "recorded when it is free" in busy[0]
            freed = utc_now()
        assert wait_for(lambda: docs(watcher, "recorded") != [])
        assert recorded(world) == [("drift", "found"), ("drift", "alert-sent")]
        assert metric(port, "graven_pending_records") == 0
        checks = watcher.checks()
        assert wait_for(lambda: watcher.checks() >= checks + 3)  # the watch goes on normally
        (done,) = docs(watcher, "recorded")
        assert done["alerts"] == 1 and done["checks"] >= 1
    finally:
        watcher.close()
        receiver.close()
    assert recorded(world) == [("drift", "found"), ("drift", "alert-sent")]  # never twice
    assert receiver.events() == ["drift"]
    assert [w for w in watcher.warnings if "database busy" in w] == busy
    with world.ctx().db.connect() as conn:
        rows = [
            (r.event, r.result) for r in conn.execute("SELECT event, result FROM drift_events ORDER BY id")
        ]
        state = conn.execute("SELECT keys, alerted FROM drift_state WHERE env = 'staging'").one()
    assert rows == [("found", "drift"), ("alert", "ok")]
    with world.ctx().db.connect() as conn:
        times = [r.time for r in conn.execute("SELECT time FROM drift_events ORDER BY id")]
    # when the check looked and when the alert was sent, not when the database took them
    assert times == sorted(times) and times[-1] < freed
    assert json.loads(state.keys) == json.loads(state.alerted) == [["app/main.py", "modified"]]
    assert world.ctx().audit.verify().ok


def test_a_drift_and_its_repair_while_locked_are_both_recorded_in_order(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        with write_locked(world):
            tamper(world, b"# drift\n")
            assert wait_for(lambda: receiver.events() == ["drift"], timeout=5)
            main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
            with opened_up(main):
                main.write_bytes(BASE_FILES["app/main.py"])  # repaired by hand
            assert wait_for(lambda: receiver.events() == ["drift", "resolved"], timeout=5)
        assert wait_for(lambda: docs(watcher, "recorded") != [])
    finally:
        watcher.close()
        receiver.close()
    assert recorded(world) == [
        ("drift", "found"),
        ("drift", "resolved"),
        ("drift", "alert-sent"),
        ("drift", "alert-sent"),
    ]
    assert world.ctx().audit.verify().ok


def test_heal_waits_for_the_drift_found_to_be_recorded(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, heal=True, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        with write_locked(world):
            tamper(world, b"evil()\n")
            assert wait_for(lambda: receiver.events() == ["drift"], timeout=5)
            time.sleep(0.5)
            assert docs(watcher, "heal") == []  # its `heal started` would come before the drift found
        assert wait_for(lambda: receiver.events() == ["drift", "resolved"])
        assert wait_for(lambda: len(recorded(world)) >= 6)
    finally:
        watcher.close()
        receiver.close()
    entries = recorded(world)
    # the drift alert's record waits for the drift found; it comes before or after the heal (as the
    # round that recorded the drift found ended), the resolved one after the drift resolved
    assert [e for e in entries if e[1] != "alert-sent"] == [
        ("drift", "found"),
        ("heal", "started"),
        ("heal", "ok"),
        ("drift", "resolved"),
    ]
    assert entries.count(("drift", "alert-sent")) == 2 and entries[-1] == ("drift", "alert-sent")
    assert entries[0] == ("drift", "found")
    assert world.ctx().audit.verify().ok


def test_a_watcher_stopped_while_locked_leaves_the_drift_to_the_next_check(
    world: World, tmp_path: Path
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    alerts = tmp_path / "alerts.jsonl"
    options = WatchOptions(interval=0.2, alert_command=f"cat >> {alerts}; echo >> {alerts}", as_json=True)
    watcher = Watcher(world, options)
    with write_locked(world):
        try:
            assert wait_for(lambda: watcher.checks() >= 1)
            tamper(world, b"# drift\n")
            assert wait_for(lambda: alerts.exists() and alerts.read_text().strip() != "", timeout=5)
        finally:
            watcher.close()
        assert any("were not recorded" in w for w in watcher.warnings), watcher.warnings
    assert recorded(world) == []
    watcher = Watcher(world, options)  # the next watcher finds it again, records it, alerts it again
    try:
        assert wait_for(lambda: len(recorded(world)) >= 2)
    finally:
        watcher.close()
    assert recorded(world) == [("drift", "found"), ("drift", "alert-sent")]
    events = [json.loads(line)["event"] for line in alerts.read_text().splitlines() if line.strip()]
    assert events == ["drift", "drift"]  # at least once: what was alerted is recorded with the drift


def test_a_heal_whose_start_cannot_be_recorded_changes_nothing_and_does_not_stall(world: World) -> None:
    """The watcher's heal records its start with the watcher's short wait: a database another writer
    holds made it wait up to 60 s (the check loop with it); now it stops at once, having changed
    nothing, and runs once the database is free."""
    from graven.service.drift_heal import HealNotStartedError, heal

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    tamper(world, b"evil()\n")
    main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
    ctx = world.ctx()
    with write_locked(world):
        started = time.monotonic()
        with pytest.raises(HealNotStartedError, match="the heal did not start"):
            heal(ctx, "staging", start_wait=0.2)
        # not the 60 s wait; generous (the heal needs ~1 s on a loaded machine): not a timing test
        assert time.monotonic() - started < 30
        assert main.read_bytes().endswith(b"evil()\n")  # nothing changed
    assert recorded(world) == []
    assert heal(ctx, "staging", start_wait=0.2).ok
    assert main.read_bytes() == BASE_FILES["app/main.py"]
    assert recorded(world) == [("heal", "started"), ("heal", "ok")]


def test_the_watcher_tries_a_heal_again_when_the_database_did_not_let_it_start(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import graven.service.drift_watch as watch_service
    from graven.service.drift_heal import heal as real  # what watch_service calls

    waits: list[float | None] = []

    def heal_beside_a_writer(ctx: Any, env: str, **kwargs: Any) -> Any:
        waits.append(kwargs.get("start_wait"))
        if len(waits) > 1:
            return real(ctx, env, **kwargs)
        with write_locked(world):  # another writer got in between the drift found and the heal
            return real(ctx, env, **kwargs)

    monkeypatch.setattr(watch_service, "heal", heal_beside_a_writer)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, heal=True, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        tamper(world, b"evil()\n")
        assert wait_for(lambda: receiver.events() == ["drift", "resolved"], timeout=10)
    finally:
        watcher.close()
        receiver.close()
    assert waits[:2] == [watch_service.DB_WAIT, watch_service.DB_WAIT]
    assert [w for w in watcher.warnings if "database busy" in w and "heal did not start" in w] != []
    assert [e for e in recorded(world) if e[1] != "alert-sent"] == [
        ("drift", "found"),
        ("heal", "started"),
        ("heal", "ok"),
        ("drift", "resolved"),
    ]
    assert world.ctx().audit.verify().ok
