"""Observe a release directory for :func:`graven.core.drift.compare_tree`.

Fast (the default): one ``lstat`` per path of the manifest; a file whose ``(inode, size, mtime_ns,
ctime_ns, mode)`` is what graven verified (:mod:`graven.drift.cache`, else the deploy's stat table) is
not read; every other file is hashed. A directory is listed (to find added paths) only when its stat
changed since a check found its listing exact. Records whose times are not older than their
recording time are "racy" and never trusted (:func:`graven.core.drift.is_racy`).

Full: list every directory and hash every file, trusting no record. Small files are hashed as the walk
finds them; files of 1 MiB and more go to a thread pool (hashlib releases the GIL while it hashes).

Either scan given a ``stop`` event raises :class:`ScanStopped` soon after it is set: between files, and
between chunks of a large one (``graven watch`` must not wait for a full check of a large release).
"""

from __future__ import annotations

import bisect
import errno
import functools
import hashlib
import marshal
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from graven.core.drift import Observed, is_racy
from graven.core.record import Frozen, Record
from graven.deploy.attributes import attribute_problem, deployer_gid, deployer_uid
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.drift.cache import DirRecord, FileRecord, VerifiedCache
from graven.drift.walk import (
    BIG,
    DIR_OPEN,
    OPEN_FILE,
    ForkedWalk,
    ScanStopped,
    dir_attribute_problem,
    hash_rest,
    kind_of,
    observe_raw,
    open_dir,
    out_of_resources,
    unreadable,
)
from graven.model.manifest import FileEntry, SymlinkEntry, TreeManifest
from graven.runtime import can_fork

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

if TYPE_CHECKING:  # the pool is started, and its module imported, only when a file needs it
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = [
    "SPLIT_MIN_FILES",
    "ForkedWalk",
    "Hasher",
    "ReleaseIndex",
    "ScanResult",
    "ScanStopped",
    "plan_split",
    "scan_release",
]

HashResult = tuple[os.stat_result | None, str]  # stat of the open file, sha256 hex or "unreadable: ..."
_R = TypeVar("_R")


def _record(st: os.stat_result) -> FileRecord:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _hash_fd(fd: int, size: int, stop: threading.Event | None) -> str:
    if size < BIG:
        data = os.read(fd, size + 1)  # exactly the file, plus one byte to notice that it grew
        if len(data) <= size:
            return hashlib.sha256(data).hexdigest()
        return hash_rest(fd, data, stop)
    return hash_rest(fd, b"", stop)


def hash_path(path: str, stop: threading.Event | None = None) -> HashResult:
    """Open (never following a symlink), fstat and hash one file (:class:`ScanStopped`: ``stop`` was
    set)."""
    if stop is not None and stop.is_set():
        raise ScanStopped
    try:
        fd = os.open(path, OPEN_FILE)
    except OSError as exc:
        return None, unreadable(exc, path)
    return _hash_owned(fd, path, stop)


AttrsResult = tuple[os.stat_result | None, str, str | None]  # HashResult and the file's attribute problem


def hash_at(  # noqa: PLR0917 - what partial() binds for the pool
    dir_fd: int, name: str, what: str, owner: int, group: int, stop: threading.Event | None = None
) -> AttrsResult:
    """Open ``name`` in the open directory ``dir_fd`` (never following a symlink), fstat and hash it, and
    read its owner, group and extended attributes from the descriptor (:func:`attribute_problem`):
    nothing is looked up by a path whose middle its owner could swap for a symlink meanwhile."""
    if stop is not None and stop.is_set():
        raise ScanStopped
    try:
        fd = os.open(name, OPEN_FILE, dir_fd=dir_fd)
    except OSError as exc:
        return None, unreadable(exc, what), None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, "", None
        return st, _hash_fd(fd, st.st_size, stop), attribute_problem(fd, st, owner, group)
    except OSError as exc:
        return None, unreadable(exc, what), None
    finally:
        os.close(fd)


def _hash_owned(fd: int, what: str, stop: threading.Event | None) -> HashResult:
    """fstat and hash the open file ``fd``, then close it (``what`` names it in an error)."""
    try:
        if stop is not None and stop.is_set():
            raise ScanStopped
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, ""
        return st, _hash_fd(fd, st.st_size, stop)
    except OSError as exc:
        return None, unreadable(exc, what)
    finally:
        os.close(fd)


class Hasher:
    """Hashes files; big ones in a pool of threads (kept for the life of a watcher)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _the_pool(self) -> ThreadPoolExecutor:
        """The pool, made on first use."""
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="graven-hash")
            return self._pool

    def submit(self, path: str, stop: threading.Event | None = None) -> Future[HashResult]:
        """Hash ``path`` in the pool (:func:`hash_path`)."""
        return self._the_pool().submit(hash_path, path, stop)

    def submit_fd(self, fd: int, what: str, stop: threading.Event | None = None) -> Future[HashResult]:
        """Hash the open file ``fd`` in the pool, which closes it (``what`` names it in an error)."""
        try:
            return self._the_pool().submit(_hash_owned, fd, what, stop)
        except BaseException:
            os.close(fd)
            raise

    def hash_many(
        self, paths: list[tuple[str, int]], stop: threading.Event | None = None
    ) -> list[HashResult]:
        """Hash ``(path, size)`` pairs: small files here, big ones in parallel."""
        jobs = [(functools.partial(hash_path, path, stop), size) for path, size in paths]
        return self._run(jobs, (None, "unreadable"))

    def hash_many_at(
        self,
        files: list[tuple[int, str, str, int]],
        owner: int,
        group: int,
        stop: threading.Event | None = None,
    ) -> list[AttrsResult]:
        """Hash ``(dir_fd, name, what, size)`` files (:func:`hash_at`; the directories stay open until
        this returns): small files here, big ones in parallel."""
        jobs = [
            (functools.partial(hash_at, dir_fd, name, what, owner, group, stop), size)
            for dir_fd, name, what, size in files
        ]
        return self._run(jobs, (None, "unreadable", None))

    def _run(self, jobs: Sequence[tuple[Callable[[], _R], int]], lost: _R) -> list[_R]:
        """Run hashing ``(job, size)`` pairs, big files in the pool, and return their results in order."""
        futures: dict[int, Future[_R]] = {}
        results: list[_R | None] = [None] * len(jobs)
        for i, (job, size) in enumerate(jobs):
            if size >= BIG:
                futures[i] = self._the_pool().submit(job)
        small = [i for i in range(len(jobs)) if i not in futures]
        if len(small) > 256 and self.workers > 1:
            # many changed small files (a first check): share them out in batches
            batches = [small[j : j + 128] for j in range(0, len(small), 128)]
            batch_futures = [self._submit_batch([jobs[i][0] for i in b]) for b in batches]
            for batch, future in zip(batches, batch_futures, strict=True):
                for i, result in zip(batch, future.result(), strict=True):
                    results[i] = result
        else:
            for i in small:
                results[i] = jobs[i][0]()
        for i, single in futures.items():
            results[i] = single.result()
        return [r if r is not None else lost for r in results]

    def _submit_batch(self, jobs: list[Callable[[], _R]]) -> Future[list[_R]]:
        return self._the_pool().submit(lambda: [job() for job in jobs])

    def close(self) -> None:
        """Stop the pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:  # what a stopped scan left queued is not started
            pool.shutdown(wait=True, cancel_futures=True)


