"""One drift check of one environment, fast (stat records) or full (hash everything):
:class:`DriftReport`, :func:`check_target` and :func:`check`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from graven.core.drift import (
    Difference,
    EnvExpectation,
    EnvObservation,
    compare_env,
    compare_releases_dir,
    compare_tree,
)
from graven.core.globs import GlobSet
from graven.core.record import Record
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import open_dir_nofollow, shared_lock
from graven.deploy.recordkey import read_record_file
from graven.deploy.statdb import StatTable, recorded_deployer
from graven.deploy.switch import link_kind
from graven.drift.cache import VerifiedCache, fs_clock, write_atomically
from graven.drift.clean import binding, encode
from graven.drift.scan import SPLIT_MIN_FILES, ReleaseIndex, ScanResult, plan_split, scan_release
from graven.drift.walk import load_split, split_path
from graven.errors import (
    CheckFailedError,
    GravenError,
    InputError,
    NotFoundError,
)
from graven.model.digest import Digest
from graven.runtime import no_gc
from graven.service.context import Context, utc_now
from graven.service.drift_quick import clean_path, quick_check, record_clean
from graven.service.drift_records import record_check
from graven.service.drift_report import DriftReport
from graven.service.drift_targets import DriftSession, DriftTarget, artifact_row, live_targets

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import threading

    from graven.service.drift_early import EarlyWalks

__all__ = ["ROOT_PATH", "Checked", "DriftReport", "check", "check_once", "check_target"]

ROOT_PATH = "."  # the path of a difference that concerns the release directory itself


# -- checking ---------------------------------------------------------------------------------------


def _known_release(ctx: Context, target: str | None) -> bool:
    if target is None or not target.startswith("releases/"):
        return False
    name = target.removeprefix("releases/")
    try:
        digest = Digest(name)
    except InputError:
        return False
    with ctx.db.connect() as conn:
        if artifact_row(conn, str(digest)) is not None:
            return True
    return ctx.store.has(digest)


def _observe_env(ctx: Context, layout: EnvLayout) -> EnvObservation:
    current_kind, current_target = link_kind(layout.current)
    config_kind, config_target = link_kind(layout.config_link)
    return EnvObservation(
        current_kind=current_kind,
        current_target=current_target,
        current_known=_known_release(ctx, current_target),
        config_kind=config_kind,
        config_target=config_target,
    )


def _deployer(ctx: Context, layout: EnvLayout, release: str) -> tuple[int | None, int | None]:
    """(uid, gid): who deployed ``release`` and with which group, as the deploy's stat table records
    them (authenticated under the home's record key), for the full check as for the default one; None
    for what it does not record (the release directory's owner or group is then the reference)."""
    try:
        key = ctx.record_key
    except GravenError:
        return None, None
    return recorded_deployer(layout.stat_file, key, release)


def _table_loader(layout: EnvLayout, key: bytes) -> tuple[StatTable | None, int | None]:
    try:
        recorded_at = os.stat(layout.stat_file).st_mtime_ns
    except OSError:
        return None, None
    return StatTable.load(layout.stat_file, key), recorded_at


def _cache_path(layout: EnvLayout) -> Path:
    return layout.meta / "drift" / "cache"


def _split_path(layout: EnvLayout) -> Path:
    return split_path(layout.meta)


def _save_split(path: Path, release: str, split: tuple[list[str], list[str]]) -> None:
    """Record the split (atomically; never through a symlink under ``PATH/.graven``, nothing when it
    cannot be written: the next full check splits anew)."""
    data = json.dumps({"release": release, "first": split[0], "second": split[1]}).encode()
    write_atomically(path, data, depth=2)


class Checked(Record):
    __slots__ = ("expected", "ignore", "index", "report", "scan")
    _fields = ("report", "index", "scan", "expected", "ignore")
    report: DriftReport
    index: ReleaseIndex
    scan: ScanResult
    expected: EnvExpectation
    ignore: GlobSet

    def __init__(
        self,
        report: DriftReport,
        index: ReleaseIndex,
        scan: ScanResult,
        expected: EnvExpectation,
        ignore: GlobSet,
    ) -> None:
        self.report = report
        self.index = index
        self.scan = scan
        self.expected = expected
        self.ignore = ignore


def check_once(
    ctx: Context,
    session: DriftSession,
    target: DriftTarget,
    *,
    full: bool,
    early: EarlyWalks | None = None,
    stop: threading.Event | None = None,
) -> Checked:
    """One check of ``target``; ``stop``: once set, the check is abandoned (ScanStopped)."""
    with no_gc():
        return _check_now(ctx, session, target, full=full, early=early, stop=stop)


def _check_now(
    ctx: Context,
    session: DriftSession,
    target: DriftTarget,
    *,
    full: bool,
    early: EarlyWalks | None,
    stop: threading.Event | None,
) -> Checked:
    started = time.monotonic()
    layout = EnvLayout(Path(target.path))
    seen = _observe_env(ctx, layout)
    digest, config, note = target.digest, target.config, None
    if target.pending is not None:
        pending_digest, pending_config = target.pending
        if seen.current_target == layout.link_target(pending_digest.removeprefix("sha256:")):
            # a deployment is switching to it right now (or died doing so: deploy settles it)
            digest, config = pending_digest, pending_config
            note = f"a deployment of {pending_digest[7:19]} is in progress"
    hex_digest = digest.removeprefix("sha256:")
    now_ns = fs_clock(layout.meta / "drift", depth=2)
    cache: VerifiedCache | None = None
    releases_diffs = compare_releases_dir(*link_kind(layout.releases))
    if releases_diffs:  # never read the release through what stands at PATH/releases
        walk = early.take(target.env, hex_digest) if early is not None else None
        if walk is not None:
            walk.child.cancel()
        index = session.index(digest)
        scan = ScanResult(root_missing=True)
    elif full:
        # a second process may start hashing (where the last full check split the tree) while the
        # manifest is read here
        walk = early.take(target.env, hex_digest) if early is not None else None
        hint: tuple[list[str], list[str]] | None = None
        child = None
        if walk is not None:  # started before this process imported the check (drift_early)
            hint, child, now_ns = walk.split, walk.child, walk.now_ns
        else:
            hint = load_split(_split_path(layout), hex_digest)
        owner, group = _deployer(ctx, layout, hex_digest)
        stage = f"hashing the files of {target.env}"
        scan = scan_release(
            layout.release(hex_digest),
            lambda: session.index(digest),
            full=True,
            hasher=session.hasher,
            now_ns=now_ns,
            split_hint=hint,
            child=child,
            owner=owner,
            group=group,
            progress=lambda done, total: ctx.reporter.progress(stage, done, total),
            stop=stop,
        )
        index = session.index(digest)
        if hint is None and len(index.files) >= SPLIT_MIN_FILES:  # a plan depends on the manifest only
            split = plan_split(index)
            if split is not None:
                _save_split(_split_path(layout), hex_digest, split)
    else:
        index = session.index(digest)
        key = ctx.record_key
        cache = VerifiedCache.load(
            _cache_path(layout), key, release=hex_digest, files=len(index.files), dirs=len(index.dirs)
        )
        owner, group = _deployer(ctx, layout, hex_digest)
        changed_stage = f"hashing the changed files of {target.env}"  # those whose stat changed
        scan = scan_release(
            layout.release(hex_digest),
            index,
            full=False,
            hasher=session.hasher,
            table=lambda: _table_loader(layout, key),
            cache=cache,
            now_ns=now_ns,
            owner=owner,
            group=group,
            stop=stop,
            progress=lambda done, total: ctx.reporter.progress(changed_stage, done, total),
        )
    deployed = target.pipeline_digest if digest == target.digest else None  # not for a pending deploy
    trust = session.trust()
    ignore, ignore_note = session.ignore(digest, target.env, deployed, trust)
    note = "; ".join(n for n in (note, ignore_note) if n) or None
    expected = EnvExpectation(hex_digest, config)
    diffs = compare_env(expected, seen) + releases_diffs
    if releases_diffs:
        pass  # the release was not looked at
    elif scan.root_missing:
        diffs.append(Difference(ROOT_PATH, "removed", "dir", None))
    else:
        diffs.extend(
            compare_tree(
                index.manifest,
                scan.observed,
                ignore=ignore,
                config=config,
                dirs=index.dir_set,
                verified=scan.verified,
                root_mode=scan.root_mode,
                root_attrs=scan.root_attrs,
            )
        )
    if scan.cache is not None:
        scan.cache.save(_cache_path(layout), ctx.record_key, depth=2)
    if diffs or note is not None or target.pending is not None:
        _discard_clean(layout)  # what the last clean check saw no longer answers for this release
    elif not ignore.patterns or not compare_tree(  # a verdict that rests on ignore globs is not kept
        index.manifest,
        scan.observed,
        dirs=index.dir_set,
        verified=scan.verified,
        root_mode=scan.root_mode,
        root_attrs=scan.root_attrs,
    ):
        _save_clean(ctx, layout, target, seen, index, scan.cache or cache, trust)
    report = DriftReport(
        env=target.env,
        path=target.path,
        digest=digest,
        name=target.name,
        commit=target.commit,
        mode="full" if full else "fast",
        differences=diffs,
        files=scan.files,
        hashed=scan.hashed,
        listed=scan.listed,
        seconds=time.monotonic() - started,
        checked_at=utc_now(),
        note=note,
    )
    return Checked(report, index, scan, expected, ignore)


def _discard_clean(layout: EnvLayout) -> None:
    """Remove the snapshot of the last clean check (never through a symlinked ``PATH/.graven`` or
    ``.graven/drift``; nothing when there is none). A copy put back later is refused all the same: the
    drift state is no longer clean (:func:`graven.service.drift_quick.quick_check`)."""
    try:
        dir_fd = open_dir_nofollow(layout.meta / "drift", 2, create=False)
    except (OSError, ValueError):
        return
    try:
        os.unlink(clean_path(layout.root).name, dir_fd=dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _save_clean(  # noqa: PLR0917 (what one check saw)
    ctx: Context,
    layout: EnvLayout,
    target: DriftTarget,
    seen: EnvObservation,
    index: ReleaseIndex,
    records: VerifiedCache | None,
    trust: str,
) -> None:
    """Write the snapshot of a clean check (:mod:`graven.drift.clean`) when every directory and file
    has a verified record (best effort: it is a cache). An older snapshot is left alone otherwise: its
    records cannot match again once a path changed (a change moves the ctime past the recording)."""
    dir_records = records.dirs if records is not None else []
    file_records = records.files if records is not None else []
    complete = (
        records is not None
        and len(dir_records) == len(index.dirs)
        and len(file_records) == len(index.files)
        and all(r is not None for r in dir_records)
        and all(r is not None for r in file_records)
    )
    if not complete or records is None or not trust:
        return
    bound = binding(
        env=target.env,
        path=target.path,
        release=index.digest_hex,
        config=target.config,
        pipeline=target.pipeline_digest,
        trust=trust,
        dev=records.dev,
        current=(seen.current_kind, seen.current_target),
        config_link=(seen.config_kind, seen.config_target),
    )
    data = encode(
        ctx.record_key,
        bound,
        dirs=index.dirs,
        dir_records=[r for r in dir_records if r is not None],
        files=[e.path for e in index.files],
        file_records=[r for r in file_records if r is not None],
        links=[link.path for link in index.symlinks],
        targets=[link.target for link in index.symlinks],
    )
    path = clean_path(layout.root)
    if read_record_file(path) != data:  # a full check of an unchanged release: nothing to write
        write_atomically(path, data, depth=2)


def _os_reason(exc: OSError, path: str) -> str:
    """``path: reason`` of an OSError met while observing the environment at ``path``."""
    where = path if exc.filename is None else os.fsdecode(exc.filename)
    return f"{where}: {(exc.strerror or str(exc)).lower()}"


def _refresh(ctx: Context, target: DriftTarget) -> DriftTarget | None:
    try:
        return live_targets(ctx, [target.env])[0]
    except NotFoundError:
        return None


def check_target(
    ctx: Context,
    session: DriftSession,
    target: DriftTarget,
    *,
    full: bool = False,
    record: bool = True,
    wait: bool = True,
    early: EarlyWalks | None = None,
    recorder: Callable[[DriftReport], None] | None = None,
    stop: threading.Event | None = None,
) -> DriftReport:
    """Check one environment (and record what changed, with ``record``; ``recorder``: called instead
    to record the report, under the lock: ``graven watch``, which holds it when the database is busy).

    The check holds the environment's lock shared until it has recorded, so a deploy or heal by
    another process is never seen half-way, nor recorded over by this older observation (without
    ``wait``, PolicyError when one is running). When drift is found while a deployment changed what
    is live, the check is repeated against the new state (no false alarm from a deployment that
    completed during the check).

    ``stop`` (``graven watch``): once it is set, the check is abandoned within a file or a chunk of a
    large one (:class:`graven.drift.scan.ScanStopped`), and nothing of it is recorded."""
    lock = EnvLayout(Path(target.path)).lock
    with shared_lock(lock, env=target.env, wait=wait, warn=ctx.reporter.warn):
        for _attempt in range(3):
            try:
                quick = None if full else quick_check(ctx, target)
                report = (
                    quick
                    if quick is not None
                    else check_once(ctx, session, target, full=full, early=early, stop=stop).report
                )
            except BrokenPipeError:
                raise
            except OSError as exc:  # PATH cannot be entered (chmod 000, a volume of another user): this
                # environment cannot be checked, the others still are (and graven watch goes on)
                raise CheckFailedError(_os_reason(exc, target.path)) from None
            if report.clean:
                break
            fresh = _refresh(ctx, target)
            if fresh is None or fresh == target:
                break
            target = fresh
        # still under the lock: a heal or deployment waiting for it records after this, never before
        if recorder is not None:
            recorder(report)
        elif record and not record_clean(ctx, report):
            record_check(ctx, report)
    return report


def check(
    ctx: Context,
    envs: Sequence[str] = (),
    *,
    full: bool = False,
    record: bool = True,
    session: DriftSession | None = None,
    early: EarlyWalks | None = None,
    stop: threading.Event | None = None,
) -> list[DriftReport]:
    """Check the named environments (default: every live one); ``early``: walkers a full check
    started before (:func:`graven.service.drift_early.start_early`); ``stop``: once set, the check
    at work is abandoned (:class:`graven.drift.scan.ScanStopped`; ``graven drift`` sets it on Ctrl-C
    or SIGTERM, which also interrupt it, so that its hashing threads and forked walker stop too)."""
    own = session is None
    session = session or DriftSession(ctx)
    try:
        reports: list[DriftReport] = []
        for target in live_targets(ctx, envs):
            try:
                reports.append(
                    check_target(ctx, session, target, full=full, record=record, early=early, stop=stop)
                )
            except CheckFailedError as exc:
                # this environment's artifact is damaged or no longer trusted, or its directory cannot
                # be read: said for it, and the others are still checked
                reports.append(
                    DriftReport(
                        env=target.env,
                        path=target.path,
                        digest=target.digest,
                        name=target.name,
                        commit=target.commit,
                        mode="full" if full else "fast",
                        checked_at=utc_now(),
                        error=str(exc),
                    )
                )
        return reports
    finally:
        if own:
            session.close()
