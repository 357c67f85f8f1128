"""Build a release directory from the store, check one by stat, delete one.

A release is the artifact's tree exactly: regular files (mode 0444, or 0555 when executable), relative
symlinks, directories (0555 once complete). A file's bytes come either from the store through a verified
read (never a hard link to a store object, so that a tampered release can never corrupt the store), or
as a hard link to the same path of the live release when that file holds the same sha256 with the same
mode and its stat is unchanged since graven wrote it (:mod:`graven.deploy.statdb`).

The directories, symlinks and links to unchanged files (all of a next version's release but the few
changed files) are made by two processes when it is safe (Linux, no other thread alive): each makes
whole subtrees, parents first, and takes a directory's stat as soon as nothing more goes into it. That
work is tens of thousands of short system calls, and threads would spend much of it handing the GIL to
each other (two threads gain little over one; two processes halve it). Elsewhere, and for the files
written from the store, a few threads share the work; store reads stay on the calling thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import marshal
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from graven.core.paths import folded_collisions
from graven.core.record import Frozen, Record
from graven.deploy.attributes import attribute_problem
from graven.deploy.lock import open_dir_nofollow
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.errors import BackendError, InputError, IntegrityError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.runtime import can_fork, no_gc, reap
from graven.store.local import LOOSE_THRESHOLD, LocalStore

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = [
    "DIR_MODE",
    "BuildStats",
    "ReleaseCheck",
    "Transfer",
    "build_release",
    "check_release",
    "file_mode",
    "integrity_error",
    "plan_transfer",
    "remove_tree",
    "unique_files",
    "verify_objects",
]

# Threads for writing files (and for the tree where no second process is forked): no more than the cores,
# since the threads spend their time in short system calls and hand the GIL to each other at every one.
WORKERS = max(1, min(4, os.cpu_count() or 1))
DIR_MODE = 0o555
_CHUNK = 1 << 20
_BATCH_BYTES = 4 << 20
_PROGRESS_EVERY = 256
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")
R = TypeVar("R")


def file_mode(executable: bool) -> int:
    """The permission bits of a deployed file."""
    return 0o555 if executable else 0o444


class BuildStats(Record):
    """What building a release did."""

    __slots__ = ("copied", "copied_bytes", "dirs", "files", "linked", "linked_bytes", "symlinks")
    _fields = ("files", "copied", "linked", "copied_bytes", "linked_bytes", "symlinks", "dirs")
    files: int
    copied: int
    linked: int
    copied_bytes: int
    linked_bytes: int
    symlinks: int
    dirs: int

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        files: int = 0,
        copied: int = 0,
        linked: int = 0,
        copied_bytes: int = 0,
        linked_bytes: int = 0,
        symlinks: int = 0,
        dirs: int = 0,
    ) -> None:
        self.files = files
        self.copied = copied
        self.linked = linked
        self.copied_bytes = copied_bytes
        self.linked_bytes = linked_bytes
        self.symlinks = symlinks
        self.dirs = dirs

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {name: getattr(self, name) for name in self._fields}


def unique_files(manifest: TreeManifest) -> tuple[list[FileEntry], list[tuple[FileEntry, FileEntry]]]:
    """The first file of each (sha256, executable), in manifest order, and every other file with the
    first it repeats: a release writes the firsts and hard-links the rest to them."""
    firsts: dict[tuple[str, bool], FileEntry] = {}
    duplicates: list[tuple[FileEntry, FileEntry]] = []
    for entry in manifest.files():
        first = firsts.setdefault((entry.sha256, entry.executable), entry)
        if first is not entry:
            duplicates.append((entry, first))
    return list(firsts.values()), duplicates


def _reusable(st: os.stat_result, entry: FileEntry, table: StatTable, uid: int, gid: int) -> bool:
    """True when ``st`` (an lstat) is a regular file with ``entry``'s mode that still has the stat
    graven recorded for ``entry``'s sha256, belongs to ``uid`` (who deploys the new release) and has
    the group ``gid`` (the new release's): it may be hard-linked into a new release. A file of another
    user's release (root and a service user deploying in turn), or of a release made with another
    group (the deployer's egid changed, a setgid environment directory made plain or the other way
    round), is copied instead: linked, it would be drift in the new one, whose every path must be its
    deployer's and have its group."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == uid
        and st.st_gid == gid
        and stat.S_IMODE(st.st_mode) == file_mode(entry.executable)
        and table.matches(st, entry.sha256)
    )


def _new_release_gid(releases: Path) -> int:
    """The group a release made in ``releases`` (``PATH/releases``) gets, and everything in it: the
    directory's own when it is setgid (as a setgid environment directory makes it), else this process's
    egid. What :func:`build_release` finds its new directory to have (a ``grpid`` mount gives the
    directory's group whatever its bit: the build reads the group back, only a plan guesses)."""
    try:
        st = os.stat(releases)
    except OSError:
        return os.getegid()
    return st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()


class Transfer(Frozen):
    """What building a release would do with the artifact's files, as :func:`build_release` does it."""

    __slots__ = ("copied", "linked")
    _fields = ("linked", "copied")
    linked: int  # hard links: from the same path of the reused release, or to a first copy in this one
    copied: tuple[FileEntry, ...]  # read (verified) from the store and written

    def __init__(self, linked: int, copied: tuple[FileEntry, ...]) -> None:
        _set(self, "linked", linked)
        _set(self, "copied", copied)


def plan_transfer(manifest: TreeManifest, table: StatTable, *, reuse_root: Path | None) -> Transfer:
    """What :func:`build_release` would link and copy, without writing anything: the same firsts and
    duplicates, and the same test of the file at the same path of ``reuse_root`` (a regular file with
    the entry's mode and its recorded stat). Only a link the file system refuses (another device, too
    many links), or a file replaced between that test and the link, would be a copy instead."""
    firsts, duplicates = unique_files(manifest)
    linked = 0
    copied: list[FileEntry] = []
    uid = os.geteuid()
    gid = _new_release_gid(reuse_root.parent) if reuse_root is not None else -1
    for entry in firsts:
        if reuse_root is not None:
            try:
                if _reusable(os.lstat(f"{reuse_root}/{entry.path}"), entry, table, uid, gid):
                    linked += 1
                    continue
            except OSError:
                pass  # gone, or not readable: the build copies it
        copied.append(entry)
    return Transfer(linked + len(duplicates), tuple(copied))


def verify_objects(store: LocalStore, entries: Iterable[FileEntry]) -> None:
    """Read every object ``entries`` name, verified, as a build reads them: the small ones in one bulk
    read of the packs (in path order), the large ones streamed. Raises the store's IntegrityError."""
    ordered = sorted(entries, key=lambda e: e.path)
    contents = store.read_many([e.digest for e in ordered if e.size < LOOSE_THRESHOLD])
    try:
        for _data in contents:
            pass
    finally:
        contents.close()
    for entry in ordered:
        if entry.size >= LOOSE_THRESHOLD:
            store.verify(entry.digest)


