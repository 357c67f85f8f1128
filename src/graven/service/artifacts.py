"""Finding, describing and verifying stored artifacts."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from graven.core.record import Frozen, Record
from graven.db import Row
from graven.errors import AmbiguousError, GravenError, IntegrityError, NotFoundError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest
from graven.service.context import Context, check_limit, refuse_lost_log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from graven.service.provenance import ProvenanceCheck
    from graven.signing.trust import TrustPolicy
    from graven.store.local import LocalStore

__all__ = [
    "ArtifactRecord",
    "Problem",
    "Verification",
    "VerifyReport",
    "check_known_env",
    "digest_prefix",
    "get_artifact",
    "known_environments",
    "list_artifacts",
    "load_manifest",
    "not_stored_error",
    "resolve_digest",
    "summarize",
    "verify",
    "verify_artifact",
]

_PREFIX = re.compile(r"[0-9a-f]{4,64}")
MANIFEST_PATH = "(manifest)"
PROVENANCE_PATH = "(provenance)"  # a stored signed-provenance envelope of the artifact


# The values here are written by hand (graven.core.record: @dataclass costs start-up).
_set = object.__setattr__


class ArtifactRecord(Frozen):
    """One stored artifact as the database knows it."""

    __slots__ = (
        "commit",
        "created_at",
        "digest",
        "file_count",
        "name",
        "origin",
        "pipeline_digest",
        "repository",
        "revision",
        "source_date_epoch",
        "total_size",
    )
    _fields = (
        "digest",
        "name",
        "commit",
        "repository",
        "revision",
        "pipeline_digest",
        "source_date_epoch",
        "file_count",
        "total_size",
        "origin",
        "created_at",
    )
    digest: str
    name: str
    commit: str | None
    repository: str | None
    revision: str | None
    pipeline_digest: str | None
    source_date_epoch: int
    file_count: int
    total_size: int
    origin: str
    created_at: str

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        digest: str,
        name: str,
        commit: str | None,
        repository: str | None,
        revision: str | None,
        pipeline_digest: str | None,
        source_date_epoch: int,
        file_count: int,
        total_size: int,
        origin: str,
        created_at: str,
    ) -> None:
        values = (digest, name, commit, repository, revision, pipeline_digest, source_date_epoch)
        for field, value in zip(
            self._fields, (*values, file_count, total_size, origin, created_at), strict=True
        ):
            _set(self, field, value)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: every field."""
        return {field: getattr(self, field) for field in self._fields}


def digest_prefix(text: str) -> str | None:
    """The hex of ``text`` when it has the shape of a digest or a prefix of one (4 to 64 hex digits,
    ``sha256:`` optional, any case), else None."""
    value = text.strip().lower().removeprefix("sha256:")
    return value if _PREFIX.fullmatch(value) else None


def resolve_digest(ctx: Context, text: str) -> Digest:
    """Turn a full digest or a unique prefix (4+ hex digits, ``sha256:`` optional) into a digest."""
    value = digest_prefix(text)
    if value is None:
        raise NotFoundError(
            f"{text!r} is not a digest or digest prefix (4 to 64 hex digits, sha256: optional); "
            "`graven artifacts` lists the digests, `graven build REVISION` prints a revision's"
        )
    if not ctx.home.has_database():
        refuse_lost_log(ctx)
        raise NotFoundError(f"no artifact matches {text!r} (this graven home has no artifacts yet)")
    with ctx.db.connect() as conn:
        matches: list[str] = list(
            conn.execute(
                "SELECT digest FROM artifacts WHERE digest LIKE :pattern ORDER BY digest LIMIT 5",
                {"pattern": f"sha256:{value}%"},
            ).scalars()
        )
    if not matches:
        if len(value) == 64 and ctx.store.has(Digest(value)):
            if _looks_like_manifest(ctx, Digest(value)):  # an artifact whose record is gone
                return Digest(value)
            raise NotFoundError(
                f"sha256:{value} is a stored object (a file of an artifact, a graven.toml, a provenance), "
                "not an artifact; `graven artifacts` lists them"
            )
        refuse_lost_log(ctx)  # none, as the database lost every row: not a mistyped prefix
        raise NotFoundError(f"no artifact matches {text!r}; `graven artifacts` lists them")
    if len(matches) > 1:
        more = "..." if len(matches) > 3 else ""
        shown = ", ".join(m[7:19] for m in matches[:3])
        raise AmbiguousError(f"digest prefix {text!r} is ambiguous ({shown}{more}); give more digits")
    return Digest.parse(matches[0])


