"""``graven verify DIGEST --rebuild``: build the recorded commit again and confirm the same digest.

As ``nix build --check`` and ``guix challenge`` do: the signed provenance names the commit, the
repository and the fetched inputs; the rebuild reads the commit from that repository (a ``file://``
or local path, else the one given with ``-C``), restores the fetched inputs from the store when they
are all there (so it runs offline), runs the pipeline of that commit and compares the manifest with
the stored one. Nothing is stored and the database is not changed (the recorded files shown to
diffoscope are written out in the store's tmp/ and removed).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

from graven import __version__
from graven.build.compare import (
    DIFFOSCOPE_FILES,
    Confine,
    Difference,
    HashOnlyBatch,
    diff_entries,
    with_diffoscope,
)
from graven.build.fetch import FETCHED_PREFIX, TOOL_PREFIX
from graven.build.sandbox import SANDBOX_NONE, BuildUser
from graven.build.tree import collect_tree
from graven.build.workspace import give_to
from graven.core.globs import Selection
from graven.errors import BackendError, BuildError, InputError, NotFoundError, PolicyError, VerificationError
from graven.model.digest import Digest
from graven.model.manifest import FileEntry, TreeManifest
from graven.model.pipeline import PIPELINE_FILE, parse_pipeline
from graven.service.artifacts import load_manifest
from graven.service.context import Context
from graven.service.hermetic import Opener, diffoscope_confinement, diffoscope_user, run_step_build
from graven.service.provenance import load_policy, verified_provenance
from graven.signing.bundle import load_attestation
from graven.signing.provenance import ProvenanceStatement, ResourceRef, parse_statement
from graven.sources.git import GitRepo
from graven.store.local import PackBatch

__all__ = ["RebuildReport", "rebuild"]


@dataclass(frozen=True)
class RebuildReport:
    """The outcome of one rebuild; ``notes`` explain what else differs from the recorded build."""

    digest: str
    rebuilt: str
    commit: str
    repository: str
    sandbox: str
    inputs_restored: bool
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the rebuild gave the recorded digest."""
        return self.rebuilt == self.digest

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "ok": self.ok,
            "digest": self.digest,
            "rebuilt": self.rebuilt,
            "commit": self.commit,
            "repository": self.repository,
            "sandbox": self.sandbox,
            "inputs_restored": self.inputs_restored,
            "differences": [d.to_json() for d in self.differences],
            "notes": self.notes,
        }


def _statement(ctx: Context, digest: Digest, envelope_digest: str | None) -> ProvenanceStatement:
    """The statement of a provenance the trust policy accepts: a rebuild runs the steps and the
    sandbox setting it names, so an unverified one (an import, say) must never choose them."""
    if envelope_digest is None:
        try:
            _, envelope_digest = verified_provenance(ctx, digest, policy=load_policy(ctx))
        except (VerificationError, PolicyError, InputError) as exc:
            raise VerificationError(
                f"{digest} was not rebuilt: no provenance of it is accepted by the trust policy ({exc})"
            ) from None
    envelope = load_attestation(ctx.store.read(Digest.parse(envelope_digest)))
    statement = parse_statement(envelope.payload)
    if statement.commit is None:
        raise VerificationError(f"{digest}: its provenance names no commit; nothing to rebuild from")
    return statement


def _repository(statement: ProvenanceStatement, repo: Path | None) -> GitRepo:
    if repo is not None:
        return GitRepo.discover(repo)
    recorded = statement.repository or ""
    parsed = urlparse(recorded)
    local: Path | None = None
    if parsed.scheme == "file":
        local = Path(unquote(parsed.path))
    elif recorded.startswith("/"):
        local = Path(recorded)
    if local is None or not local.is_dir():
        raise InputError(
            f"the recorded repository {recorded or '(none)'} is not a local directory here; "
            "clone it and pass -C REPO"
        )
    return GitRepo.discover(local)


def _store_opener(ctx: Context, digest: Digest) -> Opener:
    return lambda: ctx.store.open(digest)


