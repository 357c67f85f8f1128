"""Ingesting a tar archive safely (``graven import``).

Everything in the archive is hostile until proven otherwise: absolute paths, ``..`` segments, links
that escape, hard links, device files and duplicate entries are refused with the entry's name. Files
stream into the store; the result is a manifest whose digest is recomputed here, never taken from the
archive. The member list must end with the end-of-archive zero block(s): a stream that stops at a
member boundary (truncated) or at a corrupt header is refused, where :mod:`tarfile` would just stop;
a compressed stream is read to its end, where its check (gzip's CRC, zstd's checksum) is.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Self, cast

from graven.core import paths
from graven.core.paths import check_path
from graven.errors import BackendError, InputError, UnsafeInputError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.store.local import LOOSE_THRESHOLD, PackBatch

__all__ = ["ImportedTree", "read_archive"]

_BLOCK = tarfile.BLOCKSIZE
_MAX_PAX = 1 << 20  # bytes of one extended header (graven writes path, linkpath and its comment)
_MAX_PATH = 4096  # bytes of a path, and of a symlink target
_MAX_SEGMENT = 255  # bytes of one path component
_GNU_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A zstd skippable frame (pzstd starts with one): 0x184D2A50..0x184D2A5F, little endian.
_ZSTD_SKIPPABLE = frozenset(bytes([n, 0x2A, 0x4D, 0x18]) for n in range(0x50, 0x60))
_MAX_PAX_CHAIN = 4  # extended headers in a row (graven writes at most a global one, then one per member)
# tar reads a name that ends in "/" as a directory's: GNU tar makes a directory of a file "d/" (and reads
# its data as headers), where tarfile reads a file "d"
_NOT_A_DIRECTORY = "only a directory's name may end in '/'"
_MAX_TAIL = 16 << 20  # bytes a compressed stream may hold after the tar's end (tar pads to a record)


@dataclass(frozen=True)
class ImportedTree:
    """The manifest rebuilt from an archive, and what its global header claimed."""

    manifest: TreeManifest
    claims: dict[str, Any]


class _Replay:
    """``head``, bytes already read from ``rest``, then the rest of ``rest``: the stream of an
    archive that cannot seek back to its start (a pipe: ``graven import /dev/stdin``)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        head = self._head
        if not head:
            return self._rest.read(size)
        if size < 0:
            self._head = b""
            return head + self._rest.read()
        self._head = head[size:]
        return head[:size]


def _open_stream(handle: BinaryIO) -> tuple[IO[bytes], bool]:
    """The tar stream of ``handle``, and whether it is decompressed from gzip or zstd."""
    magic = handle.read(4)
    source: BinaryIO
    if handle.seekable():
        handle.seek(0)
        source = handle
    else:
        source = cast(BinaryIO, _Replay(magic, handle))
    if magic.startswith(_GZIP_MAGIC):
        import gzip

        return cast(IO[bytes], gzip.GzipFile(fileobj=source, mode="rb")), True
    if magic == b"\xfd7zX":  # no tar starts so (a name that is not UTF-8); "BZh" may be a file name
        raise InputError("xz archives are not read; give a .tar, .tar.gz or .tar.zst")
    if magic == _ZSTD_MAGIC or magic in _ZSTD_SKIPPABLE:
        import zstandard

        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(source)), True
    return source, False


