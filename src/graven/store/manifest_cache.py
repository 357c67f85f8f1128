"""A cache of parsed, validated manifests, so that a deploy, a rollback, an export or a drift check does
not parse and validate again (~20 ms for 7,000 entries) a manifest this home already parsed.

An entry means exactly one thing: "the manifest whose sha256 is D has these entries, and they passed
the checks of :meth:`graven.model.manifest.TreeManifest.of`". It is written by a build, from the
manifest it validated and stored under D, and by :func:`graven.service.artifacts.load_manifest`, from a
manifest read from the store under D (so its bytes hashed to D) and then parsed and validated.
``GRAVEN_HOME/cache/manifests/<D hex>`` (files 0600 in a 0700 directory) holds, format
``graven.mcache/v1``::

    b"graven.mcache/v1\\n" || b"graven/" + graven's version || b"\\n" || D (64 hex digits) || b"\\n"
    || n (8 bytes, big endian)
    || kinds (n bytes: f = file 0644, x = file 0755, l = symlink, d = empty directory)
    || sizes (n signed 64-bit integers, little endian; 0 for what is not a file)
    || sha256 of each file (32 bytes each, in entry order)
    || strings (UTF-8, joined by NUL: each entry's path, and after a symlink's path its target)
    || HMAC-SHA256 of all the above under the home's record key (:mod:`graven.deploy.recordkey`)

A validated path or target never holds a NUL, so the strings split back exactly. The tag binds the
digest, so an entry copied under another name is refused; an entry that cannot be read, whose tag
does not verify or that is malformed is ignored (the manifest is read from the store again), so the
cache can only make a command faster, never change its result. Whoever could forge an entry can read
``GRAVEN_HOME/keys`` and could as well rewrite the store's packs and the trust policy.

`graven verify` never uses the cache: it re-hashes the manifest in the store. Writing is best effort
(any failure, a read-only home say, only means the next command parses again), and at most
:data:`KEEP` entries and :data:`MAX_BYTES` in all are kept: the oldest are removed when a new one is
written. Writes and removals go through the directory opened without following symlinks. The directory
can be deleted at any time.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from graven import __version__
from graven.deploy.recordkey import TAG_SIZE, read_record_file, replace_file_at, tag, verify
from graven.errors import GravenError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry

__all__ = ["FORMAT", "KEEP", "MAX_BYTES", "ManifestCache", "decode", "encode"]

FORMAT = b"graven.mcache/v1\n"
# The rules the entries were validated under: an entry written by another graven version is a miss
# (a newer version may refuse what an older one accepted).
RULES = f"graven/{__version__}".encode()
KEEP = 32  # entries (~90 bytes per file: ~0.6 MB for 7,000 files)
MAX_BYTES = 64 << 20  # and at most this much in all (the newest entry is kept whatever its size)
_HEX = re.compile(r"[0-9a-f]{64}")
_KINDS = frozenset(b"fxld")


def encode(key: bytes, digest_hex: str, entries: Sequence[TreeEntry]) -> bytes:
    """The cache file for the manifest ``digest_hex`` whose (validated) entries are ``entries``."""
    kinds = bytearray()
    sizes = array.array("q")
    shas: list[bytes] = []
    strings: list[str] = []
    for entry in entries:
        if type(entry) is FileEntry:
            kinds.append(0x78 if entry.executable else 0x66)  # x, f
            sizes.append(entry.size)
            shas.append(bytes.fromhex(entry.sha256))
            strings.append(entry.path)
        elif type(entry) is SymlinkEntry:
            kinds.append(0x6C)  # l
            sizes.append(0)
            strings.append(entry.path)
            strings.append(entry.target)
        else:
            kinds.append(0x64)  # d
            sizes.append(0)
            strings.append(entry.path)
    if sys.byteorder == "big":
        sizes.byteswap()
    text = "\0".join(strings)
    if text.count("\0") != len(strings) - 1:
        raise ValueError("a path or target holds a NUL byte")
    data = b"".join(
        (
            FORMAT,
            RULES,
            b"\n",
            digest_hex.encode("ascii"),
            b"\n",
            len(kinds).to_bytes(8, "big"),
            bytes(kinds),
            sizes.tobytes(),
            b"".join(shas),
            text.encode("utf-8"),
        )
    )
    return data + tag(key, data)


def decode(key: bytes, digest_hex: str, data: bytes) -> tuple[TreeEntry, ...] | None:
    """The entries in ``data`` when it is a well-formed entry for ``digest_hex`` tagged under ``key``."""
    prefix = FORMAT + RULES + b"\n" + digest_hex.encode("ascii") + b"\n"
    head = len(prefix)
    if len(data) < head + 8 + TAG_SIZE or not verify(key, data[:-TAG_SIZE], data[-TAG_SIZE:]):
        return None
    if data[:head] != prefix:
        return None
    count = int.from_bytes(data[head : head + 8], "big")
    at = head + 8
    kinds = data[at : at + count]
    at += count
    sizes = array.array("q")
    size_bytes = count * sizes.itemsize
    if len(kinds) != count or not set(kinds) <= _KINDS or len(data) - TAG_SIZE < at + size_bytes:
        return None
    sizes.frombytes(data[at : at + size_bytes])
    if sys.byteorder == "big":
        sizes.byteswap()
    at += size_bytes
    n_files = kinds.count(b"f") + kinds.count(b"x")
    if at + 32 * n_files > len(data) - TAG_SIZE:
        return None
    sha_hex = data[at : at + 32 * n_files].hex()
    at += 32 * n_files
    try:
        strings = data[at:-TAG_SIZE].decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return None
    if len(strings) != count + kinds.count(b"l") or len(sha_hex) != 64 * n_files or "" in strings:
        return None
    if sizes and min(sizes) < 0:
        return None
    entries: list[TreeEntry] = []
    append = entries.append
    new = tuple.__new__  # FileEntry(...) without its Python-level __new__ (a NamedTuple's)
    names = iter(strings)
    file_at = 0
    for kind, size in zip(kinds, sizes, strict=True):
        if kind == 0x66 or kind == 0x78:  # noqa: PLR1714 (ints from bytes: a tuple test is slower)
            append(new(FileEntry, (next(names), sha_hex[file_at : file_at + 64], size, kind == 0x78)))
            file_at += 64
        elif kind == 0x6C:
            append(SymlinkEntry(next(names), next(names)))
        else:
            append(DirEntry(next(names)))
    return tuple(entries)


class ManifestCache:
    """Validated manifests' entries in ``directory``, under the record key ``record_key()`` gives
    (asked on first use only: a command that finds no entry reads no key)."""

    def __init__(self, directory: Path, record_key: Callable[[], bytes]) -> None:
        self.directory = directory
        self._record_key = record_key
        self._key: bytes | None = None
        self._off = False

    def _get_key(self) -> bytes | None:
        if self._key is None and not self._off:
            try:
                self._key = self._record_key()
            except (GravenError, OSError):
                self._off = True
        return self._key

    def get(self, digest_hex: str) -> tuple[TreeEntry, ...] | None:
        """The entries of the manifest ``digest_hex``, if this home has them (else None)."""
        if not _HEX.fullmatch(digest_hex):
            return None
        data = read_record_file(self.directory / digest_hex)
        if data is None:
            return None
        key = self._get_key()
        if key is None:
            return None
        try:
            return decode(key, digest_hex, data)
        except (ValueError, GravenError):  # a well-tagged entry that is still malformed
            return None

    def put(self, digest_hex: str, entries: Sequence[TreeEntry], *, key: bytes | None = None) -> None:
        """Keep the *validated* ``entries`` of the manifest ``digest_hex`` (tagged under ``key`` when
        given: a build, which makes the home's record key; else under the key ``record_key()`` gives);
        any error is ignored."""
        if not _HEX.fullmatch(digest_hex):
            return
        if key is None:
            key = self._get_key()
        if key is None:
            return
        try:
            data = encode(key, digest_hex, entries)
        except (ValueError, UnicodeEncodeError, OverflowError):  # a size past 2**63 - 1: not kept
            return
        with contextlib.suppress(OSError):
            fd = _open_directory(self.directory)
            try:
                replace_file_at(fd, digest_hex, data, mode=0o600)
                _prune(fd)
            finally:
                os.close(fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_directory(directory: Path) -> int:
    """``directory`` (made 0700 with its parent if missing) opened without following a symlink at
    either level, so that a write or a prune never lands outside the home."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory.parent, 0o700)
    parent = os.open(directory.parent, _DIR_FLAGS)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory.name, 0o700, dir_fd=parent)
        return os.open(directory.name, _DIR_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)


def _prune(dir_fd: int) -> None:
    """Remove the oldest entries beyond :data:`KEEP` entries or :data:`MAX_BYTES` in all (the newest
    is always kept), and the temp files of writers that died."""
    with os.scandir(dir_fd) as it:
        found = [(e.name, e.stat(follow_symlinks=False)) for e in it]
    entries = sorted(
        ((st.st_mtime_ns, st.st_size, name) for name, st in found if _HEX.fullmatch(name)), reverse=True
    )
    stale: list[str] = []
    total = 0
    for index, (_mtime, size, name) in enumerate(entries):
        total += size
        if index >= KEEP or (index > 0 and total > MAX_BYTES):
            stale.append(name)
    cutoff = time.time_ns() - 3600 * 10**9  # a live writer's temp file is left alone
    stale.extend(name for name, st in found if _is_temp(name) and st.st_mtime_ns < cutoff)
    for name in stale:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name
