"""Environments: ``graven deploy``, ``promote``, ``rollback``, ``hold``, ``unhold``, ``reject``, ``status``
and ``history``.

A deployment verifies the artifact against the operator's trust policy for the environment, reads the
environment's settings from the graven.toml recorded in the artifact's *verified* provenance, checks
policy (rejection, hold, ``requires``) under the environment's lock, materializes the release beside the
live one, switches ``current`` with one rename, runs ``activate`` and ``health``, and records the outcome
and its audit log entries in one database transaction. A failed health check switches back by itself.
The on-disk layout is docs/formats/environments-v1.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graven.db import Connection, Row
from graven.deploy.hooks import HookResult, run_health, run_hook
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock
from graven.deploy.materialize import (
    BuildStats,
    build_release,
    check_release,
    integrity_error,
    remove_tree,
)
from graven.deploy.plan import (
    PolicyDecision,
    PolicyFacts,
    ReleaseInfo,
    TreeDiff,
    config_diff,
    diff_manifests,
    evaluate_policy,
    plan_retention,
    short,
)
from graven.deploy.settings import (
    EnvSettings,
    check_config_path,
    check_env_name,
    config_files,
    resolve_env,
)
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.deploy.switch import exchange_dirs, fsync_dir, point_symlink, remove_symlink
from graven.errors import (
    BackendError,
    ConfigError,
    GravenError,
    InputError,
    IntegrityError,
    NotFoundError,
    PolicyError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import TreeManifest
from graven.model.pipeline import parse_pipeline
from graven.service.artifacts import get_artifact, load_manifest, resolve_digest
from graven.service.context import Context, utc_now
from graven.service.environments import (
    HEALTHY,
    EnvState,
    deployment_row,
    healthy_in,
    load_state,
    rejection,
    save_state,
    went_live_here,
)
from graven.service.provenance import UnsignedError, load_policy, verified_provenance
from graven.signing.trust import TrustPolicy, VerifiedProvenance

__all__ = [
    "ROOT_ENV",
    "DeployOptions",
    "DeployPlan",
    "DeployResult",
    "deploy",
    "plan_deploy",
    "promote",
    "rollback",
]

ROOT_ENV = "GRAVEN_DEPLOY_ROOT"
_EVENT = {"deploy": "deploy", "promote": "promote", "rollback": "rollback", "auto-rollback": "rollback"}


@dataclass(frozen=True)
class DeployOptions:
    """How to deploy: the operator's side of every decision."""

    root: str | None = None  # absolute deploy root for relative [env] paths (GRAVEN_DEPLOY_ROOT, --root)
    policy_file: Path | None = None  # an extra trust policy file (--policy)
    wait: bool = False  # queue behind another deployer instead of failing at once
    reason: str | None = None
    override: bool = False  # --override-policy: bypass `requires` (never hashes, signatures, rejection)


# -- verification of the artifact ------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    digest: Digest
    name: str
    commit: str | None
    manifest: TreeManifest
    settings: EnvSettings
    keyid: str
    pipeline_digest: str


def _verified_provenance(ctx: Context, digest: Digest, policy: TrustPolicy, env: str) -> VerifiedProvenance:
    try:
        verified, _ = verified_provenance(ctx, digest, policy=policy, env=env)
    except UnsignedError:
        raise VerificationError(
            f"{short(str(digest))} is unsigned: no signed provenance is recorded for it; build it with a "
            "signing key, or import it with --attestation"
        ) from None
    except (VerificationError, PolicyError, InputError) as exc:
        where = f"{short(str(digest))} cannot be deployed to {env}"
        if isinstance(exc, PolicyError):
            raise PolicyError(
                f"{where}: {exc}; trust the signing key for {env} (graven keys trust)"
            ) from None
        raise VerificationError(f"{where}: {exc}") from None
    return verified