def _normalize(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _claims(tar: tarfile.TarFile) -> dict[str, Any]:
    comment = tar.pax_headers.get("comment")
    if not comment:
        return {}
    try:
        doc = json.loads(comment)
    except (ValueError, RecursionError):  # not graven's comment: no claims
        return {}
    if isinstance(doc, dict) and str(doc.get("format", "")).startswith("graven.archive/"):
        return doc
    return {}


class _LastBlock:
    """What the last header block that :mod:`tarfile` read was: ``header`` (a non-zero block, which may
    not have parsed), ``zeros`` (an end-of-archive block), ``short`` (a partial block) or ``eof``."""

    def __init__(self) -> None:
        self.kind = "eof"
        self.pax_chain = 0  # extended headers read in a row, before the member they describe
        self.member_header = False  # an ``x`` header was read and its member not yet


def _probing_tarinfo(last: _LastBlock) -> type[tarfile.TarInfo]:
    """A TarInfo class that notes in ``last`` what each header block it parses looks like: tarfile ends
    the member list alike at the zero blocks, at the end of the data and at an invalid header."""

    class _ProbingInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            if not buf:
                last.kind = "eof"
            elif len(buf) != _BLOCK:
                last.kind = "short"
            elif buf.count(0) == _BLOCK:
                last.kind = "zeros"
            else:
                last.kind = "header"
            return super().frombuf(buf, encoding, errors)

        def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in _GNU_TYPES:  # graven writes PAX only; GNU long names and sparse files never
                name = self.name
                if self.type == tarfile.GNUTYPE_LONGNAME:  # the entry's name is this member's data
                    data = archive.fileobj.read(min(self.size, _BLOCK))
                    name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") or name
                raise UnsafeInputError(
                    f"{_shown(name[:200])}: GNU long-name and sparse members are refused; "
                    "export with `graven export` (PAX)"
                )
            return cast(tarfile.TarInfo, super()._proc_member(archive))  # type: ignore[misc]

        def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            """tarfile's own, with a bounded size and a linear parser of the records (tarfile reads any
            declared size into memory and parses it with backtracking regular expressions), refusing
            GNU sparse keys."""
            header = _shown(self.name[:200])  # GNU tar's and bsdtar's name the entry (PaxHeaders/NAME)
            if last.member_header:  # GNU tar takes the later one's records, tarfile the earlier one's
                raise UnsafeInputError(
                    f"{header}: two extended headers in a row for one member (GNU tar and graven would "
                    "read other names or sizes from them); not an archive `graven export` writes"
                )
            if self.size > _MAX_PAX:
                raise UnsafeInputError(
                    f"{header}: extended header of {self.size} bytes (at most {_MAX_PAX} are read)"
                )
            buf = archive.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
            try:
                records = _pax_records(buf[: self.size])
            except UnsafeInputError as exc:
                raise UnsafeInputError(f"{header}: {exc}") from None
            shared = cast(dict[str, str], archive.pax_headers)
            if self.type == tarfile.XGLTYPE:
                # graven writes one global header, holding its comment: more of them (each member
                # copies what they add up to) or other keys (a global size) are not its archives
                if shared or set(records) - {"comment"}:
                    raise UnsafeInputError(
                        "a second global header, or one with other records than a comment: "
                        "not an archive `graven export` writes"
                    )
                pax_headers = shared
            else:
                pax_headers = dict(shared)
            pax_headers.update(records)
            chain = last.pax_chain = last.pax_chain + 1
            if chain > _MAX_PAX_CHAIN:
                raise UnsafeInputError(f"more than {_MAX_PAX_CHAIN} extended headers in a row")
            last.member_header = self.type != tarfile.XGLTYPE
            try:
                following = self.fromtarfile(archive)
            except tarfile.HeaderError as exc:
                raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]
            finally:
                last.pax_chain = 0
                last.member_header = False
            if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                path = pax_headers.get("path", "")
                if path.endswith("/") and not following.isdir():  # tarfile drops the "/"; tar does not
                    raise UnsafeInputError(f"{_shown(path[:200])}: {_NOT_A_DIRECTORY}")
                following._apply_pax_info(pax_headers, archive.encoding, archive.errors)  # type: ignore[attr-defined]
                following.offset = self.offset
                if "size" in pax_headers:  # the header replaces the size: where the next one starts
                    offset = following.offset_data
                    if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                        offset += following._block(following.size)  # type: ignore[attr-defined]
                    archive.offset = offset
            return following

    return _ProbingInfo


