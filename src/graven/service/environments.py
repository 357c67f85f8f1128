"""The recorded state of environments: hold, unhold, reject, status and history, plus the database
helpers that the deployment use cases (graven.service.deploy) share."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from graven.core.record import Frozen, Record
from graven.db import Connection, Row
from graven.deploy.layout import EnvLayout
from graven.deploy.settings import check_env_name
from graven.errors import BackendError, InputError, PolicyError
from graven.model.logentry import LogEvent
from graven.service.artifacts import resolve_digest
from graven.service.context import Context, check_limit, never_deployed, refuse_lost_log, utc_now

__all__ = [
    "HEALTHY",
    "NOT_WITHDRAWN",
    "EnvState",
    "EnvStatus",
    "HoldResult",
    "RejectResult",
    "commit_of",
    "deployment_row",
    "healthy_in",
    "history",
    "hold",
    "live_gate",
    "load_state",
    "reject",
    "rejection",
    "save_state",
    "settle_path",
    "status",
    "unhold",
    "went_live_here",
    "withdrawn_in",
]

HEALTHY = ("healthy", "none")  # a deployment's health that counts as healthy (none: no health command)

# The values here are written by hand (graven.core.record: @dataclass costs start-up).
_set = object.__setattr__


class EnvState(Record):
    """The recorded state of one environment (table deploy_envs); mutable."""

    __slots__ = (
        "exists",
        "held",
        "held_digest",
        "hold_reason",
        "live_deployment",
        "live_digest",
        "name",
        "path",
        "previous_digest",
    )
    _fields = (
        "name",
        "path",
        "live_digest",
        "live_deployment",
        "previous_digest",
        "held",
        "held_digest",
        "hold_reason",
        "exists",
    )

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        name: str,
        path: str,
        live_digest: str | None = None,
        live_deployment: int | None = None,
        previous_digest: str | None = None,
        held: bool = False,
        held_digest: str | None = None,
        hold_reason: str | None = None,
        exists: bool = False,
    ) -> None:
        self.name = name
        self.path = path
        self.live_digest = live_digest
        self.live_deployment = live_deployment
        self.previous_digest = previous_digest
        self.held = held
        self.held_digest = held_digest
        self.hold_reason = hold_reason
        self.exists = exists


def load_state(conn: Connection, env: str) -> EnvState | None:
    """The recorded state of ``env`` (None when it was never deployed to)."""
    row = conn.execute(
        "SELECT name, path, live_digest, live_deployment, previous_digest,"
        " held, held_digest, hold_reason, updated_at FROM deploy_envs WHERE name = :name",
        {"name": env},
    ).one_or_none()
    if row is None:
        return None
    return EnvState(
        name=row.name,
        path=row.path,
        live_digest=row.live_digest,
        live_deployment=row.live_deployment,
        previous_digest=row.previous_digest,
        held=bool(row.held),
        held_digest=row.held_digest,
        hold_reason=row.hold_reason,
        exists=True,
    )


def save_state(conn: Connection, state: EnvState) -> None:
    """Insert or update the state of an environment."""
    values = {
        "name": state.name,
        "path": state.path,
        "live_digest": state.live_digest,
        "live_deployment": state.live_deployment,
        "previous_digest": state.previous_digest,
        "held": state.held,
        "held_digest": state.held_digest,
        "hold_reason": state.hold_reason,
        "updated_at": utc_now(),
    }
    if state.exists:
        conn.execute(
            "UPDATE deploy_envs SET path = :path, live_digest = :live_digest,"
            " live_deployment = :live_deployment, previous_digest = :previous_digest, held = :held,"
            " held_digest = :held_digest, hold_reason = :hold_reason, updated_at = :updated_at"
            " WHERE name = :name",
            values,
        )
    else:
        conn.execute(
            "INSERT INTO deploy_envs (name, path, live_digest, live_deployment, previous_digest,"
            " held, held_digest, hold_reason, updated_at) VALUES (:name, :path, :live_digest,"
            " :live_deployment, :previous_digest, :held, :held_digest, :hold_reason, :updated_at)",
            values,
        )
        state.exists = True


# A healthy record ``d`` of a digest in an environment is withdrawn by what happened there after it: a
# rollback away from the digest (the operator undid it: the hold keeps automation from putting it back
# there, and it must not flow on to what requires the environment either), or a later deployment of the
# digest itself that failed there (the newest evidence says it is not healthy). An automatic rollback
# that failed its checks is the environment's failure, not the digest's (the message says so).
NOT_WITHDRAWN = (
    "NOT EXISTS (SELECT 1 FROM deployments w WHERE w.env = d.env AND w.id > d.id AND ((w.kind = 'rollback'"
    " AND w.previous_digest = d.digest AND w.digest <> d.digest) OR (w.digest = d.digest"
    " AND w.result = 'failed' AND w.kind <> 'auto-rollback')))"
)


def healthy_in(conn: Connection, digest: str) -> frozenset[str]:
    """The environments where ``digest`` went live and healthy, that healthy deployment not withdrawn
    since (:data:`NOT_WITHDRAWN`: rolled back there, or failed there since)."""
    rows = conn.execute(
        "SELECT DISTINCT d.env FROM deployments d WHERE d.digest = :digest AND d.result = 'ok'"  # noqa: S608 (a constant of code)
        f" AND d.health IN :healthy AND {NOT_WITHDRAWN}",
        {"digest": digest, "healthy": HEALTHY},
    )
    return frozenset(str(r.env) for r in rows)


def withdrawn_in(conn: Connection, digest: str, envs: Iterable[str]) -> dict[str, str]:
    """Of ``envs``, those where ``digest`` went live and healthy but every such deployment was
    withdrawn since (:func:`healthy_in` leaves them out): env -> how the newest withdrawal went
    (``rolled back``, ``failed``)."""
    wanted = list(envs)
    if not wanted:
        return {}
    healthy = healthy_in(conn, digest)
    found: dict[str, str] = {}
    for env in wanted:
        if env in healthy:
            continue
        row = conn.execute(
            "SELECT w.kind, w.digest FROM deployments w WHERE w.env = :env AND w.id > (SELECT min(d.id)"
            " FROM deployments d WHERE d.env = :env AND d.digest = :digest AND d.result = 'ok'"
            " AND d.health IN :healthy) AND ((w.kind = 'rollback' AND w.previous_digest = :digest"
            " AND w.digest <> :digest) OR (w.digest = :digest AND w.result = 'failed'"
            " AND w.kind <> 'auto-rollback')) ORDER BY w.id DESC LIMIT 1",
            {"env": env, "digest": digest, "healthy": HEALTHY},
        ).first()
        if row is not None:
            found[env] = "rolled back" if str(row.digest) != digest else "failed"
    return found


def live_gate(conn: Connection, env: str, *, before: int | None = None) -> tuple[str, ...]:
    """The ``requires`` of ``env`` as its newest deploy or promote that went live there (``ok``) was
    recorded with: the gate the next deployment must pass too, whatever its own graven.toml says. A
    rollback (or the automatic switch back of a failed deployment) checks no ``requires`` and sets no
    gate: taken as one, a rollback to a release from before the gate lowered it unrecorded. An
    artifact's graven.toml is written by whoever commits it, so it must not decide alone the gate it
    is let through: a commit dropping ``requires = ["staging"]`` from ``[env.prod]`` would otherwise
    ship itself to prod untested. Lowering the gate takes one ``--override-policy`` (recorded), after
    which the live deployment's settings no longer require it. Rows without settings are passed
    over. ``before``: the gate a deployment of that id met (the rows before it)."""
    rows = conn.execute(
        "SELECT settings FROM deployments WHERE env = :env AND result = 'ok' AND settings IS NOT NULL"
        " AND kind IN ('deploy', 'promote') AND id < :before ORDER BY id DESC LIMIT 1",
        {"env": env, "before": before if before is not None else 2**62},
    ).scalars()
    for text in rows:
        try:
            found = json.loads(str(text)).get("requires", [])
        except (ValueError, AttributeError):
            return ()
        if not isinstance(found, list):
            return ()
        return tuple(dict.fromkeys(str(name) for name in found if isinstance(name, str) and name != env))
    return ()


def rejection(conn: Connection, digest: str) -> str | None:
    """The reason ``digest`` was rejected, or None."""
    reason = conn.execute(
        "SELECT reason FROM rejections WHERE digest = :digest", {"digest": digest}
    ).scalar_one_or_none()
    return str(reason) if reason is not None else None


def went_live_here(conn: Connection, env: str, digest: str) -> bool:
    """True when ``digest`` once went live in ``env``: a deployment of it succeeded there, or one
    whose deployer was killed after its switch (settled ``interrupted``) left it live, as a later
    deployment of ``env`` shows: the release ``current`` named when it started (its previous digest).
    A deployment killed before its switch is ``interrupted`` too, and no later one names it."""
    row = conn.execute(
        "SELECT d.id FROM deployments d WHERE d.env = :env AND d.digest = :digest AND (d.result = 'ok'"
        " OR (d.result = 'interrupted' AND EXISTS (SELECT 1 FROM deployments n WHERE n.env = :env"
        " AND n.previous_digest = :digest AND n.id > d.id))) LIMIT 1",
        {"env": env, "digest": digest},
    ).first()
    return row is not None


def deployment_row(conn: Connection, dep_id: int | None) -> Row | None:
    """One row of the deployments table (None for None)."""
    if dep_id is None:
        return None
    return conn.execute(
        "SELECT id, env, digest, kind, source_env, previous_digest, actor, started_at, finished_at,"
        " result, health, override, reason, detail, settings, pipeline_digest FROM deployments"
        " WHERE id = :id",
        {"id": dep_id},
    ).one_or_none()


class HoldResult(Frozen):
    """What hold/unhold changed."""

    __slots__ = ("changed", "digest", "env", "held")
    _fields = ("env", "held", "changed", "digest")
    env: str
    held: bool
    changed: bool
    digest: str | None

    def __init__(self, env: str, held: bool, changed: bool, digest: str | None) -> None:
        _set(self, "env", env)
        _set(self, "held", held)
        _set(self, "changed", changed)
        _set(self, "digest", digest)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"env": self.env, "held": self.held, "changed": self.changed, "digest": self.digest}


def hold(ctx: Context, env: str, reason: str) -> HoldResult:
    """Hold ``env`` on its live digest: deploy and promote refuse any other until unhold.

    Taken under the environment's deploy lock (waiting for a deployment at work to finish), so the
    hold is on what is live once it is done, never on the digest it is replacing; a deployment a
    killed deployer left pending is settled first (as retire does), for the same reason."""
    check_env_name(env)
    if not reason.strip():
        raise InputError(f"hold needs --reason TEXT: say why {env} must not change")
    if not ctx.home.has_database():
        raise never_deployed(ctx, env)
    with ctx.db.connect() as conn:
        path = settle_path(conn, env, load_state(conn, env))
    if path is None:
        raise never_deployed(ctx, env)
    layout = EnvLayout(Path(path))
    with _deploy_lock(ctx, env, layout, "hold"):
        from graven.service.deploy_records import reconcile

        # a deployer killed after its switch left its release live and its row pending: settled
        # first, so that the hold is on what is live, not on what the records named before it
        reconcile(ctx, env, layout)
        with ctx.db.begin() as conn:
            state = load_state(conn, env)
            if state is None:  # the first deployment, waited for, made nothing live
                raise never_deployed(ctx, env)
            if state.held:
                return HoldResult(env, True, False, state.held_digest)
            state.held, state.held_digest, state.hold_reason = True, state.live_digest, reason
            save_state(conn, state)
            live = state.live_digest
            commit = None if live is None else commit_of(conn, live)
            ctx.audit.append(conn, LogEvent("hold", artifact=live, commit=commit, env=env, reason=reason))
    return HoldResult(env, True, True, state.held_digest)


@contextlib.contextmanager
def _deploy_lock(ctx: Context, env: str, layout: EnvLayout, command: str) -> Iterator[None]:
    """Hold the deploy lock of ``env`` (waiting for a deployment at work) while the block runs; none
    when the environment directory has no lock yet. Refused at once from a hook of that deployment,
    which would wait for itself. First, as deploy does, an environment directory another user could
    change is refused (:meth:`EnvLayout.check_owners`): the lock would make its files wherever a link
    planted at ``PATH`` points, and the command would act on a directory that is no longer graven's."""
    from graven.deploy.lock import EnvLock, busy_env, holds_from_above, read_holder

    layout.check_owners()
    if not layout.meta.is_dir():
        yield
        return
    lock = EnvLock(layout.lock, env=env, actor=ctx.audit.actor, since=utc_now(), warn=ctx.reporter.warn)
    try:
        lock.acquire(wait=False)
    except PolicyError:
        holder = read_holder(layout.lock)
        if holder is not None and holds_from_above(holder):
            raise PolicyError(
                # environments at one PATH share its lock: the deployment may be another one's
                f"graven {command} {env} runs inside a hook of the deployment that holds "
                f"{busy_env(env, holder)} (pid "
                f"{holder.get('pid')}): it would wait for itself; {command} {env} once that deployment "
                "is over"
            ) from None
        lock.acquire(wait=True)
    with lock:
        yield


