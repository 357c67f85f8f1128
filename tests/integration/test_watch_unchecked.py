"""`graven watch` alerts an environment it can no longer check (a store object lost or damaged, PATH
unreadable, its check lock held for long): once, not once per interval, and once more when it is
checked again. It printed an `error` line every interval and alerted nothing: an operator relying on
the alert channels never learned that the environment was no longer checked."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import wait_for
from test_watch_review import Receiver, Watcher, alert_rows, tamper

from graven.drift.watch import WatchOptions
from graven.service import drift_watch
from helpers_deploy import World


def damage_manifest(world: World, digest: str) -> tuple[Path, bytes]:
    """Flip a byte inside the manifest object of ``digest`` in its pack; (the pack, its bytes before)."""
    shutil.rmtree(world.home / "cache", ignore_errors=True)  # the parsed manifests: read the store
    pack = next(
        p
        for p in (world.home / "objects" / "pack").glob("*.pack")
        if bytes.fromhex(digest[7:]) in p.read_bytes()
    )
    before = pack.read_bytes()
    data = bytearray(before)
    at = data.find(bytes.fromhex(digest[7:]))
    data[at + 32 + 1 + 8 + 8 + 40] ^= 0xFF  # inside the record's payload
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    return pack, before


def events(receiver: Receiver) -> list[str]:
    return [a["event"] for a in receiver.alerts]


def test_a_damaged_store_object_is_alerted_once_and_its_recovery_too(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    pack, before = damage_manifest(world, digest)
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: len(watcher.docs("error")) >= 5), watcher.lines
        assert wait_for(lambda: len(receiver.alerts) >= 1)
        time.sleep(0.5)
        assert events(receiver) == ["check-failed"]  # one, not one per interval
        (alert,) = receiver.alerts
        assert alert["env"] == "staging" and alert["digest"] == digest
        assert alert["format"] == "graven.drift-alert/v1"
        assert alert["error"] == watcher.docs("error")[0]["error"], alert
        assert "staging" in alert["text"] and "not checked" in alert["text"].lower(), alert["text"]
        assert [d["event"] for d in watcher.docs("alert")] == ["check-failed"]
        pack.write_bytes(before)  # the store repaired
        shutil.rmtree(world.home / "cache", ignore_errors=True)
        assert wait_for(lambda: events(receiver) == ["check-failed", "check-resumed"], 10), watcher.lines
        assert "staging" in receiver.alerts[1]["text"]
        assert receiver.alerts[1]["error"] is None
        # drift after it is alerted as usual: the check alerts left what was alerted as it was
        tamper(world, b"# drift\n")
        assert wait_for(lambda: events(receiver)[-1:] == ["drift"], 10)
        assert wait_for(lambda: len(alert_rows(world)) == 3)
    finally:
        watcher.close()
        receiver.close()
    assert [(r, d["event"]) for r, d in alert_rows(world)] == [
        ("ok", "check-failed"),
        ("ok", "check-resumed"),
        ("ok", "drift"),
    ]


def test_an_undelivered_check_failed_alert_is_sent_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drift_watch, "ALERT_RETRY", 0.3)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    damage_manifest(world, digest)
    flag = world.home.parent / "fail-alerts"
    flag.write_text("")
    sent = world.home.parent / "sent"
    command = f"test -e {flag} && exit 1; cat >> {sent}; echo >> {sent}"
    watcher = Watcher(world, WatchOptions(interval=0.1, alert_command=command, as_json=True))
    try:
        assert wait_for(lambda: len([d for d in watcher.docs("delivery") if not d["ok"]]) >= 1)
        flag.unlink()
        assert wait_for(lambda: sent.exists() and sent.read_text().strip() != "", 10), watcher.lines
        time.sleep(1.0)
    finally:
        watcher.close()
    said = [json.loads(line) for line in sent.read_text().splitlines() if line.strip()]
    assert [a["event"] for a in said] == ["check-failed"]


def test_a_check_lock_held_for_long_is_alerted(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_watch, "LOCKED_WARN", 0.5)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        fd = os.open(world.env_dir("staging") / ".graven" / "lock.check", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            assert wait_for(lambda: events(receiver) == ["check-failed"], 10), watcher.lines
            time.sleep(1.0)
            assert events(receiver) == ["check-failed"]
            assert "not checked for" in receiver.alerts[0]["error"]
        finally:
            os.close(fd)
        assert wait_for(lambda: events(receiver) == ["check-failed", "check-resumed"], 10)
    finally:
        watcher.close()
        receiver.close()


def test_alerts_of_an_environment_that_was_checked_all_along_are_unchanged(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    receiver = Receiver()
    watcher = Watcher(world, WatchOptions(interval=0.2, webhook=receiver.url, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 3)
        time.sleep(0.3)
    finally:
        watcher.close()
        receiver.close()
    assert receiver.alerts == []
    docs: list[dict[str, Any]] = watcher.docs("alert")
    assert docs == []
