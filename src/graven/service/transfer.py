"""``graven export`` and ``graven import``: artifacts as deterministic tar archives."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

from graven.archive.writer import (
    ARCHIVE_FORMATS,
    ArchiveMeta,
    check_output_dir,
    compression_for,
    epoch_problem,
    write_archive,
    write_archive_file,
    write_error,
)
from graven.core.paths import display_path, refused_by_git
from graven.core.record import Record
from graven.errors import (
    BackendError,
    DigestMismatchError,
    GravenError,
    InputError,
    IntegrityError,
    RevokedSignerError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import SymlinkEntry, TreeManifest
from graven.service.artifacts import get_artifact, load_manifest
from graven.service.context import Context, utc_now
from graven.service.records import insert_ignore

if TYPE_CHECKING:
    from graven.service.provenance import ProvenanceCheck

# Signing (cryptography) and the archive reader are imported by the functions that use them:
# `graven export` needs neither, and start-up is part of every command's cost.

__all__ = [
    "ImportResult",
    "check_outputs",
    "export_artifact",
    "export_attestation",
    "export_to_stream",
    "import_archive",
]

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git commit id: SHA-1 or SHA-256
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_HINT = "use 1 to 128 lowercase letters, digits, '.', '_', '-', starting with a letter or digit"


def check_outputs(*paths: Path | None) -> None:
    """Refuse, before anything is written (InputError): an output path whose directory is missing,
    one that is a directory, and two outputs that are the same file (the second would replace the
    first: an archive silently holding an envelope)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path is None:
            continue
        check_output_dir(path)
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a file name")
        _refuse_special(path)
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{seen[key]} and {path} are the same file; give each output its own name")
        seen[key] = path


