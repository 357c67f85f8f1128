"""What a deployment writes to the database and the audit log: the ``pending`` row, success, failure
(with the automatic switch back) and the settling of deployments a dead process left ``pending``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

from graven.db import Connection
from graven.deploy.layout import EnvLayout
from graven.deploy.plan import PolicyDecision, short
from graven.deploy.settings import EnvSettings
from graven.deploy.switch import point_symlink, remove_symlink
from graven.errors import BackendError, GravenError, PolicyError
from graven.model.logentry import LogEvent
from graven.runtime import HeldSignals
from graven.service.context import Context, utc_now
from graven.service.deploy_release import hook_environment, step
from graven.service.deploy_types import DeployOptions, Target
from graven.service.environments import (
    HEALTHY,
    EnvState,
    commit_of,
    deployment_row,
    live_gate,
    load_state,
    rejection,
    save_state,
    settle_path,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable

    from graven.deploy.hook_result import HookResult

_EVENT = {"deploy": "deploy", "promote": "promote", "rollback": "rollback", "auto-rollback": "rollback"}


def _settings_json(settings: EnvSettings) -> str:
    return json.dumps(settings.to_json(), sort_keys=True, separators=(",", ":"))


def reconcile(ctx: Context, env: str, layout: EnvLayout) -> None:
    """Settle deployments left ``pending`` by a process that died (the disk says what happened)."""
    with ctx.db.connect() as conn:
        pending = list(
            conn.execute(
                "SELECT id, env, digest, kind, source_env, previous_digest, actor, started_at, finished_at,"
                " result, health, override, reason, detail, settings FROM deployments"
                " WHERE env = :env AND result = 'pending' ORDER BY id",
                {"env": env},
            )
        )
    if not pending:
        return
    live_hex = layout.live_hex()
    with ctx.db.begin() as conn:
        state = load_state(conn, env) or EnvState(name=env, path=str(layout.root))
        for row in pending:
            went_live = live_hex is not None and row.digest == f"sha256:{live_hex}"
            detail = (
                "the deploying process stopped after the switch: the release is live, its health unknown"
                if went_live
                else "the deploying process stopped before the switch, or after switching back: this "
                "release is not live"
            )
            conn.execute(
                "UPDATE deployments SET result = 'interrupted', health = 'unknown', finished_at = :now,"
                " detail = :detail WHERE id = :id",
                {"now": utc_now(), "detail": detail, "id": row.id},
            )
            if went_live:
                if state.live_digest != row.digest:
                    state.previous_digest = state.live_digest
                state.live_digest = row.digest
                state.live_deployment = row.id
                state.path = str(layout.root)
                if row.kind == "rollback":
                    state.held, state.held_digest = True, row.digest
                    state.hold_reason = row.reason or "rollback"
            # the entry is appended by whoever settles the row: it names who deployed, and why
            by = f"started by {row.actor}"
            started = f"{by}: {row.reason}" if row.reason else by
            ctx.audit.append(
                conn,
                LogEvent(
                    _EVENT.get(row.kind, "deploy"),
                    artifact=row.digest,
                    commit=commit_of(conn, row.digest),
                    env=env,
                    reason=f"{detail} ({started})",
                    result="interrupted",
                ),
            )
            if went_live and row.override:  # it went live because of the override: logged as one
                bypassed = _bypassed(conn, row.id, str(row.env), row.digest, row.settings)
                ctx.audit.append(
                    conn,
                    LogEvent(
                        "override",
                        artifact=row.digest,
                        commit=commit_of(conn, row.digest),
                        env=env,
                        reason=f"requires {bypassed} bypassed: {row.reason} ({by})",
                        result="interrupted",
                    ),
                )
        save_state(conn, state)


def reconcile_sharers(ctx: Context, env: str, layout: EnvLayout) -> None:
    """Settle what dead deployers of *other* environments left ``pending`` in ``layout``'s directory
    (two graven.toml files may name one directory for two environments): called under that
    directory's lock, which such a deployer would hold were it at work. A first deployment killed
    after its switch records nothing but that row, so until it is settled the directory looks free
    to another environment, which would take over a live release it knows nothing of."""
    mine = os.path.realpath(layout.root)
    with ctx.db.connect() as conn:
        names = conn.execute(
            "SELECT DISTINCT env FROM deployments WHERE result = 'pending' AND env <> :env", {"env": env}
        ).scalars()
        others = []
        for other in sorted(str(name) for name in names):
            path = settle_path(conn, other, load_state(conn, other))
            if path is not None and os.path.realpath(path) == mine:
                others.append(other)
    for other in others:
        reconcile(ctx, other, layout)


def _bypassed(conn: Connection, dep_id: int, env: str, digest: str, settings: str | None) -> str:
    """The ``requires`` an override deployment ``dep_id`` bypassed, as far as the records tell: those
    of its settings and of the environment's gate it met (live_gate) where ``digest`` had not gone
    live healthy before it."""
    try:
        requires = [str(r) for r in json.loads(settings or "{}").get("requires", [])]
    except (ValueError, AttributeError, TypeError):
        requires = []
    requires = list(dict.fromkeys((*requires, *live_gate(conn, env, before=dep_id))))
    missing = [
        name
        for name in requires
        if conn.execute(
            "SELECT id FROM deployments WHERE env = :env AND digest = :digest AND result = 'ok'"
            " AND health IN :healthy AND id < :id LIMIT 1",
            {"env": name, "digest": digest, "healthy": HEALTHY, "id": dep_id},
        ).first()
        is None
    ]
    return ", ".join(missing) or "(not known)"


def insert_pending(
    ctx: Context,
    target: Target,
    *,
    kind: str,
    source_env: str | None,
    previous: str | None,
    opts: DeployOptions,
    started_at: str,
    overridden: bool = False,
) -> int:
    """Record the intent before the switch (a crash leaves it ``pending`` for the next run to settle).
    The rejection is checked again under the database's write lock. ``overridden``: the policy
    decision bypassed a requirement (``--override-policy`` alone, bypassing nothing, is no override)."""
    digest = str(target.digest)
    with ctx.db.begin() as conn:
        reason = rejection(conn, digest)
        if reason is not None:
            raise PolicyError(f"{short(digest)} was rejected ({reason}) and can never be deployed")
        key = conn.execute(
            "INSERT INTO deployments (env, digest, kind, source_env, previous_digest, actor, started_at,"
            " result, health, override, reason, settings, pipeline_digest) VALUES (:env, :digest, :kind,"
            " :source_env, :previous_digest, :actor, :started_at, 'pending', 'unknown', :override, :reason,"
            " :settings, :pipeline_digest) RETURNING id",
            {
                "env": target.settings.name,
                "digest": digest,
                "kind": kind,
                "source_env": source_env,
                "previous_digest": previous,
                "actor": ctx.audit.actor,
                "started_at": started_at,
                "override": overridden,
                "reason": opts.reason,
                "settings": _settings_json(target.settings),
                "pipeline_digest": target.pipeline_digest,
            },
        ).scalar_one()
        return int(key)


def _event_reason(kind: str, source_env: str | None, opts: DeployOptions) -> str | None:
    parts: list[str] = []
    if kind == "promote" and source_env:
        parts.append(f"from {source_env}")
    if opts.reason:
        parts.append(opts.reason)
    return "; ".join(parts) or None


class RejectedMeanwhileError(PolicyError):
    """The digest was rejected after the deployment's last look and before its success was recorded:
    nothing was recorded, and the deployment fails (a rejected digest is never recorded live)."""


def record_success(
    ctx: Context,
    target: Target,
    dep_id: int,
    decision: PolicyDecision,
    *,
    kind: str,
    source_env: str | None,
    previous: str | None,
    health: str,
    opts: DeployOptions,
    layout: EnvLayout,
) -> bool:
    """Record the success (the row ``ok``, the environment's state, the audit entries) in one
    transaction, unless the digest was rejected meanwhile: that is checked again in it, under the
    database's write lock (a ``reject`` committed after the deployment's last look would otherwise
    be recorded live, though ``reject`` says such a deployment switches back): RejectedMeanwhileError,
    nothing recorded."""
    env = target.settings.name
    digest = str(target.digest)
    with ctx.db.begin() as conn:
        rejected = rejection(conn, digest)
        if rejected is not None:
            during = "the rollback" if kind == "rollback" else "the deployment"
            raise RejectedMeanwhileError(f"{short(digest)} was rejected during {during} ({rejected})")
        conn.execute(
            "UPDATE deployments SET result = 'ok', health = :health, finished_at = :now WHERE id = :id",
            {"health": health, "now": utc_now(), "id": dep_id},
        )
        current = load_state(conn, env) or EnvState(name=env, path=str(layout.root))
        if previous is not None and previous != digest:
            current.previous_digest = previous
        elif current.live_digest is not None and current.live_digest != digest:
            current.previous_digest = current.live_digest
        current.live_digest = digest
        current.live_deployment = dep_id
        current.path = str(layout.root)
        if kind == "rollback":
            current.held, current.held_digest = True, digest
            current.hold_reason = opts.reason or f"rolled back to {short(digest)}"
        save_state(conn, current)
        ctx.audit.append(
            conn,
            LogEvent(
                _EVENT[kind],
                artifact=digest,
                commit=target.commit,
                env=env,
                reason=_event_reason(kind, source_env, opts),
                result="ok",
            ),
        )
        if decision.overridden:
            _log_override(ctx, conn, target, decision.overridden, opts, result="ok")
        if kind == "rollback":
            ctx.audit.append(
                conn,
                LogEvent("hold", artifact=digest, commit=target.commit, env=env, reason=current.hold_reason),
            )
    return current.held  # a rollback holds; a deploy of the held digest leaves the hold in place


def _log_override(
    ctx: Context,
    conn: Connection,
    target: Target,
    overridden: Sequence[str],
    opts: DeployOptions,
    *,
    result: str,
) -> None:
    """The ``override`` audit entry of a deployment that bypassed ``overridden`` requirements."""
    ctx.audit.append(
        conn,
        LogEvent(
            "override",
            artifact=str(target.digest),
            commit=target.commit,
            env=target.settings.name,
            reason=f"requires {', '.join(overridden)} bypassed: {opts.reason}",
            result=result,
        ),
    )


class Restored(NamedTuple):
    """What a failed deployment left the environment on: the release switched back to (None when
    none was), that release's health after its own hooks ran again (``healthy``, ``none``, ``failed``,
    ``unknown``) and why, whether the environment is held, and the signal (Ctrl-C, SIGTERM) that
    arrived while this was done, for the caller to raise once it has said what is live."""

    rolled_back_to: str | None
    health: str | None
    detail: str | None
    held: bool
    interrupted: BaseException | None = None


def record_failure(
    ctx: Context,
    target: Target,
    dep_id: int,
    state: EnvState | None,
    *,
    kind: str,
    previous: str | None,
    failure: HookResult,
    what: str,
    layout: EnvLayout,
    old_config: str | None,
    opts: DeployOptions,
    overridden: tuple[str, ...] = (),
    switched: bool = True,
    moved: str | None = None,
) -> Restored:
    """Record a failed activate/health; switch back to the previous release unless this is a rollback.
    A bypassed requirement (``overridden``) is logged as an ``override`` entry all the same: the
    digest went live because of it. Returns what the environment was left on (:class:`Restored`).

    ``switched`` False: the switch itself failed before ``current`` changed (a full disk, a file
    system gone read-only): nothing went live, so nothing is switched back and no hook runs again;
    the environment's state stays what it was (a rollback that did not switch holds nothing).

    The disk first, then one transaction: a process killed in between leaves the ``pending`` row,
    which the next deployment settles from what ``current`` names. Ctrl-C and SIGTERM (a second
    one, often) wait while ``current`` is pointed back and while the outcome is recorded: the
    failed release must not stay live with records that say it failed. One that came meanwhile
    skips the previous release's hooks; one that stops them is kept too; either is returned in
    :attr:`Restored.interrupted`, not raised. ``moved``: what the failed hooks did to ``current``
    (pointed back at the failed release since), said in the failure's detail."""
    digest = str(target.digest)
    detail = f"{what} failed: {failure.describe()}"
    if moved is not None:
        detail = f"{detail}; {moved}"
    # a rollback stays live, as does a redeploy of the live digest: nothing is switched back
    back = _SwitchBack()
    with HeldSignals() as held:
        if switched and kind != "rollback" and previous != digest:
            if previous is not None and layout.release(previous.removeprefix("sha256:")).is_dir():
                back = _switch_back(
                    ctx,
                    target,
                    state=state,
                    layout=layout,
                    previous=previous,
                    old_config=old_config,
                    opts=opts,
                )
            else:  # nothing (complete) to switch back to
                _leave_nothing_live(layout)
    if back.to is not None and previous is not None:
        if held.stopped is None:
            _recheck_previous(back, layout, previous, digest, ctx.reporter.warn)
        else:  # stopped before the previous release's hooks: not run
            back.interrupted = held.stopped
            note = f"its activate and health not run: stopped ({type(held.stopped).__name__})"
            back.detail = f"{back.detail}; {note}" if back.detail else note
    interrupted = back.interrupted or held.stopped
    try:
        with HeldSignals() as recording, ctx.db.begin() as conn:
            current = _record_failed(
                ctx, conn, target, dep_id, kind=kind, detail=detail, opts=opts, layout=layout
            )
            if overridden and switched:
                _log_override(ctx, conn, target, overridden, opts, result="failed")
            if not switched:
                pass  # the state read under the lock still describes the disk
            elif back.to is not None:
                current.live_digest = back.to
                current.live_deployment = _record_switch_back(ctx, conn, target, back, what=what)
            elif kind == "rollback" or previous == digest:
                _record_still_live(ctx, conn, current, target, dep_id, kind=kind, opts=opts)
            else:
                current.live_digest = None
                current.live_deployment = None
            save_state(conn, current)
    except GravenError as exc:  # the database went away (a server restarted while the hooks ran)
        raise BackendError(
            _unrecorded_failure(exc, target, what=what, failure=failure, back=back, layout=layout)
        ) from exc
    interrupted = interrupted or recording.stopped
    return Restored(back.to, back.health if back.to else None, back.detail, current.held, interrupted)


