"""The ``ArtifactStore`` interface: every backend (local directory, OCI registry) offers these calls.

Objects are immutable byte strings named by their sha256. Writers never rewrite an intact object (a
damaged one is repaired with the same content); readers always verify what they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, runtime_checkable

from graven.model.digest import Digest

__all__ = ["ArtifactStore", "ObjectBatch"]


@runtime_checkable
class ObjectBatch(Protocol):
    """Objects added to a batch become visible together when the batch commits, or never."""

    def add(self, data: bytes, *, delta_base: Digest | None = None) -> Digest:
        """Add small content; ``delta_base`` names a similar object to compress against."""
        ...

    def add_stream(self, stream: BinaryIO, size: int) -> Digest:
        """Add ``size`` bytes read from ``stream`` without holding them in memory."""
        ...

    def __contains__(self, digest: Digest) -> bool: ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Content-addressed, write-once object storage."""

    def has(self, digest: Digest) -> bool:
        """True when the object is stored (its integrity is not checked)."""
        ...

    def missing(self, hexes: Iterable[str]) -> set[str]:
        """The sha256 hex digests among ``hexes`` that are not stored (one question for many)."""
        ...

    def put(self, data: bytes) -> Digest:
        """Store bytes; if they are already stored, verify the stored copy and return (when no stored
        copy verifies, store these bytes as a good copy: a repair)."""
        ...

    def open(self, digest: Digest) -> BinaryIO:
        """A stream of the object's bytes, verified as it is read (IntegrityError at the end)."""
        ...

    def read(self, digest: Digest) -> bytes:
        """The object's bytes, verified."""
        ...

    def verify(self, digest: Digest) -> None:
        """Re-hash the object; raise IntegrityError when it is missing or no stored copy verifies."""
        ...

    def list(self) -> Iterator[Digest]:
        """Every stored object."""
        ...

    def batch(self) -> AbstractContextManager[ObjectBatch]:
        """Group many writes into one atomic, efficient commit."""
        ...