def _umask() -> int:
    """The process's umask, read from /proc/self/status (Linux 4.7 and later): setting it to learn it,
    as the fallback must, changes it for that moment in every other thread of the process (a library
    caller's own, a second Context's deploy)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _can_override_permissions() -> bool:
    """True when this process has CAP_DAC_OVERRIDE (it may create entries in read-only directories)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 1))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _setgid(directory: str) -> bool:
    """True when ``directory`` has the setgid bit (directories made in it inherit the bit)."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except OSError:
        return False


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file(
    root: str, entry: FileEntry, data: bytes | None, store: LocalStore, *, fix_mode: bool
) -> os.stat_result:
    """Create the file of ``entry`` below ``root`` (which must not exist) holding ``data``, or streamed
    from the store (verified while it streams) when ``data`` is None; its stat once written."""
    mode = file_mode(entry.executable)
    fd = os.open(f"{root}/{entry.path}", _OPEN_NEW, mode)
    try:
        if data is not None:
            _write_all(fd, data)
        else:
            with store.open(entry.digest) as stream:
                while chunk := stream.read(_CHUNK):
                    _write_all(fd, chunk)
        if fix_mode:
            os.fchmod(fd, mode)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


_DIR_WEIGHT = 3  # making a directory costs the kernel about as much as three checked hard links
_FORK_MIN = 2048  # below this weight a second process is not worth forking
_CHILD_SHARE = 0.46  # of the tasks' weight
# a stat record as plain values (what a forked process can send): st_dev, st_ino, st_size, st_mtime_ns,
# st_ctime_ns, st_mode and the sha256 (DIR_SHA for a directory)
_Rec = tuple[int, int, int, int, int, int, str]


def _record(st: os.stat_result, sha256: str) -> _Rec:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, sha256)


class _Tree(Record):
    """Where everything of a release goes: its directories, the entries each one holds, and the tasks
    that the threads or processes share out. A task is a few units; a unit is a directory with
    everything below it (made parents first) or, for the large directories split further, a directory's
    own entries."""

    __slots__ = (
        "children",
        "dirs",
        "duplicates",
        "files",
        "filled",
        "firsts",
        "later",
        "links",
        "spine",
        "tasks",
    )
    _fields = (
        "firsts",
        "duplicates",
        "dirs",
        "files",
        "links",
        "children",
        "later",
        "filled",
        "spine",
        "tasks",
    )
    firsts: list[FileEntry]  # the first file of each (sha256, executable), in manifest order
    duplicates: list[tuple[FileEntry, FileEntry]]  # every other file, with the first it repeats
    dirs: list[str]  # every directory but the root, sorted: parents before children
    files: dict[str, list[FileEntry]]  # the firsts, by parent directory ("" = the root)
    links: dict[str, list[SymlinkEntry]]  # by parent directory
    children: dict[str, list[str]]  # subdirectories, by parent directory
    later: frozenset[str]  # directories that get entries after the tasks: duplicates' parents
    filled: frozenset[str]  # directories with files or symlinks of their own
    spine: list[str]  # the split directories, made first (parents first), root excluded
    tasks: list[tuple[int, list[tuple[str, bool]]]]  # (weight, units (directory, with its subtree?))

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        firsts: list[FileEntry],
        duplicates: list[tuple[FileEntry, FileEntry]],
        dirs: list[str],
        files: dict[str, list[FileEntry]],
        links: dict[str, list[SymlinkEntry]],
        children: dict[str, list[str]],
        later: frozenset[str],
        filled: frozenset[str],
        spine: list[str],
        tasks: list[tuple[int, list[tuple[str, bool]]]],
    ) -> None:
        self.firsts = firsts
        self.duplicates = duplicates
        self.dirs = dirs
        self.files = files
        self.links = links
        self.children = children
        self.later = later
        self.filled = filled
        self.spine = spine
        self.tasks = tasks

    @classmethod
    def of(cls, manifest: TreeManifest, *, parts: int, linking: bool) -> _Tree:
        """The plan of ``manifest``'s release, in tasks for ``parts`` workers; ``linking``: files may be
        linked from a live release (they weigh in the split), else every file is written later."""
        firsts: list[FileEntry] = []
        duplicates: list[tuple[FileEntry, FileEntry]] = []
        seen: dict[tuple[str, bool], FileEntry] = {}
        files: dict[str, list[FileEntry]] = {}
        links: dict[str, list[SymlinkEntry]] = {}
        later: set[str] = set()
        found: set[str] = set()
        for item in manifest.entries:
            if isinstance(item, DirEntry):
                found.add(item.path)
                continue
            parent = item.path.rpartition("/")[0]
            found.add(parent)
            if isinstance(item, SymlinkEntry):
                links.setdefault(parent, []).append(item)
                continue
            first = seen.setdefault((item.sha256, item.executable), item)
            if first is item:
                firsts.append(item)
                files.setdefault(parent, []).append(item)
            else:
                duplicates.append((item, first))
                later.add(parent)
        dirs: set[str] = set()
        for start in found:
            path = start
            while path and path not in dirs:
                dirs.add(path)
                path = path.rpartition("/")[0]
        ordered = sorted(dirs)
        children: dict[str, list[str]] = {}
        per_file = 1 if linking else 0

        def own(path: str) -> int:  # what a directory's own entries cost (symlinks count as files)
            return per_file * len(files.get(path, ())) + len(links.get(path, ()))

        weight: dict[str, int] = {"": own("")}
        for path in ordered:
            children.setdefault(path.rpartition("/")[0], []).append(path)
            weight[path] = _DIR_WEIGHT + own(path)
        for path in reversed(ordered):  # children before parents: whole subtrees
            weight[path.rpartition("/")[0]] += weight[path]
        # Split the largest subtrees until each is a small share of the work, then bundle the small
        # units into tasks of about that share: workers taking tasks largest first end together.
        share = max(weight[""] // (parts * 6), 256)
        spine: list[str] = []
        units: list[tuple[int, str, bool]] = [(own(""), "", False)]
        heap = [(-weight[c], c) for c in children.get("", ())]
        heapq.heapify(heap)
        while heap:
            negative, path = heapq.heappop(heap)
            below = children.get(path)
            if -negative > share and below:
                spine.append(path)
                units.append((own(path), path, False))
                for child in below:
                    heapq.heappush(heap, (-weight[child], child))
            else:
                units.append((-negative, path, True))
        units.sort(key=lambda unit: -unit[0])
        tasks: list[tuple[int, list[tuple[str, bool]]]] = []
        task: list[tuple[str, bool]] = []
        load = 0
        for size, path, whole in units:
            if not (whole or path in files or path in links):
                continue  # a split directory without entries of its own
            if task and load + size > share:
                tasks.append((load, task))
                task, load = [], 0
            task.append((path, whole))
            load += size
        if task:
            tasks.append((load, task))
        spine.sort()
        filled = frozenset(files.keys() | links.keys())
        return cls(
            firsts, duplicates, ordered, files, links, children, frozenset(later), filled, spine, tasks
        )

    @property
    def weight(self) -> int:
        """All the tasks' work."""
        return sum(load for load, _ in self.tasks)

    def halves(
        self, second: float = 0.5
    ) -> tuple[list[list[tuple[str, bool]]], list[list[tuple[str, bool]]]]:
        """The tasks in two parts, the second with about ``second`` of the weight (each task, largest
        first, to the part furthest below its share)."""
        parts: tuple[list[list[tuple[str, bool]]], list[list[tuple[str, bool]]]] = ([], [])
        loads = [0, 0]
        shares = (1.0 - second, second)
        for load, task in self.tasks:  # largest first
            pick = 0 if loads[0] / shares[0] <= loads[1] / shares[1] else 1
            parts[pick].append(task)
            loads[pick] += load
        return parts