def _refuse_special(path: Path) -> None:
    """Refuse an output path where a device, FIFO or socket stands: an export writes beside the path and
    renames over it, which would replace the node itself (as root, ``--attestation /dev/null`` made
    /dev/null a regular file). A symlink is replaced, never followed, as a file is; but not one to
    such a node or to a process's descriptor: ``/dev/stdout`` is a symlink to ``/proc/self/fd/1``,
    which a rename would replace for the whole machine."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there yet (or unreadable: the write says why)
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise InputError(
            f"{path} is not a regular file (a device, FIFO or socket); give a file name "
            "(-o - writes the archive to standard output)"
        )
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
            followed = os.stat(path).st_mode
        except OSError:
            return  # to nothing (yet): replaced as a file is
        if target.startswith("/proc/") or not (stat.S_ISREG(followed) or stat.S_ISDIR(followed)):
            raise InputError(
                f"{path} is a symbolic link to {display_path(target)} (a device, FIFO, socket or a "
                "process's descriptor), which writing it would replace; give a file name (-o - writes "
                "the archive to standard output)"
            )


def export_artifact(
    ctx: Context, digest: Digest, out: Path, *, replaces: tuple[Path | None, ...] = ()
) -> None:
    """Write ``digest`` to ``out`` (.tar, .tar.gz or .tar.zst) byte-for-byte reproducibly."""
    compression_for(out)  # refuse a bad name before doing any work
    if out.is_dir():
        raise InputError(f"{out} is a directory; give a file name ending in .tar.zst")
    manifest, meta, progress = _archive_parts(ctx, digest)

    def drop_replaced() -> None:
        # what stood at these paths described the archive this one replaces: a kill between the two
        # renames leaves it missing, never beside another artifact (a link is removed, not followed)
        removed: list[str] = []
        for old in replaces:
            if old is None:
                continue
            try:
                old.unlink()
                removed.append(str(old))
            except FileNotFoundError:
                continue
            except OSError as exc:  # said as itself: the archive's own path is not what failed
                gone = f" ({', '.join(removed)} already removed)" if removed else ""
                raise InputError(
                    f"cannot remove {old}, the attestation of the archive this export replaces "
                    f"({exc.strerror}); the new archive was not written{gone}"
                ) from None

    try:
        write_archive_file(
            manifest,
            meta,
            ctx.store.open,
            out,
            read_many=ctx.store.read_many,
            progress=progress,
            before_rename=drop_replaced if replaces else None,
        )
    except IntegrityError as exc:
        raise _damaged(exc, digest) from None
    progress(manifest.total_size)


def _damaged(exc: IntegrityError, digest: Digest) -> IntegrityError:
    """A store object of ``digest`` found damaged while it was exported, with where to go next (as a
    deployment says it: graven verify names every damaged object and how to put it back)."""
    return IntegrityError(f"{exc} (while exporting {digest}); run `graven verify` on the artifact")


def export_to_stream(
    ctx: Context, digest: Digest, out: BinaryIO, archive_format: str = "tar.zst", *, name: str = "the stream"
) -> int:
    """Write ``digest`` as an archive to ``out`` (a pipe, a socket: nothing is seeked), in
    ``archive_format`` (``tar``, ``tar.gz`` or ``tar.zst``: :data:`ARCHIVE_FORMATS`); return the
    number of bytes written. The bytes are those :func:`export_artifact` writes to a file of that
    format. Nothing is written when the artifact cannot be exported (its record, manifest or commit
    time); a failure later (a corrupt object, a closed pipe) raises after part of the archive went
    out, never completed: a reader finds it cut (tar: an unexpected end; zstd and gzip: a truncated
    stream). ``out`` is flushed, not closed. A write to ``out`` that fails is a :class:`BackendError`
    naming it as ``name`` (``standard output``), but for a closed pipe: its :class:`BrokenPipeError`
    (the reader left, which a command line ends quietly)."""
    compression = ARCHIVE_FORMATS.get(archive_format)
    if compression is None:
        raise InputError(
            f"unknown archive format {archive_format!r}; use one of {', '.join(ARCHIVE_FORMATS)}"
        )
    manifest, meta, progress = _archive_parts(ctx, digest)
    problem = epoch_problem(meta.source_date_epoch)
    if problem is not None:  # before a byte is written (a gzip stream starts with its header)
        raise InputError(f"source_date_epoch {meta.source_date_epoch!r} cannot go in an archive: {problem}")
    counted = _Counted(out)
    try:
        write_archive(
            manifest,
            meta,
            ctx.store.open,
            cast(BinaryIO, counted),
            compression,
            read_many=ctx.store.read_many,
            progress=progress,
        )
        counted.flush()
    except IntegrityError as exc:
        raise _damaged(exc, digest) from None
    except OSError as exc:
        if exc is not counted.failed or isinstance(exc, BrokenPipeError):
            raise
        reason = exc.strerror or str(exc)
        raise BackendError(
            f"cannot write the archive to {name}: {reason}; what it holds is incomplete"
        ) from None
    progress(manifest.total_size)
    return counted.written


class _Counted:
    """A binary stream that counts the bytes written through it and keeps the error of a write that
    failed (so that it is told from an error reading the store)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.written = 0
        self.failed: OSError | None = None
        self._stream = stream

    def write(self, data: bytes) -> int:
        """Write all of ``data``: a raw (unbuffered) stream may take part of it (a pipe, a full disk,
        a file size limit), and what it leaves is written on, never dropped."""
        view = memoryview(data)
        try:
            while view:
                done = self._stream.write(view)
                if done is None:  # a non-blocking raw stream that took nothing: as a failed write
                    raise BlockingIOError(0, "the output takes no more bytes now")
                view = view[done:]
        except OSError as exc:
            self.failed = exc
            raise
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self.failed = exc
            raise


def _archive_parts(ctx: Context, digest: Digest) -> tuple[TreeManifest, ArchiveMeta, Callable[[int], None]]:
    """What an export of ``digest`` writes (its manifest, the global header's claims) and its progress
    callback (uncompressed archive bytes written so far)."""
    record = get_artifact(ctx, digest)
    manifest = load_manifest(ctx, digest)
    _warn_refused_paths(ctx, manifest)
    pipeline = None
    if record.pipeline_digest:
        pipeline = ctx.store.read(Digest.parse(record.pipeline_digest)).decode("utf-8")
    meta = ArchiveMeta(
        digest=str(digest),
        name=record.name,
        commit=record.commit,
        source_date_epoch=record.source_date_epoch,
        pipeline=pipeline,
    )
    total, report = manifest.total_size, ctx.reporter.progress

    def progress(written: int) -> None:  # file bytes dominate: the headers make it only a little more
        report("writing archive (bytes)", min(written, total), total)

    return manifest, meta, progress


