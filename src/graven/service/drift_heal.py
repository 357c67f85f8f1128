"""``graven heal``: restore an environment to what was deployed there, from the store, under its
deploy lock (:func:`heal`, :class:`HealResult`), and record the heal.

A heal given a ``stop`` event (``graven watch`` is stopping) is abandoned once it is set, where that
leaves what is live no worse than the heal found it, and never torn:

- during the full check before it: nothing was changed, nothing is recorded (:class:`ScanStopped`);
- while it writes the release in place: between two paths, or two chunks of a large file
  (:mod:`graven.drift.heal`): each path is as the drift left it or as deployed, whole;
- while it rebuilds a missing release directory: before the new directory is renamed into place
  (the materializer's progress, every few hundred files, is where it stops; the temporary directory
  is removed): the release is still missing, as it was;
- never from that rename, nor while the stat table is saved and ``current`` and ``config`` are
  pointed back (a few renames, each atomic: the switch of ``current`` is one rename, as a deploy's);
- during the full check after it: the heal is done but not verified.

A heal abandoned after it started changing anything is recorded as failed, saying so (as a heal
interrupted by Ctrl-C is), and :class:`HealStopped` says it to the watcher; the next check finds
whatever still differs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graven.core.drift import Difference, HealPlan, plan_heal
from graven.core.paths import json_text
from graven.db import Connection
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.deploy.switch import fsync_dir, link_kind, point_symlink, remove_symlink
from graven.drift.heal import HealStats, apply_heal, giving, giving_group, move_aside
from graven.drift.scan import ReleaseIndex, ScanStopped
from graven.errors import (
    BackendError,
    CheckLockBusyError,
    DatabaseBusyError,
    GravenError,
    IntegrityError,
    PolicyError,
)
from graven.home import make_dirs
from graven.model.logentry import LogEvent
from graven.runtime import HeldSignals
from graven.service.context import Context, utc_now
from graven.service.drift_check import ROOT_PATH, Checked, check_once
from graven.service.drift_records import DETAIL_LIMIT, INSERT_EVENT, reason_of, record_check
from graven.service.drift_targets import DriftSession, DriftTarget, live_targets
from graven.service.witness import check_witness, witnessed_size, write_witness

if TYPE_CHECKING:
    import threading

__all__ = ["HEAL_STAGE", "REBUILD_STAGE", "HealNotStartedError", "HealResult", "HealStopped", "heal"]

STOPPED = "interrupted: graven watch stopped"  # the error recorded of a heal abandoned half-way
UNCHECKED = "not checked after: graven watch stopped first (the next check finds what still differs)"
INTERRUPTED_UNCHECKED = "not checked after: interrupted (Ctrl-C or SIGTERM) in the check that follows it"
STOPPED_WAIT = 0.5  # seconds the record of a heal abandoned at the stop waits for another writer at most

# -- heal -------------------------------------------------------------------------------------------


@dataclass
class HealResult:
    """What ``graven heal`` planned or did."""

    env: str
    path: str
    digest: str
    planned: bool
    plan: HealPlan
    before: list[Difference]
    after: list[Difference] = field(default_factory=list)
    stats: HealStats | None = None
    rebuilt: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the environment matches its artifact (after a heal), or the plan was only shown."""
        return self.planned or not self.after

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        stats = self.stats
        return {
            "env": self.env,
            "path": self.path,
            "digest": self.digest,
            "planned_only": self.planned,
            "ok": self.ok,
            "plan": self.plan.to_json(),
            "before": [d.to_json() for d in self.before],
            "after": [d.to_json() for d in self.after],
            "rebuilt_release": self.rebuilt,
            # an extra file removed may have a name that is not UTF-8: written as \xNN, as differences are
            "removed": [json_text(path) for path in stats.removed] if stats else [],
            "written": stats.written if stats else [],
            "symlinks": stats.linked if stats else [],
            "created_dirs": stats.created_dirs if stats else [],
            "bytes_written": stats.bytes_written if stats else 0,
            "seconds": round(self.seconds, 6),
        }


