"""Write a drifted release back to its manifest, from the store (:class:`graven.core.drift.HealPlan`).

Release directories are read-only (0555): a directory that must change is made writable (0755) for the
time of the heal and set back to 0555 after, also when the heal fails. Files are written to a temporary
name in their directory (verified store read, deployed mode, fsync) and renamed over the path, so a
reader sees the old file or the new one, never a partial one; symlinks likewise. Every file written is
recorded in the deploy's stat table, so that the next fast check (and the next deploy, which hard-links
unchanged files) trusts it; a directory the heal changed is recorded only when it then holds exactly the
manifest's entries (what the heal could not remove, an ignored file in an added directory, keeps its
directory listed by every fast check).

Whoever can write the release may swap one of its directories for a symbolic link between the check and
the heal: every call goes through directory file descriptors, each opened relative to its parent
without following a symbolic link (``*at`` calls, ``fchmod``, ``fstat``), so the heal never reads,
writes, removes nor changes the mode of anything through a link. A directory on the way to a path of the
plan that is not a real directory (a link, a file) ends the heal with one line; a link that the plan
itself removes is removed (unlinked in its parent) before anything below its path is needed. Nor does it
cross into another mount (a bind mount in the release, even of the same file system): a directory that
is one ends the heal with one line before anything in it is removed or changed.

A heal given a ``stop`` event (``graven watch`` is stopping) is abandoned once it is set, with
:class:`graven.drift.walk.ScanStopped`, but only between two paths, or between two chunks of a large
file (whose temporary file is removed): what it wrote so far is in place whole, what it did not reach
is as the drift left it, and the directories are set back to 0555 as on any failure. A heal stopped so
leaves every path of the release either as it found it or as deployed, never a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from graven.core.drift import HealPlan, deployed_mode
from graven.core.globs import GlobSet
from graven.core.paths import display_path
from graven.deploy.attributes import DRIFT_XATTRS
from graven.deploy.lock import open_dir_nofollow
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.drift.walk import ScanStopped
from graven.errors import BackendError, IntegrityError
from graven.model.digest import Digest
from graven.model.manifest import FileEntry
from graven.store.local import LOOSE_THRESHOLD, LocalStore

if TYPE_CHECKING:
    import threading

__all__ = ["HealStats", "apply_heal", "giving", "giving_group", "move_aside"]

_CHUNK = 1 << 20
_DIR_MODE = 0o555
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIR = (errno.ELOOP, errno.ENOTDIR)  # what opening a symlink or a file with _OPEN_DIR gives
_NO_FOLLOW = "graven never follows a symbolic link"
_MAX_FDS = 64  # directories kept open at once (a heal may touch thousands)
_O_PATH = getattr(os, "O_PATH", 0)


def _mount_of(fd: int) -> tuple[int, int | None]:
    """The device and mount id of the open ``fd`` (the id from /proc/self/fdinfo, which tells a bind
    mount of the same file system apart; None where it cannot be read)."""
    dev = os.fstat(fd).st_dev
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return dev, int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return dev, None


def _open_dir_at(parent_fd: int, name: str, mount: tuple[int, int | None] | None = None) -> tuple[int, bool]:
    """Open the directory ``name`` of ``parent_fd`` without following a symbolic link; one whose mode
    does not let graven read it (drifted to 0311, say) is made 0755 first, without following a link
    either: (descriptor, whether its mode was changed). ``mount``: :func:`_mount_of` the release; a
    directory of another mount is refused (:class:`_OtherMountError`) before its mode is changed."""
    opened_up = False
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except PermissionError:
        if mount is not None and _O_PATH:
            probe = os.open(name, _O_PATH | _OPEN_DIR, dir_fd=parent_fd)
            try:
                if _mount_of(probe) != mount:
                    raise _OtherMountError(name) from None
            finally:
                os.close(probe)
        try:
            os.chmod(name, 0o755, dir_fd=parent_fd, follow_symlinks=False)  # noqa: S103 (set back)
        except (OSError, ValueError, NotImplementedError):  # ValueError: Python's word for EOPNOTSUPP
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name) from None
        fd, opened_up = os.open(name, _OPEN_DIR, dir_fd=parent_fd), True
    if mount is not None and _mount_of(fd) != mount:
        os.close(fd)
        raise _OtherMountError(name)
    return fd, opened_up


class _OtherMountError(Exception):
    """A directory of the release that is another mount (its mount point)."""


@dataclass
class HealStats:
    """What a heal did."""

    removed: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    bytes_written: int = 0


def _split(rel: str) -> tuple[str, str]:
    """``a/b/c`` -> (``a/b``, ``c``); ``c`` -> (``""``, ``c``): the directory holding ``rel`` and its name."""
    parent, _, name = rel.rpartition("/")
    return parent, name


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


class _Dirs:
    """The release's directories, by path relative to the release (``""``: the release itself), each
    opened once for the time of the heal, relative to its parent and without following a symbolic link.

    Directories are made writable on demand and set back to 0555 by :meth:`close`. A directory whose
    entries are then exactly the manifest's is recorded in the deploy's table (its record says that
    graven made its entries, so the fast check does not list it); any other one (something the heal
    could not remove, or a directory the manifest does not have) loses its record."""

    def __init__(self, release: Path, table: StatTable, children: Mapping[str, AbstractSet[str]]) -> None:
        self.release = release
        self.table = table
        self.children = children
        self.fds: dict[str, int] = {"": os.open(release, _OPEN_DIR)}
        self.mount = _mount_of(self.fds[""])  # never crossed: a mount in the release is not the release
        self.changed: set[str] = set()  # set back to 0555 (and recorded or forgotten) by close
        self.writable_now: set[str] = set()  # made 0755 by this heal

    def refuse(self, why: str) -> BackendError:
        return BackendError(f"cannot heal {self.release}: {why}")

    def fd(self, rel: str) -> int:
        """The directory ``rel``; refused when it or one on its way is not a real directory. At most
        :data:`_MAX_FDS` are kept open (the others are opened again when needed): a returned
        descriptor is only good until the next call."""
        fd = self.fds.get(rel)
        if fd is not None:
            return fd
        # from the nearest directory open (the release's at least), down one name at a time: without
        # recursion, as a release can be nested deeper than Python's recursion limit (~1,000 levels)
        names: list[str] = []
        here = rel
        while here not in self.fds:
            here, name = _split(here)
            names.append(name)
        for name in reversed(names):
            below = f"{here}/{name}" if here else name
            fd, opened_up = self._open_child(self.fds[here], name, below, f"{below} is not a directory")
            if opened_up:  # made 0755 to be read: set back to 0555 by close
                self.changed.add(below)
                self.writable_now.add(below)
            if len(self.fds) >= _MAX_FDS:
                for key in [k for k in self.fds if k]:
                    os.close(self.fds.pop(key))
            self.fds[below] = fd
            here = below
        return self.fds[rel]

    def _open_child(self, parent_fd: int, name: str, rel: str, refusal: str) -> tuple[int, bool]:
        """:func:`_open_dir_at`, with ``refusal`` as the heal's one line when a link or a file stands
        there; refused when another file system is mounted at ``rel`` (heal would otherwise empty it)."""
        try:
            return _open_dir_at(parent_fd, name, self.mount)
        except _OtherMountError:
            raise self.refuse(
                f"{rel} is a mount point (something is mounted in the release); graven never changes "
                "what is mounted there: unmount it"
            ) from None
        except OSError as exc:
            if exc.errno in _NOT_A_DIR:
                raise self.refuse(f"{refusal} ({_NO_FOLLOW})") from None
            raise

    def writable(self, rel: str) -> int:
        """The directory ``rel``, made writable (0755) until :meth:`close`."""
        fd = self.fd(rel)
        if rel not in self.writable_now:
            os.fchmod(fd, 0o755)  # set back to 0555 by close
            self.changed.add(rel)
            self.writable_now.add(rel)
        return fd

    def keep(self, rel: str) -> None:
        """Have :meth:`close` set the directory ``rel`` to 0555 (and record it) without making it writable."""
        self.fd(rel)
        self.changed.add(rel)

    def enter(self, parent_fd: int, name: str, rel: str, seen: os.stat_result) -> int:
        """Open the directory ``name`` of ``parent_fd`` (``rel``), which an lstat saw as ``seen``, and make
        it writable; refused when something else stands there now (a symlink, a file, another one).
        The descriptor is the caller's to close."""
        fd, _ = self._open_child(parent_fd, name, rel, f"{rel} changed while it was healed")
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                raise self.refuse(f"{rel} changed while it was healed ({_NO_FOLLOW})")
            os.fchmod(fd, 0o755)  # set back to 0555 by close, unless it is removed
            self.changed.add(rel)
            self.writable_now.add(rel)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def removed(self, rel: str) -> None:
        """Forget the directory ``rel`` (and what was below it): the heal removed it."""
        below = rel + "/"
        for key in [k for k in self.fds if k == rel or k.startswith(below)]:
            os.close(self.fds.pop(key))
        self.changed -= {k for k in self.changed if k == rel or k.startswith(below)}
        self.writable_now -= {k for k in self.writable_now if k == rel or k.startswith(below)}

    def sync(self) -> None:
        """fsync every directory the heal changed."""
        for rel in sorted(self.changed):
            with contextlib.suppress(OSError, BackendError):
                os.fsync(self.fd(rel))

    def close(self) -> None:
        """Set the changed directories back to 0555, record or forget them; close every descriptor."""
        try:
            for rel in sorted(self.changed, key=lambda r: (-_depth(r), r)):
                with contextlib.suppress(OSError, BackendError):
                    fd = self.fd(rel)
                    os.fchmod(fd, _DIR_MODE)
                    st = os.fstat(fd)  # before the listing: a later change changes its ctime
                    with os.scandir(fd) as entries:
                        names = {e.name for e in entries}
                    expected = self.children.get(rel)
                    if expected is not None and names == expected:
                        self.table.record(st, DIR_SHA)
                    else:
                        self.table.forget(st.st_ino)
        finally:
            self.changed.clear()
            self.writable_now.clear()
            for fd in self.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds.clear()


