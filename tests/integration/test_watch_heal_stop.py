"""The stop of `graven watch --heal` (SIGTERM, SIGINT, SIGHUP: its stop event) abandons a heal at work
where that leaves what is live no worse than the heal found it (graven.service.drift_heal): between two
paths of a heal in place, before a rebuilt release directory is renamed into place, or in the full check
after the heal. A heal that ran to its end first held the watcher past a service manager's stop timeout
on a large release. The abandoned heal is recorded as failed, saying why, with one `heal` line."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import Watcher, wait_for

from graven.drift.watch import WatchOptions
from graven.service.drift_heal import HEAL_STAGE, REBUILD_STAGE, STOPPED, UNCHECKED
from helpers_deploy import World, tree_problems

FILES = 6  # files the heal writes back one by one
SMALL = 600  # files of a release rebuilt whole: its progress is said every 256


class StoppedWatcher(Watcher):
    """A watcher (--heal) whose stop is asked from the heal's own progress: at the first file it wrote
    back (``when`` "writing"), at the first progress of a rebuilt release ("rebuilding"), or when the
    full check after the heal starts ("checking")."""

    def __init__(self, world: World, when: str) -> None:
        self.when = when
        self.healed = False  # the heal wrote every file
        self.asked_at: str | None = None
        super().__init__(world, WatchOptions(as_json=True, heal=True, interval=3600))

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if self.stop.is_set():
            return
        if stage == HEAL_STAGE and done == total:
            self.healed = True
        if (
            (self.when == "writing" and stage == HEAL_STAGE and done == 1)
            or (self.when == "rebuilding" and stage == REBUILD_STAGE)
            or (self.when == "checking" and self.healed and stage.startswith("hashing the files"))
        ):
            self.asked_at = f"{stage} {done}/{total}"
            self.stop.set()


def _tamper(path: Path, data: bytes) -> None:
    """Append ``data`` to the file (through its read-only mode, as root or as its owner)."""
    path.parent.chmod(0o755)
    path.chmod(0o644)
    with path.open("ab") as handle:
        handle.write(data)


def _heal_rows(world: World) -> list[tuple[str, dict[str, Any]]]:
    with world.ctx().db.connect() as conn:
        rows = conn.execute("SELECT result, detail FROM drift_events WHERE event = 'heal' ORDER BY id")
        return [(r[0], json.loads(r[1])) for r in rows]


def _heal_log(world: World) -> list[str]:
    with world.ctx().db.connect() as conn:
        rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx")
        entries = [json.loads(r[0]) for r in rows]
    return [e.get("result", "") for e in entries if e.get("event") == "heal"]


def _heal_lines(watcher: Watcher) -> list[dict[str, Any]]:
    return [d for d in map(json.loads, watcher.lines) if d["type"] == "heal"]


def _left_behind(root: Path) -> list[str]:
    """Temporary files and directories of a heal or a rebuild, anywhere under the environment."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith((".graven-heal-", ".tmp-"))
    )


def _heals_what_is_left(world: World) -> None:
    """The next watcher heals what the stopped heal left (if anything) and finds the release clean."""
    again = Watcher(world, WatchOptions(as_json=True, heal=True, interval=3600))
    try:

        def clean() -> bool:
            return any(d["type"] == "check" and d["clean"] for d in map(json.loads, list(again.lines)))

        assert wait_for(clean)
    finally:
        again.close()