class RetireResult(Frozen):
    """What retire did: ``env`` (at ``path``, where ``digest`` was live) is no longer one of graven's."""

    __slots__ = ("digest", "env", "path")
    _fields = ("env", "path", "digest")
    env: str
    path: str
    digest: str | None

    def __init__(self, env: str, path: str, digest: str | None) -> None:
        _set(self, "env", env)
        _set(self, "path", path)
        _set(self, "digest", digest)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"env": self.env, "path": self.path, "digest": self.digest}


def retire(ctx: Context, env: str, reason: str) -> RetireResult:
    """Stop managing ``env``: it leaves ``status``, drift checks and watch, and its directory may then
    become another environment's (a renamed one: its releases are adopted). Nothing on disk changes,
    and its history stays (``graven history``). Taken under the deploy lock, as a hold."""
    check_env_name(env)
    if not reason.strip():
        raise InputError(f"retire needs --reason TEXT: say why {env} is no longer managed")
    if not ctx.home.has_database():
        raise never_deployed(ctx, env)
    with ctx.db.connect() as conn:
        recorded = load_state(conn, env)
        path = settle_path(conn, env, recorded)
    if recorded is None or path is None:
        raise never_deployed(ctx, env)
    layout = EnvLayout(Path(path))
    with _deploy_lock(ctx, env, layout, "retire"):
        from graven.service.deploy_records import reconcile

        reconcile(ctx, env, layout)  # a killed deployer's pending record: settled, so the state is true
        with ctx.db.begin() as conn:
            state = load_state(conn, env)
            if state is None:  # retired meanwhile
                raise never_deployed(ctx, env)
            if state.held:
                held_on = (state.held_digest or "sha256:nothing")[7:19]
                raise PolicyError(
                    f"{env} is held on {held_on} ({state.hold_reason or 'no reason given'}): "
                    f"`graven unhold {env}` first, if retiring it is what the hold allows"
                )
            conn.execute("DELETE FROM drift_state WHERE env = :env", {"env": env})
            conn.execute("DELETE FROM deploy_envs WHERE name = :env", {"env": env})
            live = state.live_digest
            event = LogEvent(
                "retire",
                artifact=live,
                commit=None if live is None else commit_of(conn, live),
                env=env,
                reason=f"{reason} (at {state.path})",
            )
            ctx.audit.append(conn, event)
    return RetireResult(env, state.path, state.live_digest)


