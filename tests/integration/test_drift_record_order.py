"""The order in which drift checks reach the database is not the order in which they were made: a
`graven drift` that waited for another writer, or `graven watch`'s checks held while the database was
busy (HeldChecks), are recorded after checks made later. The drift state of an environment is always
that of the check made last (by its own time), whoever records it and in whatever order; an older check
that found drift the state does not hold is kept in the history as `superseded`, never as the state;
and a held check is dropped only for something really newer (a newer recorded check, a deployment
that may have switched `current` after it), never for a deployment that is still in progress, nor
for one that switched nothing after it (refused, failed before its switch, or a killed deployer's
row that a later command settled)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from test_drift_watch import tamper

from graven.service.context import Context
from graven.service.drift_check import check
from graven.service.drift_quick import record_clean
from graven.service.drift_records import record_check
from graven.service.drift_report import DriftReport
from graven.service.drift_watch import HeldChecks
from helpers_deploy import BASE_FILES, World, opened_up


def repair(world: World) -> None:
    main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
    with opened_up(main):
        main.write_bytes(BASE_FILES["app/main.py"])


def look(ctx: Context) -> DriftReport:
    """One check of staging, not recorded (what a check has in hand before it records)."""
    (report,) = check(ctx, ["staging"], record=False)
    return report


def cli_records(ctx: Context, report: DriftReport) -> None:
    """What `graven drift` does with its check once the database lets it write."""
    if not record_clean(ctx, report):
        record_check(ctx, report)


def watcher_records(ctx: Context, report: DriftReport) -> int:
    """What `graven watch` does with a check it held while the database was busy."""
    held = HeldChecks()
    held.add(report)
    return held.record(ctx, report.env, wait=0.5)


def state(ctx: Context) -> Any:
    with ctx.db.connect() as conn:
        return conn.execute(
            "SELECT digest, keys, count, since, checked_at FROM drift_state WHERE env = 'staging'"
        ).one_or_none()


def events(ctx: Context) -> list[tuple[str, str, str]]:
    """(event, result, time) of staging's found / resolved rows, in the order they were recorded."""
    with ctx.db.connect() as conn:
        return [
            (r.event, r.result, r.time)
            for r in conn.execute(
                "SELECT event, result, time FROM drift_events WHERE env = 'staging'"
                " AND event IN ('found', 'resolved') ORDER BY id"
            )
        ]


def drift_entries(ctx: Context) -> list[tuple[str, str]]:
    with ctx.db.connect() as conn:
        entries = [json.loads(e) for (e,) in conn.execute("SELECT entry FROM log_entries ORDER BY idx")]
    return [(e["result"], e["reason"]) for e in entries if e["event"] == "drift"]


# -- 1. the state is the newest check's ------------------------------------------------------------


def test_an_older_drift_recorded_after_a_newer_clean_check_is_history_not_the_state(world: World) -> None:
    assert world.deploy(world.build(), "staging").ok
    ctx = world.ctx()
    tamper(world, b"# gone soon\n")
    older = look(ctx)  # `graven drift` saw the drift, then waited for the database
    repair(world)
    newer = look(ctx)  # the watcher saw it repaired, and recorded first
    assert not older.clean and newer.clean and older.checked_at < newer.checked_at
    assert watcher_records(ctx, newer) == 1
    cli_records(ctx, older)
    now = state(ctx)
    assert (json.loads(now.keys), now.count, now.since) == ([], 0, None)
    assert now.checked_at == newer.checked_at
    # what the older check found is kept, with its own time, as what it is: not the state
    assert events(ctx) == [("found", "superseded", older.checked_at)]
    ((result, reason),) = drift_entries(ctx)
    assert result == "superseded"
    assert "app/main.py" in reason and older.checked_at in reason and newer.checked_at in reason
    assert "\n" not in reason
    # the next check sees it clean as recorded: no event
    cli_records(ctx, look(ctx))
    assert [e[:2] for e in events(ctx)] == [("found", "superseded")]
    assert ctx.audit.verify().ok