Named = Sequence[tuple[int, str]]  # (position, name) of the files or symlinks of a directory
WalkDir = tuple[int, str, str, int, Named, Named]
"""A directory of :meth:`ReleaseIndex.walk`: its position in ``dirs``, its path, its name, its depth
(the root's is 0), and the ``(position, name)`` of its files and of its symlinks."""


def _group(entries: Sequence[FileEntry | SymlinkEntry]) -> dict[str, list[tuple[int, str]]]:
    """``(position, name)`` of ``entries`` by directory."""
    grouped: dict[str, list[tuple[int, str]]] = {}
    for k, entry in enumerate(entries):
        parent, _, name = entry.path.rpartition("/")
        held = grouped.get(parent)
        if held is None:
            grouped[parent] = [(k, name)]
        else:
            held.append((k, name))
    return grouped


def _walk_plan(
    dirs: tuple[str, ...],
    in_files: dict[str, list[tuple[int, str]]],
    in_links: dict[str, list[tuple[int, str]]],
) -> tuple[WalkDir, ...]:
    none: Named = ()
    # "a", "a/b", "a-b" ("/" as the lowest character): each directory right before what is below it,
    # and never back to one once past what is below it
    order = sorted(range(len(dirs)), key=lambda i: dirs[i].replace("/", "\0"))
    plan: list[WalkDir] = []
    for i in order:
        rel = dirs[i]
        depth = rel.count("/") + 1 if rel else 0
        plan.append((i, rel, rel.rpartition("/")[2], depth, in_files.get(rel, none), in_links.get(rel, none)))
    return tuple(plan)


class ReleaseIndex(Frozen):
    """A manifest arranged for scanning (built once per manifest; a watcher keeps it)."""

    __slots__ = (
        "_walk",
        "children",
        "digest_hex",
        "dir_set",
        "dirs",
        "files",
        "manifest",
        "positions",
        "symlinks",
    )
    _fields = ("manifest", "digest_hex", "files", "symlinks", "dirs", "dir_set", "children", "positions")
    manifest: TreeManifest
    digest_hex: str
    files: tuple[FileEntry, ...]
    symlinks: tuple[SymlinkEntry, ...]
    dirs: tuple[str, ...]  # every directory, sorted (parents first); "" is the root
    dir_set: frozenset[str]  # the same without the root: what compare_tree expects
    children: dict[str, frozenset[str]]  # directory -> the names it holds
    positions: dict[str, int]  # file path -> its index in ``files``
    _walk: tuple[WalkDir, ...] | None  # walk(), once made

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        manifest: TreeManifest,
        digest_hex: str,
        files: tuple[FileEntry, ...],
        symlinks: tuple[SymlinkEntry, ...],
        dirs: tuple[str, ...],
        dir_set: frozenset[str],
        children: dict[str, frozenset[str]],
        positions: dict[str, int],
    ) -> None:
        _set(self, "manifest", manifest)
        _set(self, "digest_hex", digest_hex)
        _set(self, "files", files)
        _set(self, "symlinks", symlinks)
        _set(self, "dirs", dirs)
        _set(self, "dir_set", dir_set)
        _set(self, "children", children)
        _set(self, "positions", positions)
        _set(self, "_walk", None)

    def walk(self) -> tuple[WalkDir, ...]:
        """The directories in the order a walk of the tree meets them, each right before what is below
        it, with the files and symlinks it holds (made on first use, then kept with the index)."""
        plan: tuple[WalkDir, ...] | None = self._walk
        if plan is None:
            plan = _walk_plan(self.dirs, _group(self.files), _group(self.symlinks))
            _set(self, "_walk", plan)
        return plan

    @classmethod
    def of(cls, manifest: TreeManifest, digest_hex: str | None = None) -> ReleaseIndex:
        """Index ``manifest`` (whose digest, when known, saves hashing it again)."""
        children: dict[str, set[str]] = {"": set()}
        files_list: list[FileEntry] = []
        links_list: list[SymlinkEntry] = []
        in_files: dict[str, list[tuple[int, str]]] = {}  # for walk(), while the names are at hand
        in_links: dict[str, list[tuple[int, str]]] = {}
        for entry in manifest.entries:
            path = entry.path
            parent, _, name = path.rpartition("/")
            if type(entry) is FileEntry:
                held = in_files.get(parent)
                if held is None:
                    in_files[parent] = [(len(files_list), name)]
                else:
                    held.append((len(files_list), name))
                files_list.append(entry)
            elif type(entry) is SymlinkEntry:
                held = in_links.get(parent)
                if held is None:
                    in_links[parent] = [(len(links_list), name)]
                else:
                    held.append((len(links_list), name))
                links_list.append(entry)
            else:
                children.setdefault(path, set())
            names = children.get(parent)
            if names is not None:
                names.add(name)
                continue
            children[parent] = {name}
            while parent:  # a directory seen for the first time: its parents hold it
                grand, _, name = parent.rpartition("/")
                names = children.get(grand)
                if names is not None:
                    names.add(name)
                    break
                children[grand] = {name}
                parent = grand
        dirs = set(children)
        dirs.discard("")
        files = tuple(files_list)
        links = tuple(links_list)
        ordered = ("", *sorted(dirs))
        index = cls(
            manifest,
            digest_hex or manifest.digest.hex,
            files,
            links,
            ordered,
            frozenset(dirs),
            {k: frozenset(v) for k, v in children.items()},
            {e.path: i for i, e in enumerate(files)},
        )
        _set(index, "_walk", _walk_plan(ordered, in_files, in_links))
        return index