def settle_path(conn: Connection, env: str, recorded: EnvState | None) -> str | None:
    """The directory whose lock and ``current`` say what became of ``env``'s pending deployments: the
    newest pending one's (its settings name it), else the recorded one (None: neither). They differ
    when the environment, with nothing live, was deployed to another directory: the lock of the
    recorded one would not wait for that deployer, and its ``current`` would settle a release that
    went live as one that did not."""
    return _pending_path(conn, env) or (recorded.path if recorded is not None else None)


def _pending_path(conn: Connection, env: str) -> str | None:
    """The directory of the newest deployment to ``env`` that is pending (at work, or its deployer
    dead: its record holds its settings), so that a hold waits for it; None when there is none."""
    import json

    settings = conn.execute(
        "SELECT settings FROM deployments WHERE env = :env AND result = 'pending' ORDER BY id DESC LIMIT 1",
        {"env": env},
    ).scalar_one_or_none()
    try:
        path = json.loads(settings).get("path") if settings else None
    except (ValueError, AttributeError):
        return None
    return path if isinstance(path, str) and path.startswith("/") else None


def unhold(ctx: Context, env: str, reason: str | None = None) -> HoldResult:
    """Lift a hold: deploys and promotes into ``env`` are allowed again. Refused, as hold is, when
    another user could change the environment directory (:meth:`EnvLayout.check_owners`): what the
    hold keeps there is no longer graven's to release."""
    check_env_name(env)
    if not ctx.home.has_database():
        raise never_deployed(ctx, env)
    with ctx.db.begin() as conn:
        state = load_state(conn, env)
        if state is None:
            raise never_deployed(ctx, env)
        if not state.held:
            return HoldResult(env, False, False, None)
        EnvLayout(Path(state.path)).check_owners()
        digest = state.held_digest
        state.held, state.held_digest, state.hold_reason = False, None, None
        save_state(conn, state)
        commit = None if digest is None else commit_of(conn, digest)
        ctx.audit.append(conn, LogEvent("unhold", artifact=digest, commit=commit, env=env, reason=reason))
    return HoldResult(env, False, True, digest)