def _tool_notes(recorded: list[ResourceRef], current: list[ResourceRef]) -> list[str]:
    def by_name(refs: list[ResourceRef]) -> dict[str, ResourceRef]:
        return {
            r.name[len(TOOL_PREFIX) :].split("@", 1)[0]: r for r in refs if r.name.startswith(TOOL_PREFIX)
        }

    notes: list[str] = []
    old, new = by_name(recorded), by_name(current)
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            continue
        if a.name != b.name or a.digest != b.digest:
            notes.append(
                f"tool {name}: recorded {a.name[len(TOOL_PREFIX) :]} ({a.sha256[:12]}), "
                f"now {b.name[len(TOOL_PREFIX) :]} ({b.sha256[:12]})"
            )
    return notes


def rebuild(
    ctx: Context, digest: Digest, *, repo: Path | None = None, envelope: str | None = None
) -> RebuildReport:
    """Rebuild ``digest`` from its recorded commit and inputs; compare with the stored manifest.

    ``envelope`` is the digest of the provenance the caller verified; without it, the newest one the
    home's trust policy accepts. The commit's graven.toml must be the one that provenance names."""
    statement = _statement(ctx, digest, envelope)
    commit = cast(str, statement.commit)
    git = _repository(statement, repo)
    try:
        resolved = git.resolve(commit)
    except NotFoundError:
        where = "fetch it there" if repo is not None else "fetch it or pass -C REPO"  # -C named that one
        raise NotFoundError(f"commit {commit[:12]} is not in {git.root}; {where}") from None
    pipeline_bytes = git.read_file(resolved, PIPELINE_FILE)
    if pipeline_bytes is None:
        raise NotFoundError(f"{PIPELINE_FILE} is not in commit {commit[:12]}")
    notes: list[str] = []
    pipeline_digest = f"sha256:{hashlib.sha256(pipeline_bytes).hexdigest()}"
    if statement.pipeline_digest is not None and statement.pipeline_digest != pipeline_digest:
        raise VerificationError(
            f"{digest} was not rebuilt: {PIPELINE_FILE} of {commit[:12]} in {git.root} hashes to "
            f"{pipeline_digest}, not to the {statement.pipeline_digest} its provenance names"
        )
    pipeline = parse_pipeline(pipeline_bytes, source=f"{PIPELINE_FILE} in {commit[:12]}", limit=False)
    selection = Selection.of(pipeline.artifact.include, pipeline.artifact.exclude)
    recorded = TreeManifest.of(load_manifest(ctx, digest).entries)
    batch = cast(PackBatch, HashOnlyBatch())
    epoch = git.commit_time(resolved)
    sandbox = SANDBOX_NONE
    restored = False
    if not pipeline.build.steps:
        from graven.service.build import _open_source, _tree_from_git

        source = _open_source(ctx, git.git_dir or git.root, resolved)  # the work tree may hold no .git
        entries = _tree_from_git(ctx, source, selection, batch, use_cache=False)[0]
        rebuilt = TreeManifest.of(entries)
        differences = diff_entries(recorded.entries, rebuilt.entries, ("recorded artifact", "rebuild"))
    else:
        fetched = [r for r in statement.inputs if r.name.startswith(FETCHED_PREFIX)]
        restore: dict[str, Opener] | None = None
        if fetched and all(ctx.store.has(Digest.parse(r.digest)) for r in fetched):
            restore = {
                r.name[len(FETCHED_PREFIX) :]: _store_opener(ctx, Digest.parse(r.digest)) for r in fetched
            }
        elif fetched:
            notes.append("the fetched inputs are not all in the store: the fetch steps ran again")
        with (
            _named_rebuild(digest, resolved),
            run_step_build(
                ctx, repo=git, commit=resolved, epoch=epoch, pipeline=pipeline, restore=restore
            ) as run,
        ):
            sandbox, restored = run.sandbox, run.restored
            entries = collect_tree(run.work, list(pipeline.build.outputs), selection, batch)
            rebuilt = TreeManifest.of(entries)
            notes += _tool_notes(list(statement.inputs), run.tools)
            if statement.sandbox is not None and statement.sandbox != sandbox:
                notes.append(f"recorded sandbox {statement.sandbox!r}, rebuilt with {sandbox!r}")
            recorded_fetch = {r.name: r.digest for r in fetched}
            for ref in run.inputs:
                old = recorded_fetch.get(ref.name)
                if ref.name.startswith(FETCHED_PREFIX) and old is not None and old != ref.digest:
                    notes.append(f"{ref.name}: fetched {ref.digest}, recorded {old}")
            differences = diff_entries(recorded.entries, rebuilt.entries, ("recorded artifact", "rebuild"))
            devices = run.workspace.root / "diffoscope-dev"
            confine = diffoscope_confinement(ctx, git, pipeline, devices=devices)
            differences = _with_diffoscope(
                ctx,
                differences,
                run.work,
                confine,
                run.workspace.root / "diffoscope",
                user=diffoscope_user(pipeline),
            )
    if str(rebuilt.digest) != str(digest) and statement.graven_version != __version__:
        notes.append(_rules_note(statement.graven_version or "(unknown)"))
    return RebuildReport(
        digest=str(digest),
        rebuilt=str(rebuilt.digest),
        commit=resolved,
        repository=str(git.root),
        sandbox=sandbox,
        inputs_restored=restored,
        differences=differences,
        notes=notes,
    )