class _Done(Record):
    """What some tasks did."""

    __slots__ = ("copied", "copied_bytes", "linked", "linked_bytes", "missing", "open_dirs", "records")
    _fields = ("records", "linked", "linked_bytes", "missing", "open_dirs", "copied", "copied_bytes")
    records: list[_Rec]  # linked and copied files, finished directories
    linked: int
    linked_bytes: int
    missing: list[FileEntry]  # files still to write from the store
    open_dirs: list[str]  # directories those (or duplicates, or copies) go into
    copied: int  # files written from the store by these tasks' process itself
    copied_bytes: int

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        records: list[_Rec] | None = None,
        linked: int = 0,
        linked_bytes: int = 0,
        missing: list[FileEntry] | None = None,
        open_dirs: list[str] | None = None,
        copied: int = 0,
        copied_bytes: int = 0,
    ) -> None:
        self.records = [] if records is None else records
        self.linked = linked
        self.linked_bytes = linked_bytes
        self.missing = [] if missing is None else missing
        self.open_dirs = [] if open_dirs is None else open_dirs
        self.copied = copied
        self.copied_bytes = copied_bytes

    def add(self, other: _Done) -> None:
        self.records.extend(other.records)
        self.linked += other.linked
        self.linked_bytes += other.linked_bytes
        self.missing.extend(other.missing)
        self.open_dirs.extend(other.open_dirs)
        self.copied += other.copied
        self.copied_bytes += other.copied_bytes


class _Child:
    """A forked process doing some of the tasks (processes, not threads: the work is tens of thousands
    of short system calls, and threads would spend much of it handing the GIL to each other)."""

    def __init__(self, run: Callable[[], _Done]) -> None:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # the child: work, send, exit without running any cleanup of the parent's objects
            code = 1
            try:
                os.close(read_fd)
                try:
                    done = run()
                    payload: tuple[Any, ...] = (
                        "ok",
                        done.records,
                        done.linked,
                        done.linked_bytes,
                        [entry.path for entry in done.missing],
                        done.open_dirs,
                        done.copied,
                        done.copied_bytes,
                    )
                except OSError as exc:
                    payload = ("oserror", exc.errno, exc.strerror, exc.filename)
                except IntegrityError as exc:  # a store object that is missing or damaged
                    payload = ("integrity", str(exc))
                except BaseException as exc:  # reported to the parent, which raises
                    payload = ("error", f"{type(exc).__name__}: {exc}")
                view = memoryview(marshal.dumps(payload))
                while view:
                    view = view[os.write(write_fd, view) :]
                code = 0
            finally:
                # Every file at once, the pipe (the parent reads on now) and the environment's lock (held
                # while this process worked: a deployer killed meanwhile keeps it until then) included;
                # then the exit, which frees this process's memory.
                os.closerange(0, 2**31 - 1)
                os._exit(code)
        os.close(write_fd)
        self.pid: int | None = pid
        self.fd = read_fd

    def result(self, tree: _Tree) -> _Done:
        """What the child did (it has stopped working then; :meth:`reap` waits for its exit); its OSError
        is raised here."""
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self.fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self.fd)
            self.fd = -1
        try:
            payload = marshal.loads(b"".join(chunks))  # noqa: S302 (our own child's)
        except (EOFError, ValueError, TypeError):
            self.reap()  # it died before it could say anything
            raise BackendError("the process sharing the work of building the release failed") from None
        if payload[0] == "oserror":
            raise OSError(payload[1], payload[2], payload[3])
        if payload[0] == "integrity":
            raise IntegrityError(payload[1])
        if payload[0] != "ok":
            raise BackendError(f"building the release failed: {payload[1]}")
        _, records, linked, linked_bytes, missing_paths, open_dirs, copied, copied_bytes = payload
        missing: list[FileEntry] = []
        if missing_paths:
            by_path = {entry.path: entry for entry in tree.firsts}
            missing = [by_path[path] for path in missing_paths]
        return _Done(records, linked, linked_bytes, missing, open_dirs, copied, copied_bytes)

    def stop(self) -> None:
        """Kill the child (when the parent failed) and wait for it: nothing writes into the release after."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid is not None:
            pid, self.pid = self.pid, None
            reap(pid, kill=True)

    def reap(self) -> None:
        """Wait for the child's exit."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            reap(pid, kill=False)


