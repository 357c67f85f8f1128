"""Content digests: ``sha256:<64 hex>``, the permanent identity of every stored object."""

from __future__ import annotations

import hashlib
import re

from graven.core.record import Frozen
from graven.errors import InputError

__all__ = ["ALGORITHM", "Digest", "sha256_digest"]

ALGORITHM = "sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Digest(Frozen):
    """A sha256 digest. ``str(d)`` is ``sha256:<hex>``. Frozen, hashable and ordered by ``hex``
    (written by hand: see graven.core.record)."""

    __slots__ = ("hex",)
    _fields = ("hex",)
    hex: str

    def __init__(self, hex: str) -> None:
        if not _HEX64.fullmatch(hex):
            raise InputError(f"not a sha256 digest: {hex!r}")
        object.__setattr__(self, "hex", hex)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Digest or not isinstance(other, Digest):
            return NotImplemented
        return self.hex == other.hex

    def __hash__(self) -> int:
        return hash((self.hex,))

    def __lt__(self, other: Digest) -> bool:
        if other.__class__ is not Digest:
            return NotImplemented
        return self.hex < other.hex

    def __le__(self, other: Digest) -> bool:
        if other.__class__ is not Digest:
            return NotImplemented
        return self.hex <= other.hex

    def __gt__(self, other: Digest) -> bool:
        if other.__class__ is not Digest:
            return NotImplemented
        return self.hex > other.hex

    def __ge__(self, other: Digest) -> bool:
        if other.__class__ is not Digest:
            return NotImplemented
        return self.hex >= other.hex

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>`` or a bare 64-digit lowercase hex string."""
        value = text.strip()
        if value.startswith(f"{ALGORITHM}:"):
            value = value[len(ALGORITHM) + 1 :]
        if not _HEX64.fullmatch(value):
            raise InputError(f"not a sha256 digest: {text!r} (expected sha256:<64 hex digits>)")
        return cls(value)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Digest:
        """Wrap a raw 32-byte sha256 value."""
        return cls(raw.hex())

    @property
    def raw(self) -> bytes:
        """The 32 raw bytes."""
        return bytes.fromhex(self.hex)

    @property
    def short(self) -> str:
        """The first 12 hex digits, for humans."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"


def sha256_digest(data: bytes) -> Digest:
    """The digest of ``data``."""
    return Digest(hashlib.sha256(data).hexdigest())
