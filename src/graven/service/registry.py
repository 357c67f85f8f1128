"""``graven push`` and ``graven pull``: an artifact to and from an OCI registry, by digest.

Push sends what ``graven export`` writes (the deterministic ``.tar.zst`` of the artifact, read from
the store through verified reads) and the signed provenance the home's trust policy accepts, as an OCI
artifact (:mod:`graven.registry.oci`); it refuses an artifact whose provenance no trusted key signed,
so that a team's registry holds only what verify would accept. Blobs the repository holds already
are not sent again. Pull downloads the manifest (checked against the digest it was asked for), the
archive and the provenance (each checked against its descriptor while it streams) and imports them
(``graven import``: every path checked, the artifact's digest recomputed from the content and
compared with the manifest's claim before anything is recorded, the provenance verified against the
home's trust policy). A pulled artifact is deployed like a built one.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

from graven.core.units import human_size
from graven.errors import BackendError, InputError, IntegrityError, NotFoundError, PolicyError
from graven.model.digest import Digest, sha256_digest
from graven.model.logentry import LogEvent
from graven.registry.oci import (
    ARCHIVE_MEDIA_TYPE,
    EMPTY,
    EMPTY_CONFIG,
    ENVELOPE_MEDIA_TYPE,
    Descriptor,
    Reference,
    artifact_manifest,
    parse_manifest,
)
from graven.service.context import Context

if TYPE_CHECKING:
    from graven.registry.client import RegistryClient

__all__ = ["PullResult", "PushResult", "pull_artifact", "push_artifact"]


class PushResult(NamedTuple):
    """What a push stored in the registry."""

    digest: str  # the artifact
    reference: str  # where it is: HOST/REPOSITORY[:TAG]@MANIFEST_DIGEST
    manifest_digest: str
    size: int  # bytes of the archive and the provenance
    sent: int  # bytes uploaded (blobs the repository did not hold yet)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return self._asdict()


class PullResult(NamedTuple):
    """What a pull stored in the home."""

    digest: str
    name: str
    commit: str | None
    reference: str  # HOST/REPOSITORY[:TAG]@MANIFEST_DIGEST
    manifest_digest: str
    signed_by: str | None  # the trusted key that verified its provenance here; None when none did
    trusted_for: str | None = None  # the environment whose keys alone trust signed_by (not in --json)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        found = self._asdict()
        del found["trusted_for"]
        return found


def push_artifact(ctx: Context, digest: Digest, target: Reference) -> PushResult:
    """Push artifact ``digest`` to ``target`` (tagged when it names a tag)."""
    from graven.registry.client import RegistryClient
    from graven.service.artifacts import get_artifact, not_stored_error
    from graven.service.provenance import load_policy, preferred_envelope
    from graven.service.transfer import export_to_stream

    if target.digest is not None:
        raise InputError(
            f"{target}: push names a repository and, optionally, a tag (the digest is the one the push makes)"
        )
    # a policy that cannot be read stops here (exit 2), never taken for "no trusted provenance"
    load_policy(ctx, memo=False)
    record = get_artifact(ctx, digest)
    if not ctx.store.has(digest):  # recorded (by another home, say) but not here: say so first
        raise not_stored_error(ctx, digest)
    try:
        envelope, keyid = preferred_envelope(ctx, digest)
    except NotFoundError:  # no envelope at all (an archive imported without one)
        envelope, keyid = b"", None
    if keyid is None:
        raise PolicyError(
            f"{digest} has no provenance a key of this home trusts; push sends only what verify accepts "
            "(graven verify says why)"
        )
    store = ctx.store
    store.clean_tmp()  # what a killed push or pull (or build, import) left
    with store.scratch_dir("push") as scratch:
        archive_path = scratch / f"{record.name}.tar.zst"
        # the bytes of graven export (every object read is verified), hashed as they are written
        with archive_path.open("wb") as out:
            hashing = _Hashing(out)
            size = export_to_stream(ctx, digest, cast(BinaryIO, hashing), "tar.zst", name=str(archive_path))
        archive = Descriptor(ARCHIVE_MEDIA_TYPE, f"sha256:{hashing.hexdigest()}", size, archive_path.name)
        signed = Descriptor(
            ENVELOPE_MEDIA_TYPE, str(sha256_digest(envelope)), len(envelope), f"{record.name}.intoto.json"
        )
        manifest = artifact_manifest(
            digest=str(digest),
            name=record.name,
            commit=record.commit,
            created=_rfc3339(record.source_date_epoch),
            archive=archive,
            envelope=signed,
        )
        blobs: list[tuple[Descriptor, Callable[[], IO[bytes]]]] = [
            (EMPTY, lambda: io.BytesIO(EMPTY_CONFIG)),
            (archive, lambda: archive_path.open("rb")),
            (signed, lambda: io.BytesIO(envelope)),
        ]
        sent = 0
        total = sum(descriptor.size for descriptor, _ in blobs)
        with RegistryClient(target, push=True) as client:
            ctx.reporter.progress("uploading (bytes)", 0, total)
            for descriptor, opener in blobs:
                if client.has_blob(descriptor.digest):
                    continue
                client.put_blob(descriptor, opener, functools.partial(_uploaded, ctx, sent, total))
                sent += descriptor.size
            ctx.reporter.progress("uploading (bytes)", total, total)  # the rest was there already
            manifest_digest = str(sha256_digest(manifest))
            # a tag that named another manifest is moved, as registries do: said, and logged
            previous = client.manifest_digest(target.tag) if target.tag is not None else None
            client.put_manifest(manifest, target.tag or manifest_digest)
            _check_stored(client, target, manifest_digest, [descriptor for descriptor, _ in blobs])
    pinned = target.with_digest(manifest_digest)
    reason = f"to {pinned}"
    if previous is not None and previous != manifest_digest:
        reason += f" (the tag named {previous} before)"
        ctx.reporter.warn(
            f"tag {target.tag} of {target.host}/{target.repository} named {previous} before this push; "
            "it names this one now (pull by that digest for what it named)"
        )
    with ctx.db.begin() as conn:
        ctx.audit.append(conn, LogEvent("push", artifact=str(digest), commit=record.commit, reason=reason))
    return PushResult(str(digest), str(pinned), manifest_digest, total, sent)


def pull_artifact(ctx: Context, source: Reference) -> PullResult:
    """Pull the artifact ``source`` names (a tag or a manifest digest) into the home."""
    from graven.registry.client import RegistryClient
    from graven.service.provenance import load_policy
    from graven.service.transfer import import_archive

    wanted = source.digest or source.tag
    if wanted is None:
        raise InputError(f"{source}: name a tag (REPOSITORY:TAG) or a digest (REPOSITORY@sha256:...) to pull")
    load_policy(ctx, memo=False)  # one that cannot be read stops the pull now, not after the download
    with RegistryClient(source) as client:
        data = client.get_manifest(wanted)
        manifest_digest = str(sha256_digest(data))
        pinned = source.with_digest(manifest_digest)
        pulled = parse_manifest(data, str(pinned))
        store = ctx.store
        store.clean_tmp()  # what a killed pull (or push, build, import) left: before downloading
        with store.scratch_dir("pull") as scratch:
            archive_path = scratch / "artifact.tar.zst"
            total = pulled.archive.size
            _check_room(scratch, total, str(pinned), store.root)
            ctx.reporter.progress("downloading (bytes)", 0, total)
            with archive_path.open("wb") as out:
                client.get_blob(
                    pulled.archive,
                    out,
                    lambda done: ctx.reporter.progress("downloading (bytes)", done, total),
                )
            envelope_path = None
            if pulled.envelopes:  # the first: push writes one
                envelope_path = scratch / "artifact.intoto.json"
                with envelope_path.open("wb") as out:
                    client.get_blob(pulled.envelopes[0], out)
            imported = import_archive(
                ctx, archive_path, attestation=envelope_path, expected=pulled.claimed, source=str(pinned)
            )
    # the key that verified the provenance pulled, else one that verifies a provenance stored before
    signed_by = imported.signer
    if signed_by is None and envelope_path is not None:
        signed_by = _signer(ctx, Digest.parse(imported.digest))
    return PullResult(
        imported.digest,
        imported.name,
        imported.commit,
        str(pinned),
        manifest_digest,
        signed_by,
        imported.trusted_for if signed_by == imported.signer else None,
    )


def _check_stored(
    client: RegistryClient, target: Reference, manifest_digest: str, blobs: list[Descriptor]
) -> None:
    """Look up what the push stored, as a pull will ask for it: a registry (or a proxy before it) that
    answered 201 and kept nothing is a failed push, not one said to be done and logged."""
    names = [manifest_digest] if target.tag is None else [target.tag, manifest_digest]
    for name in names:
        found = client.manifest_digest(name)
        if found != manifest_digest:
            held = f"does not have the manifest {name}" if found is None else f"names {found} by {name}"
            raise IntegrityError(
                f"{target.with_digest(manifest_digest)}: the registry accepted the push but {held}; "
                "push again, or check the registry (and any proxy before it)"
            )
    for descriptor in blobs:
        if not client.has_blob(descriptor.digest):
            raise IntegrityError(
                f"{target.with_digest(manifest_digest)}: the registry accepted the push but does not have "
                f"blob {descriptor.digest}; push again, or check the registry (and any proxy before it)"
            )


def _check_room(scratch: Path, size: int, where: str, root: Path) -> None:
    """Refuse, before a byte is downloaded, an archive larger than the free space of the disk that
    holds the store: a pull that filled it would fail anyway, after taking the space every other
    write of the home (a build, a deploy's records, the database) needs meanwhile."""
    import os

    try:
        st = os.statvfs(scratch)
    except OSError:
        return  # unknown: the download finds out (and fails with one line when the disk is full)
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise BackendError(
            f"{where}: its archive is {human_size(size)} and the disk of the store ({root}) has "
            f"{human_size(free)} free; make room there, or pull into a home on a larger disk (GRAVEN_HOME)"
        )


def _uploaded(ctx: Context, before: int, total: int, done: int) -> None:
    ctx.reporter.progress("uploading (bytes)", before + done, total)


def _signer(ctx: Context, digest: Digest) -> str | None:
    from graven.service.provenance import preferred_envelope

    return preferred_envelope(ctx, digest)[1]


class _Hashing:
    """A binary file written through, hashed (sha256) on the way."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hasher = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def _rfc3339(epoch: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
