"""What graven deployed, by stat: ``PATH/.graven/stat`` (format ``graven.deploy-stat/v5``).

For every inode of every release (files and directories) graven records the sha256 it wrote there (all
zeros for a directory) and ``(size, mtime_ns, ctime_ns, st_mode)`` right after writing, linking or
renaming it. A file whose stat is unchanged still holds the bytes graven verified, and a directory whose
stat is unchanged still holds the entries graven put there: ``ctime`` cannot be set from user space, so
an edit, a new entry or a replaced one is seen even when the mtime is put back. Releases share file
inodes (unchanged files are hard links between releases), so the records are per inode and refreshed
whenever graven itself adds or removes a link. Anything that does not match is checked by content or
written again from the store.

It also records who deployed each release: the owner (uid) of ``PATH/releases/<hex>`` when graven
renamed it into place, which graven made as the deployer, as it made everything in it. Drift and heal
hold every path of the release, the release directory included, to that uid; read from the release
directory instead, a ``chown`` of that one directory made it the reference for every other path.
Likewise its group: the gid of ``PATH/releases/<hex>`` then, which every path graven made in it has
(the deployer's egid, or the group of ``PATH/releases`` when that is setgid, as a setgid environment
directory makes it); a ``chgrp`` can give a group access to what it did not have.

File layout (all integers big-endian)::

    b"GRVNSTAT" u16 version (5) | u64 st_dev | u64 count |
    count x (u64 ino | u64 size | i64 mtime_ns | i64 ctime_ns | u32 st_mode | 32-byte sha256)
    | u32 releases | releases x (32-byte release digest | u32 owner uid | u32 group gid)  (sorted)
    | HMAC-SHA256 of everything before it, under the home's record key

A uid or gid of 0xFFFFFFFF (``(uid_t) -1``, never an id) is none recorded. A v4 table (the releases
without their gid) is read with no group recorded, a v3 table (no releases) with no owner either: such a
release is then held to its directory's owner and group (:mod:`graven.deploy.attributes`), as before.

The tag (:mod:`graven.deploy.recordkey`) means that only the operator's graven can write records it
will trust: a table whose tag does not verify under the key it is given is read as empty.

Racy records (as git's "racily clean" index entries): a file changed in the same tick of the file
system's clock as graven recorded it keeps its ``mtime`` and ``ctime`` (1 s on ext4 with small
inodes, ext3, NFS; a few ms where file times come from the kernel's coarse tick). Before it writes,
:meth:`StatTable.save` reads the file system's clock (its own temporary file's mtime), waits briefly
for it to pass the newest recorded ctime, and marks every record whose ctime is not strictly older
as unknown (a ``ctime`` of -1, which no file has): such a file is checked by content next time,
never trusted by stat. The table file's mtime, which drift checks take as the time of the records,
is then later than every trusted record. As for git, a change made between a record and the save,
within the record's tick, is not seen: a deployment saves right after writing the release, before
the switch and the hooks.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from graven.core.record import Record as _Mutable
from graven.deploy.recordkey import TAG_SIZE, read_record_file, tag, verify
from graven.errors import BackendError

__all__ = ["DIR_SHA", "STAT_FORMAT", "StatTable", "recorded_deployer", "recorded_owner"]

STAT_FORMAT = "graven.deploy-stat/v5"
DIR_SHA = "0" * 64
# v5: v4 and the group of each release. v4: v3 and the owner of each release; read as one that records
# no group. v3: the layout of v2, and no record is racy (StatTable.save); read as one that records no
# owner. A v2 table (graven 0.4.0 and before; 0.3.0's may hold racy records) is read as empty, which
# costs one check by content after an upgrade; graven 0.4.0 reads a v3, v4 or v5 table as empty too.
_MAGIC = b"GRVNSTAT\x00\x05"
_MAGIC_V4 = b"GRVNSTAT\x00\x04"
_MAGIC_V3 = b"GRVNSTAT\x00\x03"
_HEAD = struct.Struct(">QQ")
_RECORD = struct.Struct(">QQqqI32s")
_COUNT = struct.Struct(">I")
_OWNER = struct.Struct(">32sII")
_OWNER_V4 = struct.Struct(">32sI")
_NO_ID = 0xFFFFFFFF  # (uid_t) -1 / (gid_t) -1: never an id; none recorded
Record = tuple[str, int, int, int, int]  # sha256 hex, size, mtime_ns, ctime_ns, st_mode
UNKNOWN_CTIME = -1  # a racy record's ctime: no file has it, so the record never matches
# How long save() waits at most for the clock to pass the newest record: a few ms where file times come
# from the kernel's tick; up to 2.1 s where they are whole seconds (ext4 with 128-byte inodes, NFS,
# FAT's two), rather than mark every record of a fresh release unknown (the next deploy would then copy
# every file instead of linking it).
_RACY_WAIT = 0.05
_RACY_WAIT_WHOLE_SECONDS = 2.1


class StatTable(_Mutable):
    """The stat records of one environment directory."""

    __slots__ = ("dev", "groups", "inodes", "owners")
    _fields = ("dev", "inodes", "owners", "groups")
    dev: int | None
    inodes: dict[int, Record]
    owners: dict[str, int]  # release digest hex -> the uid that deployed it
    groups: dict[str, int]  # release digest hex -> the gid it was deployed with

    def __init__(
        self,
        dev: int | None = None,
        inodes: dict[int, Record] | None = None,
        owners: dict[str, int] | None = None,
        groups: dict[str, int] | None = None,
    ) -> None:
        self.dev = dev
        self.inodes = {} if inodes is None else inodes
        self.owners = {} if owners is None else owners
        self.groups = {} if groups is None else groups

    @classmethod
    def load(cls, path: Path, key: bytes) -> StatTable:
        """Read the table; a missing, damaged or unauthenticated one (its tag does not verify under
        ``key``) is empty: files are then checked by content (and owners and groups are the release
        directories')."""
        parsed = _parse(read_record_file(path), key)
        if parsed is None:
            return cls()
        data, dev, owners_at = parsed
        start = len(_MAGIC) + _HEAD.size
        inodes = {
            ino: (sha.hex(), size, mtime, ctime, mode)
            for ino, size, mtime, ctime, mode, sha in _RECORD.iter_unpack(memoryview(data)[start:owners_at])
        }
        owners, groups = _deployers(data, owners_at)
        return cls(dev, inodes, owners, groups)

    def owner(self, release: str) -> int | None:
        """The uid that deployed the release ``release`` (its digest's hex), None when not recorded."""
        return self.owners.get(release)

    def set_owner(self, release: str, uid: int) -> None:
        """Record that ``uid`` deployed the release ``release`` (made its directory and everything in it)."""
        self.owners[release] = uid

    def group(self, release: str) -> int | None:
        """The gid the release ``release`` was deployed with (its directory's group then, which every
        path graven made in it has), None when not recorded (a release taken over from a v4 table)."""
        return self.groups.get(release)

    def set_group(self, release: str, gid: int) -> None:
        """Record that the release ``release`` was deployed with the group ``gid``."""
        self.groups[release] = gid

    def forget_owner(self, release: str) -> None:
        """Drop the owner and group of a release that was deleted."""
        self.owners.pop(release, None)
        self.groups.pop(release, None)

    def save(self, path: Path, key: bytes) -> None:
        """Write the table atomically (temp file, fsync, rename), tagged under ``key``; racy records
        (see the module's docstring) are written as unknown."""
        # a new file of our own (O_EXCL | O_NOFOLLOW): a symlink planted at the temporary name is
        # never followed, and the rename replaces whatever stands at ``path`` (never its target)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with open(fd, "wb") as handle:
                self._smudge_racy(_fs_now(handle.fileno()))
                pack = _RECORD.pack
                parts = [_MAGIC, _HEAD.pack(self.dev or 0, len(self.inodes))]
                parts.extend(
                    pack(ino, size, mtime, ctime, mode, bytes.fromhex(sha))
                    for ino, (sha, size, mtime, ctime, mode) in self.inodes.items()
                )
                uids, gids = self.owners, self.groups
                releases = sorted(uids.keys() | gids.keys())
                parts.append(_COUNT.pack(len(releases)))
                parts.extend(
                    _OWNER.pack(bytes.fromhex(r), uids.get(r, _NO_ID), gids.get(r, _NO_ID)) for r in releases
                )
                body = b"".join(parts)
                handle.write(body + tag(key, body))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackendError(f"cannot write {path}: {exc.strerror}") from None

    def newest(self) -> int:
        """The latest ctime of a trusted record (ns; 0 when there is none). Only the ctime counts: any
        change of a file sets it to the clock's now (an mtime can be set to anything, which sets the
        ctime too)."""
        return max((r[3] for r in self.inodes.values()), default=0)

    def _smudge_racy(self, clock: Callable[[], int]) -> None:
        """Mark as unknown every record whose times are not strictly older than the file system's
        clock, after waiting up to :data:`_RACY_WAIT` for the clock to pass the newest of them (on a
        kernel with a coarse tick this is a few ms, and nothing is lost)."""
        newest = self.newest()
        if not newest:
            return
        now, waited = clock(), 0.0
        budget = _RACY_WAIT_WHOLE_SECONDS if now % 1_000_000_000 == 0 else _RACY_WAIT
        while now <= newest and waited < budget:
            time.sleep(0.002)
            waited += 0.002
            now = clock()
        if now > newest:
            return
        inodes = self.inodes
        for ino, (sha, size, mtime, ctime, mode) in list(inodes.items()):
            if ctime >= now:
                inodes[ino] = (sha, size, mtime, UNKNOWN_CTIME, mode)

    def record(self, st: os.stat_result, sha256: str) -> None:
        """Remember that the inode of ``st`` holds ``sha256`` (a directory: :data:`DIR_SHA`)."""
        if self.dev != st.st_dev:
            if self.dev is not None:
                self.inodes.clear()  # another file system: every old record is meaningless here
            self.dev = st.st_dev
        self.inodes[st.st_ino] = (sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def record_all(self, items: Iterable[tuple[os.stat_result, str]]) -> None:
        """:meth:`record` for many (stat, sha256) pairs, in order (a later record of an inode wins)."""
        inodes = self.inodes
        for st, sha256 in items:
            if st.st_dev != self.dev:
                self.record(st, sha256)
            else:
                inodes[st.st_ino] = (sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def record_values(self, items: Iterable[tuple[int, int, int, int, int, int, str]]) -> None:
        """:meth:`record_all` for ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, st_mode, sha256)``
        tuples: what a stat gives, taken apart (a forked process sends these)."""
        inodes = self.inodes
        for dev, ino, size, mtime, ctime, mode, sha256 in items:
            if dev != self.dev:
                if self.dev is not None:
                    inodes.clear()  # another file system: every old record is meaningless here
                self.dev = dev
            inodes[ino] = (sha256, size, mtime, ctime, mode)

    def matches(self, st: os.stat_result, sha256: str) -> bool:
        """True when ``st`` is exactly what graven recorded for an inode holding ``sha256``."""
        return st.st_dev == self.dev and self.inodes.get(st.st_ino) == (
            sha256,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_mode,
        )

    def forget(self, ino: int) -> None:
        """Drop the record of an inode that no longer exists."""
        self.inodes.pop(ino, None)


def recorded_owner(path: Path, key: bytes, release: str) -> int | None:
    """The uid that deployed the release ``release`` (its digest's hex) as the table at ``path`` records
    it (authenticated under ``key``); None when it records none. Reads only that part of the table."""
    return recorded_deployer(path, key, release)[0]


def recorded_deployer(path: Path, key: bytes, release: str) -> tuple[int | None, int | None]:
    """(uid, gid): who deployed the release ``release`` (its digest's hex) and with which group, as the
    table at ``path`` records them (authenticated under ``key``); None for what it does not record (a
    v4 table records no group, a v3 table neither). Reads only that part of the table."""
    parsed = _parse(read_record_file(path), key)
    if parsed is None:
        return None, None
    data, _dev, owners_at = parsed
    owners, groups = _deployers(data, owners_at)
    return owners.get(release), groups.get(release)


def _parse(data: bytes | None, key: bytes) -> tuple[bytes, int, int] | None:
    """A v5, v4 or v3 table whose tag verifies under ``key`` and whose parts add up: (its bytes, st_dev,
    where the records end and the releases start); None for anything else."""
    if data is None:
        return None
    start = len(_MAGIC) + _HEAD.size
    if len(data) < start + TAG_SIZE or not data.startswith((_MAGIC, _MAGIC_V4, _MAGIC_V3)):
        return None
    if not verify(key, memoryview(data)[:-TAG_SIZE], memoryview(data)[-TAG_SIZE:]):
        return None
    dev, count = _HEAD.unpack_from(data, len(_MAGIC))
    owners_at = start + count * _RECORD.size
    end = len(data) - TAG_SIZE
    if data.startswith(_MAGIC_V3):
        return (data, dev, owners_at) if owners_at == end else None
    if owners_at + _COUNT.size > end:
        return None
    (owners,) = _COUNT.unpack_from(data, owners_at)
    size = (_OWNER_V4 if data.startswith(_MAGIC_V4) else _OWNER).size
    if owners_at + _COUNT.size + owners * size != end:
        return None
    return data, dev, owners_at


def _deployers(data: bytes, at: int) -> tuple[dict[str, int], dict[str, int]]:
    """The releases section of a table :func:`_parse` accepted: (owners, groups); none in a v3 table,
    no group in a v4 one."""
    if data.startswith(_MAGIC_V3):
        return {}, {}
    body = memoryview(data)[at + _COUNT.size : len(data) - TAG_SIZE]
    if data.startswith(_MAGIC_V4):
        return {release.hex(): uid for release, uid in _OWNER_V4.iter_unpack(body)}, {}
    owners: dict[str, int] = {}
    groups: dict[str, int] = {}
    for release, uid, gid in _OWNER.iter_unpack(body):
        name = release.hex()
        if uid != _NO_ID:
            owners[name] = uid
        if gid != _NO_ID:
            groups[name] = gid
    return owners, groups


def _fs_now(fd: int) -> Callable[[], int]:
    """A reading of the file system's clock (ns): set the times of the open file ``fd`` to now and
    read its mtime back (the clock the kernel stamps files with, at the file system's granularity)."""

    def now() -> int:
        os.utime(fd)
        return os.fstat(fd).st_mtime_ns

    return now
