"""Environments: ``graven deploy``, ``promote``, ``rollback``, ``hold``, ``unhold``, ``reject``, ``status``
and ``history``.

A deployment verifies the artifact against the operator's trust policy for the environment, reads the
environment's settings from the graven.toml recorded in the artifact's *verified* provenance, checks
policy (rejection, hold, ``requires``) under the environment's lock, materializes the release beside the
live one, switches ``current`` with one rename, runs ``activate`` and ``health``, and records the outcome
and its audit log entries in one database transaction. A failed health check switches back by itself.
The on-disk layout is docs/formats/environments-v1.md. The steps live beside this module: deploy_verify
(checks before anything changes), deploy_release (the release on disk), deploy_records (the database and
the audit log) and deploy_plan (``--plan``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from graven.core.record import Frozen
from graven.db import Connection
from graven.deploy.hook_result import HookResult, step_error  # eager: the switch back needs it
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock
from graven.deploy.plan import PolicyDecision, evaluate_policy, short
from graven.deploy.settings import check_env_name
from graven.deploy.statdb import StatTable
from graven.deploy.switch import point_symlink
from graven.errors import BackendError, GravenError, InputError, NeverDeployedError, PolicyError
from graven.model.digest import Digest
from graven.service.artifacts import resolve_digest
from graven.service.context import Context, never_deployed, utc_now
from graven.service.deploy_records import (
    RejectedMeanwhileError,
    insert_pending,
    reconcile,
    reconcile_sharers,
    record_failure,
    record_success,
)
from graven.service.deploy_release import (
    check_links,
    clean_leftovers,
    ensure_release,
    hook_environment,
    readlink,
    retention,
    step,
    switch,
)
from graven.service.deploy_types import DeployOptions, Target
from graven.service.deploy_verify import (
    check_location,
    check_path,
    policy_facts,
    recheck_trust,
    tested_target,
    verify_target,
)
from graven.service.environments import (
    HEALTHY,
    EnvState,
    deployment_row,
    load_state,
    rejection,
    settle_path,
    went_live_here,
)
from graven.service.witness import check_witness, write_witness

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from graven.deploy.materialize import BuildStats
    from graven.service.deploy_plan import DeployPlan, plan_deploy
    from graven.service.deploy_records import Restored

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


def __getattr__(name: str) -> Any:
    """``DeployPlan`` and ``plan_deploy`` (re-exported): loaded for ``graven deploy --plan`` only."""
    if name in ("DeployPlan", "plan_deploy"):
        from graven.service import deploy_plan

        return getattr(deploy_plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- hooks: graven.deploy.hooks (and subprocess) is loaded only when a step needs it -----------------


def run_hook(
    command: str, *, cwd: Path, env: Mapping[str, str], timeout: float, warn: Callable[[str], None]
) -> HookResult:
    """:func:`graven.deploy.hooks.run_hook` (the activate command)."""
    from graven.deploy import hooks

    return hooks.run_hook(command, cwd=cwd, env=env, timeout=timeout, warn=warn)


def run_health(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    retries: int,
    interval: float,
    warn: Callable[[str], None],
) -> HookResult:
    """:func:`graven.deploy.hooks.run_health` (the health command, with its retries)."""
    from graven.deploy import hooks

    return hooks.run_health(
        command, cwd=cwd, env=env, timeout=timeout, retries=retries, interval=interval, warn=warn
    )


# -- results ---------------------------------------------------------------------------------------


class DeployResult(Frozen):
    """What a deploy, promote or rollback did (a frozen value: graven.core.record)."""

    __slots__ = (
        "activate",
        "commit",
        "digest",
        "env",
        "health",
        "health_detail",
        "held",
        "kind",
        "message",
        "name",
        "ok",
        "overridden",
        "path",
        "previous",
        "release",
        "removed",
        "reused_release",
        "rolled_back_health",
        "rolled_back_to",
        "seconds",
        "stats",
    )
    _fields = (
        "ok",
        "env",
        "kind",
        "digest",
        "name",
        "commit",
        "path",
        "release",
        "previous",
        "health",
        "message",
        "rolled_back_to",
        "overridden",
        "held",
        "reused_release",
        "stats",
        "removed",
        "activate",
        "health_detail",
        "seconds",
        "rolled_back_health",
    )
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
    rolled_back_to: str | None
    overridden: tuple[str, ...]
    held: bool
    reused_release: bool
    stats: dict[str, Any]
    removed: tuple[str, ...]
    activate: str | None
    health_detail: str | None
    seconds: float
    rolled_back_health: str | None

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        ok: bool,
        env: str,
        kind: str,
        digest: str,
        name: str,
        commit: str | None,
        path: str,
        release: str,
        previous: str | None,
        health: str,
        message: str,
        rolled_back_to: str | None = None,
        overridden: tuple[str, ...] = (),
        held: bool = False,
        reused_release: bool = False,
        stats: dict[str, Any] | None = None,
        removed: tuple[str, ...] = (),
        activate: str | None = None,
        health_detail: str | None = None,
        seconds: float = 0.0,
        rolled_back_health: str | None = None,
    ) -> None:
        values: tuple[object, ...] = (ok, env, kind, digest, name, commit, path, release, previous, health)
        values += (message, rolled_back_to, overridden, held, reused_release, {} if stats is None else stats)
        values += (removed, activate, health_detail, seconds, rolled_back_health)
        for field, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, field, value)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: every field, tuples as lists, stats a copy (its values are numbers)."""
        data = {field: getattr(self, field) for field in self._fields}
        data["overridden"] = list(self.overridden)
        data["removed"] = list(self.removed)
        data["stats"] = dict(self.stats)
        return data


