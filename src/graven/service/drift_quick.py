"""The default drift check answered by the snapshot of the last clean check (:mod:`graven.drift.clean`).

:func:`quick_check` is tried first by every default check (``graven drift``, the periodic checks of
``graven watch``): when the snapshot's binding is what the environment is now and every path of the
release is exactly as recorded, the answer is the clean report the full default check would give,
without reading the manifest, verifying the provenance again or importing the code that does. Any
difference and it answers None: the caller runs the full default check (``drift_check``), which writes
a new snapshot when it finds the environment clean again. :func:`record_clean` records a clean check
that changes nothing but the time of the last check.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from graven.core.drift_order import NEWEST
from graven.deploy.switch import link_kind
from graven.drift.clean import binding, load, trust_fingerprint, unchanged
from graven.service.context import Context, utc_now
from graven.service.drift_live import (
    DriftTarget,
    drift_state,
    live_targets,
    place,
    still_live,
    write_drift_state,
)
from graven.service.drift_report import DriftReport

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["clean_path", "quick_check", "quick_reports", "record_clean"]


def clean_path(root: Path) -> Path:
    """Where the snapshot of environment ``root`` lives: ``PATH/.graven/drift/clean``."""
    return root / ".graven" / "drift" / "clean"


def quick_check(ctx: Context, target: DriftTarget) -> DriftReport | None:
    """The clean report of ``target`` when its snapshot proves it unchanged since a clean check; else
    None (no snapshot, another binding, a deployment in progress, drift recorded at the last check, or
    any path not as recorded)."""
    if target.pending is not None:
        return None
    started = time.monotonic()
    with ctx.db.connect() as conn:
        state = drift_state(conn, target.env)
    if state is not None and state.keys != "[]":
        # the last recorded check found drift: only a full default check may say it is gone (a
        # change the stat records cannot see, which --full found, must stay found)
        return None
    root = Path(target.path)
    snapshot = load(clean_path(root), ctx.record_key)
    if snapshot is None:
        return None
    release = target.digest.removeprefix("sha256:")
    want = binding(
        env=target.env,
        path=target.path,
        release=release,
        config=target.config,
        pipeline=target.pipeline_digest,
        trust=trust_fingerprint(ctx.home.trust, ctx.home.policy),
        dev=int(snapshot.binding.get("dev", -1)),  # compared with the release directory's by unchanged()
        current=link_kind(root / "current"),
        config_link=link_kind(root / "config"),
    )
    if link_kind(root / "releases")[0] != "dir":
        return None  # the full check names it, and reads nothing through it
    if want != snapshot.binding or not unchanged(snapshot, str(root / "releases" / release)):
        return None
    return DriftReport(
        env=target.env,
        path=target.path,
        digest=target.digest,
        name=target.name,
        commit=target.commit,
        mode="fast",
        files=len(snapshot.files),
        seconds=time.monotonic() - started,
        checked_at=utc_now(),
    )


def record_clean(ctx: Context, report: DriftReport, *, wait: float | None = None) -> bool:
    """Record a clean check of an environment that was clean at its last check too (or never checked):
    only the time of the check and the digest change, and nothing goes to the audit log. False, and
    nothing written, when the environment drifted at its last check: then the change to clean is an
    event (``graven.service.drift_records.record_check``). True, and nothing written, when the check
    is older than the one recorded, or one a deployment may have switched since (``drift_live.place``:
    nothing is due). ``wait``: as there."""
    if not report.clean:
        return False
    now = report.checked_at or utc_now()
    with ctx.db.begin(wait=wait) as conn:
        if not still_live(conn, report.env):
            return True  # retired while it was checked: nothing of it is recorded, and nothing is due
        row = drift_state(conn, report.env)
        if place(conn, report, row, checked_at=now) != NEWEST:
            return True  # a newer check was recorded, or a deployment replaced the release: nothing is due
        if row is not None and row.keys != "[]":
            return False
        values = {
            "env": report.env,
            "digest": report.digest,
            "keys": "[]",
            "count": 0,
            "since": None,
            "checked_at": now,
        }
        write_drift_state(conn, values, exists=row is not None)
    return True


def quick_reports(ctx: Context, envs: Sequence[str] = ()) -> list[DriftReport] | None:
    """The default check of the named environments (default: every live one) when the snapshot of
    each answers it (:func:`quick_check`, under the environment's shared check lock, as any check),
    recorded; None, and nothing recorded, when one of them needs the full default check
    (``graven.service.drift_check.check``, which tries the snapshots again first)."""
    from graven.deploy.lock import shared_lock

    reports: list[DriftReport] = []
    with ExitStack() as locks:  # held until recorded: a heal or deployment waiting records after this
        for target in live_targets(ctx, envs):
            locks.enter_context(
                shared_lock(
                    Path(target.path) / ".graven" / "lock", env=target.env, wait=True, warn=ctx.reporter.warn
                )
            )
            report = quick_check(ctx, target)
            if report is None:
                return None
            reports.append(report)
        for report in reports:
            if not record_clean(ctx, report):
                from graven.service.drift_records import record_check

                record_check(ctx, report)
    return reports