def _tree_diffs(diffs: Sequence[Difference]) -> list[Difference]:
    return [d for d in diffs if d.kind not in ("current", "unknown-release", "config")]


REBUILD_STAGE = "rebuilding release"  # the progress of a release directory written again whole
HEAL_STAGE = "healing files"  # the progress of the files of a release written again one by one


def _rebuild_release(
    ctx: Context,
    layout: EnvLayout,
    index: ReleaseIndex,
    table: StatTable,
    stop: threading.Event | None = None,
) -> None:
    from graven.deploy.materialize import build_release, remove_tree

    def progress(done: int, total: int) -> None:
        if stop is not None and stop.is_set():  # before the rename: the new directory is removed
            raise ScanStopped
        ctx.reporter.progress(REBUILD_STAGE, done, total)

    hex_digest = index.manifest.digest.hex
    release = layout.release(hex_digest)
    tmp = layout.releases / f".tmp-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        make_dirs(layout.releases)
        if os.path.lexists(release):
            move_aside(release, layout.meta / "drift" / "attic")
        build_release(  # every file again, as a first deploy writes them: its progress too
            ctx.store,
            index.manifest,
            tmp,
            table,
            progress=progress,
        )
        recorded = table.owner(hex_digest)
        give = giving(recorded) if recorded is not None else -1
        group = table.group(hex_digest)
        if group is not None and os.lstat(tmp).st_gid != group:
            gid = giving_group(group)  # root, or a member of the group: else it keeps the one it has
        else:
            gid = -1
        if give >= 0 or gid >= 0:  # root rebuilds it for the user who deployed it (who must manage it still)
            _give_release(tmp, index, give, gid, table)
        os.rename(tmp, release)
        root_st = os.lstat(release)
        table.record(root_st, DIR_SHA)
        table.set_owner(hex_digest, root_st.st_uid)  # its deployer's, else this heal's user's
        table.set_group(hex_digest, root_st.st_gid)  # its group, else the one this heal made it with
        fsync_dir(layout.releases)
    except OSError as exc:
        remove_tree(tmp)
        raise BackendError(f"cannot rebuild {release}: {exc.strerror}") from None
    except BaseException:
        remove_tree(tmp)
        raise


def _give_release(tmp: Path, index: ReleaseIndex, uid: int, gid: int, table: StatTable) -> None:
    """Give the release just built at ``tmp`` (the directory and everything in it) to ``uid`` and the
    group ``gid`` (-1: either left as it is), and record again the stat of every inode ``table`` holds
    a record of (the chown moved its ctime). A link is given itself, never its target.

    ``tmp`` lies in ``PATH/releases``, which the deployer may write: it could swap ``tmp`` for a symbolic
    link to another directory (``/usr``) while the release is built, and root would give that directory's
    paths away. So ``tmp`` is opened without following a link and must be this process's own directory
    (what is in it is then this process's too, which no one else may change); every path is given relative
    to it, files and links first, then directories deepest first: a directory given to the deployer is
    one the deployer could change, so nothing below it is reached by name after that."""
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise OSError(
                errno.EPERM, "it was replaced while it was built (graven never follows a symbolic link)"
            )
        dirs = sorted(index.dirs, key=lambda rel: (-rel.count("/") if rel else 1, rel))
        paths = [*(f.path for f in index.files), *(s.path for s in index.symlinks), *dirs]
        for rel in paths:
            name = rel or "."
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            record = table.inodes.get(st.st_ino)
            if record is not None and st.st_dev == table.dev:
                table.record(st, record[0])
    finally:
        os.close(fd)