def _looks_like_manifest(ctx: Context, digest: Digest) -> bool:
    """Whether the stored object ``digest`` begins as a manifest does (a probe of its first bytes;
    whoever uses it reads and verifies the whole). An unreadable object counts as one: the command
    then reports what is wrong with it."""
    head = b'{"entries":['
    try:
        with ctx.store.open(digest) as stream:
            return bool(stream.read(len(head)) == head)
    except GravenError:
        return True


def _record(row: Row) -> ArtifactRecord:
    return ArtifactRecord(**row._asdict())


def list_artifacts(ctx: Context, *, limit: int | None = None) -> list[ArtifactRecord]:
    """Every artifact, newest first (artifacts recorded at the same time: by digest, descending);
    with ``limit``, only the newest ``limit`` of them (``LIMIT`` in the query, read through the
    index on ``created_at``: the work grows with ``limit``, not with the table). An empty home has
    none and creates nothing."""
    check_limit(limit)
    records: list[ArtifactRecord] = []
    if ctx.home.has_database():
        query = """SELECT digest, name, "commit", repository, revision, pipeline_digest, source_date_epoch,
            file_count, total_size, origin, created_at
            FROM artifacts ORDER BY created_at DESC, digest DESC"""
        params: dict[str, Any] = {}
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        with ctx.db.connect() as conn:
            records = [_record(row) for row in conn.execute(query, params)]
    if not records:
        refuse_lost_log(ctx)  # not a new home: one whose database was lost
    return records


def get_artifact(ctx: Context, digest: Digest) -> ArtifactRecord:
    """The record of one artifact."""
    with ctx.db.connect() as conn:
        row = conn.execute(
            """SELECT digest, name, "commit", repository, revision, pipeline_digest, source_date_epoch,
                file_count, total_size, origin, created_at
            FROM artifacts WHERE digest = :digest""",
            {"digest": str(digest)},
        ).one_or_none()
    if row is None:
        raise NotFoundError(f"artifact {digest} is not recorded in this graven home")
    return _record(row)


def build_history(ctx: Context, digest: Digest) -> list[dict[str, Any]]:
    """Every recorded build that produced ``digest``."""
    with ctx.db.connect() as conn:
        rows = conn.execute(
            """SELECT id, digest, name, "commit", repository, revision, pipeline_digest, started_at,
                finished_at, builder, graven_version, invocation_id
            FROM builds WHERE digest = :digest ORDER BY id""",
            {"digest": str(digest)},
        )
        return [dict(row._asdict()) for row in rows]


def load_manifest(ctx: Context, digest: Digest, *, cached: bool = True) -> TreeManifest:
    """Read and verify an artifact's manifest, and parse it: unless ``cached`` is false, the entries come
    from the home's cache of manifests parsed and validated before (:mod:`graven.store.manifest_cache`;
    the store's copy is still read and verified), else from the bytes, and are then kept in that cache."""
    try:
        data = ctx.store.read(digest)  # a verified read, cached or not: a missing or corrupt manifest fails
    except IntegrityError:
        if not ctx.store.has(digest):
            raise not_stored_error(ctx, digest) from None
        raise
    if cached:
        entries = ctx.manifest_cache.get(digest.hex)
        if entries is not None:
            manifest = TreeManifest(entries)
            manifest.__dict__["digest"] = digest  # what the cache entry is bound to
            return manifest
    manifest = TreeManifest.from_bytes(data)
    ctx.manifest_cache.put(digest.hex, manifest.entries)
    return manifest


def not_stored_error(ctx: Context, digest: Digest) -> IntegrityError:
    """The error for an artifact the database records but whose manifest this home's store does not
    hold: pulled or imported by another home whose database this is, or objects lost. Said before
    anything else is read for it: the first object missing (its provenance, say) would name neither
    the artifact nor how to get it back."""
    damage = "; ".join(ctx.store.damage())  # what may explain it, as the store's own error says
    return IntegrityError(
        f"{digest} is recorded in the database but not in this home's store ({ctx.home.objects}): "
        "pull or import it here (`graven pull REGISTRY/REPOSITORY@sha256:...` or `graven import FILE`), "
        f"or restore GRAVEN_HOME/objects from a backup{'; ' if damage else ''}{damage}"
    )


