"""Sigstore bundles (v0.3) that carry a DSSE envelope signed with a plain public key.

graven writes::

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": KEYID}, "tlogEntries": []},
     "dsseEnvelope": {"payload": ..., "payloadType": ...,
                      "signatures": [{"keyid": ..., "sig": ...}]}}

There is no transparency log entry and no timestamp: the verifier supplies the public key (found by
its hint) and sets its tlog, CT log and timestamp thresholds to 0. ``@sigstore/verify`` accepts such
a bundle. A Sigstore bundle holds exactly one signature: one with more is refused when read, as
``@sigstore/verify`` refuses it.

:func:`load_attestation` reads either a bundle or a bare DSSE envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from graven.core.record import Frozen
from graven.errors import InputError, NotFoundError
from graven.signing.dsse import Envelope, canonical_json, envelope_from_dict, load_json_object
from graven.signing.keys import VerifyingKey

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "Bundle",
    "bundle_bytes",
    "envelope_from_bundle",
    "is_bundle",
    "load_attestation",
    "make_bundle",
    "parse_bundle",
    "read_attestation",
    "signed_by",
]

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
_ACCEPTED_MEDIA_TYPES: Final = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)


class Bundle(Frozen):
    """A parsed bundle: its media type, the public key hint (if any) and the DSSE envelope."""

    __slots__ = ("envelope", "key_hint", "media_type")
    _fields = ("media_type", "key_hint", "envelope")
    media_type: str
    key_hint: str | None
    envelope: Envelope

    def __init__(self, media_type: str, key_hint: str | None, envelope: Envelope) -> None:
        _set(self, "media_type", media_type)
        _set(self, "key_hint", key_hint)
        _set(self, "envelope", envelope)


def make_bundle(envelope: Envelope, hint: str | None = None) -> dict[str, Any]:
    """The Sigstore bundle v0.3 (JSON-ready dict) for a singly signed ``envelope``; ``hint`` (the id of
    the key that verified it: :func:`signed_by`) names the key, else the signature's own key id hint."""
    if len(envelope.signatures) != 1:
        raise InputError(
            f"a Sigstore bundle holds exactly one signature, this envelope has {len(envelope.signatures)}"
        )
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": envelope.signatures[0].keyid if hint is None else hint},
            "tlogEntries": [],
        },
        "dsseEnvelope": envelope.to_dict(),
    }


def bundle_bytes(envelope: Envelope, hint: str | None = None) -> bytes:
    """The bundle of ``envelope`` as canonical JSON bytes (``hint``: as :func:`make_bundle`)."""
    return canonical_json(make_bundle(envelope, hint))


def signed_by(envelope: Envelope, key: VerifyingKey) -> Envelope:
    """``envelope`` with only its first signature that verifies with ``key`` (a bundle holds one). The
    choice is cryptographic: a signature's ``keyid`` is a hint anyone writes, so a junk signature
    naming ``key`` must not stand in for the one ``key`` made. InputError when none verifies."""
    message = envelope.pae()
    for signature in envelope.signatures:
        if key.verify(signature.sig, message):
            return Envelope(envelope.payload, envelope.payload_type, (signature,))
    raise InputError(f"no signature of the envelope verifies with key {key.keyid[:16]}")


def is_bundle(document: Mapping[str, Any]) -> bool:
    """Whether a parsed JSON document looks like a Sigstore bundle (it has a ``mediaType``)."""
    return "mediaType" in document


def _check_material(material: Mapping[str, Any]) -> None:
    """Refuse verification material graven does not check: a bundle's signer is a bare public key of
    the operator's trust policy. Transparency-log entries, timestamps and certificates would be
    passed over unchecked, and the bundle said verified as if they had been."""
    entries = material.get("tlogEntries", [])
    if not isinstance(entries, list):
        raise InputError("Sigstore bundle: verificationMaterial.tlogEntries is not a list")
    if entries:
        raise InputError(
            f"Sigstore bundle carries transparency-log entries ({len(entries)}), which graven does not "
            "check: it verifies bundles of a bare public key only (as `graven export --bundle` writes)"
        )
    if material.get("timestampVerificationData"):
        raise InputError(
            "Sigstore bundle carries timestamps (timestampVerificationData), which graven does not "
            "check: it verifies bundles of a bare public key only (as `graven export --bundle` writes)"
        )
    if "publicKey" not in material or "certificate" in material or "x509CertificateChain" in material:
        raise InputError(
            "Sigstore bundle has no public key hint (verificationMaterial.publicKey): graven checks "
            "no certificates; it verifies bundles of a bare public key only (as `graven export --bundle` "
            "writes)"
        )


