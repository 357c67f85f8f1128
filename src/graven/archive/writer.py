"""Deterministic tar archives of an artifact (``graven export``).

POSIX.1-2001 (pax) format: ustar headers, with a pax extended header only where ustar cannot hold a
value (long or non-ASCII names and link targets, sizes of 8 GiB and more, commit times after 2242).
Entries come in manifest order with each parent directory just before its first child; every entry has
mtime = the commit time, uid/gid 0 with empty owner names, and mode 0644/0755 (files), 0755
(directories), 0777 (symlinks). A global pax header carries graven's metadata as a ``comment``, which
tar ignores. The archive ends with two zero blocks and is padded to a multiple of 10240 bytes (GNU tar's
record size). The same artifact always gives the same bytes. Headers are built here rather than with
:mod:`tarfile`, which is several times slower on trees of many small files.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast
from zlib import adler32

from graven.core.record import Frozen
from graven.errors import BackendError, GravenError, InputError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, TreeManifest
from graven.runtime import end_queue

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_FORMATS",
    "MAX_EPOCH",
    "ArchiveMeta",
    "check_output_dir",
    "compression_for",
    "epoch_problem",
    "write_archive",
    "write_archive_file",
    "write_error",
]

ARCHIVE_FORMAT = "graven.archive/v1"
BLOCK = 512
RECORD = 20 * BLOCK
_USTAR_MAX_SIZE = 8**11 - 1
_USTAR_MAX_TIME = 8**11 - 1  # 2242-03-16T12:56:31Z, the largest mtime of a ustar header
MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z
"""The largest ``source_date_epoch`` an archive carries (the smallest is 0): export writes it, a pax
``mtime`` record beyond what ustar holds, and import accepts it."""
_CHUNK = 1 << 20
_SMALL = 1 << 20  # files below this size are read whole; bigger ones are streamed

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

ReadMany = Callable[[Sequence[Digest]], Iterable[bytes]]
"""Verified contents of many objects, in order (:meth:`graven.store.local.LocalStore.read_many`)."""


class ArchiveMeta(Frozen):
    """What the global header says about the artifact (claims, checked on import)."""

    __slots__ = ("commit", "digest", "name", "pipeline", "source_date_epoch")
    _fields = ("digest", "name", "commit", "source_date_epoch", "pipeline")
    digest: str
    name: str
    commit: str | None
    source_date_epoch: int
    pipeline: str | None  # graven.toml text, so that an import is self-contained

    def __init__(
        self, digest: str, name: str, commit: str | None, source_date_epoch: int, pipeline: str | None = None
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "name", name)
        _set(self, "commit", commit)
        _set(self, "source_date_epoch", source_date_epoch)
        _set(self, "pipeline", pipeline)

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


def epoch_problem(value: object) -> str | None:
    """Why ``value`` cannot be an archive's ``source_date_epoch``, or None when it can: an integer (not
    a bool) from 0 to :data:`MAX_EPOCH`."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "it must be an integer"
    if not 0 <= value <= MAX_EPOCH:
        return f"it must be from 0 to {MAX_EPOCH} (9999-12-31T23:59:59Z)"
    return None


ARCHIVE_FORMATS = {"tar": "tar", "tar.gz": "gz", "tar.zst": "zst"}
"""An archive's format by name (``graven export --format``, the end of a file name) -> its compression
(what :func:`write_archive` takes)."""


def compression_for(path: Path) -> str:
    """``tar``, ``gz`` or ``zst`` from the file name's ending, in any case (``SHOP.TAR.GZ``, as import
    reads it); anything else is an input error."""
    name = path.name.lower()
    if name.endswith(".tar"):
        return "tar"
    if name.endswith((".tar.gz", ".tgz")):
        return "gz"
    if name.endswith((".tar.zst", ".tzst")):
        return "zst"
    raise InputError(
        f"{path}: unknown archive type; use a name ending in .tar, .tar.gz (.tgz) or .tar.zst (.tzst)"
    )


