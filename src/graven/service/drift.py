"""Drift: ``graven drift``, ``graven heal`` and the checks of ``graven watch``.

A check compares each live environment with what graven deployed there: ``current`` and ``config``
(the environment's symlinks) and every path of the recorded release against the artifact's manifest
(:mod:`graven.core.drift`). The default check trusts stat records (:mod:`graven.drift.scan`); ``full``
re-hashes every file. Each change of what drifts is recorded (tables drift_state, drift_events) with
its audit log entry in the same transaction; so are alerts and heals. Format: docs/formats/drift-v1.md.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graven.core.drift import (
    Alert,
    Difference,
    EnvExpectation,
    EnvObservation,
    HealPlan,
    alert_transition,
    compare_env,
    compare_tree,
    keys_of,
    make_alert,
    plan_heal,
    summarize,
)
from graven.core.globs import GlobSet
from graven.core.paths import check_path
from graven.db import Connection, Row
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.deploy.switch import fsync_dir, point_symlink, remove_symlink
from graven.drift.cache import VerifiedCache, fs_clock
from graven.drift.heal import HealStats, apply_heal, move_aside
from graven.drift.scan import SPLIT_MIN_FILES, Hasher, ReleaseIndex, ScanResult, plan_split, scan_release
from graven.drift.watch import ROOT_SUFFIX, Schedule, WatchOptions
from graven.errors import (
    BackendError,
    ConfigError,
    GravenError,
    InputError,
    IntegrityError,
    NotFoundError,
    PolicyError,
    UnsafeInputError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.service.context import Context, utc_now

__all__ = [
    "DriftReport",
    "DriftSession",
    "DriftTarget",
    "HealResult",
    "check",
    "check_target",
    "heal",
    "live_targets",
    "record_alert",
    "record_check",
    "run_watch",
]

_ENV_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROOT_PATH = "."  # the path of a difference that concerns the release directory itself
_REASON_PATHS = 5
_DETAIL_LIMIT = 1000  # differences kept in one drift_events row (the report itself lists all)


# -- what is deployed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftTarget:
    """One live environment and what graven deployed there."""

    env: str
    path: str
    digest: str
    name: str | None
    commit: str | None
    config: str | None
    pending: tuple[str, str | None] | None = None  # digest and config of a deployment in progress


def _config_of(settings: str | None) -> str | None:
    if not settings:
        return None
    try:
        value = json.loads(settings).get("config")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _artifact(conn: Connection, digest: str) -> Row | None:
    return conn.execute(
        """SELECT digest, name, "commit" FROM artifacts WHERE digest = :digest""", {"digest": digest}
    ).one_or_none()


def _never(env: str) -> str:
    return f"environment {env} has never been deployed to; `graven status` lists them"


def live_targets(ctx: Context, envs: Sequence[str] = ()) -> list[DriftTarget]:
    """The live environments (all of them, or those named); a named one must be live."""
    for env in envs:
        if not _ENV_NAME.fullmatch(env):  # graven.deploy.settings.ENV_NAME, without importing it
            raise InputError(
                f"invalid environment name {env!r}: use 1-64 lowercase letters, digits, '.', '_', '-'"
            )
    if not ctx.home.has_database():
        if envs:
            raise NotFoundError(
                f"environment {envs[0]} has never been deployed to; `graven status` lists them"
            )
        return []
    targets: list[DriftTarget] = []
    with ctx.db.connect() as conn:
        rows = {
            row.name: row
            for row in conn.execute(
                "SELECT name, path, live_digest, live_deployment FROM deploy_envs ORDER BY name"
            )
        }
        for env in envs:
            if env not in rows:
                raise NotFoundError(
                    f"environment {env} has never been deployed to; `graven status` lists them"
                )
            if rows[env].live_digest is None:
                raise NotFoundError(f"nothing is live in {env}, so nothing can drift; deploy there first")
        for name in envs or list(rows):
            row = rows[name]
            if row.live_digest is None:
                continue
            dep = (
                conn.execute(
                    "SELECT settings FROM deployments WHERE id = :id", {"id": row.live_deployment}
                ).one_or_none()
                if row.live_deployment is not None
                else None
            )
            art = _artifact(conn, row.live_digest)
            pending_row = conn.execute(
                """SELECT digest, settings FROM deployments
                WHERE env = :env AND result = 'pending' ORDER BY id DESC LIMIT 1""",
                {"env": name},
            ).one_or_none()
            pending = None
            if pending_row is not None:
                pending = (str(pending_row.digest), _config_of(pending_row.settings))
            targets.append(
                DriftTarget(
                    env=name,
                    path=row.path,
                    digest=row.live_digest,
                    name=art.name if art is not None else None,
                    commit=art.commit if art is not None else None,
                    config=_config_of(dep.settings if dep is not None else None),
                    pending=pending,
                )
            )
    return targets


# -- per-process caches ----------------------------------------------------------------------------


def _entry(item: dict[str, Any]) -> TreeEntry:
    kind = item["type"]
    if kind == "file":
        return FileEntry(item["path"], item["sha256"], item["size"], item["mode"] == "0755")
    if kind == "symlink":
        return SymlinkEntry(item["path"], item["target"])
    return DirEntry(item["path"])


class DriftSession:
    """What checks of the same process share: indexed manifests, ignore globs, the hashing threads."""

    def __init__(self, ctx: Context, *, workers: int | None = None) -> None:
        self.ctx = ctx
        self.hasher = Hasher(workers)
        self._indexes: dict[str, ReleaseIndex] = {}
        self._ignores: dict[tuple[str, str], tuple[GlobSet, str | None]] = {}

    def index(self, digest: str) -> ReleaseIndex:
        """The manifest of ``digest``, indexed for scanning (read from the store once)."""
        found = self._indexes.get(digest)
        if found is None:
            parsed = Digest.parse(digest)
            # The store verifies the bytes against the digest, and a manifest was validated when it was
            # stored (build, import): parse without validating again (it costs more than the check).
            data = self.ctx.store.read(parsed)
            try:
                doc = json.loads(data)
                manifest = TreeManifest(tuple(_entry(item) for item in doc["entries"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"the manifest of {digest} cannot be read: {exc}") from None
            found = ReleaseIndex.of(manifest, parsed.hex)
            if len(self._indexes) >= 4:
                self._indexes.clear()
            self._indexes[digest] = found
        return found

    def ignore(self, digest: str, env: str) -> tuple[GlobSet, str | None]:
        """``[env.ENV] ignore`` of the graven.toml that the artifact's *verified* provenance names (as a
        deployment reads its settings: trust never comes from the database), and a note when it cannot
        be read (then nothing is ignored: a stricter check, never a laxer one)."""
        key = (digest, env)
        found = self._ignores.get(key)
        if found is None:
            pipeline_digest = self._verified_pipeline(digest, env)
            patterns: list[str] = []
            note = None
            if pipeline_digest is None:
                note = f"the provenance of {digest[7:19]} does not verify for {env}: no ignore globs applied"
            else:
                # The bytes are verified against their digest and were validated (EnvSection) when the
                # artifact was built; tomllib reads the one list needed, at a fraction of the cost.
                data = self.ctx.store.read(Digest.parse(pipeline_digest))
                try:
                    section = tomllib.loads(data.decode("utf-8")).get("env", {}).get(env, {})
                    value = section.get("ignore", []) if isinstance(section, dict) else []
                except (UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
                    value = []
                if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
                    where = f"graven.toml {pipeline_digest[7:19]}: [env.{env}]"
                    raise ConfigError(f"{where} ignore is not a list of globs")
                patterns = value
            found = (GlobSet.of(patterns), note)
            self._ignores[key] = found
        return found

    def _verified_pipeline(self, digest: str, env: str) -> str | None:
        from graven.service.provenance import envelope_digests, load_policy

        policy = load_policy(self.ctx)
        for envelope in envelope_digests(self.ctx, Digest.parse(digest)):
            try:
                data = self.ctx.store.read(Digest.parse(envelope))
                return policy.verify_attestation(data, digest, env).statement.pipeline_digest
            except (VerificationError, PolicyError, InputError, IntegrityError):
                continue
        return None

    def close(self) -> None:
        """Stop the hashing threads."""
        self.hasher.close()


# -- checking ---------------------------------------------------------------------------------------


@dataclass
class DriftReport:
    """What one check of one environment found."""

    env: str
    path: str
    digest: str
    name: str | None
    commit: str | None
    mode: str  # fast | full
    differences: list[Difference] = field(default_factory=list)
    files: int = 0
    hashed: int = 0
    listed: int = 0
    seconds: float = 0.0
    checked_at: str = ""
    note: str | None = None

    @property
    def clean(self) -> bool:
        """True when nothing drifts."""
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: every difference."""
        return {
            "env": self.env,
            "path": self.path,
            "digest": self.digest,
            "name": self.name,
            "commit": self.commit,
            "mode": self.mode,
            "clean": self.clean,
            "count": len(self.differences),
            "kinds": summarize(self.differences),
            "differences": [d.to_json() for d in self.differences],
            "files": self.files,
            "hashed": self.hashed,
            "directories_listed": self.listed,
            "seconds": round(self.seconds, 6),
            "checked_at": self.checked_at,
            "note": self.note,
        }