@contextlib.contextmanager
def _naming(release: Path, rel: str) -> Iterator[None]:
    """Turn an OSError inside into the heal's one-line error, naming ``rel`` when it names no path of its
    own (a call relative to a directory descriptor names only the last component)."""
    try:
        yield
    except OSError as exc:
        name = exc.filename
        where = name if isinstance(name, str) and os.path.isabs(name) else f"{release}/{rel}"
        raise BackendError(f"cannot heal {release}: {exc.strerror} ({where})") from None


def _write_file(
    store: LocalStore,
    entry: FileEntry,
    dir_fd: int,
    name: str,
    table: StatTable,
    *,
    give: int = -1,
    group: int = -1,
    stop: threading.Event | None = None,
) -> int:
    """Write ``entry`` as ``name`` in ``dir_fd`` via a temporary file and a rename; record its stat.
    ``give``: the uid the file is given to before it is renamed into place and recorded (-1: it stays
    the heal's user's); ``group``: the gid it must have, given to it likewise when it was made with
    another (-1: whatever it was made with). ``stop``: once set, :class:`ScanStopped` between two
    chunks of a large file (the temporary file is removed, the path left as it was)."""
    tmp = f".graven-heal-{os.urandom(6).hex()}"
    mode = deployed_mode(entry.executable)
    fd = os.open(tmp, _OPEN_NEW, 0o600, dir_fd=dir_fd)
    try:
        try:
            if entry.size < LOOSE_THRESHOLD:
                _write_all(fd, store.read(Digest(entry.sha256)))
            else:
                with store.open(Digest(entry.sha256)) as stream:
                    while chunk := stream.read(_CHUNK):
                        _stopping(stop)
                        _write_all(fd, chunk)
            gid = group if group >= 0 and os.fstat(fd).st_gid != group else -1
            if give >= 0 or gid >= 0:
                os.fchown(fd, give, gid)  # before the mode: a chown may clear mode bits
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise IsADirectoryError(errno.EISDIR, "a directory there should have been removed first")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)  # after the chown and the rename (ctime)
    table.record(st, entry.sha256)
    return entry.size


