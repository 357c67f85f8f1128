"""The archive writer at its limits: commit times that do not fit a ustar header, the record padding,
epochs it refuses, and output paths it cannot write (one-line errors naming the user's path)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from graven.archive import writer
from graven.archive.writer import RECORD, ArchiveMeta, write_archive, write_archive_file
from graven.errors import BackendError, InputError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest

USTAR_MAX_TIME = 8**11 - 1  # 2242-03-16T12:56:31Z
MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z, as docs/formats/archive-v1.md says
BLOBS: dict[str, bytes] = {}


def _file(path: str, data: bytes, *, executable: bool = False) -> FileEntry:
    sha = hashlib.sha256(data).hexdigest()
    BLOBS[sha] = data
    return FileEntry(path, sha, len(data), executable)


ENTRIES: list[TreeEntry] = [
    _file("README.md", b"# hi\n"),
    _file("bin/run", b"#!/bin/sh\necho run\n", executable=True),
    _file("caf\u00e9/na\u00efve.txt", b"unicode\n"),  # a pax header for its name, too
    _file("deep/" + "d" * 120 + "/f.txt", b"long\n"),
    SymlinkEntry("link", "README.md"),
    DirEntry("empty/dir"),
]
MANIFEST = TreeManifest.of(ENTRIES)
ONE_FILE = TreeManifest.of([_file("hello.txt", b"hello\n")])


def _meta(manifest: TreeManifest, epoch: int, pipeline: str | None = None) -> ArchiveMeta:
    return ArchiveMeta(
        digest=str(manifest.digest), name="n", commit=None, source_date_epoch=epoch, pipeline=pipeline
    )


def _open_blob(digest: Digest) -> io.BytesIO:
    return io.BytesIO(BLOBS[digest.hex])


def _archive(manifest: TreeManifest, meta: ArchiveMeta) -> bytes:
    out = io.BytesIO()
    write_archive(manifest, meta, _open_blob, out, "tar")
    return out.getvalue()


def _gnu_tar(*args: str | Path) -> str:
    env = {**os.environ, "TZ": "UTC"}
    result = subprocess.run(["tar", *map(str, args)], capture_output=True, check=False, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    # No warnings either, but that a file's time stamp is in the future (as it is here on extraction).
    warnings = [line for line in result.stderr.decode().splitlines() if "in the future" not in line]
    assert warnings == [], warnings
    return result.stdout.decode()


# -- mtimes beyond ustar ----------------------------------------------------------------------------


def test_the_epoch_range_is_the_documented_one() -> None:
    assert writer.MAX_EPOCH == MAX_EPOCH
    assert writer.epoch_problem(0) is None and writer.epoch_problem(MAX_EPOCH) is None
    for bad in (-1, MAX_EPOCH + 1, True, 1.0, "1", None):
        assert writer.epoch_problem(bad) is not None, bad


@pytest.mark.parametrize("epoch", [USTAR_MAX_TIME + 1, 9_999_999_999, MAX_EPOCH])
def test_a_commit_time_beyond_ustar_gives_an_archive_gnu_tar_reads(tmp_path: Path, epoch: int) -> None:
    data = _archive(MANIFEST, _meta(MANIFEST, epoch))
    assert data == _archive(MANIFEST, _meta(MANIFEST, epoch))  # deterministic
    archive = tmp_path / "a.tar"
    archive.write_bytes(data)
    listing = _gnu_tar("--full-time", "-tvf", archive)
    assert "README.md" in listing and "link -> README.md" in listing
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    lines = listing.splitlines()
    assert len(lines) == 11 and all(when in line for line in lines), listing
    dest = tmp_path / "out"
    dest.mkdir()
    _gnu_tar("-xf", archive, "-C", dest)
    assert (dest / "README.md").read_bytes() == b"# hi\n"
    assert (dest / "caf\u00e9/na\u00efve.txt").read_bytes() == b"unicode\n"
    if epoch < 2**34:  # what every file system here can store (ext4 stops in 2446)
        assert int((dest / "README.md").stat().st_mtime) == epoch
        assert int((dest / "bin/run").stat().st_mtime) == epoch
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert members and all(int(m.mtime) == epoch for m in members)


def test_every_ustar_mtime_field_holds_octal_digits() -> None:
    """Each header's mtime field (bytes 136-147: 11 octal digits and a NUL) holds the clamped value when
    the time needs a pax record: the global header, the ``x`` headers and the entries' own."""
    data = _archive(MANIFEST, _meta(MANIFEST, 9_999_999_999))
    fields: set[bytes] = set()
    kinds: list[bytes] = []
    at = 0
    while data[at : at + 512] != bytes(512):
        block = data[at : at + 512]
        fields.add(block[136:148])
        kinds.append(block[156:157])
        size = int(block[124:135], 8)
        at += 512 + -(-size // 512) * 512
    assert fields == {b"%011o\x00" % USTAR_MAX_TIME}
    assert kinds[0] == b"g"
    assert kinds.count(b"x") == len(kinds[1:]) // 2  # every entry has its pax header


def test_the_last_ustar_time_needs_no_pax_record() -> None:
    small = _archive(ONE_FILE, _meta(ONE_FILE, USTAR_MAX_TIME))
    assert b" mtime=" not in small
    beyond = _archive(ONE_FILE, _meta(ONE_FILE, USTAR_MAX_TIME + 1))
    assert f" mtime={USTAR_MAX_TIME + 1}\n".encode() in beyond


@pytest.mark.parametrize("epoch", [-1, -5, MAX_EPOCH + 1, 10**17, 10**30])
def test_an_epoch_outside_the_range_is_refused(tmp_path: Path, epoch: int) -> None:
    with pytest.raises(InputError, match="source_date_epoch"):
        write_archive(ONE_FILE, _meta(ONE_FILE, epoch), _open_blob, io.BytesIO(), "tar")
    out = tmp_path / "x.tar"
    with pytest.raises(InputError, match="source_date_epoch"):
        write_archive_file(ONE_FILE, _meta(ONE_FILE, epoch), _open_blob, out)
    assert list(tmp_path.iterdir()) == []


# -- record padding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [None, "x" * 700, "y" * 5000])
@pytest.mark.parametrize("which", ["one-file", "tree"])
def test_the_archive_is_a_whole_number_of_records(pipeline: str | None, which: str) -> None:
    """10240-byte records as GNU tar writes them, however long the global header is."""
    manifest = ONE_FILE if which == "one-file" else MANIFEST
    data = _archive(manifest, _meta(manifest, 1_700_000_000, pipeline))
    assert len(data) % RECORD == 0
    assert data.rstrip(b"\0") + bytes(len(data) - len(data.rstrip(b"\0"))) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    assert data[end : end + 1024] == bytes(1024)  # the two zero blocks, then only padding
    assert len(data) - end < 1024 + RECORD


def test_one_small_file_is_one_record(tmp_path: Path) -> None:
    data = _archive(ONE_FILE, _meta(ONE_FILE, 1_700_000_000))
    assert len(data) == RECORD
    archive = tmp_path / "one.tar"
    archive.write_bytes(data)
    assert "hello.txt" in _gnu_tar("-tvf", archive)


# -- output paths -----------------------------------------------------------------------------------


def _assert_names_only(exc: pytest.ExceptionInfo[InputError], path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message
    assert ".tmp-" not in message and "\n" not in message


def test_a_missing_directory_is_an_input_error(tmp_path: Path) -> None:
    out = tmp_path / "nodir" / "x.tar"
    with pytest.raises(InputError, match="does not exist") as exc:
        write_archive_file(ONE_FILE, _meta(ONE_FILE, 0), _open_blob, out)
    _assert_names_only(exc, out)
    assert not (tmp_path / "nodir").exists()


def test_a_file_as_the_directory_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    out = tmp_path / "plain" / "x.tar.zst"
    with pytest.raises(InputError, match="not a directory") as exc:
        write_archive_file(ONE_FILE, _meta(ONE_FILE, 0), _open_blob, out)
    _assert_names_only(exc, out)


@pytest.mark.parametrize(
    ("code", "kind"),
    [(errno.EACCES, InputError), (errno.EROFS, InputError), (errno.ENOSPC, BackendError)],
)
def test_an_unwritable_directory_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type[Exception]
) -> None:
    """(Simulated: the tests may run as root, who can write anywhere.) A full disk stays a backend
    error."""
    real_open, real_path_open = os.open, Path.open

    def refuse(path: str | os.PathLike[str], *args: object, **kwargs: object) -> int:
        if ".tmp-" in os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    def refuse_path(self: Path, *args: object, **kwargs: object) -> object:
        if ".tmp-" in self.name:
            raise OSError(code, os.strerror(code), str(self))
        return real_path_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "open", refuse)  # however the temporary file is made
    monkeypatch.setattr(Path, "open", refuse_path)
    out = tmp_path / "x.tar.gz"
    with pytest.raises(kind) as exc:
        write_archive_file(ONE_FILE, _meta(ONE_FILE, 0), _open_blob, out)
    assert type(exc.value) is kind
    message = str(exc.value)
    assert str(out) in message and ".tmp-" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "taken.tar"
    out.mkdir()
    (out / "inside").write_text("x")  # a non-empty directory: the rename fails
    with pytest.raises(InputError) as exc:
        write_archive_file(ONE_FILE, _meta(ONE_FILE, 0), _open_blob, out)
    _assert_names_only(exc, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.tar"]


def test_an_export_to_a_raw_stream_that_takes_part_of_a_write_loses_nothing() -> None:
    """A library caller exporting to an unbuffered stream (a raw pipe, a file opened with
    buffering=0) got a truncated archive without an error: the part a short write left was dropped."""
    from graven.service.transfer import _Counted

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            chunk = bytes(memoryview(b))[:7]  # type: ignore[arg-type]
            self.data += chunk
            return len(chunk)

    sink = Trickle()
    counted = _Counted(sink)  # type: ignore[arg-type]
    payload = bytes(range(256)) * 40
    assert counted.write(payload) == len(payload)
    assert bytes(sink.data) == payload and counted.written == len(payload)