def _link_kind(path: Path) -> tuple[str, str | None]:
    try:
        return "symlink", os.readlink(path)
    except FileNotFoundError:
        return "missing", None
    except OSError:
        pass
    try:
        st = os.lstat(path)
    except OSError:
        return "missing", None
    if os.path.isdir(path):
        return "dir", None
    return ("file" if (st.st_mode & 0o170000) == 0o100000 else "other"), None


def _known_release(ctx: Context, target: str | None) -> bool:
    if target is None or not target.startswith("releases/"):
        return False
    name = target.removeprefix("releases/")
    try:
        digest = Digest(name)
    except InputError:
        return False
    with ctx.db.connect() as conn:
        if _artifact(conn, str(digest)) is not None:
            return True
    return ctx.store.has(digest)


def _observe_env(ctx: Context, layout: EnvLayout) -> EnvObservation:
    current_kind, current_target = _link_kind(layout.current)
    config_kind, config_target = _link_kind(layout.config_link)
    return EnvObservation(
        current_kind=current_kind,
        current_target=current_target,
        current_known=_known_release(ctx, current_target),
        config_kind=config_kind,
        config_target=config_target,
    )


def _table_loader(layout: EnvLayout) -> tuple[StatTable | None, int | None]:
    try:
        recorded_at = os.stat(layout.stat_file).st_mtime_ns
    except OSError:
        return None, None
    return StatTable.load(layout.stat_file), recorded_at