def _pax_record(key: str, value: str) -> bytes:
    payload = f" {key}={value}\n".encode()
    length = len(payload)
    digits = len(str(length))
    while len(str(length + digits)) != digits:
        digits += 1
    return f"{length + digits}".encode() + payload


_ZERO_IDS = b"0000000\x00" * 2  # uid, gid (and devmajor, devminor)
_MAGIC = b"ustar\x0000"
# After the link name: magic and version, empty user and group names, devmajor and devminor, prefix and
# padding.
_TAIL = _MAGIC + bytes(64) + _ZERO_IDS + bytes(167)
_SPACES_SUM = 8 * ord(" ")  # the checksum field counts as spaces


def _ustar_time(mtime: int) -> int:
    """``mtime`` clamped to what a ustar header holds (a pax ``mtime`` record carries the real one)."""
    return min(max(mtime, 0), _USTAR_MAX_TIME)


def _header(
    name: bytes, *, mode: int, size: int, mtime: int, typeflag: bytes, linkname: bytes = b""
) -> bytes:
    """One ustar header block (built from byte strings: this runs once per entry of large trees). An
    mtime that does not fit its 11 octal digits is clamped: the field never overflows into the next."""
    if not 0 <= mtime <= _USTAR_MAX_TIME:
        mtime = _ustar_time(mtime)
    head = b"%s%07o\x00%s%011o\x00%011o\x00" % (name.ljust(100, b"\x00"), mode, _ZERO_IDS, size, mtime)
    tail = typeflag + linkname.ljust(100, b"\x00") + _TAIL
    return head + b"%06o\x00 " % _checksum(head, tail) + tail


def _checksum(head: bytes, tail: bytes) -> int:
    """The sum of the bytes of a header: those before its checksum field and those after it."""
    if head.isascii() and tail.isascii() and len(head) + len(tail) <= 512:
        # Then the sum is below 65521, and Adler-32 keeps it (plus one) in its low half: one C call.
        return (adler32(tail, adler32(head)) & 0xFFFF) - 1 + _SPACES_SUM
    return sum(head) + sum(tail) + _SPACES_SUM


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
    if not 0 <= mtime <= _USTAR_MAX_TIME:
        records.append(("mtime", str(mtime)))  # the header holds the clamped value
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


def _read_whole(open_blob: Callable[[Digest], BinaryIO], digests: Sequence[Digest]) -> Iterator[bytes]:
    for digest in digests:
        with open_blob(digest) as stream:
            yield stream.read()


# After the checksum field: the typeflag, an empty link name, the rest (_TAIL); and what the checksum
# counts from its field on, minus one (Adler-32 starts at one).
_FILE_TAIL = b"0" + bytes(100) + _TAIL
_DIR_TAIL = b"5" + bytes(100) + _TAIL
_FILE_TAIL_SUM = _SPACES_SUM + sum(_FILE_TAIL) - 1
_DIR_TAIL_SUM = _SPACES_SUM + sum(_DIR_TAIL) - 1
_PADDING = [b"\0" * (-n % BLOCK) for n in range(BLOCK)]  # by size % BLOCK


