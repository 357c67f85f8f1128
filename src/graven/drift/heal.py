"""Write a drifted release back to its manifest, from the store (:class:`graven.core.drift.HealPlan`).

Release directories are read-only (0555): a directory that must change is made writable (0755) for the
time of the heal and set back to 0555 after, also when the heal fails. Files are written to a temporary
name in their directory (verified store read, deployed mode, fsync) and renamed over the path, so a
reader sees the old file or the new one, never a partial one; symlinks likewise. Every file written is
recorded in the deploy's stat table, so that the next fast check (and the next deploy, which hard-links
unchanged files) trusts it; a directory the heal changed is recorded only when it then holds exactly the
manifest's entries (what the heal could not remove, an ignored file in an added directory, keeps its
directory listed by every fast check).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from graven.core.drift import HealPlan, deployed_mode
from graven.core.globs import GlobSet
from graven.deploy.lock import open_dir_nofollow
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.errors import BackendError
from graven.model.digest import Digest
from graven.model.manifest import FileEntry
from graven.store.local import LOOSE_THRESHOLD, LocalStore

__all__ = ["HealStats", "apply_heal", "move_aside"]

_CHUNK = 1 << 20
_DIR_MODE = 0o555
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class HealStats:
    """What a heal did."""

    removed: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    bytes_written: int = 0


class _Writable:
    """Makes directories writable on demand and sets them back to 0555 at the end. A directory whose
    entries are then exactly the manifest's is recorded in the deploy's table (its record says that
    graven made its entries, so the fast check does not list it); any other one (something the heal
    could not remove, or a directory the manifest does not have) loses its record."""

    def __init__(self, table: StatTable, base: str, children: Mapping[str, AbstractSet[str]]) -> None:
        self.table = table
        self.base = base
        self.children = children
        self.opened: dict[str, None] = {}

    def open(self, directory: str) -> None:
        if directory in self.opened:
            return
        with contextlib.suppress(FileNotFoundError):
            os.chmod(directory, 0o755)  # noqa: S103 (set back to 0555 by close)
        self.opened[directory] = None

    def _rel(self, directory: str) -> str | None:
        if directory == self.base:
            return ""
        prefix = self.base + "/"
        return directory[len(prefix) :] if directory.startswith(prefix) else None

    def close(self) -> None:
        for directory in sorted(self.opened, key=lambda d: -d.count("/")):
            with contextlib.suppress(OSError):
                st = os.lstat(directory)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                os.chmod(directory, _DIR_MODE)
                st = os.lstat(directory)  # before the listing: a later change changes its ctime
                with os.scandir(directory) as entries:
                    names = {e.name for e in entries}
                rel = self._rel(directory)
                expected = self.children.get(rel) if rel is not None else None
                if expected is not None and names == expected:
                    self.table.record(st, DIR_SHA)
                else:
                    self.table.forget(st.st_ino)
        self.opened.clear()


def _write_file(store: LocalStore, entry: FileEntry, path: str, table: StatTable) -> int:
    """Write ``entry`` at ``path`` via a temporary file and a rename; record its stat."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".graven-heal-{os.urandom(6).hex()}")
    mode = deployed_mode(entry.executable)
    fd = os.open(tmp, _OPEN_NEW, 0o600)
    try:
        try:
            if entry.size < LOOSE_THRESHOLD:
                _write_all(fd, store.read(Digest(entry.sha256)))
            else:
                with store.open(Digest(entry.sha256)) as stream:
                    while chunk := stream.read(_CHUNK):
                        _write_all(fd, chunk)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.isdir(path) and not os.path.islink(path):
            raise BackendError(f"{path} is a directory; it should have been removed first")
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    st = os.lstat(path)
    table.record(st, entry.sha256)
    return entry.size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(path: str, rel: str, ignore: GlobSet, writable: _Writable) -> bool:
    """Remove ``path`` (and what is below it, except ignored paths); True when it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
        writable.table.forget(st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        writable.open(path)
        gone = True
        with os.scandir(path) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in names:
            child_rel = f"{rel}/{name}" if rel else name
            # a directory is also kept when the globs cover everything below it; a file only by its path
            if ignore.matches(child_rel) or (is_dir and ignore.matches(child_rel + "/")):
                gone = False
                continue
            gone = _remove(os.path.join(path, name), child_rel, ignore, writable) and gone
        if gone:
            writable.opened.pop(path, None)
            os.rmdir(path)
        return gone
    os.unlink(path)
    return True


def apply_heal(
    store: LocalStore,
    release: Path,
    plan: HealPlan,
    table: StatTable,
    *,
    ignore: GlobSet,
    children: Mapping[str, AbstractSet[str]] | None = None,
) -> HealStats:
    """Carry out the release part of ``plan`` (the environment's links are the caller's).

    ``children``: the names each directory of the manifest holds (``""``: the release directory,
    :attr:`graven.drift.scan.ReleaseIndex.children`); a directory the heal changed is recorded in
    ``table`` only when it then holds exactly those (None: no directory is recorded)."""
    stats = HealStats()
    base = str(release)
    writable = _Writable(table, base, children or {})
    writable.open(base)  # the root's record is refreshed with the others
    try:
        for rel in plan.remove:
            path = f"{base}/{rel}"
            writable.open(os.path.dirname(path))
            _remove(path, rel, ignore, writable)
            stats.removed.append(rel)
        for rel in plan.mkdirs:
            path = f"{base}/{rel}"
            if os.path.isdir(path) and not os.path.islink(path):
                writable.opened[path] = None  # there, with the wrong mode: set back to 0555 at the end
                continue
            writable.open(os.path.dirname(path))
            os.mkdir(path, 0o755)
            writable.opened[path] = None  # set to 0555 at the end
            stats.created_dirs.append(rel)
        for entry in plan.files:
            path = f"{base}/{entry.path}"
            writable.open(os.path.dirname(path))
            stats.bytes_written += _write_file(store, entry, path, table)
            stats.written.append(entry.path)
        for link in plan.symlinks:
            path = f"{base}/{link.path}"
            directory = os.path.dirname(path)
            writable.open(directory)
            tmp = os.path.join(directory, f".graven-heal-{os.urandom(6).hex()}")
            os.symlink(link.target, tmp)
            try:
                os.rename(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            stats.linked.append(link.path)
        for directory in list(writable.opened):
            with contextlib.suppress(OSError):
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as exc:
        raise BackendError(f"cannot heal {release}: {exc.strerror} ({exc.filename})") from None
    finally:
        writable.close()
    return stats


def move_aside(path: Path, attic: Path, *, depth: int = 3) -> None:
    """Move a file or directory that stands where graven's symlink belongs into ``attic``
    (``PATH/.graven/drift/attic``: its last ``depth`` components are graven's own directories, made
    when missing and never followed when one is a symbolic link)."""
    try:
        dir_fd = open_dir_nofollow(attic, depth, create=True)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.ELOOP):
            why = "a symbolic link or not a directory on its way (graven never follows one)"
        raise BackendError(f"cannot move {path} aside into {attic}: {why}") from None
    try:
        os.rename(path, f"{path.name}-{os.urandom(4).hex()}", dst_dir_fd=dir_fd)
    except OSError as exc:
        raise BackendError(f"cannot move {path} aside into {attic}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