def _cache_path(layout: EnvLayout) -> Path:
    return layout.meta / "drift" / "cache"


def _split_path(layout: EnvLayout) -> Path:
    return layout.meta / "drift" / "split"


def _load_split(path: Path, release: str) -> tuple[list[str], list[str]] | None:
    """Where the last full check split the release between two processes (any split is correct;
    a good one is balanced). Only clean relative paths are taken."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("release") != release:
            return None
        first, second = list(doc["first"]), list(doc["second"])
        for rel in first + second:
            if rel:
                check_path(rel)
        if "" not in first or not second:
            return None
        return [str(r) for r in first], [str(r) for r in second]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnsafeInputError):
        return None


def _save_split(path: Path, release: str, split: tuple[list[str], list[str]]) -> None:
    data = json.dumps({"release": release, "first": split[0], "second": split[1]}).encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


@dataclass
class _Checked:
    report: DriftReport
    index: ReleaseIndex
    scan: ScanResult
    expected: EnvExpectation
    ignore: GlobSet


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """A check makes tens of thousands of small objects that all live until it ends: the cyclic garbage
    collector would walk them again and again (a third of a check's time), for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check(ctx: Context, session: DriftSession, target: DriftTarget, *, full: bool) -> _Checked:
    with _no_gc():
        return _check_now(ctx, session, target, full=full)


def _check_now(ctx: Context, session: DriftSession, target: DriftTarget, *, full: bool) -> _Checked:
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
    now_ns = fs_clock(layout.meta / "drift")
    if full:
        # a second process may start hashing (where the last full check split the tree) while the
        # manifest is read here
        hint = _load_split(_split_path(layout), hex_digest)
        scan = scan_release(
            layout.release(hex_digest),
            lambda: session.index(digest),
            full=True,
            hasher=session.hasher,
            now_ns=now_ns,
            split_hint=hint,
        )
        index = session.index(digest)
        if len(index.files) >= SPLIT_MIN_FILES:
            split = plan_split(index)
            if split is not None and split != hint:
                _save_split(_split_path(layout), hex_digest, split)
    else:
        index = session.index(digest)
        cache = VerifiedCache.load(
            _cache_path(layout), release=hex_digest, files=len(index.files), dirs=len(index.dirs)
        )
        scan = scan_release(
            layout.release(hex_digest),
            index,
            full=False,
            hasher=session.hasher,
            table=lambda: _table_loader(layout),
            cache=cache,
            now_ns=now_ns,
        )
    ignore, ignore_note = session.ignore(digest, target.env)
    note = "; ".join(n for n in (note, ignore_note) if n) or None
    expected = EnvExpectation(hex_digest, config)
    diffs = compare_env(expected, seen)
    if scan.root_missing:
        diffs.append(Difference(ROOT_PATH, "removed", "dir", None))
    else:
        diffs.extend(
            compare_tree(
                index.manifest,
                scan.observed,
                ignore=ignore,
                dirs=index.dir_set,
                verified=scan.verified,
                root_mode=scan.root_mode,
            )
        )
    if scan.cache is not None:
        scan.cache.save(_cache_path(layout))
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
    return _Checked(report, index, scan, expected, ignore)


def _refresh(ctx: Context, target: DriftTarget) -> DriftTarget | None:
    try:
        return live_targets(ctx, [target.env])[0]
    except NotFoundError:
        return None


def check_target(
    ctx: Context, session: DriftSession, target: DriftTarget, *, full: bool = False, record: bool = True
) -> DriftReport:
    """Check one environment (and record what changed, with ``record``). When drift is found while a
    deployment changed what is live, the check is repeated against the new state (no false alarm from
    a deployment that completed during the check)."""
    for _attempt in range(3):
        report = _check(ctx, session, target, full=full).report
        if report.clean:
            break
        fresh = _refresh(ctx, target)
        if fresh is None or fresh == target:
            break
        target = fresh
    if record:
        record_check(ctx, report)
    return report


def check(
    ctx: Context,
    envs: Sequence[str] = (),
    *,
    full: bool = False,
    record: bool = True,
    session: DriftSession | None = None,
) -> list[DriftReport]:
    """Check the named environments (default: every live one)."""
    own = session is None
    session = session or DriftSession(ctx)
    try:
        return [
            check_target(ctx, session, target, full=full, record=record) for target in live_targets(ctx, envs)
        ]
    finally:
        if own:
            session.close()


# -- recording --------------------------------------------------------------------------------------


def _keys_json(diffs: Sequence[Difference]) -> str:
    return json.dumps(sorted([list(k) for k in keys_of(diffs)], key=lambda k: (k[0].encode(), k[1])))


def _reason(diffs: Sequence[Difference]) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in summarize(diffs).items())
    paths = list(dict.fromkeys(d.path for d in diffs))
    shown = ", ".join(paths[:_REASON_PATHS]) + (
        f" and {len(paths) - _REASON_PATHS} more" if len(paths) > 5 else ""
    )
    return f"{len(diffs)} difference{'s' if len(diffs) != 1 else ''} ({counts}): {shown}"