def _unvouch(ctx: Context, layout: EnvLayout, release: Path, remaining: Sequence[Difference]) -> None:
    """The heal did not make the release exact: drop the stat records of every path that still differs
    and of the directory holding it, so that no record made during the heal vouches for what it could
    not fix (the next default check lists and hashes them)."""
    table = StatTable.load(layout.stat_file, ctx.record_key)
    before = len(table.inodes)
    base = str(release)
    for diff in _tree_diffs(remaining):
        rel = "" if diff.path == ROOT_PATH else diff.path
        paths = {rel, rel.rpartition("/")[0]}
        for path in paths:
            try:
                st = os.lstat(f"{base}/{path}" if path else base)
            except OSError:
                continue
            if st.st_dev == table.dev:
                table.forget(st.st_ino)
    if len(table.inodes) != before:
        with contextlib.suppress(GravenError):  # then the records stay: each was exact when made
            table.save(layout.stat_file, ctx.record_key)


def _fix_link(layout: EnvLayout, link: Path, target: str | None) -> None:
    kind, _ = link_kind(link)
    if kind not in ("symlink", "missing"):
        move_aside(link, layout.meta / "drift" / "attic")
    if target is None:
        remove_symlink(link)
    else:
        point_symlink(link, target)


def heal(
    ctx: Context,
    env: str,
    *,
    plan_only: bool = False,
    wait: bool = False,
    session: DriftSession | None = None,
    start_wait: float | None = None,
    stop: threading.Event | None = None,
    lock_wait: float | None = None,
) -> HealResult:
    """Restore ``env``'s release (and ``current``, ``config``) to exactly what was deployed, from the
    store, under the environment's deploy lock; then check it again (full).

    ``start_wait``: how long the record of the heal's start waits for another writer of the database
    (default 60 s): ``graven watch`` must not stall on it; HealNotStartedError then, nothing changed.
    The record of a heal abandoned at the ``stop`` waits as long (:data:`STOPPED_WAIT` without it): a
    watcher that is stopping must stop within its service manager's stop timeout; not written in time,
    :class:`HealStopped` says so (``unrecorded``).

    ``stop``: once it is set, the heal is abandoned where the module's docstring says:
    :class:`ScanStopped` before it changed anything (nothing recorded), :class:`HealStopped` after
    (recorded as failed).

    ``lock_wait``: the seconds the environment's check lock (drift checks in flight) is waited for at
    most (default: as long as it takes): CheckLockBusyError then, nothing changed; with ``stop``, the
    wait ends at the stop too (ScanStopped).

    In order, under the lock: :func:`_still_live`, the full check and :func:`_planned` (nothing changed
    yet), the record of the start, :func:`_restore`, :func:`_check_after` (which records the outcome)."""
    started = time.monotonic()
    target = live_targets(ctx, [env])[0]
    own = session is None
    session = session or DriftSession(ctx)
    layout = EnvLayout(Path(target.path))
    # as deploy does, before the lock makes .graven/ there: PATH swapped for a link into a directory of
    # root's by whoever owns its parent would otherwise get root's lock files before the refusal
    layout.check_releases_dir()
    try:
        lock = EnvLock(
            layout.lock,
            env=env,
            actor=ctx.audit.actor,
            since=utc_now(),
            warn=ctx.reporter.warn,
            check_wait=lock_wait,
            stop=stop,
        )
        if not plan_only:
            try:
                lock.acquire(wait=wait)
            except CheckLockBusyError:
                if stop is not None and stop.is_set():
                    raise ScanStopped from None  # nothing changed yet
                raise
        with lock:
            if not plan_only:
                target = _still_live(ctx, env, layout)
            layout.check_releases_dir()  # never heal through a link planted at PATH/releases
            checked = check_once(ctx, session, target, full=True, stop=stop)
            result = _planned(env, target, checked, plan_only=plan_only)
            if plan_only or not result.before:
                result.after = result.before if plan_only else []
                result.seconds = time.monotonic() - started
                return result
            if stop is not None and stop.is_set():
                raise ScanStopped  # nothing changed yet
            # a heal that cannot be recorded is not done: its start is logged (a read-only home or a
            # full disk refuse here) before anything in the environment changes, its outcome after
            _record_start(ctx, result, wait=start_wait, since=witnessed_size(layout))
            stop_wait = start_wait if start_wait is not None else STOPPED_WAIT
            _restore(ctx, layout, checked, result, stop=stop, wait=stop_wait)
            hex_digest = checked.expected.release_hex
            _check_after(
                ctx,
                session,
                target,
                layout,
                result,
                hex_digest=hex_digest,
                started=started,
                stop=stop,
                wait=stop_wait,
            )
            return result
    finally:
        if own:
            session.close()