def _warn_refused_paths(ctx: Context, manifest: TreeManifest) -> None:
    """Warn when an artifact an earlier graven stored holds a path git refuses in a tree (``.git``,
    ``GIT~1``, a symlink ``.gitmodules``: core.paths.refused_by_git). It is still exported, as it is
    still verified and deployed: the artifact is what it was signed as, and refusing it now would
    strand a release that may need a copy; but its archive is what makes such a name harmful (unpacked
    on Windows or macOS, where ``GIT~1`` or ``.git.`` is a ``.git``) and graven import refuses it."""
    entries = manifest.entries
    refused = refused_by_git(
        [entry.path for entry in entries], [e.path for e in entries if isinstance(e, SymlinkEntry)]
    )
    if refused is not None:
        path, why, harm = refused
        ctx.reporter.warn(
            f"{display_path(path)}: {why}, which graven now refuses in what it builds or imports "
            f"({harm}); graven import refuses this archive: build the artifact again without it"
        )


class ImportResult(NamedTuple):
    """What an import stored."""

    digest: str
    name: str
    commit: str | None
    file_count: int
    total_size: int
    # the key that verified the archive's provenance here (None: none did, or no provenance came with
    # it) and, when only an environment's keys trust it, that environment; not in the --json form
    signer: str | None = None
    trusted_for: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        found = self._asdict()
        del found["signer"], found["trusted_for"]
        return found


def export_attestation(
    ctx: Context, digest: Digest, *, envelope_path: Path | None, bundle_path: Path | None
) -> None:
    """Write the artifact's signed provenance as a DSSE envelope and/or a Sigstore bundle."""
    prepare_attestation(ctx, digest, envelope_path=envelope_path, bundle_path=bundle_path)()


class AttestationFiles:
    """The files of an exported attestation, made in memory: :meth:`stage` writes each to a temp file
    beside its path (a full disk fails there, before the export replaces anything), :meth:`commit`
    renames them into place, :meth:`discard` removes what was staged; calling it does all at once."""

    def __init__(self, files: list[tuple[Path, bytes]]) -> None:
        self._files = files
        self._staged: list[tuple[Path, Path]] = []

    def stage(self) -> None:
        """Write every file beside its path; on a failure, remove what was written and raise."""
        from graven.archive.writer import open_temp_beside, remove_stale_temps

        for path, data in self._files:
            remove_stale_temps(path)
            try:
                tmp, handle = open_temp_beside(path)  # never written through what stood at its name
                self._staged.append((tmp, path))
                with handle:
                    handle.write(data)
            except OSError as exc:
                self.discard()
                raise write_error(path, exc) from None

    def commit(self) -> None:
        """Rename the staged files into place."""
        staged, self._staged = self._staged, []
        for done, (tmp, path) in enumerate(staged):
            try:
                tmp.replace(path)
            except OSError as exc:
                self._staged = staged[done:]
                self.discard()
                raise write_error(path, exc) from None

    def discard(self) -> None:
        """Remove what was staged and not renamed."""
        staged, self._staged = self._staged, []
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def __call__(self) -> None:
        self.stage()
        self.commit()


def prepare_attestation(
    ctx: Context, digest: Digest, *, envelope_path: Path | None, bundle_path: Path | None
) -> AttestationFiles:
    """Make the files of :func:`export_attestation` in memory (raising now, before anything is
    written, when they cannot be made) and return them (:class:`AttestationFiles`).

    The provenance is the one the home's trust policy accepts (:func:`preferred_provenance`). A Sigstore
    bundle holds one signature: the one that verified (checked again with its key, never chosen by its
    key id hint), and names that key in its hint."""
    from graven.service.provenance import preferred_provenance
    from graven.signing.bundle import bundle_bytes, load_attestation, signed_by

    data, verified = preferred_provenance(ctx, digest)
    if verified is None:
        ctx.reporter.warn(
            f"no stored provenance of {digest} verifies against this home's trust policy; the newest "
            "one is exported as stored (`graven verify` says why it does not verify)"
        )
    envelope = load_attestation(data)
    files: list[tuple[Path, bytes]] = []
    if envelope_path is not None:
        files.append((envelope_path, envelope.to_json()))
    if bundle_path is not None:
        if verified is None:  # as stored (a bundle of one signature only)
            files.append((bundle_path, bundle_bytes(envelope)))
        else:
            files.append((bundle_path, bundle_bytes(signed_by(envelope, verified.key), verified.keyid)))
    return AttestationFiles(files)