# -- the deployment itself -------------------------------------------------------------------------


def _run_deployment(
    ctx: Context,
    target: Target,
    opts: DeployOptions,
    *,
    kind: str,
    source_env: str | None = None,
    recheck: Callable[[Connection, EnvState | None], None] | None = None,
) -> DeployResult:
    """Lock the environment and deploy ``target``. ``recheck`` (a promote's "still live in FROM", a
    rollback's "still the release the choice was made on") runs under the lock, on the state read
    there, and refuses by raising.

    The phases run in this order, which is what makes a deployment crash safe (see :class:`_Deployment`):
    a deployer killed at any point leaves ``current`` on a complete release and, at worst, a
    ``pending`` row that the next deployment settles from what ``current`` shows."""
    run = _Deployment(ctx, target, opts, kind=kind, source_env=source_env)
    run.check_directory()
    lock = EnvLock(
        run.layout.lock, env=run.env, actor=ctx.audit.actor, since=utc_now(), warn=ctx.reporter.warn
    )
    lock.acquire(wait=opts.wait)
    with lock:
        run.check_under_lock(recheck)
        run.build_release()
        run.record_pending()
        run.switch_and_check()
        if run.passed:
            return run.succeed()
        return run.fail()


def _passed(result: HookResult | None) -> bool:
    """A hook that was not configured (None) or that succeeded."""
    return result is None or result.ok


