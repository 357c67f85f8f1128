"""What `graven watch` writes to the audit log: nothing at all while nothing drifts (with or without
--heal, fast and full checks, a restarted watcher), and for one drift that --heal repairs exactly six
entries, each a distinct event (README "Drift detection", docs/formats/drift-v1.md): the drift found,
the heal started and its outcome, the drift resolved, and one entry per alert delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import Watcher, tamper, wait_for

from graven.drift.watch import WatchOptions
from helpers_deploy import World


def log_entries(world: World) -> list[dict[str, Any]]:
    with world.ctx().db.connect() as conn:
        return [json.loads(entry) for (entry,) in conn.execute("SELECT entry FROM log_entries ORDER BY idx")]


def drift_events(world: World) -> list[tuple[str, str, str]]:
    with world.ctx().db.connect() as conn:
        return [
            (r.env, r.event, r.result)
            for r in conn.execute("SELECT env, event, result FROM drift_events ORDER BY id")
        ]


def checks(watcher: Watcher, env: str, mode: str | None = None) -> int:
    docs = [json.loads(line) for line in list(watcher.lines)]
    return sum(
        1
        for doc in docs
        if doc["type"] == "check" and doc["env"] == env and (mode is None or doc["mode"] == mode)
    )


def alerts_sent(path: Path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["event"] for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("heal", [False, True], ids=["watch", "watch-heal"])
def test_rounds_without_drift_write_nothing_to_the_log(world: World, tmp_path: Path, heal: bool) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert world.deploy(digest, "prod").ok
    before = log_entries(world)
    alerts = tmp_path / "alerts.jsonl"
    options = WatchOptions(
        interval=0.1,
        full_every=0.3,
        heal=heal,
        alert_command=f"cat >> {alerts}; echo >> {alerts}",
        metrics_port=0,
        as_json=True,
    )
    for _restart in range(2):  # a restarted watcher starts with a full check of each: nothing either
        watcher = Watcher(world, options)
        try:
            for env in ("staging", "prod"):
                for mode, count in (("fast", 5), ("full", 2)):

                    def done(w: Watcher = watcher, e: str = env, m: str = mode, n: int = count) -> bool:
                        return checks(w, e, m) >= n

                    assert wait_for(done)
        finally:
            watcher.close()
        assert not any(json.loads(line)["type"] in ("alert", "heal") for line in watcher.lines)
    assert log_entries(world) == before
    assert drift_events(world) == []
    assert alerts_sent(alerts) == []


def test_a_healed_drift_writes_six_distinct_entries_once(world: World, tmp_path: Path) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert world.deploy(digest, "prod").ok
    before = len(log_entries(world))
    tamper(world, b"evil()\n")  # before the watcher starts: its first check finds it, nothing races
    alerts = tmp_path / "alerts.jsonl"
    watcher = Watcher(
        world,
        WatchOptions(
            interval=0.1,
            full_every=3600,
            heal=True,
            alert_command=f"cat >> {alerts}; echo >> {alerts}",
            as_json=True,
        ),
    )
    try:
        assert wait_for(lambda: alerts_sent(alerts) == ["drift", "resolved"])
        assert wait_for(lambda: len(log_entries(world)) >= before + 6)
        done = checks(watcher, "staging")
        assert wait_for(lambda: checks(watcher, "staging") >= done + 10)  # clean rounds after it
        assert wait_for(lambda: checks(watcher, "prod") >= 10)
    finally:
        watcher.close()
    new = log_entries(world)[before:]
    assert [(e["event"], e["result"], e["env"], e["artifact"]) for e in new] == [
        ("drift", "found", "staging", digest),  # what drifted, when, before anything changed
        ("heal", "started", "staging", digest),  # logged before heal changes the environment
        ("heal", "ok", "staging", digest),  # what heal restored, checked clean after
        ("drift", "resolved", "staging", digest),  # the drift state is clean again
        ("drift", "alert-sent", "staging", digest),  # the operator was told of the drift ...
        ("drift", "alert-sent", "staging", digest),  # ... and of its end
    ]
    assert new[0]["reason"].endswith(": app/main.py") and "modified" in new[0]["reason"]
    assert new[1]["reason"].startswith("restoring ") and new[2]["reason"].startswith("restored ")
    assert new[4]["reason"].startswith("drift alert: ") and new[5]["reason"].startswith("resolved alert: ")
    assert [(env, event) for env, event, _ in drift_events(world)] == [
        ("staging", "found"),
        ("staging", "heal"),
        ("staging", "resolved"),
        ("staging", "alert"),
        ("staging", "alert"),
    ]
    assert world.ctx().audit.verify().ok  # the log is whole: each entry in the Merkle tree


def test_watch_heal_never_recreates_an_environment_whose_directory_is_gone(world: World) -> None:
    """An environment on a file system that is not mounted (its mount point empty) or removed whole:
    --heal wrote the whole release back wherever PATH led, onto the file system under the mount point."""
    import shutil

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    gone = world.env_dir("staging")
    for path in sorted(gone.rglob("*"), reverse=True):  # read-only releases: writable first
        if not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(gone)
    watcher = Watcher(world, WatchOptions(interval=0.1, full_every=3600, heal=True, as_json=True))
    try:

        def refused() -> bool:
            return any(
                json.loads(line)["type"] == "heal" and "holds no .graven" in json.loads(line).get("error", "")
                for line in watcher.lines
            )

        assert wait_for(refused)
    finally:
        watcher.close()
    assert not gone.exists()
    assert not any(json.loads(line).get("ok") for line in watcher.lines if json.loads(line)["type"] == "heal")