class Problem(Frozen):
    """One missing or corrupt object, named by its path in the artifact."""

    __slots__ = ("detail", "kind", "object", "path")
    _fields = ("path", "object", "kind", "detail")
    path: str
    object: str
    kind: str  # missing | corrupt
    detail: str

    def __init__(self, path: str, object: str, kind: str, detail: str = "") -> None:
        _set(self, "path", path)
        _set(self, "object", object)
        _set(self, "kind", kind)
        _set(self, "detail", detail)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: every field."""
        return {"path": self.path, "object": self.object, "kind": self.kind, "detail": self.detail}


class VerifyReport(Record):
    """The outcome of re-hashing an artifact; mutable."""

    __slots__ = ("digest", "objects_checked", "problems")
    _fields = ("digest", "objects_checked", "problems")

    def __init__(self, digest: str, objects_checked: int = 0, problems: list[Problem] | None = None) -> None:
        self.digest = digest
        self.objects_checked = objects_checked
        self.problems: list[Problem] = [] if problems is None else problems

    @property
    def ok(self) -> bool:
        """True when nothing is missing or corrupt."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "digest": self.digest,
            "ok": self.ok,
            "objects_checked": self.objects_checked,
            "problems": [p.to_json() for p in self.problems],
        }


def verify_artifact(ctx: Context, digest: Digest) -> VerifyReport:
    """Re-hash the manifest and every blob of an artifact; report what is missing or corrupt.

    An object is corrupt when the store has it but no stored copy verifies (the store tries every
    copy), missing when no copy is left. The detail of a missing object names the store's damage that
    may explain it (a damaged pack index, an index whose pack is gone)."""
    store = ctx.store
    report = VerifyReport(digest=str(digest))
    try:
        manifest = load_manifest(ctx, digest, cached=False)  # re-hash it, whatever the cache holds
    except IntegrityError as exc:
        kind = "missing" if not store.has(digest) else "corrupt"
        report.problems.append(Problem(MANIFEST_PATH, str(digest), kind, str(exc)))
        return report
    report.objects_checked += 1
    paths_by_blob: dict[str, list[str]] = {}
    for entry in manifest.files():
        paths_by_blob.setdefault(entry.sha256, []).append(entry.path)
    total = len(paths_by_blob) + 1  # and the manifest, checked already: as the final line counts
    store.expect_lookups(2 * len(paths_by_blob))  # has() and the verified read of each
    progress = ctx.reporter.progress
    for done, (sha, paths) in enumerate(paths_by_blob.items(), start=1):
        progress("verifying objects", done, total)
        blob = Digest(sha)
        report.objects_checked += 1
        found = _object_problem(store, blob)
        if found is not None:
            report.problems.extend(Problem(p, str(blob), *found) for p in paths)
    progress("verifying objects", total, total)
    report.problems.sort(key=lambda p: p.path.encode())
    return report


def restore_hint(ctx: Context, digest: Digest, report: VerifyReport) -> str:
    """How to put back what ``report`` found missing or corrupt (README: Backups); "" when nothing is.
    The same bytes stored again replace a damaged copy (its digest does not change): an export of the
    artifact imported, a pull, or a build of its commit past the blob cache (``--no-cache``: with the
    cache, a build trusts a stored object without reading it, and leaves the damage). A damaged signed
    provenance cannot be made again (a build signs another envelope): only a backup has it."""
    if report.ok:
        return ""
    try:
        commit = get_artifact(ctx, digest).commit or "COMMIT"
    except GravenError:  # an artifact whose record is gone, a database that cannot be read
        commit = "COMMIT"
    parts = []
    if any(problem.path != PROVENANCE_PATH for problem in report.problems):
        parts.append(
            "to put the objects back, `graven import` an export of it, `graven pull` it, or run "
            f"`graven build --no-cache {commit}` in its repository (the same bytes replace a damaged copy)"
        )
    if any(problem.path == PROVENANCE_PATH for problem in report.problems):
        parts.append("a damaged signed provenance comes back only from a backup of GRAVEN_HOME/objects")
    return f"{'; '.join(parts)} (README: Backups)"