def _unrecorded_failure(
    exc: GravenError, target: Target, *, what: str, failure: HookResult, back: _SwitchBack, layout: EnvLayout
) -> str:
    """The one line of a failed deployment whose failure could not be recorded either (the database
    went away while its hooks ran): what failed, that the records still say pending, and what the
    disk holds now, the previous release's hooks not run again included (the next deploy, rollback
    or hold settles the pending row from ``current``)."""
    env, error, failed = target.settings.name, str(exc), failure.describe()
    if back.to is not None:
        where = f"switched back to {short(back.to)}"
        if back.health == "failed":
            where += ", which failed its checks too"
        if back.detail:  # its hooks not run, as often for the same error: said once
            where += f" ({back.detail.replace(error, 'the same database error')})"
    else:
        live = layout.live_hex()
        where = f"{short(live)} is live" if live else "nothing is live"
    unrecorded = "could not be recorded either" if error in failed else f"could not be recorded ({error})"
    return (
        f"{what} of {short(str(target.digest))} in {env} failed ({failed}) and {unrecorded}; {where}; "
        f"once the database answers, the next deploy, rollback or hold of {env} records it (`graven "
        "status` shows it pending until then)"
    )


class _SwitchBack:
    """What switching back to the previous release did: the release switched back to (None: none
    was), its health after its own hooks ran again and why, the verified settings and graven.toml its
    hooks ran with, and what stopped those hooks (raised once the failure is recorded)."""

    __slots__ = ("detail", "health", "interrupted", "pipeline", "settings", "to")

    def __init__(self, to: str | None = None) -> None:
        self.to = to
        self.health = "unknown"
        self.detail: str | None = None
        self.settings: EnvSettings | None = None
        self.pipeline: str | None = None
        self.interrupted: BaseException | None = None