def _stopping(stop: threading.Event | None) -> None:
    """:class:`ScanStopped` when ``stop`` is set (the heal is abandoned there)."""
    if stop is not None and stop.is_set():
        raise ScanStopped


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_link(dir_fd: int, name: str, target: str, give: int = -1, group: int = -1) -> None:
    """Make ``name`` in ``dir_fd`` a symlink to ``target`` via a temporary name and a rename; ``give``:
    the uid the link itself (never its target) is given to first (-1: it stays the heal's user's),
    ``group``: the gid it is given when it was made with another (-1: whatever it was made with).

    A link cannot be opened, so it is given by name (``lchown``): the link is made and given in a
    directory of this process's own (:func:`_private_dir`), then renamed into place. Made in ``dir_fd``,
    which the deployer may write, the deployer could put a hard link to another file in its place
    between the two calls, and root's heal would give that file away."""
    link = "link"
    with _private_dir(dir_fd) as private:
        os.symlink(target, link, dir_fd=private)
        gid = -1
        if group >= 0 and os.stat(link, dir_fd=private, follow_symlinks=False).st_gid != group:
            gid = group
        if give >= 0 or gid >= 0:
            os.chown(link, give, gid, dir_fd=private, follow_symlinks=False)
        os.rename(link, name, src_dir_fd=private, dst_dir_fd=dir_fd)