def test_an_older_clean_check_recorded_after_a_newer_drift_does_not_resolve_it(world: World) -> None:
    assert world.deploy(world.build(), "staging").ok
    ctx = world.ctx()
    older = look(ctx)  # clean
    tamper(world, b"# stays\n")
    newer = look(ctx)
    assert older.clean and not newer.clean
    assert watcher_records(ctx, newer) == 1
    cli_records(ctx, older)
    now = state(ctx)
    assert json.loads(now.keys) == [["app/main.py", "modified"]]
    assert now.checked_at == newer.checked_at and now.since == newer.checked_at
    assert events(ctx) == [("found", "drift", newer.checked_at)]  # never "resolved"
    assert [r for r, _ in drift_entries(ctx)] == ["found"]


def test_an_older_check_that_found_what_the_state_holds_adds_nothing(world: World) -> None:
    assert world.deploy(world.build(), "staging").ok
    ctx = world.ctx()
    tamper(world, b"# x\n")
    older = look(ctx)
    newer = look(ctx)
    cli_records(ctx, newer)
    cli_records(ctx, older)
    assert state(ctx).checked_at == newer.checked_at
    assert events(ctx) == [("found", "drift", newer.checked_at)]


# -- 2. what readers of drift_events rely on ---------------------------------------------------------


def test_the_state_changes_are_in_time_order_whatever_order_checks_are_recorded_in(world: World) -> None:
    """Per environment, the rows that change the state (found with result drift, resolved with result
    clean) are recorded in the order of their checks' times, so the last of them is the state; rows
    recorded late that are not the state say so (result superseded) and carry their check's time."""
    assert world.deploy(world.build(), "staging").ok
    ctx = world.ctx()
    tamper(world, b"# one\n")
    first = look(ctx)
    repair(world)
    second = look(ctx)
    extra = (world.env_dir("staging") / "current").resolve() / "app/extra.py"
    with opened_up(extra.parent):
        extra.write_bytes(b"evil()\n")
    third = look(ctx)
    with opened_up(extra.parent):
        extra.unlink()
    fourth = look(ctx)
    assert [r.clean for r in (first, second, third, fourth)] == [False, True, False, True]
    for report in (first, third, second, fourth):  # third waited less for the database than second
        cli_records(ctx, report)
    changes = [r for r in events(ctx) if r[1] in ("drift", "clean")]
    assert changes == [
        ("found", "drift", first.checked_at),
        ("found", "drift", third.checked_at),
        ("resolved", "clean", fourth.checked_at),
    ]
    assert [t for _, _, t in changes] == sorted(t for _, _, t in changes)
    assert json.loads(state(ctx).keys) == [] and state(ctx).checked_at == fourth.checked_at
    # a history in the order things were seen: by time, then id
    with ctx.db.connect() as conn:
        times = [
            r.time
            for r in conn.execute("SELECT time FROM drift_events WHERE env = 'staging' ORDER BY time, id")
        ]
    assert times == sorted(times)


# -- 3. what supersedes a held check -------------------------------------------------------------------


def _die_after_the_switch(world: World, digest: str) -> None:
    """A deployer killed right after its switch: a pending deployment, ``digest`` live on disk."""
    _die_at(world, digest, "deploy:switched")
    assert world.live("staging") == digest


def _die_at(world: World, digest: str, stage: str) -> None:
    """A deployer of ``digest`` killed at ``stage`` (a pending deployment from deploy:pending-recorded
    on: just before its switch, or after it)."""
    from graven.service.context import NullReporter
    from graven.service.deploy import DeployOptions, deploy

    pid = os.fork()
    if pid == 0:
        try:

            class _Die(NullReporter):
                def progress(self, name: str, done: int, total: int | None) -> None:
                    if name == stage:
                        os.kill(os.getpid(), signal.SIGKILL)

            with world.ctx(reporter=_Die()) as ctx:  # the world's database (GRAVEN_DB_URL, if set)
                deploy(ctx, digest, "staging", DeployOptions(root=str(world.root)))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)