class _Deployment:
    """One deployment of ``target`` into its environment, one method per phase (run by
    :func:`_run_deployment`, in the order below); each phase reads what the phases before it set.

    Crash safety comes from this order: the checks change nothing but the lock and the records a dead
    deployer left; :meth:`build_release` makes the new release beside the live one; ``current`` is
    switched (one rename) only once that release is complete and the intent is recorded as a
    ``pending`` row (:meth:`record_pending`), which the next deployment settles from what ``current``
    names should this one be killed; the outcome is recorded in one transaction (:meth:`succeed`,
    :meth:`fail`).
    """

    # set by check_under_lock
    locked_at: str
    state: EnvState | None  # the environment's row, read under the lock
    decision: PolicyDecision
    # set by build_release
    previous: str | None  # what was live before (sha256:HEX), None for a first deployment
    table: StatTable
    stats: BuildStats | None
    reused: bool
    # set by record_pending
    dep_id: int
    # set by switch_and_check
    old_config: str | None  # where the config link pointed before the switch

    def __init__(
        self, ctx: Context, target: Target, opts: DeployOptions, *, kind: str, source_env: str | None
    ) -> None:
        self.started = time.monotonic()
        self.ctx, self.target, self.opts = ctx, target, opts
        self.kind, self.source_env = kind, source_env
        self.settings = target.settings
        self.env = self.settings.name
        self.digest = str(target.digest)
        self.layout = EnvLayout(Path(self.settings.path))
        # how the switch and the hooks went (switch_and_check)
        self.activate: HookResult | None = None
        self.health: HookResult | None = None
        self.stopped: BaseException | None = None  # what ended the steps after the switch early
        self.phase = "switch"  # the step under way when it stopped
        self.moved: str | None = None  # how hooks that failed anyway moved ``current``

    # -- before anything changes ---------------------------------------------------------------------

    def check_directory(self) -> None:
        """Before the lock creates anything in the directory: refuse (raising) a directory graven may not
        deploy to. After this returns, the directory is as it was, and its file system can hold a
        release (checked while graven has made nothing there yet)."""
        ctx, settings, layout = self.ctx, self.settings, self.layout
        with ctx.db.connect() as conn:
            check_location(ctx, conn, settings)
            check_path(load_state(conn, self.env), settings)
        check_links(layout)  # here too: a refusal leaves the directory as it was (again under the lock)
        from graven.deploy.fscheck import check_path_room, check_release_support

        check_path_room(
            layout.release(self.target.digest.hex), [e.path for e in self.target.manifest.entries]
        )
        if not os.path.lexists(layout.meta):  # graven has made nothing here yet: can the file system hold it?
            check_release_support(layout.root)

    def check_under_lock(self, recheck: Callable[[Connection, EnvState | None], None] | None) -> None:
        """Under the lock, before anything changes: the audit log can record, the home is the one that
        deployed here, what a dead deployer left ``pending`` is settled, and the location, ``recheck``
        and policy allow this deployment (else it raises). Sets ``locked_at``, ``state`` and
        ``decision``."""
        ctx, env = self.ctx, self.env
        self.locked_at = utc_now()
        step(ctx, "locked")
        # before anything changes: a change that could not be recorded (a log rolled back, its key
        # lost) must not switch and run hooks first; nor may a home older than what it left here
        ctx.audit.check_ready()
        check_witness(ctx, self.layout, env)
        reconcile(ctx, env, self.layout)
        reconcile_sharers(ctx, env, self.layout)  # another environment's killed deployer, here
        with ctx.db.connect() as conn:
            # again: another environment may have gone live in this directory while this one waited
            check_location(ctx, conn, self.settings, warn=False)
            self.state = load_state(conn, env)
            if recheck is not None:
                recheck(conn, self.state)
            facts = policy_facts(conn, self.target, self.state, kind=self.kind, override=self.opts.override)
        check_path(self.state, self.settings)
        self.decision = evaluate_policy(facts)
        if not self.decision.allowed:
            raise PolicyError(self.decision.refusal or "refused")

    def build_release(self) -> None:
        """After this returns, releases/<hex> is a complete, checked release of the artifact beside the
        live one (made, or the one already there), leftovers of a dead deployer are gone, and
        ``current`` is untouched. Sets ``previous``, ``table``, ``stats`` and ``reused``."""
        ctx, layout = self.ctx, self.layout
        check_links(layout)
        live_hex = layout.live_hex()
        self.previous = f"sha256:{live_hex}" if live_hex else None
        self.table = StatTable.load(layout.stat_file, ctx.record_key)
        clean_leftovers(ctx, layout, self.table, live_hex)
        self.stats, self.reused = ensure_release(ctx, self.target, layout, self.table, live_hex)
        step(ctx, "release-ready")

    def record_pending(self) -> None:
        """The last checks before the switch (trust may have changed while this waited or built; a
        rejection, under the database's write lock), then the intent: after this returns, the
        deployment has a ``pending`` row (``dep_id``) that a deployer killed from here on leaves for
        the next one to settle."""
        recheck_trust(self.ctx, self.target, self.opts)
        self.dep_id = insert_pending(
            self.ctx,
            self.target,
            kind=self.kind,
            source_env=self.source_env,
            previous=self.previous,
            opts=self.opts,
            started_at=self.locked_at,
            overridden=bool(self.decision.overridden),
        )
        step(self.ctx, "pending-recorded")

    # -- the switch and the checks -------------------------------------------------------------------

    def switch_and_check(self) -> None:
        """Switch ``current`` to the new release, run ``activate`` and ``health``, and check the digest
        was not rejected meanwhile. Whatever stops these steps half-way (an error, Ctrl-C) is not
        raised: it is kept in ``stopped`` and recorded as the failed result of the step under way
        (``phase``), to be switched back like a failed health check. After this returns, :attr:`passed`
        says whether the deployment may stay live; ``current`` names the new release whenever the
        switch was made (hooks that pointed it elsewhere fail the health check; when they failed
        anyway, :attr:`moved` says what they did, for the failure's records and message).
        """
        self.old_config = readlink(self.layout.config_link)
        try:
            self._switch_and_run_hooks()
        except (Exception, KeyboardInterrupt) as exc:
            # Whatever stops the switch or the hooks half-way (an error, Ctrl-C) must not leave an
            # unchecked release live: it is a failure like a failed health check, and is switched back.
            self.stopped = exc
            failed = step_error(self.phase, exc)
            if isinstance(exc, KeyboardInterrupt):
                failed = step_error(self.phase, InputError("interrupted (Ctrl-C or SIGTERM)"))
            if self.phase == "activate":
                self.activate = failed
            else:
                self.health = failed
        if self.phase != "switch" and (self.settings.activate or self.settings.health):
            self._check_current_unmoved()  # the switch was made and hooks ran: passed or not

    @property
    def passed(self) -> bool:
        """Nothing stopped the steps after the switch, and every hook that ran succeeded."""
        return self.stopped is None and _passed(self.activate) and _passed(self.health)

    def _switch_and_run_hooks(self) -> None:
        """The steps after the switch, each naming itself in ``phase`` before it starts; raises what
        stops one."""
        ctx, settings, layout = self.ctx, self.settings, self.layout
        switch(layout, self.target.digest.hex, settings.config)
        step(ctx, "switched")
        hook_env = hook_environment(layout, settings, self.digest, self.previous)
        if settings.activate:
            self.phase = "activate"
            self.activate = run_hook(
                settings.activate,
                cwd=layout.root,
                env=hook_env,
                timeout=settings.activate_timeout,
                warn=ctx.reporter.warn,
            )
            step(ctx, "activated")
        if settings.health and _passed(self.activate):
            self.phase = "health check"
            self.health = run_health(
                settings.health,
                cwd=layout.root,
                env=hook_env,
                timeout=settings.health_timeout,
                retries=settings.health_retries,
                interval=settings.health_interval,
                warn=ctx.reporter.warn,
            )
            step(ctx, "health-checked")
        if _passed(self.activate) and _passed(self.health):
            self.phase = "the deployment" if self.kind != "rollback" else "the rollback"
            with ctx.db.connect() as conn:
                rejected = rejection(conn, self.digest)
            if rejected is not None:  # `graven reject` while this deployment ran: never left live
                # (a rollback is not switched back: it fails, and stays live and held)
                raise PolicyError(f"{short(self.digest)} was rejected during {self.phase} ({rejected})")

    def _check_current_unmoved(self) -> None:
        """After the hooks, whether they passed or not: ``current`` must still name the new release. A
        hook that pointed it elsewhere has ``current`` pointed back at the new release first, so that
        the failure's records (a switch back, or a rollback or a redeploy that stays) describe the
        disk; hooks that passed then fail the health check, hooks that failed keep their failure and
        :attr:`moved` says what they did to ``current``."""
        layout, hex_digest = self.layout, self.target.digest.hex
        try:
            now_live = layout.live_hex()  # a hook may have pointed current elsewhere
            if now_live == hex_digest:
                return
            point_symlink(layout.current, layout.link_target(hex_digest))
            moved = (
                f"{layout.current} was changed while the hooks ran (it names "
                f"{now_live[:12] if now_live else 'nothing'}); graven made no such switch"
            )
        except GravenError as exc:  # made a directory, say: the failure's switch back tries again
            moved = f"{layout.current} was changed while the hooks ran: {exc}"
        if self.passed:
            self.health = step_error("health check", InputError(moved))
        else:
            self.moved = moved

    # -- the outcome ---------------------------------------------------------------------------------

    def _result_fields(self) -> dict[str, Any]:
        """The fields of the :class:`DeployResult` that success and failure share."""
        activate, health, stats = self.activate, self.health, self.stats
        return {
            "env": self.env,
            "kind": self.kind,
            "digest": self.digest,
            "name": self.target.name,
            "commit": self.target.commit,
            "path": self.settings.path,
            "release": str(self.layout.release(self.target.digest.hex)),
            "previous": self.previous,
            "overridden": self.decision.overridden,
            "reused_release": self.reused,
            "stats": stats.to_json() if stats else {},
            "activate": activate.describe() if activate else None,
            "health_detail": health.describe() if health else None,
        }

    def succeed(self) -> DeployResult:
        """The checks passed: record the success (one transaction), then the witness, then retention.
        After this returns, the records name the new release live, as ``current`` does; when the
        success cannot be recorded, the deployment is switched back and this raises instead."""
        ctx, env, health = self.ctx, self.env, self.health
        common = self._result_fields()
        health_state = "healthy" if health is not None else "none"
        try:
            held = record_success(
                ctx,
                self.target,
                self.dep_id,
                self.decision,
                kind=self.kind,
                source_env=self.source_env,
                previous=self.previous,
                health=health_state,
                opts=self.opts,
                layout=self.layout,
            )
        except RejectedMeanwhileError as exc:  # `graven reject` after the last look: as in the hooks
            self.phase = "the deployment" if self.kind != "rollback" else "the rollback"
            self.stopped = exc
            self.health = step_error(self.phase, exc)
            return self.fail()
        except GravenError as exc:  # a full or read-only home: not left live without a record
            self._unrecorded(exc)
        step(ctx, "recorded")
        write_witness(ctx, self.layout)
        with ctx.db.connect() as conn:
            state_now = load_state(conn, env)
        assert state_now is not None
        removed = retention(ctx, self.layout, self.table, env=env, keep=self.settings.keep, state=state_now)
        step(ctx, "done")
        message = f"{short(self.digest)} is live in {env}"
        if health is not None:
            message += f" and healthy ({health.attempts} health check{'s' if health.attempts > 1 else ''})"
        return DeployResult(
            ok=True,
            health=health_state,
            message=message,
            held=held,
            removed=removed,
            seconds=time.monotonic() - self.started,
            **common,
        )

    def _unrecorded(self, exc: GravenError) -> NoReturn:
        """A healthy deployment whose success could not be written: exit 1 means what was live stays live,
        so it is switched back as after a failed health check (the old release's hooks run again; a
        rollback stays, as a failed rollback does), and the error says what the environment is on. A
        bypassed requirement is logged as an ``override`` entry, as after a failed health check."""
        env, digest, kind, previous, layout = self.env, self.digest, self.kind, self.previous, self.layout
        failure = step_error("recording", exc)
        stopped: BaseException | None = None
        try:
            restored = record_failure(
                self.ctx,
                self.target,
                self.dep_id,
                self.state,
                kind=kind,
                previous=previous,
                failure=failure,
                what="recording",
                layout=layout,
                old_config=self.old_config,
                opts=self.opts,
                overridden=tuple(self.decision.overridden),
            )
            back, health, detail = restored.rolled_back_to, restored.health, restored.detail
            stopped = restored.interrupted
        except GravenError:  # the database still refuses: its pending row is settled by the next command
            back = previous if kind != "rollback" and layout.live_hex() != self.target.digest.hex else None
            health, detail = None, None
        if kind == "rollback":
            where = f"{short(digest)} stays live and held"
            then = f"make GRAVEN_HOME writable (free space), then check `graven status {env}`"
        elif back is None:
            now = layout.live_hex()
            where = f"{short(now)} is live" if now else "nothing is live"
            then = "make GRAVEN_HOME writable (free space), then deploy again"
        else:
            where = f"switched back to {short(back)}"
            if health == "failed":
                where += f", which failed its checks too ({detail}): {env} is unhealthy"
            then = "make GRAVEN_HOME writable (free space), then deploy again"
        message = (
            f"{short(digest)} passed its checks in {env} but could not be recorded ({exc}); {where}; {then}"
        )
        if stopped is not None:  # the command ends as interrupted: it says first what is live
            self.ctx.reporter.warn(message)
            raise stopped
        raise BackendError(message) from exc

    def fail(self) -> DeployResult:
        """A step failed or was stopped: switch back (unless this is a rollback, or the switch itself
        failed before ``current`` changed) and record the failure (one transaction, see
        record_failure), then the witness. After this returns (or re-raises a Ctrl-C or SIGTERM, once
        all that is done and the failure's message is warned), ``current`` and the records agree on
        what is live."""
        ctx, layout, previous, activate = self.ctx, self.layout, self.previous, self.activate
        common = self._result_fields()
        failure = activate if activate is not None and not activate.ok else self.health
        assert failure is not None
        what = "activate" if failure is activate else "health check"
        if self.stopped is not None:
            what = self.phase
        # a switch that failed before current changed (its rename is atomic: one or the other)
        switched = not (
            self.phase == "switch"
            and layout.live_hex() == (previous.removeprefix("sha256:") if previous else None)
        )
        restored = record_failure(
            ctx,
            self.target,
            self.dep_id,
            self.state,
            kind=self.kind,
            previous=previous,
            failure=failure,
            what=what,
            layout=layout,
            old_config=self.old_config,
            opts=self.opts,
            overridden=tuple(self.decision.overridden),
            switched=switched,
            moved=self.moved,
        )
        write_witness(ctx, layout)
        step(ctx, "done")
        described = _failure_text(failure, layout, self.env, "activate" if failure is activate else "health")
        if self.moved is not None:
            described = f"{described}; {self.moved}"
        message = self._failure_message(what, described, restored, switched=switched)
        stopped = self.stopped if isinstance(self.stopped, KeyboardInterrupt) else restored.interrupted
        if stopped is not None:  # the command ends as interrupted: it says first what is live
            ctx.reporter.warn(message)
            raise stopped
        return DeployResult(
            ok=False,
            health="failed",
            message=message,
            rolled_back_to=restored.rolled_back_to,
            rolled_back_health=restored.health,
            held=restored.held,
            seconds=time.monotonic() - self.started,
            **common,
        )

    def _failure_message(self, what: str, described: str, restored: Restored, *, switched: bool) -> str:
        """The one line a failed deployment reports: what failed, what the environment is on now, and
        what to do next."""
        env, kind, previous, rolled_back_to = self.env, self.kind, self.previous, restored.rolled_back_to
        digest = short(self.digest)
        # a hook that failed may be the artifact's fault; a switch that failed (a full disk), a
        # stop or a file system mounted noexec is not
        artifact_hook = what in ("activate", "health check") and "mounted noexec" not in described
        fix = "fix the artifact and deploy again" if artifact_hook else "deploy again once that is fixed"
        if not switched:
            still = f"{short(previous)} is still live" if previous else "nothing is live"
            holding = f" and {env} stays held" if restored.held else ""
            return (
                f"the switch to {digest} in {env} failed ({described}); nothing was switched: "
                f"{still} in {env}{holding}; {fix}"
            )
        if rolled_back_to and restored.health == "failed":
            return (
                f"{what} of {digest} in {env} failed ({described}); switched back to "
                f"{short(rolled_back_to)}, which failed its checks too ({restored.detail}): {env} is "
                "unhealthy whatever is deployed; fix the environment, then deploy again"
            )
        if rolled_back_to:
            note = f" ({restored.detail})" if restored.detail else ""  # its hooks not run, say
            return (
                f"{what} of {digest} in {env} failed ({described}); switched back to "
                f"{short(rolled_back_to)}{note}; {fix}"
            )
        if kind == "rollback":
            after = "" if what == "the rollback" else " after the rollback"
            return (
                f"{what} of {digest} in {env} failed{after} ({described}); it "
                f"stays live and held; roll back --to another digest, or fix and `graven unhold {env}`"
            )
        if previous == self.digest:
            return (
                f"{what} of {digest} in {env} failed ({described}); it was already live, so "
                "there is nothing to switch back to"
            )
        return (
            f"{what} of {digest} in {env} failed ({described}); nothing was live before, "
            f"so {env} now has no live release; {fix}"
        )