class _Builder:
    def __init__(
        self,
        *,
        store: LocalStore,
        tree: _Tree,
        root: str,
        table: StatTable,
        reuse_root: str | None,
        progress: Callable[[int, int], None] | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.store = store
        self.tree = tree
        self.root = root
        self.table = table
        self.reuse_root = reuse_root
        self.progress = progress
        self.pool = pool
        umask = _umask()
        self.fix_mode = umask & 0o555 != 0
        # Directories are made read-only at once when this process may write into them anyway, and
        # when they do not inherit a setgid bit (a shared deploy directory, chmod g+s): chmod(2) to
        # 0555 at the end clears it, so that a release's directories are 0555 wherever it lies.
        self.dir_mode = (
            DIR_MODE
            if umask & DIR_MODE == 0 and _can_override_permissions() and not _setgid(os.path.dirname(root))
            else 0o755
        )
        self.gid = -1  # the group of the new release's directory, which everything in it has (make_tree)
        self.stats = BuildStats()
        self.records: list[_Rec] = []  # applied to the table at the end
        self.open_dirs: list[str] = []  # directories whose stat is taken at the end
        self.failed = threading.Event()  # a task failed: the others stop at their next directory
        self.child: _Child | None = None  # the process sharing the tasks, if any
        self.pid = os.getpid()  # this process's: a forked child shows no progress
        self.done = 0
        self.total = 0

    def _tick(self, count: int) -> None:
        before = self.done
        self.done += count
        if self.progress is not None and (
            self.done // _PROGRESS_EVERY != before // _PROGRESS_EVERY or self.done == self.total
        ):
            self.progress(self.done, self.total)

    def _map(self, func: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``func`` over ``items`` in the pool, results in order (see :meth:`_results`)."""
        return self._results([self.pool.submit(func, item) for item in items])

    def _results(self, futures: list[Future[R]]) -> Iterator[R]:
        """The results of ``futures`` in order. On the first failure (or an interrupt of this thread)
        the tasks not started are cancelled and the running ones stop early; the pool's shutdown waits
        for them before the caller removes the release."""
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            self._stop(futures)
            raise

    def _stop(self, futures: Iterable[Future[Any]]) -> None:
        self.failed.set()
        for future in futures:
            future.cancel()

    # -- phases ------------------------------------------------------------------------------------

    def make_tree(self, *, fork: bool | None) -> list[FileEntry]:
        """Every directory and symlink; with a live release to reuse, hard links to its unchanged files.
        The work is shared with a forked process (``fork`` None: when :func:`can_fork` and the tree is
        large enough), else with the pool's threads. The files still to write are returned."""
        tree, root, mode = self.tree, self.root, self.dir_mode
        os.mkdir(root, mode)
        self.gid = os.lstat(root).st_gid  # the egid, or a setgid parent's group: every path's here
        for rel in tree.spine:
            os.mkdir(f"{root}/{rel}", mode)
        if fork is None:
            fork = tree.weight >= _FORK_MIN and can_fork()
        done = _Done()
        # the child also sends what it did, and the parent reads it: a little less work for the child
        mine, theirs = tree.halves(_CHILD_SHARE)
        if fork:
            with contextlib.suppress(OSError):  # no process to be had (limits, memory): threads do it all
                self.child = _Child(lambda: self._run_and_copy(theirs))
        if self.child is not None:
            try:
                done.add(self._run_and_copy(mine))
                theirs_done = self.child.result(tree)
            except BaseException:
                self.child.stop()
                raise
            done.add(theirs_done)
            self.stats.copied += done.copied
            self.stats.copied_bytes += done.copied_bytes
            self._tick(theirs_done.copied)  # the parent counted its own as it wrote them
        else:
            for part in self._map(self._run, [[task] for _, task in tree.tasks]):
                done.add(part)
        self.records.extend(done.records)
        self.open_dirs.extend(done.open_dirs)
        self.stats.linked += done.linked
        self.stats.linked_bytes += done.linked_bytes
        self._tick(done.linked)
        return done.missing

    def _run_and_copy(self, tasks: list[list[tuple[str, bool]]]) -> _Done:
        """:meth:`_run`, then, for a release that links nothing from a live one (a first deploy), the
        files of these tasks are written from the store by this same thread: each of the two processes
        writes the files of its own directories, one after the other (threads would hand the GIL to
        each other at every system call). With a live release, the few files to copy are left to
        :meth:`copy`: a failure while copying must not lose the records of the live files already
        linked (they changed ctime), which only the parent holds once the child is done."""
        done = self._run(tasks)
        if done.missing and self.reuse_root is None and not self.failed.is_set():
            counting = os.getpid() == self.pid  # the child shows no progress: the parent counts it
            root, fix_mode, store = self.root, self.fix_mode, self.store
            ordered = sorted(done.missing, key=lambda e: e.path)
            # small objects come verified from one bulk read of the packs, in this order
            contents = store.read_many([e.digest for e in ordered if e.size < LOOSE_THRESHOLD])
            try:
                for entry in ordered:
                    data = next(contents) if entry.size < LOOSE_THRESHOLD else None
                    st = _write_file(root, entry, data, store, fix_mode=fix_mode)
                    done.records.append(_record(st, entry.sha256))
                    done.copied += 1
                    done.copied_bytes += entry.size
                    if counting:
                        self._tick(1)
            finally:
                contents.close()
            done.missing = []
        return done

    def _run(self, tasks: list[list[tuple[str, bool]]]) -> _Done:
        """Some tasks, one after the other: their directories (parents first) and symlinks, and hard
        links to the files whose live copy is unchanged. A directory that nothing is added to later is
        finished once everything below it is (made read-only if need be, and its stat taken)."""
        tree, root, mode, failed = self.tree, self.root, self.dir_mode, self.failed
        children, later, has_entries = tree.children, tree.later, tree.filled
        seal = self.dir_mode != DIR_MODE
        done = _Done()
        records = done.records
        copied_into: set[str] = set()  # directories that get files from the store
        for task in tasks:
            for top, whole in task:
                if not whole:  # a split directory's own entries (its stat is taken at the end)
                    self._entries(top, done)
                    continue
                pending: list[tuple[str, bool]] = [(top, False)]
                while pending:
                    rel, below_done = pending.pop()
                    path = f"{root}/{rel}"
                    if below_done:
                        if rel in later or rel in copied_into:
                            done.open_dirs.append(rel)
                            continue
                        if seal:
                            os.chmod(path, DIR_MODE)
                        st = os.lstat(path)
                        records.append(_record(st, DIR_SHA))
                        continue
                    if failed.is_set():
                        return done
                    os.mkdir(path, mode)
                    pending.append((rel, True))
                    pending.extend((child, False) for child in children.get(rel, ()))
                    if rel in has_entries:
                        before = len(done.missing)
                        self._entries(rel, done)
                        if len(done.missing) != before:
                            copied_into.add(rel)
        return done

    def _entries(self, rel: str, done: _Done) -> None:
        """A directory's symlinks, and hard links to its files whose copy at the same path of the live
        release is unchanged: a regular file with the entry's mode and exactly the stat recorded for its
        sha256 (:func:`_reusable`, right before linking), and still the same inode, size, mtime and mode
        right after. The other files go to ``done.missing``."""
        root = self.root
        for symlink in self.tree.links.get(rel, ()):
            os.symlink(symlink.target, f"{root}/{symlink.path}")
        files = self.tree.files.get(rel)
        if not files:
            return
        reuse = self.reuse_root
        if reuse is None:
            done.missing.extend(files)
            return
        table, records, missing = self.table, done.records, done.missing
        lstat, link, uid, gid = os.lstat, os.link, os.geteuid(), self.gid
        linked = linked_bytes = 0
        for entry in files:
            src = f"{reuse}/{entry.path}"
            try:
                st = lstat(src)
                if not _reusable(st, entry, table, uid, gid):
                    missing.append(entry)
                    continue
                dst = f"{root}/{entry.path}"
                link(src, dst, follow_symlinks=False)
            except OSError:  # gone, or another file system, or too many links: copy instead
                missing.append(entry)
                continue
            after = lstat(dst)  # the new link changed the ctime: this is the record
            if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) != (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_mode,
            ):  # replaced between the check and the link: not the file that was checked
                os.unlink(dst)
                missing.append(entry)
                continue
            records.append(_record(after, entry.sha256))
            linked += 1
            linked_bytes += entry.size
        done.linked += linked
        done.linked_bytes += linked_bytes

    def copy(self, entries: Sequence[FileEntry]) -> None:
        """Write each entry from the store, a batch at a time: this thread reads (verified) up to
        ``_BATCH_BYTES`` while the pool writes the batch read before it, a directory per task. Objects
        of 1 MiB and more are streamed by the pool (loose objects are verified while streaming)."""
        root, fix_mode, store = self.root, self.fix_mode, self.store

        def write_group(group: list[tuple[FileEntry, bytes | None]]) -> list[_Rec]:
            out: list[_Rec] = []
            for entry, data in group:
                if self.failed.is_set():
                    break
                st = _write_file(root, entry, data, store, fix_mode=fix_mode)
                out.append(_record(st, entry.sha256))
            return out

        def submit(batch: list[tuple[FileEntry, bytes | None]]) -> list[Future[list[_Rec]]]:
            per_dir: dict[str, list[tuple[FileEntry, bytes | None]]] = {}
            for item in batch:
                per_dir.setdefault(item[0].path.rpartition("/")[0], []).append(item)
            groups: list[list[tuple[FileEntry, bytes | None]]] = [[] for _ in range(WORKERS)]
            for members in sorted(per_dir.values(), key=len, reverse=True):
                min(groups, key=len).extend(members)
            futures: list[Future[list[_Rec]]] = []
            try:
                for group in groups:
                    if group:
                        futures.append(self.pool.submit(write_group, group))
            except BaseException:  # interrupted half-way: what was handed over stops too
                self._stop(futures)
                raise
            return futures

        def settle(batch: list[tuple[FileEntry, bytes | None]], futures: list[Future[list[_Rec]]]) -> None:
            for records in self._results(futures):
                self.records.extend(records)
            for entry, _data in batch:
                self.stats.copied += 1
                self.stats.copied_bytes += entry.size

        in_flight: tuple[list[tuple[FileEntry, bytes | None]], list[Future[list[_Rec]]]] | None = None
        batch: list[tuple[FileEntry, bytes | None]] = []
        size = 0
        ordered = sorted(entries, key=lambda e: e.path)
        # small objects come verified from one bulk read of the packs, in this order
        contents = store.read_many([e.digest for e in ordered if e.size < LOOSE_THRESHOLD])
        try:
            for entry in ordered:
                if entry.size >= LOOSE_THRESHOLD:
                    batch.append((entry, None))
                else:
                    batch.append((entry, next(contents)))
                    size += entry.size
                self._tick(1)
                if size >= _BATCH_BYTES:
                    if in_flight is not None:
                        settle(*in_flight)  # at most one batch written while the next is read
                    in_flight = (batch, submit(batch))
                    batch, size = [], 0
            if in_flight is not None:
                settle(*in_flight)
                in_flight = None
            settle(batch, submit(batch))
        except BaseException:
            self._stop(in_flight[1] if in_flight is not None else ())
            raise
        finally:
            contents.close()

    def link_duplicates(self, duplicates: Sequence[tuple[FileEntry, FileEntry]]) -> None:
        """Files whose content and mode repeat within the artifact are links to the first copy; the last
        link to an inode gives its record. An inode at the file system's limit of links (65,000 on
        ext4: an artifact with that many empty files, or fewer in each of the releases that share the
        inode) takes no more: the next duplicate is written from the store, and the ones after it
        are links to that copy."""
        root = self.root
        per_first: dict[str, list[FileEntry]] = {}
        for entry, first in duplicates:
            per_first.setdefault(first.path, []).append(entry)
        records = self.records
        linked = 0
        for first_path, entries in per_first.items():
            source = f"{root}/{first_path}"
            last: str | None = None  # the newest link to ``source``: its stat is the inode's record
            for entry in entries:
                dst = f"{root}/{entry.path}"
                try:
                    os.link(source, dst)
                except OSError as exc:
                    if exc.errno != errno.EMLINK:
                        raise
                    if last is not None:
                        records.append(_record(os.lstat(last), entry.sha256))
                    st = _write_file(root, entry, None, self.store, fix_mode=self.fix_mode)
                    records.append(_record(st, entry.sha256))
                    self.stats.copied += 1
                    self.stats.copied_bytes += entry.size
                    source, last = dst, None
                    continue
                last = dst
                linked += 1
                self.stats.linked_bytes += entry.size
            if last is not None:
                records.append(_record(os.lstat(last), entries[-1].sha256))
        self.stats.linked += linked
        self._tick(len(duplicates))

    def finish(self) -> None:
        """The directories still open (the split ones, and those that got files from the store or
        duplicates), made read-only, then the stat of everything that changed."""
        root = self.root
        chmod = self.dir_mode != DIR_MODE
        records = self.records
        for rel in sorted({*self.tree.spine, *self.open_dirs}):
            path = f"{root}/{rel}"
            if chmod:
                os.chmod(path, DIR_MODE)
            st = os.lstat(path)
            records.append(_record(st, DIR_SHA))
        if chmod:
            os.chmod(root, DIR_MODE)  # the root's record is taken once it has its final name
        self.table.record_values(records)


def build_release(
    store: LocalStore,
    manifest: TreeManifest,
    dest: Path,
    table: StatTable,
    *,
    reuse_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    fork: bool | None = None,
) -> BuildStats:
    """Write ``manifest`` as a new directory ``dest`` (which must not exist) and record the stat of
    every file and directory in ``table`` (the root's own record is the caller's, after renaming it).
    Unchanged files at the same path of ``reuse_root`` are hard-linked. The directories and links are
    made by two processes (``fork`` None: when it is safe and worth it, see :func:`can_fork`) or by
    threads. On an error (or an interrupt) every thread and process has stopped when this returns; the
    caller removes ``dest``."""
    from concurrent.futures import ThreadPoolExecutor  # here: a rollback's stat check needs no pool

    with no_gc(), ThreadPoolExecutor(WORKERS, thread_name_prefix="graven-release") as pool:
        tree = _Tree.of(manifest, parts=WORKERS, linking=reuse_root is not None)
        firsts, duplicates = tree.firsts, tree.duplicates
        builder = _Builder(
            store=store,
            tree=tree,
            root=str(dest),
            table=table,
            reuse_root=str(reuse_root) if reuse_root else None,
            progress=progress,
            pool=pool,
        )
        builder.total = len(firsts) + len(duplicates)
        try:
            try:
                missing = builder.make_tree(fork=fork)
                builder.copy(missing)
                builder.link_duplicates(duplicates)
                builder.finish()
            except BaseException:
                # The live files linked so far have a new ctime: their records go to the table now (as
                # finish() would have done), so that the caller's remove_tree refreshes them when it
                # takes the links away, and the next deploy links them again instead of copying.
                table.record_values(builder.records)
                raise
        except OSError as exc:
            if exc.errno == errno.EEXIST and (folded := _folded_pair(manifest, dest)) is not None:
                from graven.deploy.fscheck import case_fold_refusal

                raise InputError(case_fold_refusal(dest, *folded)) from None
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackendError(f"cannot write the release {dest}: {exc.strerror}{where}") from None
        finally:
            builder.failed.set()  # whatever is still running stops at its next directory
            if builder.child is not None:
                builder.child.reap()
    stats = builder.stats
    stats.files = len(firsts) + len(duplicates)
    stats.symlinks = sum(len(links) for links in tree.links.values())
    stats.dirs = len(tree.dirs) + 1
    return stats


def _folded_pair(manifest: TreeManifest, dest: Path) -> tuple[str, str] | None:
    """After a name already existed while ``dest`` was written: two paths of ``manifest`` that differ
    only in case (:func:`folded_collisions`) and that the file system of ``dest`` took for one: both
    names lead to something there, and not both are listed (a FUSE file system may even give each
    spelling an inode number of its own); None when no such pair is found."""

    def listed(path: str) -> bool:
        parent, _, name = path.rpartition("/")
        return name in os.listdir(f"{dest}/{parent}" if parent else dest)

    for first, second in folded_collisions([entry.path for entry in manifest.entries]):
        try:
            os.lstat(f"{dest}/{first}")
            os.lstat(f"{dest}/{second}")
            if not (listed(first) and listed(second)):
                return first, second
        except OSError:
            continue
    return None


class ReleaseCheck(Record):
    """What checking a release on disk against its manifest found."""

    __slots__ = ("by_stat", "problems", "rehashed")
    _fields = ("problems", "rehashed", "by_stat")
    problems: list[str]
    rehashed: int  # files whose stat changed but whose content was still right
    by_stat: bool  # everything matched its record: no directory was read, no file hashed

    def __init__(self, problems: list[str] | None = None, rehashed: int = 0, by_stat: bool = False) -> None:
        self.problems = [] if problems is None else problems
        self.rehashed = rehashed
        self.by_stat = by_stat

    @property
    def ok(self) -> bool:
        """True when the tree is exactly the artifact."""
        return not self.problems


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(base: str, path: str, seen: os.stat_result) -> tuple[str, os.stat_result] | None:
    """The sha256 of ``base/path`` and the stat to record for it, when the file is still the inode the
    scan saw (``seen``: same device, inode, mode, size, mtime and ctime before and after it is read)
    and this user or root owns it; else None. It is opened through directories opened without following a
    symbolic link, so what is hashed is what is recorded (a file swapped in only while it is hashed,
    or a directory on its way swapped for a link, is never vouched for)."""
    parent, _, name = path.rpartition("/")
    try:
        dir_fd = open_dir_nofollow(Path(base, parent), parent.count("/") + 1 if parent else 0, create=False)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            before = os.fstat(fd)
            if _identity(before) != _identity(seen) or before.st_uid not in (os.geteuid(), 0):
                return None  # another inode now, or one another user could have written
            digest = hashlib.sha256()
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
            after = os.fstat(fd)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    return (digest.hexdigest(), after) if _identity(after) == _identity(seen) else None


def _check_by_stat(
    root: Path,
    manifest: TreeManifest,
    table: StatTable,
    owner: int | None = None,
    group: int | None = None,
    *,
    fork: bool | None = None,
) -> bool:
    """True when the root, every directory and every file still have the stat graven recorded, and the
    owner and group the release was deployed with (``owner``, ``group``: as the stat table records
    them; None: the root's). An unchanged directory still holds exactly the entries graven made
    (adding, removing or replacing one changes its ctime), so its symlinks and its lack of extra
    entries need no reading. A record alone does not vouch for the owner or group: a graven that
    compared no group (or no owner) hard-linked a file of a release made with another one into the next
    release and recorded it there.

    A large release is checked by two processes, each half of its entries (``fork`` None: when
    :func:`can_fork` and the release has ``_FORK_MIN`` entries or more): the work is thousands of
    ``lstat`` calls and their comparisons, all of it this process's CPU (~30 ms for django's 10,000
    paths; a forked process costs ~1 ms)."""
    base = str(root)
    try:
        root_st = os.lstat(base)
    except OSError:
        return False
    uid = root_st.st_uid if owner is None else owner
    gid = root_st.st_gid if group is None else group
    if not (root_st.st_uid == uid and root_st.st_gid == gid and table.matches(root_st, DIR_SHA)):
        return False
    entries = manifest.entries
    if fork is None:
        fork = len(entries) >= _FORK_MIN and can_fork()
    if not fork:
        return _entries_match(base, entries, table, uid, gid)
    half = len(entries) // 2
    try:
        pid = os.fork()
    except OSError:  # no process to be had (limits, memory): this one checks everything
        return _entries_match(base, entries, table, uid, gid)
    if pid == 0:  # the child: the second half; its answer is its exit status
        code = 1
        try:
            code = 0 if _entries_match(base, entries[half:], table, uid, gid) else 1
        finally:
            os._exit(code)
    ok = False
    try:
        ok = _entries_match(base, entries[:half], table, uid, gid)
    finally:
        status = reap(pid, kill=not ok)  # its answer no longer matters when this half failed
    return ok and os.waitstatus_to_exitcode(status) == 0


def _entries_match(base: str, entries: Sequence[TreeEntry], table: StatTable, uid: int, gid: int) -> bool:
    """True when every entry of ``entries`` and every directory above one (the root excepted) still has
    the stat graven recorded, the owner ``uid`` and the group ``gid`` (:func:`_check_by_stat`)."""

    def matches(st: os.stat_result, sha256: str) -> bool:
        return st.st_uid == uid and st.st_gid == gid and table.matches(st, sha256)

    try:
        seen_dirs: set[str] = {""}
        lstat = os.lstat
        for entry in entries:
            parent = entry.path.rpartition("/")[0]
            while parent not in seen_dirs:  # each directory once, the first time an entry is below it
                seen_dirs.add(parent)
                if not matches(lstat(f"{base}/{parent}"), DIR_SHA):
                    return False
                parent = parent.rpartition("/")[0]
            if isinstance(entry, FileEntry):
                if not matches(lstat(f"{base}/{entry.path}"), entry.sha256):
                    return False
            elif isinstance(entry, DirEntry):
                if not matches(lstat(f"{base}/{entry.path}"), DIR_SHA):
                    return False
            elif os.readlink(f"{base}/{entry.path}") != entry.target:
                return False
    except OSError:
        return False
    return True


class _Scan(Record):
    """What a release directory holds, by relative path (the root itself is ``""``)."""

    __slots__ = ("dirs", "files", "links", "problems")
    _fields = ("files", "links", "dirs", "problems")
    files: dict[str, os.stat_result]
    links: dict[str, str]
    dirs: dict[str, os.stat_result]
    problems: list[str]  # special files, entries gone while reading

    def __init__(
        self,
        files: dict[str, os.stat_result] | None = None,
        links: dict[str, str] | None = None,
        dirs: dict[str, os.stat_result] | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.files = {} if files is None else files
        self.links = {} if links is None else links
        self.dirs = {} if dirs is None else dirs
        self.problems = [] if problems is None else problems


def _scan_dir(found: _Scan, rel: str, absdir: str) -> list[tuple[str, str]]:
    """Sort the entries of one directory into ``found``; its subdirectories, to be read next."""
    subdirs: list[tuple[str, str]] = []
    with os.scandir(absdir) as entries:
        for item in entries:
            path = f"{rel}{item.name}"
            if item.is_symlink():
                found.links[path] = os.readlink(item.path)
            elif item.is_dir(follow_symlinks=False):
                found.dirs[path] = item.stat(follow_symlinks=False)
                subdirs.append((f"{path}/", item.path))
            elif item.is_file(follow_symlinks=False):
                found.files[path] = item.stat(follow_symlinks=False)
            else:
                found.problems.append(f"{path}: unexpected special file")
    return subdirs


def _scan(root: Path) -> _Scan | None:
    """Read the whole tree at ``root``; None when ``root`` is missing. A directory's stat is taken
    before its entries are read: a change made meanwhile makes the record taken from it stale."""
    found = _Scan()
    try:
        found.dirs[""] = os.lstat(root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"cannot read the release {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(found.dirs[""].st_mode):
        found.problems.append("./: not a directory")
        return found
    stack: list[tuple[str, str]] = [("", str(root))]
    while stack:
        rel, absdir = stack.pop()
        try:
            stack.extend(_scan_dir(found, rel, absdir))
        except FileNotFoundError:
            found.problems.append(f"{rel or './'}: removed while being checked")
        except PermissionError as exc:  # made unreadable (chmod 0000): a difference, rebuilt from the store
            found.problems.append(f"{rel or './'}: cannot be read ({exc.strerror})")
        except OSError as exc:
            raise BackendError(f"cannot read the release {root}: {exc.strerror}") from None
    return found


StoreInode = Callable[[str], tuple[int, int] | None]  # sha256 hex -> the store's loose inode, if any


def _check_entries(
    found: _Scan,
    manifest: TreeManifest,
    table: StatTable,
    base: str,
    check: ReleaseCheck,
    *,
    rehash: bool,
    store_inode: StoreInode | None,
    owner: int,
    group: int,
    every_owner: bool = False,
    every_group: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> set[str]:
    """Check every manifest entry against the scan (taking what matched out of it); the directories the
    release must have (``""``, its root, included). ``owner`` and ``group``: the deployer's uid and the
    release's gid, held against every file that is read again (``every_owner``, ``every_group``:
    against those that still have their record too). ``progress``: ``(done, total)`` files, at the
    start, every ``_CHECK_EVERY`` files and at the end."""
    expected_dirs: set[str] = {""}
    total = sum(1 for _ in manifest.files()) if progress is not None else 0
    if not total:
        progress = None  # nothing to count
    done = 0
    if progress is not None:
        progress(0, total)
    for entry in manifest.entries:
        expected_dirs.update(_parents(entry.path))
        if isinstance(entry, FileEntry):
            done += 1
            if progress is not None and not done % _CHECK_EVERY:
                progress(done, total)
            st = found.files.pop(entry.path, None)
            if st is None:
                check.problems.append(f"{entry.path}: missing or not a regular file")
                continue
            if stat.S_IMODE(st.st_mode) != file_mode(entry.executable):
                check.problems.append(f"{entry.path}: mode {stat.S_IMODE(st.st_mode):04o}")
                continue
            if every_owner and st.st_uid != owner and table.matches(st, entry.sha256):
                check.problems.append(f"{entry.path}: owner uid {st.st_uid} (deployed as {owner})")
                continue
            if every_group and st.st_gid != group and table.matches(st, entry.sha256):
                check.problems.append(f"{entry.path}: group gid {st.st_gid} (deployed as {group})")
                continue
            if not table.matches(st, entry.sha256):
                hashed = _hash_file(base, entry.path, st) if rehash else None
                if hashed is not None and hashed[0] == entry.sha256:
                    if store_inode is not None and store_inode(entry.sha256) == (st.st_dev, st.st_ino):
                        check.problems.append(f"{entry.path}: shares its inode with the store's object")
                        continue  # never vouched for, never linked into a next release
                    # the same content, a new ctime: a chown, a chgrp or a capability is never vouched for
                    problem = attribute_problem(f"{base}/{entry.path}", hashed[1], owner, group)
                    if problem is not None:
                        check.problems.append(f"{entry.path}: {problem}")
                        continue
                    table.record(hashed[1], entry.sha256)
                    check.rehashed += 1
                else:
                    check.problems.append(f"{entry.path}: content changed since it was deployed")
        elif isinstance(entry, SymlinkEntry):
            target = found.links.pop(entry.path, None)
            if target != entry.target:
                what = "missing" if target is None else f"points to {target}"
                check.problems.append(f"{entry.path}: symlink {what}, expected {entry.target}")
        elif isinstance(entry, DirEntry):
            expected_dirs.add(entry.path)
    if progress is not None and done % _CHECK_EVERY:
        progress(done, total)
    return expected_dirs


_CHECK_EVERY = 256  # files between two reports of a release's check (a re-hash is most of their cost)


def _leftover_problems(found: _Scan, expected_dirs: set[str]) -> list[str]:
    """Extra and missing directories, extra files and symlinks, then directory modes (the root's,
    named ``./``, included)."""
    dirs = set(found.dirs)
    problems = [f"{path}/: unexpected directory" for path in sorted(dirs - expected_dirs)]
    problems.extend(f"{path}/: missing directory" for path in sorted(expected_dirs - dirs))
    problems.extend(f"{path}: unexpected file" for path in sorted(found.files))
    problems.extend(f"{path}: unexpected symlink" for path in sorted(found.links))
    for path in sorted(expected_dirs & dirs):
        mode = stat.S_IMODE(found.dirs[path].st_mode)
        if mode != DIR_MODE:
            problems.append(f"{path or '.'}/: mode {mode:04o}")
    return problems


def check_release(
    root: Path,
    manifest: TreeManifest,
    table: StatTable,
    *,
    rehash: bool = True,
    store_inode: StoreInode | None = None,
    owner: int | None = None,
    group: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fork: bool | None = None,
) -> ReleaseCheck:
    """Compare a release directory with its manifest. When the root, every directory and every file
    still have the stat graven recorded, that is enough. Otherwise every entry is read: paths, kinds,
    modes (the root's too), link targets; a file whose stat changed is hashed (with ``rehash``) and,
    when its content is still right, its record is refreshed. Extra, missing and changed entries are
    problems. Only a release without problems has its directories (and its root) recorded again. A
    re-hashed file that is the store's own object (``store_inode``: a hard link made by hand) is a
    problem, however right its content. ``owner``: the uid that deployed the release, as the stat table
    records it (None: not recorded, the root's owner is the reference); a root that is another user's
    is a problem (its owner could replace what is in it). ``group``: likewise the gid the release was
    deployed with (None: the root's group); a path with another group is a problem (that group may have
    access to it). ``progress``: ``(done, total)`` files of the manifest, when the check by stat was not
    enough and every entry is read (re-hashing can then take long); nothing for a check by stat.
    ``fork``: whether a second process shares the check by stat (None: when it is safe and worth it)."""
    with no_gc():
        return _check_release(
            root,
            manifest,
            table,
            rehash=rehash,
            store_inode=store_inode,
            owner=owner,
            group=group,
            progress=progress,
            fork=fork,
        )


def _check_release(
    root: Path,
    manifest: TreeManifest,
    table: StatTable,
    *,
    rehash: bool,
    store_inode: StoreInode | None,
    owner: int | None,
    group: int | None,
    progress: Callable[[int, int], None] | None = None,
    fork: bool | None = None,
) -> ReleaseCheck:
    if _check_by_stat(root, manifest, table, owner, group, fork=fork):
        return ReleaseCheck(by_stat=True)
    found = _scan(root)
    if found is None:
        return ReleaseCheck(problems=[f"{root}: missing"])
    check = ReleaseCheck(problems=list(found.problems))
    root_st = found.dirs[""]
    if not stat.S_ISDIR(root_st.st_mode):
        return check
    recorded = owner is not None
    if owner is None:
        owner = root_st.st_uid
    elif root_st.st_uid != owner:
        check.problems.append(f"./: owner uid {root_st.st_uid} (deployed as {owner})")
    grouped = group is not None
    if group is None:
        group = root_st.st_gid
    elif root_st.st_gid != group:
        check.problems.append(f"./: group gid {root_st.st_gid} (deployed as {group})")
    # every directory is the deployer's and has the release's group (a chown or chgrp moves only the
    # directory's ctime, which the records below take again); without a recorded owner or group the
    # root's is only a guess, which every file must bear out (a chown or chgrp of the root alone would
    # else make its new owner or group the one recorded)
    for path, st in sorted(found.dirs.items()):
        if path and st.st_uid != owner:
            check.problems.append(f"{path}/: owner uid {st.st_uid} (deployed as {owner})")
        if path and st.st_gid != group:
            check.problems.append(f"{path}/: group gid {st.st_gid} (deployed as {group})")
    expected_dirs = _check_entries(
        found,
        manifest,
        table,
        str(root),
        check,
        rehash=rehash,
        store_inode=store_inode,
        owner=owner,
        group=group,
        every_owner=not recorded,
        every_group=not grouped,
        progress=progress,
    )
    check.problems.extend(_leftover_problems(found, expected_dirs))
    if not check.problems:  # every entry checked: the directories are right as they are now
        table.record_all((found.dirs[path], DIR_SHA) for path in sorted(expected_dirs))
    return check


_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path, table: StatTable | None = None, *, parent_nofollow: bool = False) -> None:
    """Delete a (read-only) tree and forget its records. A file that shares its inode with another
    release loses a link, which changes the inode's ctime: when its record was valid, it is refreshed
    from the still-open file.

    Every directory is opened relative to its parent without following a symbolic link, and must be
    the one its parent's listing showed: a directory swapped for a link while the tree is removed makes
    the removal fail, never reach outside the tree (the ``rm -rf`` race). With ``parent_nofollow`` the
    directory holding ``path`` must not be a symbolic link either (an environment's ``releases``)."""

    def open_listed(parent_fd: int, name: str, listed_ino: int) -> tuple[int, os.stat_result]:
        """The directory ``name`` of ``parent_fd``, which must be the inode its listing named."""
        try:
            fd = os.open(name, _DIR_NOFOLLOW, dir_fd=parent_fd)
        except PermissionError:  # a directory without read access (0000, say): opened up, never via a link
            try:
                os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)
            except (ValueError, NotImplementedError):
                # Python's answer to EOPNOTSUPP: a link there now (or glibc < 2.32, or no /proc)
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name) from None
            fd = os.open(name, _DIR_NOFOLLOW, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            if st.st_ino != listed_ino:  # the inode the parent's listing named (d_ino), not a later stat
                raise OSError(errno.ESTALE, "replaced while it was being removed", name)
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o700)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def listing(fd: int) -> list[tuple[str, bool, bool, int]]:
        """The entries of ``fd``, last first: (name, a directory, a regular file, inode)."""
        with os.scandir(fd) as entries:
            items = [
                (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False), e.inode())
                for e in entries
            ]
        items.reverse()
        return items

    def remove_dir(parent_fd: int, name: str, listed_ino: int) -> None:
        """Remove the directory ``name`` of ``parent_fd`` and everything below it, without recursion
        and with one descriptor open at a time (a release can be nested deeper than Python's recursion
        limit, ~1,000 levels, a drifted one deeper than PATH_MAX): down by name, each directory the
        inode its parent's listing named, and back up through ``..``, which must be the directory it
        came from."""
        fd, st = open_listed(parent_fd, name, listed_ino)
        # for each level from ``name`` down: its name, its stat, the entries still to remove
        levels: list[tuple[str, os.stat_result, list[tuple[str, bool, bool, int]]]] = []
        try:
            levels.append((name, st, listing(fd)))
            while levels:
                here, here_st, items = levels[-1]
                if items:
                    item, is_dir, is_file, ino = items.pop()
                    try:
                        if is_dir:
                            child_fd, child_st = open_listed(fd, item, ino)
                            os.close(fd)
                            fd = child_fd
                            levels.append((item, child_st, listing(fd)))
                        elif table is not None and is_file:
                            unlink_file(table, fd, item, os.stat(item, dir_fd=fd, follow_symlinks=False))
                        else:
                            os.unlink(item, dir_fd=fd)
                    except FileNotFoundError:  # gone meanwhile: one less to remove, the rest still goes
                        pass
                    continue
                levels.pop()
                if not levels:
                    break
                up = os.open("..", _DIR_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = up
                above = os.fstat(fd)
                if (above.st_dev, above.st_ino) != (levels[-1][1].st_dev, levels[-1][1].st_ino):
                    raise OSError(errno.ESTALE, "moved while it was being removed", levels[-1][0])
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(here, dir_fd=fd)
                    if table is not None:
                        table.forget(here_st.st_ino)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent_fd)
        if table is not None:
            table.forget(st.st_ino)

    def unlink_file(table: StatTable, dir_fd: int, name: str, before: os.stat_result) -> None:
        record = table.inodes.get(before.st_ino)
        if before.st_nlink > 1 and record is not None and table.matches(before, record[0]):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.unlink(name, dir_fd=dir_fd)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if after.st_ino == before.st_ino and after.st_nlink > 0:
                table.record(after, record[0])
            return
        os.unlink(name, dir_fd=dir_fd)
        if before.st_nlink <= 1:
            table.forget(before.st_ino)

    try:
        parent = os.open(
            path.parent, _DIR_NOFOLLOW if parent_nofollow else os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackendError(f"cannot remove {path}: {exc.strerror}") from None
    try:
        st = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            remove_dir(parent, path.name, st.st_ino)
        else:
            os.unlink(path.name, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackendError(f"cannot remove {path}: {exc.strerror}") from None
    finally:
        os.close(parent)


def integrity_error(exc: IntegrityError, dest: Path, *, doing: str = "writing") -> IntegrityError:
    """Name the release being built (or planned: ``doing``) in an integrity failure."""
    return IntegrityError(f"{exc} (while {doing} {dest.name}); run `graven verify` on the artifact")
