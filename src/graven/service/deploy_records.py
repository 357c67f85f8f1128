"""What a deployment writes to the database and the audit log: the ``pending`` row, success, failure
(with the automatic switch back) and the settling of deployments a dead process left ``pending``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from graven.db import Connection
from graven.deploy.layout import EnvLayout
from graven.deploy.plan import PolicyDecision, short
from graven.deploy.settings import EnvSettings
from graven.deploy.switch import point_symlink, remove_symlink
from graven.errors import GravenError, PolicyError
from graven.model.logentry import LogEvent
from graven.service.context import Context, utc_now
from graven.service.deploy_release import hook_environment, step
from graven.service.deploy_types import DeployOptions, Target
from graven.service.environments import EnvState, deployment_row, load_state, rejection, save_state

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
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
            ctx.audit.append(
                conn,
                LogEvent(
                    _EVENT.get(row.kind, "deploy"),
                    artifact=row.digest,
                    env=env,
                    reason=detail,
                    result="interrupted",
                ),
            )
        save_state(conn, state)


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
    env = target.settings.name
    digest = str(target.digest)
    with ctx.db.begin() as conn:
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
    ``unknown``) and why, and whether the environment is held."""

    rolled_back_to: str | None
    health: str | None
    detail: str | None
    held: bool


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
) -> Restored:
    """Record a failed activate/health; switch back to the previous release unless this is a rollback.
    A bypassed requirement (``overridden``) is logged as an ``override`` entry all the same: the
    digest went live because of it. Returns what the environment was left on (:class:`Restored`).

    ``switched`` False: the switch itself failed before ``current`` changed (a full disk, a file
    system gone read-only): nothing went live, so nothing is switched back and no hook runs again;
    the environment's state stays what it was (a rollback that did not switch holds nothing)."""
    env = target.settings.name
    digest = str(target.digest)
    detail = f"{what} failed: {failure.describe()}"
    rolled_back_to: str | None = None
    back_health = "unknown"
    back_detail: str | None = None
    back_settings: EnvSettings | None = None
    back_ok = previous is not None and layout.release(previous.removeprefix("sha256:")).is_dir()
    back_pipeline: str | None = None
    interrupted: BaseException | None = None  # what stopped the old release's hooks, raised once recorded
    if not switched:
        pass  # current names what it named: nothing to undo
    elif kind != "rollback" and previous is not None and previous != digest and back_ok:
        from graven.service.deploy_verify import verified_settings

        unverified: str | None
        try:
            with ctx.db.connect() as conn:
                back_row = deployment_row(conn, state.live_deployment if state else None)
                back_pipeline = back_row.pipeline_digest if back_row is not None else None
            back_settings, unverified = verified_settings(ctx, back_row, env, opts)
        except GravenError as exc:
            # the database (or the store) failed under us: the release that failed its check must not
            # stay live for want of the old one's hooks; switched back without them, and said so
            back_settings, unverified = None, f"its activate and health not run: {exc}"
        point_symlink(layout.current, layout.link_target(previous.removeprefix("sha256:")))
        try:
            if old_config is not None:
                point_symlink(layout.config_link, old_config)
            else:
                remove_symlink(layout.config_link)
        except GravenError as exc:  # the release is back; the config link is drift that heal fixes
            back_detail = f"config link not restored: {exc}"
        rolled_back_to = previous
        if unverified is not None and back_detail is None:
            back_detail = unverified
        step(ctx, "switched-back")
        try:  # a signal while the old release is checked: recorded all the same, then passed on
            if back_settings is not None:
                if back_settings.activate or back_settings.health:  # only then: hooks import subprocess
                    from graven.deploy.hooks import run_health, run_hook
                hook_env = hook_environment(layout, back_settings, previous, digest)
                if back_settings.activate:
                    result = run_hook(
                        back_settings.activate,
                        cwd=layout.root,
                        env=hook_env,
                        timeout=back_settings.activate_timeout,
                    )
                    if not result.ok:
                        back_health, back_detail = "failed", f"activate failed: {result.describe()}"
                if back_settings.health and back_health != "failed":
                    result = run_health(
                        back_settings.health,
                        cwd=layout.root,
                        env=hook_env,
                        timeout=back_settings.health_timeout,
                        retries=back_settings.health_retries,
                        interval=back_settings.health_interval,
                    )
                    back_health = "healthy" if result.ok else "failed"
                    back_detail = None if result.ok else f"health check failed: {result.describe()}"
                elif back_health != "failed":
                    back_health = "none"
        except BaseException as exc:
            interrupted = exc
            back_health = "unknown"
            back_detail = f"stopped while its hooks ran ({type(exc).__name__})"
    elif kind != "rollback" and (previous is None or (previous != digest and not back_ok)):
        previous = None  # nothing (complete) to switch back to
        remove_symlink(layout.current)
        remove_symlink(layout.config_link)
    with ctx.db.begin() as conn:
        conn.execute(
            "UPDATE deployments SET result = 'failed', health = 'failed', finished_at = :now,"
            " detail = :detail WHERE id = :id",
            {"now": utc_now(), "detail": detail, "id": dep_id},
        )
        current = load_state(conn, env) or EnvState(name=env, path=str(layout.root))
        current.path = str(layout.root)
        reason = _event_reason(kind, None, opts)
        ctx.audit.append(
            conn,
            LogEvent(
                _EVENT[kind],
                artifact=digest,
                commit=target.commit,
                env=env,
                reason=f"{detail}{f'; {reason}' if reason else ''}",
                result="failed",
            ),
        )
        if overridden and switched:
            _log_override(ctx, conn, target, overridden, opts, result="failed")
        if not switched:
            pass  # the state read under the lock still describes the disk
        elif rolled_back_to is not None:
            rejected = rejection(conn, rolled_back_to)
            if rejected is not None:  # live again only because nothing else is at hand
                note = f"it is rejected ({rejected}): deploy another digest"
                back_detail = f"{back_detail}; {note}" if back_detail else note
                ctx.reporter.warn(f"{env} is back on {short(rolled_back_to)}, which {note}")
            now = utc_now()
            back_id = conn.execute(
                "INSERT INTO deployments (env, digest, kind, previous_digest, actor, started_at,"
                " finished_at, result, health, override, reason, detail, settings, pipeline_digest)"
                " VALUES (:env, :digest, 'auto-rollback', :previous_digest, :actor, :now, :now, 'ok',"
                " :health, :override, :reason, :detail, :settings, :pipeline_digest) RETURNING id",
                {
                    "env": env,
                    "digest": rolled_back_to,
                    "previous_digest": digest,
                    "actor": ctx.audit.actor,
                    "now": now,
                    "health": back_health,
                    "override": False,
                    "reason": f"automatic: {what} of {short(digest)} failed",
                    "detail": back_detail,
                    "settings": _settings_json(back_settings) if back_settings else None,
                    "pipeline_digest": back_pipeline,
                },
            ).scalar_one()
            current.live_digest = rolled_back_to
            current.live_deployment = int(back_id)
            ctx.audit.append(
                conn,
                LogEvent(
                    "rollback",
                    artifact=rolled_back_to,
                    env=env,
                    reason=f"automatic: {what} of {short(digest)} failed",
                    result="ok" if back_health != "failed" else "failed",
                ),
            )
        elif kind == "rollback" or previous == digest:
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
                        "hold", artifact=digest, commit=target.commit, env=env, reason=current.hold_reason
                    ),
                )
        else:
            current.live_digest = None
            current.live_deployment = None
        save_state(conn, current)
    if interrupted is not None:
        raise interrupted
    return Restored(rolled_back_to, back_health if rolled_back_to else None, back_detail, current.held)
