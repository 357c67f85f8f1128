"""The release on disk: build or reuse ``releases/<hex>``, switch ``current``, hook environment,
retention and leftovers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from graven.deploy.layout import EnvLayout
from graven.deploy.materialize import (
    BuildStats,
    ReleaseCheck,
    build_release,
    check_release,
    integrity_error,
    remove_tree,
)
from graven.deploy.plan import ReleaseInfo, plan_retention, short
from graven.deploy.settings import EnvSettings
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.deploy.switch import exchange_dirs, fsync_dir, link_kind, point_symlink, remove_symlink
from graven.errors import BackendError, GravenError, InputError, IntegrityError
from graven.home import make_dirs
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import TreeManifest
from graven.service.context import Context
from graven.service.deploy_types import Target
from graven.service.environments import EnvState


def hook_environment(
    layout: EnvLayout, settings: EnvSettings, digest: str, previous: str | None
) -> dict[str, str]:
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


def step(ctx: Context, name: str) -> None:
    """Mark a step boundary (the progress reporter sees ``deploy:<name>``)."""
    ctx.reporter.progress(f"deploy:{name}", 0, None)


CHECK_STAGE = "checking the release on disk"
"""The progress of a release on disk checked entry by entry (its stat changed: files are re-hashed)."""
RETENTION_STAGE = "removing old releases"


def _check_progress(ctx: Context) -> Callable[[int, int], None]:
    return lambda done, total: ctx.reporter.progress(CHECK_STAGE, done, total)


def check_on_disk(
    ctx: Context,
    layout: EnvLayout,
    hex_digest: str,
    manifest: TreeManifest,
    table: StatTable,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReleaseCheck:
    """``releases/<hex_digest>`` checked against ``manifest`` as a deployment checks a release on disk:
    by the stat records of ``table`` (re-hashing what changed), refusing a hard link to the store's own
    object, with the owner and group the release was deployed with. One test, so that ``deploy --plan``
    decides on the release on disk as the deployment does."""
    return check_release(
        layout.release(hex_digest),
        manifest,
        table,
        store_inode=ctx.store.loose_inode,
        owner=table.owner(hex_digest),
        group=table.group(hex_digest),
        progress=progress,
    )


def clean_leftovers(ctx: Context, layout: EnvLayout, table: StatTable, live_hex: str | None) -> None:
    """Remove what killed deployers left (``.tmp-*``, ``.trash-*``). A killed deployer had hard-linked
    live files into its release, which changed their ctime before their records were saved: so that
    the next deployment links them again (and drift does not re-hash them all), the live release is
    then checked, re-hashing what changed by stat only (best effort: a problem found is drift's to
    report). Temporary files of a stat table whose saver was killed go too, and the temporary links
    of a switch: every saver of the table and every switch (a deployer, a healer) holds the deploy
    lock, as this one does."""
    for table_tmp in layout.table_leftovers():
        with contextlib.suppress(OSError):
            table_tmp.unlink()
    for link_tmp in layout.link_leftovers():  # a switch's temporary link (of a killed deployer, healer)
        with contextlib.suppress(OSError):
            link_tmp.unlink()
    leftovers = layout.leftovers()
    for leftover in leftovers:
        try:
            remove_tree(leftover, table, parent_nofollow=True)
        except GravenError as exc:  # no release's name, in nobody's way: it must not stop every deploy
            ctx.reporter.warn(
                f"{leftover.name}, left by an earlier deployment, could not be removed ({exc}); "
                "deploying all the same: remove it by hand"
            )
    if leftovers:
        _refresh_live(ctx, layout, table, live_hex)


def _refresh_live(ctx: Context, layout: EnvLayout, table: StatTable, live_hex: str | None) -> None:
    """Check the live release by stat, re-hashing what changed, and save the records it refreshed: after
    a release that hard-linked live files was removed without their records (best effort: a problem
    found is drift's to report)."""
    if live_hex is None:
        return
    from graven.service.artifacts import load_manifest

    with contextlib.suppress(GravenError, OSError):
        manifest = load_manifest(ctx, Digest(live_hex))
        check = check_on_disk(ctx, layout, live_hex, manifest, table, progress=_check_progress(ctx))
        if check.rehashed:
            table.save(layout.stat_file, ctx.record_key)


def ensure_release(
    ctx: Context, target: Target, layout: EnvLayout, table: StatTable, live_hex: str | None
) -> tuple[BuildStats | None, bool]:
    """Make ``releases/<hex>`` a complete, checked copy of the artifact; (build stats, reused existing).
    The table is saved when anything in it changed."""
    hex_digest = target.digest.hex
    release = layout.release(hex_digest)
    reuse: Path | None = layout.release(live_hex) if live_hex is not None else None
    if release.is_dir():
        check = check_on_disk(ctx, layout, hex_digest, target.manifest, table, progress=_check_progress(ctx))
        if check.ok:
            # deployed before owners (or groups) were recorded: its directory's checked out with every path
            recorded = table.owner(hex_digest) is not None and table.group(hex_digest) is not None
            if not recorded:
                with contextlib.suppress(OSError):
                    root_st = os.lstat(release)
                    if table.owner(hex_digest) is None:
                        table.set_owner(hex_digest, root_st.st_uid)
                    if table.group(hex_digest) is None:
                        table.set_group(hex_digest, root_st.st_gid)
            if not check.by_stat or not recorded:
                table.save(layout.stat_file, ctx.record_key)
            return None, True
        more = f" and {len(check.problems) - 1} more" if len(check.problems) > 1 else ""
        ctx.reporter.warn(
            f"release {short(hex_digest)} on disk differs from the artifact ({check.problems[0]}{more}); "
            "rebuilding it from the store"
        )
        reuse = release  # its unchanged files are still good
    try:
        make_dirs(layout.releases)
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
                remove_tree(tmp, table, parent_nofollow=True)
            else:
                os.rename(tmp, release)
            fsync_dir(layout.releases)
            root_st = os.lstat(release)
            table.record(root_st, DIR_SHA)  # renaming changed the root's ctime
            table.set_owner(hex_digest, root_st.st_uid)  # who made it: drift's reference for every path
            table.set_group(hex_digest, root_st.st_gid)  # and the group everything in it was made with
        except OSError as exc:
            raise BackendError(f"cannot move the release into {release}: {exc.strerror}") from None
        table.save(layout.stat_file, ctx.record_key)
    except IntegrityError as exc:
        _discard(ctx, layout, table, tmp, live_hex)
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
        _discard(ctx, layout, table, tmp, live_hex)
        raise
    return stats, False


def _discard(ctx: Context, layout: EnvLayout, table: StatTable, tmp: Path, live_hex: str | None) -> None:
    """Remove a release that could not be built. The live files it hard-linked lose that link, which
    changes their ctime: remove_tree refreshes their records (when they were valid), and the table is
    saved, so that the next deploy links them again and drift trusts them. The records of links made
    by work the failure cut short (a forked child's, a worker's not yet collected) never reached the
    table: the live release is then checked by stat (:func:`_refresh_live`: one lstat per path, a
    re-hash of what changed), as after a killed deployer. Best effort: the error that got us here is
    the one to report (a tree that cannot be removed now is a leftover the next deploy removes)."""
    with contextlib.suppress(GravenError, OSError):
        remove_tree(tmp, table, parent_nofollow=True)
    with contextlib.suppress(GravenError, OSError):
        table.save(layout.stat_file, ctx.record_key)
    _refresh_live(ctx, layout, table, live_hex)


def check_links(layout: EnvLayout) -> None:
    """Refuse, before anything changes, when ``PATH/current`` or ``PATH/config`` is something other than
    the symlink graven replaces (a directory or a file put there by hand): the switch would fail half-way;
    and when ``PATH/releases`` is not a real directory (:meth:`EnvLayout.check_releases_dir`)."""
    layout.check_releases_dir()
    for link in (layout.current, layout.config_link):
        kind, _ = link_kind(link)
        if kind not in ("symlink", "missing"):
            raise InputError(
                f"{link} is {'a directory' if kind == 'dir' else 'a file'}, not the symlink graven manages; "
                "move it out of the way (runtime data belongs outside the environment directory), then "
                "deploy again"
            )


def switch(layout: EnvLayout, hex_digest: str, config: str | None) -> None:
    point_symlink(layout.current, layout.link_target(hex_digest))
    if config:
        point_symlink(layout.config_link, f"current/{config}")
    else:
        remove_symlink(layout.config_link)


def retention(
    ctx: Context, layout: EnvLayout, table: StatTable, *, env: str, keep: int, state: EnvState
) -> tuple[str, ...]:
    last_ok: dict[str, int] = {}
    seen: set[str] = set()
    try:
        names = layout.release_names()
        with ctx.db.connect() as conn:
            # only the releases on disk (a few): the environment's whole history grows with every deploy
            for hex_digest in names:
                row = conn.execute(
                    """SELECT count(*) AS n,
                    max(CASE WHEN result = 'ok' AND finished_at IS NOT NULL AND finished_at <> ''
                        THEN id END) AS last_ok
                    FROM deployments WHERE env = :env AND digest = :digest""",
                    {"env": env, "digest": f"sha256:{hex_digest}"},
                ).one()
                if row.n:
                    seen.add(hex_digest)
                if row.last_ok is not None:
                    last_ok[hex_digest] = int(row.last_ok)
    except GravenError as exc:  # a busy database, a releases/ it cannot list: nothing removed this time
        ctx.reporter.warn(
            f"old releases were not looked at ({exc}); the deployment is live and recorded, and the "
            "next deployment tries again"
        )
        return ()
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
    count = len(plan.delete)
    removed_ok: list[str] = []
    for removed, hex_digest in enumerate(plan.delete):
        aside = layout.releases / f".trash-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.rename(layout.release(hex_digest), aside)
        except FileNotFoundError:
            continue
        except OSError as exc:  # still a whole release under its name: kept, as if protected
            ctx.reporter.warn(f"old release {short(hex_digest)} could not be removed ({exc.strerror})")
            continue
        step(ctx, "retention")
        ctx.reporter.progress(RETENTION_STAGE, removed, count)  # a release of many files: a moment each
        try:
            remove_tree(aside, table, parent_nofollow=True)
            removed_ok.append(hex_digest)
        except GravenError as exc:
            # the deployment is live and recorded: exit 1 would say that what was live stays live
            ctx.reporter.warn(
                f"old release {short(hex_digest)} could not be removed ({exc}); it was moved aside "
                f"to {aside.name}, which the next deployment tries to remove again"
            )
        table.forget_owner(hex_digest)
    if count:
        ctx.reporter.progress(RETENTION_STAGE, count, count)
    if plan.delete:
        try:
            table.save(layout.stat_file, ctx.record_key)
        except GravenError as exc:  # a disk the application filled meanwhile: live and recorded all the same
            ctx.reporter.warn(
                f"{exc}; the deployment is live and recorded (the next deployment copies the files "
                "whose records were not saved instead of linking them)"
            )
    return tuple(f"sha256:{h}" for h in removed_ok)


def readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