@contextlib.contextmanager
def _private_dir(dir_fd: int) -> Iterator[int]:
    """A new, empty directory in ``dir_fd`` that only this process's user may write (0700), open
    (not followed: the one it made, checked by its owner, mode and emptiness); removed at the end with
    what is left in it."""
    tmp = f".graven-heal-{os.urandom(6).hex()}"
    os.mkdir(tmp, 0o700, dir_fd=dir_fd)
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077 or os.listdir(fd):
                raise OSError(errno.EEXIST, f"{tmp} was replaced while it was made")
            try:
                yield fd
            finally:
                for left in os.listdir(fd):
                    with contextlib.suppress(OSError):
                        os.unlink(left, dir_fd=fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp, dir_fd=dir_fd)


def _remove(dirs: _Dirs, parent_fd: int, name: str, rel: str, ignore: GlobSet) -> bool:
    """Remove ``name`` of ``parent_fd`` (``rel``) and what is below it, except ignored paths; True when
    it is gone. A directory is entered only when it is still the one the lstat saw."""
    with _naming(dirs.release, rel):
        st = _forget_or_unlink(dirs, parent_fd, name)
        if st is None:
            return True
        fd = dirs.enter(parent_fd, name, rel, st)
    gone = _remove_dir(dirs, fd, rel, st, ignore)
    if gone:
        with _naming(dirs.release, rel):
            os.rmdir(name, dir_fd=parent_fd)
        dirs.removed(rel)
    return gone


