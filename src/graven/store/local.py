"""The local store: a write-once, content-addressed directory.

Layout under ``root`` (normally ``GRAVEN_HOME/objects``)::

    sha256/ab/cdef...          loose objects: raw bytes, read-only; large files and single puts
    pack/pack-<sha256>.pack    packs: many small objects (zstd-compressed when it pays), read-only
    pack/pack-<sha256>.idx     the index of one pack; written last, so it is the commit point
    tmp/                       files being written; never visible as objects; and scratch directories
                               (0700) of work that is no object: a push's archive, a pull's download
    consolidate.lock           flock(2): one process merges small packs into one at a time, or
                               removes day-old packs left without their index (held shared by a
                               batch as it publishes its pack)

Every file is written to ``tmp/``, fsynced, renamed into place and made read-only, so a process killed
at any moment leaves no partial object visible. An intact object is never rewritten: putting content that
is already stored verifies the stored copy and returns. When no stored copy verifies, the put repairs the
object: a damaged loose file is replaced atomically by the new, verified bytes, and a damaged packed copy
gets a good loose copy beside it (packs are never rewritten). Every read is verified against the digest;
when one copy of an object fails, the others (in other packs, or loose) are tried before the read fails.
A damaged pack index is rebuilt in memory from its pack's record headers; it never hides other packs.
Packs accumulate one per build: past :data:`CONSOLIDATE_AT`, a commit merges the small ones into a
new pack (records verified, then copied byte for byte) and removes them (:meth:`LocalStore.consolidate`).
Formats: docs/formats/store-v1.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import mmap
import os
import queue
import re
import stat
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

from graven.errors import BackendError, DigestMismatchError, GravenError, IntegrityError
from graven.home import make_dir, make_dirs
from graven.model.digest import Digest
from graven.runtime import end_queue, host_token, pid_runs

if TYPE_CHECKING:
    import zstandard

__all__ = ["LOOSE_THRESHOLD", "LocalStore", "PackBatch"]

LOOSE_THRESHOLD = 1 << 20  # objects this large are stored loose, uncompressed
MAX_PACK_BYTES = 256 << 20  # a batch starts a new pack past this size
MAX_DELTA_DEPTH = 16
CONSOLIDATE_AT = 16  # more packs than this: a batch's commit merges the small ones (:meth:`consolidate`)
STALE_TMP_SECONDS = 24 * 3600
_CHUNK = 1 << 20

PACK_MAGIC = b"GRVNPACK\x00\x00\x00\x01"
IDX_MAGIC = b"GRVNIDX\x00\x00\x00\x00\x01"
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DELTA = 2  # zstd with another object's bytes as a raw-content dictionary
_RECORD = struct.Struct(">32sBQQ")  # digest, codec, raw size, stored length (+32-byte base if delta)
_IDX_ENTRY = struct.Struct(">32sQQQB")  # digest, record offset, stored length, raw size, codec


class _Location(NamedTuple):  # a tuple: one per object of every pack, made whenever a store opens
    pack: Path
    offset: int  # of the record header
    stored: int
    size: int
    codec: int


class _Table(dict[bytes, "_Location | int"]):
    """The loaded index: digest -> where the copy read first is. A value is a _Location, or, for the
    entries of a checked index file (nearly all), a handle into that file's bytes (kept in
    ``bodies``; the file's number << 32 | the entry's): loading makes no object per entry but its
    key, ~0.6 us an entry instead of ~1.8 (a million objects: ~0.6 s instead of ~1.8)."""

    __slots__ = ("bodies",)

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[Path, bytes]] = []  # (pack, its index file's bytes), never removed

    def where(self, raw: bytes) -> _Location | None:
        """The location of ``raw``, if listed."""
        value = self.get(raw)
        return self.location(value) if isinstance(value, int) else value

    def location(self, handle: int) -> _Location:
        """The location a handle stands for."""
        pack, body = self.bodies[handle >> 32]
        _raw, offset, stored, size, codec = _IDX_ENTRY.unpack_from(
            body, _IDX_HEADER + (handle & _ENTRY_MASK) * _IDX_ENTRY.size
        )
        return _Location(pack, offset, stored, size, codec)

    def pack_of(self, value: _Location | int) -> Path:
        """The pack a value places its copy in."""
        return self.bodies[value >> 32][0] if isinstance(value, int) else value.pack

    def add_body(self, pack: Path, data: bytes) -> bool:
        """List the entries of a checked index file ``data`` by handle; False (nothing added) when
        one of them is listed already or twice (a copy in another pack: the caller lists them one by
        one, the others as further copies)."""
        size = _IDX_ENTRY.size
        count = _entries_in(len(data))
        keys = [data[at : at + 32] for at in range(_IDX_HEADER, _IDX_HEADER + count * size, size)]
        base = len(self.bodies) << 32
        new = dict(zip(keys, range(base, base + count), strict=True))
        if len(new) != count or not self.keys().isdisjoint(new):
            return False
        self.bodies.append((pack, data))
        self.update(new)
        return True


_ENTRY_MASK = (1 << 32) - 1


_HEX64 = re.compile("[0-9a-f]{64}")
# No packed object is larger (packs hold objects under LOOSE_THRESHOLD, and manifests: 4 GiB is a tree
# of some 30 million files); a size past it is damage, refused before anything is allocated for it.
_MAX_PACKED_SIZE = 1 << 32
# An index entry is only where to look: a record it says starts this far in, or whose read would be
# larger than one chunk, is first checked against the pack file's size, so that a damaged entry (in an
# index file whose checksum was made again) is corruption, not an attempt to allocate its length or an
# offset past what pread(2) takes.
_MAX_OFFSET = 1 << 62
_IDX_HEADER = len(IDX_MAGIC) + 8
_POINT_LOOKUPS = 32  # lookups served by binary search before the whole index is loaded (at least)
_RELOADS = 8  # index reloads a read makes while the packs it finds are merged away under it
_WHOLE_CODECS = (CODEC_RAW, CODEC_ZSTD)  # what read_many decodes itself


def _what(digest: Digest, location: _Location) -> str:
    return f"object {digest} in {location.pack.name}"


class _PackGoneError(IntegrityError):
    """The pack file that held a copy is gone (its index remains): that copy is missing, not corrupt."""


def _release_maps(maps: list[tuple[Path, mmap.mmap]]) -> None:
    for _pack, mapped in maps:
        with contextlib.suppress(BufferError):
            mapped.close()


def _read_only_store(root: Path, exc: OSError) -> bool:
    """Whether ``exc``, from making the store's directories, says that this user may only read the
    existing store at ``root`` (a read-only mount, or another user's home): readers go on without the
    directories that could not be made."""
    if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
        return False
    return os.path.isdir(root) and (exc.errno == errno.EROFS or not os.access(root, os.W_OK))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    import zstandard

    return zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()


class _VerifyingReader(io.RawIOBase):
    """Streams a loose object and raises IntegrityError at EOF when the bytes do not match."""

    def __init__(self, handle: io.BufferedReader, digest: Digest, what: str) -> None:
        super().__init__()
        self._handle = handle
        self._digest = digest
        self._what = what
        self._hash = hashlib.sha256()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n: int = self._handle.readinto(buffer)
        if n:
            self._hash.update(memoryview(buffer)[:n])
            return n
        if not self._done:
            self._done = True
            actual = self._hash.hexdigest()
            if actual != self._digest.hex:
                raise DigestMismatchError(
                    expected=str(self._digest), actual=f"sha256:{actual}", what=self._what
                )
        return 0

    def close(self) -> None:
        self._handle.close()
        super().close()


class LocalStore:
    """A write-once object store in a local directory. Create with :meth:`at`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loose = root / "sha256"
        self._loose_prefix = f"{self._loose}/"
        self._packs = root / "pack"
        self._tmp = root / "tmp"
        self._unmade: OSError | None = None  # why at() could not make the store's directories
        self._index: _Table | None = None  # the copy each object is read from first
        self._extra: dict[bytes, list[_Location]] = {}  # further packed copies (concurrent writers)
        self._damaged: dict[str, str] = {}  # index file name -> what is wrong with it or its pack
        self._seen_idx: set[str] = set()
        # Before the whole index is loaded, a few reads look objects up in the index files directly
        # (binary search in a memory map): a command that reads three objects does not build a table
        # of every object of every pack.
        self._point_left = _POINT_LOOKUPS
        self._point_maps: list[tuple[Path, mmap.mmap]] | None = None
        self._point_stale = False  # index files were added since they were mapped (refresh_index)
        self._packs_mtime = -1
        self._fds: dict[Path, int] = {}
        # descriptors and maps of packs merged away (consolidate), closed once no read or point
        # lookup is using one (_leave): another thread may be reading through them
        self._retired_fds: list[int] = []
        self._retired_maps: list[tuple[Path, mmap.mmap]] = []
        self._busy = 0  # reads (and point lookups) between taking a descriptor (a map) and being done
        self._loading: _Table | None = None  # the table _packed is filling
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread zstd contexts (see _contexts)

    @classmethod
    def at(cls, root: Path) -> LocalStore:
        """Open (creating if needed) the store at ``root``. What is made is 0755 whatever the umask
        (:func:`graven.home.make_dirs`): under umask 000 any user could otherwise delete the packs."""
        try:
            make_dirs(root)
            made = [make_dir(root / sub) for sub in ("sha256", "pack", "tmp")]
            if any(made):  # their entries durable before anything is published in them
                _fsync_dir(root)
        except OSError as exc:
            if _read_only_store(root, exc):
                # a copy without its empty directories (a backup that left out tmp/), on a read-only
                # mount or another user's: reading needs none of them, and a write says what it could not
                store = cls(root)
                store._unmade = exc
                return store
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
            reason = exc.strerror or str(exc)
            raise BackendError(f"cannot create the object store at {root}: {reason}{where}") from exc
        return cls(root)

    # -- lookup ----------------------------------------------------------------------------------

    def loose_path(self, digest: Digest) -> Path:
        """Where a loose object lives (whether or not it exists)."""
        return self._loose / digest.hex[:2] / digest.hex[2:]

    def _loose_name(self, hex_digest: str) -> str:
        """Where a loose object lives, as a string (a stat of it costs no Path)."""
        return f"{self._loose_prefix}{hex_digest[:2]}/{hex_digest[2:]}"

    def loose_inode(self, hex_digest: str) -> tuple[int, int] | None:
        """(device, inode) of the loose object ``hex_digest``, or None when it is not stored loose:
        a deployed file must never be that inode (writing it would change the store)."""
        try:
            st = os.lstat(f"{self._loose_prefix}{hex_digest[:2]}/{hex_digest[2:]}")
        except (OSError, ValueError):
            return None
        return st.st_dev, st.st_ino

    def _packed(self) -> _Table:
        index = self._index
        if index is not None:
            return index
        with self._lock:
            if self._index is None:
                loading = _Table()
                self._loading = loading
                try:
                    self._load_new_indexes(loading)
                except BaseException:  # nothing half-loaded is kept: the next call starts again
                    self._seen_idx.clear()
                    self._extra.clear()
                    self._damaged.clear()
                    self._packs_mtime = -1
                    raise
                finally:
                    self._loading = None
                self._index = loading
            return self._index

    def _locate(self, raw: bytes) -> _Location | None:
        """Where the first pack (in name order) that holds ``raw`` has it, as the loaded index says;
        before it is loaded, for the first few lookups, by binary search in each pack index file.
        A point lookup that finds nothing, or an index it cannot search, falls back to the loaded
        index; a location it finds is only where to look (every read verifies the record header and
        the bytes, and a copy that fails is recovered through the loaded index)."""
        index = self._index
        if index is not None or self._point_left <= 0:
            return (index if index is not None else self._packed()).where(raw)
        self._point_left -= 1
        try:
            found = self._point_lookup(raw)
        except (OSError, ValueError):
            found = None
        if found is not None:
            return found
        if os.path.exists(self._loose_name(raw.hex())):
            return None  # stored loose (a large file): read there, no table of every packed object
        return self._packed().where(raw)

    def _point_lookup(self, raw: bytes) -> _Location | None:
        self._enter()  # no map this lookup searches is closed under it (see _leave)
        try:
            return self._search_maps(raw)
        finally:
            self._leave()

    def _search_maps(self, raw: bytes) -> _Location | None:
        maps = self._point_maps
        if maps is None or self._point_stale:
            maps = self._map_indexes()
        entry = _IDX_ENTRY
        step = entry.size
        for pack, mapped in maps:  # each laid out as an index (checked when mapped: _checked)
            count = _entries_in(len(mapped))
            low, high = 0, count
            while low < high:
                middle = (low + high) // 2
                at = _IDX_HEADER + middle * step
                if mapped[at : at + 32] < raw:
                    low = middle + 1
                else:
                    high = middle
            if low < count:
                digest, offset, stored, size, codec = entry.unpack_from(mapped, _IDX_HEADER + low * step)
                if digest == raw:
                    return _Location(pack, offset, stored, size, codec)
        return None

    def _listed(self, raw: bytes) -> _Location | bool:
        """Whether a pack index lists ``raw``: for a writer, which verifies a copy it is told of (by
        reading it) and writes one it is not told of. So point lookups serve while they last: one
        that finds nothing (an index file added since they were mapped) only costs a second copy,
        as the loaded index would (it is not reloaded for this either). A point lookup gives the
        location it found, which the writer verifies (:meth:`_verify_at`) without a second lookup:
        a build that says how many objects it adds (:meth:`expect_lookups`) takes one each."""
        if self._index is None and self._point_left > 0:
            self._point_left -= 1
            try:
                found = self._point_lookup(raw)
                return found if found is not None else False
            except (OSError, ValueError):
                pass
        return raw in self._packed()

    def _verify_listed(self, digest: Digest, listed: _Location | bool) -> None:
        """Verify an object :meth:`_listed` told of: at the location it found, if any."""
        if isinstance(listed, _Location):
            self._verify_at(digest, listed)
        else:
            self.verify(digest)

    def expect_lookups(self, count: int) -> None:
        """A hint: about ``count`` objects are about to be looked up one by one (a verify of every
        object of an artifact, the blobs a build adds). When that is more than point lookups should
        serve, the whole index is loaded now, not once they are spent."""
        if count > self._lookups_left():
            self._packed()

    def _lookups_left(self) -> int:
        """How many more lookups point lookups may serve before the index is loaded (none once it is)."""
        if self._index is not None or self._point_left <= 0:
            return 0
        if self._point_maps is None:
            try:
                self._map_indexes()
            except (OSError, ValueError):
                return 0
        return self._point_left

    def _map_indexes(self) -> list[tuple[Path, mmap.mmap]]:
        """The pack index files mapped for point lookups: all of them the first time, which sets how
        many lookups they may serve (:func:`_point_budget`); after :meth:`refresh_index`, those added
        since (refresh_index lets go of the maps of index files merged away; one another process
        merges away later stays mapped: what it finds no longer reads, and the loaded index is
        asked then)."""
        with self._lock:
            self._point_stale = False
            old = self._point_maps
        known = {pack.name for pack, _mapped in old or ()}
        maps: list[tuple[Path, mmap.mmap]] = []
        names = sorted(n for n in os.listdir(self._packs) if n.endswith(".idx"))
        for name in names:
            idx = self._packs / name
            if idx.with_suffix(".pack").name in known:
                continue
            try:
                fd = os.open(idx, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # merged away since the listing (another process): the rest are mapped
            try:
                if os.fstat(fd).st_size < _IDX_HEADER + 32:
                    continue
                mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            if _checked(mapped) and os.path.exists(idx.with_suffix(".pack")):
                with contextlib.suppress(OSError, AttributeError):
                    # a search touches ~20 scattered entries: no readahead around each one when
                    # the index is not in the page cache (a cold disk, a large store)
                    mapped.madvise(mmap.MADV_RANDOM)
                maps.append((idx.with_suffix(".pack"), mapped))
            else:  # damaged, or its pack is gone: the loaded index deals with it (and says so)
                mapped.close()
        with self._lock:
            if self._point_maps is old:
                if old is None:
                    self._point_left = max(self._point_left, _point_budget(maps))
                    self._point_maps = maps
                else:  # a new list: a lookup may be iterating the old one
                    self._point_maps = sorted([*old, *maps], key=lambda item: item[0].name)
                return self._point_maps
            current = self._point_maps
        _release_maps(maps)  # another thread mapped them first
        return current if current is not None else []

    def _load_new_indexes(self, index: _Table, *, force: bool = False) -> None:
        """Add the entries of indexes not loaded yet; called with the lock held. Each index is added
        whole or not at all, so an error (the disk failing) leaves nothing half-loaded. A table the
        store dropped meanwhile (a merge reset it: ``_reset_index``) is left alone: loading into it
        would mark the indexes seen for the table that replaces it, which would then stay empty."""
        if index is not self._index and index is not self._loading:
            return
        try:
            mtime = os.stat(self._packs).st_mtime_ns
            if mtime == self._packs_mtime and not force:
                return  # most likely no pack was added since the last scan (has() may be stale)
            names = sorted(n for n in os.listdir(self._packs) if n.endswith(".idx"))
        except OSError as exc:
            raise BackendError(f"cannot list {self._packs}: {exc}") from exc
        extra = self._extra
        listed = set(names)
        gone = self._seen_idx - listed
        opened = {pack for pack in self._fds if f"{pack.stem}.idx" not in listed}  # point lookups' too
        if gone or opened:  # merged into another pack and removed (consolidate): let go of them
            self._drop_packs({self._packs / f"{name[:-4]}.pack" for name in gone} | opened, index)
            self._seen_idx -= gone
        for name in names:
            if name in self._seen_idx:
                continue
            idx = self._packs / name
            pack = idx.with_suffix(".pack")
            entries = self._index_entries(idx, pack)
            if entries is None:
                continue  # its pack is gone: its objects are missing (looked at again next scan)
            if isinstance(entries, bytes):  # a checked index file
                if index.add_body(pack, entries):
                    self._seen_idx.add(name)
                    continue
                entries = list(_IDX_ENTRY.iter_unpack(entries[_IDX_HEADER:-32]))
            for digest, offset, stored, size, codec in entries:
                if digest not in index:  # the first pack that holds an object serves it
                    index[digest] = _Location(pack, offset, stored, size, codec)
                else:  # another copy, tried when the first one does not verify
                    extra.setdefault(digest, []).append(_Location(pack, offset, stored, size, codec))
            self._seen_idx.add(name)
        self._packs_mtime = mtime

    def _drop_packs(self, packs: set[Path], index: _Table) -> None:
        """Forget the copies in ``packs`` (removed with their indexes) and retire their descriptors
        (closed once no read uses them: :meth:`_leave`), so that a long-lived reader neither keeps
        their disk space nor reads them any more; objects with no other copy are looked up again
        (another index, or loose). Called with the lock held."""
        self._drop_locations(packs, index)
        for pack in packs:
            fd = self._fds.pop(pack, None)
            if fd is not None:  # another thread may be reading through it: see _leave
                self._retired_fds.append(fd)
            self._damaged.pop(pack.with_suffix(".idx").name, None)

    def _drop_locations(self, packs: set[Path], index: _Table) -> None:
        """Take the copies in ``packs`` out of ``index`` and the further copies (an object read first
        from another copy, if it has one). Called with the lock held."""
        pack_of = index.pack_of
        for raw in [raw for raw, value in index.items() if pack_of(value) in packs]:
            others = [loc for loc in self._extra.pop(raw, ()) if loc.pack not in packs]
            if others:
                index[raw] = others.pop(0)
                if others:
                    self._extra[raw] = others
            else:
                del index[raw]
        for raw, locations in list(self._extra.items()):
            kept = [loc for loc in locations if loc.pack not in packs]
            if len(kept) != len(locations):
                if kept:
                    self._extra[raw] = kept
                else:
                    del self._extra[raw]

    def _index_entries(self, idx: Path, pack: Path) -> bytes | list[tuple[bytes, int, int, int, int]] | None:
        """The checked bytes of one index file; its entries rebuilt from the pack's record headers when
        it is damaged; None when the pack file is gone. Damage is recorded for :meth:`damage`."""
        if not os.path.exists(pack):
            if os.path.exists(idx):
                self._damaged[idx.name] = f"{pack.name} is missing (its index {idx.name} remains)"
            return None
        try:
            entries = _read_index_bytes(idx)
        except FileNotFoundError:  # merged away (consolidate) since the listing
            return None
        except IntegrityError as exc:
            scanned = _scan_pack(pack)
            scanned.extend(_confirmed_entries(idx, pack, {entry[0] for entry in scanned}))
            self._damaged[idx.name] = f"{exc}; {len(scanned)} objects recovered from {pack.name}"
            return scanned
        self._damaged.pop(idx.name, None)
        return entries

    def damage(self) -> list[str]:
        """What is wrong with the packs found so far (a damaged index, an index whose pack is gone),
        one sentence naming the file each; empty when nothing is."""
        self._packed()
        with self._lock:
            return sorted(self._damaged.values())

    def missing_error(self, digest: Digest) -> IntegrityError:
        """The error for an object that no copy holds; it names the damage that may explain it."""
        damage = "; ".join(self.damage())
        return IntegrityError(f"object {digest} is missing from the store{'; ' if damage else ''}{damage}")

    def refresh_index(self) -> None:
        """Make the packs added since the last scan (by this or another process) visible: loaded into
        the index when it is loaded, else to point lookups (the next one maps their index files)."""
        with self._lock:
            index = self._index
            if index is not None:
                self._load_new_indexes(index, force=True)
                return
            self._point_stale = True
            try:
                listed = {n for n in os.listdir(self._packs) if n.endswith(".idx")}
            except OSError:
                return
            # packs merged away (consolidate): their descriptors and maps are let go of, as a load
            # of the index would (:meth:`_load_new_indexes`), so that their disk space is freed
            self._drop_packs({pack for pack in self._fds if f"{pack.stem}.idx" not in listed}, _Table())
            maps = self._point_maps or []
            kept = [item for item in maps if f"{item[0].stem}.idx" in listed]
            if len(kept) != len(maps):
                self._retired_maps.extend(item for item in maps if f"{item[0].stem}.idx" not in listed)
                self._point_maps = kept
        self._enter()
        self._leave()  # closes the retired descriptors now, unless a read is using one

    def has(self, digest: Digest) -> bool:
        """True when the object is stored (loose or packed). Before the whole index is loaded, a few
        calls look in the index files directly (as reads do, :meth:`_locate`): a deploy, a rollback or
        a drift check asks about one artifact, and must not build a table of every object the store
        holds (a store of a million objects: ~2 s and ~250 MB). Only a found object is answered that
        way, and only when its pack holds a record of it at the place the index gives; anything else
        goes to the loaded index."""
        if self._index is None and self._point_left > 0:
            self._point_left -= 1
            try:
                found = self._point_lookup(digest.raw)
                if found is not None and self._record_at(found, digest.raw):
                    return True
            except (OSError, ValueError):
                pass
            if os.path.exists(self._loose_name(digest.hex)):
                return True  # stored loose (a large file): no table of every packed object for it
        index = self._packed()
        if digest.raw in index:
            return True
        hexd = digest.hex
        if os.path.exists(f"{self._loose_prefix}{hexd[:2]}/{hexd[2:]}"):
            return True
        # Another process may have committed a pack since we loaded the indexes (or merged some)
        return self._reload_until_found(digest.raw, force=False)

    def _record_at(
        self, location: _Location, raw: bytes, packs: dict[Path, tuple[int, int]] | None = None
    ) -> bool:
        """Whether the pack at ``location`` holds, whole, the record the index entry describes
        (:func:`_holds_record`; the object's bytes are verified when read, as always). ``packs``:
        the packs the caller has open, with their sizes (it closes them); else the pack is opened for
        this and closed (has() reads no object)."""
        pack, offset, stored, size, codec = location
        opened = packs.get(pack) if packs is not None else None
        if opened is None:
            fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
            try:
                opened = (fd, os.fstat(fd).st_size)
            except OSError:
                os.close(fd)
                raise
            if packs is not None:
                packs[pack] = opened
        try:
            return _holds_record(*opened, (raw, offset, stored, size, codec))
        finally:
            if packs is None:
                os.close(opened[0])

    def _pointed_out(self, hexes: list[str]) -> set[str]:
        """The digests among ``hexes`` (canonical) that point lookups find, each confirmed by its
        record header in the pack (what has() accepts); the lookups are taken from the budget."""
        self._point_left -= len(hexes)
        found: set[str] = set()
        packs: dict[Path, tuple[int, int]] = {}
        try:
            for h in hexes:
                raw = bytes.fromhex(h)
                location = self._point_lookup(raw)
                if location is not None and self._record_at(location, raw, packs):
                    found.add(h)
        finally:
            for fd, _size in packs.values():
                os.close(fd)
        return found

    def _reload_until_found(self, raw: bytes, *, force: bool) -> bool:
        """Load the indexes added since, again while the pack directory keeps changing (packs merged
        away under this reader as it loads), until ``raw`` is found; whether it was."""
        for attempt in range(_RELOADS):
            index = self._packed()
            with self._lock:
                if index is not self._index:  # reset by a merge meanwhile: the new table, again
                    continue
                before = self._packs_mtime
                self._load_new_indexes(index, force=force or attempt > 0)
                changed = self._packs_mtime != before
            if raw in index:
                return True
            if not changed:
                return False
        return raw in self._packed()

    def missing(self, hexes: Iterable[str]) -> set[str]:
        """The sha256 hex digests among ``hexes`` that are not stored: one pass against the pack
        indexes, then a look at loose objects (and at packs added since) for the rest. Fewer than
        the point lookups left are looked up in the index files (see :meth:`has`); only what they
        do not find is looked for in the loaded index."""
        canonical = _HEX64.fullmatch
        wanted = list(hexes)
        if len(wanted) <= self._lookups_left():
            valid = [h for h in wanted if canonical(h)]
            try:
                found = self._pointed_out(valid)
            except (OSError, ValueError):
                found = set()
            loose = self._loose_name
            wanted = [h for h in wanted if h not in found and not (canonical(h) and os.path.exists(loose(h)))]
            if not wanted:
                return set()
        index = self._packed()
        absent = {h for h in wanted if not (canonical(h) and bytes.fromhex(h) in index)}
        if not absent:
            return absent
        index = self._packed()  # the current table (a merge may have reset it)
        with self._lock:
            self._load_new_indexes(index)
        prefix = self._loose_prefix
        return {
            h
            for h in absent
            if not canonical(h)
            or (bytes.fromhex(h) not in index and not os.path.exists(f"{prefix}{h[:2]}/{h[2:]}"))
        }

    def loose_names(self) -> set[str]:
        """The hex digests of every loose object (one directory scan)."""
        names: set[str] = set()
        try:
            with os.scandir(self._loose) as subdirs:
                for sub in subdirs:
                    if len(sub.name) == 2:
                        names.update(sub.name + item for item in os.listdir(sub.path))
        except OSError as exc:
            raise BackendError(f"cannot list {self._loose}: {exc}") from exc
        return names

    # -- reading ---------------------------------------------------------------------------------

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        """This thread's zstd contexts: one is never used by two threads at once (zstandard's are not
        thread-safe; readers in threads of one store corrupted the heap)."""
        contexts: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(
            self._local, "contexts", None
        )
        if contexts is None:
            contexts = self._local.contexts = _zstd()
        return contexts

    def _read_packed(self, digest: Digest, location: _Location, depth: int = 0) -> bytes:
        """Read and verify one packed copy (no other copy is tried)."""
        try:
            self._enter()
            try:
                fd = self._pack_fd(location.pack)
                want = _RECORD.size + 32 + location.stored
                if (want > _CHUNK or location.offset >= _MAX_OFFSET) and (
                    location.offset + _RECORD.size + location.stored > os.fstat(fd).st_size
                ):
                    raise IntegrityError(
                        f"{_what(digest, location)}: its index entry runs past the end of the pack file"
                    )
                # one read for header and payload: the header is 49 bytes (81 for a delta)
                blob = os.pread(fd, want, location.offset)
            finally:
                self._leave()
        except FileNotFoundError:
            self._forget_pack(location.pack)
            raise _PackGoneError(f"{_what(digest, location)}: the pack file is missing") from None
        except OSError as exc:
            if exc.errno == errno.EBADF:  # closed by another thread: its pack was merged away
                raise _PackGoneError(f"{_what(digest, location)}: the pack was merged away") from None
            raise BackendError(f"cannot read {location.pack}: {exc}") from exc
        return self._record(digest, location, memoryview(blob), 0, depth)

    def _recover(self, digest: Digest, error: IntegrityError, failed: _Location, depth: int) -> bytes:
        """The slow path after the copy at ``failed`` did not verify (``error``): every other packed
        copy, then the loose one. The first that verifies is returned (and a packed one is read first
        from then on); when none does, the first corruption found is raised, or a missing error when
        no copy is left at all. When a copy's pack file was gone (merged into a new pack by
        :meth:`consolidate`), the indexes added since are loaded and their copies tried too."""
        raw = digest.raw
        index = self._packed()
        with self._lock:
            others = [loc for loc in (index.where(raw), *self._extra.get(raw, ())) if loc is not None]
        # a copy only a point lookup found (in an index file mapped before its pack was merged away,
        # say) that the loaded index does not list is no copy: its failure is not the object's
        # corruption
        known = failed in others
        gone = isinstance(error, _PackGoneError)
        corrupt = None if gone or not known else error
        tried = {failed}
        for fresh in range(_RELOADS + 1):
            if fresh:
                if not gone:
                    break
                gone = False  # a pack merged away again since the last reload: load again
                index = self._packed()
                with self._lock:
                    self._load_new_indexes(index, force=True)
                    others = [loc for loc in (index.where(raw), *self._extra.get(raw, ())) if loc is not None]
                if all(loc in tried for loc in others):
                    break
            for location in others:
                if location in tried:
                    continue
                tried.add(location)
                try:
                    data = self._read_packed(digest, location, depth)
                except _PackGoneError:
                    gone = True
                    continue
                except IntegrityError as exc:
                    corrupt = corrupt or exc
                    continue
                self._prefer(raw, location)
                return data
            try:
                loose = self._read_loose(digest)
            except IntegrityError as exc:
                raise (corrupt or exc) from None
            if loose is not None:
                return loose
        if corrupt is not None:
            raise corrupt
        raise self.missing_error(digest)

    def _read_loose(self, digest: Digest) -> bytes | None:
        """The verified bytes of the loose copy, or None when there is none."""
        path = self.loose_path(digest)
        try:
            with path.open("rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        actual = hashlib.sha256(data)
        if actual.digest() != digest.raw:
            raise DigestMismatchError(
                expected=str(digest), actual=f"sha256:{actual.hexdigest()}", what=f"object {digest}"
            )
        return data

    def _prefer(self, raw: bytes, location: _Location) -> None:
        """Read the object from the copy at ``location`` first from now on (it verified)."""
        with self._lock:
            index = self._index
            current = None if index is None else index.where(raw)
            if index is None or current == location:
                return
            others = [loc for loc in self._extra.get(raw, ()) if loc != location]
            if current is not None:
                others.insert(0, current)
            index[raw] = location
            self._extra[raw] = others

    def _forget_pack(self, pack: Path) -> None:
        """Drop the copies in a pack file that has disappeared: objects without another copy then
        read as missing, and :meth:`has` says so. Rare, so a walk of the whole index is fine."""
        with self._lock:
            idx = pack.with_suffix(".idx").name
            if os.path.exists(pack.with_suffix(".idx")):  # else merged into another pack and removed
                self._damaged[idx] = f"{pack.name} is missing (its index {idx} remains)"
            if self._index is not None:
                self._drop_locations({pack}, self._index)

    def _record(
        self, digest: Digest, location: _Location, blob: memoryview, at: int, depth: int = 0
    ) -> bytes:
        """Decode and verify the record of ``digest`` found at ``blob[at:]``."""
        start = at + _RECORD.size
        if len(blob) < start:
            raise IntegrityError(f"{_what(digest, location)}: pack file is truncated")
        raw = digest.raw
        rec_digest, codec, size, stored = _RECORD.unpack_from(blob, at)
        if (
            rec_digest != raw
            or codec != location.codec
            or stored != location.stored
            or size != location.size
            or size > _MAX_PACKED_SIZE
        ):
            raise IntegrityError(f"{_what(digest, location)}: record header does not match the index")
        base: Digest | None = None
        if codec == CODEC_ZSTD_DELTA:
            base = Digest.from_bytes(bytes(blob[start : start + 32]))
            start += 32
        payload = blob[start : start + stored]
        if len(payload) != stored:
            raise IntegrityError(f"{_what(digest, location)}: pack file is truncated")
        data = self._decode(digest, location, codec, payload, size, base=base, depth=depth)
        if hashlib.sha256(data).digest() != raw:
            actual = hashlib.sha256(data).hexdigest()
            raise DigestMismatchError(
                expected=str(digest), actual=f"sha256:{actual}", what=_what(digest, location)
            )
        return data

    def read_many(self, digests: Iterable[Digest]) -> Generator[bytes, None, None]:
        """The objects' bytes, in order, each verified against its digest (as :meth:`read`).

        Meant for many small objects (each is held in memory whole): packed ones are read from a
        memory map of their pack, without a system call or a stream object per object.
        """
        import zstandard

        table: _Table | None = None  # many: one table; few: each looked up in the index files
        if not isinstance(digests, Sized) or len(digests) > self._lookups_left():
            table = self._packed()
        locate = self._locate
        bodies = table.bodies if table is not None else []
        entry_at = _IDX_ENTRY.unpack_from
        entry_size, mask = _IDX_ENTRY.size, _ENTRY_MASK
        views: dict[Path, memoryview | None] = {}
        decompress = self._contexts()[1].decompress
        frame_size = zstandard.frame_content_size
        unpack = _RECORD.unpack_from
        sha256 = hashlib.sha256
        header = _RECORD.size
        last: Path | None = None
        view: memoryview | None = None
        try:
            for digest in digests:
                raw = digest.raw
                value = locate(raw) if table is None else table.get(raw)
                data: bytes | None = None
                if value is not None:
                    if isinstance(value, int):  # a handle: its entry, without a _Location made
                        pack, body = bodies[value >> 32]
                        _raw, offset, stored, size, codec = entry_at(
                            body, _IDX_HEADER + (value & mask) * entry_size
                        )
                    else:
                        pack, offset, stored, size, codec = value
                    if pack is not last:
                        view = views[pack] if pack in views else views.setdefault(pack, self._map(pack))
                        last = pack
                    start = offset + header
                    if (
                        view is not None
                        and codec in _WHOLE_CODECS
                        and start + stored <= len(view)
                        and size <= _MAX_PACKED_SIZE
                        and unpack(view, offset) == (raw, codec, size, stored)
                    ):
                        if codec == CODEC_RAW:
                            data = bytes(view[start : start + stored])
                        else:
                            try:  # a frame that says another size: the slow path says why
                                if frame_size(view[start : start + stored]) in (-1, size):
                                    data = decompress(view[start : start + stored], max_output_size=size)
                            except zstandard.ZstdError:
                                data = None
                if data is None or sha256(data).digest() != raw:
                    yield self._read_any(digest)  # everything else: other copies, the precise errors
                    continue
                yield data
        finally:
            for view in views.values():
                if view is not None:
                    base = view.obj
                    view.release()
                    with contextlib.suppress(BufferError):  # a slice still alive: closed when freed
                        cast(mmap.mmap, base).close()

    def _map(self, pack: Path) -> memoryview | None:
        """A read-only map of a pack file, or None to read it with pread(2) (say, an empty file). The
        map holds a descriptor of its own: the store's may be closed once it is made."""
        self._enter()
        try:
            return memoryview(mmap.mmap(self._pack_fd(pack), 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):
            return None
        finally:
            self._leave()

    def _enter(self) -> None:
        """A read is about to use a pack descriptor: none is closed until it is done with it."""
        with self._lock:
            self._busy += 1

    def _leave(self) -> None:
        """A read is done with its descriptor; when no other is using one, close the retired ones (of
        packs merged away): closed only then, since a closed number is soon another file's. So are
        the retired maps of point lookups (of indexes merged away, or all of them after a merge): kept
        until then, a process committing batch after batch kept every one, and the disk space of the
        index files merged away."""
        with self._lock:
            self._busy -= 1
            if self._busy or not (self._retired_fds or self._retired_maps):
                return
            retired, self._retired_fds = self._retired_fds, []
            maps, self._retired_maps = self._retired_maps, []
        _release_maps(maps)
        for fd in retired:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _pack_fd(self, pack: Path) -> int:
        """An open descriptor of a pack file, kept for the store's lifetime (packs never change)."""
        fd = self._fds.get(pack)
        if fd is None:
            fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
            with self._lock:
                other = self._fds.setdefault(pack, fd)
            if other != fd:
                os.close(fd)
                fd = other
        return fd

    def close(self) -> None:
        """Close the pack descriptors."""
        with self._lock:
            fds = [*self._fds.values(), *self._retired_fds]
            self._fds, self._retired_fds = {}, []
            maps = [*(self._point_maps or []), *self._retired_maps]
            self._point_maps, self._retired_maps = None, []
        _release_maps(maps)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _decode(
        self,
        digest: Digest,
        location: _Location,
        codec: int,
        payload: memoryview,
        size: int,
        *,
        base: Digest | None,
        depth: int,
    ) -> bytes:
        if codec == CODEC_RAW:
            return bytes(payload)
        import zstandard

        try:
            declared = zstandard.frame_content_size(payload)
            if declared not in (-1, size):  # zstd would allocate what a damaged frame header says
                raise IntegrityError(
                    f"{_what(digest, location)}: cannot be decompressed (its frame says {declared} "
                    f"bytes, its record {size})"
                )
            if codec == CODEC_ZSTD:
                return self._contexts()[1].decompress(payload, max_output_size=size)
            if codec == CODEC_ZSTD_DELTA and base is not None:
                if depth >= MAX_DELTA_DEPTH:
                    raise IntegrityError(f"{_what(digest, location)}: delta chain is too long")
                try:
                    base_bytes = self._read_any(base, depth + 1)
                except IntegrityError as exc:
                    if depth:  # named once, by the object read (not once per link of the chain)
                        raise
                    # a base that no copy holds may be a damaged record naming one that never was
                    raise IntegrityError(
                        f"{_what(digest, location)}: its delta base cannot be read: {exc}"
                    ) from None
                dictionary = zstandard.ZstdCompressionDict(
                    base_bytes, dict_type=zstandard.DICT_TYPE_RAWCONTENT
                )
                return zstandard.ZstdDecompressor(dict_data=dictionary).decompress(
                    payload, max_output_size=size
                )
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{_what(digest, location)}: cannot be decompressed ({exc})") from None
        raise IntegrityError(f"{_what(digest, location)}: unknown codec {codec}")

    def _read_any(self, digest: Digest, depth: int = 0) -> bytes:
        location = self._locate(digest.raw)
        if location is not None:
            try:
                return self._read_packed(digest, location, depth)
            except IntegrityError as exc:  # this copy is damaged or gone: another one may do
                return self._recover(digest, exc, location, depth)
        with self.open(digest) as stream:
            return stream.read()

    def read(self, digest: Digest) -> bytes:
        """The object's bytes, verified against its digest."""
        return self._read_any(digest)

    def open(self, digest: Digest) -> BinaryIO:
        """A stream of the object's bytes; a mismatch raises IntegrityError when the end is read."""
        location = self._locate(digest.raw)
        if location is not None:
            try:
                return io.BytesIO(self._read_packed(digest, location))
            except IntegrityError as exc:
                return io.BytesIO(self._recover(digest, exc, location, 0))
        path = self.loose_path(digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            if self._reload_until_found(digest.raw, force=True):
                return self.open(digest)
            raise self.missing_error(digest) from None
        except OSError as exc:
            raise BackendError(f"cannot open {path}: {exc}") from exc
        reader = _VerifyingReader(handle, digest, f"object {digest}")
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=_CHUNK))

    def verify(self, digest: Digest) -> None:
        """Re-hash one object; raise IntegrityError when it is missing or when no copy verifies."""
        self._verify_at(digest, self._locate(digest.raw))

    def _verify_at(self, digest: Digest, location: _Location | None) -> None:
        """:meth:`verify`, with the copy at ``location`` (where a lookup found it) tried first."""
        if location is not None:
            try:
                self._read_packed(digest, location)
            except IntegrityError as exc:
                self._recover(digest, exc, location, 0)
            return
        with self.open(digest) as stream:
            while stream.read(_CHUNK):
                pass

    def list(self) -> Iterator[Digest]:
        """Every stored object, packed ones first."""
        seen = set(self._packed())
        for raw in seen:
            yield Digest.from_bytes(raw)
        for sub in sorted(self._loose.iterdir()):
            for item in sorted(sub.iterdir()):
                digest = Digest(sub.name + item.name)
                if digest.raw not in seen:
                    yield digest

    # -- writing ---------------------------------------------------------------------------------

    def _tmp_file(self, prefix: str) -> tuple[int, Path]:
        # the writer's pid, its start time and host: a later clean_tmp keeps the files of a writer that
        # still runs, and a pid used again (a container's 1) is not taken for it
        writer = _writer_name()
        path = self._tmp / f"{prefix}-{writer}-{threading.get_ident()}-{time.monotonic_ns()}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise self.write_error(exc) from exc
        return fd, path

    @contextlib.contextmanager
    def scratch_dir(self, prefix: str) -> Iterator[Path]:
        """A private (0700) directory in ``tmp/`` for work that makes no object (``push`` writes the
        archive it uploads there, ``pull`` what it downloads), removed when the block ends. In the
        home, not in ``$TMPDIR``: a pull of a large artifact fits where the store does (a tmpfs /tmp
        may be small), and it is named as temp files are (``PREFIX-PID-START-HOST-...``; ``prefix``
        without ``-``), so that :meth:`clean_tmp` removes one a killed process left, and never one
        a running process uses."""
        import shutil
        import tempfile

        try:
            path = Path(tempfile.mkdtemp(prefix=writer_prefix(f"{prefix}-"), dir=self._tmp))
        except OSError as exc:
            raise self.write_error(exc) from exc
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def write_error(self, exc: OSError) -> BackendError:
        """The one-line error for a write into the store that failed (a full disk, a read-only
        file system): the store stays as it was, nothing half-written becomes visible."""
        if self._unmade is not None and exc.errno == errno.ENOENT:  # in a directory at() could not make
            exc = self._unmade
        return BackendError(f"cannot write to the object store in {self.root}: {exc.strerror or exc}")

    def _publish_loose(self, tmp: Path, digest: Digest) -> None:
        """Move a fsynced temp file holding the verified bytes of ``digest`` into place. A loose copy
        that is already there and verifies is kept (an intact object is never replaced); a damaged one
        is replaced atomically by the temp file (rename), which repairs the object. Either way the
        directory is fsynced before this returns, so the object's entry is durable before the caller
        commits a row that names it."""
        final = self.loose_path(digest)
        try:
            # 0755 whatever the umask, as the store's own directories; a new fan-out directory's own
            # entry is made durable too, or a crash could lose it with every object linked in it
            if make_dir(final.parent):
                _fsync_dir(self._loose)
            os.chmod(tmp, 0o444)
            try:  # link(2) fails if the object exists (say, another writer won the race)
                os.link(tmp, final)
            except FileExistsError:
                if self._loose_intact(final, digest):
                    # kept, and its entry made durable below all the same: its writer may have been
                    # killed between its link and its fsync (~0.1 ms; mostly a large file that a
                    # build or an import adds again, just written whole to tmp/ and fsynced)
                    tmp.unlink()
                else:
                    os.rename(tmp, final)  # same digest, same content: the damaged copy is restored
            else:
                tmp.unlink()
            _fsync_dir(final.parent)
        except OSError as exc:
            raise BackendError(f"cannot store object {digest}: {exc}") from exc

    @staticmethod
    def _loose_intact(path: Path, digest: Digest) -> bool:
        """Whether the loose file at ``path`` hashes to ``digest`` (False when it has gone)."""
        try:
            with path.open("rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").digest()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return actual == digest.raw

    def _write_loose(self, digest: Digest, data: bytes) -> None:
        """Write ``data``, whose digest the caller has checked, as the loose object ``digest``."""
        fd, tmp = self._tmp_file("obj")
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise self.write_error(exc) from exc
            self._publish_loose(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _repair(self, digest: Digest, data: bytes) -> None:
        """Store a good copy of an object none of whose stored copies verifies. ``data`` is hashed
        first: only bytes that match the digest ever replace anything."""
        actual = hashlib.sha256(data)
        if actual.digest() != digest.raw:
            raise DigestMismatchError(
                expected=str(digest),
                actual=f"sha256:{actual.hexdigest()}",
                what=f"new content for the damaged object {digest}",
            )
        self._write_loose(digest, data)

    def put(self, data: bytes) -> Digest:
        """Store bytes as a loose object. Content already stored is verified and not written again,
        unless no stored copy verifies: then the verified bytes repair it (see :meth:`_publish_loose`)."""
        digest = Digest(hashlib.sha256(data).hexdigest())
        if self.has(digest):
            try:
                self.verify(digest)
                return digest
            except IntegrityError:
                pass  # missing, or no copy verifies: the loose copy written below repairs it
        self._write_loose(digest, data)
        return digest

    def put_stream(self, stream: BinaryIO, size: int | None = None) -> Digest:
        """Store a stream as a loose object without holding it in memory.

        With ``size``, exactly that many bytes are read (a short stream is an error). An intact loose
        copy is kept; a damaged one is replaced by the streamed bytes (hashed as they were written).
        """
        tmp, digest = self._stream_to_tmp(stream, size)
        try:
            self._publish_loose(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest

    def _stream_to_tmp(self, stream: BinaryIO, size: int | None) -> tuple[Path, Digest]:
        """Write a stream to a fsynced temp file of the store, hashing it: the file and its digest (the
        caller publishes it with :meth:`_publish_loose`, or removes it)."""
        fd, tmp = self._tmp_file("obj")
        hasher = hashlib.sha256()
        remaining = size
        try:
            with os.fdopen(fd, "wb") as handle:
                while remaining is None or remaining > 0:
                    want = _CHUNK if remaining is None else min(_CHUNK, remaining)
                    chunk = stream.read(want)
                    if not chunk:
                        if remaining:
                            raise BackendError(f"stream ended {remaining} bytes early")
                        break
                    hasher.update(chunk)
                    try:
                        handle.write(chunk)
                    except OSError as exc:  # the store's disk (a read error of the stream is the source's)
                        raise self.write_error(exc) from exc
                    if remaining is not None:
                        remaining -= len(chunk)
                try:
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError as exc:
                    raise self.write_error(exc) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, Digest(hasher.hexdigest())

    def put_file(self, path: Path) -> Digest:
        """Store a file from disk."""
        with path.open("rb") as handle:
            return self.put_stream(handle)

    @contextlib.contextmanager
    def batch(self) -> Iterator[PackBatch]:
        """Add many objects and commit them at once; on error nothing becomes visible."""
        writer = PackBatch(self)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def consolidate(self, *, above: int | None = None) -> int:
        """Merge the smallest packs into one when there are more than ``above``, so that every command
        does not open, map and search one index per build ever made (:func:`rollup` picks them: the
        packs left form a geometric progression). Every record is verified before it is copied, byte
        for byte (a delta keeps naming its base by digest), into the new pack, which is published as
        a batch's is; only then are the merged packs removed (index first). A pack with a record that
        does not verify is not removed. One process at a time (``consolidate.lock``; another one at
        it: nothing is done). Returns how many packs were merged and removed."""
        try:
            names = sorted(n[:-4] for n in os.listdir(self._packs) if n.endswith(".idx"))
        except OSError:
            return 0
        if len(names) <= (CONSOLIDATE_AT if above is None else above):
            return 0
        return _when_merges_excluded(self, self._merge_small_packs)

    def _merge_small_packs(self) -> int:
        self._remove_orphan_packs()
        sizes: list[tuple[int, str]] = []
        for name in sorted(n[:-4] for n in os.listdir(self._packs) if n.endswith(".idx")):
            with contextlib.suppress(OSError):  # gone: left out
                sizes.append((os.stat(self._packs / f"{name}.pack").st_size, name))
        # only the indexes of the packs merged are read: the largest pack of a store of a million
        # objects has an index of ~55 MB, which a merge of the small ones never needs
        packs: list[tuple[int, str, list[tuple[bytes, int, int, int, int]]]] = []
        for size, name in sorted(sizes)[: rollup(size for size, _name in sizes)]:
            try:
                packs.append((size, name, list(_read_index(self._packs / f"{name}.idx"))))
            except (OSError, GravenError):  # gone, or damaged: left as it is (verify names it)
                continue
        if len(packs) < 2:
            return 0
        chosen = packs
        fd, tmp = self._tmp_file("pack")
        written: list[tuple[bytes, int, int, int, int]] = []
        damaged: set[str] = set()
        try:
            sha = hashlib.sha256(PACK_MAGIC)
            with os.fdopen(fd, "wb") as out:
                out.write(PACK_MAGIC)
                offset = len(PACK_MAGIC)
                seen: set[bytes] = set()
                for _size, name, entries in chosen:
                    pack = self._packs / f"{name}.pack"
                    for raw, at, stored, size, codec in entries:
                        if raw in seen:
                            continue
                        location = _Location(pack, at, stored, size, codec)
                        try:
                            self._read_packed(Digest.from_bytes(raw), location)  # verified
                            length = _RECORD.size + (32 if codec == CODEC_ZSTD_DELTA else 0) + stored
                            record = os.pread(self._pack_fd(pack), length, at)
                        except IntegrityError:
                            damaged.add(name)
                            continue
                        if len(record) != length:
                            damaged.add(name)
                            continue
                        out.write(record)
                        sha.update(record)
                        written.append((raw, offset, stored, size, codec))
                        offset += length
                        seen.add(raw)
                out.flush()
                os.fsync(out.fileno())
            merged = f"pack-{sha.hexdigest()}"
            _publish_pack(self, tmp, merged, written, merging=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        removed = 0
        for _size, name, _entries in chosen:
            # the merge may give the very bytes of a chosen pack (a merge killed before it removed its
            # sources, merged again with them; a pack holding another's objects): that one stays
            if name in damaged or name == merged:
                continue
            with contextlib.suppress(OSError):
                (self._packs / f"{name}.idx").unlink()  # first: no reader finds the index without its pack
                (self._packs / f"{name}.pack").unlink()
                removed += 1
        with contextlib.suppress(OSError):
            _fsync_dir(self._packs)
        self._reset_index({self._packs / f"{name}.pack" for _s, name, _e in chosen if name not in damaged})
        return removed

    def _remove_orphan_packs(self) -> int:
        """Remove :func:`_orphan_packs`; the caller holds ``consolidate.lock`` exclusively, so no batch
        is between finding such a pack already there and renaming the index that names it. Returns
        how many were removed."""
        removed = 0
        for pack in _orphan_packs(self._packs):
            with contextlib.suppress(OSError):
                os.unlink(pack)
                removed += 1
        return removed

    def _clean_orphan_packs(self) -> int:
        """Remove the day-old pack files without an index at a build's or an import's start: a merge
        removes them too, but a store of :data:`CONSOLIDATE_AT` packs or fewer never merges. Only under
        an exclusive hold of ``consolidate.lock``, not waited for (while a merge or a batch that
        publishes a pack already there holds it, nothing is removed: the next build tries again), and
        they are looked for again under it. Returns how many were removed."""
        if not _orphan_packs(self._packs):  # the common case: no lock taken (nor its file made)
            return 0
        return _when_merges_excluded(self, self._remove_orphan_packs)

    def _reset_index(self, removed: set[Path]) -> None:
        """Forget what was loaded about the packs (``removed`` are gone): the next lookup loads again.
        Their descriptors are retired (closed when no read uses one: :meth:`_leave`); the others stay."""
        with self._lock:
            self._index = None
            self._extra.clear()
            self._damaged.clear()
            self._seen_idx.clear()
            self._packs_mtime = -1
            maps, self._point_maps = self._point_maps, None
            for pack in removed:
                fd = self._fds.pop(pack, None)
                if fd is not None:
                    self._retired_fds.append(fd)
            if maps is not None:  # a point lookup may be searching them: closed by _leave
                self._retired_maps.extend(maps)
        self._enter()
        self._leave()  # closes the retired descriptors now, unless a read is using one

    def clean_tmp(self, *, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove temp files left by killed writers, and pack files left without their index a day ago
        (:meth:`_clean_orphan_packs`, whatever ``older_than``); return how many were removed. A temp
        file whose writer is known to be gone (this host and pid namespace, and no process of that pid
        and start time) goes at once: a review's kill-and-retry loop of a 100 MB import filled tmp/ by
        80 MB a kill. Any other (another host, another pid namespace, a name of an older graven) goes
        once it is ``older_than`` and its writer is not known to run. A scratch directory
        (:meth:`scratch_dir`) follows the same rule, its age that of its newest file."""
        import shutil

        removed = 0
        cutoff = time.time() - older_than
        if self._unmade is not None and not self._tmp.is_dir():  # nothing was left: a write says why
            return 0
        for item in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                state = _writer_state(item.name)
                if state == "alive":
                    continue
                st = item.lstat()
                if state == "gone" or _newest_mtime(item, st) < cutoff:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(item)
                    else:
                        item.unlink()
                    removed += 1
        return removed + self._clean_orphan_packs()


def _newest_mtime(item: Path, st: os.stat_result) -> float:
    """The mtime of temp file ``item`` (``st``: its lstat), or of a scratch directory the newest of its
    own and its files' (a download that still grows its file adds no entry to the directory)."""
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(item) as entries:
            for entry in entries:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat), or "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return ""
    fields = data.rpartition(b")")[2].split()
    return fields[19].decode() if len(fields) > 19 else ""


_HOST = host_token()
_WRITER: list[tuple[int, str]] = []  # (pid, "PID-START-HOST") of this process, once known


def _writer_name() -> str:
    """``PID-START-HOST`` of this process (made again in a forked child)."""
    pid = os.getpid()
    if not _WRITER or _WRITER[0][0] != pid:
        _WRITER[:] = [(pid, f"{pid}-{_started(pid)}-{_HOST}")]
    return _WRITER[0][1]


def writer_prefix(prefix: str) -> str:
    """``PREFIXPID-START-HOST-``: how a temp directory outside the store made by this process starts
    (``prefix`` ends with ``-``), so that :func:`remove_dead_dirs` can tell when its maker is gone."""
    return f"{prefix}{_writer_name()}-"


def remove_dead_dirs(directory: Path, prefix: str) -> int:
    """Remove this user's directories ``PREFIXPID-START-HOST-*`` (:func:`writer_prefix`) in
    ``directory`` whose maker is known to be gone (this host and pid namespace; never by age: the
    directory may be a shared $TMPDIR); how many. Best effort: an error leaves the entry."""
    import shutil

    removed = 0
    me = os.geteuid()
    try:
        names = [name for name in os.listdir(directory) if name.startswith(prefix)]
    except OSError:
        return 0
    for name in names:
        with contextlib.suppress(OSError):
            st = (directory / name).lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
                continue
            if _writer_state("x-" + name[len(prefix) :]) == "gone":
                shutil.rmtree(directory / name)
                removed += 1
    return removed


def _writer_state(name: str) -> str:
    """Whether the process that made the temp file ``name`` (``PREFIX-PID-START-HOST-...``,
    :meth:`_tmp_file`) still runs ("alive": a batch keeps its files until it commits, however long it
    takes, a slow ``curl | graven import -``), is known to be gone ("gone": this host and pid
    namespace, and no process of that pid with that start time), or cannot be told ("unknown": another
    host or namespace, a shared store; judged by its age alone)."""
    parts = name.split("-")
    if len(parts) < 5 or not parts[1].isdigit() or parts[3] != _HOST or len(parts[1]) > 10 or not parts[2]:
        return "unknown"  # (no start time: written where /proc could not be read)
    pid = int(parts[1])
    if not pid_runs(pid):
        return "gone"
    start = _started(pid)
    if not start:  # it runs, and its start cannot be read (hidepid): its age decides, as before
        return "unknown"
    return "alive" if start == parts[2] else "gone"  # the pid given again to another process


_MIN_COMPRESS = 64  # smaller objects are stored raw


def _stored_form(data: bytes, compressed: bytes) -> tuple[int, bytes]:
    """The codec and bytes a pack keeps for ``data``: its zstd frame when that saves 10%, else raw."""
    return (CODEC_ZSTD, compressed) if len(compressed) < len(data) * 0.9 else (CODEC_RAW, data)


class _PackWriter:
    """Owns the pack files of one batch; runs in its own thread so that compression and writing
    overlap with reading the source (zstd and write(2) release the GIL)."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._cctx = _zstd()[0]
        # zstd's C extension compresses a list in one call (the cffi backend has the name, and raises)
        self._many: Callable[..., Iterable[Any]] | None = getattr(
            self._cctx, "multi_compress_to_buffer", None
        )
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._offset = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._entries: list[tuple[bytes, int, int, int, int]] = []
        self._sealed: list[tuple[Path, str, list[tuple[bytes, int, int, int, int]]]] = []  # to publish
        self._queue: queue.Queue[list[tuple[bytes, bytes, int, bytes, bytes | None]] | None] = queue.Queue(
            maxsize=16
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="graven-pack-writer", daemon=True)
        self._thread.start()

    def submit(self, items: list[tuple[bytes, bytes, int, bytes, bytes | None]]) -> None:
        """Queue objects (digest, data, codec, base, payload); a None payload means: compress
        ``data`` if it pays. Batches keep the hand-over between threads cheap."""
        if self._error is not None:
            raise self._error
        self._queue.put(items)

    def _run(self) -> None:
        while (items := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._compress(items)
                    for item in items:
                        self._write_record(*item)
                except OSError as exc:  # a full disk, a read-only store: one line, exit 1
                    self._error = self._store.write_error(exc)
                except BaseException as exc:  # handed to the submitting thread
                    self._error = exc

    def _compress(self, items: list[tuple[bytes, bytes, int, bytes, bytes | None]]) -> None:
        """Compress the items that need it in one call, without the GIL (zstd's C extension
        compresses the whole list; each item its own frame, as compress() would make it); the
        compressed form replaces the payload where it pays."""
        todo = [at for at, item in enumerate(items) if item[4] is None and len(item[1]) >= _MIN_COMPRESS]
        if len(todo) < 2 or self._many is None:
            return  # each is compressed on its own by _write_record
        try:
            frames = self._many([items[at][1] for at in todo], threads=1)
        except NotImplementedError:  # zstandard's cffi backend (PyPy): one by one from now on
            self._many = None
            return
        for at, frame in zip(todo, frames, strict=True):
            digest, data, _, base, _ = items[at]
            codec, payload = _stored_form(data, frame.tobytes())
            items[at] = (digest, data, codec, base, payload)

    def _write_record(
        self, digest: bytes, data: bytes, codec: int, base: bytes, payload: bytes | None
    ) -> None:
        if self._fd is None or self._offset > MAX_PACK_BYTES:
            if self._fd is not None:
                self._seal_pack()
            self._open_pack()
        if payload is None:
            codec, payload = CODEC_RAW, data
            if len(data) >= _MIN_COMPRESS:
                codec, payload = _stored_form(data, self._cctx.compress(data))
        offset = self._offset
        self._write(_RECORD.pack(digest, codec, len(data), len(payload)) + base)
        self._write(payload)
        self._entries.append((digest, offset, len(payload), len(data), codec))

    def _open_pack(self) -> None:
        self._fd, self._tmp = self._store._tmp_file("pack")
        self._offset = 0
        self._hash = hashlib.sha256()
        self._entries = []
        self._write(PACK_MAGIC)

    def _write(self, data: bytes) -> None:
        self._buffer += data
        self._hash.update(data)
        self._offset += len(data)
        if len(self._buffer) >= _CHUNK:
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        if self._buffer and self._fd is not None:
            with memoryview(self._buffer) as view:
                done = 0
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            self._buffer.clear()

    def _seal_pack(self) -> None:
        """Finish the pack being written (fsynced, still a temp file): it is published with the batch's
        commit, not before, so that a batch that fails (a refused import past 256 MiB) leaves nothing."""
        assert self._fd is not None and self._tmp is not None
        try:
            self._flush_buffer()
            os.fsync(self._fd)
            os.close(self._fd)
        except OSError as exc:
            raise BackendError(f"cannot write a pack to {self._store._packs}: {exc.strerror or exc}") from exc
        self._fd = None
        self._sealed.append((self._tmp, f"pack-{self._hash.hexdigest()}", self._entries))
        self._tmp = None
        self._entries = []

    def _publish(self, tmp: Path, name: str, entries: list[tuple[bytes, int, int, int, int]]) -> None:
        _publish_pack(self._store, tmp, name, entries)

    def close(self, *, commit: bool) -> None:
        """Stop the thread; with ``commit``, publish every pack of the batch, else drop them."""
        end_queue(self._queue)
        self._thread.join()
        try:
            if commit and self._error is None and self._fd is not None:
                self._seal_pack()
            if commit and self._error is None:
                while self._sealed:
                    self._publish(*self._sealed[0])
                    self._sealed.pop(0)
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                self._tmp = None
            for tmp, _name, _entries in self._sealed:
                tmp.unlink(missing_ok=True)
            self._sealed = []
        if commit and self._error is not None:
            raise self._error


class PackBatch:
    """Writes small objects into new packs; large ones go loose. See :meth:`LocalStore.batch`."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._added: dict[bytes, int] = {}  # digest -> delta depth (0 = full)
        self._loose_tmps: dict[bytes, tuple[Path, Digest]] = {}  # large objects, published at commit
        self._writer: _PackWriter | None = None
        self._pending: list[tuple[bytes, bytes, int, bytes, bytes | None]] = []
        self._pending_bytes = 0
        # A snapshot of the loose objects, so that checking for a new object costs no stat(2).
        self._loose = store.loose_names()

    def __contains__(self, digest: Digest) -> bool:
        return digest.raw in self._added or self._store.has(digest)

    def add(self, data: bytes, *, delta_base: Digest | None = None, pack: bool = False) -> Digest:
        """Add bytes; already-stored content is verified, not rewritten (unless no stored copy
        verifies: then ``data`` repairs it, as :meth:`LocalStore.put`). Returns the digest.

        ``pack`` keeps even a large object in the pack (compressed, or as a delta against
        ``delta_base``): right for metadata such as manifests, which later versions resemble.
        """
        digest = Digest(hashlib.sha256(data).hexdigest())
        if digest.raw not in self._added:
            self._add(digest, data, delta_base, pack=pack or delta_base is not None)
        return digest

    def add_known(self, digest: Digest, data: bytes) -> None:
        """Add bytes whose digest the caller has just computed (saves a second hash)."""
        if digest.raw not in self._added:
            self._add(digest, data, None, pack=False)

    def _stored(self, digest: Digest) -> _Location | bool:
        """Whether the store held ``digest`` when the batch began (or a pack appeared since): where a
        point lookup found it, else whether it is listed or loose."""
        return self._store._listed(digest.raw) or digest.hex in self._loose

    def _add(self, digest: Digest, data: bytes, delta_base: Digest | None, *, pack: bool) -> None:
        stored = self._stored(digest)
        if stored:
            try:  # already stored: never rewritten, but checked ...
                self._store._verify_listed(digest, stored)
            except IntegrityError:  # ... and repaired when no copy verifies (loose, at once)
                self._store._repair(digest, data)
            self._added[digest.raw] = 0
        elif len(data) >= LOOSE_THRESHOLD and not pack:  # loose, published with the commit
            tmp, written = self._store._stream_to_tmp(io.BytesIO(data), len(data))
            self._keep_loose(tmp, written)
        else:
            self._append(digest, data, delta_base)

    def add_stream(self, stream: BinaryIO, size: int) -> Digest:
        """Add ``size`` bytes from a stream: small ones are packed, large ones streamed loose."""
        if size < LOOSE_THRESHOLD:
            data = stream.read(size)
            if len(data) != size:
                raise BackendError(f"stream ended {size - len(data)} bytes early")
            return self.add(data)
        tmp, digest = self._store._stream_to_tmp(stream, size)
        self._keep_loose(tmp, digest)
        return digest

    def _keep_loose(self, tmp: Path, digest: Digest) -> None:
        """A large object written to ``tmp``: published with the batch's commit when it is new; no
        temp file waits (taking disk) for one that is stored, which is checked instead."""
        raw = digest.raw
        if raw in self._added or raw in self._loose_tmps:
            tmp.unlink(missing_ok=True)  # added earlier in this batch
            return
        if digest.hex in self._loose:
            # stored loose: nothing becomes visible, and a damaged copy is repaired at once
            self._store._publish_loose(tmp, digest)
        elif listed := self._store._listed(raw):
            try:
                self._store._verify_listed(digest, listed)  # a packed copy is checked, as add() checks one
                tmp.unlink(missing_ok=True)
            except IntegrityError:
                self._loose_tmps[raw] = (tmp, digest)  # a good loose copy, with the commit
        else:
            self._loose_tmps[raw] = (tmp, digest)  # published with the batch's commit
        self._added[raw] = 0

    def _append(self, digest: Digest, data: bytes, delta_base: Digest | None) -> None:
        if self._writer is None:
            self._writer = _PackWriter(self._store)
        codec, payload, base_raw, depth = CODEC_RAW, None, b"", 0
        if delta_base is not None:
            delta = self._delta(data, delta_base)
            if delta is not None:
                payload, base_raw, depth = delta
                codec = CODEC_ZSTD_DELTA
        self._pending.append((digest.raw, data, codec, base_raw, payload))
        self._pending_bytes += len(data)
        if len(self._pending) >= 128 or self._pending_bytes >= _CHUNK:
            self._flush_pending()
        self._added[digest.raw] = depth

    def _delta(self, data: bytes, base: Digest) -> tuple[bytes, bytes, int] | None:
        import zstandard

        base_depth = self._added.get(base.raw)
        if base_depth is None:
            base_depth = self._store_depth(base)
        if base_depth is None or base_depth + 1 >= MAX_DELTA_DEPTH:
            return None
        try:
            base_bytes = self._store.read(base)
        except IntegrityError:
            return None
        dictionary = zstandard.ZstdCompressionDict(base_bytes, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        payload = zstandard.ZstdCompressor(level=3, dict_data=dictionary).compress(data)
        if len(payload) >= len(data) // 2:
            return None  # not similar enough to be worth a chain
        return payload, base.raw, base_depth + 1

    def _store_depth(self, digest: Digest) -> int | None:
        """Delta depth of a stored object, or None when it is not stored or unreadable."""
        current = digest
        for depth in range(MAX_DELTA_DEPTH):
            location = self._store._locate(current.raw)
            if location is None:
                return depth if self._store.has(current) else None
            if location.codec != CODEC_ZSTD_DELTA:
                return depth
            if location.offset >= _MAX_OFFSET:
                return None  # a damaged index entry: no delta against it
            try:
                with location.pack.open("rb") as handle:
                    header = os.pread(handle.fileno(), _RECORD.size + 32, location.offset)
            except OSError:
                return None  # the pack is gone: no delta against it
            if len(header) < _RECORD.size + 32 or header[:32] != current.raw:
                return None  # not the record the index names (an index whose checksum was made again)
            current = Digest.from_bytes(header[_RECORD.size : _RECORD.size + 32])
        return None

    def _flush_pending(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.submit(self._pending)
            self._pending = []
            self._pending_bytes = 0

    def commit(self) -> None:
        """Make every added object visible: the loose ones, then the packs (each pack first, then its
        index). Until then nothing of the batch is (a refused import leaves nothing in the store)."""
        try:
            while self._loose_tmps:
                raw = next(iter(self._loose_tmps))
                tmp, digest = self._loose_tmps[raw]
                self._store._publish_loose(tmp, digest)
                del self._loose_tmps[raw]
        except BaseException:
            self.abort()
            raise
        if self._writer is not None:
            self._flush_pending()
            self._writer.close(commit=True)
            self._store.refresh_index()  # our packs are visible to this store object at once
            # best effort: the batch is committed whatever happens here
            with contextlib.suppress(GravenError, OSError):
                self._store.consolidate()

    def abort(self) -> None:
        """Drop what the batch wrote: its packs and its loose objects' temp files."""
        for tmp, _digest in self._loose_tmps.values():
            tmp.unlink(missing_ok=True)
        self._loose_tmps.clear()
        if self._writer is not None:
            self._writer.close(commit=False)


def _publish_pack(
    store: LocalStore,
    tmp: Path,
    name: str,
    entries: list[tuple[bytes, int, int, int, int]],
    *,
    merging: bool = False,
) -> None:
    """Publish one sealed pack (``tmp``, fsynced): its index is written (and fsynced) to a temp file
    first, so that a full disk leaves neither a pack without its index nor a partial index; then the
    pack is renamed into place, then the index (the commit point of the pack).

    The look and the renames are made under a shared hold of ``consolidate.lock`` (``merging``: the
    caller, a merge, holds it exclusively; a batch waits for a merge at work to finish). A pack already
    there under the same name (same bytes) is kept and ours dropped: without the hold a merge could
    remove that pack between our look and our index's rename, as a merged-away source or, a day-old
    pack without an index (a batch killed between its two renames), as an orphan (so could a build's
    cleanup: :meth:`LocalStore.clean_tmp`), and the batch would commit with its objects in no pack.
    A pack not there yet may be published by another batch (the same new objects) right after our
    look and merged away around our renames (its index removed before ours goes in, its pack after):
    without the hold our index would stay without its pack."""
    idx_tmp: Path | None = None
    try:
        body = bytearray(IDX_MAGIC + struct.pack(">Q", len(entries)))
        for entry in sorted(entries):
            body += _IDX_ENTRY.pack(*entry)
        body += hashlib.sha256(body).digest()
        fd, idx_tmp = store._tmp_file("idx")
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(idx_tmp, 0o444)
        pack = store._packs / f"{name}.pack"
        idx = store._packs / f"{name}.idx"
        os.chmod(tmp, 0o444)
        # under the hold whether or not the pack is there yet: another batch may publish the same
        # pack after our look, and a merge take it (index, then pack) around our renames, which
        # left our index without its pack
        with contextlib.nullcontext() if merging else _merges_held(store):
            if pack.exists():  # same name => same bytes: never rewritten, ours is dropped
                tmp.unlink()
            else:
                # its age counts from here: a merge or a build's cleanup removes a pack without its
                # index once it is a day old, and a long batch may have sealed it a day before its commit
                os.utime(tmp)
                os.rename(tmp, pack)
            os.rename(idx_tmp, idx)  # the commit point of this pack
            idx_tmp = None
        _fsync_dir(store._packs)
    except (OSError, BackendError) as exc:
        if idx_tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(idx_tmp)
        if isinstance(exc, BackendError):  # the lock: it names itself
            raise
        raise BackendError(f"cannot write a pack to {store._packs}: {exc.strerror or exc}") from exc


def _orphan_packs(packs: Path) -> list[Path]:
    """The pack files in ``packs`` without an index whose mtime is a day old (:data:`STALE_TMP_SECONDS`):
    what a merge killed between removing an index and its pack left, or a batch killed between renaming
    its pack and its index. A batch sets its pack's mtime as it renames it into place, a moment before
    its index, both under a shared hold of
    ``consolidate.lock`` (:func:`_publish_pack`), so whoever holds that lock exclusively may remove them."""
    cutoff = time.time() - STALE_TMP_SECONDS
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(packs) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(".pack") and not os.path.exists(packs / f"{name[:-5]}.idx"):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(Path(entry.path))
    return found


def _merges_excluded(store: LocalStore) -> int | None:
    """An exclusive hold of ``consolidate.lock``, not waited for: its descriptor (closing it releases
    the hold), or None when a merge or a batch that publishes its pack (:func:`_merges_held`)
    holds it, or the lock cannot be opened. Whoever holds it may remove packs."""
    import fcntl

    try:
        fd = os.open(store.root / "consolidate.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _when_merges_excluded(store: LocalStore, removal: Callable[[], int]) -> int:
    """``removal()`` (it removes packs: a merge, the orphans) under :func:`_merges_excluded`, and what it
    returns; 0, nothing done, when that hold cannot be had."""
    lock = _merges_excluded(store)
    if lock is None:
        return 0
    try:
        return removal()
    finally:
        os.close(lock)  # releases the lock


@contextlib.contextmanager
def _merges_held(store: LocalStore) -> Iterator[None]:
    """A shared hold of ``consolidate.lock``: no merge and no removal of orphan packs (which hold it
    exclusively, and skip when they cannot: :func:`_merges_excluded`) removes a pack while it is held;
    one at work now finishes first."""
    import fcntl

    lock = store.root / "consolidate.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # else named as the pack directory's fault, where nothing is wrong
        raise BackendError(
            f"cannot open {lock}: {exc.strerror or exc}; remove it (graven makes it again)"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the hold


def rollup(sizes: Iterable[int], factor: int = 2) -> int:
    """How many of the smallest packs to merge into one so that the packs left, sorted by size, form
    a geometric progression (each at least ``factor`` times the one before), as ``git repack
    --geometric`` does: the number of packs then stays logarithmic in the store's size, and each
    object is copied O(log n) times over the store's life. ``sizes`` in any order; 0 or >= 2."""
    ordered = sorted(sizes)
    n = len(ordered)
    top = n - 1  # the packs from ``top`` on already form a progression
    while top > 0 and ordered[top] >= factor * ordered[top - 1]:
        top -= 1
    if top == 0:
        return 0
    merged = top + 1
    total = sum(ordered[:merged])
    while merged < n and ordered[merged] < factor * total:  # the merged pack would break it again
        total += ordered[merged]
        merged += 1
    return merged if merged >= 2 else 0


def _checked(mapped: mmap.mmap) -> bool:
    """Whether a mapped pack index is laid out as one (magic, and a length that fits its count). Its
    checksum is not computed (~30 ms for the ~55 MB index of a million objects, on every command):
    what a lookup finds is only where to look, confirmed by the pack's record header where an
    answer depends on it, and a damaged index is recovered through the same confirmation
    (:func:`_confirmed_entries`), so the loaded index answers alike."""
    if mapped[: len(IDX_MAGIC)] != IDX_MAGIC:
        return False
    count: int = struct.unpack_from(">Q", mapped, len(IDX_MAGIC))[0]
    return _IDX_HEADER + count * _IDX_ENTRY.size + 32 == len(mapped)


def _point_budget(maps: list[tuple[Path, mmap.mmap]]) -> int:
    """How many lookups by binary search cost about half what loading the whole index costs, as
    measured here: a lookup ~5 us plus ~0.1 us for each step of the search in each index file,
    loading ~0.6 us an entry (a million objects: ~0.6 s and ~250 MB; ~3 ms for django's 6,000). A
    command that asks about few objects of a large store (a deploy of a small artifact after a year
    of builds) then never loads the index, and one that asks about most of them, without saying so
    first (:meth:`LocalStore.expect_lookups`), wastes at most about half a load."""
    entries = steps = 0
    for _pack, mapped in maps:
        count = _entries_in(len(mapped))
        entries += count
        steps += count.bit_length() + 2
    return int(0.3 * entries / (5 + 0.1 * steps))


def _read_index(idx: Path) -> Iterator[tuple[bytes, int, int, int, int]]:
    """The entries of a checked pack index: (sha256, record offset, stored size, size, codec)."""
    return _IDX_ENTRY.iter_unpack(_read_index_bytes(idx)[_IDX_HEADER:-32])


def _read_index_bytes(idx: Path) -> bytes:
    """The bytes of a pack index file, checked (magic, checksum, length)."""
    try:
        data = idx.read_bytes()
    except FileNotFoundError:
        raise  # merged into another pack and removed since it was listed: the caller looks again
    except OSError as exc:
        raise BackendError(f"cannot read pack index {idx}: {exc}") from exc
    header = len(IDX_MAGIC) + 8
    if len(data) < header + 32 or not data.startswith(IDX_MAGIC):
        raise IntegrityError(f"pack index {idx.name} is not a graven pack index")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise IntegrityError(f"pack index {idx.name} is corrupt (checksum mismatch)")
    (count,) = struct.unpack_from(">Q", data, len(IDX_MAGIC))
    if header + count * _IDX_ENTRY.size + 32 != len(data):
        raise IntegrityError(f"pack index {idx.name} is corrupt (wrong length)")
    return data


def _record_end(offset: int, stored: int, codec: int) -> int:
    """Where the record at ``offset`` of ``stored`` bytes ends in its pack (a delta names its base)."""
    return offset + _RECORD.size + (32 if codec == CODEC_ZSTD_DELTA else 0) + stored


def _holds_record(fd: int, end: int, entry: tuple[bytes, int, int, int, int]) -> bool:
    """Whether the pack open as ``fd`` (``end`` bytes long) holds, whole, the record an index entry
    (digest, offset, stored length, size, codec) describes: its header where the entry says, and its
    end inside the file. What a point lookup's "stored" and the rebuild of a damaged index
    (:func:`_confirmed_entries`) both require, so that they agree."""
    raw, offset, stored, size, codec = entry
    if offset >= _MAX_OFFSET or _record_end(offset, stored, codec) > end:
        return False
    header = os.pread(fd, _RECORD.size, offset)
    return len(header) == _RECORD.size and _RECORD.unpack(header) == (raw, codec, size, stored)


def _entries_in(length: int) -> int:
    """How many entries an index file of ``length`` bytes holds (laid out as one: :func:`_checked`)."""
    return (length - _IDX_HEADER - 32) // _IDX_ENTRY.size


def _confirmed_entries(idx: Path, pack: Path, known: set[bytes]) -> list[tuple[bytes, int, int, int, int]]:
    """The entries of a damaged index (not in ``known``) whose record header the pack holds where the
    entry says: a scan of the pack stops at its first damaged record, and the index still names the
    ones after it (point lookups find them so, :meth:`LocalStore.has`). Empty when the index's
    entries cannot even be told apart (a wrong length)."""
    try:
        data = idx.read_bytes()
        fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    found: list[tuple[bytes, int, int, int, int]] = []
    try:
        if len(data) < _IDX_HEADER + 32 or (len(data) - _IDX_HEADER - 32) % _IDX_ENTRY.size:
            return found
        end = os.fstat(fd).st_size
        for entry in _IDX_ENTRY.iter_unpack(data[_IDX_HEADER:-32]):
            if entry[0] not in known and _holds_record(fd, end, entry):
                found.append(entry)
                known.add(entry[0])
    except (OSError, struct.error):
        return found
    finally:
        os.close(fd)
    return found


def _scan_pack(pack: Path) -> list[tuple[bytes, int, int, int, int]]:
    """Rebuild the index entries of a pack whose index is damaged, from its record headers: every
    well-formed record up to the first that is not (a damaged length makes the rest unreachable).
    The entries are only where to look: every read still verifies what it finds there."""
    try:
        fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BackendError(f"cannot read {pack}: {exc.strerror or exc}") from exc
    entries: list[tuple[bytes, int, int, int, int]] = []
    try:
        end = os.fstat(fd).st_size
        if end < len(PACK_MAGIC) + _RECORD.size:
            return entries
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
            if data[: len(PACK_MAGIC)] != PACK_MAGIC:
                return entries
            offset = len(PACK_MAGIC)
            while offset + _RECORD.size <= end:
                digest, codec, size, stored = _RECORD.unpack_from(data, offset)
                start = offset + _RECORD.size + (32 if codec == CODEC_ZSTD_DELTA else 0)
                if codec > CODEC_ZSTD_DELTA or start + stored > end:
                    break
                if codec == CODEC_RAW and size != stored:
                    break
                entries.append((digest, offset, stored, size, codec))
                offset = start + stored
    except OSError as exc:
        raise BackendError(f"cannot read {pack}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return entries


def is_read_only(path: Path) -> bool:
    """True when nobody has write permission on ``path``."""
    return not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