class RejectResult(Frozen):
    """What reject recorded."""

    __slots__ = ("already", "digest", "live_in", "reason")
    _fields = ("digest", "reason", "already", "live_in")
    digest: str
    reason: str
    already: bool
    live_in: tuple[str, ...]

    def __init__(self, digest: str, reason: str, already: bool, live_in: tuple[str, ...]) -> None:
        _set(self, "digest", digest)
        _set(self, "reason", reason)
        _set(self, "already", already)
        _set(self, "live_in", live_in)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "digest": self.digest,
            "reason": self.reason,
            "already": self.already,
            "live_in": list(self.live_in),
        }


def reject(ctx: Context, digest_text: str, reason: str) -> RejectResult:
    """Mark ``digest`` as never deployable again, anywhere."""
    if not reason.strip():
        raise InputError("reject needs --reason TEXT: say why this artifact must never be deployed")
    digest = str(resolve_digest(ctx, digest_text))
    with ctx.db.begin() as conn:
        existing = rejection(conn, digest)
        names: list[str] = sorted(  # bytewise, as on SQLite: not in the PostgreSQL database's collation
            conn.execute(
                "SELECT name FROM deploy_envs WHERE live_digest = :digest UNION"
                " SELECT env FROM deployments WHERE digest = :digest AND result = 'pending'",
                {"digest": digest},
            ).scalars()
        )
        live_in = tuple(names)  # live, or being deployed (such a deployment switches back: see deploy)
        if existing is not None:
            return RejectResult(digest, existing, True, live_in)
        conn.execute(
            "INSERT INTO rejections (digest, reason, actor, created_at)"
            " VALUES (:digest, :reason, :actor, :created_at)",
            {"digest": digest, "reason": reason, "actor": ctx.audit.actor, "created_at": utc_now()},
        )
        ctx.audit.append(
            conn, LogEvent("reject", artifact=digest, commit=commit_of(conn, digest), reason=reason)
        )
    return RejectResult(digest, reason, False, live_in)