class ScanResult(Record):
    """What a scan observed, and what it verified."""

    __slots__ = (
        "cache",
        "files",
        "hashed",
        "listed",
        "observed",
        "root_attrs",
        "root_missing",
        "root_mode",
        "verified",
    )
    _fields = (
        "observed",
        "verified",
        "root_mode",
        "root_missing",
        "files",
        "hashed",
        "listed",
        "cache",
        "root_attrs",
    )
    observed: dict[str, Observed]
    verified: set[str]  # files known to be exactly as deployed
    root_mode: int | None  # the permission bits of the release directory
    root_attrs: str | None  # its owner or group when not the deployer's, extended attributes that are drift
    root_missing: bool
    files: int
    hashed: int  # files read and hashed
    listed: int  # directories listed
    cache: VerifiedCache | None  # the records to keep (None: nothing new to record)

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        observed: dict[str, Observed] | None = None,
        verified: set[str] | None = None,
        root_mode: int | None = None,
        root_missing: bool = False,
        files: int = 0,
        hashed: int = 0,
        listed: int = 0,
        cache: VerifiedCache | None = None,
        root_attrs: str | None = None,
    ) -> None:
        self.observed = {} if observed is None else observed
        self.verified = set() if verified is None else verified
        self.root_mode = root_mode
        self.root_attrs = root_attrs
        self.root_missing = root_missing
        self.files = files
        self.hashed = hashed
        self.listed = listed
        self.cache = cache