def _pax_records(buf: bytes) -> dict[str, str]:
    """The records of an extended header (``"%d %s=%s\n"``: the length counts the whole record), parsed
    in one pass; refused when malformed, not UTF-8, a GNU sparse key or a size that is not decimal
    digits."""
    records: dict[str, str] = {}
    pos, end = 0, len(buf)
    while pos < end:
        if buf[pos] == 0 and buf.count(0, pos) == end - pos:
            break  # padding
        space = buf.find(b" ", pos, min(end, pos + 21))
        digits = buf[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise UnsafeInputError("malformed extended header (a record without its length)")
        length = int(digits)
        stop = pos + length
        equals = buf.find(b"=", space + 1, stop)
        if length < 5 or stop > end or equals <= space + 1 or buf[stop - 1] != 0x0A:
            raise UnsafeInputError("malformed extended header (a record's length or form is wrong)")
        try:
            keyword = buf[space + 1 : equals].decode("utf-8")
            value = buf[equals + 1 : stop - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeInputError("extended header record is not UTF-8") from None
        if keyword.startswith("GNU.sparse.") or (
            keyword == "hdrcharset" and value != "ISO-IR 10646 2000 UTF-8"
        ):
            raise UnsafeInputError(
                f"extended header key {keyword}={_shown(value[:40])} is refused (sparse or binary names)"
            )
        if keyword == "size" and not (value.isascii() and value.isdigit()):
            # tarfile reads it with int() ("+1", " 1", "1_0", "\u0661"), GNU tar refuses it and goes by
            # the ustar size: each would read other bytes as the member's data
            raise UnsafeInputError(
                f"malformed extended header (size={_shown(value[:40])} is not a decimal number)"
            )
        records[keyword] = value
        pos = stop
    return records


def _shown(text: str) -> str:
    """``text`` for an error line: as it is when printable, else quoted with escapes (no terminal codes)."""
    return text if text.isprintable() else repr(text)


def _check_end(tar: tarfile.TarFile, last: _LastBlock, path: Path) -> None:
    """Refuse an archive whose member list did not end with an end-of-archive zero block followed by
    another zero block or by the end of the data (as GNU tar, which stops at the first zero block)."""
    at = tar.offset
    if last.kind == "zeros":
        following = tar.fileobj.read(_BLOCK)
        if following.count(0) != len(following):
            raise InputError(f"{path}: a lone zero block at byte {at} is followed by more data")
        return
    if last.kind == "header":
        raise InputError(f"{path}: corrupt tar header at byte {at}")
    raise InputError(f"{path}: archive is truncated (no end-of-archive blocks after byte {at})")


def _read_to_end(stream: IO[bytes], path: Path) -> None:
    """Read a decompressed stream to its end, past the tar's end-of-archive blocks: gzip checks its
    CRC and length there and zstd its checksum, and garbage after the stream or a gzip stream cut
    there fails, as under GNU tar. Refused past :data:`_MAX_TAIL` bytes, which no tar pads with."""
    tail = 0
    while chunk := stream.read(1 << 16):
        tail += len(chunk)
        if tail > _MAX_TAIL:
            raise InputError(
                f"{path}: more than {_MAX_TAIL >> 20} MiB after the end of the archive in its compressed "
                "stream; not an archive tar or graven export writes"
            )


def read_archive(
    path: Path, batch: PackBatch, progress: Callable[[int, int], None] | None = None
) -> ImportedTree:
    """Read ``path`` (.tar, .tar.gz or .tar.zst, detected by content) into ``batch``; ``progress`` is
    called with (bytes of the file read so far, its size) after each member."""
    try:
        # "-": standard input (a pipe: nothing is seeked back), as for tar -f -
        handle = os.fdopen(os.dup(0), "rb") if str(path) == "-" else path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        tick = _ticker(handle, progress)
        stream, compressed = _open_stream(handle)
        last = _LastBlock()
        # ustar name fields as UTF-8 bytes, never the locale's charset (tarfile's default: a library
        # caller under a Latin-1 locale read "café" as "cafÃ©"); undecodable bytes are refused by name
        probing = _probing_tarinfo(last)
        try:
            with tarfile.open(
                fileobj=stream, mode="r|", tarinfo=probing, encoding="utf-8", errors="surrogateescape"
            ) as tar:
                entries, dirs, ancestors = _read_members(tar, batch, tick)
                if tick is not None:
                    tick(True)
                _check_end(tar, last, path)
                if compressed:
                    _read_to_end(stream, path)
                claims = _claims(tar)
        except tarfile.TarError as exc:
            if str(exc) == "empty file" and compressed:  # compressed bytes, and no tar came out of them
                raise InputError(f"{path}: archive is truncated or corrupt (no tar data in it)") from None
            raise InputError(f"{path}: not a readable tar archive ({exc})") from None
        except (EOFError, OSError) as exc:
            raise InputError(f"{path}: archive is truncated or corrupt ({exc})") from None
        except RecursionError:
            raise InputError(f"{path}: headers nested too deeply; not an archive graven reads") from None
        except zlib.error as exc:  # no OSError: tarfile makes it a TarError only while it reads a header,
            # not inside a file's data nor after the tar's end
            raise InputError(f"{path}: corrupt gzip data ({exc})") from None
        except Exception as exc:
            if type(exc).__module__.startswith("zstandard"):
                if "too much memory" in str(exc):  # zstd --long: a window past zstd's default limit
                    raise InputError(
                        f"{path}: compressed with a zstd window larger than graven reads (zstd --long); "
                        "recompress it without --long, or export it with graven export"
                    ) from None
                raise InputError(f"{path}: corrupt zstd data ({exc})") from None
            raise
    for directory in dirs:
        if directory not in ancestors:  # a directory with entries below is no DirEntry
            entries[directory] = DirEntry(directory)
    return ImportedTree(TreeManifest.of(entries.values()), claims)


def _ticker(handle: BinaryIO, progress: Callable[[int, int], None] | None) -> Callable[[bool], None] | None:
    """What reports how far the reading of ``handle`` got (``True``: all of it); None without
    ``progress`` or for what is not a regular file (a pipe has no size and no position)."""
    if progress is None:
        return None
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        return None
    size = info.st_size

    def tick(done: bool = False) -> None:
        progress(size if done else min(handle.tell(), size), size)

    return tick


def _read_members(
    tar: tarfile.TarFile, batch: PackBatch, tick: Callable[[bool], None] | None
) -> tuple[dict[str, TreeEntry], set[str], dict[str, None]]:
    """The entries, the directory entries and the directories the paths of both lie below."""
    entries: dict[str, TreeEntry] = {}
    dirs: set[str] = set()
    ancestors: dict[str, None] = {}  # an ordered set
    held = 0  # bytes of the names in ``ancestors``: what paths.implied_dirs bounds in a build's tree too
    # characters of the members' paths and link targets, bounded as a build's outputs are (a directory
    # member with entries below is the build's implied one, counted in ``held``: it is allowed for)
    named = 0
    for member in tar:
        tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every member it read (with its headers); not needed here
        if tick is not None:
            tick(False)
        if member.size and not member.isreg():
            # tarfile reads no data for them: the bytes that follow would be taken for headers of
            # members that `tar -t` does not list (GNU tar skips them); graven never writes any
            raise UnsafeInputError(
                f"{_shown(member.name[:200])}: a directory or link with data in the archive"
            )
        raw_name = member.name
        if raw_name.startswith("/"):
            raise UnsafeInputError(f"{_shown(raw_name[:200])}: absolute path in archive")
        name = _normalize(raw_name)
        if name in ("", "."):
            if member.isdir():
                continue  # the root itself
            raise UnsafeInputError(f"{_shown(raw_name)}: only a directory may stand for the archive's root")
        if raw_name.endswith("/") and not member.isdir():
            raise UnsafeInputError(f"{_shown(raw_name[:200])}: {_NOT_A_DIRECTORY}")
        encoded = name.encode("utf-8", "surrogateescape")
        if len(encoded) > _MAX_PATH or any(len(part) > _MAX_SEGMENT for part in encoded.split(b"/")):
            raise UnsafeInputError(
                f"{_shown(name[:80])}...: a path longer than {_MAX_PATH} bytes "
                f"or a name longer than {_MAX_SEGMENT}"
            )
        if len(member.linkname.encode("utf-8", "surrogateescape")) > _MAX_PATH:
            raise UnsafeInputError(f"{_shown(name[:80])}: link target longer than {_MAX_PATH} bytes")
        check_path(name)
        why = paths.dotgit_refusal(name)
        harm = "a release's .git/config makes git run there execute what it names"
        if why is None and member.issym():
            why = paths.gitmodules_refusal(name)
            harm = "git would read a checkout's submodules through it"
        if why is not None:
            raise UnsafeInputError(
                f"{name}: {why}, which git refuses in a tree and graven in what it builds or imports "
                f"({harm}); an artifact an earlier graven built with one must be built again without it"
            )
        if name in entries or name in dirs:
            raise UnsafeInputError(f"{name}: duplicate entry in archive")
        if len(entries) + len(dirs) >= paths.MAX_ENTRIES:
            raise paths.too_many_paths("the archive")
        # the directories the paths imply, bounded as a build bounds them (not the paths: an artifact
        # the build accepted is imported again)
        held = paths.add_implied_dirs((name,), ancestors, held)
        named += len(name) + len(member.linkname)
        if named > paths.MAX_PATH_BYTES + held:
            raise paths.too_many_path_bytes("the archive")
        if member.isdir():
            dirs.add(name)
        elif member.issym():
            entries[name] = SymlinkEntry(name, member.linkname)
        elif member.islnk():
            raise UnsafeInputError(f"{name}: hard links are refused; export without them")
        elif member.isreg():
            entries[name] = _store_member(tar, member, name, batch)
        else:
            raise UnsafeInputError(f"{name}: devices, FIFOs and other special files are refused")
    return entries, dirs, ancestors


def _store_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, batch: PackBatch) -> FileEntry:
    source = tar.extractfile(member)
    if source is None:
        raise BackendError(f"{name}: cannot read archive member")
    executable = bool(member.mode & 0o100)
    if member.size < LOOSE_THRESHOLD:
        data = source.read()
        if len(data) != member.size:
            raise InputError(f"{name}: archive member is truncated")
        digest = Digest(hashlib.sha256(data).hexdigest())
        batch.add_known(digest, data)
    else:
        digest = batch.add_stream(cast(BinaryIO, source), member.size)
    return FileEntry(name, sha256=digest.hex, size=member.size, executable=executable)