def _switch_back(
    ctx: Context,
    target: Target,
    *,
    state: EnvState | None,
    layout: EnvLayout,
    previous: str,
    old_config: str | None,
    opts: DeployOptions,
) -> _SwitchBack:
    """Point ``current`` back at ``previous`` (a complete release), restore the config link, and read
    the previous release's verified graven.toml (never the database's copy) for its own activate and
    health to run again (:func:`_recheck_previous`). After this returns ``current`` names
    ``previous``; a config link that could not be restored or settings that could not be verified
    are in ``detail``."""
    env = target.settings.name
    back = _SwitchBack(previous)
    from graven.service.deploy_verify import verified_settings

    unverified: str | None
    try:
        with ctx.db.connect() as conn:
            back_row = deployment_row(conn, state.live_deployment if state else None)
            back.pipeline = back_row.pipeline_digest if back_row is not None else None
        back.settings, unverified = verified_settings(ctx, back_row, env, opts)
    except GravenError as exc:
        # the database (or the store) failed under us: the release that failed its check must not
        # stay live for want of the old one's hooks; switched back without them, and said so
        back.settings, unverified = None, f"its activate and health not run: {exc}"
    point_symlink(layout.current, layout.link_target(previous.removeprefix("sha256:")))
    try:
        if old_config is not None:
            point_symlink(layout.config_link, old_config)
        else:
            remove_symlink(layout.config_link)
    except GravenError as exc:  # the release is back; the config link is drift that heal fixes
        back.detail = f"config link not restored: {exc}"
    if unverified is not None and back.detail is None:
        back.detail = unverified
    step(ctx, "switched-back")
    return back


