"""Transparency log checkpoints as C2SP signed notes, signed with Ed25519.

A checkpoint (https://c2sp.org/tlog-checkpoint) is the note text::

    <origin>
    <tree size in decimal>
    <base64 root hash>
    [extension lines]

and a signed note (https://c2sp.org/signed-note) is that text, a blank line, and one signature line
``— <key name> <base64(key id || signature)>`` per signer. The key id of an Ed25519 key is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]``. The verifier key string
``<name>+<hex key id>+<base64(0x01 || public key)>`` is the one golang.org/x/mod/sumdb/note reads.

Malformed input raises :class:`~graven.errors.InputError`; a note that no trusted key signed, or that
carries a bad signature by a trusted key, raises :class:`~graven.errors.VerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from functools import cache
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from graven.core.merkle import HASH_SIZE
from graven.core.record import Frozen
from graven.errors import InputError, VerificationError

__all__ = [
    "MAX_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "NoteSignature",
    "key_id",
    "note_head",
    "parse_checkpoint",
    "parse_signed_note",
    "parse_verifier_key",
    "sign_checkpoint",
    "verifier_key",
    "verify_checkpoint",
]

ED25519_SIGNATURE_TYPE = 0x01
"""Signature type byte of Ed25519 in the signed-note key id and verifier key."""

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec asks verifiers to accept at least 16)."""

MAX_TREE_SIZE = 2**63 - 1
"""Largest tree size accepted, the limit of Go's int64 tree sizes."""

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_KEY_ID_SIZE = 4
_ED25519_SIGNATURE_SIZE = 64
_ED25519_PUBLIC_KEY_SIZE = 32


# compiled on first use: signing a checkpoint (every deploy) needs neither (start-up)
@cache
def _size_pattern() -> re.Pattern[str]:
    return re.compile(r"0|[1-9][0-9]*")


@cache
def _hex_key_id_pattern() -> re.Pattern[str]:
    return re.compile(r"[0-9a-f]{8}")


class NoteSignature(NamedTuple):
    """One signature line of a signed note."""

    name: str
    key_id: bytes
    signature: bytes


class Checkpoint(Frozen):
    """The signed head of a transparency log: who (origin), how many leaves (size), which root. A frozen
    value (written by hand: graven.core.record)."""

    __slots__ = ("extensions", "origin", "root", "size")
    _fields = ("origin", "size", "root", "extensions")
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]

    def __init__(self, origin: str, size: int, root: bytes, extensions: tuple[str, ...] = ()) -> None:
        """Refuse values that have no valid checkpoint encoding."""
        if not origin:
            raise InputError("checkpoint origin must not be empty")
        _require_single_line(origin, "checkpoint origin")
        if isinstance(size, bool) or not 0 <= size <= MAX_TREE_SIZE:
            raise InputError(f"checkpoint tree size must be in 0..{MAX_TREE_SIZE}, got {size}")
        if len(root) != HASH_SIZE:
            raise InputError(f"checkpoint root must be {HASH_SIZE} bytes, got {len(root)}")
        for line in extensions:
            if not line:
                raise InputError("checkpoint extension lines must not be empty")
            _require_single_line(line, "checkpoint extension line")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "extensions", extensions)

    def body(self) -> bytes:
        """Return the note text that is signed: origin, size, base64 root, extensions, each + LF."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(f"{line}\n" for line in lines).encode()


def _require_single_line(text: str, what: str) -> None:
    if any(ch < "\x20" for ch in text):
        raise InputError(f"{what} must not contain newlines or control characters: {text!r}")
    _require_utf8(text, what)


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode text: {text!r}") from exc


def _require_key_name(name: str) -> None:
    if not name or any(ch.isspace() or ch == "+" for ch in name):
        raise InputError(f"note key name must be non-empty without spaces or '+': {name!r}")
    _require_single_line(name, "note key name")


def _decode_base64(text: str, what: str) -> bytes:
    """Strict standard base64 with padding, refusing non-canonical encodings."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise InputError(f"{what} is not valid base64: {text!r}") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise InputError(f"{what} is not canonical base64: {text!r}")
    return raw


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes_raw()


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Return the 4-byte key id: ``SHA-256(name || 0x0A || 0x01 || raw public key)[:4]``."""
    _require_key_name(name)
    material = name.encode() + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + _raw_public_key(public_key)
    return hashlib.sha256(material).digest()[:_KEY_ID_SIZE]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Return the verifier key string ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
    encoded = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + _raw_public_key(public_key))
    return f"{name}+{key_id(name, public_key).hex()}+{encoded.decode()}"


def parse_verifier_key(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key string into its name and Ed25519 public key, checking the key id."""
    parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3:
        raise InputError(f"verifier key must be <name>+<key id>+<key>: {vkey!r}")
    name, hex_id, encoded = parts
    _require_key_name(name)
    if not _hex_key_id_pattern().fullmatch(hex_id):
        raise InputError(f"verifier key id must be 8 lowercase hex digits: {hex_id!r}")
    raw = _decode_base64(encoded, "verifier key")
    if len(raw) != 1 + _ED25519_PUBLIC_KEY_SIZE or raw[0] != ED25519_SIGNATURE_TYPE:
        raise InputError("verifier key is not an Ed25519 key (type 0x01 and 32 bytes)")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_id(name, public_key).hex() != hex_id:
        raise InputError(f"verifier key id {hex_id} does not match its name and key")
    return name, public_key