def _verify_target(
    ctx: Context, digest: Digest, env: str, opts: DeployOptions, *, log_failures: bool = True
) -> _Target:
    """Check the signature against the trust policy for ``env``, then read the settings from the
    graven.toml the verified provenance names (by sha256), then the manifest (verified read)."""
    record = get_artifact(ctx, digest)
    policy = load_policy(ctx, opts.policy_file)
    try:
        verified = _verified_provenance(ctx, digest, policy, env)
        pipeline_digest = verified.statement.pipeline_digest
        if pipeline_digest is None:
            raise VerificationError(
                f"{short(str(digest))}: its signed provenance names no graven.toml, so its environments "
                "are unknown; rebuild it with this graven"
            )
        try:
            pipeline_bytes = ctx.store.read(Digest.parse(pipeline_digest))
        except IntegrityError as exc:
            raise IntegrityError(
                f"{short(str(digest))}: the graven.toml its provenance names ({pipeline_digest}) is missing "
                f"or corrupt in the store: {exc}"
            ) from None
        manifest = load_manifest(ctx, digest)
    except (VerificationError, PolicyError, IntegrityError) as exc:
        if log_failures:
            ctx.audit.record(
                LogEvent("verify-failure", artifact=str(digest), env=env, reason=str(exc), result="failed")
            )
        raise
    source = f"graven.toml of {short(str(digest))}"
    pipeline = parse_pipeline(pipeline_bytes, source=source)
    settings = resolve_env(pipeline.env, env, root=opts.root, source=source)
    check_config_path(manifest, settings)
    return _Target(
        digest=digest,
        name=record.name,
        commit=verified.statement.commit or record.commit,
        manifest=manifest,
        settings=settings,
        keyid=verified.keyid,
        pipeline_digest=pipeline_digest,
    )


def _policy_facts(
    conn: Connection, target: _Target, state: EnvState | None, *, kind: str, override: bool
) -> PolicyFacts:
    digest = str(target.digest)
    return PolicyFacts(
        digest=digest,
        env=target.settings.name,
        kind=kind,
        requires=target.settings.requires,
        healthy_in=healthy_in(conn, digest),
        rejected=rejection(conn, digest),
        held=state.held if state else False,
        held_digest=state.held_digest if state else None,
        override=override,
        history_ok=went_live_here(conn, target.settings.name, digest) if kind == "rollback" else True,
    )


def _check_path(state: EnvState | None, settings: EnvSettings) -> None:
    if state is not None and state.live_digest is not None and state.path != settings.path:
        raise ConfigError(
            f"environment {settings.name} is live at {state.path}, but this artifact's graven.toml (with "
            f"the deploy root given) puts it at {settings.path}; use the same GRAVEN_DEPLOY_ROOT/--root, "
            "or give the new location another environment name"
        )


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployResult:
    """What a deploy, promote or rollback did."""

    ok: bool
    env: str
    kind: str
    digest: str
    name: str
    commit: str | None
    path: str
    release: str
    previous: str | None
    health: str  # healthy | none | failed
    message: str
    rolled_back_to: str | None = None
    overridden: tuple[str, ...] = ()
    held: bool = False
    reused_release: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    activate: str | None = None
    health_detail: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        data = asdict(self)
        data["overridden"] = list(self.overridden)
        data["removed"] = list(self.removed)
        return data


def _hook_env(layout: EnvLayout, settings: EnvSettings, digest: str, previous: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GRAVEN_ENV=settings.name,
        GRAVEN_DIGEST=digest,
        GRAVEN_PATH=str(layout.root),
        GRAVEN_CURRENT=str(layout.current),
        GRAVEN_RELEASE=str(layout.release(digest.removeprefix("sha256:"))),
        GRAVEN_CONFIG=str(layout.config_link) if settings.config else "",
        GRAVEN_PREVIOUS=previous or "",
    )
    return env


def _settings_json(settings: EnvSettings) -> str:
    return json.dumps(settings.to_json(), sort_keys=True, separators=(",", ":"))


