"""``graven build``: one commit in, one content-addressed artifact out.

The revision is resolved to a commit id once; graven.toml and every file are then read from that
commit only, so nothing in the working tree (or a change to it during the build) can leak in.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from graven import __version__
from graven.build.compare import HashOnlyBatch, NotReproducibleError, diff_entries, with_diffoscope
from graven.build.sandbox import SANDBOX_NONE
from graven.build.tree import collect_tree
from graven.core.globs import Selection
from graven.errors import NotFoundError, UnsafeInputError
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.model.pipeline import PIPELINE_FILE, Pipeline, parse_pipeline
from graven.service.context import Context, utc_now
from graven.service.hermetic import CHECK_VARIATION, run_step_build
from graven.service.provenance import (
    provenance_inputs,
    record_attestation,
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
    DirtyCheck,
    GitEntry,
    GitRepo,
)
from graven.store.local import LOOSE_THRESHOLD, PackBatch

__all__ = ["BuildResult", "build"]

_CACHE_QUERY_CHUNK = 500


@dataclass(frozen=True)
class BuildResult:
    """What a build produced."""

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

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return asdict(self)


@dataclass(frozen=True)
class _Source:
    repo: GitRepo
    commit: str
    revision: str
    pipeline_bytes: bytes
    pipeline: Pipeline
    epoch: int


def _open_source(ctx: Context, path: Path, revision: str) -> _Source:
    repo = GitRepo.discover(path)
    commit = repo.resolve(revision)
    pipeline_bytes = repo.read_file(commit, PIPELINE_FILE)
    if pipeline_bytes is None:
        raise NotFoundError(
            f"{PIPELINE_FILE} not found in commit {commit[:12]} ({revision}); "
            "create one with `graven init`, then commit it"
        )
    pipeline = parse_pipeline(pipeline_bytes, source=f"{PIPELINE_FILE} in {commit[:12]}")
    return _Source(repo, commit, revision, pipeline_bytes, pipeline, repo.commit_time(commit))


def build(
    ctx: Context, *, path: Path, revision: str = "HEAD", use_cache: bool = True, check: bool = False
) -> BuildResult:
    """Build ``revision`` of the repository at ``path`` into the store and record it.

    With ``check``, step builds run twice (the second time varied) and must agree; else
    NotReproducibleError and nothing is stored.
    """
    started_at = utc_now()
    source = _open_source(ctx, path, revision)
    key = resolve_signing_key(ctx)  # fail before any work when there is no usable key
    with source.repo.start_dirty_check() as dirty_check:  # git status runs while we build
        return _build(ctx, source, key, dirty_check, started_at=started_at, use_cache=use_cache, check=check)


def _build(
    ctx: Context,
    source: _Source,
    key: SigningKey,
    dirty_check: DirtyCheck,
    *,
    started_at: str,
    use_cache: bool,
    check: bool,
) -> BuildResult:
    revision = source.revision
    store = ctx.store
    store.clean_tmp()
    selection = Selection.of(source.pipeline.artifact.include, source.pipeline.artifact.exclude)
    name = source.pipeline.artifact.name
    byproducts: list[ResourceRef] = []
    sandbox, inputs = SANDBOX_NONE, list[ResourceRef]()
    with store.batch() as batch:
        pipeline_digest = batch.add(source.pipeline_bytes)
        if source.pipeline.build.steps:
            built = _tree_from_steps(ctx, source, selection, batch, check=check)
            entries, files_read, new_cache = built.entries, built.files_read, list[dict[str, object]]()
            sandbox, inputs = built.sandbox, built.inputs
            byproducts.append(ResourceRef("build.log", str(batch.add(built.log)), "text/plain"))
        else:
            entries, files_read, new_cache = _tree_from_git(
                ctx, source, selection, batch, use_cache=use_cache
            )
            if check:
                _check_git_tree(ctx, source, selection, entries)
        manifest = TreeManifest.of(entries)
        previous = _latest_manifest(ctx, name)
        batch.add(manifest.to_bytes(), delta_base=previous, pack=True)
        finished_at = utc_now()
        invocation_id = str(uuid.uuid4())
        repository = source.repo.describe_remote()
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
            ),
        )
        envelope_digest = batch.add(envelope.to_json())
    dirty = dirty_check.result()
    if dirty:
        ctx.reporter.warn(
            "the working tree has uncommitted changes; they are not built "
            f"(built commit {source.commit[:12]})"
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
        invocation_id=invocation_id,
        dirty_worktree=dirty,
        provenance=str(envelope_digest),
        signed_by=key.keyid,
    )
    _record(ctx, result, new_cache)
    return result


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
    with ctx.db.begin() as conn:
        insert_ignore(conn, "git_blob_cache", new_cache)
        insert_ignore(
            conn,
            "artifacts",
            [
                {
                    "digest": result.digest,
                    "name": result.name,
                    "commit": result.commit,
                    "repository": result.repository,
                    "revision": result.revision,
                    "pipeline_digest": result.pipeline_digest,
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
                started_at, finished_at, builder, graven_version, invocation_id)
            VALUES (:digest, :name, :commit, :repository, :revision, :pipeline_digest,
                :started_at, :finished_at, :builder, :graven_version, :invocation_id)""",
            {
                "digest": result.digest,
                "name": result.name,
                "commit": result.commit,
                "repository": result.repository,
                "revision": result.revision,
                "pipeline_digest": result.pipeline_digest,
                "started_at": result.started_at,
                "finished_at": result.finished_at,
                "builder": ctx.actor,
                "graven_version": __version__,
                "invocation_id": result.invocation_id,
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


def _cached_digests(ctx: Context, oids: Iterable[str]) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    wanted = sorted(set(oids))
    query = "SELECT git_oid, sha256, size FROM git_blob_cache WHERE git_oid IN :oids"
    with ctx.db.connect() as conn:
        for start in range(0, len(wanted), _CACHE_QUERY_CHUNK):
            chunk = wanted[start : start + _CACHE_QUERY_CHUNK]
            for oid, sha, size in conn.execute(query, {"oids": chunk}):
                found[str(oid)] = (str(sha), int(str(size)))
    return found


def _select_git_entries(entries: list[GitEntry], selection: Selection) -> list[GitEntry]:
    chosen: list[GitEntry] = []
    for entry in entries:
        if not selection.selects(entry.path):
            continue  # paths are checked once, when the manifest is made
        if entry.mode == MODE_SUBMODULE:
            raise UnsafeInputError(
                f"{entry.path}: submodules are not supported; exclude the path in graven.toml"
            )
        if entry.mode not in (MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK):
            raise UnsafeInputError(f"{entry.path}: unsupported git file mode {entry.mode}")
        chosen.append(entry)
    return chosen


def _tree_from_git(
    ctx: Context, source: _Source, selection: Selection, batch: PackBatch, *, use_cache: bool
) -> tuple[list[TreeEntry], int, list[dict[str, object]]]:
    chosen = _select_git_entries(source.repo.ls_tree(source.commit), selection)
    file_oids = {e.oid for e in chosen if e.mode != MODE_SYMLINK}
    known: dict[str, tuple[str, int]] = {}
    if use_cache:
        for oid, (sha, size) in _cached_digests(ctx, file_oids).items():
            if ctx.store.has(Digest(sha)):
                known[oid] = (sha, size)
    to_read = sorted(file_oids - known.keys()) + sorted({e.oid for e in chosen if e.mode == MODE_SYMLINK})
    targets: dict[str, str] = {}
    new_cache: list[dict[str, object]] = []
    link_oids = {e.oid for e in chosen if e.mode == MODE_SYMLINK}
    total = len(to_read)
    for done, (oid, reader) in enumerate(source.repo.cat_blobs(to_read), start=1):
        if oid in link_oids and oid not in file_oids:
            targets[oid] = _link_target(reader.read())
        else:
            if reader.size < LOOSE_THRESHOLD:
                data = reader.read()
                digest = Digest(hashlib.sha256(data).hexdigest())
                batch.add_known(digest, data)
                if oid in link_oids:
                    targets[oid] = _link_target(data)
            else:
                digest = batch.add_stream(reader, reader.size)  # type: ignore[arg-type]
            known[oid] = (digest.hex, reader.size)
            new_cache.append({"git_oid": oid, "sha256": digest.hex, "size": reader.size})
        if done % 256 == 0 or done == total:
            ctx.reporter.progress("reading files", done, total)
    result: list[TreeEntry] = []
    for entry in chosen:
        if entry.mode == MODE_SYMLINK:
            result.append(SymlinkEntry(entry.path, targets[entry.oid]))
        else:
            sha, size = known[entry.oid]
            result.append(
                FileEntry(entry.path, sha256=sha, size=size, executable=entry.mode == MODE_EXECUTABLE)
            )
    return result, total, new_cache


def _link_target(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeInputError("a symlink target is not valid UTF-8") from None


def _check_git_tree(ctx: Context, source: _Source, selection: Selection, entries: list[TreeEntry]) -> None:
    """``--check`` without steps: read every selected file from git again, past the blob cache."""
    again, _, _ = _tree_from_git(ctx, source, selection, cast(PackBatch, HashOnlyBatch()), use_cache=False)
    differences = diff_entries(TreeManifest.of(entries).entries, TreeManifest.of(again).entries)
    if differences:
        raise NotReproducibleError(source.commit, differences, ["the blob cache (every file read again)"])


@dataclass(frozen=True)
class _StepsTree:
    """What a step build gives the rest of :func:`build`."""

    entries: list[TreeEntry]
    files_read: int
    log: bytes
    sandbox: str
    inputs: list[ResourceRef]


def _tree_from_steps(
    ctx: Context, source: _Source, selection: Selection, batch: PackBatch, *, check: bool = False
) -> _StepsTree:
    """Run the steps (in the sandbox) and collect the outputs; with ``check``, build a second time
    with :data:`CHECK_VARIATION` and raise NotReproducibleError when the two differ."""
    outputs = list(source.pipeline.build.outputs)
    with run_step_build(
        ctx, repo=source.repo, commit=source.commit, epoch=source.epoch, pipeline=source.pipeline
    ) as first:
        counter = [0]

        def on_file(_size: int) -> None:
            counter[0] += 1
            if counter[0] % 256 == 0:
                ctx.reporter.progress("storing outputs", counter[0], None)

        entries = collect_tree(first.work, outputs, selection, batch, on_file=on_file)
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
                        with_diffoscope(differences, first.work, second.work),
                        CHECK_VARIATION.described,
                    )
        return _StepsTree(entries, counter[0], first.log, first.sandbox, first.inputs)