def _read_attestation(path: Path, digest: Digest) -> tuple[bytes, str]:
    """Read an envelope or bundle; it must parse and name ``digest`` (signatures are checked by verify)."""
    from graven.signing.bundle import load_attestation, read_attestation
    from graven.signing.provenance import PAYLOAD_TYPE, check_subject, parse_statement

    envelope = load_attestation(read_attestation(path))
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"{path}: payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE}")
    try:
        statement = parse_statement(envelope.payload)
    except InputError as exc:
        raise VerificationError(f"{path}: provenance is malformed: {exc}") from None
    check_subject(statement, str(digest))
    if not envelope.signatures:
        raise VerificationError(f"{path}: the envelope has no signature; it attests nothing")
    return envelope.to_json(), envelope.signatures[0].keyid


def import_archive(
    ctx: Context,
    path: Path,
    *,
    name: str | None = None,
    attestation: Path | None = None,
    expected: str | None = None,
    source: str | None = None,
) -> ImportResult:
    """Ingest an archive; the digest is recomputed from its content, never taken on trust.

    The global header's other claims are checked before anything is recorded: an invalid one is an
    :class:`InputError` naming it. ``name`` (``--name``) must be a valid artifact name and replaces the
    claimed one; without either, the name comes from the file name, folded to a valid one. With
    ``expected`` (a digest another source claims: a registry's manifest), an archive of another
    artifact is refused before anything is recorded. ``source`` says where the archive came from in
    the audit log (default: its file name).

    In order: :func:`_store_archive` (read, check, store), :func:`_check_provenance` (the signed
    provenance's word over the archive's claims), :func:`_record_import` (the database, after the store:
    a crash between them leaves content nothing records, never a record of missing content).
    """
    if name is not None and not _valid_name(name):
        raise InputError(f"--name {_shown(name)} is not a valid artifact name: {_NAME_HINT}")
    ctx.store.clean_tmp()  # what killed writers (an import, a build) left, as a build does
    archive = _store_archive(ctx, path, name=name, attestation=attestation, expected=expected, source=source)
    signed = _check_provenance(ctx, path, archive, name=name, attestation=attestation, source=source)
    return _record_import(ctx, path, archive, signed, name=name, source=source)