# -- use cases -------------------------------------------------------------------------------------


def deploy(
    ctx: Context,
    digest_text: str,
    env: str,
    opts: DeployOptions,
    *,
    kind: str = "deploy",
    source_env: str | None = None,
    recheck: Callable[[Connection, EnvState | None], None] | None = None,
    ran_with: tuple[str, str] | None = None,
) -> DeployResult:
    """Verify ``digest`` and make it the live release of ``env`` (``recheck``: see _run_deployment;
    ``ran_with``: the graven.toml to take the settings from, see verify_target)."""
    check_env_name(env)
    if opts.override and not (opts.reason and opts.reason.strip()):
        raise InputError("--override-policy needs --reason TEXT: say why policy is bypassed")
    digest = resolve_digest(ctx, digest_text)
    target = tested_target(ctx, digest, env, opts, ran_with=ran_with, source_env=source_env)
    return _run_deployment(ctx, target, opts, kind=kind, source_env=source_env, recheck=recheck)


def promote(ctx: Context, from_env: str, to_env: str, opts: DeployOptions) -> DeployResult:
    """Deploy to ``to_env`` exactly the digest that is live and healthy in ``from_env`` (checked again
    under ``to_env``'s lock: a promote that waited must not ship what ``from_env`` rolled away from).

    A deployment of ``from_env`` recorded ``pending`` is settled first, under ``from_env``'s lock (as
    rollback does): a deployer at work there makes this promote fail naming it (or, with ``wait``,
    queue behind it), and one that was killed is recorded as what its directory shows, so that the
    choice is made on what is really live there and a refusal says what happened."""
    check_env_name(from_env)
    check_env_name(to_env)
    if from_env == to_env:
        raise InputError(f"cannot promote {from_env} to itself")
    if not ctx.home.has_database():
        raise never_deployed(ctx, from_env)
    with ctx.db.connect() as conn:
        source = load_state(conn, from_env)
    _settle_pending(ctx, from_env, source, opts)  # its first deployment's too (nothing recorded yet)
    with ctx.db.connect() as conn:
        try:
            digest, pipeline = _promotable(conn, from_env)
        except NeverDeployedError:
            raise never_deployed(ctx, from_env) from None  # or a database that lost its log

    def still_live(conn: Connection, _state: EnvState | None) -> None:
        now, now_pipeline = _promotable(conn, from_env)
        if now != digest:
            raise PolicyError(
                f"{from_env} changed while this promote waited: {short(now)} is live there now, not "
                f"{short(digest)}; promote again"
            )
        if now_pipeline != pipeline:
            raise PolicyError(
                f"{from_env} was redeployed with another graven.toml while this promote waited; promote again"
            )

    ran_with = None if pipeline is None else (pipeline, f"in {from_env}")
    return deploy(
        ctx, digest, to_env, opts, kind="promote", source_env=from_env, recheck=still_live, ran_with=ran_with
    )


