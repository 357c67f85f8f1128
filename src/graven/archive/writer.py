"""Deterministic tar archives of an artifact (``graven export``).

POSIX.1-2001 (pax) format: ustar headers, with a pax extended header only where ustar cannot hold a
value (long or non-ASCII names and link targets, sizes of 8 GiB and more). Entries come in manifest
order with each parent directory just before its first child; every entry has mtime = the commit time,
uid/gid 0 with empty owner names, and mode 0644/0755 (files), 0755 (directories), 0777 (symlinks). A
global pax header carries graven's metadata as a ``comment``, which tar ignores. The same artifact
always gives the same bytes. Headers are built here rather than with :mod:`tarfile`, which is several
times slower on trees of many small files.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from graven.errors import BackendError, InputError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest

__all__ = ["ARCHIVE_FORMAT", "ArchiveMeta", "compression_for", "write_archive"]

ARCHIVE_FORMAT = "graven.archive/v1"
BLOCK = 512
RECORD = 20 * BLOCK
_USTAR_MAX_SIZE = 8**11 - 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveMeta:
    """What the global header says about the artifact (claims, checked on import)."""

    digest: str
    name: str
    commit: str | None
    source_date_epoch: int
    pipeline: str | None = None  # graven.toml text, so that an import is self-contained

    def to_comment(self) -> str:
        """The canonical JSON carried in the pax ``comment`` record."""
        doc = {
            "commit": self.commit,
            "digest": self.digest,
            "format": ARCHIVE_FORMAT,
            "name": self.name,
            "pipeline": self.pipeline,
            "source_date_epoch": self.source_date_epoch,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compression_for(path: Path) -> str:
    """``tar``, ``gz`` or ``zst`` from the file name; anything else is an input error."""
    name = path.name
    if name.endswith(".tar"):
        return "tar"
    if name.endswith((".tar.gz", ".tgz")):
        return "gz"
    if name.endswith((".tar.zst", ".tzst")):
        return "zst"
    raise InputError(f"{path}: unknown archive type; use a name ending in .tar, .tar.gz or .tar.zst")


def _pax_record(key: str, value: str) -> bytes:
    payload = f" {key}={value}\n".encode()
    length = len(payload)
    digits = len(str(length))
    while len(str(length + digits)) != digits:
        digits += 1
    return f"{length + digits}".encode() + payload


_ZERO_IDS = b"0000000\x00" * 2  # uid, gid (and devmajor, devminor)
_MAGIC = b"ustar\x0000"
_CONSTANT_SUM = 2 * sum(_ZERO_IDS) + sum(_MAGIC) + 8 * ord(" ")  # the checksum field counts as spaces


def _header(
    name: bytes, *, mode: int, size: int, mtime: int, typeflag: bytes, linkname: bytes = b""
) -> bytes:
    """One ustar header block (built from byte strings: this runs once per entry of large trees)."""
    mode_f, size_f, mtime_f = b"%07o\x00" % mode, b"%011o\x00" % size, b"%011o\x00" % mtime
    checksum = (
        _CONSTANT_SUM + sum(name) + sum(mode_f) + sum(size_f) + sum(mtime_f) + typeflag[0] + sum(linkname)
    )
    return b"".join(
        (
            name.ljust(100, b"\x00"),
            mode_f,
            _ZERO_IDS,
            size_f,
            mtime_f,
            b"%06o\x00 " % checksum,
            typeflag,
            linkname.ljust(100, b"\x00"),
            _MAGIC,
            bytes(64),  # empty user and group names
            _ZERO_IDS,  # devmajor, devminor
            bytes(167),  # prefix and padding
        )
    )


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _pax_header(records: list[tuple[str, str]], *, mtime: int, kind: bytes, name: bytes) -> bytes:
    body = b"".join(_pax_record(k, v) for k, v in records)
    head = _header(name, mode=0o644, size=len(body), mtime=mtime, typeflag=kind)
    return head + body + _pad(len(body))


def _fits(value: str, limit: int) -> bool:
    return value.isascii() and len(value) <= limit


def entry_header(path: str, *, kind: bytes, mode: int, size: int, mtime: int, target: str = "") -> bytes:
    """The header block(s) of one entry, with a pax header first when ustar is not enough."""
    records: list[tuple[str, str]] = []
    name = path
    if not _fits(name, 100):
        records.append(("path", name))
        name = name.encode()[:99].decode(errors="ignore") if name.isascii() else "././@PaxName"
    link = target
    if target and not _fits(target, 100):
        records.append(("linkpath", target))
        link = "././@PaxLink"
    if size > _USTAR_MAX_SIZE:
        records.append(("size", str(size)))
    prefix = b""
    if records:
        prefix = _pax_header(records, mtime=mtime, kind=b"x", name=b"././@PaxHeader")
    header_size = 0 if size > _USTAR_MAX_SIZE else size
    return prefix + _header(
        name.encode(),
        mode=mode,
        size=header_size,
        mtime=mtime,
        typeflag=kind,
        linkname=link.encode(),
    )


def iter_archive(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
) -> Iterator[bytes]:
    """The archive's bytes, uncompressed, in pieces."""
    mtime = meta.source_date_epoch
    yield _pax_header([("comment", meta.to_comment())], mtime=mtime, kind=b"g", name=b"pax_global_header")
    emitted: set[str] = set()
    written = BLOCK  # bytes so far, for the final record padding
    for entry in manifest.entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in emitted:
                emitted.add(parent)
                block = entry_header(parent + "/", kind=b"5", mode=0o755, size=0, mtime=mtime)
                written += len(block)
                yield block
        if isinstance(entry, DirEntry):
            emitted.add(entry.path)
            block = entry_header(entry.path + "/", kind=b"5", mode=0o755, size=0, mtime=mtime)
        elif isinstance(entry, SymlinkEntry):
            block = entry_header(entry.path, kind=b"2", mode=0o777, size=0, mtime=mtime, target=entry.target)
        else:
            assert isinstance(entry, FileEntry)
            block = entry_header(entry.path, kind=b"0", mode=entry.mode, size=entry.size, mtime=mtime)
            yield block
            written += len(block)
            copied = 0
            with open_blob(entry.digest) as stream:
                while chunk := stream.read(_CHUNK):
                    copied += len(chunk)
                    yield chunk
            if copied != entry.size:
                raise BackendError(f"{entry.path}: object has {copied} bytes, manifest says {entry.size}")
            block = _pad(entry.size)
            written += entry.size
        written += len(block)
        yield block
    end = b"\0" * (2 * BLOCK)
    written += len(end)
    yield end + b"\0" * (-written % RECORD)