@pytest.mark.parametrize("when", ["writing", "checking"])
def test_a_stop_abandons_a_heal_in_place(world: World, when: str) -> None:
    world.commit({f"app/part{i}.py": f"PART = {i}\n" for i in range(FILES)})
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    current = os.readlink(env / "current")
    release = env / current
    for i in range(FILES):
        _tamper(release / f"app/part{i}.py", b"evil()\n")
    watcher = StoppedWatcher(world, when)
    watcher.thread.join(timeout=30)
    assert not watcher.thread.is_alive(), "the watcher did not stop"
    assert watcher.error is None
    assert watcher.asked_at is not None, "the heal never got there"
    restored = sum(
        (release / f"app/part{i}.py").read_bytes() == f"PART = {i}\n".encode() for i in range(FILES)
    )
    error = STOPPED if when == "writing" else UNCHECKED
    if when == "writing":
        assert restored == 1, f"the heal went on after the stop ({restored} of {FILES} files written)"
    else:
        assert tree_problems(release, world.manifest(digest)) == []  # done, but not checked after
    assert os.readlink(env / "current") == current
    assert stat.S_IMODE((release / "app").stat().st_mode) == 0o555  # set back, as on any failure
    assert _left_behind(env) == []
    assert [(line["ok"], line["error"]) for line in _heal_lines(watcher)] == [(False, error)]
    assert [(result, detail["error"]) for result, detail in _heal_rows(world)] == [("failed", error)]
    assert _heal_log(world) == ["started", "failed"]
    _heals_what_is_left(world)
    assert tree_problems(release, world.manifest(digest)) == []


def test_a_stop_abandons_a_rebuild_before_its_rename(world: World) -> None:
    world.commit({f"app/small/f{i}.py": f"N = {i}\n" for i in range(SMALL)})
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    current = os.readlink(env / "current")
    release = env / current
    for path in [release, *release.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(release)
    watcher = StoppedWatcher(world, "rebuilding")
    watcher.thread.join(timeout=30)
    assert not watcher.thread.is_alive(), "the watcher did not stop"
    assert watcher.error is None
    assert watcher.asked_at is not None, "the rebuild never got there"
    assert not os.path.lexists(release)  # still missing, as it was: never half a release
    assert os.readlink(env / "current") == current
    assert _left_behind(env) == []  # the temporary directory is removed
    assert [(line["ok"], line["error"]) for line in _heal_lines(watcher)] == [(False, STOPPED)]
    assert [result for result, _detail in _heal_rows(world)] == ["failed"]
    _heals_what_is_left(world)
    assert tree_problems(release, world.manifest(digest)) == []


class LockedAtStopWatcher(StoppedWatcher):
    """A StoppedWatcher whose database another writer locks as the stop is asked, until the test ends."""

    def __init__(self, world: World, when: str) -> None:
        self.locker = sqlite3.connect(world.home / "graven.db", isolation_level=None, check_same_thread=False)
        super().__init__(world, when)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        asked = self.stop.is_set()
        super().progress(stage, done, total)
        if not asked and self.stop.is_set():
            self.locker.execute("BEGIN IMMEDIATE")


@pytest.mark.parametrize("when", ["writing", "checking"])
def test_a_stopped_heal_that_cannot_be_recorded_does_not_hold_the_stop(world: World, when: str) -> None:
    """The record of the abandoned heal waited up to 60 s for a busy database: past systemd's stop
    timeout (90 s by default, often less), the watcher was killed. It waits as the watcher's own records
    do; not written then, one warning says so and the watcher stops as usual."""
    world.commit({f"app/part{i}.py": f"PART = {i}\n" for i in range(FILES)})
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = world.env_dir("staging") / os.readlink(world.env_dir("staging") / "current")
    for i in range(FILES):
        _tamper(release / f"app/part{i}.py", b"evil()\n")
    watcher = LockedAtStopWatcher(world, when)
    try:
        began = time.monotonic()
        watcher.thread.join(timeout=30)
        assert not watcher.thread.is_alive(), "the watcher did not stop"
        assert watcher.asked_at is not None, "the heal never got there"
        assert time.monotonic() - began < 10, "the stop waited for the database"
        assert watcher.error is None
    finally:
        watcher.locker.close()
    error = STOPPED if when == "writing" else UNCHECKED
    assert [(line["ok"], line["error"]) for line in _heal_lines(watcher)] == [(False, error)]
    [warning] = [w for w in watcher.warnings if "not recorded" in w]
    assert "stopped heal of staging" in warning and "\n" not in warning
    assert _heal_rows(world) == []  # nothing could be written
    assert _heal_log(world) == ["started"]
    _heals_what_is_left(world)
    assert tree_problems(release, world.manifest(digest)) == []