def _promotable(conn: Connection, from_env: str) -> tuple[str, str | None]:
    """The digest live and healthy in ``from_env``, as recorded and as its directory shows, and the
    graven.toml it runs with there (None for a record older than that column); else
    :class:`PolicyError` (or :class:`NeverDeployedError`) saying what to fix."""
    state = load_state(conn, from_env)
    row = deployment_row(conn, state.live_deployment) if state else None
    if state is None:
        raise NeverDeployedError(from_env)
    if state.live_digest is None:
        raise PolicyError(f"nothing is live in {from_env}; deploy there first")
    on_disk = EnvLayout(Path(state.path)).live_hex()
    if on_disk != state.live_digest.removeprefix("sha256:"):
        raise PolicyError(
            f"{from_env} is recorded live on {short(state.live_digest)} but its directory shows "
            f"{short(on_disk)}; redeploy {from_env} (or roll it back) before promoting"
        )
    health = row.health if row is not None else "unknown"
    if row is not None and row.result == "interrupted":  # settled: live, its health never checked
        live = short(state.live_digest)
        raise PolicyError(
            f"{live} is live in {from_env} but its deployer stopped before its health check was "
            f"recorded (`graven history {from_env}`); `graven deploy {live} {from_env}` checks it "
            "again, then promote"
        )
    if row is None or row.result != "ok" or health not in HEALTHY:
        raise PolicyError(
            f"{short(state.live_digest)} is live in {from_env} but not healthy ({health}); fix {from_env} "
            "before promoting"
        )
    return state.live_digest, row.pipeline_digest