@contextlib.contextmanager
def _named_rebuild(digest: Digest, commit: str) -> Iterator[None]:
    """A step that fails in the rebuild: say that it was the rebuild of ``commit`` for ``digest`` (the
    stored artifact verified), not a build the user ran."""
    try:
        yield
    except BuildError as exc:
        raise BuildError(f"{digest} was not rebuilt: the rebuild of {commit[:12]} failed: {exc}") from exc


# What changed, by version, in the rules that decide what a commit builds to (the selection of files)
_RULE_CHANGES = (
    (
        (0, 2, 0),
        "a glob character class never matches the / between segments ([!x]), and an exclude ending "
        "in / leaves out the empty directory it names",
    ),
)


def _rules_note(recorded: str) -> str:
    """Why a rebuild by this graven may differ from a build by graven ``recorded``."""
    try:
        old = tuple(int(part) for part in recorded.split(".")[:3])
    except ValueError:
        old = ()
    changes = [text for version, text in _RULE_CHANGES if old < version]
    said = f"; since then: {'; '.join(changes)}" if changes else ""
    return f"built by graven {recorded}, rebuilt by graven {__version__}{said}"


def _with_diffoscope(
    ctx: Context,
    differences: list[Difference],
    rebuilt_root: Path,
    confine: Confine | None,
    scratch: Path,
    *,
    user: BuildUser | None = None,
) -> list[Difference]:
    """Diffoscope the recorded file (written out of the store) against the rebuilt one; with ``user``
    (a root build's steps' user, whom diffoscope runs as), the recorded files are written beside
    ``scratch`` (in the rebuild's workspace, which that user reaches) and given to it."""
    # the files with_diffoscope summarizes, in its order: only those are read from the recorded side
    wanted = [
        d
        for d in differences
        if isinstance(d.a, FileEntry) and isinstance(d.b, FileEntry) and "content" in d.aspects
    ][:DIFFOSCOPE_FILES]
    if not wanted or shutil.which("diffoscope") is None:
        return differences
    with contextlib.ExitStack() as stack:
        # in the store's tmp/ (a recorded file may be large; a tmpfs /tmp small), where the next
        # rebuild's clean_tmp removes what a killed one left; in $TMPDIR where the home is read-only
        if user is not None:  # the home's store is root's alone (0700): in the workspace instead
            recorded_root = scratch.parent / "recorded"
            recorded_root.mkdir(mode=0o700)
        else:
            try:
                ctx.store.clean_tmp()
                recorded_root = stack.enter_context(ctx.store.scratch_dir("rebuild"))
            except BackendError:
                recorded_root = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="graven-rebuild-"))
                )
        for item in wanted:
            assert isinstance(item.a, FileEntry)
            target = recorded_root / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with ctx.store.open(item.a.digest) as source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
        if user is not None:
            give_to([recorded_root], user.uid, user.gid)
        return with_diffoscope(differences, recorded_root, rebuilt_root, confine=confine, scratch=scratch)