def note_head(origin: str, size: int, root: bytes) -> str:
    """Return the first three lines (origin, size, base64 root, each + LF) of a checkpoint's note.

    A fast, unvalidated form of :meth:`Checkpoint.body` without extensions, for comparing many stored
    notes with recomputed roots: a signed note of ``Checkpoint(origin, size, root)`` starts with
    exactly this text. It says nothing about the signature.
    """
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_checkpoint(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """Return the signed note of ``checkpoint`` with one Ed25519 signature by key ``name``."""
    _require_key_name(name)
    body = checkpoint.body()
    signature = private_key.sign(body)
    encoded = base64.b64encode(key_id(name, private_key.public_key()) + signature).decode()
    return f"{body.decode()}\n{_SIGNATURE_PREFIX}{name} {encoded}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (origin, size, root and extension lines, each ending in LF)."""
    if not text.endswith("\n"):
        raise InputError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise InputError(f"checkpoint needs origin, size and root lines, got {len(lines)} lines")
    if any(not line for line in lines):
        raise InputError("checkpoint lines must not be empty")
    origin, size_text, root_text, *extensions = lines
    if not _size_pattern().fullmatch(size_text):
        raise InputError(f"checkpoint tree size is not a decimal number: {size_text!r}")
    if len(size_text) > 20:  # past any uint64 (and Python's int() refuses past 4,300 digits)
        raise InputError(f"checkpoint tree size has {len(size_text)} digits: too large")
    root = _decode_base64(root_text, "checkpoint root")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def _split_note(text: str) -> tuple[str, list[str]]:
    """Split a signed note into its text (with final LF) and its signature lines."""
    if any(ch < "\x20" and ch != "\n" for ch in text):
        raise InputError("signed note must not contain control characters other than newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise InputError("signed note has no blank line before its signatures")
    body, signatures = text[: split + 1], text[split + 2 :]
    if not signatures.endswith("\n"):
        raise InputError("signed note must end with a signature line and a newline")
    lines = signatures[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InputError(f"signed note has more than {MAX_SIGNATURES} signatures")
    return body, lines


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise InputError(f"note signature line must start with an em dash and a space: {line!r}")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space or not encoded:
        raise InputError(f"note signature line has no signature: {line!r}")
    _require_key_name(name)
    raw = _decode_base64(encoded, "note signature")
    if len(raw) <= _KEY_ID_SIZE:
        raise InputError(f"note signature by {name} is too short")
    return NoteSignature(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:])


def _decode_note(note: str | bytes) -> str:
    if isinstance(note, str):
        _require_utf8(note, "signed note")
        return note
    try:
        return note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("signed note is not valid UTF-8") from exc


def _parse_note(note: str | bytes) -> tuple[str, Checkpoint, list[NoteSignature]]:
    body, lines = _split_note(_decode_note(note))
    return body, parse_checkpoint(body), [_parse_signature_line(line) for line in lines]


def parse_signed_note(note: str | bytes) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a signed checkpoint note into the checkpoint and its (unverified) signatures."""
    _, checkpoint, signatures = _parse_note(note)
    return checkpoint, signatures


def verify_checkpoint(note: str | bytes, name: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """Return the checkpoint of a signed note once an Ed25519 signature by ``name`` verifies.

    Signatures by other keys are ignored, as the signed-note spec requires. Raises VerificationError
    when no signature by this key is present or when any signature by this key does not verify.
    """
    text, checkpoint, signatures = _parse_note(note)
    body = text.encode()
    wanted_id = key_id(name, public_key)
    ours = [s for s in signatures if s.name == name and s.key_id == wanted_id]
    if not ours:
        raise VerificationError(f"checkpoint has no signature by key {name}+{wanted_id.hex()}")
    for signature in ours:
        if len(signature.signature) != _ED25519_SIGNATURE_SIZE:
            raise VerificationError(f"checkpoint signature by {name} is not 64 bytes")
        try:
            public_key.verify(signature.signature, body)
        except InvalidSignature as exc:
            raise VerificationError(f"checkpoint signature by {name} does not verify") from exc
    return checkpoint