def rollback(ctx: Context, env: str, opts: DeployOptions, *, to: str | None = None) -> DeployResult:
    """Make the release live before the current one (or ``to``, from this environment's history) live
    again, and hold.

    Without ``to`` a rollback walks back through history: it goes to what was live before the live
    digest was (last) deployed, so a second rollback goes further back instead of returning to the
    release the first one rolled away from.
    """
    check_env_name(env)
    if not ctx.home.has_database():
        raise never_deployed(ctx, env)
    with ctx.db.connect() as conn:
        state = load_state(conn, env)
    # a killed deployer may have changed what is live; its first deployment's too (no row yet)
    _settle_pending(ctx, env, state, opts)
    with ctx.db.connect() as conn:
        state = load_state(conn, env)
        if state is None:
            raise never_deployed(ctx, env)
        if to is not None:
            digest = resolve_digest(ctx, to)
        else:
            found = _rollback_target(conn, env, state.live_digest)
            if found is None:
                raise InputError(_no_rollback_target(conn, env, state.live_digest))
            digest = Digest.parse(found)
    if str(digest) == state.live_digest:
        raise InputError(f"{short(str(digest))} is already live in {env}; nothing to roll back")
    chosen_on = state.live_digest

    def unchanged(_conn: Connection, now: EnvState | None) -> None:
        """Under the lock: the choice was made on what is still live (a deployment that held the
        lock while this rollback waited would make it go two steps back, or to the live release)."""
        live = now.live_digest if now is not None else None
        if live != chosen_on:
            shown = short(live) if live else "nothing"
            raise PolicyError(
                f"{env} changed while this rollback waited: {shown} is live now, not {short(chosen_on)}"
                f"; check `graven status {env}` and roll back again"
            )

    with ctx.db.connect() as conn:
        pipeline = _ran_here_with(conn, env, str(digest))
    ran_with = None if pipeline is None else (pipeline, f"when it was live in {env}")
    target = verify_target(ctx, digest, env, opts, ran_with=ran_with)
    return _run_deployment(ctx, target, opts, kind="rollback", recheck=unchanged)


