"""File system notifications for ``graven watch``: they only say *when* to check, never what drifted.

On Linux graven talks to inotify directly (ctypes): it asks for changes only (writes, attribute
changes, creates, deletes, renames; never opens or reads, so that its own hashing does not wake it up)
and it sees the kernel's queue overflow (``IN_Q_OVERFLOW``), after which events were lost and the
watcher must check everything. Elsewhere (or when inotify cannot be used) watchdog's observer is the
fallback; it reports no overflow, so the periodic full check is the backstop there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Protocol

__all__ = ["InotifyNotifier", "Notifier", "WatchdogNotifier", "make_notifier"]

# inotify(7)
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")

# callback(key, overflow, name): something changed below the watch registered as ``key`` (``name``: the
# entry of a non-recursive watch that changed); overflow: events were lost, key is None.
Callback = Callable[[str | None, bool, str | None], None]


class Notifier(Protocol):
    """Watches directories and calls back on changes."""

    def watch(self, key: str, root: Path, *, recursive: bool) -> None:
        """Watch ``root`` (and, recursively, every directory below it) under ``key``."""
        ...

    def unwatch(self, key: str) -> None:
        """Stop watching ``key``."""
        ...

    def close(self) -> None:
        """Stop the notifier thread."""
        ...


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class InotifyNotifier:
    """inotify(7) through ctypes, read by a thread of its own."""

    def __init__(self, callback: Callback) -> None:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._libc = libc
        self._fd = fd
        self._callback = callback
        self._lock = threading.Lock()
        self._wds: dict[int, tuple[str, str, bool]] = {}  # wd -> key, directory, recursive
        self._keys: dict[str, set[int]] = {}
        self._roots: dict[str, str] = {}  # key -> the top of its recursive watch (walked again on overflow)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="graven-inotify", daemon=True)
        self._thread.start()

    def _add(self, key: str, directory: str, recursive: bool) -> bool:
        """Watch one directory; False when the user's inotify watch limit is reached (ENOSPC: said once
        for the whole tree by the caller, never once per directory)."""
        mask = CHANGES | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                return False
            if err in (errno.ENOENT, errno.ENOTDIR):
                return True  # gone meanwhile: the check will tell
            self.failures.append(f"cannot watch {directory}: {os.strerror(err)}")
            return True
        self._wds[wd] = (key, directory, recursive)
        self._keys.setdefault(key, set()).add(wd)
        return True

    def _add_tree(self, key: str, root: str) -> None:
        """Watch ``root`` and every directory below it (links are not followed; without recursion: a
        release can be nested deeper than Python's recursion limit, where os.walk of Python 3.11 fails)."""
        from graven.fstree import walk

        results = [self._add(key, root, True)]
        for dirpath, dirnames, _files in walk(root):
            for name in dirnames:
                results.append(self._add(key, os.path.join(dirpath, name), True))
        self._limited(root, results)

    def _limited(self, root: str, results: list[bool]) -> None:
        """One failure for the directories of ``root`` the watch limit left unwatched, if any."""
        missed = results.count(False)
        if not missed:
            return
        try:
            with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as limit_file:
                limit = f" = {int(limit_file.read())}"
        except (OSError, ValueError):
            limit = ""
        what = "directory" if len(results) == 1 else "directories"
        self.failures.append(
            f"cannot watch {missed} of {len(results)} {what} of {root}: the inotify watch limit is "
            f"reached (fs.inotify.max_user_watches{limit}; raise it with sysctl)"
        )

    def watch(self, key: str, root: Path, *, recursive: bool) -> None:
        """Watch ``root`` (and the directories below it)."""
        with self._lock:
            if recursive:
                self._roots[key] = str(root)
                self._add_tree(key, str(root))
            else:
                self._limited(str(root), [self._add(key, str(root), False)])

    def unwatch(self, key: str) -> None:
        """Remove every watch of ``key``."""
        with self._lock:
            self._roots.pop(key, None)
            for wd in self._keys.pop(key, set()):
                self._wds.pop(wd, None)
                self._libc.inotify_rm_watch(self._fd, wd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(fd == self._stop_r for fd, _ in ready):
                return
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        offset = 0
        changed: dict[tuple[str, str | None], None] = {}
        overflow = False
        with self._lock:
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                watched = self._wds.get(wd)
                if watched is None:
                    continue
                key, directory, recursive = watched
                if mask & IN_IGNORED:
                    self._wds.pop(wd, None)
                    self._keys.get(key, set()).discard(wd)
                    continue
                name = os.fsdecode(raw) if raw else None
                if recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and name:
                    # a tree moved in brings its own directories: each is watched, not only its top
                    self._add_tree(key, os.path.join(directory, name))
                changed[(key, None if recursive else name)] = None
            if overflow:
                # the lost events may have made directories (a tree swapped for a copy): each is
                # watched now, else a change in one waited for the periodic check (a directory
                # watched already keeps its watch: inotify_add_watch gives its descriptor again)
                for key, root in list(self._roots.items()):
                    self._add_tree(key, root)
        if overflow:
            self._callback(None, True, None)
        for key, name in changed:
            self._callback(key, False, name)

    def close(self) -> None:
        """Stop the thread and close the inotify descriptor."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class WatchdogNotifier:
    """watchdog's observer (FSEvents, kqueue, ReadDirectoryChangesW, or its own inotify)."""

    def __init__(self, callback: Callback) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self._callback = callback
        self._observer = Observer()
        self._watches: dict[str, Any] = {}
        self.failures: list[str] = []
        outer = self

        class _Handler(FileSystemEventHandler):
            def __init__(self, key: str) -> None:
                self.key = key

            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                name = os.path.basename(os.fsdecode(event.src_path))
                outer._callback(self.key, False, name)

        self._handler_type = _Handler
        self._observer.start()

    def watch(self, key: str, root: Path, *, recursive: bool) -> None:
        """Schedule ``root``."""
        try:
            self._watches[key] = self._observer.schedule(
                self._handler_type(key), str(root), recursive=recursive
            )
        except OSError as exc:
            self.failures.append(f"cannot watch {root}: {exc.strerror}")

    def unwatch(self, key: str) -> None:
        """Unschedule ``key``."""
        watch = self._watches.pop(key, None)
        if watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)

    def close(self) -> None:
        """Stop the observer."""
        self._observer.stop()
        self._observer.join(timeout=5)


def make_notifier(callback: Callback, *, backend: str = "auto") -> InotifyNotifier | WatchdogNotifier:
    """inotify where available (``auto``, ``inotify``), else watchdog."""
    if backend in ("auto", "inotify"):
        try:
            return InotifyNotifier(callback)
        except (OSError, AttributeError):
            if backend == "inotify":
                raise
    return WatchdogNotifier(callback)