class _Headers:
    """The headers of one archive's files and directories, as entry_header makes them, built faster
    in the common case: an ASCII name of at most 100 bytes and an mtime that fits its field."""

    def __init__(self, mtime: int) -> None:
        self.mtime = mtime
        mtime_f = b"%011o\x00" % _ustar_time(mtime)
        self._fast = 0 <= mtime <= _USTAR_MAX_TIME
        self._mtime_f = mtime_f
        self._modes = {False: b"%07o\x00" % 0o644 + _ZERO_IDS, True: b"%07o\x00" % 0o755 + _ZERO_IDS}
        self._dir_fields = b"%07o\x00" % 0o755 + _ZERO_IDS + b"%011o\x00" % 0 + mtime_f

    def file(self, path: str, size: int, executable: bool) -> bytes:
        """A regular file's header(s)."""
        if self._fast and len(path) <= 100 and path.isascii() and size <= _USTAR_MAX_SIZE:
            head = b"%s%s%011o\x00%s" % (
                path.encode().ljust(100, b"\x00"),
                self._modes[executable],
                size,
                self._mtime_f,
            )
            return _with_checksum(head, _FILE_TAIL, _FILE_TAIL_SUM)
        mode = 0o755 if executable else 0o644
        return entry_header(path, kind=b"0", mode=mode, size=size, mtime=self.mtime)

    def directory(self, path: str) -> bytes:
        """A directory's header(s); ``path`` without the trailing slash."""
        name = path + "/"
        if self._fast and len(name) <= 100 and name.isascii():
            head = name.encode().ljust(100, b"\x00") + self._dir_fields
            return _with_checksum(head, _DIR_TAIL, _DIR_TAIL_SUM)
        return entry_header(name, kind=b"5", mode=0o755, size=0, mtime=self.mtime)

    def parents(self, parent: str, emitted: set[str]) -> bytes:
        """Headers of ``parent`` and the directories above it not yet in the archive, outermost
        first (and now in ``emitted``, which always holds the directories above each of its members).
        """
        missing: list[str] = []
        while parent and parent not in emitted:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        blocks = b""
        for directory in reversed(missing):
            emitted.add(directory)
            blocks += self.directory(directory)
        return blocks


def _with_checksum(head: bytes, tail: bytes, tail_sum: int) -> bytes:
    """A header from the 148 ASCII bytes before its checksum field and the bytes after it, whose sum
    (with the field's spaces) is ``tail_sum`` + 1. The head's sum is below 65521, so Adler-32 keeps it,
    plus one, in its low half: one C call rather than a sum over the bytes."""
    return b"%s%06o\x00 %s" % (head, (adler32(head) & 0xFFFF) + tail_sum, tail)


class _Position:
    """Where the bytes an archive's generator handed out so far end, as what must follow them for a
    reader to find the archive cut: ``cut`` is empty when they end inside a file's data (its header
    went out, not all of its data); else, where an entry ends (a reader would take them for a whole
    archive), the padding of that entry's data and a header of :data:`FAILED_MARKER` without its data.
    Set before each piece is handed out, for the bytes up to that piece's end."""

    __slots__ = ("cut", "marker")

    def __init__(self, mtime: int) -> None:
        self.marker = entry_header(FAILED_MARKER, kind=b"0", mode=0o644, size=BLOCK, mtime=mtime)
        self.cut = b""

    def at_entry_end(self, padding: bytes = b"") -> None:
        self.cut = padding + self.marker