class _Archive(Record):
    """An archive being imported: its manifest, and what it claims once checked (``name``, ``commit``
    and ``epoch`` what is to be recorded: :func:`_check_provenance` puts the signed ones in)."""

    __slots__ = (
        "claimed_name",
        "commit",
        "envelope",
        "envelope_digest",
        "epoch",
        "manifest",
        "name",
        "pipeline",
        "pipeline_digest",
        "stored_at",
        "verdict",
    )
    _fields = (
        "manifest",
        "name",
        "claimed_name",
        "commit",
        "epoch",
        "pipeline",
        "pipeline_digest",
        "envelope",
        "envelope_digest",
        "stored_at",
        "verdict",
    )
    manifest: TreeManifest
    name: str  # --name, else the claimed name, else one from the file name
    claimed_name: str | None  # the archive's name claim (None with --name: not read)
    commit: str | None
    epoch: int  # 0: no claim
    pipeline: bytes | None  # the graven.toml the archive carries
    pipeline_digest: str | None  # ... once stored
    envelope: bytes | None  # the provenance given with it (--attestation), as stored
    envelope_digest: str | None
    stored_at: str  # when its content was in the store: the row's created_at
    # the envelope's check against this home's trust policy, and the environment whose keys alone
    # verified it (None: the default keys, or none did); None without an envelope
    verdict: tuple[ProvenanceCheck, str | None] | None

    def __init__(  # noqa: PLR0917 - one parameter per field, as a dataclass's
        self,
        manifest: TreeManifest,
        name: str,
        claimed_name: str | None,
        commit: str | None,
        epoch: int,
        pipeline: bytes | None,
        pipeline_digest: str | None = None,
        envelope: bytes | None = None,
        envelope_digest: str | None = None,
        stored_at: str = "",
        verdict: tuple[ProvenanceCheck, str | None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.name = name
        self.claimed_name = claimed_name
        self.commit = commit
        self.epoch = epoch
        self.pipeline = pipeline
        self.pipeline_digest = pipeline_digest
        self.envelope = envelope
        self.envelope_digest = envelope_digest
        self.stored_at = stored_at
        self.verdict = verdict


def _store_archive(
    ctx: Context,
    path: Path,
    *,
    name: str | None,
    attestation: Path | None,
    expected: str | None,
    source: str | None,
) -> _Archive:
    """Read the archive into the store, with its manifest, the graven.toml it carries and the
    ``attestation`` file, in one batch of the store.

    After it: all of them are in the store, the archive holds files and is the artifact its header
    and ``expected`` claim, its claims are valid and ``attestation`` names its digest, carries no
    signature of a key this home trusts that does not match it and none of a revoked key (its check
    is ``verdict``); else it raised and none of it became visible in the store. Nothing is recorded
    in the database yet."""
    from graven.archive.reader import read_archive

    with ctx.store.batch() as batch:
        report = ctx.reporter.progress
        tree = read_archive(path, batch, lambda done, size: report("reading archive (bytes)", done, size))
        _check_content(path, tree.manifest, tree.claims, expected=expected, source=source)
        archive = _checked_claims(path, tree.manifest, tree.claims, name=name)
        if archive.pipeline is not None:
            archive.pipeline_digest = str(batch.add(archive.pipeline))
        batch.add(archive.manifest.to_bytes())
        if attestation is not None:
            archive.envelope = _read_attestation(attestation, archive.manifest.digest)[0]
            where = f"the provenance from {source}" if source else str(attestation)
            # a forged or revoked signature raises here, before the batch makes anything visible
            archive.verdict = _verify_envelope(ctx, archive.envelope, archive.manifest.digest, where)
            archive.envelope_digest = str(batch.add(archive.envelope))
    archive.stored_at = utc_now()
    return archive


def _check_content(
    path: Path, manifest: TreeManifest, claims: dict[str, Any], *, expected: str | None, source: str | None
) -> None:
    """After it: the archive holds a file, and its digest is the one its header claims (if any) and
    ``expected`` (if given); else InputError or DigestMismatchError."""
    if not any(manifest.files()):  # empty directories alone are no artifact either
        raise InputError(f"{path}: the archive holds no files (an artifact has at least one, as a build)")
    claimed = _claimed_digest(path, claims)
    if claimed is not None and claimed != str(manifest.digest):
        raise DigestMismatchError(expected=claimed, actual=str(manifest.digest), what=f"archive {path}")
    if expected is not None and expected != str(manifest.digest):
        raise DigestMismatchError(expected=expected, actual=str(manifest.digest), what=source or str(path))


def _checked_claims(
    path: Path, manifest: TreeManifest, claims: dict[str, Any], *, name: str | None
) -> _Archive:
    """After it: the header's name (unless ``name`` replaces it), commit, commit time and graven.toml
    claims are valid, and the returned archive holds them; else InputError naming the claim."""
    claimed_name = None if name is not None else _claimed_name(path, claims)  # --name wins over it
    artifact_name = name or claimed_name or _name_from_file(path)
    commit = _claimed_commit(path, claims)
    epoch = _claimed_epoch(path, claims)
    pipeline = None
    pipeline_text = claims.get("pipeline")
    if isinstance(pipeline_text, str):
        try:
            pipeline = pipeline_text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{path}: the archive's pipeline claim is not valid UTF-8 text") from None
    return _Archive(manifest, artifact_name, claimed_name, commit, epoch, pipeline)


class _Provenance(Record):
    """What :func:`_check_provenance` found of the archive's provenance."""

    __slots__ = ("contradicted", "reason", "signer", "trusted_for")
    _fields = ("reason", "signer", "trusted_for", "contradicted")
    reason: str  # the audit entry's " with provenance ..." ("" without provenance)
    signer: str  # the key that verified the envelope here; "" when none did (never the envelope's hint)
    trusted_for: str | None  # the environment whose keys alone verified the envelope
    # where the archive's unsigned claims contradict its signed provenance: said only when this import
    # records the artifact (a digest recorded before keeps its row, so nothing of the archive is taken)
    contradicted: list[str]

    def __init__(
        self,
        reason: str = "",
        signer: str = "",
        trusted_for: str | None = None,
        contradicted: list[str] | None = None,
    ) -> None:
        self.reason = reason
        self.signer = signer
        self.trusted_for = trusted_for
        self.contradicted = [] if contradicted is None else contradicted


def _check_provenance(
    ctx: Context,
    path: Path,
    archive: _Archive,
    *,
    name: str | None,
    attestation: Path | None,
    source: str | None,
) -> _Provenance:
    """Verify the provenance given with the archive (if any) against this home's trust policy.

    After it: when a key of this home verified it, ``archive`` holds the signed commit, commit time and
    name (unless ``name`` was given) where they differ from its claims, and the result says who signed
    and what the claims contradicted; when none did, that is warned (it is stored all the same)."""
    found = _Provenance()
    if archive.envelope is None or archive.verdict is None:
        return found
    checked, found.trusted_for = archive.verdict
    if checked.ok and checked.keyid is not None:
        found.signer = signer = checked.keyid
        found.reason = (
            f" with provenance signed by trusted key {signer[:16]}"
            if found.trusted_for is None
            else f" with provenance signed by key {signer[:16]} (trusted for {found.trusted_for})"
        )
        found.contradicted = _take_signed(path, archive, checked, name=name, stored=ctx.store.has)
    else:
        found.reason = " with provenance no key of this home verifies"
        ctx.reporter.warn(
            f"{f'the provenance from {source}' if source else attestation}: {checked.reason}; it is "
            "stored, but verify and deploy refuse it "
            "until this home trusts its signer (graven keys trust KEY.pub)"
        )
    return found


def _verify_envelope(
    ctx: Context, envelope: bytes, digest: Digest, where: str
) -> tuple[ProvenanceCheck, str | None]:
    """The check of ``envelope`` against the home's trust policy and, when only an environment's keys
    verify it, that environment (else None).

    An envelope no key verifies is stored all the same when only keys this home does not know signed
    it (trusting one later makes it count). One that a key of this home signed and that does not match
    its signature (changed since), or that a revoked key signed, is refused, as verify refuses it:
    trusting a key could never make it count."""
    from graven.service.provenance import check_attestation_file, load_policy

    policy = load_policy(ctx)
    forged = (VerificationError, RevokedSignerError)  # what _read_attestation left: bad signatures
    refusal: GravenError | None = None

    def check(env: str | None) -> ProvenanceCheck | None:
        nonlocal refusal
        try:
            return check_attestation_file(envelope, digest, policy=policy, env=env, refused=forged)
        except forged as exc:  # another environment's keys may verify it all the same
            refusal = refusal or exc
            return None

    checked, trusted_for = check(None), None
    # a home may trust the signer for some environments only ([env.NAME] keys of its policy):
    # signed all the same, and what deploy to those environments accepts
    for env in sorted(policy.environments):
        if checked is not None and checked.ok:
            break
        for_env = check(env)
        if for_env is not None and for_env.ok:
            checked, trusted_for = for_env, env
    if (checked is None or not checked.ok) and refusal is not None:
        why = (
            "the envelope was changed after it was signed, or is not the signed one"
            if isinstance(refusal, VerificationError)
            else "this home never accepts it again"
        )
        raise type(refusal)(f"{where}: {refusal}: {why}; nothing was imported")
    assert checked is not None  # no refusal: the default check returned
    return checked, trusted_for


def _take_signed(
    path: Path,
    archive: _Archive,
    checked: ProvenanceCheck,
    *,
    name: str | None,
    stored: Callable[[Digest], bool],
) -> list[str]:
    """After it: ``archive`` holds the verified provenance's commit, commit time and name (not over
    ``name``) where they differ from its own, and its graven.toml when that one is ``stored``; the
    returned warnings say each claim it contradicted."""
    from graven.service.provenance import PIPELINE_NAME

    contradicted: list[str] = []
    if checked.commit is not None and checked.commit != archive.commit:
        if archive.commit is not None:
            contradicted.append(
                f"{path.name} claims commit {archive.commit[:12]}, its signed provenance names "
                f"{checked.commit[:12]}: the signed one is recorded"
            )
        archive.commit = checked.commit  # what show, status and verify go by
    if checked.epoch is not None and checked.epoch != archive.epoch:  # an export's mtimes come from it
        if archive.epoch != 0:  # 0: no claim (an archive without graven's header), as for verify
            contradicted.append(
                f"{path.name} claims commit time {archive.epoch}, its signed provenance names "
                f"{checked.epoch}: the signed one is recorded"
            )
        archive.epoch = checked.epoch
    signed_name = checked.name if checked.name is not None and _valid_name(checked.name) else None
    if name is None and signed_name is not None and signed_name != archive.name:
        if archive.claimed_name is not None:  # else the name came from the file's: no claim
            contradicted.append(
                f"{path.name} claims the name {_shown(archive.name)}, its signed provenance "
                f"names {_shown(signed_name)}: the signed one is recorded (--name chooses another)"
            )
        archive.name = signed_name
    signed_pipeline = dict(checked.named).get(PIPELINE_NAME)
    if (
        signed_pipeline is not None
        and archive.pipeline_digest is not None
        and signed_pipeline != archive.pipeline_digest
    ):
        if stored(Digest.parse(signed_pipeline)):  # what show names and an export carries: signed
            contradicted.append(
                f"{path.name} holds a graven.toml that is not the one its signed provenance names "
                f"({signed_pipeline[:19]}): the signed one, stored already, is recorded"
            )
            archive.pipeline_digest = signed_pipeline
        else:
            contradicted.append(
                f"{path.name} holds a graven.toml that is not the one its signed provenance names "
                f"({signed_pipeline[:19]}): deploy reads the signed one, which this archive does not "
                "carry, and verify fails the artifact until it is stored"
            )
    return contradicted


def _record_import(
    ctx: Context, path: Path, archive: _Archive, signed: _Provenance, *, name: str | None, source: str | None
) -> ImportResult:
    """Record the artifact (a digest recorded before keeps its row: its first name and commit), its
    attestation and the ``import`` audit entry, in one transaction.

    After it: all three are recorded (or none), and what the archive's claims contradicted is warned
    when this import recorded the artifact; the result says what the database holds."""
    from graven.service.provenance import record_attestation

    manifest = archive.manifest
    file_count = sum(1 for _ in manifest.files())
    artifact_name = archive.name
    with ctx.db.begin() as conn:
        select = 'SELECT name, "commit" FROM artifacts WHERE digest = :digest'
        known = conn.execute(select, {"digest": str(manifest.digest)}).one_or_none()
        insert_ignore(conn, "artifacts", [_artifact_row(archive, file_count)])
        stored = known or conn.execute(select, {"digest": str(manifest.digest)}).one()
        if stored.name != artifact_name:  # recorded before (a build, an import): its first name stays
            if name is not None:  # asked for by --name: say that it is not taken
                ctx.reporter.warn(
                    f"{manifest.digest.hex[:12]} is already recorded as {stored.name}; it keeps that "
                    f"name (not {artifact_name})"
                )
            artifact_name = str(stored.name)
        commit = None if stored.commit is None else str(stored.commit)  # what show and status say
        if archive.envelope is not None and archive.envelope_digest is not None:
            record_attestation(conn, str(manifest.digest), archive.envelope_digest, signed.signer)
        ctx.audit.append(
            conn,
            LogEvent(
                "import",
                artifact=str(manifest.digest),
                commit=commit,
                reason=f"from {source or path.name}{signed.reason}",
            ),
        )
    for warning in signed.contradicted if known is None else ():
        ctx.reporter.warn(warning)
    return ImportResult(
        digest=str(manifest.digest),
        name=artifact_name,
        commit=commit,
        file_count=file_count,
        total_size=manifest.total_size,
        signer=signed.signer or None,
        trusted_for=signed.trusted_for,
    )


def _artifact_row(archive: _Archive, file_count: int) -> dict[str, object]:
    """The ``artifacts`` row of an imported archive."""
    return {
        "digest": str(archive.manifest.digest),
        "name": archive.name,
        "commit": archive.commit,
        "repository": None,
        "revision": None,
        "pipeline_digest": archive.pipeline_digest,
        "source_date_epoch": archive.epoch,
        "file_count": file_count,
        "total_size": archive.manifest.total_size,
        "origin": "import",
        "created_at": archive.stored_at,
    }


def _shown(value: object) -> str:
    """``value`` as JSON for a one-line message: ASCII only (control characters escaped), at most about
    60 characters."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=True)
    except ValueError:  # an int too long to print
        text = "<a very long number>"
    return text if len(text) <= 60 else text[:56] + '..."'


def _bad_claim(path: Path, key: str, value: object, why: str) -> InputError:
    return InputError(f"{path}: the archive's {key} claim {_shown(value)} is not valid: {why}")


def _claimed_text(
    path: Path, claims: dict[str, Any], key: str, pattern: re.Pattern[str], rule: str
) -> str | None:
    """The ``key`` claim, a string that ``pattern`` matches in full (``rule`` says how it must be), or
    None when there is none."""
    value = claims.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad_claim(path, key, value, rule)
    return value


def _claimed_digest(path: Path, claims: dict[str, Any]) -> str | None:
    """The ``digest`` claim (``sha256:<64 hex>``), or None when there is none."""
    return _claimed_text(path, claims, "digest", _DIGEST, "it must be sha256:<64 lowercase hex digits>")


def _claimed_name(path: Path, claims: dict[str, Any]) -> str | None:
    """The ``name`` claim, or None when there is none; an invalid one is refused (``--name`` wins
    over it, and is the way around it)."""
    value = claims.get("name")
    if value is None:
        return None
    if not isinstance(value, str) or not _valid_name(value):
        raise InputError(
            f"{path}: the archive's name claim {_shown(value)} is not a valid artifact name "
            f"({_NAME_HINT}); pass --name NAME to choose one"
        )
    return value


def _claimed_commit(path: Path, claims: dict[str, Any]) -> str | None:
    """The ``commit`` claim (40 or 64 lowercase hex digits), or None when there is none."""
    return _claimed_text(path, claims, "commit", _COMMIT, "it must be 40 or 64 lowercase hex digits")


def _claimed_epoch(path: Path, claims: dict[str, Any]) -> int:
    """The ``source_date_epoch`` claim (0 to MAX_EPOCH, what export writes), or 0 without one."""
    if "source_date_epoch" not in claims:
        return 0
    value = claims["source_date_epoch"]
    problem = epoch_problem(value)
    if problem is not None:
        raise _bad_claim(path, "source_date_epoch", value, problem)
    return int(value)


def _valid_name(name: str) -> bool:
    """Whether ``name`` follows the artifact-name rule of graven.toml's ``[artifact] name``."""
    from graven.model.pipeline import ARTIFACT_NAME  # the one definition of the rule

    return ARTIFACT_NAME.fullmatch(name) is not None


_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.zst", ".tgz", ".tzst", ".tar")


def _name_from_file(path: Path) -> str:
    """An artifact name from the archive's file name: archive suffixes dropped, letters folded to ASCII
    (``Über`` -> ``uber``), anything else not allowed made a ``-``; ``imported`` when nothing is left."""
    import unicodedata

    stem = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = Path(stem).stem
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii").lower()
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", folded).strip("-._")[:128].rstrip("-._")
    return cleaned if cleaned and _valid_name(cleaned) else "imported"
