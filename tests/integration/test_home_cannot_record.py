"""When GRAVEN_HOME cannot take a write (a full disk, a read-only mount), what changes an environment
must not change it without a record: a review filled the home's filesystem at every level and found a
deploy that exited 1 with its release live and unrecorded, and a heal that changed the environment and
then failed to record it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from graven.errors import BackendError
from graven.service.drift import check
from graven.service.drift_heal import heal
from graven.service.environments import load_state
from helpers_deploy import World, env_toml


def _full_at_success(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object, **_kwargs: object) -> bool:
        raise BackendError("database error: database or disk is full")

    monkeypatch.setattr("graven.service.deploy.record_success", full)


def test_a_deploy_whose_success_cannot_be_recorded_switches_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    with monkeypatch.context() as patch:
        _full_at_success(patch)
        with pytest.raises(BackendError) as caught:
            world.deploy(v2, "staging")
    message = str(caught.value)
    assert "passed its checks in staging but could not be recorded (database error: database or" in message
    assert f"switched back to {v1[7:19]}" in message and "\n" not in message
    assert world.live("staging") == v1  # exit 1: what was live stays live
    with world.ctx().db.connect() as conn:
        state = load_state(conn, "staging")
    assert state is not None and state.live_digest == v1
    (report,) = check(world.ctx(), ["staging"])
    assert report.clean
    again = world.deploy(v2, "staging")  # space again: the same deploy goes through
    assert again.ok and world.live("staging") == v2


def test_a_first_deploy_that_cannot_be_recorded_leaves_nothing_live(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    _full_at_success(monkeypatch)
    with pytest.raises(BackendError, match=r"could not be recorded .*; nothing is live"):
        world.deploy(v1, "staging")
    assert world.live("staging") is None


def test_a_heal_in_a_home_that_cannot_be_written_changes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    release = world.env_dir("staging") / "current"
    main = release / "app" / "main.py"
    app = main.parent
    app.chmod(0o755)
    main.chmod(0o644)
    main.write_text("print('tampered')\n")
    (app / "extra.py").write_text("planted\n")

    # a read-only GRAVEN_HOME as graven.db sees one: SQLite cannot switch to WAL, nobody may write there
    def no_wal(_raw: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr("graven.db._set_wal", no_wal)
    monkeypatch.setattr("graven.db._SqliteDatabase._cannot_write", lambda _self: True)
    with pytest.raises(BackendError, match="directory is read-only for this user"):
        heal(world.ctx(), "staging")
    assert main.read_text() == "print('tampered')\n"  # not restored behind the record's back
    assert (app / "extra.py").exists()


def test_an_unrecorded_success_names_an_unhealthy_switch_back(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    flag = tmp_path / "up"
    flag.write_text("")
    health = {"health": f"test -e {flag}", "health_interval": 0, "health_retries": 0}
    v1 = world.version(1, env_toml("app", {"staging": {"path": "staging", **health}}))
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)

    def full(*_args: object, **_kwargs: object) -> bool:
        flag.unlink()  # ... and then the old release's, when switched back to, fails
        raise BackendError("database error: database or disk is full")

    monkeypatch.setattr("graven.service.deploy.record_success", full)
    with pytest.raises(BackendError, match=r"switched back to .*, which failed its checks too .*unhealthy"):
        world.deploy(v2, "staging")  # v2's health check passes; then the record cannot be written
    assert world.live("staging") == v1


def test_an_unrecorded_override_is_still_logged_as_an_override(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest went live because a requirement was bypassed, if only until it was switched back: the
    ``override`` entry is written as after a failed health check (it was missing)."""
    v1 = world.build()
    _full_at_success(monkeypatch)
    with pytest.raises(BackendError, match="could not be recorded"):
        world.deploy(v1, "prod", override=True, reason="staging is down")
    events = [(e.event, e.env, e.reason) for e, _ in world.ctx().audit.entries()]
    assert ("override", "prod", "requires staging bypassed: staging is down") in events