def _recheck_previous(
    back: _SwitchBack,
    layout: EnvLayout,
    previous: str,
    failed_digest: str,
    warn: Callable[[str], None],
) -> None:
    """Run the hooks of the release switched back to (``back.settings``; none when they could not be
    verified) and set ``back.health``: ``failed``, ``healthy``, ``none`` (no health command) or
    ``unknown`` (not run, or stopped: a signal is kept in ``back.interrupted``, not raised)."""
    settings = back.settings
    try:  # a signal while the old release is checked: recorded all the same, then passed on
        if settings is not None:
            if settings.activate or settings.health:  # only then: hooks import subprocess
                from graven.deploy.hooks import run_health, run_hook
            hook_env = hook_environment(layout, settings, previous, failed_digest)
            if settings.activate:
                result = run_hook(
                    settings.activate,
                    cwd=layout.root,
                    env=hook_env,
                    timeout=settings.activate_timeout,
                    warn=warn,
                )
                if not result.ok:
                    back.health, back.detail = "failed", f"activate failed: {result.describe()}"
            if settings.health and back.health != "failed":
                result = run_health(
                    settings.health,
                    cwd=layout.root,
                    env=hook_env,
                    timeout=settings.health_timeout,
                    retries=settings.health_retries,
                    interval=settings.health_interval,
                    warn=warn,
                )
                back.health = "healthy" if result.ok else "failed"
                if not result.ok:  # a passing check keeps the note of a config link not restored
                    back.detail = f"health check failed: {result.describe()}"
            elif back.health != "failed":
                back.health = "none"
    except BaseException as exc:
        back.interrupted = exc
        back.health = "unknown"
        back.detail = f"stopped while its hooks ran ({type(exc).__name__})"