def _detail(diffs: Sequence[Difference]) -> str:
    return json.dumps([d.to_json() for d in diffs[:_DETAIL_LIMIT]], sort_keys=True, separators=(",", ":"))


_INSERT_EVENT = """INSERT INTO drift_events (env, digest, event, time, count, result, detail)
VALUES (:env, :digest, :event, :time, :count, :result, :detail)"""


def _state(conn: Connection, env: str) -> Row | None:
    return conn.execute(
        "SELECT env, digest, keys, count, since, checked_at, alerted FROM drift_state WHERE env = :env",
        {"env": env},
    ).one_or_none()


def alerted_keys(ctx: Context, env: str) -> frozenset[tuple[str, str]]:
    """The (path, kind) pairs an alert was last sent for (a restarted watcher does not repeat it)."""
    if not ctx.home.has_database():
        return frozenset()
    with ctx.db.connect() as conn:
        row = _state(conn, env)
    if row is None:
        return frozenset()
    return frozenset((str(p), str(k)) for p, k in json.loads(row.alerted))


def record_check(ctx: Context, report: DriftReport) -> str | None:
    """Remember what drifts; when that changed, record ``found`` or ``resolved`` and log it (one
    transaction). Returns the event recorded, if any."""
    keys = _keys_json(report.differences)
    now = report.checked_at or utc_now()
    event: str | None = None
    with ctx.db.begin() as conn:
        row = _state(conn, report.env)
        before = row.keys if row is not None else "[]"
        if keys != before:
            event = "found" if report.differences else "resolved"
            conn.execute(
                _INSERT_EVENT,
                {
                    "env": report.env,
                    "digest": report.digest,
                    "event": event,
                    "time": now,
                    "count": len(report.differences),
                    "result": "drift" if report.differences else "clean",
                    "detail": _detail(report.differences),
                },
            )
            ctx.audit.append(
                conn,
                LogEvent(
                    "drift",
                    artifact=report.digest,
                    commit=report.commit,
                    env=report.env,
                    reason=_reason(report.differences)
                    if report.differences
                    else "matches its artifact again",
                    result=event,
                ),
            )
        since = None
        if report.differences:
            since = row.since if row is not None and row.since and before != "[]" else now
        values = {
            "env": report.env,
            "digest": report.digest,
            "keys": keys,
            "count": len(report.differences),
            "since": since,
            "checked_at": now,
        }
        if row is None:
            conn.execute(
                """INSERT INTO drift_state (env, digest, keys, count, since, checked_at, alerted)
                VALUES (:env, :digest, :keys, :count, :since, :checked_at, '[]')""",
                values,
            )
        else:
            conn.execute(
                """UPDATE drift_state SET digest = :digest, keys = :keys, count = :count, since = :since,
                checked_at = :checked_at WHERE env = :env""",
                values,
            )
    return event