class Verification(Frozen):
    """What ``graven verify`` found: every object of the artifact re-hashed (``report``, which also
    names the objects its provenance relies on), the provenance against the trust policy, the
    verdict."""

    __slots__ = ("ok", "provenance", "reason", "report")
    _fields = ("report", "provenance", "ok", "reason")
    report: VerifyReport
    provenance: ProvenanceCheck
    ok: bool
    reason: str  # why it failed ("" when ok): what the audit log records

    def __init__(self, report: VerifyReport, provenance: ProvenanceCheck, ok: bool, reason: str) -> None:
        _set(self, "report", report)
        _set(self, "provenance", provenance)
        _set(self, "ok", ok)
        _set(self, "reason", reason)


def verify(ctx: Context, digest: Digest, *, policy: TrustPolicy, env: str | None = None) -> Verification:
    """``graven verify``: re-hash the manifest and every blob, check the signed provenance against
    ``policy`` (for ``env``'s keys), and re-hash what the accepted provenance names that a deployment
    reads (the graven.toml; a build log, when this store has it). An ``env`` no environment has is
    refused (:func:`check_known_env`). A failure is recorded in the audit log; when it cannot be (a
    read-only home, a database that is down), a warning says so and the failure is still returned."""
    from graven.service.provenance import PIPELINE_NAME, check_provenance, envelope_digests

    unknown: NotFoundError | None = None
    if env is not None:  # a mistyped name would be checked with the default keys and pass
        unknown, unread = _unknown_env(ctx, digest, policy, env)
        # a graven.toml of the artifact that cannot be read may be the one that defines env: the
        # check below names the damage (exit 1), which "unknown environment" (exit 2) would hide
        if unknown is not None and not unread:
            raise unknown
    report = verify_artifact(ctx, digest)
    provenance = check_provenance(ctx, digest, policy=policy, env=env)
    store = ctx.store
    for envelope in envelope_digests(ctx, digest):  # objects of the artifact too: named when damaged
        try:
            object_digest = Digest.parse(envelope)
        except GravenError:
            continue  # not a digest: the provenance check has said what is wrong with it
        if provenance.ok and not store.has(object_digest):
            continue  # another home's attestation (a shared database); one that verifies is here
        report.objects_checked += 1
        found = _object_problem(store, object_digest)
        if found is not None:
            report.problems.append(Problem(PROVENANCE_PATH, str(object_digest), *found))
    for name, named in provenance.named:
        try:
            object_digest = Digest.parse(named)
        except GravenError:
            continue  # a statement's own digests are parsed strictly: never here
        if name != PIPELINE_NAME and not store.has(object_digest):
            continue  # a build log does not travel with an export: not needed
        report.objects_checked += 1
        found = _object_problem(store, object_digest)
        if found is not None:
            report.problems.append(Problem(f"{name} (named by the provenance)", str(object_digest), *found))
    ok = report.ok and provenance.ok
    if unknown is not None and ok:  # what could not be read is none of what the provenance names
        raise unknown
    reason = ""
    if not ok:
        # objects, not the paths they are at (one object's problem is listed once per path)
        damaged = len({problem.object for problem in report.problems})
        reason = provenance.reason if report.ok else f"{damaged} objects missing or corrupt"
        record_verify_failure(ctx, digest, reason)
    return Verification(report, provenance, ok, reason)


def known_environments(ctx: Context, digest: Digest, policy: TrustPolicy) -> list[str]:
    """The environments this home knows, sorted: those ``policy`` has keys for (``[env.NAME] keys``
    of a policy file), those recorded here (deployed to, not retired) and those the graven.toml of
    ``digest`` defines (``[env.NAME]``: the one its record and its builds here name). Each may
    verify ``digest`` with its keys: the policy's own for that environment, else the default ones."""
    return _known_environments(ctx, digest, policy)[0]