_DIR_SEARCH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # to look names up in it only
_SWAPPED = frozenset({errno.ELOOP, errno.ENOTDIR, errno.ENOENT})  # a directory that is no longer one


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open the directory ``name`` (in ``dir_fd``; never through a symlink) to look paths up in it. One
    that may be searched but not read (0111, a check run by a user other than root) is opened
    ``O_PATH``: enough to fstat it, stat, open and read links in it as a lookup by its path did; only
    listing it fails (reported by whoever lists it, as before)."""
    try:
        return os.open(name, DIR_OPEN, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _DIR_SEARCH, dir_fd=dir_fd)


def _observe_at(name: str, dir_fd: int) -> Observed | None:
    raw = observe_raw(name, dir_fd)
    return Observed(*raw) if raw is not None else None


def _walk_added(base: str, dir_fd: int, name: str, rel: str, observed: dict[str, Observed]) -> None:
    """Observe everything below the added directory ``name`` of the open directory ``dir_fd`` (``rel``
    in the release; nothing there is expected). Each directory is opened in its opened parent, never
    through a symlink; a parent is held until its last subdirectory is opened."""
    stack: list[tuple[str, list[int]]] = [(rel, [os.dup(dir_fd), 1])]
    try:
        while stack:
            current, held = stack.pop()
            try:
                fd = os.open(current.rpartition("/")[2], DIR_OPEN, dir_fd=held[0])
            except OSError as exc:
                out_of_resources(exc, f"{base}/{current}")
                continue
            finally:
                held[1] -= 1
                if not held[1]:
                    os.close(held[0])
            holder = [fd, 1]
            try:
                with os.scandir(fd) as entries:
                    names = [e.name for e in entries]
                for entry in names:
                    path = f"{current}/{entry}"
                    seen = _observe_at(entry, fd)
                    if seen is not None:
                        observed[path] = seen
                        if seen.kind == "dir":
                            stack.append((path, holder))
                            holder[1] += 1
            except OSError as exc:
                out_of_resources(exc, f"{base}/{current}")
            finally:
                holder[1] -= 1
                if not holder[1]:
                    os.close(fd)
    finally:  # stopped, or out of descriptors: the parents still held
        for _, held in stack:
            if held[1]:
                held[1] = 0
                os.close(held[0])


class _Dirs:
    """Descriptors of a release's directories for a pass over its paths in manifest order (the
    hashing of the files whose stat changed): each directory opened in its already opened parent
    (``O_NOFOLLOW``), never by its path, whose middle components the release's owner could swap for
    symlinks during the check (a check may run as root). Only the directories on the path to the
    current one are held. A directory must still be the one the walk opened (``inodes``); one that is
    no longer a directory is noted in ``changed`` (what is there now, never followed), and nothing
    below it is looked at."""

    def __init__(self, base: str, root_fd: int, inodes: dict[str, int]) -> None:
        self.base = base
        self.stack: list[tuple[str, int]] = [("", root_fd)]  # the root is the caller's to close
        self.inodes = inodes
        self.bad: str | None = None  # the last directory that could not be opened (as stat'ed)
        self.changed: dict[str, Observed] = {}

    def fd(self, rel: str) -> int | None:
        """The open directory ``rel`` (None: not the directory stat'ed there)."""
        stack = self.stack
        top = stack[-1][0]
        if top == rel:
            return stack[-1][1]
        bad = self.bad
        if bad is not None and (rel == bad or rel.startswith(f"{bad}/")):
            return None
        while len(stack) > 1 and not rel.startswith(f"{top}/"):
            os.close(stack.pop()[1])
            top = stack[-1][0]
            if top == rel:
                return stack[-1][1]
        for name in rel[len(top) + 1 if top else 0 :].split("/"):
            parent_rel, parent_fd = stack[-1]
            here = f"{parent_rel}/{name}" if parent_rel else name
            try:
                fd = _open_dir(name, parent_fd)
            except OSError as exc:
                out_of_resources(exc, f"{self.base}/{here}")
                self.bad = here
                seen = _observe_at(name, parent_fd) if exc.errno in _SWAPPED else None
                if seen is not None and seen.kind != "dir":
                    self.changed[here] = seen  # swapped for a link (or a file) since it was stat'ed
                return None
            if os.fstat(fd).st_ino != self.inodes.get(here):
                os.close(fd)  # another directory than the one stat'ed: what is below shows as removed
                self.bad = here
                return None
            stack.append((here, fd))
        return stack[-1][1]

    def close(self, observed: dict[str, Observed]) -> None:
        """Close what is held (not the root) and report the directories that became something else."""
        while len(self.stack) > 1:
            os.close(self.stack.pop()[1])
        observed.update(self.changed)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _list_dir(  # noqa: PLR0917 - the directory and what to report it with
    base: str,
    dir_fd: int,
    rel: str,
    st: os.stat_result,
    expected: frozenset[str],
    owner: int,
    group: int,
    result: ScanResult,
) -> bool:
    """List the directory ``rel`` (open as ``dir_fd``, stat'ed as ``st``): observe what it holds that
    the manifest does not (``expected``), everything below that, and its owner, group and extended
    attributes when they are drift (the root's are the caller's). True: exactly as deployed."""
    try:
        with os.scandir(dir_fd) as entries:
            names = [e.name for e in entries]
    except OSError as exc:
        out_of_resources(exc, f"{base}/{rel}" if rel else base)
        return False
    result.listed += 1
    observed = result.observed
    # a changed ctime: a chown of the directory (its new owner could replace what is in it), a chgrp
    attrs = attribute_problem(dir_fd, st, owner, group) if rel else None
    if attrs is not None:
        observed[rel] = Observed("dir", stat.S_IMODE(st.st_mode), st.st_size, attrs=attrs)
    extra = [n for n in names if n not in expected]
    for name in extra:
        path = f"{rel}/{name}" if rel else name
        seen = _observe_at(name, dir_fd)
        if seen is not None:
            observed[path] = seen
            if seen.kind == "dir":
                _walk_added(base, dir_fd, name, path, observed)
    return not extra and attrs is None


def scan_release(
    root: Path,
    index: ReleaseIndex | Callable[[], ReleaseIndex],
    *,
    full: bool,
    hasher: Hasher,
    table: Callable[[], tuple[StatTable | None, int | None]] | None = None,
    cache: VerifiedCache | None = None,
    now_ns: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    parallel: bool | None = None,
    split_hint: tuple[list[str], list[str]] | None = None,
    child: ForkedWalk | None = None,
    owner: int | None = None,
    group: int | None = None,
    stop: threading.Event | None = None,
) -> ScanResult:
    """Observe the release at ``root``. ``now_ns`` is the file system's time before the scan started
    (None: record nothing); ``table`` loads the deploy's stat table and the time it was written (only
    when a file is not in ``cache``). ``index`` may be a function that reads the manifest: a full scan
    given ``split_hint`` (where two processes start walking, from the last full scan) forks its second
    walker first, which hashes while the manifest is read here. ``child``: that walker, already
    started on ``split_hint`` (:mod:`graven.service.drift_early`; a full scan only). ``owner``: the uid
    that deployed the release as the stat table records it (:func:`graven.deploy.statdb.recorded_owner`;
    None: not recorded, the release directory's owner is then the reference); every path, the release
    directory included, must belong to it. ``group``: likewise the gid the release was deployed with
    (:func:`graven.deploy.statdb.recorded_deployer`; None: the release directory's group). ``stop``: once
    it is set, :class:`ScanStopped` is raised within a file or a chunk of a large one (a forked walker is
    killed)."""
    base = str(root)
    try:
        root_st = os.lstat(base)
    except OSError:
        root_st = None
    if root_st is None or not stat.S_ISDIR(root_st.st_mode):
        if child is not None:
            child.cancel()
        return ScanResult(root_missing=True)
    if cache is not None and cache.dev != root_st.st_dev:
        cache = None
    owner = deployer_uid(str(root), root_st, owner)
    group = deployer_gid(str(root), root_st, group)
    if full:
        fork = can_fork() if parallel is None else parallel
        if child is None and fork and split_hint is not None and "" in split_hint[0] and split_hint[1]:
            child = ForkedWalk(
                base,
                split_hint[1],
                frozenset(split_hint[0]) | frozenset(split_hint[1]),
                owner=owner,
                group=group,
            )
        try:
            resolved = index() if callable(index) else index
            scanned = _full_scan(
                base,
                resolved,
                root_st,
                hasher=hasher,
                now_ns=now_ns,
                progress=progress,
                parallel=parallel,
                child=child,
                split=split_hint if child is not None else None,
                owner=owner,
                group=group,
                stop=stop,
            )
        except BaseException:
            if child is not None:
                child.cancel()  # stopped, not waited for (a no-op once its result was read)
            raise
        scanned.root_mode = stat.S_IMODE(root_st.st_mode)
        scanned.root_attrs = attribute_problem(base, root_st, owner, group)
        return scanned
    if child is not None:  # only a full scan takes one
        child.cancel()
    if callable(index):
        index = index()
    scanned = _fast_scan(
        base,
        index,
        root_st,
        hasher=hasher,
        table=table,
        cache=cache,
        now_ns=now_ns,
        owner=owner,
        group=group,
        stop=stop,
        progress=progress,
    )
    scanned.root_mode = stat.S_IMODE(root_st.st_mode)
    scanned.root_attrs = attribute_problem(base, root_st, owner, group)
    return scanned


def _deployers(st: os.stat_result, owner: int, group: int) -> bool:
    """Whether ``st`` has the release's owner and group. A stat record alone does not say so: a graven
    that compared no group (or no owner) hard-linked a file of a release made with another one into the
    next release and recorded it there, unchanged since; only its stat shows it."""
    return st.st_uid == owner and st.st_gid == group


def _fast_scan(
    base: str,
    index: ReleaseIndex,
    root_st: os.stat_result,
    *,
    hasher: Hasher,
    table: Callable[[], tuple[StatTable | None, int | None]] | None,
    cache: VerifiedCache | None,
    now_ns: int | None,
    owner: int,
    group: int,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    try:
        root_fd = _open_dir(base)
    except OSError as exc:
        out_of_resources(exc, base)
        return ScanResult(root_missing=True)
    try:
        if os.fstat(root_fd).st_ino != root_st.st_ino:
            return ScanResult(root_missing=True)  # replaced since its lstat
        return _fast_scan_at(
            base,
            root_fd,
            index,
            root_st,
            hasher=hasher,
            table=table,
            cache=cache,
            now_ns=now_ns,
            owner=owner,
            group=group,
            stop=stop,
            progress=progress,
        )
    finally:
        os.close(root_fd)


def _fast_scan_at(
    base: str,
    root_fd: int,
    index: ReleaseIndex,
    root_st: os.stat_result,
    *,
    hasher: Hasher,
    table: Callable[[], tuple[StatTable | None, int | None]] | None,
    cache: VerifiedCache | None,
    now_ns: int | None,
    owner: int,
    group: int,
    stop: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> ScanResult:
    """The fast scan: one walk of the manifest's directories (:meth:`ReleaseIndex.walk`), each opened
    once (``O_NOFOLLOW``) in its opened parent, and every path looked up in its directory's
    descriptor, never by its full path: a check run by root never stats, lists, hashes or reads the
    extended attributes of anything outside the release, even while the release's owner swaps a
    directory for a symlink. A directory that is no longer one is reported as what it is now, and
    nothing below it is looked at."""
    result = ScanResult()
    observed = result.observed
    lstat = os.stat  # with dir_fd and follow_symlinks=False: an lstat in that directory
    dopen, fstat = _open_dir, os.fstat
    S_ISDIR, S_ISREG, S_IMODE = stat.S_ISDIR, stat.S_ISREG, stat.S_IMODE  # noqa: N806
    new_dirs: list[DirRecord | None] = [None] * len(index.dirs)
    new_files: list[FileRecord | None] = [None] * len(index.files)
    old_dirs = cache.dirs if cache is not None else None
    old_files = cache.files if cache is not None else None
    inodes: dict[str, int] = {"": root_st.st_ino}  # each directory as the walk opened it
    changed = cache is None
    deployed_table: list[tuple[dict[int, tuple[str, int, int, int, int]], int | None]] = []

    def deployed() -> tuple[dict[int, tuple[str, int, int, int, int]], int | None]:
        if not deployed_table:
            loaded, recorded_at = table() if table is not None else (None, None)
            usable = loaded is not None and loaded.dev == root_st.st_dev
            deployed_table.append((loaded.inodes if loaded is not None and usable else {}, recorded_at))
        return deployed_table[0]

    to_hash: list[tuple[int, str, int, int]] = []  # the index, path, mode and size lstat saw
    verified = result.verified
    files, links = index.files, index.symlinks
    # The directories on the path to the current one, each opened once in its opened parent (None:
    # nothing below it is looked at); the root's descriptor is the caller's to close.
    held: list[int | None] = []
    try:
        for i, rel, dir_name, depth, file_names, link_names in index.walk():
            while len(held) > depth:
                _close(held.pop())
            if depth:
                parent_fd = held[-1]
                if parent_fd is None:
                    held.append(None)  # below a directory that is not there
                    continue
                dir_fd: int | None
                try:
                    dir_fd = dopen(dir_name, parent_fd)
                except OSError as exc:
                    out_of_resources(exc, f"{base}/{rel}")
                    held.append(None)
                    try:
                        st = lstat(dir_name, dir_fd=parent_fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if not S_ISDIR(st.st_mode):
                        seen = _observe_at(dir_name, parent_fd)
                        if seen is not None:
                            observed[rel] = seen
                        continue
                    dir_fd = None  # a directory that cannot be opened: what is below is not looked at
                else:
                    try:
                        st = fstat(dir_fd)
                    except BaseException:
                        os.close(dir_fd)
                        raise
                    held.append(dir_fd)
                inodes[rel] = st.st_ino
                observed[rel] = Observed("dir", S_IMODE(st.st_mode), st.st_size)
            else:
                st, dir_fd = root_st, root_fd
                held.append(root_fd)
            record: DirRecord = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            if old_dirs is not None and old_dirs[i] == record:
                new_dirs[i] = record
            else:
                changed = True
                records, recorded_at = deployed()
                if (
                    records.get(st.st_ino)
                    == (
                        DIR_SHA,
                        st.st_size,
                        st.st_mtime_ns,
                        st.st_ctime_ns,
                        st.st_mode,
                    )
                    and not is_racy(st.st_mtime_ns, st.st_ctime_ns, recorded_at)
                    and _deployers(st, owner, group)
                ):
                    new_dirs[i] = record  # the deploy made exactly these entries and nothing changed since
                elif (
                    dir_fd is not None
                    and _list_dir(
                        base, dir_fd, rel, st, index.children.get(rel, frozenset()), owner, group, result
                    )
                    and now_ns is not None
                    and not is_racy(st.st_mtime_ns, st.st_ctime_ns, now_ns)
                ):
                    new_dirs[i] = record  # listed: exactly the entries of the manifest
            if dir_fd is None:
                continue
            for k, name in file_names:
                entry = files[k]
                path = entry.path
                try:
                    st = lstat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                mode = st.st_mode
                if not S_ISREG(mode):
                    seen = _observe_at(name, dir_fd)
                    if seen is not None:
                        observed[path] = seen
                        if seen.kind == "dir":  # what is in it is added, as a full check finds
                            _walk_added(base, dir_fd, name, path, observed)
                    continue
                record_f: FileRecord = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, mode)
                if old_files is not None and old_files[k] == record_f:
                    new_files[k] = record_f
                    if S_IMODE(mode) == (0o555 if entry.executable else 0o444) and st.st_size == entry.size:
                        verified.add(path)  # exactly as deployed: nothing to compare
                    else:
                        observed[path] = Observed("file", S_IMODE(mode), st.st_size)
                    continue
                changed = True
                records, recorded_at = deployed()
                if (
                    records.get(st.st_ino)
                    == (
                        entry.sha256,
                        st.st_size,
                        st.st_mtime_ns,
                        st.st_ctime_ns,
                        mode,
                    )
                    and not is_racy(st.st_mtime_ns, st.st_ctime_ns, recorded_at)
                    and _deployers(st, owner, group)
                ):
                    new_files[k] = record_f
                    observed[path] = Observed("file", S_IMODE(mode), st.st_size)
                    continue
                to_hash.append((k, path, mode, st.st_size))
            for k, name in link_names:
                path = links[k].path
                try:
                    observed[path] = Observed("symlink", target=os.readlink(name, dir_fd=dir_fd))
                except OSError:
                    seen = _observe_at(name, dir_fd)
                    if seen is not None:
                        observed[path] = seen
                        if seen.kind == "dir":
                            _walk_added(base, dir_fd, name, path, observed)
    finally:
        while len(held) > 1:
            _close(held.pop())
    if to_hash and progress is not None:
        progress(0, len(to_hash))
    done = 0
    for part in _hash_batches(to_hash):
        # In batches, each stat result dropped once looked at: a release whose every file changed
        # held two of them (some 600 bytes) per file until the last one was hashed.
        hashed = _hash_part(base, root_fd, inodes, part, hasher, owner, group, stop, observed)
        done += len(part)
        result.hashed += len(hashed)
        if progress is not None:
            progress(done, len(to_hash))
        for (i, _path, mode_before, size_before), (st_open, sha, attrs) in hashed:
            entry = index.files[i]
            if st_open is None:
                observed[entry.path] = Observed("file", S_IMODE(mode_before), size_before, sha)
                continue
            if not S_ISREG(st_open.st_mode):
                observed[entry.path] = Observed(kind_of(st_open.st_mode))
                continue
            # a changed ctime with the same content: a chown or chgrp, or extended attributes (a
            # capability)
            observed[entry.path] = Observed(
                "file", S_IMODE(st_open.st_mode), st_open.st_size, sha, attrs=attrs
            )
            if (
                sha == entry.sha256
                and attrs is None
                and now_ns is not None
                and not is_racy(st_open.st_mtime_ns, st_open.st_ctime_ns, now_ns)
            ):
                new_files[i] = _record(st_open)
    result.files = len(index.files)
    if changed and now_ns is not None:
        result.cache = VerifiedCache(index.digest_hex, root_st.st_dev, new_files, new_dirs)
    return result


def _hash_part(  # noqa: PLR0917 - the batch and where it is
    base: str,
    root_fd: int,
    inodes: dict[str, int],
    part: list[tuple[int, str, int, int]],
    hasher: Hasher,
    owner: int,
    group: int,
    stop: threading.Event | None,
    observed: dict[str, Observed],
) -> list[tuple[tuple[int, str, int, int], AttrsResult]]:
    """Hash one batch of (index, path, mode, size): each file opened in its directory, each directory
    opened once in its parent (:class:`_Dirs`) and held until the batch is hashed. A file whose
    directory is no longer the one stat'ed is left out (it shows as removed)."""
    held: dict[str, int | None] = {}
    files: list[tuple[int, str, str, int]] = []
    at: list[tuple[int, str, int, int]] = []
    dirs = _Dirs(base, root_fd, inodes)
    try:
        try:
            for item in part:
                path, size = item[1], item[3]
                parent, _, name = path.rpartition("/")
                if parent not in held:
                    dir_fd = dirs.fd(parent)
                    held[parent] = os.dup(dir_fd) if dir_fd is not None else None
                kept = held[parent]
                if kept is not None:
                    files.append((kept, name, f"{base}/{path}", size))
                    at.append(item)
        finally:
            dirs.close(observed)
        return list(zip(at, hasher.hash_many_at(files, owner, group, stop), strict=True))
    finally:
        for kept in held.values():
            if kept is not None:
                os.close(kept)


HASH_BATCH = 4096
"""A fast scan hashes the files whose stat changed this many at a time, at most, ..."""
HASH_BATCH_BYTES = 256 << 20
"""... and of at most this many bytes in all (a batch's first file may be larger): its progress is
reported after each batch."""


def _hash_batches(to_hash: list[tuple[int, str, int, int]]) -> Iterator[list[tuple[int, str, int, int]]]:
    """``to_hash`` (index, path, mode, size) in batches of :data:`HASH_BATCH` files and
    :data:`HASH_BATCH_BYTES` bytes at most (a single larger file is a batch of its own)."""
    part: list[tuple[int, str, int, int]] = []
    size = 0
    for item in to_hash:
        if part and (len(part) >= HASH_BATCH or size + item[3] > HASH_BATCH_BYTES):
            yield part
            part, size = [], 0
        part.append(item)
        size += item[3]
    if part:
        yield part


PROGRESS_FILES = 512
"""A full scan reports its progress each time a walker has hashed about this many more files."""


class _FilesProgress:
    """The progress of a full scan, ``(done, total)`` files: this process's walker and, when the work is
    shared, the forked child's count (:meth:`ForkedWalk.hashed`). Never above ``total`` (a file that
    is not in the manifest is hashed too) and never backwards."""

    def __init__(self, progress: Callable[[int, int], None], total: int, child: ForkedWalk | None) -> None:
        self.progress = progress
        self.total = total
        self.child = child
        self.shown = 0

    def __call__(self, mine: int) -> None:
        theirs = self.child.hashed() if self.child is not None else 0
        done = min(mine + theirs, self.total)
        if done > self.shown:
            self.shown = done
            self.progress(done, self.total)


# a directory still to walk, and its parent's descriptor shared by the parent's subdirectories still
# to open with how many they are ([fd, count]; None: opened from the release, one component at a time)
_Pending = tuple[str, list[int] | None]


def _release_held(held: list[int] | None) -> None:
    """One subdirectory less needs its parent's descriptor; the last one closes it."""
    if held is not None:
        held[1] -= 1
        if not held[1]:
            os.close(held[0])


class _Walk:
    """The state of a full scan shared by its walker threads: a stack of directories still to read,
    and what was found (dict and list stores are atomic under the GIL; counters are per thread).

    A directory is opened in its parent's descriptor (``O_NOFOLLOW``), never by its path, whose middle
    components the release's owner could swap for symlinks meanwhile (a check may run as root: it
    must not even open what lies outside the release, an automount would mount it). A parent is held,
    shared by its subdirectories still to walk, until the last of them is done: at most one descriptor
    per level of the path being walked (as :func:`graven.drift.walk.raw_walk`)."""

    def __init__(
        self,
        base: str,
        index: ReleaseIndex,
        root_st: os.stat_result,
        now_ns: int | None,
        hasher: Hasher | None,
        *,
        start: Sequence[str] = ("",),
        skip: frozenset[str] = frozenset(),
        owner: int | None = None,
        group: int | None = None,
        on_files: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.base = base
        self.stop = stop  # set: ScanStopped between files and chunks
        self.on_files = on_files  # told the files hashed so far, every PROGRESS_FILES or so
        # whom every file and directory must belong to, and the group each must have
        self.owner = deployer_uid(base, root_st) if owner is None else owner
        self.group = deployer_gid(base, root_st) if group is None else group
        self.hasher = hasher  # None: big files are hashed by the walker itself
        self.skip = skip  # directories that are someone else's starting point
        # big files hashed in the pool, and their owner, group and extended attributes (read from the
        # descriptor the walker opened, never by their path again)
        self.big: list[tuple[str, str | None, Future[HashResult]]] = []
        self.index = index
        self.now = now_ns
        self.observed: dict[str, Observed] = {}
        self.verified: set[str] = set()  # files exactly as deployed (content, size, mode)
        self.new_files: list[FileRecord | None] = [None] * len(index.files)
        self.dir_records: dict[str, DirRecord] = {
            "": (root_st.st_ino, root_st.st_mtime_ns, root_st.st_ctime_ns)
        }
        self.extra_dirs: set[str] = set()
        self.stack: list[_Pending] = [(rel, None) for rel in start]
        self.busy = 0
        self.cond = threading.Condition()
        self.hashed = 0
        self.listed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Take directories until none is left and no other thread can add one."""
        hashed = listed = 0
        on_files, due = self.on_files, PROGRESS_FILES
        try:
            while True:
                with self.cond:
                    while not self.stack and self.busy and self.error is None:
                        self.cond.wait()
                    if not self.stack or self.error is not None:
                        self.cond.notify_all()
                        return
                    rel, held = self.stack.pop()
                    self.busy += 1
                found: list[_Pending] = []
                try:
                    found, files = self._directory(rel, held)
                    listed += 1
                    hashed += files
                    if on_files is not None and hashed >= due:
                        on_files(self.hashed + hashed)
                        due = hashed + PROGRESS_FILES
                finally:
                    with self.cond:
                        self.stack.extend(found)
                        if held is not None:  # (under the lock: its siblings may be other threads')
                            held[1] -= 1
                            if not held[1]:
                                os.close(held[0])
                        self.busy -= 1
                        self.cond.notify_all()
        except BaseException as exc:
            with self.cond:
                self.error = exc
                self.cond.notify_all()
        finally:
            with self.cond:
                self.hashed += hashed
                self.listed += listed
                if self.error is not None:  # stopped, failed: nothing more is walked; close what is held
                    while self.stack:
                        _release_held(self.stack.pop()[1])

    def _directory(self, rel: str, held: list[int] | None) -> tuple[list[_Pending], int]:
        base, index, observed = self.base, self.index, self.observed
        directory = f"{base}/{rel}" if rel else base
        prefix = f"{rel}/" if rel else ""
        expected = index.children.get(rel, frozenset())
        positions, files, new_files, verified = index.positions, index.files, self.new_files, self.verified
        fopen, fstat, close, read, sha256 = os.open, os.fstat, os.close, os.read, hashlib.sha256
        S_ISREG, S_IMODE = stat.S_ISREG, stat.S_IMODE  # noqa: N806
        keep = self.now is not None
        now = self.now or 0
        owner, group = self.owner, self.group
        stop = self.stop
        subdirs: list[_Pending] = []
        found: list[_Pending] = []  # subdirs once this directory's descriptor is theirs
        hashed = 0
        try:
            if held is None:  # a starting point: one component at a time
                dir_fd = open_dir(base, rel)
            else:  # in its parent's descriptor: never through a link
                dir_fd = fopen(rel.rpartition("/")[2], DIR_OPEN, dir_fd=held[0])
        except OSError as exc:
            out_of_resources(exc, directory)
            return found, hashed
        holder = [dir_fd, 0]  # this directory, and how many of its subdirectories still need it
        try:
            listed = self.dir_records.get(rel)
            if listed is not None and fstat(dir_fd).st_ino != listed[0]:
                # another directory than its parent listed: it was swapped (renamed over) since (a drift
                # check may run as root; the release's owner can rename in it). Nothing read: what is
                # below shows as removed, and the next check finds what is there
                return found, hashed
            try:
                with os.scandir(dir_fd) as it:
                    entries = list(it)
            except OSError as exc:
                out_of_resources(exc, directory)
                raise
            for item in entries:
                if stop is not None and stop.is_set():
                    raise ScanStopped
                name = item.name
                path = prefix + name
                if name not in expected:
                    self.extra_dirs.add(rel)
                if item.is_file(follow_symlinks=False):
                    try:
                        fd = fopen(name, OPEN_FILE, dir_fd=dir_fd)
                    except OSError as exc:
                        observed[path] = Observed("file", 0, -1, unreadable(exc, f"{directory}/{name}"))
                        continue
                    try:
                        st = fstat(fd)
                        size = st.st_size
                        if not S_ISREG(st.st_mode):
                            observed[path] = Observed(kind_of(st.st_mode))
                            continue
                        if size < BIG:
                            data = read(fd, size + 1)
                            sha = sha256(data).hexdigest() if len(data) <= size else hash_rest(fd, data, stop)
                        elif self.hasher is not None:  # hashed in parallel (hashlib releases the GIL)
                            # the file opened here, not its path again: nothing above it can be
                            # swapped in between
                            attrs = attribute_problem(fd, st, owner, group)
                            self.big.append((path, attrs, self.hasher.submit_fd(os.dup(fd), path, stop)))
                            continue
                        else:
                            sha = hash_rest(fd, b"", stop)
                        attrs = attribute_problem(fd, st, owner, group)
                    except OSError as exc:
                        observed[path] = Observed("file", 0, -1, unreadable(exc, f"{directory}/{name}"))
                        continue
                    finally:
                        close(fd)
                    hashed += 1
                    at = positions.get(path, -1)
                    expected_file = files[at] if at >= 0 else None
                    if expected_file is None or sha != expected_file.sha256 or attrs is not None:
                        observed[path] = Observed("file", S_IMODE(st.st_mode), size, sha, attrs=attrs)
                        continue
                    if S_IMODE(st.st_mode) == (0o555 if expected_file.executable else 0o444):
                        verified.add(path)  # exactly as deployed: nothing to compare
                    else:
                        observed[path] = Observed("file", S_IMODE(st.st_mode), size, sha)
                    if keep and st.st_mtime_ns < now and st.st_ctime_ns < now:  # not racy (is_racy)
                        new_files[at] = (st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
                elif item.is_dir(follow_symlinks=False):
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    attrs = dir_attribute_problem(dir_fd, name, st, owner, group)
                    observed[path] = Observed("dir", S_IMODE(st.st_mode), st.st_size, attrs=attrs)
                    self.dir_records[path] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                    if path not in self.skip:
                        subdirs.append((path, holder))
                elif item.is_symlink():
                    try:
                        observed[path] = Observed("symlink", target=os.readlink(name, dir_fd=dir_fd))
                    except OSError:
                        observed[path] = Observed("symlink")
                else:
                    seen = _observe_at(name, dir_fd)
                    if seen is not None:
                        observed[path] = seen
            if subdirs:  # this directory's descriptor is theirs now; the last one walked closes it
                holder[1] = len(subdirs)
                found = subdirs
        finally:
            if not found:
                close(dir_fd)
        return found, hashed

    def merge_raw(self, data: bytes) -> None:
        """Add what a forked :func:`raw_walk` found, matching it with the manifest here."""
        observed, stats, dir_records, hashed, listed = marshal.loads(data)  # noqa: S302 (our child)
        index, now, keep = self.index, self.now or 0, self.now is not None
        positions, files, children = index.positions, index.files, index.children
        seen_at, verified, extra_dirs = self.observed, self.verified, self.extra_dirs
        for path, raw in observed.items():  # raw: the fields of an Observed, made only when kept
            parent, _, name = path.rpartition("/")
            if name not in children.get(parent, ()):
                extra_dirs.add(parent)
            at = positions.get(path, -1)
            if at < 0 or raw[0] != "file" or raw[3] != files[at].sha256 or raw[5] is not None:
                seen_at[path] = Observed(*raw)
                continue
            if raw[1] == (0o555 if files[at].executable else 0o444):
                verified.add(path)
            else:
                seen_at[path] = Observed(*raw)
            record = stats[path]
            if keep and record[2] < now and record[3] < now:  # not racy (see is_racy)
                self.new_files[at] = tuple(record)
        self.dir_records.update(dir_records)
        self.hashed += hashed
        self.listed += listed


# Relative cost of a file for splitting a full scan: about 12 us per file, hashed at about 1.7 GB/s.
_FILE_WEIGHT = 20_000
SPLIT_MIN_FILES = 1_000


def _subtree_weights(index: ReleaseIndex) -> Callable[[str], int]:
    """weight(dir): the cost of the files below ``dir`` (manifest paths are sorted, so a directory's
    files are one contiguous range)."""
    paths = [e.path for e in index.files]
    sums = [0]
    for entry in index.files:
        sums.append(sums[-1] + _FILE_WEIGHT + entry.size)

    def weight(directory: str) -> int:
        if not directory:
            return sums[-1]
        lo = bisect.bisect_left(paths, directory + "/")
        hi = bisect.bisect_left(paths, directory + "0")  # "0" follows "/" in byte order
        return sums[hi] - sums[lo]

    return weight


def plan_split(index: ReleaseIndex, *, share: float = 0.4) -> tuple[list[str], list[str]] | None:
    """Directories where two processes start walking, so that each walks about half of the tree
    (``share`` of it for the first): the largest directories are
    split into their subdirectories until none holds more than a fifth of the work. Every directory
    belongs to the walk of its nearest ancestor-or-self in either list."""
    weight = _subtree_weights(index)
    total = weight("")
    if total == 0:
        return None
    dir_set = index.dir_set
    units: dict[str, int] = {"": total}
    whole = set(units)  # units that still hold their whole subtree
    for _ in range(256):
        candidates = [d for d in whole if units[d] > total // 5]
        if not candidates:
            break
        largest = max(candidates, key=lambda d: units[d])
        prefix = f"{largest}/" if largest else ""
        children = [prefix + n for n in index.children.get(largest, ()) if prefix + n in dir_set]
        whole.discard(largest)
        for child in children:
            units[child] = weight(child)
            whole.add(child)
        units[largest] -= sum(units[c] for c in children)
    first: list[str] = []
    second: list[str] = []
    load = [0.0, 0.0]
    for directory in sorted(units, key=lambda d: (-units[d], d)):
        pick = 0 if load[0] / share <= load[1] / (1 - share) else 1
        (first if pick == 0 else second).append(directory)
        load[pick] += units[directory]
    if "" in second:  # the root's own entries are the first process's
        second.remove("")
        first.append("")
    return (first, second) if second else None


def _full_scan(
    base: str,
    index: ReleaseIndex,
    root_st: os.stat_result,
    *,
    hasher: Hasher,
    now_ns: int | None,
    progress: Callable[[int, int], None] | None,
    parallel: bool | None = None,
    child: ForkedWalk | None = None,
    split: tuple[list[str], list[str]] | None = None,
    owner: int | None = None,
    group: int | None = None,
    stop: threading.Event | None = None,
) -> ScanResult:
    owner = deployer_uid(base, root_st, owner)
    group = deployer_gid(base, root_st, group)
    fork = can_fork() and len(index.files) >= SPLIT_MIN_FILES if parallel is None else parallel
    if child is None and fork:
        split = plan_split(index)
        if split is not None:
            child = ForkedWalk(
                base, split[1], frozenset(split[0]) | frozenset(split[1]), owner=owner, group=group
            )
    total = len(index.files)
    on_files = None
    try:
        if progress is not None:
            on_files = _FilesProgress(progress, total, child)
            progress(0, total)
        if child is not None:
            # two processes, each walking and hashing about half of the tree (big files included):
            # hashlib holds the GIL for small files, so threads would not share this work out
            assert split is not None
            skip = frozenset(split[0]) | frozenset(child.start)
            walk = _Walk(
                base,
                index,
                root_st,
                now_ns,
                None,
                start=split[0],
                skip=skip,
                owner=owner,
                group=group,
                on_files=on_files,
                stop=stop,
            )
            walk.run()
            if walk.error is not None:  # Ctrl-C, a stop: never wait for the child's half first
                raise walk.error
            data = child.result(stop)
            if data is not None:
                walk.merge_raw(data)
            else:
                walk.stack.extend((rel, None) for rel in child.start)  # the child failed: its part here
                walk.run()
        else:
            # one walker hashes small files as it finds them (more walker threads only fight over the
            # GIL); big files go to the hashing threads
            walk = _Walk(
                base, index, root_st, now_ns, hasher, owner=owner, group=group, on_files=on_files, stop=stop
            )
            walk.run()
        if walk.error is not None:
            raise walk.error
    except BaseException:  # a stop request, Ctrl-C: the child is killed (a no-op once its result was read)
        if child is not None:
            child.cancel()
        raise
    positions, files, now = index.positions, index.files, now_ns or 0
    for path, attrs, future in walk.big:
        st_big, sha = future.result()
        if st_big is None:
            walk.observed[path] = Observed("file", 0, -1, sha)
        elif not stat.S_ISREG(st_big.st_mode):
            walk.observed[path] = Observed(kind_of(st_big.st_mode))
        else:
            walk.hashed += 1
            walk.observed[path] = Observed(
                "file", stat.S_IMODE(st_big.st_mode), st_big.st_size, sha, attrs=attrs
            )
            at = positions.get(path)
            if (
                now_ns is not None
                and at is not None
                and attrs is None
                and sha == files[at].sha256
                and not is_racy(st_big.st_mtime_ns, st_big.st_ctime_ns, now)
            ):
                walk.new_files[at] = _record(st_big)
    if progress is not None:
        progress(total, total)  # every file of the manifest was looked at: found, changed or missing
    result = ScanResult(
        walk.observed, walk.verified, files=len(index.files), hashed=walk.hashed, listed=walk.listed
    )
    if now_ns is not None:
        new_dirs: list[DirRecord | None] = []
        for rel in index.dirs:
            record = walk.dir_records.get(rel)
            seen = walk.observed.get(rel)
            clean = (
                record is not None
                and rel not in walk.extra_dirs
                and (seen is None or seen.attrs is None)  # an owner, group or xattrs drift: looked at again
            )
            if record is not None and clean and not is_racy(record[1], record[2], now_ns):
                new_dirs.append(record)
            else:
                new_dirs.append(None)
        result.cache = VerifiedCache(index.digest_hex, root_st.st_dev, walk.new_files, new_dirs)
    return result
