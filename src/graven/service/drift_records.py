"""What drift writes to the database and the audit log: the drift state of each environment, its
``found`` / ``resolved`` events and the alerts sent (:func:`record_check`, :func:`record_alert`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from graven.core.drift import CHECK_EVENTS, Alert, Difference, keys_of, summarize
from graven.core.drift_order import GONE, OLDER, superseded_evidence
from graven.core.paths import display_path
from graven.model.logentry import LogEvent
from graven.service.context import Context, utc_now
from graven.service.drift_live import drift_state, place, still_live, write_drift_state

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.db import Connection
    from graven.service.drift_check import DriftReport  # drift_check imports this module

__all__ = ["DETAIL_LIMIT", "INSERT_EVENT", "alerted_keys", "reason_of", "record_alert", "record_check"]

_REASON_PATHS = 5
DETAIL_LIMIT = 1000  # differences kept in one drift_events row (the report itself lists all)


# -- recording --------------------------------------------------------------------------------------


def _keys_json(diffs: Sequence[Difference]) -> str:
    return json.dumps(
        sorted(
            [list(k) for k in keys_of(diffs)], key=lambda k: (k[0].encode("utf-8", "surrogateescape"), k[1])
        )
    )


def reason_of(diffs: Sequence[Difference]) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in summarize(diffs).items())
    paths = list(dict.fromkeys(d.path for d in diffs))
    shown = ", ".join(display_path(path) for path in paths[:_REASON_PATHS]) + (
        f" and {len(paths) - _REASON_PATHS} more" if len(paths) > 5 else ""
    )
    return f"{len(diffs)} difference{'s' if len(diffs) != 1 else ''} ({counts}): {shown}"


def _detail(diffs: Sequence[Difference]) -> str:
    return json.dumps([d.to_json() for d in diffs[:DETAIL_LIMIT]], sort_keys=True, separators=(",", ":"))


INSERT_EVENT = """INSERT INTO drift_events (env, digest, event, time, count, result, detail)
VALUES (:env, :digest, :event, :time, :count, :result, :detail)"""


_state = drift_state


def _insert_event(conn: Connection, report: DriftReport, *, event: str, time: str, result: str) -> None:
    conn.execute(
        INSERT_EVENT,
        {
            "env": report.env,
            "digest": report.digest,
            "event": event,
            "time": time,
            "count": len(report.differences),
            "result": result,
            "detail": _detail(report.differences),
        },
    )


def _log(ctx: Context, conn: Connection, report: DriftReport, reason: str, *, result: str) -> None:
    ctx.audit.append(
        conn,
        LogEvent(
            "drift",
            artifact=report.digest,
            commit=report.commit,
            env=report.env,
            reason=reason,
            result=result,
        ),
    )


def alerted_keys(ctx: Context, env: str) -> frozenset[tuple[str, str]]:
    """The (path, kind) pairs an alert was last sent for (a restarted watcher does not repeat it)."""
    if not ctx.home.has_database():
        return frozenset()
    with ctx.db.connect() as conn:
        row = _state(conn, env)
    if row is None:
        return frozenset()
    return frozenset((str(p), str(k)) for p, k in json.loads(row.alerted))


def record_check(
    ctx: Context, report: DriftReport, *, wait: float | None = None, late: bool = False
) -> str | None:
    """Remember what drifts, when ``report`` is the newest check of its environment; when that
    changed, record ``found`` or ``resolved`` and log it (one transaction). Returns the event
    recorded, if any.

    Checks reach the database in any order (``graven drift`` waits for another writer, ``graven
    watch`` holds its checks while the database is busy): the state is always the check made last,
    by its own time (:func:`graven.service.drift_live.place`). An older check never becomes the
    state; when it found drift that the state does not hold, it is kept in the history as event
    ``found`` with result ``superseded`` at its own time, and logged with result ``superseded``
    (returned: ``superseded``). A check that a deployment may have switched away from since (or of
    a release no longer live) records nothing. ``wait``: the seconds to wait for another writer
    (default 60; DatabaseBusyError after it, nothing written); ``late``: the report was held (its
    log entry says when it was made)."""
    keys = _keys_json(report.differences)
    now = report.checked_at or utc_now()
    event: str | None = None
    with ctx.db.begin(wait=wait) as conn:
        if not still_live(conn, report.env):  # retired while the check ran: nothing of it is recorded
            return None
        row = _state(conn, report.env)
        where = place(conn, report, row, checked_at=now)
        if where == GONE:
            return None
        before = row.keys if row is not None else "[]"
        if where == OLDER:
            if not superseded_evidence(keys, before):
                return None
            newer = row.checked_at if row is not None else "?"
            _insert_event(conn, report, event="found", time=now, result="superseded")
            reason = f"{reason_of(report.differences)}; checked at {now}, before the check recorded first"
            _log(ctx, conn, report, f"{reason} ({newer})", result="superseded")
            return "superseded"
        if keys != before:
            event = "found" if report.differences else "resolved"
            _insert_event(
                conn, report, event=event, time=now, result="drift" if report.differences else "clean"
            )
            reason = reason_of(report.differences) if report.differences else "matches its artifact again"
            _log(ctx, conn, report, f"{reason} (checked at {now})" if late else reason, result=event)
        since = None
        if report.differences:
            since = row.since if row is not None and row.since and before != "[]" else now
        values = {
            "env": report.env,
            "digest": report.digest,
            "keys": keys,
            "count": len(report.differences),
            "since": since,
            "checked_at": now,
        }
        write_drift_state(conn, values, exists=row is not None)
    return event


def record_alert(
    ctx: Context,
    alert: Alert,
    *,
    ok: bool,
    channels: dict[str, str],
    reached: bool | None = None,
    wait: float | None = None,
    time: str | None = None,
) -> None:
    """Record an alert that was sent (or failed to be), and what was alerted, with its log entry
    (``wait``: as for :func:`record_check`; ``time``: when its delivery ended, default now: a
    delivery ``graven watch`` held while the database was busy keeps its own time). What was alerted
    changes only with a delivery that ``reached`` a channel at least (default: ``ok``): one that
    reached none leaves out what it said first (its ``new`` differences; a ``resolved`` one leaves it
    all), so that a watcher sends it again, after a restart too."""
    reached = ok if reached is None else reached
    said = alert.differences if reached else tuple(d for d in alert.differences if d not in alert.new)
    alerted: str | None = json.dumps(
        sorted(
            [[d.path, d.kind] for d in said],
            key=lambda k: (k[0].encode("utf-8", "surrogateescape"), k[1]),
        )
        if alert.event == "drift"
        else []
    )
    if not reached and alert.event != "drift":
        alerted = None  # the drift it says resolved stays alerted: the resolution is still to say
    if alert.event in CHECK_EVENTS:
        alerted = None  # about the check, not the drift: what was alerted of it stays as it is
    summary = "; ".join(f"{name}: {outcome}" for name, outcome in channels.items()) or "no channel"
    with ctx.db.begin(wait=wait) as conn:
        if not still_live(conn, alert.env):  # retired while the alert was sent: nothing is recorded
            return
        conn.execute(
            INSERT_EVENT,
            {
                "env": alert.env,
                "digest": alert.digest,
                "event": "alert",
                "time": time or utc_now(),
                "count": len(alert.differences),
                "result": "ok" if ok else "failed",
                "detail": json.dumps({"event": alert.event, "channels": channels}, sort_keys=True),
            },
        )
        if alerted is not None:  # else: left as it is (a resolved alert not delivered)
            if _state(conn, alert.env) is None:  # checked_at '': no check is recorded (drift_live.place)
                conn.execute(
                    """INSERT INTO drift_state (env, digest, keys, count, since, checked_at, alerted)
                    VALUES (:env, :digest, '[]', 0, NULL, '', :alerted)""",
                    {"env": alert.env, "digest": alert.digest, "alerted": alerted},
                )
            else:
                conn.execute(
                    "UPDATE drift_state SET alerted = :alerted WHERE env = :env",
                    {"env": alert.env, "alerted": alerted},
                )
        ctx.audit.append(
            conn,
            LogEvent(
                "drift",
                artifact=alert.digest,
                commit=alert.commit,
                env=alert.env,
                reason=f"{alert.event} alert: {summary}",
                result="alert-sent" if ok else "alert-failed",
            ),
        )