def test_a_held_check_of_a_deployment_in_progress_is_recorded(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    _die_after_the_switch(world, v2)
    ctx = world.ctx()
    tamper(world, b"# in the new release\n")
    report = look(ctx)
    assert report.digest == v2 and "in progress" in (report.note or "")
    assert watcher_records(ctx, report) == 1
    now = state(ctx)
    assert now is not None, "the held check was dropped although nothing newer superseded it"
    assert now.digest == v2 and now.checked_at == report.checked_at
    assert json.loads(now.keys) == [["app/main.py", "modified"]]
    assert events(ctx) == [("found", "drift", report.checked_at)]
    ((result, reason),) = drift_entries(ctx)
    assert result == "found" and f"(checked at {report.checked_at})" in reason  # recorded late


def test_a_held_check_is_dropped_once_a_deployment_completed_after_it(world: World) -> None:
    """Even when what went live after it is its release again (a deployment, then a rollback)."""
    from graven.service.deploy import rollback

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    ctx = world.ctx()
    tamper(world, b"# before the deployments\n")
    report = look(ctx)  # held: the database was busy
    assert report.digest == v1
    assert world.deploy(v2, "staging").ok
    assert rollback(world.ctx(), "staging", world.options(reason="back")).ok
    assert world.live("staging") == v1
    assert watcher_records(ctx, report) == 1  # taken from what is held ...
    assert state(ctx) is None  # ... and not recorded: it describes what was there before
    assert events(ctx) == []


def test_a_held_check_is_dropped_once_a_pending_deployment_it_saw_was_settled(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    _die_after_the_switch(world, v2)
    ctx = world.ctx()
    tamper(world, b"# in the new release\n")
    report = look(ctx)
    assert report.digest == v2
    v3 = world.version(3)
    assert world.deploy(v3, "staging").ok  # settles the pending one, then deploys v3
    assert watcher_records(ctx, report) == 1
    assert state(ctx) is None and events(ctx) == []


def _deploy_that_switches_nothing(world: World, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A deployment of a new version that takes the lock (and settles what a killed deployer left
    pending), then never reaches its switch: refused by policy (the environment is held) or failed
    while its release was made (a full disk). Neither writes a deployments row of its own."""
    from graven.errors import BackendError, PolicyError
    from graven.service import deploy as deploy_module
    from graven.service.environments import hold

    v3 = world.version(3)
    if how == "refused":
        hold(world.ctx(), "staging", "freeze")
        with pytest.raises(PolicyError, match="held"):
            world.deploy(v3, "staging")
    else:

        def full(*_args: Any, **_kwargs: Any) -> Any:
            raise BackendError("cannot write the release: No space left on device")

        monkeypatch.setattr(deploy_module, "ensure_release", full)
        with pytest.raises(BackendError, match="No space left"):
            world.deploy(v3, "staging")


def _rows(ctx: Context) -> list[tuple[str, str, str, str | None]]:
    with ctx.db.connect() as conn:
        return [
            (r.digest, r.result, r.started_at, r.finished_at)
            for r in conn.execute(
                "SELECT digest, result, started_at, finished_at FROM deployments WHERE env = 'staging'"
                " ORDER BY id"
            )
        ]


@pytest.mark.parametrize("how", ["refused", "failed before its switch"])
@pytest.mark.parametrize("killed", [None, "deploy:pending-recorded", "deploy:switched"])
def test_a_held_check_is_recorded_after_a_deployment_that_switched_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, killed: str | None, how: str
) -> None:
    """The drift a held check found is recorded when what came after it changed nothing that is live:
    a deployment refused by policy or failed before its switch (no row of its own), even when it
    settled, under its lock, a deployment whose deployer was killed before the check (its row then
    ``interrupted``, with the time it was settled: after the check, though whatever it switched, it
    switched before). Dropped as superseded, the drift of a release still live went unrecorded."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    if killed is not None:
        _die_at(world, world.version(2), killed)
    ctx = world.ctx()
    tamper(world, b"# drifted\n")
    report = look(ctx)  # held: the database was busy
    assert not report.clean
    before = _rows(ctx)
    _deploy_that_switches_nothing(world, monkeypatch, how)
    after = _rows(ctx)
    assert [row[:3] for row in after] == [
        row[:3] if row[1] != "pending" else (*row[:1], "interrupted", row[2]) for row in before
    ]  # no new row; a pending one settled
    if killed is not None:
        assert after[-1][3] is not None and after[-1][3] > report.checked_at  # settled after the check
    assert world.live("staging") == report.digest
    assert watcher_records(ctx, report) == 1
    now = state(ctx)
    assert now is not None, "the drift of the live release was dropped, though nothing was switched"
    assert now.digest == report.digest and now.checked_at == report.checked_at
    assert json.loads(now.keys) == [["app/main.py", "modified"]]
    assert events(ctx) == [("found", "drift", report.checked_at)]
    # the next check finds the same drift: nothing more recorded
    cli_records(ctx, look(ctx))
    assert events(ctx) == [("found", "drift", report.checked_at)]


@pytest.mark.parametrize("stage", ["deploy:pending-recorded", "deploy:switched"])
def test_a_held_check_is_dropped_once_a_deployment_started_after_it_even_one_killed(
    world: World, stage: str
) -> None:
    """A deployment that took the lock after the check and was killed (its row still pending) may have
    switched ``current``: killed before its switch or after it, its row cannot tell, so the check of
    the release before it records nothing (the next check records what is there)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    ctx = world.ctx()
    tamper(world, b"# before the deployment\n")
    report = look(ctx)  # held
    assert report.digest == v1 and not report.clean
    _die_at(world, world.version(2), stage)
    assert watcher_records(ctx, report) == 1
    assert state(ctx) is None and events(ctx) == []


def test_a_held_check_is_dropped_after_a_deployment_whose_switch_failed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch that failed (a full disk) leaves a failed row (and, as ``current`` was not renamed,
    no automatic rollback); whether ``current`` was renamed before the failure, the row does not
    say: taken as switched."""
    from helpers_deploy import fail_switch_to

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    ctx = world.ctx()
    tamper(world, b"# before the deployment\n")
    report = look(ctx)  # held
    v2 = world.version(2)
    fail_switch_to(monkeypatch, v2)
    assert not world.deploy(v2, "staging").ok
    assert world.live("staging") == v1
    assert [row[:2] for row in _rows(ctx)] == [(v1, "ok"), (v2, "failed")]
    assert watcher_records(ctx, report) == 1
    assert state(ctx) is None and events(ctx) == []


def test_a_state_row_an_alert_made_claims_no_check(world: World) -> None:
    """An alert recorded before any check of the environment makes its drift_state row (what was
    alerted); that row's time is no check's, so a check made before the alert was recorded still
    becomes the state."""
    from graven.core.drift import make_alert
    from graven.service.drift_records import record_alert

    assert world.deploy(world.build(), "staging").ok
    ctx = world.ctx()
    tamper(world, b"# x\n")
    report = look(ctx)
    alert = make_alert(
        "drift",
        env="staging",
        path=report.path,
        digest=report.digest,
        commit=report.commit,
        name=report.name,
        time=report.checked_at,
        differences=report.differences,
        alerted=frozenset(),
    )
    record_alert(ctx, alert, ok=True, channels={"command": "ok"})
    assert state(ctx).checked_at == ""
    cli_records(ctx, report)
    now = state(ctx)
    assert json.loads(now.keys) == [["app/main.py", "modified"]] and now.checked_at == report.checked_at
    assert events(ctx) == [("found", "drift", report.checked_at)]