def record_alert(ctx: Context, alert: Alert, *, ok: bool, channels: dict[str, str]) -> None:
    """Record an alert that was sent (or failed to be), and what was alerted, with its log entry."""
    alerted = json.dumps(
        sorted([[d.path, d.kind] for d in alert.differences], key=lambda k: (k[0].encode(), k[1]))
        if alert.event == "drift"
        else []
    )
    summary = "; ".join(f"{name}: {outcome}" for name, outcome in channels.items()) or "no channel"
    with ctx.db.begin() as conn:
        conn.execute(
            _INSERT_EVENT,
            {
                "env": alert.env,
                "digest": alert.digest,
                "event": "alert",
                "time": utc_now(),
                "count": len(alert.differences),
                "result": "ok" if ok else "failed",
                "detail": json.dumps({"event": alert.event, "channels": channels}, sort_keys=True),
            },
        )
        if _state(conn, alert.env) is None:
            conn.execute(
                """INSERT INTO drift_state (env, digest, keys, count, since, checked_at, alerted)
                VALUES (:env, :digest, '[]', 0, NULL, :checked_at, :alerted)""",
                {"env": alert.env, "digest": alert.digest, "checked_at": utc_now(), "alerted": alerted},
            )
        else:
            conn.execute(
                "UPDATE drift_state SET alerted = :alerted WHERE env = :env",
                {"env": alert.env, "alerted": alerted},
            )
        ctx.audit.append(
            conn,
            LogEvent(
                "drift",
                artifact=alert.digest,
                commit=alert.commit,
                env=alert.env,
                reason=f"{alert.event} alert: {summary}",
                result="alert-sent" if ok else "alert-failed",
            ),
        )


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
            "removed": stats.removed if stats else [],
            "written": stats.written if stats else [],
            "symlinks": stats.linked if stats else [],
            "created_dirs": stats.created_dirs if stats else [],
            "bytes_written": stats.bytes_written if stats else 0,
            "seconds": round(self.seconds, 6),
        }


