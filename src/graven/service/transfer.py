"""``graven export`` and ``graven import``: artifacts as deterministic tar archives."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from graven.archive.writer import ArchiveMeta, compression_for, write_archive_file
from graven.errors import (
    BackendError,
    DigestMismatchError,
    InputError,
    NotFoundError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.service.artifacts import get_artifact, load_manifest
from graven.service.context import Context, utc_now
from graven.service.records import insert_ignore

# Signing (cryptography) and the archive reader are imported by the functions that use them:
# `graven export` needs neither, and start-up is part of every command's cost.

__all__ = ["ImportResult", "export_artifact", "export_attestation", "import_archive"]


def export_artifact(ctx: Context, digest: Digest, out: Path) -> None:
    """Write ``digest`` to ``out`` (.tar, .tar.gz or .tar.zst) byte-for-byte reproducibly."""
    compression_for(out)  # refuse a bad name before doing any work
    if out.is_dir():
        raise InputError(f"{out} is a directory; give a file name ending in .tar.zst")
    record = get_artifact(ctx, digest)
    manifest = load_manifest(ctx, digest)
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
    write_archive_file(manifest, meta, ctx.store.open, out, read_many=ctx.store.read_many)


@dataclass(frozen=True)
class ImportResult:
    """What an import stored."""

    digest: str
    name: str
    commit: str | None
    file_count: int
    total_size: int

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return asdict(self)


def export_attestation(
    ctx: Context, digest: Digest, *, envelope_path: Path | None, bundle_path: Path | None
) -> None:
    """Write the artifact's newest signed provenance as a DSSE envelope and/or a Sigstore bundle."""
    from graven.service.provenance import latest_envelope
    from graven.signing.bundle import bundle_bytes, load_attestation

    envelope = load_attestation(latest_envelope(ctx, digest))
    if envelope_path is not None:
        _write_atomic(envelope_path, envelope.to_json())
    if bundle_path is not None:
        _write_atomic(bundle_path, bundle_bytes(envelope))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None


def _read_attestation(path: Path, digest: Digest) -> tuple[bytes, str]:
    """Read an envelope or bundle; it must parse and name ``digest`` (signatures are checked by verify)."""
    from graven.signing.bundle import load_attestation
    from graven.signing.provenance import PAYLOAD_TYPE, check_subject, parse_statement

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    envelope = load_attestation(data)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"{path}: payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE}")
    try:
        statement = parse_statement(envelope.payload)
    except InputError as exc:
        raise VerificationError(f"{path}: provenance is malformed: {exc}") from None
    check_subject(statement, str(digest))
    keyid = envelope.signatures[0].keyid if envelope.signatures else ""
    return envelope.to_json(), keyid


def import_archive(
    ctx: Context, path: Path, *, name: str | None = None, attestation: Path | None = None
) -> ImportResult:
    """Ingest an archive; the digest is recomputed from its content, never taken on trust."""
    from graven.archive.reader import read_archive
    from graven.service.provenance import record_attestation

    store = ctx.store
    with store.batch() as batch:
        tree = read_archive(path, batch)
        manifest = tree.manifest
        claims = tree.claims
        claimed = claims.get("digest")
        if claimed is not None and claimed != str(manifest.digest):
            raise DigestMismatchError(
                expected=str(claimed), actual=str(manifest.digest), what=f"archive {path}"
            )
        pipeline_digest = None
        pipeline_text = claims.get("pipeline")
        if isinstance(pipeline_text, str):
            pipeline_digest = str(batch.add(pipeline_text.encode("utf-8")))
        batch.add(manifest.to_bytes())
        envelope: tuple[bytes, str] | None = None
        envelope_digest = None
        if attestation is not None:
            envelope = _read_attestation(attestation, manifest.digest)
            envelope_digest = str(batch.add(envelope[0]))
    artifact_name = name or _claimed_str(claims, "name") or _name_from_file(path)
    commit = _claimed_str(claims, "commit")
    epoch = claims.get("source_date_epoch")
    file_count = sum(1 for _ in manifest.files())
    row: dict[str, object] = {
        "digest": str(manifest.digest),
        "name": artifact_name,
        "commit": commit,
        "repository": None,
        "revision": None,
        "pipeline_digest": pipeline_digest,
        "source_date_epoch": epoch if isinstance(epoch, int) else 0,
        "file_count": file_count,
        "total_size": manifest.total_size,
        "origin": "import",
        "created_at": utc_now(),
    }
    with ctx.db.begin() as conn:
        insert_ignore(conn, "artifacts", [row])
        if envelope is not None and envelope_digest is not None:
            record_attestation(conn, str(manifest.digest), envelope_digest, envelope[1])
        ctx.audit.append(
            conn,
            LogEvent(
                "import",
                artifact=str(manifest.digest),
                commit=commit,
                reason=f"from {path.name}" + (" with provenance" if envelope is not None else ""),
            ),
        )
    return ImportResult(
        digest=str(manifest.digest),
        name=artifact_name,
        commit=commit,
        file_count=file_count,
        total_size=manifest.total_size,
    )


def _claimed_str(claims: dict[str, Any], key: str) -> str | None:
    value = claims.get(key)
    return value if isinstance(value, str) and value else None


def _name_from_file(path: Path) -> str:
    stem = path.name.split(".tar")[0].split(".t")[0].lower()
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem).strip("-._")
    return cleaned or "imported"
