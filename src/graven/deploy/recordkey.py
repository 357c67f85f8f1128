"""The home's record key: authenticates the stat records graven keeps beside a deployment.

``PATH/.graven/stat`` (what each deploy wrote) and ``PATH/.graven/drift/cache`` (what the last drift
check verified) let the fast drift check, a rollback's check of a release on disk and the next
deploy's hard links trust a file by its stat instead of its content. Whoever can write ``PATH`` could
otherwise rewrite those records to match a file they tampered with. So each of these files ends with
an HMAC-SHA256 of its bytes under a 32-byte random key that lives with the operator, in
``GRAVEN_HOME/keys/records.hmac`` (mode 0600, made on first use). Records whose tag does not verify
(another home, another key, an edit) are ignored: the files they would vouch for are checked by
content, so a lost or replaced key costs one slower check, never a missed change.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path

from graven.errors import BackendError, InputError
from graven.home import make_home_dir

__all__ = [
    "KEY_FILE",
    "KEY_SIZE",
    "MAX_RECORD_FILE",
    "TAG_SIZE",
    "load_existing",
    "load_or_create",
    "read_record_file",
    "replace_file_at",
    "tag",
    "verify",
]

KEY_FILE = "records.hmac"  # not NAME.key: that is a signing key
KEY_SIZE = 32
TAG_SIZE = 32


def tag(key: bytes, data: bytes | memoryview) -> bytes:
    """The HMAC-SHA256 of ``data`` under ``key`` (32 bytes)."""
    return hmac.new(key, data, hashlib.sha256).digest()


def verify(key: bytes, data: bytes | memoryview, expected: bytes | memoryview) -> bool:
    """Whether ``expected`` is the tag of ``data`` (compared in constant time)."""
    return hmac.compare_digest(tag(key, data), bytes(expected))


MAX_RECORD_FILE = 1 << 28  # bytes (256 MiB): ~40-100 per path, millions of paths; larger is not read


def read_record_file(path: Path, limit: int = MAX_RECORD_FILE) -> bytes | None:
    """The bytes of a records file beside a deployment; None when it is missing, is not a regular
    file, or holds more than ``limit`` bytes (whoever can write ``PATH`` must not make graven read
    gigabytes: a sparse file costs nothing to make). Never follows a symlink put in its place, and
    never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:  # it grew while being read
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def replace_file_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Put ``data`` at ``name`` in the directory ``dir_fd``: written to a new temporary name there,
    then renamed over ``name`` (a reader sees the old file or the new one; a symlink standing at
    ``name`` is replaced, never followed). OSError when it cannot be done (the temp file is removed)."""
    tmp = f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd
    )
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def load_or_create(keys_dir: Path) -> bytes:
    """The record key in ``keys_dir``, made (random, 0600, atomically) when there is none yet."""
    path = keys_dir / KEY_FILE
    key = _read(path)
    if key is not None:
        return key
    try:
        make_home_dir(keys_dir)  # and the home itself 0700 (pathlib made a missing home 0755)
        temp = keys_dir / f".{KEY_FILE}.tmp-{os.urandom(8).hex()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
    except OSError as exc:
        raise BackendError(f"cannot create the record key {path}: {exc.strerror}") from None
    key = _read(path)
    if key is None:  # pragma: no cover - we just made it
        raise BackendError(f"cannot read the record key {path}")
    return key


def load_existing(keys_dir: Path) -> bytes | None:
    """The record key in ``keys_dir``, or None when there is none yet (nothing is made)."""
    return _read(keys_dir / KEY_FILE)


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"cannot read the record key {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"the record key {path} is not a regular file; remove it (graven makes a new one)"
            )
        if mode & 0o077:  # as a signing key: whoever reads it can forge the records that hide drift
            what = "readable" if mode & 0o044 else "writable"
            raise InputError(
                f"the record key {path} is {what} by others (mode {mode:04o}); run chmod 600 {path}"
            )
        data = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise BackendError(
            f"the record key {path} is damaged ({len(data)} bytes, expected {KEY_SIZE}); delete it: the "
            "next deploy makes a new one, and the next checks read every file by content once"
        )
    return data