def _tree_diffs(diffs: Sequence[Difference]) -> list[Difference]:
    return [d for d in diffs if d.kind not in ("current", "unknown-release", "config")]


def _rebuild_release(ctx: Context, layout: EnvLayout, index: ReleaseIndex, table: StatTable) -> None:
    from graven.deploy.materialize import build_release, remove_tree

    hex_digest = index.manifest.digest.hex
    release = layout.release(hex_digest)
    tmp = layout.releases / f".tmp-{hex_digest[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        layout.releases.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(release):
            move_aside(release, layout.meta / "drift" / "attic")
        build_release(ctx.store, index.manifest, tmp, table)
        os.rename(tmp, release)
        table.record(os.lstat(release), DIR_SHA)
        fsync_dir(layout.releases)
    except OSError as exc:
        remove_tree(tmp)
        raise BackendError(f"cannot rebuild {release}: {exc.strerror}") from None
    except BaseException:
        remove_tree(tmp)
        raise


def _fix_link(layout: EnvLayout, link: Path, target: str | None) -> None:
    kind, _ = _link_kind(link)
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
) -> HealResult:
    """Restore ``env``'s release (and ``current``, ``config``) to exactly what was deployed, from the
    store, under the environment's deploy lock; then check it again (full)."""
    started = time.monotonic()
    target = live_targets(ctx, [env])[0]
    own = session is None
    session = session or DriftSession(ctx)
    layout = EnvLayout(Path(target.path))
    try:
        lock = EnvLock(layout.lock, env=env, actor=ctx.audit.actor, since=utc_now())
        if not plan_only:
            lock.acquire(wait=wait)
        with lock:
            checked = _check(ctx, session, target, full=True)
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
            if plan_only or not before:
                result.after = before if plan_only else []
                result.seconds = time.monotonic() - started
                return result
            hex_digest = checked.expected.release_hex
            try:
                table = StatTable.load(layout.stat_file)
                if rebuild:
                    _rebuild_release(ctx, layout, checked.index, table)
                else:
                    result.stats = apply_heal(
                        ctx.store, layout.release(hex_digest), plan, table, ignore=checked.ignore
                    )
                table.save(layout.stat_file)
                if plan.current:
                    _fix_link(layout, layout.current, layout.link_target(hex_digest))
                if plan.config:
                    config = checked.expected.config
                    _fix_link(layout, layout.config_link, f"current/{config}" if config else None)
            except GravenError as exc:
                _record_heal(ctx, result, ok=False, error=str(exc))
                raise
            after = _check(ctx, session, target, full=True).report
            result.after = after.differences
            result.seconds = time.monotonic() - started
            _record_heal(ctx, result, ok=not after.differences, error=None)
            record_check(ctx, after)
            return result
    finally:
        if own:
            session.close()


