"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse).

A signature covers the pre-authentication encoding ``PAE(type, body)`` =
``"DSSEv1" SP len(type) SP type SP len(body) SP body`` (lengths in decimal ASCII), so neither the
payload nor its type can be changed without breaking it. Ed25519 signs the PAE directly; ECDSA P-256
signs SHA-256(PAE) and stores the DER signature.

The ``keyid`` of a signature is only a hint for choosing among the verifier's trusted keys: it is
tried first, then every other trusted key. A key is never taken from the envelope.

A verifier may pass a :class:`SignatureMemo`: a record of signatures this machine already checked.
Only the cryptographic check ``key.verify(sig, PAE)`` is looked up there; which keys are tried,
revocation and every refusal are decided here each time, exactly as without it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from graven.core.record import Frozen
from graven.errors import InputError, PolicyError, RevokedSignerError, UntrustedSignerError, VerificationError
from graven.signing.keys import VerifyingKey

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "Envelope",
    "Signature",
    "SignatureMemo",
    "Signer",
    "VerifiedEnvelope",
    "b64decode",
    "b64encode",
    "canonical_json",
    "check_signature",
    "envelope_from_dict",
    "load_json_object",
    "pae",
    "parse_envelope",
    "revoked_signer",
    "sign",
    "sign_envelope",
    "verify_envelope",
]


class Signer(Protocol):
    """Anything that signs bytes and names its key, like :class:`graven.signing.keys.SigningKey`."""

    @property
    def keyid(self) -> str:
        """The key id put in the envelope as a hint."""
        ...

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        ...


class SignatureMemo(Protocol):
    """Signatures already verified: ``seen(keyid, message, signature)`` is True only when ``signature``
    over ``message`` was verified with the public key whose key id is ``keyid``; ``add`` records one
    that just verified. (The file-backed one is :class:`graven.signing.memo.FileSignatureMemo`.)"""

    def seen(self, keyid: str, message: bytes, signature: bytes) -> bool:
        """Whether this exact signature of this exact message by this key was verified before."""
        ...

    def add(self, keyid: str, message: bytes, signature: bytes) -> None:
        """Remember that ``signature`` over ``message`` verified with key ``keyid``."""
        ...


def check_signature(
    key: VerifyingKey, signature: bytes, message: bytes, memo: SignatureMemo | None = None
) -> bool:
    """Whether ``signature`` over ``message`` verifies with ``key``: remembered in ``memo``, else
    checked by ``key`` (and remembered when it verifies)."""
    if memo is None:
        return key.verify(signature, message)
    if memo.seen(key.keyid, message, signature):
        return True
    if not key.verify(signature, message):
        return False
    memo.add(key.keyid, message, signature)
    return True


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding; refuse anything else."""
    if not text.isascii():
        raise InputError(f"{what} is not valid base64")
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse strict JSON (UTF-8, no duplicate keys, no NaN) whose top level is an object."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise InputError(f"{what} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise InputError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} is not a JSON object")
    return value


def canonical_json(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8 without escaping non-ASCII."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class Signature(Frozen):
    """One DSSE signature: the raw signature bytes and the key id hint (may be empty)."""

    __slots__ = ("keyid", "sig")
    _fields = ("keyid", "sig")
    keyid: str
    sig: bytes

    def __init__(self, keyid: str, sig: bytes) -> None:
        _set(self, "keyid", keyid)
        _set(self, "sig", sig)

    def to_dict(self) -> dict[str, str]:
        """The JSON form ``{"keyid": ..., "sig": base64}``."""
        return {"keyid": self.keyid, "sig": b64encode(self.sig)}


class Envelope(Frozen):
    """A parsed DSSE envelope."""

    __slots__ = ("payload", "payload_type", "signatures")
    _fields = ("payload", "payload_type", "signatures")
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def __init__(self, payload: bytes, payload_type: str, signatures: tuple[Signature, ...]) -> None:
        _set(self, "payload", payload)
        _set(self, "payload_type", payload_type)
        _set(self, "signatures", signatures)

    def pae(self) -> bytes:
        """The bytes that the signatures cover."""
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the envelope."""
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [signature.to_dict() for signature in self.signatures],
        }

    def to_json(self) -> bytes:
        """The envelope as canonical JSON bytes."""
        return canonical_json(self.to_dict())