def _leave_nothing_live(layout: EnvLayout) -> None:
    """Nothing complete was live before the failed release: after this returns neither ``current`` nor
    the config link exists, so the environment has no live release rather than an unchecked one."""
    remove_symlink(layout.current)
    remove_symlink(layout.config_link)


def _record_failed(
    ctx: Context,
    conn: Connection,
    target: Target,
    dep_id: int,
    *,
    kind: str,
    detail: str,
    opts: DeployOptions,
    layout: EnvLayout,
) -> EnvState:
    """In the failure's transaction: the deployment's row ``failed``, and its audit entry. Returns the
    environment's state for the caller to update and save."""
    conn.execute(
        "UPDATE deployments SET result = 'failed', health = 'failed', finished_at = :now,"
        " detail = :detail WHERE id = :id",
        {"now": utc_now(), "detail": detail, "id": dep_id},
    )
    env = target.settings.name
    current = load_state(conn, env) or EnvState(name=env, path=str(layout.root))
    current.path = str(layout.root)
    reason = _event_reason(kind, None, opts)
    ctx.audit.append(
        conn,
        LogEvent(
            _EVENT[kind],
            artifact=str(target.digest),
            commit=target.commit,
            env=env,
            reason=f"{detail}{f'; {reason}' if reason else ''}",
            result="failed",
        ),
    )
    return current