def _still_live(ctx: Context, env: str, layout: EnvLayout) -> DriftTarget:
    """What is live in ``env``, read again under the lock: a deployment that held it while this heal
    waited changed it, and its release must never be "healed" back to the old one.

    After it: ``env`` is still deployed at ``layout``'s path (else PolicyError), and its witness says
    this home's log, as it is now, last changed it (else IntegrityError: a home restored from an older
    backup, or a copy of one, would "heal" the environment back to its own, older idea of it)."""
    target = live_targets(ctx, [env])[0]
    if target.path != str(layout.root):
        raise PolicyError(f"{env} moved to {target.path} while the heal waited; run it again")
    check_witness(ctx, layout, env)
    return target


def _planned(env: str, target: DriftTarget, checked: Checked, *, plan_only: bool) -> HealResult:
    """After it: the result holds what the full check found different and the plan that restores it
    (the release rebuilt whole when its directory is missing); nothing has changed."""
    before = checked.report.differences
    manifest = checked.index.manifest
    plan = plan_heal(manifest, _tree_diffs(before))
    if any(d.kind in ("current", "unknown-release") for d in before):
        plan = HealPlan(plan.remove, plan.mkdirs, plan.files, plan.symlinks, True, plan.config)
    if any(d.kind == "config" for d in before):
        plan = HealPlan(plan.remove, plan.mkdirs, plan.files, plan.symlinks, plan.current, True)
    rebuild = checked.scan.root_missing
    result = HealResult(
        env=env,
        path=target.path,
        digest=checked.report.digest,
        planned=plan_only,
        plan=plan,
        before=before,
    )
    result.rebuilt = rebuild
    return result


def _restore(
    ctx: Context,
    layout: EnvLayout,
    checked: Checked,
    result: HealResult,
    *,
    stop: threading.Event | None,
    wait: float,
) -> None:
    """Carry out ``result``'s plan (its start recorded).

    After it: the release, ``current`` and ``config`` are as deployed and the stat table is saved; or
    it raised, and the heal is recorded as failed and the witness written (at the ``stop``:
    :class:`HealStopped`, the record waiting ``wait`` seconds at most)."""
    try:
        _write_back(ctx, layout, checked, result, stop)
    except (GravenError, KeyboardInterrupt, ScanStopped) as exc:
        # Ctrl-C or SIGTERM too (as a deploy records its interrupted health check), and the stop
        # of graven watch: the log must not show a heal that started and never ended when graven
        # can say how it ended
        if isinstance(exc, KeyboardInterrupt):
            error = "interrupted (Ctrl-C or SIGTERM)"
        else:
            error = STOPPED if isinstance(exc, ScanStopped) else str(exc)
        if isinstance(exc, ScanStopped):
            raise _stopped(ctx, layout, result, error, wait) from None
        with HeldSignals() as held:  # a second Ctrl-C must not leave the heal started and never ended
            _record_heal(ctx, result, ok=False, error=error)
            write_witness(ctx, layout)
        if held.stopped is not None and not isinstance(exc, KeyboardInterrupt):
            raise held.stopped from exc
        raise


