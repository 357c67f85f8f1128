"""The archive writer: small files read in bulk, headers built by hand, the same bytes either way."""

from __future__ import annotations

import gc
import hashlib
import io
import random
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, cast

import pytest
import zstandard

from graven.archive.writer import ArchiveMeta, ReadMany, _checksum, _header, entry_header, write_archive
from graven.errors import BackendError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest

_rnd = random.Random(7)
BLOBS: dict[str, bytes] = {}


def _file(path: str, size: int, *, executable: bool = False) -> FileEntry:
    data = _rnd.randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    BLOBS[sha] = data
    return FileEntry(path, sha, size, executable)


ENTRIES: list[TreeEntry] = [
    _file("README.md", 0),
    _file("a/b/c.txt", 511),
    _file("a/b/d/e.py", 512, executable=True),
    _file("a-b", 1),
    _file("a.c", 4000),
    _file("caf\u00e9/na\u00efve.txt", 10),  # non-ASCII: a pax header
    _file("x" * 100, 3),
    _file("y" * 101, 3),  # too long for ustar: a pax header
    _file("big.bin", (1 << 20) + 3),  # streamed
    SymlinkEntry("a/b/link", "c.txt"),
    SymlinkEntry("far", "a/" + "z" * 120),
    DirEntry("p/q/empty"),
]
MANIFEST = TreeManifest.of(ENTRIES)
META = ArchiveMeta(digest=str(MANIFEST.digest), name="n", commit=None, source_date_epoch=1_700_000_000)


def _open_blob(digest: Digest) -> io.BytesIO:
    return io.BytesIO(BLOBS[digest.hex])


def _read_many(digests: Sequence[Digest]) -> list[bytes]:
    return [BLOBS[d.hex] for d in digests]


@pytest.mark.parametrize("compression", ["tar", "gz", "zst"])
def test_bulk_reads_write_the_same_bytes_as_streams(compression: str) -> None:
    streamed, bulk = io.BytesIO(), io.BytesIO()
    write_archive(MANIFEST, META, _open_blob, streamed, compression)
    write_archive(MANIFEST, META, _open_blob, bulk, compression, read_many=_read_many)
    assert streamed.getvalue() == bulk.getvalue()


def test_tarfile_reads_every_header_and_file() -> None:
    out = io.BytesIO()
    write_archive(MANIFEST, META, _open_blob, out, "tar", read_many=_read_many)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as archive:  # checks every header's checksum
        members = {m.name: m for m in archive.getmembers()}
        for entry in ENTRIES:
            if isinstance(entry, FileEntry):
                member = members[entry.path]
                assert member.mode == entry.mode and member.mtime == META.source_date_epoch
                extracted = archive.extractfile(member)
                assert extracted is not None and extracted.read() == BLOBS[entry.sha256]
    for directory in ("a", "a/b", "a/b/d", "caf\u00e9", "p/q", "p/q/empty"):
        assert members[directory].isdir()
    assert members["far"].linkname == "a/" + "z" * 120


@pytest.mark.parametrize("size", [8**11 - 1, 8**11, 9 * 2**30], ids=["ustar-max", "8GiB", "9GiB"])
def test_a_size_past_the_ustar_field_is_carried_by_a_pax_record(size: int) -> None:
    """Only the headers: tarfile reads a member's size without its data (none of the 9 GiB is made)."""
    header = entry_header("big.bin", kind=b"0", mode=0o644, size=size, mtime=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024)), mode="r:") as archive:
        member = archive.next()
        assert member is not None and member.name == "big.bin" and member.isreg()
        assert member.size == size
    assert (b" size=%d\n" % size in header) is (size >= 8**11)


def test_an_object_of_the_wrong_size_is_refused() -> None:
    def short(digests: Sequence[Digest]) -> list[bytes]:
        return [BLOBS[d.hex][:-1] or b"?" for d in digests]

    with pytest.raises(BackendError, match="manifest says"):
        write_archive(MANIFEST, META, _open_blob, io.BytesIO(), "tar", read_many=short)


@pytest.mark.parametrize(
    ("name", "linkname", "mtime"),
    [
        (b"a", b"", 0),
        (b"x" * 100, b"y" * 100, 1_700_000_000),
        (b"\xc3\xa9\xff" * 30, b"", 5),  # not ASCII: summed byte by byte
        (b"n", b"", 8**11 + 1),  # an mtime too large for its field: a longer header
        (b"n", b"", -1),
    ],
)
def test_header_checksum_is_the_sum_of_the_bytes(name: bytes, linkname: bytes, mtime: int) -> None:
    header = _header(name, mode=0o644, size=12345, mtime=mtime, typeflag=b"0", linkname=linkname)
    at = header.index(b"\x00 ", 148) - 6  # the checksum field: 148, unless the mtime field is longer
    spaced = header[:at] + b" " * 8 + header[at + 8 :]
    assert int(header[at : at + 6], 8) == sum(spaced)
    assert _checksum(header[:at], header[at + 8 :]) == sum(spaced)