def _settings_from_row(row: Row | None) -> EnvSettings | None:
    if row is None or not row.settings:
        return None
    try:
        doc = json.loads(row.settings)
        return EnvSettings(**{**doc, "requires": tuple(doc.get("requires", ()))})
    except (ValueError, TypeError):
        return None


# -- the deployment itself -------------------------------------------------------------------------


def _step(ctx: Context, name: str) -> None:
    """Mark a step boundary (the progress reporter sees ``deploy:<name>``)."""
    ctx.reporter.progress(f"deploy:{name}", 0, None)


def _clean_leftovers(layout: EnvLayout, table: StatTable) -> None:
    for leftover in layout.leftovers():
        remove_tree(leftover, table)


def _ensure_release(
    ctx: Context, target: _Target, layout: EnvLayout, table: StatTable, live_hex: str | None
) -> tuple[BuildStats | None, bool]:
    """Make ``releases/<hex>`` a complete, checked copy of the artifact; (build stats, reused existing).
    The table is saved when anything in it changed."""
    hex_digest = target.digest.hex
    release = layout.release(hex_digest)
    reuse: Path | None = layout.release(live_hex) if live_hex is not None else None
    if release.is_dir():
        check = check_release(release, target.manifest, table)
        if check.ok:
            if not check.by_stat:
                table.save(layout.stat_file)
            return None, True
        more = f" and {len(check.problems) - 1} more" if len(check.problems) > 1 else ""
        ctx.reporter.warn(
            f"release {short(hex_digest)} on disk differs from the artifact ({check.problems[0]}{more}); "
            "rebuilding it from the store"
        )
        reuse = release  # its unchanged files are still good
    try:
        layout.releases.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create {layout.releases}: {exc.strerror}") from None
    tmp = layout.releases / f".tmp-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        stats = build_release(
            ctx.store,
            target.manifest,
            tmp,
            table,
            reuse_root=reuse,
            progress=lambda done, total: ctx.reporter.progress("deploy:materialize", done, total),
        )
        try:
            if release.is_dir():
                if hex_digest == live_hex:
                    exchange_dirs(tmp, release)  # the live tree is replaced in one step
                else:
                    aside = layout.releases / f".trash-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
                    os.rename(release, aside)
                    os.rename(tmp, release)
                    tmp = aside
                remove_tree(tmp, table)
            else:
                os.rename(tmp, release)
            fsync_dir(layout.releases)
            table.record(os.lstat(release), DIR_SHA)  # renaming changed the root's ctime
        except OSError as exc:
            raise BackendError(f"cannot move the release into {release}: {exc.strerror}") from None
        table.save(layout.stat_file)
    except IntegrityError as exc:
        remove_tree(tmp)
        error = integrity_error(exc, release)
        ctx.audit.record(
            LogEvent(
                "verify-failure",
                artifact=str(target.digest),
                env=target.settings.name,
                reason=str(error),
                result="failed",
            )
        )
        raise error from None
    except BaseException:
        remove_tree(tmp)
        raise
    return stats, False


def _switch(layout: EnvLayout, hex_digest: str, config: str | None) -> None:
    point_symlink(layout.current, layout.link_target(hex_digest))
    if config:
        point_symlink(layout.config_link, f"current/{config}")
    else:
        remove_symlink(layout.config_link)


def _reconcile(ctx: Context, env: str, layout: EnvLayout) -> None:
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
                else "the deploying process stopped before the switch: this release is not live"
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