def _failure_text(failure: HookResult, layout: EnvLayout, env: str, hook: str) -> str:
    """What a failed hook (``activate`` or ``health``) did, with a hint for what a newcomer meets: a
    file the shell cannot run (exit 126: the environment on a file system mounted noexec, which is not
    the artifact's fault, else a file committed without its executable bit), a command not found
    (exit 127: hooks run in PATH, not in the release) and a hook that timed out."""
    text = failure.describe()
    if failure.error is not None:
        return text
    if failure.returncode == 126:
        from graven.deploy.fscheck import mounted_noexec

        if mounted_noexec(layout.root):
            text += (
                f"; {layout.root} is on a file system mounted noexec, where no file of a release can "
                "run: remount it without noexec, or run the file through its interpreter"
            )
        else:
            text += (
                "; the shell found a file it cannot run: commit it with its executable bit "
                "(`git update-index --chmod=+x FILE`), or run it through its interpreter (`sh FILE`)"
            )
    elif failure.returncode == 127:
        text += (
            f"; a command was not found: {hook} runs in {layout.root} with the deployer's PATH, and the "
            "release's files are below current/ there"
        )
    elif failure.returncode is None and failure.timeout is not None:
        tries = f", the last of {failure.attempts} attempts" if failure.attempts > 1 else ""
        text += f"{tries}; give it longer with {hook}_timeout in [env.{env}], or make it end sooner"
    return text


def _ran_here_with(conn: Connection, env: str, digest: str) -> str | None:
    """The graven.toml ``digest`` last went live in ``env`` with (its settings, its hooks): what a
    rollback redeploys."""
    found = conn.execute(
        "SELECT pipeline_digest FROM deployments WHERE env = :env AND digest = :digest"
        " AND result IN ('ok', 'interrupted') AND pipeline_digest IS NOT NULL ORDER BY id DESC LIMIT 1",
        {"env": env, "digest": digest},
    ).scalar_one_or_none()
    return None if found is None else str(found)