class _Corrupt(io.RawIOBase):
    """A store's verified stream of an object whose bytes hash wrong: every byte, then an error at the
    end (graven.store.local._VerifyingReader)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._data.readinto(buffer)
        if not n:
            raise BackendError("object: content hashes to something else")
        return n


# Files enough to hand out a piece of 1 MiB (at an entry's end) before the one that fails.
_BEFORE = [_file(f"before/{i:03}", 60_000) for i in range(20)]


def _failing(where: str) -> tuple[TreeManifest, Callable[[Digest], BinaryIO], ReadMany, bytes]:
    """A manifest, its readers, and the bytes of the object they fail on (``where``): a small file
    (its read fails), an empty one (so the archive so far ends where an entry does), or a file
    streamed in pieces, a multiple of 512 bytes long, whose last read finds it corrupt."""
    failing = {"small": _file("z/small", 300), "empty": _file("z/empty", 0), "big": _file("z/big", 2 << 20)}
    bad = failing[where]
    manifest = TreeManifest.of([*_BEFORE, bad, _file("z/zz-after", 10)])

    def open_blob(digest: Digest) -> BinaryIO:
        if digest.hex == bad.sha256:
            return cast(BinaryIO, io.BufferedReader(_Corrupt(BLOBS[digest.hex]), buffer_size=1 << 20))
        return io.BytesIO(BLOBS[digest.hex])

    def read_many(digests: Sequence[Digest]) -> Iterator[bytes]:
        for digest in digests:
            if digest.hex == bad.sha256:
                raise BackendError("object: content hashes to something else")
            yield BLOBS[digest.hex]

    return manifest, open_blob, read_many, BLOBS[bad.sha256]


@pytest.mark.parametrize("where", ["small", "empty", "big"])
def test_a_tar_stream_that_fails_is_never_a_whole_archive_to_its_reader(where: str) -> None:
    """`graven export -o - | tar x` (or ssh host tar x): what went out before the failure must not read
    as a complete archive. tar (GNU, Python's, Go's) takes an archive that ends where an entry ends as
    complete, end blocks or not: the stream was cut there (at the last whole piece), so the reader
    exited 0 with part of the tree. A corrupt streamed file also went out whole before its end
    said so."""
    manifest, open_blob, read_many, bad = _failing(where)
    out = io.BytesIO()
    with pytest.raises(BackendError, match="hashes to something else"):
        write_archive(manifest, META, open_blob, out, "tar", read_many=read_many)
    written = out.getvalue()
    assert len(written) > 1 << 20  # the pieces before the failure went out
    with tarfile.open(fileobj=io.BytesIO(written), mode="r:") as archive, pytest.raises(tarfile.ReadError):
        archive.getmembers()
    if where == "big":
        assert bad[-1000:] not in written  # its last piece waited for the end of the object


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_a_compressed_stream_that_fails_is_never_ended(compression: str) -> None:
    """Nor is the compressed stream completed around the cut tar: the gzip writer left open was closed
    by the garbage collector, which wrote its end, and `tar xz` read the cut tar inside as whole."""
    manifest, open_blob, read_many, _ = _failing("small")
    out = io.BytesIO()
    with pytest.raises(BackendError):
        write_archive(manifest, META, open_blob, out, compression, read_many=read_many)
    gc.collect()  # what the writer left behind is freed (as the CLI's process drops the error)
    written = out.getvalue()
    if compression == "gz":
        reader = zlib.decompressobj(wbits=31)
        reader.decompress(written)
        assert not reader.eof
    else:
        unzstd = zstandard.ZstdDecompressor().decompressobj()
        unzstd.decompress(written)
        assert not unzstd.eof


# Pieces that end where an entry ends, inside a streamed file (its header, a chunk held back), and
# after a streamed file's last chunk with its padding still to come (3 MiB + 100 bytes).
_INTERRUPTED = TreeManifest.of(
    [*_BEFORE, _file("m/big", (3 << 20) + 100), _file("m/small", 700), _file("n/big", 2 << 20)]
)


def _tar_with_progress(out: io.BytesIO, progress: Callable[[int], None]) -> None:
    write_archive(_INTERRUPTED, META, _open_blob, out, "tar", read_many=_read_many, progress=progress)


def test_the_interrupted_archive_has_the_pieces_the_cases_stop_at() -> None:
    sizes: list[int] = []
    _tar_with_progress(io.BytesIO(), sizes.append)
    assert len(sizes) == 10  # the cases below stop after each piece but the last


@pytest.mark.parametrize("stop", range(1, 10))
def test_a_tar_stream_stopped_between_pieces_is_never_a_whole_archive(stop: int) -> None:
    """Ctrl-C can land in the writer's own loop (while the sink is full, or in the progress line),
    not only while the archive's generator reads: the generator's end of a failed archive never ran,
    and what went out ended where an entry ends, which tar extracts in part and with success."""
    calls = 0

    def progress(_: int) -> None:
        nonlocal calls
        calls += 1
        if calls == stop:
            raise KeyboardInterrupt

    out = io.BytesIO()
    with pytest.raises(KeyboardInterrupt):
        _tar_with_progress(out, progress)
    written = out.getvalue()
    assert len(written) > 0
    with tarfile.open(fileobj=io.BytesIO(written), mode="r:") as archive, pytest.raises(tarfile.ReadError):
        archive.getmembers()
    listed = subprocess.run(["tar", "-tf", "-"], input=written, capture_output=True, check=False)
    assert listed.returncode != 0, listed.stdout.decode()[-300:]