def _write_back(
    ctx: Context, layout: EnvLayout, checked: Checked, result: HealResult, stop: threading.Event | None
) -> None:
    """Rebuild the release directory or write its differing paths again (``result.stats``), save the
    stat table, then point ``current`` and ``config`` back as the plan says."""
    hex_digest = checked.expected.release_hex
    plan = result.plan
    table = StatTable.load(layout.stat_file, ctx.record_key)
    unrestored: IntegrityError | None = None
    if result.rebuilt:
        _rebuild_release(ctx, layout, checked.index, table, stop)
    else:
        try:
            result.stats = apply_heal(
                ctx.store,
                layout.release(hex_digest),
                plan,
                table,
                ignore=checked.ignore,
                children=checked.index.children,
                owner=table.owner(hex_digest),
                group=table.group(hex_digest),
                progress=lambda done, total: ctx.reporter.progress(HEAL_STAGE, done, total),
                stop=stop,
            )
        except IntegrityError as exc:
            # files whose store object is damaged: the rest of the release is written, and its records
            # and the environment's links are still the heal's to restore ("the rest is healed")
            unrestored = exc
    table.save(layout.stat_file, ctx.record_key)
    if plan.current:
        _fix_link(layout, layout.current, layout.link_target(hex_digest))
    if plan.config:
        config = checked.expected.config
        _fix_link(layout, layout.config_link, f"current/{config}" if config else None)
    if unrestored is not None:
        raise unrestored


def _check_after(
    ctx: Context,
    session: DriftSession,
    target: DriftTarget,
    layout: EnvLayout,
    result: HealResult,
    *,
    hex_digest: str,
    started: float,
    stop: threading.Event | None,
    wait: float,
) -> None:
    """Check the environment again (full) and record the heal's outcome.

    After it: ``result.after`` holds what still differs (no stat record vouching for it), the heal and
    the check are recorded and the witness written; at the ``stop`` during the check, the heal is
    recorded as failed, unchecked (:class:`HealStopped`)."""
    try:
        after = check_once(ctx, session, target, full=True, stop=stop).report
    except ScanStopped:
        result.seconds = time.monotonic() - started
        raise _stopped(ctx, layout, result, UNCHECKED, wait) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM in the check after it: the heal is written, unchecked
        result.seconds = time.monotonic() - started
        with HeldSignals():
            _record_heal(ctx, result, ok=False, error=INTERRUPTED_UNCHECKED)
            write_witness(ctx, layout)
        raise
    result.after = after.differences
    if after.differences:
        _unvouch(ctx, layout, layout.release(hex_digest), after.differences)
    result.seconds = time.monotonic() - started
    with HeldSignals() as held:  # the outcome is recorded whole, then the signal is the stop
        _record_heal(ctx, result, ok=not after.differences, error=None)
        write_witness(ctx, layout)
        record_check(ctx, after)
    if held.stopped is not None:
        raise held.stopped


class HealStopped(ScanStopped):
    """The heal was abandoned at the watcher's stop after it started changing the environment; it is
    recorded as failed, with the reason (the message), unless the database stayed busy for longer than
    the heal's ``start_wait``: ``unrecorded`` then says why it was not (the log shows the heal started,
    not how it ended)."""

    def __init__(self, message: str, unrecorded: str | None = None) -> None:
        super().__init__(message)
        self.unrecorded = unrecorded


def _stopped(ctx: Context, layout: EnvLayout, result: HealResult, error: str, wait: float) -> HealStopped:
    """Record the heal abandoned at the watcher's stop as failed with ``error``, waiting ``wait``
    seconds at most for another writer of the database, and say it to the watcher."""
    unrecorded = None
    try:
        _record_heal(ctx, result, ok=False, error=error, wait=wait)
    except DatabaseBusyError as exc:  # the stop goes on: a service manager kills a watcher that waits
        unrecorded = str(exc)
    write_witness(ctx, layout)
    return HealStopped(error, unrecorded)


class HealNotStartedError(DatabaseBusyError):
    """Another writer held the database longer than ``heal(start_wait=...)``: the heal's start could not
    be recorded, so nothing in the environment was changed; it may be tried again."""