def sign_envelope(payload: bytes, payload_type: str, signer: Signer) -> Envelope:
    """Sign ``payload`` of ``payload_type`` and return the envelope."""
    signature = signer.sign(pae(payload_type, payload))
    return Envelope(payload, payload_type, (Signature(signer.keyid, signature),))


def sign(payload: bytes, payload_type: str, signer: Signer) -> dict[str, Any]:
    """Sign ``payload`` and return the envelope as a JSON-ready dict.

    ``{"payload": b64, "payloadType": ..., "signatures": [{"keyid": ..., "sig": b64}]}``
    """
    return sign_envelope(payload, payload_type, signer).to_dict()


MAX_SIGNATURES = 64  # in one envelope: legitimate ones carry one or a few (a threshold of signers)


def envelope_from_dict(data: Mapping[str, Any], what: str = "DSSE envelope") -> Envelope:
    """Check and convert the JSON form of an envelope; malformed input raises InputError."""
    for field in ("payload", "payloadType", "signatures"):
        if field not in data:
            raise InputError(f"{what} has no {field!r} field")
    payload_b64, payload_type, raw_signatures = (
        data["payload"],
        data["payloadType"],
        data["signatures"],
    )
    if not isinstance(payload_b64, str):
        raise InputError(f"{what}: 'payload' is not a string")
    if not isinstance(payload_type, str) or not _utf8(payload_type):
        raise InputError(f"{what}: 'payloadType' is not a string (of Unicode characters)")
    if not isinstance(raw_signatures, list):
        raise InputError(f"{what}: 'signatures' is not a list")
    if len(raw_signatures) > MAX_SIGNATURES:
        # each is tried against each trusted key, on every verify and deploy of the artifact
        raise InputError(
            f"{what} has {len(raw_signatures)} signatures; graven accepts at most {MAX_SIGNATURES} in one "
            "envelope (sign with fewer keys, or give each signer's envelope separately)"
        )
    signatures: list[Signature] = []
    for index, raw in enumerate(raw_signatures):
        if not isinstance(raw, dict):
            raise InputError(f"{what}: signature {index} is not an object")
        sig = raw.get("sig")
        keyid = raw.get("keyid", "")
        if not isinstance(sig, str):
            raise InputError(f"{what}: signature {index} has no 'sig' string")
        if not isinstance(keyid, str) or not _utf8(keyid):
            raise InputError(f"{what}: signature {index} has a 'keyid' that is not a string")
        signatures.append(Signature(keyid, b64decode(sig, f"{what}: signature {index}")))
    payload = b64decode(payload_b64, f"{what}: payload")
    return Envelope(payload, payload_type, tuple(signatures))


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON allows a lone surrogate, "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_envelope(data: bytes | str) -> Envelope:
    """Parse a DSSE envelope from JSON; non-JSON, missing fields and bad base64 raise InputError."""
    return envelope_from_dict(load_json_object(data, "DSSE envelope"))


class VerifiedEnvelope(Frozen):
    """The outcome of a successful verification: the payload and the key that verified it."""

    __slots__ = ("key", "payload", "payload_type")
    _fields = ("payload", "payload_type", "key")
    payload: bytes
    payload_type: str
    key: VerifyingKey

    def __init__(self, payload: bytes, payload_type: str, key: VerifyingKey) -> None:
        _set(self, "payload", payload)
        _set(self, "payload_type", payload_type)
        _set(self, "key", key)

    @property
    def keyid(self) -> str:
        """The key id of the key that verified the envelope."""
        return self.key.keyid


