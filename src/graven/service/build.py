"""``graven build``: one commit in, one content-addressed artifact out.

The revision is resolved to a commit id once; graven.toml and every file are then read from that
commit only, so nothing in the working tree (or a change to it during the build) can leak in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

from graven import __version__
from graven.core import paths
from graven.core.globs import GlobSet, Selection, never_matches
from graven.core.mac import Hmac256
from graven.core.paths import display_path
from graven.core.record import Frozen
from graven.errors import ConfigError, GravenError, NotFoundError, UnsafeInputError
from graven.model.digest import Digest, sha256_digest
from graven.model.logentry import LogEvent
from graven.model.manifest import (
    MAX_PATH,
    FileEntry,
    SymlinkEntry,
    TreeEntry,
    TreeManifest,
    check_fs_limits,
    unvalidated_entries,
)
from graven.model.pipeline import PIPELINE_FILE, Pipeline, parse_pipeline
from graven.runtime import random_uuid
from graven.service.context import Context, utc_now
from graven.service.provenance import (
    provenance_inputs,
    record_attestation,
    refuse_revoked_signer,
    resolve_signing_key,
    sign_provenance,
)
from graven.service.records import insert_ignore
from graven.signing.keys import SigningKey
from graven.signing.provenance import ResourceRef
from graven.sources.git import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SUBMODULE,
    MODE_SYMLINK,
    BlobReader,
    DirtyCheck,
    GitChange,
    GitEntry,
    GitRepo,
    Pending,
    Running,
)
from graven.sources.worktree import worktree_blobs
from graven.store.local import LOOSE_THRESHOLD, PackBatch

if TYPE_CHECKING:
    from graven.db import Connection

# Step builds (graven.service.hermetic, graven.build.sandbox, .tree) and --check (graven.build.compare)
# are imported where they are used: a plain build does not pay for them at start-up.

__all__ = ["BuildResult", "build"]

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)
_SANDBOX_NONE = "none"  # graven.build.sandbox.SANDBOX_NONE, without importing the sandbox
_GIT_FILE_MODES = frozenset((MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK))
# what the tags of the database rows a build trusts (see _blob_tag, _build_tag) are over, apart from
# the row: the record key also tags other records (graven.deploy.recordkey, graven.signing.memo)
_BLOB_TAG_DOMAIN = b"graven.blobcache/v1\0"
_BUILD_TAG_DOMAIN = b"graven.builds/v1\0"
_CARRY_CANDIDATES = 8  # newest builds rows looked at for an authenticated carry base


class BuildResult(Frozen):
    """What a build produced."""

    _fields = (  # in this order: the constructor's and the JSON's
        "digest",
        "name",
        "commit",
        "revision",
        "repository",
        "pipeline_digest",
        "source_date_epoch",
        "started_at",
        "finished_at",
        "file_count",
        "total_size",
        "files_read",
        "invocation_id",
        "dirty_worktree",
        "provenance",
        "signed_by",
        "files_from_worktree",
    )
    __slots__ = tuple(sorted(_fields))
    digest: str
    name: str
    commit: str
    revision: str
    repository: str
    pipeline_digest: str
    source_date_epoch: int
    started_at: str
    finished_at: str
    file_count: int
    total_size: int
    files_read: int
    invocation_id: str
    dirty_worktree: bool
    provenance: str
    signed_by: str
    files_from_worktree: int  # of files_read: blobs taken from the working tree (exactly their blob)

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        digest: str,
        name: str,
        commit: str,
        revision: str,
        repository: str,
        pipeline_digest: str,
        source_date_epoch: int,
        started_at: str,
        finished_at: str,
        file_count: int,
        total_size: int,
        files_read: int,
        invocation_id: str,
        dirty_worktree: bool,
        provenance: str,
        signed_by: str,
        files_from_worktree: int = 0,
    ) -> None:
        values = locals()
        for field in self._fields:
            _set(self, field, values[field])

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {field: getattr(self, field) for field in self._fields}


class _Source(NamedTuple):
    repo: GitRepo
    commit: str
    revision: str
    pipeline_bytes: bytes
    pipeline: Pipeline
    epoch: int


def _open_source(ctx: Context, path: Path, revision: str, *, isolated: bool = True) -> _Source:
    repo, (commit, epoch, pipeline_bytes, symlink) = GitRepo.open_commit(
        path, revision, PIPELINE_FILE, isolated=isolated
    )
    if pipeline_bytes is None:
        if repo.object_type(commit, PIPELINE_FILE) == "tree":
            raise ConfigError(
                f"{PIPELINE_FILE} in commit {commit[:12]} is a directory; it must be a regular file: "
                "commit the file itself"
            )
        if _uncommitted_pipeline(repo, commit):
            raise NotFoundError(
                f"{PIPELINE_FILE} not found in commit {commit[:12]} ({revision}): the one in the working "
                f"tree is not committed; commit it (`git add {PIPELINE_FILE} && git commit`), then build"
            )
        raise NotFoundError(
            f"{PIPELINE_FILE} not found in commit {commit[:12]} ({revision}); "
            "create one with `graven init`, then commit it"
        )
    if symlink:
        target = display_path(pipeline_bytes.decode("utf-8", "surrogateescape"))
        raise ConfigError(
            f"{PIPELINE_FILE} in {commit[:12]} is a symlink (to {target}); it must be a regular file in "
            "the commit: commit the file itself"
        )
    source = f"{PIPELINE_FILE} in {commit[:12]}"
    pipeline = parse_pipeline(pipeline_bytes, source=source)
    if pipeline.env:  # refused now, not signed into an artifact that no deploy would accept
        from graven.deploy.settings import check_environments

        check_environments(pipeline.env, source=source)
    return _Source(repo, commit, revision, pipeline_bytes, pipeline, epoch)


def _uncommitted_pipeline(repo: GitRepo, commit: str) -> bool:
    """Whether the working tree holds a graven.toml that ``commit``, the checked-out one, lacks (a
    newcomer's `graven init` without `git commit`): a hint only, so any doubt is no."""
    if repo.bare or not (repo.root / PIPELINE_FILE).is_file():
        return False
    try:
        return repo.resolve("HEAD") == commit
    except GravenError:
        return False


def build(
    ctx: Context,
    *,
    path: Path,
    revision: str = "HEAD",
    use_cache: bool = True,
    check: bool = False,
    isolated: bool = True,
) -> BuildResult:
    """Build ``revision`` of the repository at ``path`` into the store and record it.

    ``isolated``: ``path`` names the repository (-C REPO), whatever git's variables of the environment
    (GIT_DIR, as git exports it to a hook) say; False builds the current directory's repository as git
    finds it there (a pre-receive hook: the pushed commit is only in its quarantine, which the
    environment names).

    With ``check``, step builds run twice (the second time varied) and must agree; else
    NotReproducibleError and nothing is stored.
    """
    started_at = utc_now()
    source = _open_source(ctx, path, revision, isolated=isolated)
    key = resolve_signing_key(ctx)  # fail before any work when there is no usable key
    if use_cache:
        _warn_without_record_key(ctx)
    with ExitStack() as running:
        # git works in the background while we build: for a build without steps what changed since
        # an earlier build of the same graven.toml, else the listing of the commit's tree (first: it
        # is needed first), status (is the working tree dirty?), the origin URL
        listing: Running[list[GitEntry]] | None = None
        carry: _Carry | None = None
        if not source.pipeline.build.steps:
            base = _carry_base(ctx, source) if use_cache and not check else None
            if base is not None:
                base_commit, base_digest = base
                changes = running.enter_context(source.repo.start_diff_tree(base_commit, source.commit))
                carry = _Carry(base_commit, base_digest, changes)
            else:
                listing = running.enter_context(source.repo.start_ls_tree(source.commit))
        dirty_check = running.enter_context(source.repo.start_dirty_check())
        remote = running.enter_context(source.repo.start_describe_remote())
        return _build(
            ctx,
            source,
            key,
            dirty_check,
            started_at=started_at,
            use_cache=use_cache,
            check=check,
            remote=remote,
            listing=listing,
            carry=carry,
        )


def _build(
    ctx: Context,
    source: _Source,
    key: SigningKey,
    dirty_check: DirtyCheck,
    *,
    started_at: str,
    use_cache: bool,
    check: bool,
    remote: Pending[str],
    listing: Running[list[GitEntry]] | None,
    carry: _Carry | None = None,
) -> BuildResult:
    revision = source.revision
    store = ctx.store
    store.clean_tmp()
    selection = Selection.of(source.pipeline.artifact.include, source.pipeline.artifact.exclude)
    name = source.pipeline.artifact.name
    byproducts: list[ResourceRef] = []
    sandbox, inputs, fetch_network = _SANDBOX_NONE, list[ResourceRef](), None
    with store.batch() as batch:
        pipeline_digest = batch.add(source.pipeline_bytes)
        if source.pipeline.build.steps:
            built = _tree_from_steps(ctx, source, selection, batch, check=check, use_cache=use_cache)
            entries, files_read, new_cache = built.entries, built.files_read, list[dict[str, object]]()
            from_worktree = 0
            sandbox, inputs, fetch_network = built.sandbox, built.inputs, built.fetch_network
            log = _redacted_log(built.log)
            byproducts.append(ResourceRef("build.log", str(batch.add(log)), "text/plain"))
        else:
            entries, files_read, new_cache, from_worktree = _tree_from_git(
                ctx,
                source,
                selection,
                batch,
                use_cache=use_cache,
                listing=None if listing is None else listing.result(),
                carry=carry,
            )
            _check_selection(ctx, source, entries, of=f"of commit {source.commit[:12]}")
            if check:
                _check_git_tree(ctx, source, selection, entries)
        manifest = TreeManifest.of(entries)
        check_fs_limits(manifest)  # what import refuses is not built
        previous = _latest_manifest(ctx, name)
        batch.add(manifest.to_bytes(), delta_base=previous, pack=True)
        finished_at = utc_now()
        invocation_id = random_uuid()
        repository = remote.result()
        envelope = sign_provenance(
            key,
            provenance_inputs(
                name=name,
                digest=str(manifest.digest),
                repository=repository,
                revision=revision,
                commit=source.commit,
                source_date_epoch=source.epoch,
                sandbox=sandbox,
                invocation_id=invocation_id,
                started_on=started_at,
                finished_on=finished_at,
                pipeline_digest=str(pipeline_digest),
                inputs=inputs,
                byproducts=byproducts,
                fetch_network=fetch_network,
            ),
        )
        envelope_digest = batch.add(envelope.to_json())
    dirty = dirty_check.result()
    if dirty and PIPELINE_FILE in dirty_check.changed:
        ctx.reporter.warn(
            f"the working tree has uncommitted changes, {PIPELINE_FILE} among them; they are not built: "
            f"commit {source.commit[:12]} was built with its committed {PIPELINE_FILE} (commit yours "
            "to build with it)"
        )
    elif dirty:
        ctx.reporter.warn(
            "the working tree has uncommitted changes; they are not built "
            f"(built commit {source.commit[:12]})"
        )
    elif dirty_check.error is not None:
        ctx.reporter.warn(
            f"cannot tell whether the working tree has uncommitted changes (git status: "
            f"{dirty_check.error}); none is built either way (built commit {source.commit[:12]})"
        )
    result = BuildResult(
        digest=str(manifest.digest),
        name=name,
        commit=source.commit,
        revision=revision,
        repository=repository,
        pipeline_digest=str(pipeline_digest),
        source_date_epoch=source.epoch,
        started_at=started_at,
        finished_at=finished_at,
        file_count=sum(1 for _ in manifest.files()),
        total_size=manifest.total_size,
        files_read=files_read,
        files_from_worktree=from_worktree,
        invocation_id=invocation_id,
        dirty_worktree=dirty,
        provenance=str(envelope_digest),
        signed_by=key.keyid,
    )
    _record(ctx, result, new_cache)
    _keep_parsed(ctx, manifest)
    return result


def _keep_parsed(ctx: Context, manifest: TreeManifest) -> None:
    """Leave the validated manifest in the home's cache (:mod:`graven.store.manifest_cache`) for the
    commands that follow (export, deploy, the next carried-forward build): ~3 ms here against ~20 ms
    of parsing each time. A build is the one reader that makes the record key (a home that only
    imports or verifies makes none); without one, nothing is kept."""
    try:
        key = ctx.record_key
    except GravenError:
        return
    ctx.manifest_cache.put(manifest.digest.hex, manifest.entries, key=key)


def _latest_manifest(ctx: Context, name: str) -> Digest | None:
    with ctx.db.connect() as conn:
        row = conn.execute(
            "SELECT digest FROM artifacts WHERE name = :name ORDER BY created_at DESC LIMIT 1",
            {"name": name},
        ).scalar_one_or_none()
    if row is None:
        return None
    digest = Digest.parse(row)
    return digest if ctx.store.has(digest) else None


def _record(ctx: Context, result: BuildResult, new_cache: list[dict[str, object]]) -> None:
    identity = {  # what the artifacts and builds rows both say about where the artifact came from
        "digest": result.digest,
        "name": result.name,
        "commit": result.commit,
        "repository": result.repository,
        "revision": result.revision,
        "pipeline_digest": result.pipeline_digest,
    }
    key = _record_key(ctx)
    with ctx.db.begin() as conn:
        # under the writers' lock, where `keys revoke` logs its revocation (after writing it): one
        # made while the build ran refuses the build here, or is logged after its entries, never
        # before a `sign` by the key it revoked
        refuse_revoked_signer(ctx, result.signed_by, meanwhile=True)
        if key is not None and new_cache:
            _store_blob_cache(conn, key, new_cache)
        insert_ignore(
            conn,
            "artifacts",
            [
                {
                    **identity,
                    "source_date_epoch": result.source_date_epoch,
                    "file_count": result.file_count,
                    "total_size": result.total_size,
                    "origin": "build",
                    "created_at": result.finished_at,
                }
            ],
        )
        conn.execute(
            """INSERT INTO builds (digest, name, "commit", repository, revision, pipeline_digest,
                started_at, finished_at, builder, graven_version, invocation_id, tag)
            VALUES (:digest, :name, :commit, :repository, :revision, :pipeline_digest,
                :started_at, :finished_at, :builder, :graven_version, :invocation_id, :tag)""",
            {
                **identity,
                "started_at": result.started_at,
                "finished_at": result.finished_at,
                "builder": ctx.actor,
                "graven_version": __version__,
                "invocation_id": result.invocation_id,
                "tag": None
                if key is None
                else _build_tag(
                    key,
                    name=result.name,
                    pipeline=result.pipeline_digest,
                    version=__version__,
                    commit=result.commit,
                    digest=result.digest,
                ),
            },
        )
        record_attestation(conn, result.digest, result.provenance, result.signed_by)
        ctx.audit.append(conn, LogEvent("build", artifact=result.digest, commit=result.commit))
        ctx.audit.append(
            conn,
            LogEvent(
                "sign",
                artifact=result.digest,
                commit=result.commit,
                reason=f"provenance signed by {result.signed_by}",
            ),
        )


def _record_key(ctx: Context) -> bytes | None:
    """The home's record key (made on first use, as the build's :func:`_keep_parsed` would), or None
    when it cannot be had: the blob cache and carry bases are then neither trusted nor written."""
    try:
        return ctx.record_key
    except GravenError:
        return None


def _warn_without_record_key(ctx: Context) -> None:
    """Say so when the record key cannot be had (a keys/records.hmac others may read, say): the build
    then neither trusts nor writes its caches, which is safe but reads and hashes every file again,
    and a deploy or drift check refuses such a key outright."""
    try:
        ctx.record_key  # noqa: B018 - made or read here, once; the build's helpers ask it again
    except GravenError as exc:
        ctx.reporter.warn(f"the build's caches are not used: {exc}")


def _blob_tag(mac: Hmac256, oid: str, sha: str, size: int) -> str:
    """The tag of the blob cache row (``oid``, ``sha``, ``size``): HMAC-SHA256 under the record key
    (``mac``), hex. A git oid and a sha256 are hex digits and a size digits, so the NUL-separated text
    is unambiguous (a row with other values has a tag no genuine row had)."""
    message = _BLOB_TAG_DOMAIN + f"{oid}\0{sha}\0{size}".encode("utf-8", "surrogateescape")
    return mac.hexdigest(message)


def _build_tag(key: bytes, *, name: str, pipeline: str, version: str, commit: str, digest: str) -> str:
    """The tag of a builds row as a carry base: ``commit`` built with graven.toml ``pipeline`` by
    graven ``version`` is the artifact ``digest`` named ``name`` (HMAC-SHA256 under the record key,
    hex, over the JSON list of these: any text is unambiguous)."""
    fields = json.dumps([name, pipeline, version, commit, digest]).encode("ascii")
    return hmac.digest(key, _BUILD_TAG_DOMAIN + fields, "sha256").hex()


def _tag_matches(expected: str, tag: object) -> bool:
    """Whether the stored ``tag`` is ``expected`` (in constant time; any value a row may hold)."""
    return isinstance(tag, str) and hmac.compare_digest(
        expected.encode("ascii"), tag.encode("utf-8", "surrogateescape")
    )


def _store_blob_cache(conn: Connection, key: bytes, rows: list[dict[str, object]]) -> None:
    """Write the blob cache rows a build made, each with its tag, over any row of the same blob (one
    without a valid tag was ignored, and the blob was read again: its row is replaced)."""
    mac = Hmac256(key)
    tagged = {
        str(row["git_oid"]): {
            **row,
            "tag": _blob_tag(mac, str(row["git_oid"]), str(row["sha256"]), cast(int, row["size"])),
        }
        for row in rows
    }
    conn.execute(
        """INSERT INTO git_blob_cache (git_oid, sha256, size, tag) VALUES (:git_oid, :sha256, :size, :tag)
        ON CONFLICT (git_oid) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
            tag = excluded.tag""",
        list(tagged.values()),
    )


class _Carry(NamedTuple):
    """An earlier build to carry entries forward from: its commit, its manifest, and the running
    comparison of that commit's trees with the one being built (each tree checked against its id,
    the earlier commit's too: what is carried is what both verified trees agree on)."""

    commit: str
    digest: Digest
    changes: Running[list[GitChange] | None]


def _carry_base(ctx: Context, source: _Source) -> tuple[str, Digest] | None:
    """The commit and artifact of the latest build of the same graven.toml (byte for byte, so the
    same selection and no steps) by this version of graven, if any.

    Its manifest is a pure function of (commit, graven.toml, graven's rules): the entries of the
    paths that did not change since that commit are the same in this build, and only the changed
    ones need git's listing, the blob cache or reading. The build may come from any repository:
    what it is trusted for is only what this repository's verified trees of both commits agree on
    (:meth:`GitRepo.start_diff_tree` hashes the earlier commit and its trees as this one's), and it
    was itself made from verified trees.

    Only a row this home's builds wrote counts: its tag under the record key must match (whoever can
    write the database could otherwise name an older artifact as the build of the base commit, and
    its entries would be carried into this one). A row without one is passed over."""
    key = _record_key(ctx)
    if key is None:
        return None
    name, version = source.pipeline.artifact.name, __version__
    pipeline = str(sha256_digest(source.pipeline_bytes))
    with ctx.db.connect() as conn:
        rows = conn.execute(
            """SELECT "commit", digest, tag FROM builds
            WHERE name = :name AND pipeline_digest = :pipeline AND graven_version = :version
            ORDER BY finished_at DESC LIMIT :limit""",
            {"name": name, "pipeline": pipeline, "version": version, "limit": _CARRY_CANDIDATES},
        ).all()
    for commit, digest, tag in rows:
        if not isinstance(commit, str) or not isinstance(digest, str):
            continue
        expected = _build_tag(
            key, name=name, pipeline=pipeline, version=version, commit=commit, digest=digest
        )
        if not _tag_matches(expected, tag):
            continue
        try:
            return commit, Digest.parse(digest)
        except GravenError:
            continue
    return None


def _carry_forward(
    ctx: Context, selection: Selection, carry: _Carry
) -> tuple[list[TreeEntry], list[GitEntry]] | None:
    """The entries of the earlier build that no change touches, and the selected git entries that
    changed (added, modified, or of another type now); None when the earlier build cannot serve
    (git could not compare the commits, its manifest or one of its objects is not in the store),
    and the whole tree is then read as without it."""
    try:  # while git compares the commits; what is carried is validated with the new manifest
        cached = ctx.manifest_cache.get(carry.digest.hex)
        earlier = list(cached) if cached is not None else unvalidated_entries(ctx.store.read(carry.digest))
    except GravenError:
        return None
    changes = carry.changes.result()
    if changes is None:
        return None
    changed = {change.path for change in changes}
    carried = [entry for entry in earlier if entry.path not in changed]
    if not all(isinstance(entry, FileEntry | SymlinkEntry) for entry in carried):
        return None  # git trees hold no empty directories: not a build of a commit's files
    if paths.refused_by_git(
        [entry.path for entry in carried], [e.path for e in carried if isinstance(e, SymlinkEntry)]
    ):
        return None  # built before graven refused it: the whole tree is read, and refused by name
    if ctx.store.missing({entry.sha256 for entry in carried if isinstance(entry, FileEntry)}):
        return None  # read again from git (as a blob cache hit whose object is gone would be)
    listed = [
        GitEntry(change.mode, "commit" if change.mode == MODE_SUBMODULE else "blob", change.oid, change.path)
        for change in changes
        if change.status != "D"
    ]
    return carried, _select_git_entries(listed, selection)


def _cached_digests(ctx: Context, oids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """The blob cache rows for ``oids``: git oid -> (sha256 hex, size); only rows whose tag under the
    home's record key matches (whoever can write the database could otherwise map a blob to any
    content the store holds, and the build would sign that content as the commit's): the others are
    misses, read again and written with a tag."""
    wanted = sorted(set(oids))
    if not wanted:
        return {}
    key = _record_key(ctx)
    if key is None:
        return {}
    found: dict[str, tuple[str, int]] = {}
    mac = Hmac256(key)
    with ctx.db.connect() as conn:
        query = "SELECT git_oid, sha256, size, tag FROM git_blob_cache WHERE git_oid IN :values"
        for oid, sha, size, tag in conn.select_in(query, wanted):
            if (
                isinstance(oid, str)
                and isinstance(sha, str)
                and type(size) is int
                and _tag_matches(_blob_tag(mac, oid, sha, size), tag)
            ):
                found[oid] = (sha, size)
    return found


def _check_no_dotgit(entries: list[TreeEntry]) -> None:
    """Refuse step outputs that git refuses in a tree (as a commit's tree): a path through a name git
    takes for .git (in a release, its config would make any git command run there execute what it
    names), a symlink named .gitmodules. (``verify --rebuild`` collects the outputs without this
    check: it stores nothing, and an artifact built before it is rebuilt too.)"""
    refused = paths.refused_by_git(
        [entry.path for entry in entries], [e.path for e in entries if isinstance(e, SymlinkEntry)]
    )
    if refused is not None:
        path, why, harm = refused
        raise UnsafeInputError(
            f"[build] outputs: {display_path(path)}: {why}, which a release must not hold "
            f"({harm}); exclude it from the outputs "
            "(leave it out of [build] outputs, or add it to [artifact] exclude)"
        )


def _select_git_entries(entries: list[GitEntry], selection: Selection) -> list[GitEntry]:
    if selection.everything:
        chosen = entries
    else:
        selects = selection.selects
        chosen = [entry for entry in entries if selects(entry.path)]
    # paths are checked once, when the manifest is made; here only what git may hold besides files,
    # and what git refuses in a tree (git fsck reports it; only a crafted tree holds it, or a commit
    # made where git does not guard the name: ".g\u200cit" outside macOS): a ".git", ".GIT", "git~1"
    # (in a release, a .git/config could make any git run there execute its commands) or a symlink
    # ".gitmodules"
    refused = paths.refused_by_git(
        [entry.path for entry in chosen], [e.path for e in chosen if e.mode == MODE_SYMLINK]
    )
    if refused is not None:
        path, why, harm = refused
        raise UnsafeInputError(
            f"{display_path(path)}: {why}, which git refuses in a tree (git fsck reports it; {harm}); "
            "build a commit without it"
        )
    modes = _GIT_FILE_MODES
    for entry in [entry for entry in chosen if entry.mode not in modes]:
        if entry.mode == MODE_SUBMODULE:
            raise UnsafeInputError(
                f"{entry.path}: submodules are not supported; exclude the path in graven.toml"
            )
        raise UnsafeInputError(f"{entry.path}: unsupported git file mode {entry.mode}")
    return chosen


def _tree_from_git(
    ctx: Context,
    source: _Source,
    selection: Selection,
    batch: PackBatch,
    *,
    use_cache: bool,
    listing: list[GitEntry] | None = None,
    carry: _Carry | None = None,
) -> tuple[list[TreeEntry], int, list[dict[str, object]], int]:
    """The selected entries of the commit (``listing``: its ``ls-tree``, when already read; with
    ``carry``, only what changed since an earlier build), their blobs added to ``batch``; file
    digests come from the blob cache when the store has the object. Also: how many blobs were read,
    the new blob cache rows, and how many of the blobs read came from the working tree."""
    carried = None if carry is None else _carry_forward(ctx, selection, carry)
    if carried is not None:
        result, chosen = carried
    else:
        if listing is None:
            listing = source.repo.ls_tree(source.commit)
        result, chosen = [], _select_git_entries(listing, selection)
    file_oids = {oid for mode, _, oid, _ in chosen if mode != MODE_SYMLINK}
    link_oids = {oid for mode, _, oid, _ in chosen if mode == MODE_SYMLINK}
    cached = _cached_digests(ctx, file_oids) if use_cache else {}
    to_read = sorted(file_oids - cached.keys()) + sorted(link_oids)
    ctx.store.expect_lookups(len(to_read))  # the batch asks the store about each blob it adds
    targets: dict[str, str] = {}
    new_cache: list[dict[str, object]] = []
    known: dict[str, tuple[str, int]] = {}
    total = len(to_read)
    from_worktree = 0
    done = 0

    def progress() -> None:
        nonlocal done
        done += 1
        if done % 256 == 0 or done == total:
            ctx.reporter.progress("reading files", done, total)

    def take(oid: str, data: bytes) -> None:  # the content of a small file blob
        digest = Digest(hashlib.sha256(data).hexdigest())
        batch.add_known(digest, data)
        known[oid] = (digest.hex, len(data))
        new_cache.append({"git_oid": oid, "sha256": digest.hex, "size": len(data)})

    def read(blobs: Iterable[tuple[str, BlobReader]]) -> None:
        for oid, reader in blobs:
            if oid in link_oids and reader.size > MAX_PATH:  # refused before a byte of it is read
                raise _long_target(oid, chosen)
            if oid in link_oids and oid not in file_oids:
                targets[oid] = _link_target(reader.read(), oid, chosen)
            elif reader.size < LOOSE_THRESHOLD:
                data = reader.read()
                take(oid, data)
                if oid in link_oids:
                    targets[oid] = _link_target(data, oid, chosen)
            else:
                digest = batch.add_stream(reader, reader.size)  # type: ignore[arg-type]
                known[oid] = (digest.hex, reader.size)
                new_cache.append({"git_oid": oid, "sha256": digest.hex, "size": reader.size})
            progress()

    if use_cache and not source.repo.bare:
        # files of the working tree that are exactly their blob need no inflating by git (see
        # graven.sources.worktree: a file counts only when it hashes to the commit's blob id)
        reading = set(to_read) - link_oids
        wanted = [(path, oid) for _, _, oid, path in chosen if oid in reading]
        for oid, data in worktree_blobs(source.repo.root, wanted, max_size=LOOSE_THRESHOLD):
            take(oid, data)
            progress()
            from_worktree += 1
        to_read = [oid for oid in to_read if oid not in known]
    if to_read:
        source.repo.prefetch(source.commit, to_read)  # a partial clone: one fetch, not one per blob
    with source.repo.open_blobs(to_read) as blobs:
        # git reads the blobs the cache does not know while the cached ones are checked: a cached
        # digest counts only when the store has the object; the others are read again after
        gone = ctx.store.missing({sha for sha, _ in cached.values()})
        known.update((oid, hit) for oid, hit in cached.items() if hit[0] not in gone)
        lost = sorted(cached.keys() - known.keys())
        total += len(lost)
        read(blobs)
    if lost:
        with source.repo.open_blobs(lost) as blobs:
            read(blobs)
    append, new = result.append, tuple.__new__  # FileEntry(...) without the NamedTuple's __new__
    for mode, _, oid, path in chosen:
        if mode == MODE_SYMLINK:
            append(SymlinkEntry(path, targets[oid]))
        else:
            sha, size = known[oid]
            append(new(FileEntry, (path, sha, size, mode == MODE_EXECUTABLE)))
    if len(result) > paths.MAX_ENTRIES:  # carried forward and changed together (the listing checks its own)
        raise paths.too_many_paths(f"the tree of commit {source.commit[:12]}")
    return result, total, new_cache, from_worktree


def _long_target(oid: str, chosen: list[GitEntry]) -> UnsafeInputError:
    """The refusal of the symlink blob ``oid``, longer than a target may be (check_fs_limits), naming a
    link with that blob: a crafted tree's few KB of objects can hold gigabytes of one."""
    path = next(e.path for e in chosen if e.oid == oid and e.mode == MODE_SYMLINK)
    return UnsafeInputError(
        f"{display_path(path)}: a symlink target of more than {MAX_PATH} bytes (what a file system takes)"
    )


def _link_target(data: bytes, oid: str, chosen: list[GitEntry]) -> str:
    """The target of the symlink blob ``oid``; refused, naming a link with that blob, unless UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        path = next(e.path for e in chosen if e.oid == oid and e.mode == MODE_SYMLINK)
        shown = display_path(data.decode("utf-8", "surrogateescape"))
        raise UnsafeInputError(f"{display_path(path)}: symlink target {shown} is not valid UTF-8") from None


def _shown(value: object) -> str:
    """A pattern or a list of them as graven.toml spells it (JSON is TOML here), on one line."""
    return display_path(json.dumps(value, ensure_ascii=False))


def _check_selection(ctx: Context, source: _Source, entries: list[TreeEntry], *, of: str) -> None:
    """Refuse an artifact without files (include/exclude select none ``of`` what there is); warn about
    each include pattern that adds nothing when others do, and each exclude pattern that can never
    match. The default (every file) costs a look at the first entry."""
    artifact = source.pipeline.artifact
    where = f"{PIPELINE_FILE} in {source.commit[:12]}: [artifact]"
    if not any(isinstance(entry, FileEntry) for entry in entries):
        hints = [
            f"{_shown(pattern)} can never match: paths have no '.', '..' or empty segments"
            for pattern in artifact.include
            if never_matches(pattern)
        ]
        hints.append("patterns match whole paths from the repository root, e.g. 'app/**' or 'app/'")
        raise ConfigError(
            f"{where} include {_shown(artifact.include)} minus exclude {_shown(artifact.exclude)} "
            f"selects no file {of}; an artifact needs at least one ({'; '.join(hints)})"
        )
    if len(artifact.include) > 1:
        for pattern in GlobSet.of(artifact.include).unmatched([entry.path for entry in entries]):
            ctx.reporter.warn(
                f"{where} include {_shown(pattern)} adds no file to the artifact: it matches no "
                f"path {of} that is not excluded; check the pattern"
            )
    for pattern in artifact.exclude:
        if never_matches(pattern):
            ctx.reporter.warn(
                f"{where} exclude {_shown(pattern)} excludes nothing: it can never match, paths have "
                "no '.', '..' or empty segments"
            )


def _check_git_tree(ctx: Context, source: _Source, selection: Selection, entries: list[TreeEntry]) -> None:
    """``--check`` without steps: read every selected file from git again, past the blob cache."""
    from graven.build.compare import HashOnlyBatch, NotReproducibleError, diff_entries

    again = _tree_from_git(ctx, source, selection, cast(PackBatch, HashOnlyBatch()), use_cache=False)[0]
    differences = diff_entries(TreeManifest.of(entries).entries, TreeManifest.of(again).entries)
    if differences:
        raise NotReproducibleError(source.commit, differences, ["the blob cache (every file read again)"])


class _StepsTree(NamedTuple):
    """What a step build gives the rest of :func:`build`."""

    entries: list[TreeEntry]
    files_read: int
    log: bytes
    sandbox: str
    inputs: list[ResourceRef]
    fetch_network: str | None  # the network the [build.fetch] steps had, None without them


def _tree_from_steps(
    ctx: Context,
    source: _Source,
    selection: Selection,
    batch: PackBatch,
    *,
    check: bool = False,
    use_cache: bool = True,
) -> _StepsTree:
    """Run the steps (in the sandbox) and collect the outputs; with ``check``, build a second time
    with :data:`CHECK_VARIATION` and raise NotReproducibleError when the two differ. The first
    checkout takes files that are exactly their blob from the working tree (``use_cache``); the
    second reads every blob from git."""
    from graven.build.compare import NotReproducibleError, diff_entries, with_diffoscope
    from graven.build.tree import collect_tree
    from graven.service.hermetic import CHECK_VARIATION, diffoscope_confinement, run_step_build

    outputs = list(source.pipeline.build.outputs)
    with run_step_build(
        ctx,
        repo=source.repo,
        commit=source.commit,
        epoch=source.epoch,
        pipeline=source.pipeline,
        from_worktree=use_cache,
    ) as first:
        counter = [0]

        def on_file(_size: int) -> None:
            counter[0] += 1
            if counter[0] % 256 == 0:
                ctx.reporter.progress("storing outputs", counter[0], None)

        entries = collect_tree(first.work, outputs, selection, batch, on_file=on_file)
        _check_no_dotgit(entries)
        _check_selection(ctx, source, entries, of=f"of the step outputs {_shown(outputs)}")
        first.store_fetched(batch)
        if check:
            with run_step_build(
                ctx,
                repo=source.repo,
                commit=source.commit,
                epoch=source.epoch,
                pipeline=source.pipeline,
                variation=CHECK_VARIATION,
                restore=first.openers() if first.fetched else None,
            ) as second:
                again = collect_tree(second.work, outputs, selection, batch)
                differences = diff_entries(TreeManifest.of(entries).entries, TreeManifest.of(again).entries)
                if differences:
                    raise NotReproducibleError(
                        source.commit,
                        with_diffoscope(
                            differences,
                            first.work,
                            second.work,
                            confine=diffoscope_confinement(
                                ctx,
                                source.repo,
                                source.pipeline,
                                devices=second.workspace.root / "diffoscope-dev",
                            ),
                            scratch=second.workspace.root / "diffoscope",
                        ),
                        second.described,
                    )
        return _StepsTree(entries, counter[0], first.log, first.sandbox, first.inputs, first.fetch_network)


def _redacted_log(log: bytes) -> bytes:
    """The build log as stored (an object of the write-once store, named by the signed provenance: it
    can never be removed): the values of secret-looking variables (a token ``[build] env`` passes, a
    password of GRAVEN_DB_URL's) and the passwords of URLs replaced by ``***``, as the failed step's
    last lines already are. Bytes that are not UTF-8 go through unchanged."""
    from graven.deploy.hook_result import redact_secrets

    text = log.decode("utf-8", "surrogateescape")
    redacted = redact_secrets(text)
    return log if redacted == text else redacted.encode("utf-8", "surrogateescape")