def _retention(
    ctx: Context, layout: EnvLayout, table: StatTable, *, env: str, keep: int, state: EnvState
) -> tuple[str, ...]:
    names = layout.release_names()
    with ctx.db.connect() as conn:
        rows = conn.execute(
            "SELECT digest, result, finished_at FROM deployments WHERE env = :env", {"env": env}
        )
        last_ok: dict[str, str] = {}
        seen: set[str] = set()
        for row in rows:
            hex_digest = str(row.digest).removeprefix("sha256:")
            seen.add(hex_digest)
            if row.result == "ok" and row.finished_at:
                last_ok[hex_digest] = max(last_ok.get(hex_digest, ""), str(row.finished_at))
    infos = [ReleaseInfo(n, last_ok.get(n), failed=n in seen and n not in last_ok) for n in names]
    protected = {
        d.removeprefix("sha256:")
        for d in (state.live_digest, state.previous_digest, state.held_digest)
        if d is not None
    }
    live_hex = layout.live_hex()
    if live_hex:
        protected.add(live_hex)
    plan = plan_retention(infos, keep=keep, protected=protected)
    for hex_digest in plan.delete:
        aside = layout.releases / f".trash-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.rename(layout.release(hex_digest), aside)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackendError(f"cannot remove release {hex_digest[:12]}: {exc.strerror}") from None
        _step(ctx, "retention")
        remove_tree(aside, table)
    if plan.delete:
        table.save(layout.stat_file)
    return tuple(f"sha256:{h}" for h in plan.delete)