def _settle_pending(ctx: Context, env: str, state: EnvState | None, opts: DeployOptions) -> None:
    """Settle deployments a dead process left pending, under the environment's lock (so a deployer
    at work is never mistaken for a dead one)."""
    with ctx.db.connect() as conn:
        pending = conn.execute(
            "SELECT id FROM deployments WHERE env = :env AND result = 'pending'", {"env": env}
        ).first()
        path = settle_path(conn, env, state) if pending is not None else None
    if path is None:
        return
    layout = EnvLayout(Path(path))
    layout.check_owners()  # before the lock makes anything there, as _run_deployment
    lock = EnvLock(layout.lock, env=env, actor=ctx.audit.actor, since=utc_now(), warn=ctx.reporter.warn)
    lock.acquire(wait=opts.wait)
    with lock:
        reconcile(ctx, env, layout)


_CANDIDATES_SHOWN = 5  # releases a refused rollback names for --to


def _no_rollback_target(conn: Connection, env: str, live: str | None) -> str:
    """Why a rollback without --to has no target (:func:`_rollback_target` found none), and the
    releases that were live in ``env`` (newest first), which --to takes."""
    text = f"{env} has no earlier release to roll back to"
    if live is None:
        newest = conn.execute(
            "SELECT digest FROM deployments WHERE env = :env ORDER BY id DESC LIMIT 1", {"env": env}
        ).scalar_one_or_none()
        if newest is not None and not _ever_live(conn, env):
            return (
                f"{text}: nothing was ever live in it (`graven history {env}`: its deployments failed or "
                f"stopped before their switch); `graven deploy {short(str(newest))} {env}` deploys one"
            )
        return f"{text}: nothing is live in it; name one with --to DIGEST (`graven history {env}` lists them)"
    note = _unchecked(conn, env, live)
    others = [
        str(digest)
        for (digest,) in conn.execute(
            "SELECT digest FROM deployments WHERE env = :env AND digest != :live"
            " AND result IN ('ok', 'interrupted') GROUP BY digest ORDER BY MAX(id) DESC",
            {"env": env, "live": live},
        ).all()
    ]
    if not others:
        return f"{text}: {short(live)} is the only release that went live in {env}{note}"
    shown = ", ".join(short(d) for d in others[:_CANDIDATES_SHOWN])
    more = f" and {len(others) - _CANDIDATES_SHOWN} more" if len(others) > _CANDIDATES_SHOWN else ""
    return (
        f"{text}: {short(live)} went live in {env} with nothing live before it (a rollback goes to what "
        "was live before the live release was last deployed or promoted, never forward to a release a "
        f"rollback left); name one that was live with --to DIGEST: {shown}{more} (`graven history {env}`)"
        f"{note}"
    )


def _ever_live(conn: Connection, env: str) -> bool:
    """Whether any release went live in ``env`` (as :func:`went_live_here` tells of one)."""
    return any(
        went_live_here(conn, env, str(digest))
        for digest in conn.execute(
            "SELECT DISTINCT digest FROM deployments WHERE env = :env AND result IN ('ok', 'interrupted')",
            {"env": env},
        ).scalars()
    )


def _unchecked(conn: Connection, env: str, live: str) -> str:
    """What to add when ``live`` is live in ``env`` from a deployment whose deployer was killed after
    its switch (settled ``interrupted``): its health never ran, and a deploy of it runs it."""
    state = load_state(conn, env)
    row = deployment_row(conn, state.live_deployment) if state is not None else None
    if row is None or row.result != "interrupted" or row.digest != live:
        return ""
    return (
        f"; its deployer stopped before its health check was recorded (`graven history {env}`): "
        f"`graven deploy {short(live)} {env}` checks it again"
    )


def _rollback_target(conn: Connection, env: str, live: str | None) -> str | None:
    """What was live before ``live`` was last made live by a deploy or promote that reached the disk
    (newest first; the first such deployment that had something else live before it)."""
    if live is None:
        return None
    rows = conn.execute(
        "SELECT previous_digest, result FROM deployments WHERE env = :env AND digest = :digest"
        " AND kind IN ('deploy', 'promote') AND result IN ('ok', 'interrupted') ORDER BY id DESC",
        {"env": env, "digest": live},
    ).all()
    # a deployment that finished is the evidence; one a dead process left is the fallback (it went
    # live: the environment shows it)
    for wanted in ("ok", "interrupted"):
        for previous, result in rows:
            if result == wanted and previous is not None and previous != live:
                return str(previous)
    return None
