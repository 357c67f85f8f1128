"""The part of a full drift check that a forked child does: walk and hash part of a release knowing
nothing of its manifest (:func:`raw_walk`, run by :class:`ForkedWalk`), and the plan of where the two
processes start (``PATH/.graven/drift/split``). A module of its own, light on imports, so that
``graven drift --full`` can fork the walker before it imports the rest of the check
(:mod:`graven.service.drift_early`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import marshal
import mmap
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graven.core.paths import check_path
from graven.deploy.attributes import attribute_problem, deployer_gid, deployer_uid
from graven.deploy.recordkey import read_record_file
from graven.errors import BackendError, UnsafeInputError
from graven.runtime import reap

if TYPE_CHECKING:
    import threading

__all__ = [
    "BIG",
    "CHUNK",
    "DIR_OPEN",
    "OPEN_FILE",
    "ForkedWalk",
    "ScanStopped",
    "hash_rest",
    "kind_of",
    "load_split",
    "observe_raw",
    "open_dir",
    "out_of_resources",
    "raw_walk",
    "split_path",
    "unreadable",
]

BIG = 1 << 20
CHUNK = 1 << 20
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SPLIT_MAX = 1 << 20  # bytes: a split file is a few KiB
Split = tuple[list[str], list[str]]


class ScanStopped(Exception):  # noqa: N818 - a request, not an error
    """The scan was asked to stop (``graven watch`` is stopping, ``graven drift`` was interrupted: see
    :func:`graven.cli.drift_cmds._stopped_by_interrupts`): it is abandoned, and nothing of it is kept.
    Raised between files and between chunks of a large file, so that a stop never waits for a full
    check of a large release."""


# What graven's own process ran out of says nothing about the release: a file it could not open for
# want of a descriptor is not "unreadable" (drift), and a directory it could not list is not empty.
_OWN_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def out_of_resources(exc: OSError, path: str) -> None:
    """Raise :class:`BackendError` when ``exc`` is graven running out of descriptors or memory."""
    if exc.errno in _OWN_LIMITS:
        raise BackendError(
            f"cannot check {path}: {exc.strerror}; raise the limit of open files (`ulimit -n`) or "
            "free some memory, then check again"
        ) from exc


def unreadable(exc: OSError, path: str) -> str:
    """What a file that could not be read is observed as (``unreadable: REASON``, drift); raises
    :class:`BackendError` instead when graven itself ran out of descriptors or memory."""
    out_of_resources(exc, path)
    return f"unreadable: {exc.strerror}"


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


# how a walk opens a directory: to list it, never through a symlink (relative to its opened parent)
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(base: str, rel: str) -> int:
    """Open ``base/rel`` one component at a time, never following a symlink."""
    flags = DIR_OPEN
    fd = os.open(base, flags)
    try:
        for name in rel.split("/") if rel else ():
            child = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


_COUNT = struct.Struct("=Q")  # the files a forked walker has hashed so far, in memory its parent shares


def dir_attribute_problem(
    dir_fd: int, name: str, st: os.stat_result, owner: int, group: int | None
) -> str | None:
    """:func:`attribute_problem` of the directory ``name`` of the open directory ``dir_fd`` (``st``: its
    lstat), its extended attributes read from a descriptor opened there (``O_NOFOLLOW``), never by
    its path: ``listxattr`` refuses a symlink as the last component only, and the release's owner could
    swap a middle one for a symlink meanwhile (a check may run as root). One that can no longer be
    opened as a directory: its owner and group only (the walk finds what it became)."""
    try:
        fd = os.open(name, DIR_OPEN, dir_fd=dir_fd)
    except OSError as exc:
        out_of_resources(exc, name)
        return attribute_problem(None, st, owner, group)
    try:
        return attribute_problem(fd, st, owner, group)
    finally:
        os.close(fd)


def raw_walk(
    base: str,
    start: Sequence[str],
    skip: frozenset[str],
    owner: int | None = None,
    group: int | None = None,
    *,
    counter: mmap.mmap | None = None,
    parent: int | None = None,
) -> bytes:
    """Walk and hash below ``start`` (not into ``skip``) knowing nothing of the manifest: what a forked
    child does while its parent reads the manifest. ``owner``: whom every path must belong to (the
    deployer's uid; None: the release directory's owner); ``group``: the group every path must have
    (the release's gid; None: the release directory's group). ``counter``: where the number of files
    hashed so far is written after each directory, for the parent's progress (:class:`ForkedWalk`).
    ``parent``: the process the results are for; once it is gone (killed, or ended without stopping
    this walk), :class:`ScanStopped` is raised at the next directory or large file, so that a walker
    never goes on hashing for no one. Returns marshal data for :meth:`_Walk.merge_raw`."""
    observed: dict[str, tuple[Any, ...]] = {}
    stats: dict[str, tuple[int, int, int, int, int]] = {}
    dir_records: dict[str, tuple[int, int, int]] = {}
    owner = deployer_uid(base, recorded=owner)
    group = deployer_gid(base, recorded=group)
    fopen, fstat, close, read, sha256 = os.open, os.fstat, os.close, os.read, hashlib.sha256
    S_ISREG, S_IMODE = stat.S_ISREG, stat.S_IMODE  # noqa: N806
    getppid = os.getppid
    # a directory is opened in its parent's descriptor (never by its path, whose middle components
    # its owner could swap for symlinks meanwhile); a starting point, one component at a time. A parent
    # is held, shared by its subdirectories still to walk, until the last of them is opened: at most
    # one descriptor per level of the path being walked.
    stack: list[tuple[str, list[int] | None]] = [(rel, None) for rel in start]
    hashed = listed = 0
    dir_flags = DIR_OPEN
    try:
        while stack:
            if parent is not None and getppid() != parent:  # orphaned: its parent is gone
                raise ScanStopped
            rel, held = stack.pop()
            prefix = f"{rel}/" if rel else ""
            if held is None:
                try:
                    dir_fd = open_dir(base, rel)
                except OSError as exc:
                    out_of_resources(exc, f"{base}/{rel}")
                    continue
            else:
                name = rel.rpartition("/")[2]
                try:
                    dir_fd = fopen(name, dir_flags, dir_fd=held[0])
                except OSError as exc:
                    out_of_resources(exc, f"{base}/{rel}")
                    # swapped (for a symlink, a file) or removed since its parent was listed: what is
                    # there now, never followed
                    seen = observe_raw(name, held[0])
                    if seen is None:
                        del observed[rel], dir_records[rel]
                    elif seen[0] != "dir":
                        observed[rel] = seen
                        del dir_records[rel]
                    continue
                finally:
                    held[1] -= 1
                    if not held[1]:
                        close(held[0])
            holder = [dir_fd, 0]  # this directory, and how many of its subdirectories still need it
            try:
                try:
                    with os.scandir(dir_fd) as it:
                        entries = list(it)
                except OSError as exc:
                    out_of_resources(exc, f"{base}/{rel}")
                    raise
                listed += 1
                for item in entries:
                    name = item.name
                    path = prefix + name
                    if item.is_file(follow_symlinks=False):
                        try:
                            fd = fopen(name, OPEN_FILE, dir_fd=dir_fd)
                        except OSError as exc:
                            observed[path] = ("file", 0, -1, unreadable(exc, f"{base}/{path}"), None)
                            continue
                        try:
                            st = fstat(fd)
                            size = st.st_size
                            if not S_ISREG(st.st_mode):
                                observed[path] = (kind_of(st.st_mode), 0, -1, None, None)
                                continue
                            if size < BIG:
                                data = read(fd, size + 1)
                                sha = sha256(data).hexdigest() if len(data) <= size else hash_rest(fd, data)
                            elif parent is not None and getppid() != parent:
                                raise ScanStopped
                            else:
                                sha = hash_rest(fd, b"")
                            attrs = attribute_problem(fd, st, owner, group)
                        except OSError as exc:
                            observed[path] = ("file", 0, -1, unreadable(exc, f"{base}/{path}"), None)
                            continue
                        finally:
                            close(fd)
                        hashed += 1
                        observed[path] = ("file", S_IMODE(st.st_mode), size, sha, None, attrs)
                        stats[path] = (st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
                    elif item.is_dir(follow_symlinks=False):
                        try:
                            st = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        attrs = dir_attribute_problem(dir_fd, name, st, owner, group)
                        observed[path] = ("dir", S_IMODE(st.st_mode), st.st_size, None, None, attrs)
                        dir_records[path] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                        if path not in skip:
                            stack.append((path, holder))
                            holder[1] += 1
                    elif item.is_symlink():
                        try:
                            observed[path] = ("symlink", 0, -1, None, os.readlink(name, dir_fd=dir_fd))
                        except OSError:
                            observed[path] = ("symlink", 0, -1, None, None)
                    else:
                        seen = observe_raw(name, dir_fd)
                        if seen is not None:
                            observed[path] = seen
            finally:
                if not holder[1]:
                    close(dir_fd)
            if counter is not None:
                _COUNT.pack_into(counter, 0, hashed)
    finally:  # stopped, or out of descriptors: the parents still held
        for _, held in stack:
            if held is not None and held[1]:
                held[1] = 0
                close(held[0])
    return marshal.dumps((observed, stats, dir_records, hashed, listed))


class ForkedWalk:
    """A child process walking and hashing part of a release (``start``, not into ``skip``); ``owner``
    and ``group``: the deployer's uid and the release's gid, as :func:`raw_walk` takes them."""

    def __init__(
        self,
        base: str,
        start: Sequence[str],
        skip: frozenset[str],
        *,
        owner: int | None = None,
        group: int | None = None,
    ) -> None:
        self.start = list(start)
        # the child's count of hashed files, shared (MAP_SHARED, anonymous): the parent reads it for
        # its progress while the child walks
        self.counter = mmap.mmap(-1, _COUNT.size)
        parent = os.getpid()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: walk, send, exit without running any cleanup of the parent's objects
            code = 1
            gc.disable()  # it makes only what it sends, and exits
            try:
                os.close(read_fd)
                walked = raw_walk(base, start, skip, owner, group, counter=self.counter, parent=parent)
                view = memoryview(walked)
                while view:
                    view = view[os.write(write_fd, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid = pid
        self.fd = read_fd
        self.reaped = False

    def hashed(self) -> int:
        """How many files the child has hashed so far (it says so after each directory)."""
        return int(_COUNT.unpack_from(self.counter, 0)[0])

    def result(self, stop: threading.Event | None = None) -> bytes | None:
        """What the child found (None: it failed, or it was reaped before). :class:`ScanStopped` when
        ``stop`` is set before the child is done (the caller cancels it)."""
        if self.reaped:
            return None
        if stop is not None:
            import select

            while not stop.is_set():
                if select.select([self.fd], [], [], 0.05)[0]:  # its data come once it is done
                    break
            else:
                raise ScanStopped
        self.reaped = True
        chunks: list[bytes] = []
        try:
            with contextlib.suppress(OSError):
                while chunk := os.read(self.fd, 1 << 20):
                    chunks.append(chunk)
        finally:
            os.close(self.fd)
            status = reap(self.pid, kill=False)
        return b"".join(chunks) if status == 0 and chunks else None

    def cancel(self) -> None:
        """Stop the child (its results are not wanted) and reap it; nothing when it was reaped."""
        if self.reaped:
            return
        self.reaped = True
        os.close(self.fd)
        reap(self.pid, kill=True)


def hash_rest(fd: int, head: bytes, stop: threading.Event | None = None) -> str:
    """Hash ``head`` (what was read already) and the rest of the file; :class:`ScanStopped` as soon as
    ``stop`` is set."""
    digest = hashlib.sha256(head)
    while not (stop is not None and stop.is_set()):
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
    raise ScanStopped


def observe_raw(path: str, dir_fd: int | None = None) -> tuple[Any, ...] | None:
    """The fields of :class:`graven.core.drift.Observed` for what is at ``path`` (in ``dir_fd``; not
    followed), or None when nothing is."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    kind = kind_of(st.st_mode)
    if kind == "symlink":
        try:
            return ("symlink", 0, -1, None, os.readlink(path, dir_fd=dir_fd))
        except OSError:
            return ("symlink", 0, -1, None, None)
    return (kind, stat.S_IMODE(st.st_mode), st.st_size, None, None)


def split_path(meta: Path) -> Path:
    """Where the plan of the last full check is kept (``meta`` is ``PATH/.graven``)."""
    return meta / "drift" / "split"


def load_split(path: Path, release: str) -> Split | None:
    """Where the last full check split the release between two processes (any split is correct;
    a good one is balanced). Only clean relative paths are taken."""
    data = read_record_file(path, _SPLIT_MAX)  # never through a symlink, never blocking on a FIFO
    if data is None:
        return None
    try:
        doc = json.loads(data)
        if doc.get("release") != release:
            return None
        first, second = list(doc["first"]), list(doc["second"])
        for rel in first + second:
            if rel:
                check_path(rel)
        if (
            "" not in first
            or not second
            or "" in second
            or len({*first, *second}) != len(first) + len(second)
        ):
            return None  # the root's own entries are the first walker's; no start is walked twice
        return [str(r) for r in first], [str(r) for r in second]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnsafeInputError):
        return None