def _record_heal(ctx: Context, result: HealResult, *, ok: bool, error: str | None) -> None:
    stats = result.stats
    restored = len(result.before)
    reason = f"restored {_reason(result.before)}" if ok else f"heal failed: {error or _reason(result.after)}"
    detail = {
        "before": [d.to_json() for d in result.before[:_DETAIL_LIMIT]],
        "after": [d.to_json() for d in result.after[:_DETAIL_LIMIT]],
        "written": stats.written[:_DETAIL_LIMIT] if stats else [],
        "removed": stats.removed[:_DETAIL_LIMIT] if stats else [],
        "rebuilt_release": result.rebuilt,
        "error": error,
    }
    with ctx.db.begin() as conn:
        commit = conn.execute(
            """SELECT "commit" FROM artifacts WHERE digest = :digest""", {"digest": result.digest}
        ).scalar_one_or_none()
        conn.execute(
            _INSERT_EVENT,
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
        ctx.audit.append(
            conn,
            LogEvent(
                "heal",
                artifact=result.digest,
                commit=commit,
                env=result.env,
                reason=reason,
                result="ok" if ok else "failed",
            ),
        )


# -- watch ------------------------------------------------------------------------------------------


def _check_line(report: DriftReport) -> str:
    what = f"{report.mode}, {report.files} files, {report.hashed} hashed, {report.seconds * 1000:.0f} ms"
    if report.clean:
        return f"{report.checked_at} {report.env}: clean ({what})"
    return f"{report.checked_at} {report.env}: DRIFT: {_reason(report.differences)} ({what})"


def run_watch(
    ctx: Context,
    opts: WatchOptions,
    stop: threading.Event,
    *,
    out: Callable[[str], None],
    notifier_backend: str = "auto",
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """``graven watch``: check on every notification and periodically, alert on new drift and on its
    resolution, heal (with ``opts.heal``), export metrics; until ``stop`` is set."""
    from graven.drift.alerts import AlertDispatcher, AlertSender
    from graven.drift.metrics import DriftMetrics
    from graven.drift.notify import make_notifier

    targets = {t.env: t for t in live_targets(ctx, opts.envs)}  # a named environment must be live now
    session = DriftSession(ctx)
    schedule = Schedule(interval=opts.interval, full_every=opts.full_every, debounce=opts.debounce)
    sender = AlertSender(
        command=opts.alert_command,
        webhook=opts.webhook,
        retries=opts.webhook_retries,
        backoff=opts.webhook_backoff,
        stop=stop,
    )
    dispatcher = AlertDispatcher(sender, on_done=schedule.wake.set) if sender.configured else None
    metrics = DriftMetrics() if opts.metrics_port is not None else None
    notifier = make_notifier(schedule.notify, backend=notifier_backend)
    watched: dict[str, tuple[str, str, int]] = {}
    alerted: dict[str, frozenset[tuple[str, str]]] = {}

    def say(kind: str, text: str, data: dict[str, Any]) -> None:
        out(json.dumps({"type": kind, **data}, sort_keys=True) if opts.as_json else text)

    def finish_deliveries() -> None:
        if dispatcher is None:
            return
        for delivery in dispatcher.results():
            alert: Alert = delivery.context
            record_alert(ctx, alert, ok=delivery.ok, channels=delivery.channels)
            outcome = "; ".join(f"{k}: {v}" for k, v in delivery.channels.items())
            say(
                "delivery",
                f"{utc_now()} {alert.env}: {alert.event} alert "
                f"{'sent' if delivery.ok else 'FAILED'} ({outcome})",
                {"env": alert.env, "event": alert.event, "ok": delivery.ok, "channels": delivery.channels},
            )

    def wake_on_stop() -> None:
        stop.wait()
        schedule.wake.set()

    threading.Thread(target=wake_on_stop, name="graven-watch-stop", daemon=True).start()
    try:
        port = metrics.serve(opts.metrics_port or 0) if metrics is not None else None
        info = {"metrics_port": port, "environments": sorted(targets), "backend": type(notifier).__name__}
        if port is not None:
            say("metrics", f"metrics on http://127.0.0.1:{port}/metrics", {"port": port})
        if on_ready is not None:
            on_ready(info)
        first = True
        while not stop.is_set():
            schedule.wake.clear()
            if not first:
                try:
                    targets = {t.env: t for t in live_targets(ctx, opts.envs)}
                except NotFoundError:
                    targets = {t.env: t for t in live_targets(ctx)}
                    targets = {k: v for k, v in targets.items() if not opts.envs or k in opts.envs}
            first = False
            for env, target in targets.items():
                release = str(EnvLayout(Path(target.path)).release(target.digest.removeprefix("sha256:")))
                try:
                    inode = os.stat(release).st_ino  # a redeploy may replace the directory itself
                except OSError:
                    inode = 0
                if watched.get(env) != (release, target.path, inode):
                    notifier.unwatch(env)
                    notifier.unwatch(env + ROOT_SUFFIX)
                    notifier.watch(env, Path(release), recursive=True)
                    notifier.watch(env + ROOT_SUFFIX, Path(target.path), recursive=False)
                    for failure in getattr(notifier, "failures", []):
                        ctx.reporter.warn(f"{failure}; periodic checks still run")
                    getattr(notifier, "failures", []).clear()
                    if env not in watched:
                        schedule.add(env)
                    else:
                        schedule.mark(env, full=True)
                    watched[env] = (release, target.path, inode)
            for env in set(watched) - set(targets):
                notifier.unwatch(env)
                notifier.unwatch(env + ROOT_SUFFIX)
                schedule.forget(env)
                del watched[env]
            for env, full in schedule.due():
                if stop.is_set():
                    break
                target = targets[env]
                started = schedule.clock()
                try:
                    report = check_target(ctx, session, target, full=full)
                except GravenError as exc:
                    schedule.checked(env, full=False, started=started)
                    if metrics is not None:
                        metrics.observe(
                            env, digest=target.digest, commit=target.commit, paths=None, timestamp=time.time()
                        )
                    say("error", f"{utc_now()} {env}: check failed: {exc}", {"env": env, "error": str(exc)})
                    continue
                schedule.checked(env, full=full, started=started)
                if metrics is not None:
                    metrics.observe(
                        env,
                        digest=report.digest,
                        commit=report.commit,
                        paths=len({d.path for d in report.differences}),
                        timestamp=time.time(),
                    )
                say("check", _check_line(report), report.to_json())
                before = alerted.get(env)
                if before is None:
                    before = alerted_keys(ctx, env)
                event, alerted[env] = alert_transition(before, keys_of(report.differences))
                if event is not None:
                    alert = make_alert(
                        event,
                        env=env,
                        path=report.path,
                        digest=report.digest,
                        commit=report.commit,
                        name=report.name,
                        time=report.checked_at,
                        differences=report.differences,
                        alerted=before,
                    )
                    say("alert", alert.text(), alert.to_json())
                    if dispatcher is not None:
                        dispatcher.submit(alert.to_json(), context=alert)
                if opts.heal and not report.clean:
                    try:
                        healed = heal(ctx, env, session=session)
                    except PolicyError as exc:  # a deployment holds the lock: try again soon
                        schedule.postpone(env, 1.0)
                        say("heal", f"{utc_now()} {env}: heal postponed: {exc}", {"env": env, "ok": False})
                        continue
                    except GravenError as exc:
                        say("heal", f"{utc_now()} {env}: heal failed: {exc}", {"env": env, "ok": False})
                        continue
                    say(
                        "heal",
                        f"{utc_now()} {env}: healed {len(healed.before)} differences"
                        + ("" if healed.ok else f"; {len(healed.after)} remain"),
                        healed.to_json(),
                    )
                    schedule.mark(env)
            finish_deliveries()
            # what is live is read again at least every 2 s (a deployment is followed); a notification,
            # a finished delivery or the stop request wakes the loop at once
            schedule.wake.wait(min(schedule.timeout(), 2.0))
    finally:
        stop.set()  # also ends the thread that waits for it
        notifier.close()
        if dispatcher is not None:
            dispatcher.close(timeout=5.0)
            finish_deliveries()
        if metrics is not None:
            metrics.close()
        session.close()