def _record_start(ctx: Context, result: HealResult, *, wait: float | None = None, since: int = 0) -> None:
    """The audit entry of a heal about to change the environment (``result`` ``started``): whatever
    stops it before its outcome is recorded (a disk that fills, a kill), the log says it ran. Before
    it, in the same transaction, :func:`_settle_unfinished` (the log's entries from ``since`` on)."""
    try:
        with ctx.db.begin(wait=wait) as conn:
            _settle_unfinished(ctx, conn, result.env, since)
            _log_heal(ctx, conn, result, reason=f"restoring {reason_of(result.before)}", outcome="started")
    except DatabaseBusyError as exc:
        if wait is None:
            raise
        raise HealNotStartedError(f"the heal did not start: {exc}") from None


UNFINISHED = (
    "heal failed: the heal started at {time} never recorded how it ended (its process was killed, or "
    "its outcome could not be written); the next heal found it so"
)


def _settle_unfinished(ctx: Context, conn: Connection, env: str, since: int) -> None:
    """Record as ``failed`` the last heal of ``env`` whose ``started`` entry has no outcome after it (a
    heal killed, or one whose outcome could not be written): called under the deploy lock, which that
    heal would hold were it still at work, so it is not. ``since``: the log's size when the environment
    was last changed (:func:`graven.service.witness.witnessed_size`, 0: not known): every heal recorded
    its outcome, then wrote that, so an unfinished one lies past it (the read stays short)."""
    rows = conn.execute(
        "SELECT entry FROM log_entries WHERE idx >= :since AND env = :env AND event = 'heal' ORDER BY idx",
        {"since": since, "env": env},
    ).scalars()
    unfinished: dict[str, Any] | None = None
    for text in rows:
        try:
            entry = json.loads(text)
        except ValueError:  # `graven log verify` names a damaged entry; it settles nothing here
            continue
        if isinstance(entry, dict):
            unfinished = entry if entry.get("result") == "started" else None
    if unfinished is None:
        return
    artifact, commit = unfinished.get("artifact"), unfinished.get("commit")
    ctx.audit.append(
        conn,
        LogEvent(
            "heal",
            artifact=artifact if isinstance(artifact, str) else None,
            commit=commit if isinstance(commit, str) else None,
            env=env,
            reason=UNFINISHED.format(time=unfinished.get("time")),
            result="failed",
        ),
    )


def _log_heal(ctx: Context, conn: Connection, result: HealResult, *, reason: str, outcome: str) -> None:
    """The ``heal`` audit entry of ``result`` (its artifact's commit looked up), in ``conn``'s
    transaction."""
    commit = conn.execute(
        """SELECT "commit" FROM artifacts WHERE digest = :digest""", {"digest": result.digest}
    ).scalar_one_or_none()
    ctx.audit.append(
        conn,
        LogEvent(
            "heal", artifact=result.digest, commit=commit, env=result.env, reason=reason, result=outcome
        ),
    )


def _record_heal(
    ctx: Context, result: HealResult, *, ok: bool, error: str | None, wait: float | None = None
) -> None:
    stats = result.stats
    restored = len(result.before)
    reason = (
        f"restored {reason_of(result.before)}" if ok else f"heal failed: {error or reason_of(result.after)}"
    )
    detail = {
        "before": [d.to_json() for d in result.before[:DETAIL_LIMIT]],
        "after": [d.to_json() for d in result.after[:DETAIL_LIMIT]],
        "written": stats.written[:DETAIL_LIMIT] if stats else [],
        "removed": [json_text(path) for path in stats.removed[:DETAIL_LIMIT]] if stats else [],
        "rebuilt_release": result.rebuilt,
        "error": error,
    }
    with ctx.db.begin(wait=wait) as conn:
        conn.execute(
            INSERT_EVENT,
            {
                "env": result.env,
                "digest": result.digest,
                "event": "heal",
                "time": utc_now(),
                "count": restored,
                "result": "ok" if ok else "failed",
                "detail": json.dumps(detail, sort_keys=True, separators=(",", ":")),
            },
        )
        _log_heal(ctx, conn, result, reason=reason, outcome="ok" if ok else "failed")
