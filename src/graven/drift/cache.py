"""What drift detection verified, by stat: ``PATH/.graven/drift/cache`` (``graven.drift-cache/v4``).

After a check, graven records the stat of every file whose content it verified (hashed, or vouched for
by the deploy's stat table) and of every directory whose listing was exactly the manifest's, together
with the time the check started on the file system's own clock (the mtime of ``PATH/.graven/drift/
clock``, written just before). A record is kept only when the entry's mtime and ctime are older than
that time, so a change in the same clock tick can never hide behind it (git's "racy" entries). The
next fast check then needs one ``lstat`` per path and lists only directories whose stat changed.

The file is a cache: unreadable, for another release or another file system, or not authenticated by
the home's record key (:mod:`graven.deploy.recordkey`), it is ignored.
"""

from __future__ import annotations

import array
import json
import os
import stat
import sys
from pathlib import Path

from graven.core.record import Record
from graven.deploy.lock import open_dir_nofollow
from graven.deploy.recordkey import TAG_SIZE, read_record_file, replace_file_at, tag, verify

__all__ = ["CACHE_FORMAT", "FileRecord", "VerifiedCache", "fs_clock", "write_atomically"]

# v4: a record vouches for the file's group too; v3 (its owner and extended attributes, graven.deploy.
# attributes) and older records are not trusted (an older graven re-hashed a chgrp'd or chowned file and
# recorded it as good)
CACHE_FORMAT = "graven.drift-cache/v4"
FileRecord = tuple[int, int, int, int, int]  # st_ino, st_size, st_mtime_ns, st_ctime_ns, st_mode
DirRecord = tuple[int, int, int]  # st_ino, st_mtime_ns, st_ctime_ns
_OPEN_CLOCK = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def fs_clock(directory: Path, *, depth: int = 2) -> int | None:
    """The file system's current time (ns): write one byte to ``directory/clock`` and read its mtime.
    None when the directory is not writable (then nothing can be recorded), or when the clock, or one
    of the last ``depth`` components of ``directory`` (``PATH/.graven/drift``), is a symbolic link:
    graven never writes through one (:func:`graven.deploy.lock.open_dir_nofollow`). Also None when
    the directory above (``PATH/.graven``) is missing: a check never makes an environment's directory
    again (moved away, an unmounted volume: its mount point)."""
    if not directory.parent.is_dir():
        return None
    try:
        dir_fd = open_dir_nofollow(directory, depth, create=True)
    except (OSError, ValueError):
        return None
    try:
        fd = os.open("clock", _OPEN_CLOCK, 0o644, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None  # never written through a hard link to another file
        os.pwrite(fd, b"0", 0)
        return os.fstat(fd).st_mtime_ns
    except OSError:
        return None
    finally:
        os.close(fd)


class VerifiedCache(Record):
    """Verified stat records of one release, aligned with its files and directories (sorted).

    On disk: ``graven.drift-cache/v4`` and a JSON header line (release, device, counts), then the
    records as big-endian int64 (five per file, three per directory, zeros for none), then the
    HMAC-SHA256 of everything before it under the home's record key.
    """

    __slots__ = ("dev", "dirs", "files", "release")
    _fields = ("release", "dev", "files", "dirs")
    release: str
    dev: int
    files: list[FileRecord | None]
    dirs: list[DirRecord | None]

    def __init__(
        self,
        release: str,
        dev: int,
        files: list[FileRecord | None] | None = None,
        dirs: list[DirRecord | None] | None = None,
    ) -> None:
        self.release = release
        self.dev = dev
        self.files = [] if files is None else files
        self.dirs = [] if dirs is None else dirs

    @classmethod
    def load(cls, path: Path, key: bytes, *, release: str, files: int, dirs: int) -> VerifiedCache | None:
        """The cache for ``release`` with the given numbers of files and directories, if its tag
        verifies under ``key``; else None."""
        try:
            data = read_record_file(path)  # never past MAX_RECORD_FILE: PATH is not the home's to size
            if data is None or len(data) < TAG_SIZE or not verify(key, data[:-TAG_SIZE], data[-TAG_SIZE:]):
                return None
            magic, header, body = data[:-32].split(b"\n", 2)
            if magic != CACHE_FORMAT.encode():
                return None
            doc = json.loads(header)
            if doc["release"] != release or doc["files"] != files or doc["dirs"] != dirs:
                return None
            values = array.array("q")
            values.frombytes(body)
            if sys.byteorder == "little":
                values.byteswap()
            if len(values) != 5 * files + 3 * dirs:
                return None
            flat = values.tolist()
            file_records: list[FileRecord | None] = [
                (flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4]) if flat[i + 4] else None
                for i in range(0, 5 * files, 5)
            ]
            base = 5 * files
            dir_records: list[DirRecord | None] = [
                (flat[i], flat[i + 1], flat[i + 2]) if flat[i + 2] else None
                for i in range(base, base + 3 * dirs, 3)
            ]
            if not isinstance(doc["dev"], int):
                return None
            return cls(release, doc["dev"], file_records, dir_records)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            return None

    def save(self, path: Path, key: bytes, *, depth: int = 2) -> bool:
        """Write atomically, tagged under ``key``; False when it cannot be written (a read-only check,
        or one of the last ``depth`` components of its directory, ``PATH/.graven/drift``, is a symbolic
        link: never written through)."""
        header = json.dumps(
            {"release": self.release, "dev": self.dev, "files": len(self.files), "dirs": len(self.dirs)},
            sort_keys=True,
        )
        no_file, no_dir = (0, 0, 0, 0, 0), (0, 0, 0)
        values = array.array("q", [v for r in self.files for v in (r or no_file)])
        values.extend([v for r in self.dirs for v in (r or no_dir)])
        if sys.byteorder == "little":
            values.byteswap()
        body = CACHE_FORMAT.encode() + b"\n" + header.encode() + b"\n" + values.tobytes()
        data = body + tag(key, body)
        return write_atomically(path, data, depth=depth)


def write_atomically(path: Path, data: bytes, *, depth: int = 2) -> bool:
    """Write ``data`` to ``path`` through a new temporary file in its directory and a rename (which
    replaces a symlink standing at ``path``, never its target); False when it cannot be written, or when
    one of the last ``depth`` components of the directory is a symbolic link."""
    try:
        dir_fd = open_dir_nofollow(path.parent, depth, create=True)
    except (OSError, ValueError):
        return False
    try:
        replace_file_at(dir_fd, path.name, data)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    return True
