"""The order in which drift checks reach the database is not the order in which they were made: a
`graven drift` that waited for another writer, or `graven watch`'s checks held while the database was
busy (HeldChecks), are recorded after checks made later. The drift state of an environment is always
that of the check made last (by its own time), whoever records it and in whatever order; an older check
that found drift the state does not hold is kept in the history as `superseded`, never as the state;
and a held check is dropped only for something really newer (a newer recorded check, a deployment
that completed after it), never for a deployment that is still in progress."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from test_drift_watch import tamper

from graven.service.context import Context
from graven.service.drift_check import check
from graven.service.drift_quick import record_clean
from graven.service.drift_records import record_check
from graven.service.drift_report import DriftReport
from graven.service.drift_watch import HeldChecks
from helpers_deploy import BASE_FILES, World


def repair(world: World) -> None:
    main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
    main.write_bytes(BASE_FILES["app/main.py"])
    main.chmod(0o444)
    main.parent.chmod(0o555)


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
    extra.write_bytes(b"evil()\n")
    third = look(ctx)
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
    from graven.home import Home
    from graven.service.context import NullReporter
    from graven.service.deploy import DeployOptions, deploy

    pid = os.fork()
    if pid == 0:
        try:

            class _Die(NullReporter):
                def progress(self, stage: str, done: int, total: int | None) -> None:
                    if stage == "deploy:switched":
                        os.kill(os.getpid(), signal.SIGKILL)

            with Context(home=Home(root=world.home), reporter=_Die()) as ctx:
                deploy(ctx, digest, "staging", DeployOptions(root=str(world.root)))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert world.live("staging") == digest


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
