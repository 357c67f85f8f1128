"""A memo of the signatures this machine already verified, so that a deploy or a drift check does not
import ``cryptography`` (12-17 ms) to check again a signature it checked before (0.25 ms).

An entry means exactly one thing: "signature S over message M verified with the public key whose key
id is K". It is an empty file in ``GRAVEN_HOME/cache/signatures/`` (mode 0700) whose name is the hex
HMAC-SHA256, under the home's record key (``GRAVEN_HOME/keys/records.hmac``, see
:mod:`graven.deploy.recordkey`), of::

    b"graven.sigmemo/v1\\0" || K (64 hex digits, ASCII) || b"\\0" || sha256(M) || len(S) (4 bytes, big
    endian) || S

Nothing else is remembered: which keys are trusted, for which environment, which are revoked, the
payload type and what the statement says are decided by the trust policy each time, and a key that is
revoked or no longer trusted is refused whatever the memo holds (its entries name a key, not a
decision). A name cannot be made without the record key, so whoever can forge an entry can already
read ``keys/`` of the home, and could as well rewrite ``GRAVEN_HOME/trust``.

Lookups are an ``lstat`` of one name (a regular file; a symlink or anything else is no entry).
Writing is best effort: the entry is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; any failure
(read-only home, full disk, no record key) only means the next check is a real one again. A write
that finds more than :data:`KEEP` entries removes the oldest (by creation) down to three quarters of
it. The directory can be deleted at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from graven.errors import GravenError

__all__ = ["DOMAIN", "KEEP", "FileSignatureMemo", "entry_name"]

DOMAIN: Final = b"graven.sigmemo/v1\0"
_HEX64 = re.compile(r"[0-9a-f]{64}")  # a key id; an entry's name
KEEP: Final = 4096  # entries (empty files): one per artifact (and key) checked on this machine


def entry_name(record_key: bytes, keyid: str, message: bytes, signature: bytes) -> str | None:
    """The file name of the memo entry for ``signature`` over ``message`` by key ``keyid`` (None for a
    key id that is not 64 lowercase hex digits: such a key has no entries)."""
    if not _HEX64.fullmatch(keyid):
        return None
    data = b"".join(
        (
            DOMAIN,
            keyid.encode("ascii"),
            b"\0",
            hashlib.sha256(message).digest(),
            len(signature).to_bytes(4, "big"),
            signature,
        )
    )
    return hmac.new(record_key, data, hashlib.sha256).hexdigest()


class FileSignatureMemo:
    """Verified signatures as empty files named by their HMAC in ``directory``.

    ``record_key`` gives the home's record key; it is called on first use only (so that a command that
    checks nothing reads no key), and a failure to get it turns the memo off for this process.
    """

    def __init__(self, directory: Path, record_key: Callable[[], bytes]) -> None:
        self.directory = directory
        self._record_key = record_key
        self._key: bytes | None = None
        self._off = False

    def _name(self, keyid: str, message: bytes, signature: bytes) -> str | None:
        if self._off:
            return None
        if self._key is None:
            try:
                self._key = self._record_key()
            except (GravenError, OSError):
                self._off = True
                return None
        return entry_name(self._key, keyid, message, signature)

    def seen(self, keyid: str, message: bytes, signature: bytes) -> bool:
        """Whether the entry exists as a regular file (never following a symlink)."""
        name = self._name(keyid, message, signature)
        if name is None:
            return False
        try:
            info = os.lstat(self.directory / name)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode)

    def add(self, keyid: str, message: bytes, signature: bytes) -> None:
        """Create the entry (empty, 0600; ``directory`` and its parent are made 0700 when missing); any
        error is ignored."""
        name = self._name(keyid, message, signature)
        if name is None:
            return
        try:
            for directory in (self.directory.parent, self.directory):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o700)
            fd = os.open(
                self.directory / name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError:
            return
        os.close(fd)
        with contextlib.suppress(OSError):
            _prune(self.directory)


def _prune(directory: Path) -> None:
    """Beyond :data:`KEEP` entries, remove the oldest down to three quarters of it (a removed entry
    only means that signature is checked for real once more). Through a directory fd opened without
    following a symlink, so nothing outside the home is removed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it if _HEX64.fullmatch(e.name)]
        if len(names) <= KEEP:
            return
        aged = []
        for name in names:
            with contextlib.suppress(OSError):
                aged.append((os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime_ns, name))
        aged.sort()
        for _mtime, name in aged[: len(aged) - KEEP * 3 // 4]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