def _forget_or_unlink(dirs: _Dirs, parent_fd: int, name: str) -> os.stat_result | None:
    """Forget the record of ``name`` of ``parent_fd`` and unlink it unless it is a directory (a symlink
    itself, never what it points to): the directory's lstat, None when nothing is left to remove."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
        dirs.table.forget(st.st_ino)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return None
    return st


@dataclass
class _Level:
    """A directory :func:`_remove_dir` is in: its name, path, lstat, the entries still to remove (name,
    whether a directory) and whether all of it can go."""

    name: str
    rel: str
    seen: os.stat_result
    pending: list[tuple[str, bool]]
    gone: bool = True


def _remove_dir(dirs: _Dirs, fd: int, rel: str, seen: os.stat_result, ignore: GlobSet) -> bool:
    """Remove what is below the directory ``fd`` (entered by :meth:`_Dirs.enter`: ``rel``, which an
    lstat saw as ``seen``; closed here), except ignored paths; True when all of it is gone (the
    directory itself is the caller's to remove).

    Without recursion and with one descriptor open at a time: a drifted release can hold a tree nested
    deeper than Python's recursion limit and than PATH_MAX. The walk goes down by name (each directory
    entered only when it is the one its lstat saw) and back up through ``..``, which must be the
    directory it came from (else the heal ends in one line, as when one is swapped for a link)."""

    def listing(level_fd: int, level: _Level) -> None:
        with os.scandir(level_fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in reversed(names):
            child_rel = f"{level.rel}/{child}" if level.rel else child
            # a directory is also kept when the globs cover everything below it; a file only by its path
            if ignore.matches(child_rel) or (is_dir and ignore.covers_below(child_rel)):
                level.gone = False
            else:
                level.pending.append((child, is_dir))

    levels = [_Level(rel.rpartition("/")[2], rel, seen, [])]
    try:
        with _naming(dirs.release, rel):
            listing(fd, levels[0])
        while True:
            level = levels[-1]
            if level.pending:
                child, _is_dir = level.pending.pop()
                child_rel = f"{level.rel}/{child}" if level.rel else child
                with _naming(dirs.release, child_rel):
                    st = _forget_or_unlink(dirs, fd, child)
                    if st is None:
                        continue
                    child_fd = dirs.enter(fd, child, child_rel, st)
                    os.close(fd)
                    fd = child_fd
                    levels.append(_Level(child, child_rel, st, []))
                    listing(fd, levels[-1])
                continue
            levels.pop()
            if not levels:
                break
            parent = levels[-1]
            with _naming(dirs.release, parent.rel):
                up = os.open("..", _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = up
                here = os.fstat(fd)
                if (here.st_dev, here.st_ino) != (parent.seen.st_dev, parent.seen.st_ino):
                    raise dirs.refuse(
                        f"{display_path(parent.rel)} changed while it was healed ({_NO_FOLLOW})"
                    )
                if level.gone:
                    os.rmdir(level.name, dir_fd=fd)
                    dirs.removed(level.rel)
                else:
                    parent.gone = False
    finally:
        os.close(fd)
    return level.gone


def apply_heal(
    store: LocalStore,
    release: Path,
    plan: HealPlan,
    table: StatTable,
    *,
    ignore: GlobSet,
    children: Mapping[str, AbstractSet[str]] | None = None,
    owner: int | None = None,
    group: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> HealStats:
    """Carry out the release part of ``plan`` (the environment's links are the caller's).

    ``children``: the names each directory of the manifest holds (``""``: the release directory,
    :attr:`graven.drift.scan.ReleaseIndex.children`); a directory the heal changed is recorded in
    ``table`` only when it then holds exactly those (None: no directory is recorded). ``owner``: the
    uid that deployed the release, as the stat table records it (None: the release directory's owner);
    a release directory that is another user's is given back to it, which only root can do: any other
    user's heal is refused before anything changes. A heal run as root gives what it writes (files,
    symlinks, directories) to that owner, before recording it. ``group``: the gid the release was
    deployed with, as the stat table records it (None: the release directory's group); every directory
    the plan fixes gets it back, and what the heal writes is given it, by root or by a member of that
    group (``chgrp`` needs no more); a heal by a user in neither case is refused before anything
    changes when it would have to give a path that group (write anything, fix a directory but the
    release's own mode or attributes). ``progress``: given ``(done, total)`` files of ``plan.files``
    written (or found unrestorable), 0 first, after each file (each is fsynced: a call costs nothing
    beside it); not called when the plan writes no file. ``stop``: once it is set, the heal is
    abandoned (:class:`ScanStopped`) before the next path it removes or writes, or the next chunk of a
    large file (see the module's docstring)."""
    stats = HealStats()
    try:
        dirs = _Dirs(release, table, children or {})
    except OSError as exc:
        why = f"it is not a directory ({_NO_FOLLOW})" if exc.errno in _NOT_A_DIR else exc.strerror
        raise BackendError(f"cannot heal {release}: {why}") from None
    try:
        root_st = os.fstat(dirs.fd(""))
        root_uid, root_gid = root_st.st_uid, root_st.st_gid
        owner = root_uid if owner is None else owner
        me = os.geteuid()
        if me not in (owner, 0):  # it could change no mode nor owner there: say so before it tries
            raise dirs.refuse(
                f"uid {owner} deployed it, and only that user or root can heal it (you are uid {me})"
            )
        if root_uid != owner and me != 0:
            raise dirs.refuse(
                f"it belongs to uid {root_uid}, but uid {owner} deployed it and only root can give it "
                f"back: run `chown {owner} {release}` as root, or graven heal as root"
            )
        group = root_gid if group is None else group
        if giving_group(group) < 0 and group >= 0:  # what it writes keeps its egid: say so before
            if root_gid != group:
                raise dirs.refuse(
                    f"its group is gid {root_gid}, but it was deployed with gid {group}, which uid {me} is "
                    f"not in: run `chgrp {group} {release}` as root, or graven heal as root or as a member "
                    f"of gid {group}"
                )
            if plan.files or plan.symlinks or any(rel != "." for rel in plan.mkdirs):
                raise dirs.refuse(
                    f"it was deployed with group gid {group}, which uid {me} is not in: what the heal "
                    f"writes would have gid {os.getegid()}; run graven heal as root or as a member of "
                    f"gid {group}"
                )
        give = giving(owner)
        dirs.writable("")  # the root's record is refreshed with the others
        # plan.remove holds no path below another one: removing one needs only its parents (never a
        # symlink the plan removes, which goes here before a directory is made in its place)
        for rel in plan.remove:
            _stopping(stop)
            parent, name = _split(rel)
            with _naming(release, rel):
                try:
                    parent_fd = dirs.writable(parent)
                except FileNotFoundError:
                    parent_fd = None  # gone with its directory
            if parent_fd is not None:
                _remove(dirs, parent_fd, name, rel, ignore)
            stats.removed.append(rel)
        mkdirs = [rel for rel in plan.mkdirs if rel != "."]  # the release directory: fixed below anyway
        for rel in mkdirs:  # shallowest first: a directory's parent is there before it is needed
            parent, name = _split(rel)
            with _naming(release, rel):
                try:
                    there = stat.S_ISDIR(os.stat(name, dir_fd=dirs.fd(parent), follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    there = False
                if there:
                    dirs.keep(rel)  # there, with the wrong mode: set back to 0555 at the end
                    continue
                os.mkdir(name, 0o755, dir_fd=dirs.writable(parent))
                dirs.keep(rel)  # set to 0555 at the end
            stats.created_dirs.append(rel)
        for rel in mkdirs:  # the owner, group and extended attributes graven gives directories
            with _naming(release, rel):
                _fix_directory(dirs, rel, owner, group)
        _fix_directory(dirs, "", owner, group)  # the release directory's owner, group and attributes
        unrestored: list[str] = []  # a damaged or missing object: the rest of the heal is still done
        total = len(plan.files)
        if progress is not None and total:
            progress(0, total)
        for done, entry in enumerate(plan.files, 1):
            _stopping(stop)
            parent, name = _split(entry.path)
            try:
                with _naming(release, entry.path):
                    parent_fd = dirs.writable(parent)
                    if not _kept_directory(parent_fd, name):
                        stats.bytes_written += _write_file(
                            store, entry, parent_fd, name, table, give=give, group=group, stop=stop
                        )
                        stats.written.append(entry.path)
            except IntegrityError as exc:
                unrestored.append(f"{display_path(entry.path)} ({exc})")
            if progress is not None:
                progress(done, total)
        for link in plan.symlinks:
            _stopping(stop)
            parent, name = _split(link.path)
            with _naming(release, link.path):
                parent_fd = dirs.writable(parent)
                if not _kept_directory(parent_fd, name):
                    _write_link(parent_fd, name, link.target, give, group)
                    stats.linked.append(link.path)
        dirs.sync()
        if unrestored:
            more = f" and {len(unrestored) - 3} more" if len(unrestored) > 3 else ""
            raise IntegrityError(
                f"cannot restore {len(unrestored)} file(s) of {release}, the rest is healed: "
                f"{'; '.join(unrestored[:3])}{more}; `graven verify` names what the store lost"
            )
    except OSError as exc:
        raise BackendError(f"cannot heal {release}: {exc.strerror} ({exc.filename})") from None
    finally:
        dirs.close()
    return stats


def _kept_directory(dir_fd: int, name: str) -> bool:
    """Whether a directory stands at ``name`` of ``dir_fd`` where the plan writes a file or a symlink:
    one the removal kept for the ignored paths in it. Nothing is written there; every other path is,
    and the check after the heal names this one (a failure here left the rest of the plan undone)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def giving(owner: int) -> int:
    """The uid what this process writes into a release deployed by ``owner`` must be given to: -1
    (nothing to give) unless this process is root and ``owner`` another user. Only root can give a file
    away; a deployer healing its own release writes its own files already."""
    return owner if owner >= 0 and os.geteuid() == 0 and owner != 0 else -1


def giving_group(group: int) -> int:
    """The gid what this process writes into a release deployed with ``group`` may be given: ``group``
    when this process is root or in that group (``chgrp`` to a group of one's own needs no privilege),
    else -1 (what it writes keeps the group it is made with)."""
    if group < 0:
        return -1
    if os.geteuid() == 0 or group == os.getegid() or group in os.getgroups():
        return group
    return -1


def _fix_directory(dirs: _Dirs, rel: str, owner: int, group: int = -1) -> None:
    """Give the directory ``rel`` back to ``owner`` (the deployer's; only root can) and to ``group`` (the
    release's; root, or the directory's owner in that group) and remove the extended attributes that
    are drift (:mod:`graven.deploy.attributes`; the directory is made writable for that, as for any
    change in it, and set back to 0555 with the others)."""
    fd = dirs.fd(rel)
    st = os.fstat(fd)
    me = os.geteuid()
    uid = owner if st.st_uid != owner and owner >= 0 and me == 0 else -1
    # a user that is not root changes the group of its own directories only (as it does their mode)
    gid = group if st.st_gid != group and giving_group(group) >= 0 and me in (0, st.st_uid) else -1
    if uid >= 0 or gid >= 0:
        os.fchown(fd, uid, gid)
    try:
        names = [name for name in os.listxattr(fd) if name.startswith(DRIFT_XATTRS)]
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return  # a file system without extended attributes: none to remove
        raise
    if names:
        fd = dirs.writable(rel)
        for name in names:
            os.removexattr(fd, name)


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