def _record_switch_back(
    ctx: Context, conn: Connection, target: Target, back: _SwitchBack, *, what: str
) -> int:
    """In the failure's transaction: the ``auto-rollback`` row of the release switched back to, and its
    ``rollback`` audit entry (a rejected release is live again only for want of another: said in
    ``back.detail`` and warned). Returns the row's id."""
    env, digest = target.settings.name, str(target.digest)
    assert back.to is not None
    rejected = rejection(conn, back.to)
    if rejected is not None:  # live again only because nothing else is at hand
        note = f"it is rejected ({rejected}): deploy another digest"
        back.detail = f"{back.detail}; {note}" if back.detail else note
        ctx.reporter.warn(f"{env} is back on {short(back.to)}, which {note}")
    now = utc_now()
    back_id = conn.execute(
        "INSERT INTO deployments (env, digest, kind, previous_digest, actor, started_at,"
        " finished_at, result, health, override, reason, detail, settings, pipeline_digest)"
        " VALUES (:env, :digest, 'auto-rollback', :previous_digest, :actor, :now, :now, 'ok',"
        " :health, :override, :reason, :detail, :settings, :pipeline_digest) RETURNING id",
        {
            "env": env,
            "digest": back.to,
            "previous_digest": digest,
            "actor": ctx.audit.actor,
            "now": now,
            "health": back.health,
            "override": False,
            "reason": f"automatic: {what} of {short(digest)} failed",
            "detail": back.detail,
            "settings": _settings_json(back.settings) if back.settings else None,
            "pipeline_digest": back.pipeline,
        },
    ).scalar_one()
    ctx.audit.append(
        conn,
        LogEvent(
            "rollback",
            artifact=back.to,
            commit=commit_of(conn, back.to),
            env=env,
            reason=f"automatic: {what} of {short(digest)} failed",
            result="ok" if back.health != "failed" else "failed",
        ),
    )
    return int(back_id)


def _record_still_live(
    ctx: Context,
    conn: Connection,
    current: EnvState,
    target: Target,
    dep_id: int,
    *,
    kind: str,
    opts: DeployOptions,
) -> None:
    """In the failure's transaction: the failed release stays live (a rollback, which is not switched
    back, or a redeploy of the live digest); a rollback holds the environment, with its audit entry."""
    digest = str(target.digest)
    if current.live_digest != digest and current.live_digest is not None:
        current.previous_digest = current.live_digest
    current.live_digest = digest
    current.live_deployment = dep_id
    if kind == "rollback":
        current.held, current.held_digest = True, digest
        current.hold_reason = opts.reason or f"rolled back to {short(digest)}"
        ctx.audit.append(
            conn,
            LogEvent(
                "hold",
                artifact=digest,
                commit=target.commit,
                env=target.settings.name,
                reason=current.hold_reason,
            ),
        )