def commit_of(conn: Connection, digest: str) -> str | None:
    """The commit of a recorded artifact (None when unknown)."""
    value = conn.execute(
        'SELECT "commit" FROM artifacts WHERE digest = :digest', {"digest": digest}
    ).scalar_one_or_none()
    return str(value) if value is not None else None


class EnvStatus(Frozen):
    """One environment in ``graven status``."""

    __slots__ = (
        "commit",
        "deployed_at",
        "deployed_by",
        "env",
        "health",
        "held",
        "held_digest",
        "hold_reason",
        "kind",
        "live",
        "name",
        "on_disk",
        "on_disk_error",
        "path",
        "pending",
        "pending_since",
        "previous",
        "rejected",
    )
    _fields = (
        "env",
        "path",
        "live",
        "name",
        "commit",
        "deployed_at",
        "deployed_by",
        "kind",
        "health",
        "held",
        "held_digest",
        "hold_reason",
        "previous",
        "on_disk",
        "rejected",
        "pending",
        "on_disk_error",
        "pending_since",
    )
    env: str
    path: str
    live: str | None
    name: str | None
    commit: str | None
    deployed_at: str | None
    deployed_by: str | None
    kind: str | None
    health: str | None
    held: bool
    held_digest: str | None
    hold_reason: str | None
    previous: str | None
    on_disk: str | None  # what PATH/current points to
    rejected: bool
    pending: str | None  # a deployment recorded pending: at work, or its deployer killed (unsettled)
    on_disk_error: str | None  # why PATH/current could not be read (permission denied, say)
    pending_since: str | None  # when that pending deployment took the environment's lock

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        env: str,
        path: str,
        live: str | None,
        name: str | None,
        commit: str | None,
        deployed_at: str | None,
        deployed_by: str | None,
        kind: str | None,
        health: str | None,
        held: bool,
        held_digest: str | None,
        hold_reason: str | None,
        previous: str | None,
        on_disk: str | None,
        rejected: bool,
        pending: str | None = None,
        on_disk_error: str | None = None,
        pending_since: str | None = None,
    ) -> None:
        values = (env, path, live, name, commit, deployed_at, deployed_by, kind, health, held, held_digest)
        for field, value in zip(
            self._fields,
            (*values, hold_reason, previous, on_disk, rejected, pending, on_disk_error, pending_since),
            strict=True,
        ):
            _set(self, field, value)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: every field."""
        return {field: getattr(self, field) for field in self._fields}


def status(ctx: Context) -> list[EnvStatus]:
    """Every environment this graven home has deployed to; one whose only record is a ``pending``
    deployment (its first deployer at work, or killed before anything settled it) too, with nothing
    recorded live. An environment with a pending deployment is shown at the directory that deployment
    names (where it is settled: :func:`settle_path`), which differs from the recorded one only when,
    with nothing live, it moved."""
    if not ctx.home.has_database():
        refuse_lost_log(ctx)
        return []
    result: list[EnvStatus] = []
    with ctx.db.connect() as conn:
        states = list(
            conn.execute(
                "SELECT name, path, live_digest, live_deployment, previous_digest,"
                " held, held_digest, hold_reason, updated_at FROM deploy_envs"
            )
        )
        known = {str(row.name) for row in states}
        first = {  # a first deployment, pending: no deploy_envs row yet
            str(env)
            for env in conn.execute("SELECT DISTINCT env FROM deployments WHERE result = 'pending'").scalars()
        } - known
        for row in states:
            dep = deployment_row(conn, row.live_deployment)
            art = (
                conn.execute(
                    'SELECT name, "commit" FROM artifacts WHERE digest = :digest', {"digest": row.live_digest}
                ).one_or_none()
                if row.live_digest
                else None
            )
            pending = _pending(conn, row.name)
            # a pending deployment names its directory: another one when the environment, with
            # nothing live, moved (check_path); it is settled from there (settle_path), so shown there
            path = (_pending_path(conn, row.name) if pending is not None else None) or row.path
            disk, unreadable = _on_disk(path)
            result.append(
                EnvStatus(
                    env=row.name,
                    path=path,
                    live=row.live_digest,
                    name=art.name if art is not None else None,
                    commit=(art.commit if art is not None else None),
                    deployed_at=dep.finished_at if dep is not None else None,
                    deployed_by=dep.actor if dep is not None else None,
                    kind=dep.kind if dep is not None else None,
                    health=dep.health if dep is not None else None,
                    held=bool(row.held),
                    held_digest=row.held_digest,
                    hold_reason=row.hold_reason,
                    previous=row.previous_digest,
                    on_disk=disk,
                    rejected=bool(row.live_digest and rejection(conn, row.live_digest)),
                    pending=pending.digest if pending is not None else None,
                    on_disk_error=unreadable,
                    pending_since=pending.started_at if pending is not None else None,
                )
            )
        for env in first:
            pending = _pending(conn, env)
            if pending is None:  # settled meanwhile (no snapshot on SQLite between the queries)
                continue
            path = _pending_path(conn, env)
            disk, unreadable = _on_disk(path) if path else (None, "its pending deployment names no directory")
            result.append(
                EnvStatus(
                    env=env,
                    path=path or "",
                    live=None,
                    name=None,
                    commit=None,
                    deployed_at=None,
                    deployed_by=None,
                    kind=None,
                    health=None,
                    held=False,
                    held_digest=None,
                    hold_reason=None,
                    previous=None,
                    on_disk=disk,
                    rejected=False,
                    pending=pending.digest,
                    on_disk_error=unreadable,
                    pending_since=pending.started_at,
                )
            )
    if not result:
        refuse_lost_log(ctx)
    result.sort(key=lambda e: e.env)  # by name bytewise, as on SQLite: not in the PostgreSQL collation
    return result


def _pending(conn: Connection, env: str) -> Row | None:
    """The newest deployment of ``env`` recorded ``pending`` (None: none)."""
    return conn.execute(
        "SELECT digest, started_at FROM deployments WHERE env = :env AND result = 'pending'"
        " ORDER BY id DESC LIMIT 1",
        {"env": env},
    ).first()


def _on_disk(path: str) -> tuple[str | None, str | None]:
    """What ``path``/current points to (a digest, or None), and why it could not be read (None: it
    could, or a file or directory stands in its place: heal's)."""
    layout = EnvLayout(Path(path))
    try:
        disk = layout.live_hex()
    except BackendError as exc:
        return None, (None if _lexists(layout.current) else str(exc))
    return (f"sha256:{disk}" if disk else None), None


def _lexists(path: Path) -> bool:
    """Whether ``path`` is there, link or not (False also when it cannot be looked at)."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def history(ctx: Context, env: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Every deploy, promote and rollback of ``env``, oldest first; with ``limit``, only the newest
    ``limit`` of them, still oldest first (as ``tail`` would): the database is asked for them newest
    first with ``LIMIT`` (through the index on ``(env, id)``), so the work grows with ``limit``, not
    with the history."""
    check_env_name(env)
    check_limit(limit)
    if not ctx.home.has_database():
        raise never_deployed(ctx, env)
    query = (
        "SELECT id, env, digest, kind, source_env, previous_digest, actor, started_at, finished_at,"
        " result, health, override, reason, detail, settings FROM deployments WHERE env = :env"
    )
    params: dict[str, Any] = {"env": env}
    if limit is None:
        query += " ORDER BY id"
    else:
        query += " ORDER BY id DESC LIMIT :limit"
        params["limit"] = limit
    with ctx.db.connect() as conn:
        known = conn.execute("SELECT name FROM deploy_envs WHERE name = :env", {"env": env}).first()
        rows = conn.execute(query, params).all()
    if limit is not None:
        rows.reverse()
    if known is None and not rows:
        raise never_deployed(ctx, env)
    out: list[dict[str, Any]] = []
    for row in rows:
        item = dict(row._asdict())
        item["override"] = bool(item["override"])
        item.pop("settings", None)
        out.append(item)
    return out