def _bundle_from_dict(doc: Mapping[str, Any]) -> Bundle:
    media_type = doc.get("mediaType")
    if not isinstance(media_type, str) or media_type not in _ACCEPTED_MEDIA_TYPES:
        raise InputError(f"not a Sigstore bundle: unsupported mediaType {media_type!r}")
    material = doc.get("verificationMaterial")
    if not isinstance(material, dict):
        raise InputError("Sigstore bundle has no verificationMaterial object")
    _check_material(material)
    public_key = material["publicKey"]
    if not isinstance(public_key, dict):
        raise InputError("Sigstore bundle: verificationMaterial.publicKey is not an object")
    hint = public_key.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise InputError("Sigstore bundle: verificationMaterial.publicKey.hint is not a string")
    if "messageSignature" in doc and "dsseEnvelope" in doc:
        raise InputError(
            "Sigstore bundle has both a messageSignature and a dsseEnvelope; a bundle holds one of them"
        )
    raw_envelope = doc.get("dsseEnvelope")
    if raw_envelope is None:
        raise InputError("Sigstore bundle has no dsseEnvelope (graven attestations are DSSE)")
    if not isinstance(raw_envelope, dict):
        raise InputError("Sigstore bundle: dsseEnvelope is not an object")
    envelope = envelope_from_dict(raw_envelope, "Sigstore bundle dsseEnvelope")
    if len(envelope.signatures) > 1:  # none: refused as unsigned, as a bare envelope is
        raise InputError(
            f"Sigstore bundle: its dsseEnvelope has {len(envelope.signatures)} signatures; a bundle holds "
            "exactly one (@sigstore/verify refuses it too): give the bare DSSE envelope instead"
        )
    return Bundle(media_type, hint, envelope)


def parse_bundle(data: bytes | str) -> Bundle:
    """Parse a Sigstore bundle holding a DSSE envelope; malformed input raises InputError."""
    return _bundle_from_dict(load_json_object(data, "Sigstore bundle"))


def envelope_from_bundle(data: bytes | str) -> Envelope:
    """The DSSE envelope inside a Sigstore bundle."""
    return parse_bundle(data).envelope


MAX_ATTESTATION_BYTES = 16 * 1024 * 1024  # a provenance is kilobytes; more is not one


def read_attestation(path: Path) -> bytes:
    """The bytes of the attestation file ``path``, read up to the limit and refused past it: a pipe
    (``<(curl ...)``) or a device has no size to check first, and an endless one is never read whole.
    Bytes that are no envelope nor bundle are refused naming ``path`` (the archive given in its place,
    say: the parse's own message names no file)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ATTESTATION_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_ATTESTATION_BYTES:
        raise InputError(
            f"{path} is more than {MAX_ATTESTATION_BYTES:,} bytes: no in-toto provenance is that big"
        )
    try:
        load_attestation(data)
    except InputError as exc:
        raise InputError(
            f"{path}: {exc}; give the file that `graven export --attestation` (a DSSE envelope) or "
            "`--bundle` (a Sigstore bundle) wrote"
        ) from None
    return data


def load_attestation(data: bytes | str) -> Envelope:
    """The DSSE envelope of an attestation file: a Sigstore bundle or a bare DSSE envelope."""
    if len(data) > MAX_ATTESTATION_BYTES:
        raise InputError(
            f"the attestation is {len(data):,} bytes, more than the {MAX_ATTESTATION_BYTES:,} an "
            "in-toto provenance ever needs; refusing it"
        )
    doc = load_json_object(data, "attestation")
    if is_bundle(doc):
        return _bundle_from_dict(doc).envelope
    return envelope_from_dict(doc)
