"""The host directories of one step build, and copying a checkout so that only the commit shows.

Every mode and time a step can observe comes from the commit: files 0644 or 0755, directories 0755,
every mtime (directories and symlinks included) the commit time, whatever the host's umask, clock or
file creation order. ``reverse=True`` writes the same tree in the opposite order (``--check`` uses it:
directory listing order follows creation order on many file systems).

A file system error while the workspace is made or filled (no space left in TMPDIR, say) is a one-line
:class:`~graven.errors.BackendError` naming the path. :meth:`Workspace.remove` always gets rid of the
workspace, whatever modes the steps left in it (Go makes its module cache read-only), and warns on
stderr when it cannot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from graven.core.paths import check_path
from graven.errors import BackendError, UnsafeInputError
from graven.fstree import make_dirs, walk
from graven.sources.git import MODE_EXECUTABLE, MODE_SUBMODULE, MODE_SYMLINK, BlobReader, GitEntry, GitRepo
from graven.sources.worktree import worktree_blobs

_WORKTREE_MAX = 1 << 20  # larger files are streamed from git

__all__ = [
    "Workspace",
    "checkout",
    "copy_tree",
    "ensure_inside",
    "give_to",
    "reclaim",
    "remove_tree",
    "settle_tree",
]

# Every directory a step sees has this mode (what git checkouts give under the usual umask 022).
DIR_MODE = 0o755


# A workspace's top directory holds this file, locked (flock) by the graven that uses it for as long
# as the workspace lives. The kernel drops the lock however that graven ends, so a workspace whose lock
# can be taken was left by a killed graven, and the next step build removes it (:func:`reclaim`).
LOCK_NAME = ".graven-lock"
PREFIXES = ("graven-build-", "graven-check-")  # hermetic.CANONICAL's and CHECK_VARIATION's
# An empty workspace directory older than this was left by a graven killed before it locked it (or
# after it removed the lock file): one being made is locked within microseconds of its mkdir.
EMPTY_LEFT_AFTER = 60.0


@dataclass(frozen=True)
class Workspace:
    """``root`` holds ``src`` (the checkout), ``work`` (the steps' scratch copy), ``home``, ``tmp``."""

    root: Path
    _lock: list[int] = field(default_factory=list, compare=False, repr=False)  # the held lock's fd

    @property
    def src(self) -> Path:
        """The commit's tree (read-only in the sandbox)."""
        return self.root / "src"

    @property
    def work(self) -> Path:
        """The scratch copy the steps run in; outputs are collected from here."""
        return self.root / "work"

    @property
    def home(self) -> Path:
        """``HOME`` of the steps."""
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        """``TMPDIR`` of the steps when they are not sandboxed (the sandbox mounts a tmpfs)."""
        return self.root / "tmp"

    @property
    def log(self) -> Path:
        """The build log (fetch and build steps)."""
        return self.root / "build.log"

    @classmethod
    def create(cls, *, prefix: str = "graven-build-", nested: int = 0, base: Path | None = None) -> Workspace:
        """A new workspace in ``base``, by default the temp directory; ``nested`` extra levels give a
        deeper, different path.

        Raises BackendError (one line, naming the path) when the directory cannot hold it. The
        workspaces of killed gravens are removed first (:func:`reclaim`)."""
        tmp = Path(tempfile.gettempdir()) if base is None else base
        _check_tempdir(tmp)
        reclaim(tmp)
        with _writing("the build directory", tmp / f"{prefix}*") as where:
            root = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
            workspace = cls(root)
            try:
                workspace._lock.append(_hold_lock(root))
                for level in range(nested):
                    root = root / f"level-{level}"
                for path in (root, root / "src", root / "home", root / "tmp"):
                    where.path = path
                    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                    os.chmod(path, DIR_MODE)
            except BaseException:
                workspace.remove()
                raise
        return cls(root, workspace._lock)

    def open_to(self, gid: int) -> None:
        """Let the group ``gid`` (the steps' user's, a root build's: :func:`graven.build.sandbox.build_user`)
        through the top directory (0710, group ``gid``), so that bubblewrap, run as that user, reaches
        what it mounts; it lists nothing there, and writes only what :func:`give_to` gives it."""
        top = self.root
        while top.name.startswith("level-"):
            top = top.parent
        with _writing("the build directory", top):
            os.chown(top, -1, gid)
            os.chmod(top, 0o710)  # noqa: S103 - search only, for the steps' group: they list nothing

    def remove(self) -> str | None:
        """Delete everything (the top-level temp directory, also when nested), then drop the lock.

        Directories a step left without write or search permission (``chmod 555``, ``chmod 000``) are
        made ``u+rwx`` first; what still cannot be removed is returned as a warning to show.

        The lock file goes last: a removal cut short (Ctrl-C or SIGTERM as the build ends, a second
        Ctrl-C during its clean-up) leaves a workspace the next step build still knows and reclaims
        (:func:`reclaim`), not a checkout no graven would ever remove."""
        top = self.root
        while top.name.startswith("level-"):
            top = top.parent
        try:
            return _remove_workspace(top)
        finally:
            while self._lock:
                os.close(self._lock.pop())


def _remove_workspace(top: Path) -> str | None:
    """:func:`remove_tree` of the workspace ``top``, its lock file last (see :meth:`Workspace.remove`)."""
    try:
        names = [name for name in os.listdir(top) if name != LOCK_NAME]
    except OSError:
        names = []
    for name in names:
        remove_tree(top / name)  # what stays is named by the removal of the whole, below
    return remove_tree(top)


def _hold_lock(root: Path) -> int:
    """Make ``root/LOCK_NAME`` locked by this process (the file appears already locked: it is made
    and locked under another name, then renamed); the descriptor that holds the lock."""
    temp = root / f"{LOCK_NAME}.new"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, root / LOCK_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


def reclaim(tmpdir: Path) -> list[Path]:
    """Remove the workspaces a killed graven left in ``tmpdir`` (SIGKILL runs no clean-up): this user's
    directories named like a workspace whose lock file nobody holds, and empty ones made more than
    EMPTY_LEFT_AFTER seconds ago. Another directory without the lock file (being made right now, or
    not graven's) is left alone. Best effort: the removed ones."""
    removed: list[Path] = []
    me = os.geteuid()
    now = time.time()
    try:
        names = [n for n in os.listdir(tmpdir) if n.startswith(PREFIXES)]
    except OSError:
        return removed
    for name in names:
        top = tmpdir / name
        try:
            info = os.lstat(top)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != me:
                continue
            if now - info.st_mtime > EMPTY_LEFT_AFTER and not os.listdir(top):
                os.rmdir(top)  # fails (ENOTEMPTY) when something appeared since
                removed.append(top)
                continue
            fd = os.open(top / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live build's
        try:  # held while removing: no other graven removes it at the same time
            if _remove_workspace(top) is None:
                removed.append(top)
        finally:
            os.close(fd)
    return removed


def remove_tree(top: Path) -> str | None:
    """Remove the directory ``top`` and everything below it, whatever the modes; when something cannot
    be removed, a warning that names it (None when all is gone).

    Without recursion, through one directory descriptor at a time (:func:`_remove_below`): a step can
    make a tree as deep as it likes (``mkdir a && cd a``, over and over: deeper than Python's recursion
    limit, which ``shutil.rmtree`` of Python 3.11 hits at about 1,000 levels, and than PATH_MAX)."""
    failures: list[tuple[str, OSError]] = []
    try:
        info = os.lstat(top)
    except FileNotFoundError:
        return None
    except OSError as exc:
        failures.append((str(top), exc))
    else:
        try:
            if stat.S_ISDIR(info.st_mode):
                _remove_below(top, info, failures)
                os.rmdir(top)
            else:
                os.unlink(top)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append((str(top), exc))
    if failures or os.path.lexists(top):
        path, error = failures[0] if failures else (str(top), OSError(errno.ENOTEMPTY, "not empty"))
        return f"cannot remove the build directory {top} ({path}: {error.strerror}); remove it by hand"
    return None


_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHOWN_PATH = 240  # a longer path in a warning is shortened (the build directory, ..., the name)


def _remove_below(top: Path, info: os.stat_result, failures: list[tuple[str, OSError]]) -> None:
    """Remove everything below the directory ``top`` (``info``: its lstat), recording what fails.

    One descriptor is open at a time: the walk goes down by name and back up through ``..``, checked
    to be the directory it came from (the steps have ended: nothing else changes the tree). A directory
    without ``u+rwx`` (a step's ``chmod 000``, Go's read-only module cache) is given it first."""
    below: list[str] = []  # the names from ``top`` down to the directory being cleared

    def shown(name: str) -> str:
        path = os.path.join(top, *below, name)
        return path if len(path) <= _SHOWN_PATH else f"{top}/.../{name} ({len(below) + 1} levels down)"

    def clear(fd: int) -> list[str]:
        """Unlink the non-directories in ``fd``; its subdirectories, each made ``u+rwx``."""
        subdirs: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                        if mode & stat.S_IRWXU != stat.S_IRWXU:
                            with contextlib.suppress(OSError):  # not ours: what fails below is named
                                os.chmod(entry.name, mode | stat.S_IRWXU, dir_fd=fd)
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failures.append((shown(entry.name), exc))
        return subdirs

    if stat.S_IMODE(info.st_mode) & stat.S_IRWXU != stat.S_IRWXU:
        with contextlib.suppress(OSError):
            os.chmod(top, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
    fd = os.open(top, _DIR_OPEN)
    above: list[tuple[int, int]] = []  # (device, inode) of each directory above the current one
    try:
        pending = [clear(fd)]  # for each level down to the current one: the subdirectories left
        while True:
            if pending[-1]:
                name = pending[-1].pop()
                try:
                    child = os.open(name, _DIR_OPEN, dir_fd=fd)
                except OSError as exc:
                    failures.append((shown(name), exc))
                    continue
                here = os.fstat(fd)
                above.append((here.st_dev, here.st_ino))
                os.close(fd)
                fd = child
                below.append(name)
                pending.append(clear(fd))
                continue
            pending.pop()
            if not below:
                return
            parent = os.open("..", _DIR_OPEN, dir_fd=fd)
            os.close(fd)
            fd = parent
            up = os.fstat(fd)
            if (up.st_dev, up.st_ino) != above.pop():
                raise OSError(errno.ESTALE, "the directory tree changed while it was removed")
            name = below.pop()
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.append((shown(name), exc))
    finally:
        os.close(fd)


class _Where:
    """The path being written, for the error message (see :func:`_writing`)."""

    def __init__(self, path: Path) -> None:
        self.path = path


# errno values that mean the file system is full (or the user's quota, or RLIMIT_FSIZE)
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def tempdir_problem(tmp: Path) -> tuple[str, str] | None:
    """Where and why another user could change the temp directory ``tmp`` (:mod:`graven.strictmodes`:
    owned by another user, or writable by others and not sticky); None when nobody else can."""
    from graven.strictmodes import first_problem, walk

    walked, _ = walk(os.path.abspath(tmp))
    return first_problem(walked, set())


def _check_tempdir(tmp: Path) -> None:
    """Refuse a temp directory another user could change (:func:`tempdir_problem`): they could swap
    the build directory, or its work copy, for one of their own while the steps run, and graven would
    sign what they put there. A sticky one (``/tmp``) is fine: nobody renames the private directory
    graven makes in it."""
    from graven.errors import InputError

    found = tempdir_problem(tmp)
    if found is not None:
        where, problem = found
        raise InputError(
            f"{where} {problem}: another user could replace the build directory in TMPDIR={tmp} while "
            "the steps run; point TMPDIR at a directory only you (or root) can write, or a sticky one "
            "such as /tmp"
        )


@contextmanager
def _writing(what: str, path: Path) -> Iterator[_Where]:
    """Turn an OSError raised inside into one BackendError line naming ``what``, the path (the one
    the error names, else the one last set on the yielded object) and TMPDIR, where it is."""
    where = _Where(path)
    try:
        yield where
    except OSError as exc:
        # copyfile names its source first and the file it writes second; a write() names nothing
        named = [name for name in (exc.filename2, exc.filename) if isinstance(name, str)]
        failed = named[0] if named else str(where.path)
        reason = exc.strerror or str(exc)
        hint = f" (build directories are made in TMPDIR={tempfile.gettempdir()})"
        if exc.errno in _FULL:
            hint = hint[:-1] + "; free some space there or point TMPDIR at a larger file system)"
        raise BackendError(f"cannot write {what} {failed}: {reason}{hint}") from None


def checkout(
    repo: GitRepo,
    commit: str,
    dest: Path,
    *,
    epoch: int,
    reverse: bool = False,
    progress: Callable[[int, int], None] | None = None,
    from_worktree: bool = False,
) -> None:
    """Write the commit's whole tree (raw blobs, no filters) to ``dest``, settled with :func:`settle_tree`.

    Submodules are skipped; unsafe paths are refused. ``reverse`` creates the files in reverse order.
    With ``from_worktree``, a file blob is taken from the repository's working tree when the file there
    is exactly that blob (:mod:`graven.sources.worktree`), else from git.
    """
    by_oid: dict[str, list[GitEntry]] = {}
    listing = repo.ls_tree(commit)
    paths = {entry.path for entry in listing}
    for entry in listing:
        check_path(entry.path)
        _check_parents(entry.path, paths)
        if entry.mode == MODE_SUBMODULE:
            continue
        by_oid.setdefault(entry.oid, []).append(entry)
    oids = sorted(by_oid, reverse=reverse)
    with _writing("the checkout", dest) as where:
        dest.mkdir(mode=DIR_MODE, exist_ok=True)
        _write_blobs(
            repo, by_oid, oids, dest, where, reverse=reverse, progress=progress, from_worktree=from_worktree
        )
        where.path = dest
        settle_tree(dest, epoch)


def _check_parents(path: str, paths: set[str]) -> None:
    """Refuse a path below another entry of the tree (a crafted tree can hold a symlink ``a`` and
    ``a/b`` both, which git fsck refuses): writing ``a/b`` could go through the link, out of the
    checkout."""
    at = path.find("/")
    while at != -1:
        if path[:at] in paths:
            raise UnsafeInputError(f"{path}: lies below {path[:at]}, which is not a directory in the commit")
        at = path.find("/", at + 1)


def _write_blobs(
    repo: GitRepo,
    by_oid: dict[str, list[GitEntry]],
    oids: list[str],
    dest: Path,
    where: _Where,
    *,
    reverse: bool,
    progress: Callable[[int, int], None] | None,
    from_worktree: bool = False,
) -> None:
    """Write every entry of ``by_oid`` below ``dest``, naming each target in ``where`` first.

    The directories and files are made first, empty, in the order of ``oids`` (each blob's paths
    sorted), then filled (from the working tree with ``from_worktree``, else from git), and the
    symlinks are made last in the same order: where a file system lists a directory in creation
    order (tmpfs does), the listing depends on the commit (and ``reverse``) only, never on which files
    the working tree happened to hold."""
    ordered = {oid: sorted(by_oid[oid], key=lambda e: e.path, reverse=reverse) for oid in oids}
    for oid in oids:
        for entry in ordered[oid]:
            if entry.mode != MODE_SYMLINK:
                target = dest / entry.path
                where.path = target
                make_dirs(target.parent)
                os.close(os.open(target, _CREATE, 0o644))
    total = len(oids)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None and (done % 256 == 0 or done == total):
            progress(done, total)

    rest = oids
    if from_worktree and not repo.bare:
        wanted = [  # blobs only ever checked out as files
            (entry.path, oid)
            for oid, entries in by_oid.items()
            if all(e.mode != MODE_SYMLINK for e in entries)
            for entry in entries
        ]
        taken: set[str] = set()
        for oid, data in worktree_blobs(repo.root, wanted, max_size=_WORKTREE_MAX, reverse=reverse):
            for entry in ordered[oid]:
                _fill(dest, entry, where, data)
            taken.add(oid)
            tick()
        rest = [oid for oid in oids if oid not in taken]
    targets: dict[str, str] = {}  # symlink blob -> its target, for the end
    for oid, reader in repo.cat_blobs(rest):
        files = [entry for entry in ordered[oid] if entry.mode != MODE_SYMLINK]
        if files:
            _fill(dest, files[0], where, reader)
            for entry in files[1:]:
                _fill(dest, entry, where, dest / files[0].path)
        if len(files) < len(ordered[oid]):
            content = (dest / files[0].path).read_bytes() if files else reader.read()
            try:
                targets[oid] = content.decode("utf-8")
            except UnicodeDecodeError:
                link = next(e for e in ordered[oid] if e.mode == MODE_SYMLINK)
                raise UnsafeInputError(f"{link.path}: symlink target is not valid UTF-8") from None
        tick()
    for oid in oids:
        for entry in ordered[oid]:
            if entry.mode == MODE_SYMLINK:
                target = dest / entry.path
                where.path = target
                make_dirs(target.parent)  # a directory of links only
                os.symlink(targets[oid], target)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILL = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _fill(dest: Path, entry: GitEntry, where: _Where, source: bytes | BlobReader | Path) -> None:
    """Write the (already created) file of ``entry``: ``source`` is its content, a reader of it, or a
    file of this checkout that holds it; then set its mode."""
    target = dest / entry.path
    where.path = target
    with os.fdopen(os.open(target, _FILL), "wb") as handle:
        if isinstance(source, bytes):
            handle.write(source)
        elif isinstance(source, Path):
            with source.open("rb") as copy:
                shutil.copyfileobj(copy, handle, 1 << 20)
        else:
            while chunk := source.read(1 << 20):
                handle.write(chunk)
    os.chmod(target, 0o755 if entry.mode == MODE_EXECUTABLE else 0o644)


def copy_tree(src: Path, dst: Path, *, epoch: int, reverse: bool = False) -> None:
    """Copy the checkout ``src`` to a new directory ``dst`` with the same modes and times."""
    items: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            items.append((rel, os.lstat(os.path.join(src, rel))))
    if reverse:
        items.reverse()
    with _writing("the build's scratch copy", dst) as where:
        os.mkdir(dst, DIR_MODE)
        for rel, info in items:
            target = dst / rel
            where.path = target
            make_dirs(target.parent)
            if stat.S_ISDIR(info.st_mode):
                target.mkdir(exist_ok=True)
            elif stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(src / rel), target)
            else:
                shutil.copyfile(src / rel, target)
                os.chmod(target, 0o755 if info.st_mode & stat.S_IXUSR else 0o644)
        where.path = dst
        settle_tree(dst, epoch)


def give_to(paths: Iterable[Path], uid: int, gid: int) -> None:
    """Make everything at and below ``paths`` (symlinks themselves, never followed) owned by ``uid`` and
    ``gid``: what graven made for the steps of a root build, which run as that user (and see it as
    uid 0's, as when they run as root). Modes and times stay."""
    for top in paths:
        with _writing("the build directory", top) as where:
            for dirpath, dirnames, filenames in walk(top):
                for name in dirnames + filenames:
                    where.path = Path(dirpath, name)
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
            where.path = top
            os.chown(top, uid, gid, follow_symlinks=False)


def settle_tree(root: Path, epoch: int) -> None:
    """Give every directory mode 0755, and every entry (links too, ``root`` included) mtime ``epoch``.

    Directories are done bottom-up and last, since writing below a directory changes its mtime.
    """
    for dirpath, dirnames, filenames in walk(root, topdown=False):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.utime(full, (epoch, epoch), follow_symlinks=False)
            elif os.path.isdir(full):
                os.chmod(full, DIR_MODE)
                os.utime(full, (epoch, epoch))
            else:
                os.utime(full, (epoch, epoch))
    os.chmod(root, DIR_MODE)
    os.utime(root, (epoch, epoch))


def ensure_inside(root: Path, paths: Iterable[str], what: str) -> None:
    """Refuse a path below ``root`` that leads outside it through a symlink in one of its parents.

    Steps can create symlinks; graven reads outputs and writes restored inputs on the host, outside the
    sandbox, so ``out -> /`` with an output ``out/etc/`` must not make it read the host's /etc.
    """
    real_root = os.path.realpath(root)
    for path in paths:
        rel = path.strip("/")
        parent = os.path.dirname(os.path.join(real_root, rel))
        real = os.path.realpath(parent)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise UnsafeInputError(f"{what} {rel}: a symlink in its path leads outside the build directory")