class _ThreadedSink:
    """Compresses and writes in a worker thread, so that reading objects and compressing overlap."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._write = write
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # handed over to the producer thread
                    self._error = exc

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def write_archive(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
    out: BinaryIO,
    compression: str,
) -> None:
    """Write the whole archive to ``out`` with the given compression (tar, gz, zst)."""
    compressor: BinaryIO | None = None
    if compression == "zst":
        import zstandard

        # Multi-threaded zstd: its output is the same whatever the number of workers (tested), so
        # every machine writes the same bytes, and the cores share the work.
        zstd = zstandard.ZstdCompressor(level=3, threads=-1)
        compressor = cast(BinaryIO, zstd.stream_writer(out, closefd=False))
    elif compression == "gz":
        compressor = cast(
            BinaryIO, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6)
        )
    target = compressor if compressor is not None else out
    sink = _ThreadedSink(target.write)
    pending = bytearray()
    try:
        for piece in iter_archive(manifest, meta, open_blob):
            pending += piece
            if len(pending) >= _CHUNK:
                sink.write(bytes(pending))
                pending.clear()
        if pending:
            sink.write(bytes(pending))
    finally:
        sink.close()
    if compressor is not None:
        compressor.close()


def write_archive_file(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
    path: Path,
) -> None:
    """Write the archive to ``path`` atomically (a temp file beside it, then rename)."""
    compression = compression_for(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            write_archive(manifest, meta, open_blob, handle, compression)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackendError(f"cannot write {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