def revoked_signer(
    envelope: Envelope,
    known_keys: Sequence[VerifyingKey],
    revoked_keyids: Collection[str],
    *,
    memo: SignatureMemo | None = None,
) -> str | None:
    """The id of a revoked key that signed ``envelope``, if any, else None.

    A signature counts as by a revoked key when it verifies with one of ``known_keys`` whose id is
    revoked, or when its key id hint names a revoked key.
    """
    revoked = frozenset(revoked_keyids)
    if not revoked:
        return None
    revoked_keys = [key for key in known_keys if key.keyid in revoked]
    signed = envelope.pae()
    for signature in envelope.signatures:
        for key in revoked_keys:
            if check_signature(key, signature.sig, signed, memo):
                return key.keyid
        if signature.keyid in revoked:
            return signature.keyid
    return None


def verify_envelope(
    envelope: Envelope | Mapping[str, Any],
    trusted_keys: Sequence[VerifyingKey],
    *,
    revoked_keyids: Collection[str] = (),
    memo: SignatureMemo | None = None,
) -> VerifiedEnvelope:
    """Verify ``envelope`` with ``trusted_keys``; return the payload and the key that verified it.

    Each signature is tried with the key its ``keyid`` hints at first, then with every other trusted
    key. A key whose id is in ``revoked_keyids`` never verifies anything; it may be among
    ``trusted_keys`` so that its signatures are recognized and refused as revoked. The envelope
    verifies if any signature verifies with a trusted, unrevoked key. Otherwise this raises, most
    specific reason first: a revoked key (PolicyError), a bad signature from a trusted key
    (VerificationError), an untrusted key (PolicyError). No signatures at all is a
    VerificationError; no usable trusted key at all is a PolicyError.

    ``memo`` only stands in for the cryptographic check of one signature with one usable key: every
    (signature, key) pair is first looked up there, and only then checked for real (the ones that verify
    are added), so a remembered signature needs no cryptography even when a key without a hint comes
    first. Which keys are usable and every refusal are decided as without it.
    """
    env = envelope if isinstance(envelope, Envelope) else envelope_from_dict(envelope)
    if not env.signatures:
        raise VerificationError("envelope is unsigned: it has no signatures")
    revoked = frozenset(revoked_keyids)
    usable = [key for key in trusted_keys if key.keyid not in revoked]
    signed = env.pae()
    attempts: list[tuple[Signature, VerifyingKey]] = []
    for signature in env.signatures:
        hinted = [key for key in usable if key.keyid == signature.keyid]
        others = [key for key in usable if key.keyid != signature.keyid]
        attempts.extend((signature, key) for key in hinted + others)
    if memo is not None:
        for signature, key in attempts:
            if memo.seen(key.keyid, signed, signature.sig):
                return VerifiedEnvelope(env.payload, env.payload_type, key)
    for signature, key in attempts:
        if key.verify(signature.sig, signed):
            if memo is not None:
                memo.add(key.keyid, signed, signature.sig)
            return VerifiedEnvelope(env.payload, env.payload_type, key)

    by_revoked = revoked_signer(env, trusted_keys, revoked, memo=memo)
    if by_revoked is not None:
        raise RevokedSignerError(f"signed by revoked key {by_revoked}")
    if not usable:
        raise PolicyError("no trusted keys to verify the envelope with")
    trusted_ids = {key.keyid for key in usable}
    for signature in env.signatures:
        if signature.keyid in trusted_ids:
            raise VerificationError(
                f"bad signature: the signature by trusted key {signature.keyid} does not match the"
                " payload and payloadType"
            )
    hint = next((signature.keyid for signature in env.signatures if signature.keyid), "")
    if hint:
        raise UntrustedSignerError(f"signed by untrusted key {hint}: no trusted key verifies the signature")
    raise UntrustedSignerError("signed by an untrusted key: no trusted key verifies the signature")
