"""What is checked before a deployment changes anything: the signature against the trust policy, the
environment's settings from the verified graven.toml, and policy facts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from graven.db import Connection, Row
from graven.deploy.layout import EnvLayout
from graven.deploy.plan import PolicyFacts, TestedPipelines, short
from graven.deploy.settings import (
    GRAVEN_NAMES,
    EnvMovedError,
    EnvSettings,
    check_config_path,
    clashes_with_layout,
    resolve_env,
)
from graven.errors import (
    ConfigError,
    GravenError,
    InputError,
    IntegrityError,
    NotFoundError,
    PolicyError,
    UntrustedSignerError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.pipeline import parse_stored_pipeline
from graven.service.artifacts import get_artifact, load_manifest, not_stored_error
from graven.service.context import Context
from graven.service.deploy_types import DeployOptions, Target
from graven.service.environments import (
    HEALTHY,
    NOT_WITHDRAWN,
    EnvState,
    healthy_in,
    live_gate,
    rejection,
    went_live_here,
    withdrawn_in,
)
from graven.service.provenance import UnsignedError, load_policy, trust_hint, verified_provenances
from graven.signing.trust import TrustPolicy, VerifiedProvenance


def _verified_provenances(
    ctx: Context, digest: Digest, policy: TrustPolicy, env: str
) -> list[VerifiedProvenance]:
    try:
        return [v for v, _ in verified_provenances(ctx, digest, policy=policy, env=env)]
    except UnsignedError:
        raise VerificationError(
            f"{short(str(digest))} is unsigned: no signed provenance is recorded for it; build it with a "
            "signing key, or import it with --attestation"
        ) from None
    except (VerificationError, PolicyError, InputError) as exc:
        where = f"{short(str(digest))} cannot be deployed to {env}"
        if isinstance(exc, UntrustedSignerError):
            # where this environment's keys come from: its [env.NAME] section when it has one (a key
            # trusted in trust/ is trusted everywhere else), else the home's trust
            raise PolicyError(f"{where}: {exc}; {trust_hint(policy, env)}") from None
        if isinstance(exc, PolicyError):  # revoked, no trusted keys: each says its own remedy
            raise PolicyError(f"{where}: {exc}") from None
        raise VerificationError(f"{where}: {exc}") from None


def _requires_of_all(
    ctx: Context, digest: Digest, env: str, provenances: list[VerifiedProvenance], newest: str
) -> tuple[str, ...]:
    """``requires`` of ``env`` in every graven.toml that a trusted provenance of the artifact names.

    Commits that differ only outside the artifact's files give the same digest, each build adding a
    provenance: the settings come from the newest, but its requirements are the union of all of them,
    so rebuilding an older commit can never drop a requirement (bypassing one is --override-policy).
    """
    required: list[str] = []
    for pipeline_digest in dict.fromkeys(v.statement.pipeline_digest for v in provenances):
        if pipeline_digest is None or pipeline_digest == newest:
            continue
        try:
            data = ctx.store.read(Digest.parse(pipeline_digest))
            section = parse_stored_pipeline(data, source=f"graven.toml {pipeline_digest[7:19]}").env.get(env)
        except (IntegrityError, ConfigError):
            continue  # an unreadable older graven.toml names no requirement we could apply
        if section is not None:
            required.extend(section.requires)
    return tuple(dict.fromkeys(required))


def verify_target(
    ctx: Context,
    digest: Digest,
    env: str,
    opts: DeployOptions,
    *,
    log_failures: bool = True,
    ran_with: tuple[str, str] | None = None,
) -> Target:
    """Check the signature against the trust policy for ``env``, then read the settings from the
    graven.toml the verified provenance names (by sha256), then the manifest (verified read).

    An artifact built from several commits (that differ outside its files) has one provenance per
    build, each naming its commit's graven.toml: the newest is used, unless ``ran_with`` = (sha256 of
    a graven.toml, where it ran) names the one a promote or a rollback must keep. A graven.toml-only
    commit must not swap the hooks of a digest already tested with others: a promote deploys what
    ran in the source environment, a rollback what ran here."""
    record = get_artifact(ctx, digest)
    # A signature this home verified before (same key, same bytes) is not checked again: the memo never
    # decides trust, revocation or the environment's keys, so this needs no cryptography on a warm home.
    policy = load_policy(ctx, opts.policy_file, memo=log_failures)  # a plan writes nothing
    try:
        if not ctx.store.has(digest):  # recorded (by another home, say) but not here: say so first
            raise not_stored_error(ctx, digest)
        provenances = _verified_provenances(ctx, digest, policy, env)
        verified = provenances[0] if ran_with is None else _ran_with(digest, env, provenances, *ran_with)
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
    pipeline = parse_stored_pipeline(pipeline_bytes, source=source)
    settings = resolve_env(pipeline.env, env, root=opts.root, source=source)
    if len(provenances) > 1:
        more = tuple(r for r in _requires_of_all(ctx, digest, env, provenances, pipeline_digest) if r != env)
        extra = tuple(r for r in more if r not in settings.requires)
        if extra:
            ctx.reporter.warn(
                f"{short(str(digest))} was also built from other commits whose graven.toml make {env} "
                f"require {', '.join(extra)}; every signed requirement applies"
            )
            settings = settings.with_requires((*settings.requires, *extra))
    check_config_path(manifest, settings)
    return Target(
        digest=digest,
        name=record.name,
        commit=verified.statement.commit or record.commit,
        manifest=manifest,
        settings=settings,
        keyid=verified.keyid,
        pipeline_digest=pipeline_digest,
    )


def recheck_trust(ctx: Context, target: Target, opts: DeployOptions) -> None:
    """The trust decision of :func:`verify_target` made again, under the environment's lock and right
    before the switch: the first was made before the lock was taken, which ``--wait`` may have queued
    for long, and before the release was built. A key revoked or no longer trusted for the
    environment meanwhile (``graven keys revoke``, an edited trust policy) must not let what it signed
    go live: the provenance the target was verified with (its key and graven.toml) must still be
    accepted, else PolicyError (or VerificationError), recorded as a ``verify-failure``. The home's
    memo of verified signatures keeps this free of cryptography."""
    env = target.settings.name
    try:
        policy = load_policy(ctx, opts.policy_file)
        provenances = _verified_provenances(ctx, target.digest, policy, env)
        if not any(
            v.keyid == target.keyid and v.statement.pipeline_digest == target.pipeline_digest
            for v in provenances
        ):
            raise PolicyError(
                f"{short(str(target.digest))} cannot be deployed to {env}: the signature it was verified "
                f"with (key {target.keyid[:16]}) is no longer accepted for {env}; the trust policy changed "
                "while this deployment waited for its lock; nothing was switched"
            )
    except (VerificationError, PolicyError, IntegrityError) as exc:
        ctx.audit.record(
            LogEvent("verify-failure", artifact=str(target.digest), env=env, reason=str(exc), result="failed")
        )
        raise


def verified_settings(
    ctx: Context, row: Row | None, env: str, opts: DeployOptions
) -> tuple[EnvSettings | None, str | None]:
    """The settings a past deployment ``row`` of ``env`` ran with, read again from the graven.toml its
    digest's verified provenance names (the row's ``pipeline_digest``, or the newest for an older
    row), never from the row's own ``settings`` column: whoever can edit the database must not choose
    the commands a switch back runs. (None, why) when they cannot be verified: no hook is run then."""
    if row is None:
        return None, None
    pipeline = None if row.pipeline_digest is None else str(row.pipeline_digest)
    try:
        target = verify_target(
            ctx,
            Digest.parse(str(row.digest)),
            env,
            opts,
            log_failures=False,
            ran_with=None if pipeline is None else (pipeline, f"in {env} before"),
        )
    except GravenError as exc:
        return None, f"its settings could not be verified, so its hooks were not run: {exc}"
    return target.settings, None


def tested_target(
    ctx: Context,
    digest: Digest,
    env: str,
    opts: DeployOptions,
    *,
    log_failures: bool = True,
    ran_with: tuple[str, str] | None = None,
    source_env: str | None = None,
) -> Target:
    """:func:`verify_target`, then, into an environment that ``requires`` others, the rule that what
    reaches it ran there first: the graven.toml it deploys with (its hooks, its settings) must have
    gone live and healthy, with this digest, in every required environment. A commit that changes
    only graven.toml gives the same digest; its hooks were never tested.

    Healthy records older than ``pipeline_digest`` (an upgraded home) may have run any graven.toml
    built here before the first of them (which is not known): they count for those, never for one
    built later or known only from an import (a switch back copies such a record, with a new time). A
    deploy by digest whose newest graven.toml never ran takes one that did (newest first, one that
    can serve: it defines ``env`` and a key trusted for it signed it), with a warning. A promote
    (``ran_with``: the one that runs in ``source_env``) takes no other. With none, the deployment is
    refused (PolicyError, exit 1). ``--override-policy`` bypasses the rule as it bypasses
    ``requires``: the newest graven.toml goes, its untested environments in :attr:`Target.untested`,
    an override the deployment records as one. A digest never healthy in a required environment is
    left to the policy (which refuses it, saying so)."""
    target = verify_target(ctx, digest, env, opts, log_failures=log_failures, ran_with=ran_with)
    requires = target.settings.requires
    if ctx.home.has_database():
        with ctx.db.connect() as conn:
            gate = live_gate(conn, env)
        dropped = tuple(name for name in gate if name not in requires)
        if dropped:
            # with --override-policy this deployment lowers the gate (recorded as an override naming
            # it): telling it that the gate "still applies" would be false
            how = (
                "--override-policy lowers it (recorded as an override)"
                if opts.override
                else "that still applies (lowering the gate takes --override-policy --reason TEXT, once)"
            )
            ctx.reporter.warn(
                f"the graven.toml of {short(str(digest))} does not make {env} require "
                f"{', '.join(dropped)}, but {env}'s live deployment does: {how}"
            )
            requires = (*requires, *dropped)
    if not requires:
        return target
    with ctx.db.connect() as conn:
        rows = conn.execute(
            "SELECT d.pipeline_digest, d.env, d.started_at FROM deployments d WHERE d.digest = :digest"  # noqa: S608 (a constant of code)
            f" AND d.env IN :envs AND d.result = 'ok' AND d.health IN :healthy AND {NOT_WITHDRAWN}"
            " ORDER BY d.id DESC",
            {"digest": str(digest), "envs": list(requires), "healthy": list(HEALTHY)},
        ).all()
        built: dict[str, str] = dict(
            conn.execute(
                "SELECT pipeline_digest, min(finished_at) FROM builds WHERE digest = :digest"
                " AND pipeline_digest IS NOT NULL GROUP BY pipeline_digest",
                {"digest": str(digest)},
            ).all()
        )
    ran: dict[str, list[tuple[str | None, str]]] = {name: [] for name in requires}
    for pipeline, where, started in rows:
        ran[str(where)].append((None if pipeline is None else str(pipeline), str(started)))
    tested = TestedPipelines(requires, ran, built)
    if opts.override:  # where it was healthy with another graven.toml only: bypassed, recorded so
        missing = tested.missing(target.pipeline_digest)
        return target.with_untested(tuple(name for name in missing if tested.ran[name]))
    if not tested.healthy_everywhere:
        return target  # never healthy somewhere: the policy says so
    if tested.ran_everywhere(target.pipeline_digest):
        return target
    where = " and ".join(requires)
    if ran_with is None:
        for pipeline in tested.tested():
            try:
                chosen = verify_target(
                    ctx, digest, env, opts, log_failures=False, ran_with=(pipeline, f"in {where}")
                )
            except (PolicyError, ConfigError, NotFoundError):  # no [env.ENV] in it, or no trusted signer
                continue
            ctx.reporter.warn(
                f"the newest graven.toml of {short(str(digest))} ({short(target.pipeline_digest)}) never "
                f"ran healthy in {where}, which {env} requires: deploying with the one that did "
                f"({short(pipeline)}); deploy it to {where} first to use the newer one"
            )
            return chosen
    missing = tested.missing(target.pipeline_digest)
    listed = " and ".join(missing)
    what = f"{short(str(digest))} would reach {env} with the graven.toml {short(target.pipeline_digest)}"
    if source_env is not None:  # a promote: the graven.toml that runs in the source environment
        commands = [
            f"`graven deploy {short(str(digest))} {name}`"
            if name == source_env
            else f"`graven promote {source_env} {name}`"
            for name in missing
        ]
        hint = f"promote it there first ({' and '.join(commands)})"
    else:
        hint = f"deploy the digest to {listed} first (a deploy takes its newest graven.toml)"
    raise PolicyError(
        f"{what}, which never ran healthy in {listed} ({env} requires it): {hint}, or deploy it with "
        f"--override-policy --reason TEXT (which takes the newest graven.toml)"
    )


def _ran_with(
    digest: Digest, env: str, provenances: list[VerifiedProvenance], pipeline: str, where: str
) -> VerifiedProvenance:
    """The verified provenance that names the graven.toml ``pipeline`` (which ran ``where``)."""
    for verified in provenances:
        if verified.statement.pipeline_digest == pipeline:
            return verified
    raise PolicyError(
        f"{short(str(digest))} ran {where} with the graven.toml {short(pipeline)}, which no provenance "
        f"trusted for {env} names; trust the key that signed it for {env} (graven keys trust), or "
        "deploy the digest by name"
    )


def policy_facts(
    conn: Connection, target: Target, state: EnvState | None, *, kind: str, override: bool
) -> PolicyFacts:
    digest = str(target.digest)
    env = target.settings.name
    # the artifact's own requires and those of the environment's live deployment (live_gate): a new
    # graven.toml may add a requirement, never drop one (a rollback does not check requires at all)
    requires = tuple(dict.fromkeys((*target.settings.requires, *live_gate(conn, env))))
    return PolicyFacts(
        digest=digest,
        env=env,
        kind=kind,
        requires=requires,
        healthy_in=healthy_in(conn, digest),
        withdrawn=tuple(withdrawn_in(conn, digest, requires).items()),
        rejected=rejection(conn, digest),
        held=state.held if state else False,
        held_digest=state.held_digest if state else None,
        override=override,
        untested=target.untested,
        history_ok=went_live_here(conn, target.settings.name, digest) if kind == "rollback" else True,
    )


def _not_a_directory(path: Path) -> Path | None:
    """``path``, or the nearest of its parents that exists, when that is not a directory (a file):
    nothing could be made there."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _broken_link(path: Path) -> tuple[Path, str] | None:
    """The nearest of ``path`` and its parents that is a symbolic link leading nowhere (its target
    gone, or a loop), with its target as written; None when the nearest one there is leads somewhere."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None
        if candidate.is_symlink():
            try:
                return candidate, os.readlink(candidate)
            except OSError:  # replaced since: the checks that follow say what it is now
                return None
    return None


def check_location(ctx: Context, conn: Connection, settings: EnvSettings, *, warn: bool = True) -> None:
    """Refuse, before anything is created there, an environment directory that is a file; that lies in
    GRAVEN_HOME (the store, keys and trust policy) or in what graven keeps inside it; that is the
    directory of another environment with a live release (deploying there would bypass that
    environment's hold and ``requires``, and prune its releases), or lies in what graven keeps inside
    another environment's directory (or holds that environment's directory there); or that another
    user could change under graven (:meth:`EnvLayout.check_owners`). Paths are compared with their
    symlinks resolved. Another environment recorded at the same path with nothing live gets a
    warning (unless ``warn`` is false: the second check, under the lock): that is what renaming an
    environment looks like."""
    path = Path(settings.path)
    mine = _resolved(settings.path)
    home = _resolved(str(ctx.home.root))
    if mine == home or home in mine.parents:
        raise ConfigError(
            f"[env.{settings.name}] path {settings.path} lies in GRAVEN_HOME ({ctx.home.root}), where "
            "graven keeps its store, keys and trust policy; give the environment a directory outside it"
        )
    if clashes_with_layout(home, mine):
        raise ConfigError(
            f"[env.{settings.name}] path {settings.path} holds GRAVEN_HOME ({ctx.home.root}) where graven "
            "keeps releases and links, so a deploy would replace or delete it; move GRAVEN_HOME or give "
            "the environment another directory"
        )
    blocker = _not_a_directory(path)
    if blocker is not None:
        where = "exists and" if blocker == path else f"goes through {blocker}, which"
        raise InputError(
            f"[env.{settings.name}] path {settings.path} {where} is not a directory; "
            "point it at a directory graven can own"
        )
    broken = _broken_link(path)
    if broken is not None:
        link, target = broken
        raise InputError(
            f"[env.{settings.name}] path {settings.path}: {link} is a symbolic link to {target}, which "
            "does not exist (an unmounted volume, a removed directory?); make the directory it names, "
            "or point the environment at another directory"
        )
    _check_unclaimed(conn, settings, path)
    rows = conn.execute(
        "SELECT name, path, live_digest FROM deploy_envs WHERE name <> :name", {"name": settings.name}
    )
    for other, other_path, other_live in rows:
        theirs = _resolved(other_path)
        if mine == theirs and other_live:
            raise ConfigError(
                f"[env.{settings.name}] path {settings.path} is the directory of environment {other} "
                f"({other_path}), where {short(other_live)} is live; one directory belongs to one "
                f"environment (its hold, requires and history): deploy to {other}; to rename it, "
                f"`graven retire {other} --reason TEXT` first; or give {settings.name} a directory of its own"
            )
        if mine == theirs:
            if not warn:
                continue
            ctx.reporter.warn(
                f"environment {other} was deployed at {other_path} too; if {settings.name} replaces it, "
                f"{other}'s releases are now {settings.name}'s (its status and drift are stale)"
            )
        elif clashes_with_layout(mine, theirs) or clashes_with_layout(theirs, mine):
            raise ConfigError(
                f"[env.{settings.name}] path {settings.path} and environment {other}'s ({other_path}) "
                "overlap where graven keeps releases and links; every environment needs a directory of "
                "its own"
            )
    EnvLayout(path).check_owners()


def _check_unclaimed(conn: Connection, settings: EnvSettings, path: Path) -> None:
    """Refuse a deployment into a directory that holds files graven did not put there: the path comes
    from the artifact's graven.toml, and graven makes ``current``, ``config`` and ``releases`` in it
    (a review pointed an environment at ``~/.ssh``, whose ``config`` became a link into the release),
    deletes what it takes for its old releases and runs the hooks there. A directory is graven's when
    it holds the deploy lock (``PATH/.graven/lock``: every deployer makes it first), or when an
    environment is recorded at that path and it holds nothing but graven's own names (its ``.graven``
    removed by hand). A recorded path alone is no claim: it may now lead elsewhere (a symlink
    re-pointed, a directory deleted and made again by someone else)."""
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return  # what cannot be listed is refused later, with the reason (check_owners, the lock)
    from graven.deploy.fscheck import PROBE_PREFIX

    # a fresh file system's mount point; what another deployer of this environment tries the file
    # system with before it takes the lock (graven.deploy.fscheck), removed again
    names = [name for name in names if name != "lost+found" and not name.startswith(PROBE_PREFIX)]
    layout = EnvLayout(path)
    if not names or _holds_lock(layout):
        return
    foreign = [name for name in names if name not in GRAVEN_NAMES and not name.startswith(_SWITCH_TMP)]
    mine = _resolved(str(path))
    recorded = [
        str(name) for name, at in conn.execute("SELECT name, path FROM deploy_envs") if _resolved(at) == mine
    ]
    if recorded and not foreign:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    hint = (
        f"; environment {recorded[0]} is recorded there, but its PATH/.graven/lock is gone: if this "
        "is still its directory, move what graven did not make out of it"
        if recorded
        else ""
    )
    raise ConfigError(
        f"[env.{settings.name}] path {settings.path} already holds files graven did not make ({shown}); "
        "an environment's directory must be new or empty, since graven makes current, config and "
        f"releases/ in it: give the environment a directory of its own{hint}"
    )


_SWITCH_TMP = (".current.tmp-", ".config.tmp-")  # a switch's temporary links (graven.deploy.switch)


def _holds_lock(layout: EnvLayout) -> bool:
    """Whether ``PATH/.graven`` is a real directory holding the deploy lock graven makes in it."""
    try:
        return stat.S_ISDIR(os.lstat(layout.meta).st_mode) and os.path.lexists(layout.lock)
    except OSError:
        return False


def _resolved(path: str) -> PurePosixPath:
    """``path`` with every symlink in its existing part resolved (a missing tail stays as written)."""
    return PurePosixPath(os.path.realpath(path))


def check_path(state: EnvState | None, settings: EnvSettings) -> None:
    if state is not None and state.live_digest is not None and state.path != settings.path:
        raise EnvMovedError(settings.name, state.path, settings.path)