def _known_environments(ctx: Context, digest: Digest, policy: TrustPolicy) -> tuple[list[str], bool]:
    """:func:`known_environments`, and whether a graven.toml of ``digest`` could not be read (missing,
    corrupt, not TOML): the environments it defines are then not among them."""
    import tomllib

    names = set(policy.environments)
    if not ctx.home.has_database():  # nothing stored or deployed here (`attest verify` offline): none made
        return sorted(names), False
    with ctx.db.connect() as conn:
        names.update(str(name) for name in conn.execute("SELECT name FROM deploy_envs").scalars())
        pipelines = {
            str(found)
            for found in conn.execute(
                "SELECT pipeline_digest FROM artifacts WHERE digest = :digest UNION"
                " SELECT pipeline_digest FROM builds WHERE digest = :digest",
                {"digest": str(digest)},
            ).scalars()
            if found
        }
    unread = False
    for pipeline in sorted(pipelines):
        try:  # only the names of its sections: trust still comes from the policy alone
            doc = tomllib.loads(ctx.store.read(Digest.parse(pipeline)).decode("utf-8"))
        except (GravenError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            unread = True  # missing or damaged: `graven verify` names what is wrong with the objects
            continue
        envs = doc.get("env")
        if isinstance(envs, dict):
            names.update(name for name in envs if isinstance(name, str))
    return sorted(names), unread


def check_known_env(ctx: Context, digest: Digest, policy: TrustPolicy, env: str) -> None:
    """Refuse (:class:`NotFoundError`, exit 2) to verify ``digest`` for ``env`` when no environment of
    that name is known (:func:`known_environments`): the trust policy would check it with the default
    keys, and a mistyped name would pass where the environment's own keys refuse."""
    unknown = _unknown_env(ctx, digest, policy, env)[0]
    if unknown is not None:
        raise unknown


def _unknown_env(
    ctx: Context, digest: Digest, policy: TrustPolicy, env: str
) -> tuple[NotFoundError | None, bool]:
    """The error of :func:`check_known_env` for ``env`` (None: it is known), and whether a graven.toml
    of ``digest`` could not be read (an ``env`` it defines would be said unknown)."""
    from graven.deploy.settings import check_env_name

    check_env_name(env)
    known, unread = _known_environments(ctx, digest, policy)
    if env in known:
        return None, unread
    if not known:
        return NotFoundError(
            f"unknown environment {env!r}: none is configured here; define it with an [env.{env}] section "
            f"in graven.toml (and build again) or [env.{env}] keys in a trust policy file"
        ), unread
    import difflib

    close = difflib.get_close_matches(env, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return NotFoundError(
        f"unknown environment {env!r} (known here: {', '.join(known)}); {hint}define an environment with "
        "an [env.NAME] section in graven.toml or [env.NAME] keys in a trust policy file"
    ), unread


def record_verify_failure(ctx: Context, digest: Digest, reason: str) -> None:
    """Record a failed verification in the audit log; when that cannot be done (a read-only home, a
    database that is down), warn and go on: the failure itself must still be reported."""
    from graven.model.logentry import LogEvent

    try:
        ctx.audit.record(LogEvent("verify-failure", artifact=str(digest), reason=reason, result="failed"))
    except GravenError as exc:
        ctx.reporter.warn(f"this failure is not in the audit log: {exc}")


def _object_problem(store: LocalStore, digest: Digest) -> tuple[str, str] | None:
    """(``missing`` or ``corrupt``, why) when the store has no copy of ``digest`` that verifies."""
    try:
        if not store.has(digest):
            raise store.missing_error(digest)  # names the damage that may explain it
        store.verify(digest)
    except IntegrityError as exc:
        return ("missing" if not store.has(digest) else "corrupt"), str(exc)
    return None


def summarize(manifest: TreeManifest) -> dict[str, Any]:
    """Counts and sizes of an artifact's entries, by kind and by top-level directory."""
    kinds: Counter[str] = Counter()
    top_sizes: Counter[str] = Counter()
    top_counts: Counter[str] = Counter()
    executables = 0
    for entry in manifest.entries:
        top = entry.path.split("/", 1)[0] if "/" in entry.path else "."
        if isinstance(entry, FileEntry):
            kinds["files"] += 1
            executables += entry.executable
            top_sizes[top] += entry.size
            top_counts[top] += 1
        elif isinstance(entry, SymlinkEntry):
            kinds["symlinks"] += 1
        elif isinstance(entry, DirEntry):
            kinds["empty_dirs"] += 1
    return {
        "files": kinds["files"],
        "executables": executables,
        "symlinks": kinds["symlinks"],
        "empty_dirs": kinds["empty_dirs"],
        "total_size": manifest.total_size,
        "top_level": [
            {"path": top, "files": top_counts[top], "size": top_sizes[top]} for top in sorted(top_counts)
        ],
    }