def _run_deployment(
    ctx: Context,
    target: _Target,
    opts: DeployOptions,
    *,
    kind: str,
    source_env: str | None = None,
) -> DeployResult:
    started = time.monotonic()
    settings = target.settings
    env = settings.name
    digest = str(target.digest)
    layout = EnvLayout(Path(settings.path))
    lock = EnvLock(layout.lock, env=env, actor=ctx.audit.actor, since=utc_now())
    lock.acquire(wait=opts.wait)
    with lock:
        locked_at = utc_now()
        _step(ctx, "locked")
        _reconcile(ctx, env, layout)
        with ctx.db.connect() as conn:
            state = load_state(conn, env)
            facts = _policy_facts(conn, target, state, kind=kind, override=opts.override)
        _check_path(state, settings)
        decision = evaluate_policy(facts)
        if not decision.allowed:
            raise PolicyError(decision.refusal or "refused")
        live_hex = layout.live_hex()
        previous = f"sha256:{live_hex}" if live_hex else None
        table = StatTable.load(layout.stat_file)
        _clean_leftovers(layout, table)
        stats, reused = _ensure_release(ctx, target, layout, table, live_hex)
        _step(ctx, "release-ready")
        dep_id = _insert_pending(
            ctx, target, kind=kind, source_env=source_env, previous=previous, opts=opts, started_at=locked_at
        )
        _step(ctx, "pending-recorded")
        old_config = _readlink(layout.config_link)
        _switch(layout, target.digest.hex, settings.config)
        _step(ctx, "switched")
        hook_env = _hook_env(layout, settings, digest, previous)
        activate: HookResult | None = None
        health: HookResult | None = None
        if settings.activate:
            activate = run_hook(
                settings.activate, cwd=layout.root, env=hook_env, timeout=settings.activate_timeout
            )
            _step(ctx, "activated")
        if settings.health and (activate is None or activate.ok):
            health = run_health(
                settings.health,
                cwd=layout.root,
                env=hook_env,
                timeout=settings.health_timeout,
                retries=settings.health_retries,
                interval=settings.health_interval,
            )
            _step(ctx, "health-checked")
        ok = (activate is None or activate.ok) and (health is None or health.ok)
        common: dict[str, Any] = {
            "env": env,
            "kind": kind,
            "digest": digest,
            "name": target.name,
            "commit": target.commit,
            "path": settings.path,
            "release": str(layout.release(target.digest.hex)),
            "previous": previous,
            "overridden": decision.overridden,
            "reused_release": reused,
            "stats": stats.to_json() if stats else {},
            "activate": activate.describe() if activate else None,
            "health_detail": health.describe() if health else None,
        }
        if ok:
            health_state = "healthy" if health is not None else "none"
            held = _record_success(
                ctx,
                target,
                dep_id,
                decision,
                kind=kind,
                source_env=source_env,
                previous=previous,
                health=health_state,
                opts=opts,
                layout=layout,
            )
            _step(ctx, "recorded")
            with ctx.db.connect() as conn:
                state_now = load_state(conn, env)
            assert state_now is not None
            removed = _retention(ctx, layout, table, env=env, keep=settings.keep, state=state_now)
            _step(ctx, "done")
            message = f"{short(digest)} is live in {env}"
            if health is not None:
                message += (
                    f" and healthy ({health.attempts} health check{'s' if health.attempts > 1 else ''})"
                )
            return DeployResult(
                ok=True,
                health=health_state,
                message=message,
                held=held,
                removed=removed,
                seconds=time.monotonic() - started,
                **common,
            )
        failure = activate if activate is not None and not activate.ok else health
        assert failure is not None
        what = "activate" if failure is activate else "health check"
        rolled_back_to = _fail(
            ctx,
            target,
            dep_id,
            state,
            kind=kind,
            previous=previous,
            failure=failure,
            what=what,
            layout=layout,
            old_config=old_config,
            opts=opts,
        )
        _step(ctx, "done")
        if rolled_back_to:
            message = (
                f"{what} of {short(digest)} in {env} failed ({failure.describe()}); switched back to "
                f"{short(rolled_back_to)}; fix the artifact and deploy again"
            )
        elif kind == "rollback":
            message = (
                f"{what} of {short(digest)} in {env} failed after the rollback ({failure.describe()}); it "
                f"stays live and held; roll back --to another digest, or fix and `graven unhold {env}`"
            )
        elif previous == digest:
            message = (
                f"{what} of {short(digest)} in {env} failed ({failure.describe()}); it was already live, so "
                "there is nothing to switch back to"
            )
        else:
            message = (
                f"{what} of {short(digest)} in {env} failed ({failure.describe()}); nothing was live before, "
                f"so {env} now has no live release; fix the artifact and deploy again"
            )
        return DeployResult(
            ok=False,
            health="failed",
            message=message,
            rolled_back_to=rolled_back_to,
            held=kind == "rollback",
            seconds=time.monotonic() - started,
            **common,
        )


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _insert_pending(
    ctx: Context,
    target: _Target,
    *,
    kind: str,
    source_env: str | None,
    previous: str | None,
    opts: DeployOptions,
    started_at: str,
) -> int:
    """Record the intent before the switch (a crash leaves it ``pending`` for the next run to settle).
    The rejection is checked again under the database's write lock."""
    digest = str(target.digest)
    with ctx.db.begin() as conn:
        reason = rejection(conn, digest)
        if reason is not None:
            raise PolicyError(f"{short(digest)} was rejected ({reason}) and can never be deployed")
        key = conn.execute(
            "INSERT INTO deployments (env, digest, kind, source_env, previous_digest, actor, started_at,"
            " result, health, override, reason, settings) VALUES (:env, :digest, :kind, :source_env,"
            " :previous_digest, :actor, :started_at, 'pending', 'unknown', :override, :reason, :settings)"
            " RETURNING id",
            {
                "env": target.settings.name,
                "digest": digest,
                "kind": kind,
                "source_env": source_env,
                "previous_digest": previous,
                "actor": ctx.audit.actor,
                "started_at": started_at,
                "override": opts.override,
                "reason": opts.reason,
                "settings": _settings_json(target.settings),
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


def _record_success(
    ctx: Context,
    target: _Target,
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
            ctx.audit.append(
                conn,
                LogEvent(
                    "override",
                    artifact=digest,
                    commit=target.commit,
                    env=env,
                    reason=f"requires {', '.join(decision.overridden)} bypassed: {opts.reason}",
                ),
            )
        if kind == "rollback":
            ctx.audit.append(
                conn,
                LogEvent("hold", artifact=digest, commit=target.commit, env=env, reason=current.hold_reason),
            )
    return kind == "rollback"


def _fail(
    ctx: Context,
    target: _Target,
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
) -> str | None:
    """Record a failed activate/health; switch back to the previous release unless this is a rollback."""
    env = target.settings.name
    digest = str(target.digest)
    detail = f"{what} failed: {failure.describe()}"
    rolled_back_to: str | None = None
    back_health = "unknown"
    back_detail: str | None = None
    back_settings: EnvSettings | None = None
    back_ok = previous is not None and layout.release(previous.removeprefix("sha256:")).is_dir()
    if kind != "rollback" and previous is not None and previous != digest and back_ok:
        with ctx.db.connect() as conn:
            back_settings = _settings_from_row(deployment_row(conn, state.live_deployment if state else None))
        point_symlink(layout.current, layout.link_target(previous.removeprefix("sha256:")))
        if old_config is not None:
            point_symlink(layout.config_link, old_config)
        else:
            remove_symlink(layout.config_link)
        rolled_back_to = previous
        _step(ctx, "switched-back")
        if back_settings is not None:
            hook_env = _hook_env(layout, back_settings, previous, digest)
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
        if rolled_back_to is not None:
            now = utc_now()
            back_id = conn.execute(
                "INSERT INTO deployments (env, digest, kind, previous_digest, actor, started_at,"
                " finished_at, result, health, override, reason, detail, settings) VALUES (:env, :digest,"
                " 'auto-rollback', :previous_digest, :actor, :now, :now, 'ok', :health, :override,"
                " :reason, :detail, :settings) RETURNING id",
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
    return rolled_back_to


# -- use cases -------------------------------------------------------------------------------------


def deploy(
    ctx: Context,
    digest_text: str,
    env: str,
    opts: DeployOptions,
    *,
    kind: str = "deploy",
    source_env: str | None = None,
) -> DeployResult:
    """Verify ``digest`` and make it the live release of ``env``."""
    check_env_name(env)
    if opts.override and not (opts.reason and opts.reason.strip()):
        raise InputError("--override-policy needs --reason TEXT: say why policy is bypassed")
    digest = resolve_digest(ctx, digest_text)
    target = _verify_target(ctx, digest, env, opts)
    return _run_deployment(ctx, target, opts, kind=kind, source_env=source_env)


def promote(ctx: Context, from_env: str, to_env: str, opts: DeployOptions) -> DeployResult:
    """Deploy to ``to_env`` exactly the digest that is live and healthy in ``from_env``."""
    check_env_name(from_env)
    check_env_name(to_env)
    if from_env == to_env:
        raise InputError(f"cannot promote {from_env} to itself")
    if not ctx.home.has_database():
        raise NotFoundError(f"environment {from_env} has never been deployed to")
    with ctx.db.connect() as conn:
        state = load_state(conn, from_env)
        row = deployment_row(conn, state.live_deployment) if state else None
    if state is None:
        raise NotFoundError(f"environment {from_env} has never been deployed to; `graven status` lists them")
    if state.live_digest is None:
        raise PolicyError(f"nothing is live in {from_env}; deploy there first")
    on_disk = EnvLayout(Path(state.path)).live_hex()
    if on_disk != state.live_digest.removeprefix("sha256:"):
        raise PolicyError(
            f"{from_env} is recorded live on {short(state.live_digest)} but its directory shows "
            f"{short(on_disk)}; redeploy {from_env} (or roll it back) before promoting"
        )
    health = row.health if row is not None else "unknown"
    if row is None or row.result != "ok" or health not in HEALTHY:
        raise PolicyError(
            f"{short(state.live_digest)} is live in {from_env} but not healthy ({health}); fix {from_env} "
            "before promoting"
        )
    return deploy(ctx, state.live_digest, to_env, opts, kind="promote", source_env=from_env)


def rollback(ctx: Context, env: str, opts: DeployOptions, *, to: str | None = None) -> DeployResult:
    """Make the previous release (or ``to``, from this environment's history) live again, and hold."""
    check_env_name(env)
    if not ctx.home.has_database():
        raise NotFoundError(f"environment {env} has never been deployed to")
    with ctx.db.connect() as conn:
        state = load_state(conn, env)
    if state is None:
        raise NotFoundError(f"environment {env} has never been deployed to; `graven status` lists them")
    if to is not None:
        digest = resolve_digest(ctx, to)
    elif state.previous_digest is not None:
        digest = Digest.parse(state.previous_digest)
    else:
        raise InputError(
            f"{env} has no previous release to roll back to; name one with --to DIGEST "
            f"(`graven history {env}` lists them)"
        )
    if str(digest) == state.live_digest:
        raise InputError(f"{short(str(digest))} is already live in {env}; nothing to roll back")
    target = _verify_target(ctx, digest, env, opts)
    return _run_deployment(ctx, target, opts, kind="rollback")


@dataclass(frozen=True)
class DeployPlan:
    """What ``deploy --plan`` would do."""

    env: str
    digest: str
    name: str
    commit: str | None
    path: str
    live: str | None
    diff: TreeDiff
    config: str | None
    config_diff: str
    would_link: int
    would_copy: int
    release_on_disk: bool
    overridden: tuple[str, ...]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "env": self.env,
            "digest": self.digest,
            "name": self.name,
            "commit": self.commit,
            "path": self.path,
            "live": self.live,
            "changes": self.diff.to_json(),
            "config": self.config,
            "config_diff": self.config_diff,
            "would_link": self.would_link,
            "would_copy": self.would_copy,
            "release_on_disk": self.release_on_disk,
            "overridden": list(self.overridden),
            "settings": self.settings,
        }


def _config_bytes(ctx: Context, manifest: TreeManifest | None, config: str | None) -> dict[str, bytes]:
    if manifest is None or config is None:
        return {}
    return {path: ctx.store.read(Digest(sha)) for path, sha in config_files(manifest, config).items()}


def plan_deploy(ctx: Context, digest_text: str, env: str, opts: DeployOptions) -> DeployPlan:
    """Every check of a deploy, and what it would change; nothing is written (no lock is taken)."""
    check_env_name(env)
    digest = resolve_digest(ctx, digest_text)
    target = _verify_target(ctx, digest, env, opts, log_failures=False)
    settings = target.settings
    with ctx.db.connect() as conn:
        state = load_state(conn, env)
        facts = _policy_facts(conn, target, state, kind="deploy", override=opts.override)
        live_row = deployment_row(conn, state.live_deployment) if state else None
    _check_path(state, settings)
    decision = evaluate_policy(facts)
    if not decision.allowed:
        raise PolicyError(decision.refusal or "refused")
    layout = EnvLayout(Path(settings.path))
    live_hex = layout.live_hex()
    live_manifest: TreeManifest | None = None
    if live_hex is not None:
        try:
            live_manifest = load_manifest(ctx, Digest(live_hex))
        except GravenError:
            live_manifest = None
    diff = diff_manifests(live_manifest, target.manifest)
    live_settings = _settings_from_row(live_row)
    old_config = live_settings.config if live_settings else settings.config
    text = config_diff(
        _config_bytes(ctx, live_manifest, old_config),
        _config_bytes(ctx, target.manifest, settings.config),
        old_label=short(live_hex) if live_hex else "(nothing)",
        new_label=short(str(digest)),
    )
    reusable = {(e.sha256, e.executable) for e in live_manifest.files()} if live_manifest else set()
    files = list(target.manifest.files())
    link = sum(1 for e in files if (e.sha256, e.executable) in reusable)
    return DeployPlan(
        env=env,
        digest=str(digest),
        name=target.name,
        commit=target.commit,
        path=settings.path,
        live=f"sha256:{live_hex}" if live_hex else None,
        diff=diff,
        config=settings.config,
        config_diff=text,
        would_link=link,
        would_copy=len(files) - link,
        release_on_disk=layout.release(digest.hex).is_dir(),
        overridden=decision.overridden,
        settings=settings.to_json(),
    )