def iter_archive(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
    read_many: ReadMany | None = None,
    position: _Position | None = None,
) -> Iterator[bytes | bytearray]:
    """The archive's bytes, uncompressed, in pieces of about 1 MiB (a big file: its chunks).

    Files below 1 MiB come whole from ``read_many`` (every small file's digest, in manifest order:
    one call), or else from ``open_blob``; bigger files are streamed from ``open_blob``.

    When a read fails (a corrupt or missing object) or the consumer is interrupted (Ctrl-C), what
    was built so far is handed out before the error, ending inside a file's data: the failing file's
    header without its data, or a header of :data:`FAILED_MARKER` when the bytes so far end where an
    entry does. tar (GNU, bsdtar, Python's, Go's) takes an archive that ends where an entry ends as
    complete, with or without its end blocks, so a stream cut there (``graven export -o - | tar x``)
    would be extracted in part and with success. The last chunk of a streamed file goes out only once
    the end of the object was read, where a verified store read checks its digest, so that a corrupt
    file never goes out whole. ``position`` tells, for each piece handed out, where the bytes so far
    end (for a consumer interrupted between pieces: :func:`write_archive`).
    """
    mtime = meta.source_date_epoch
    at = position if position is not None else _Position(mtime)
    problem = epoch_problem(mtime)
    if problem is not None:
        raise InputError(f"source_date_epoch {mtime!r} cannot go in an archive: {problem}")
    headers = _Headers(mtime)
    out = bytearray(
        _pax_header([("comment", meta.to_comment())], mtime=mtime, kind=b"g", name=b"pax_global_header")
    )
    flushed = 0  # bytes handed out so far, for the final record padding
    inside = False  # whether the bytes so far end inside a file's data (its header went out, not all of it)
    try:
        small = [entry.digest for entry in manifest.files() if entry.size < _SMALL]
        contents = iter(read_many(small) if read_many is not None else _read_whole(open_blob, small))
        emitted: set[str] = set()
        for entry in manifest.entries:
            path = entry.path
            parent = path.rpartition("/")[0]
            if parent and parent not in emitted:
                out += headers.parents(parent, emitted)
            if isinstance(entry, FileEntry):
                size = entry.size
                out += headers.file(path, size, entry.executable)
                inside = size > 0
                if size < _SMALL:
                    data = next(contents)
                    if len(data) != size:
                        raise BackendError(f"{path}: object has {len(data)} bytes, manifest says {size}")
                    out += data
                else:
                    flushed += len(out)
                    at.cut = b""  # the header of a file of 1 MiB or more, without its data
                    yield out
                    out = bytearray()
                    copied = 0
                    held = b""  # the chunk read last: it goes out once the object is known to go on
                    with open_blob(entry.digest) as stream:
                        while chunk := stream.read(_CHUNK):
                            if held and copied <= size:  # never more than the header says
                                yield held  # the file's last chunk is still held: inside
                            copied += len(chunk)
                            held = chunk
                    if copied != size:
                        raise BackendError(f"{path}: object has {copied} bytes, manifest says {size}")
                    at.at_entry_end(_PADDING[size % BLOCK])  # its data whole, not its padding
                    yield held
                    flushed += size
                out += _PADDING[size % BLOCK]
                inside = False
            elif isinstance(entry, DirEntry):
                emitted.add(path)
                out += headers.directory(path)
            else:
                out += entry_header(path, kind=b"2", mode=0o777, size=0, mtime=mtime, target=entry.target)
            if len(out) >= _CHUNK:
                flushed += len(out)
                at.at_entry_end()
                yield out
                out = bytearray()
    except GeneratorExit:  # the consumer stopped reading: nothing more goes out
        raise
    except BaseException:
        if not inside:
            out += entry_header(FAILED_MARKER, kind=b"0", mode=0o644, size=BLOCK, mtime=mtime)
        if out:
            at.cut = b""
            yield out  # then the error: the archive stops inside a file's data
        raise
    out += bytes(2 * BLOCK)
    out += bytes(-(flushed + len(out)) % RECORD)
    at.cut = b""  # whole: nothing would make it cut
    yield out


FAILED_MARKER = "GRAVEN-EXPORT-FAILED"
"""The name of the file an archive that failed ends with (its header, none of its data) when the
failure came where an entry ends: a reader reports the archive as cut rather than complete."""


class _ThreadedSink:
    """Compresses and writes in a worker thread, so that reading objects and compressing overlap."""

    def __init__(self, write: Callable[[bytes | bytearray], object]) -> None:
        self._queue: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=8)
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

    def write(self, data: bytes | bytearray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def close(self) -> None:
        end_queue(self._queue)
        self._thread.join()
        if self._error is not None:
            raise self._error


class _Gate:
    """A compressor's output: ``out`` until shut, nothing after (the end of a stream that failed)."""

    def __init__(self, out: BinaryIO) -> None:
        self.shut = False
        self._out = out

    def write(self, data: bytes) -> int:
        if self.shut:
            return len(data)
        return self._out.write(data)

    def flush(self) -> None:
        if not self.shut:
            self._out.flush()


def write_archive(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
    out: BinaryIO,
    compression: str,
    *,
    read_many: ReadMany | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the whole archive to ``out`` with the given compression (tar, gz, zst); ``progress`` is
    called with the number of uncompressed archive bytes handed out so far, about every MiB.

    When it fails, nothing written to ``out`` reads as a whole archive: the tar stops inside a file's
    data (:func:`iter_archive`) and a gzip or zstd stream is never ended."""
    compressor: BinaryIO | None = None
    gate = _Gate(out)  # what the compressor writes to
    if compression == "zst":
        import zstandard

        # Multi-threaded zstd: its output is the same whatever the number of workers (tested), so
        # every machine writes the same bytes, and the cores share the work.
        zstd = zstandard.ZstdCompressor(level=3, threads=-1)
        compressor = cast(BinaryIO, zstd.stream_writer(cast(BinaryIO, gate), closefd=False))
    elif compression == "gz":
        compressor = cast(
            BinaryIO, gzip.GzipFile(filename="", mode="wb", fileobj=gate, mtime=0, compresslevel=6)
        )
    target = compressor if compressor is not None else out
    sink = _ThreadedSink(target.write)
    position = _Position(meta.source_date_epoch)
    cut = b""  # what cuts the bytes the sink took so far (none yet: nothing to cut)
    try:
        try:
            # The pieces are about 1 MiB and never changed once handed out: they go to the sink as
            # they are (how a stream is cut does not change what zstd or gzip make of it).
            written = 0
            for piece in iter_archive(manifest, meta, open_blob, read_many, position):
                after = position.cut
                sink.write(piece)
                cut = after
                if progress is not None:
                    written += len(piece)
                    progress(written)
        except BaseException:
            # Stopped between two pieces (Ctrl-C while the sink was full, a progress callback that
            # raised): iter_archive's own end of a failed archive never ran. What the sink took may
            # end where an entry ends, which a reader takes for a whole archive: a file's header
            # without its data goes after it (as iter_archive does), and the stream is cut there.
            if cut:
                with contextlib.suppress(BaseException):
                    sink.write(cut)
            raise
        finally:
            sink.close()
        if compressor is not None:
            compressor.close()
    except BaseException:
        # A compressor left open would end its stream when it is closed, by whoever frees it (gzip's
        # is closed by the garbage collector): a reader would take the cut archive inside for whole.
        gate.shut = True
        raise


def _missing_dir(path: Path) -> InputError | None:
    parent = path.parent
    if not parent.exists():
        return InputError(f"cannot write {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        return InputError(f"cannot write {path}: {parent} is not a directory")
    return None


def check_output_dir(path: Path) -> None:
    """Refuse ``path`` up front (:class:`InputError`) when its directory is missing or not one."""
    problem = _missing_dir(path)
    if problem is not None:
        raise problem


def write_error(path: Path, exc: OSError) -> GravenError:
    """The one-line error for failing to write ``path`` (the path the user gave, never a temp file's):
    an :class:`InputError` when the user can fix it by choosing another path, else a
    :class:`BackendError`."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return _missing_dir(path) or InputError(f"cannot write {path}: {reason}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write {path}: {reason}; choose a directory you can write to")
    if exc.errno in (errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST):
        return InputError(f"cannot write {path}: {reason}")
    return BackendError(f"cannot write {path}: {reason}")


def write_archive_file(
    manifest: TreeManifest,
    meta: ArchiveMeta,
    open_blob: Callable[[Digest], BinaryIO],
    path: Path,
    *,
    read_many: ReadMany | None = None,
    progress: Callable[[int], None] | None = None,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Write the archive to ``path`` atomically (a temp file beside it, then rename); ``progress`` as
    for :func:`write_archive`; ``before_rename`` runs once the archive is complete, right before it
    takes ``path`` (an export removes the attestation of the archive it replaces there).

    Errors name ``path``: a missing or unwritable directory is an :class:`InputError`, a disk that fails
    underneath a :class:`BackendError`; the temp file never stays behind.
    """
    compression = compression_for(path)
    problem = epoch_problem(meta.source_date_epoch)
    if problem is not None:  # before creating any file
        raise InputError(f"source_date_epoch {meta.source_date_epoch!r} cannot go in an archive: {problem}")
    remove_stale_temps(path)
    try:
        tmp, handle = open_temp_beside(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with handle:
            write_archive(
                manifest, meta, open_blob, handle, compression, read_many=read_many, progress=progress
            )
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        tmp.replace(path)
    except OSError as exc:
        _discard(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise


_STALE_TEMP_SECONDS = 3600  # a running export writes its temp file all the time


_TEMP_NAME_MAX = 200  # bytes of NAME in a temp name: with ".", ".tmp-", a pid and HOST, within 255


def _temp_prefix(path: Path) -> str:
    """``.NAME.tmp-``, what the temp names of writes of ``path`` begin with. A NAME of more than
    :data:`_TEMP_NAME_MAX` bytes is shortened (its start, ``~`` and 16 hex digits of its sha256): a
    name the file system takes (255 bytes) would make a temp name it refuses (ENAMETOOLONG)."""
    name = path.name
    raw = os.fsencode(name)
    if len(raw) > _TEMP_NAME_MAX:
        import hashlib

        start = raw[: _TEMP_NAME_MAX - 17].decode("utf-8", "ignore")  # never half a character
        name = f"{start}~{hashlib.sha256(raw).hexdigest()[:16]}"
    return f".{name}.tmp-"


def temp_beside(path: Path) -> Path:
    """The temp file an export (or its attestation) writes before renaming it to ``path``:
    ``.NAME.tmp-PID-HOST`` (HOST: this host and pid namespace, :func:`graven.runtime.host_token`;
    a long NAME shortened, :func:`_temp_prefix`)."""
    from graven.runtime import host_token

    return path.with_name(f"{_temp_prefix(path)}{os.getpid()}-{host_token()}")


_NEW_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_temp_beside(path: Path) -> tuple[Path, BinaryIO]:
    """A new file at :func:`temp_beside` of ``path``, open for writing. Its name is predictable (pid and
    host), so in a shared directory (/tmp) another user may have put something there first: a symlink
    to a file of the exporter's (root's export wrote the archive into it, then renamed the link into
    place) or a file of their own (which they could change once written). Whatever stands at the name
    is removed (never followed) and the file made anew with ``O_EXCL | O_NOFOLLOW``; OSError when that
    cannot be done (another user's file in a sticky directory)."""
    tmp = temp_beside(path)
    for _ in range(3):
        try:
            fd = os.open(tmp, _NEW_TEMP, 0o666)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # ours by its name (this pid and host): what was left or planted there
            continue
        return tmp, os.fdopen(fd, "wb")
    raise FileExistsError(errno.EEXIST, "something keeps taking its temporary name", str(tmp))


def remove_stale_temps(path: Path) -> None:
    """Remove the temp files that writes of ``path`` killed before their rename left beside it
    (best effort): at once when its writer is known to be gone (its pid runs no more on this host and
    pid namespace: a crash review saw kill-and-retry loops leave them all); else (another namespace
    or machine sharing the directory, a name of an older graven: ``.NAME.tmp-PID``) once it is an
    hour unchanged and no process of its pid runs here."""
    from graven.runtime import host_token, pid_runs

    prefix = _temp_prefix(path)
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:
        return
    cutoff = time.time() - _STALE_TEMP_SECONDS
    here = host_token()
    for name in names:
        pid, _, host = name[len(prefix) :].partition("-")
        if not pid.isdigit() or pid_runs(int(pid)):
            continue
        with contextlib.suppress(OSError):
            stale = path.parent / name
            if host == here or stale.lstat().st_mtime < cutoff:
                stale.unlink()


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
