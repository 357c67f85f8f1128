"""Build a release directory from the store, check one by stat, delete one.

A release is the artifact's tree exactly: regular files (mode 0444, or 0555 when executable), relative
symlinks, directories (0555 once complete). A file's bytes come either from the store through a verified
read (never a hard link to a store object, so that a tampered release can never corrupt the store), or
as a hard link to the same path of the live release when that file holds the same sha256 with the same
mode and its stat is unchanged since graven wrote it (:mod:`graven.deploy.statdb`).

The work is spread over a few threads: creating directories, files and links is dominated by the
kernel and the disk, and the file systems graven deploys to handle operations in different directories
concurrently. Store reads stay on the calling thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from graven.deploy.statdb import DIR_SHA, StatTable
from graven.errors import BackendError, IntegrityError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest
from graven.store.local import LOOSE_THRESHOLD, LocalStore

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

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

WORKERS = 4
DIR_MODE = 0o555
_CHUNK = 1 << 20
_BATCH_BYTES = 64 << 20
_PROGRESS_EVERY = 256
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


def file_mode(executable: bool) -> int:
    """The permission bits of a deployed file."""
    return 0o555 if executable else 0o444


@dataclass
class BuildStats:
    """What building a release did."""

    files: int = 0
    copied: int = 0
    linked: int = 0
    copied_bytes: int = 0
    linked_bytes: int = 0
    symlinks: int = 0
    dirs: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return asdict(self)


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


def _reusable(st: os.stat_result, entry: FileEntry, table: StatTable) -> bool:
    """True when ``st`` (an lstat) is a regular file with ``entry``'s mode that still has the stat
    graven recorded for ``entry``'s sha256: it may be hard-linked into a new release."""
    return (
        stat.S_ISREG(st.st_mode)
        and stat.S_IMODE(st.st_mode) == file_mode(entry.executable)
        and table.matches(st, entry.sha256)
    )


@dataclass(frozen=True)
class Transfer:
    """What building a release would do with the artifact's files, as :func:`build_release` does it."""

    linked: int  # hard links: from the same path of the reused release, or to a first copy in this one
    copied: tuple[FileEntry, ...]  # read (verified) from the store and written


def plan_transfer(manifest: TreeManifest, table: StatTable, *, reuse_root: Path | None) -> Transfer:
    """What :func:`build_release` would link and copy, without writing anything: the same firsts and
    duplicates, and the same test of the file at the same path of ``reuse_root`` (a regular file with
    the entry's mode and its recorded stat). Only a link the file system refuses (another device, too
    many links) would be a copy instead."""
    firsts, duplicates = unique_files(manifest)
    linked = 0
    copied: list[FileEntry] = []
    for entry in firsts:
        if reuse_root is not None:
            try:
                if _reusable(os.lstat(f"{reuse_root}/{entry.path}"), entry, table):
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


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _chunks(items: Sequence[T], n: int) -> list[Sequence[T]]:
    return [items[i::n] for i in range(n) if items[i::n]]


def _by_directory(entries: Iterable[FileEntry], n: int) -> list[list[FileEntry]]:
    """Split entries into ``n`` balanced groups, keeping each directory's entries together."""
    per_dir: dict[str, list[FileEntry]] = {}
    for entry in entries:
        per_dir.setdefault(entry.path.rpartition("/")[0], []).append(entry)
    groups: list[list[FileEntry]] = [[] for _ in range(n)]
    for members in sorted(per_dir.values(), key=len, reverse=True):
        min(groups, key=len).extend(members)
    return [g for g in groups if g]


class _Builder:
    def __init__(
        self,
        *,
        store: LocalStore,
        manifest: TreeManifest,
        root: str,
        table: StatTable,
        reuse_root: str | None,
        progress: Callable[[int, int], None] | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.root = root
        self.table = table
        self.reuse_root = reuse_root
        self.progress = progress
        self.pool = pool
        umask = _umask()
        self.fix_mode = umask & 0o555 != 0
        # Directories are made read-only at once when this process may write into them anyway.
        self.dir_mode = DIR_MODE if umask & DIR_MODE == 0 and _can_override_permissions() else 0o755
        self.stats = BuildStats()
        self.records: list[tuple[os.stat_result, str]] = []  # applied to the table at the end
        self.done = 0
        self.total = 0

    def _tick(self, count: int) -> None:
        before = self.done
        self.done += count
        if self.progress is not None and (
            self.done // _PROGRESS_EVERY != before // _PROGRESS_EVERY or self.done == self.total
        ):
            self.progress(self.done, self.total)

    def _map(self, func: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        return list(self.pool.map(func, items))

    # -- phases ------------------------------------------------------------------------------------

    def make_dirs(self, dirs: Sequence[str]) -> None:
        root, mode = self.root, self.dir_mode
        os.mkdir(root, mode)
        levels: dict[int, list[str]] = {}
        for rel in dirs:
            levels.setdefault(rel.count("/"), []).append(rel)

        def mkdirs(chunk: Sequence[str]) -> None:
            for rel in chunk:
                os.mkdir(f"{root}/{rel}", mode)

        for depth in sorted(levels):  # parents before children; each level in parallel
            self._map(mkdirs, _chunks(levels[depth], WORKERS))

    def link_unchanged(self, primaries: Sequence[FileEntry]) -> list[FileEntry]:
        """Hard-link files that are unchanged at the same path of the live release; the rest is returned."""
        if self.reuse_root is None:
            return list(primaries)
        source, root, table = self.reuse_root, self.root, self.table

        def link_group(
            group: list[FileEntry],
        ) -> tuple[list[tuple[os.stat_result, FileEntry]], list[FileEntry]]:
            linked: list[tuple[os.stat_result, FileEntry]] = []
            missing: list[FileEntry] = []
            for entry in group:
                src = f"{source}/{entry.path}"
                try:
                    if _reusable(os.lstat(src), entry, table):
                        dst = f"{root}/{entry.path}"
                        os.link(src, dst)
                        linked.append((os.lstat(dst), entry))  # the new link changed the ctime
                        continue
                except OSError:
                    pass  # gone, or another file system: copy instead
                missing.append(entry)
            return linked, missing

        missing: list[FileEntry] = []
        for linked, rest in self._map(link_group, _by_directory(primaries, WORKERS)):
            for st, entry in linked:
                self.records.append((st, entry.sha256))
                self.stats.linked += 1
                self.stats.linked_bytes += entry.size
            missing.extend(rest)
            self._tick(len(linked))
        return missing

    def copy(self, entries: Sequence[FileEntry]) -> None:
        """Write each entry from the store, a batch at a time: this thread reads (verified) up to
        ``_BATCH_BYTES``, then the pool writes the batch, a directory per task. Objects of 1 MiB and more
        are streamed by the pool (loose objects are verified while streaming)."""
        root, fix_mode, store = self.root, self.fix_mode, self.store

        def write(item: tuple[FileEntry, bytes | None]) -> os.stat_result:
            entry, data = item
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

        def write_group(group: list[tuple[FileEntry, bytes | None]]) -> list[tuple[os.stat_result, str]]:
            return [(write(item), item[0].sha256) for item in group]

        def flush(batch: list[tuple[FileEntry, bytes | None]]) -> None:
            per_dir: dict[str, list[tuple[FileEntry, bytes | None]]] = {}
            for item in batch:
                per_dir.setdefault(item[0].path.rpartition("/")[0], []).append(item)
            groups: list[list[tuple[FileEntry, bytes | None]]] = [[] for _ in range(WORKERS)]
            for members in sorted(per_dir.values(), key=len, reverse=True):
                min(groups, key=len).extend(members)
            for records in self._map(write_group, [g for g in groups if g]):
                self.records.extend(records)
            for entry, _data in batch:
                self.stats.copied += 1
                self.stats.copied_bytes += entry.size

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
                    flush(batch)
                    batch, size = [], 0
        finally:
            contents.close()
        flush(batch)

    def link_duplicates(self, duplicates: Sequence[tuple[FileEntry, FileEntry]]) -> None:
        """Files whose content and mode repeat within the artifact are links to the first copy. All links
        to one inode are made by one thread, so its last ``lstat`` is the inode's final stat."""
        root = self.root
        per_first: dict[str, list[FileEntry]] = {}
        for entry, first in duplicates:
            per_first.setdefault(first.path, []).append(entry)
        groups: list[list[tuple[str, list[FileEntry]]]] = [[] for _ in range(WORKERS)]
        for item in sorted(per_first.items(), key=lambda kv: len(kv[1]), reverse=True):
            min(groups, key=lambda g: sum(len(x[1]) for x in g)).append(item)

        def link(group: list[tuple[str, list[FileEntry]]]) -> list[tuple[os.stat_result, str]]:
            out: list[tuple[os.stat_result, str]] = []
            for first, entries in group:
                for entry in entries:
                    dst = f"{root}/{entry.path}"
                    os.link(f"{root}/{first}", dst)
                out.append((os.lstat(dst), entries[-1].sha256))
            return out

        for records in self._map(link, [g for g in groups if g]):
            self.records.extend(records)
        for entry, _first in duplicates:
            self.stats.linked += 1
            self.stats.linked_bytes += entry.size
        self._tick(len(duplicates))

    def finish(self, dirs: Sequence[str]) -> None:
        """Symlinks, then read-only directories, then the stat of everything that changed."""
        root = self.root
        for item in self.manifest.entries:
            if isinstance(item, SymlinkEntry):
                os.symlink(item.target, f"{root}/{item.path}")
                self.stats.symlinks += 1

        chmod = self.dir_mode != DIR_MODE

        def seal(chunk: Sequence[str]) -> list[tuple[os.stat_result, str]]:
            out = []
            for rel in chunk:
                path = f"{root}/{rel}"
                if chmod:
                    os.chmod(path, DIR_MODE)
                out.append((os.lstat(path), DIR_SHA))
            return out

        for result in self._map(seal, _chunks(dirs, WORKERS)):
            self.records.extend(result)
        if chmod:
            os.chmod(root, DIR_MODE)  # the root's record is taken once it has its final name
        self.table.record_all(self.records)


def build_release(
    store: LocalStore,
    manifest: TreeManifest,
    dest: Path,
    table: StatTable,
    *,
    reuse_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildStats:
    """Write ``manifest`` as a new directory ``dest`` (which must not exist) and record the stat of
    every file and directory in ``table`` (the root's own record is the caller's, after renaming it).
    Unchanged files at the same path of ``reuse_root`` are hard-linked. On an error the caller removes
    ``dest``."""
    dirs: set[str] = set()
    for item in manifest.entries:
        dirs.update(_parents(item.path))
        if isinstance(item, DirEntry):
            dirs.add(item.path)
    ordered_dirs = sorted(dirs)
    firsts, duplicates = unique_files(manifest)
    from concurrent.futures import ThreadPoolExecutor  # here: a rollback's stat check needs no pool

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="graven-release") as pool:
        builder = _Builder(
            store=store,
            manifest=manifest,
            root=str(dest),
            table=table,
            reuse_root=str(reuse_root) if reuse_root else None,
            progress=progress,
            pool=pool,
        )
        builder.total = len(firsts) + len(duplicates)
        try:
            builder.make_dirs(ordered_dirs)
            missing = builder.link_unchanged(firsts)
            builder.copy(missing)
            builder.link_duplicates(duplicates)
            builder.finish(ordered_dirs)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackendError(f"cannot write the release {dest}: {exc.strerror}{where}") from None
    stats = builder.stats
    stats.files = len(firsts) + len(duplicates)
    stats.dirs = len(ordered_dirs) + 1
    return stats


@dataclass
class ReleaseCheck:
    """What checking a release on disk against its manifest found."""

    problems: list[str] = field(default_factory=list)
    rehashed: int = 0  # files whose stat changed but whose content was still right
    by_stat: bool = False  # everything matched its record: no directory was read, no file hashed

    @property
    def ok(self) -> bool:
        """True when the tree is exactly the artifact."""
        return not self.problems


def _hash_file(path: str) -> str | None:
    try:
        with open(path, "rb", buffering=0) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _check_by_stat(root: Path, manifest: TreeManifest, table: StatTable) -> bool:
    """True when the root, every directory and every file still have the stat graven recorded. An
    unchanged directory still holds exactly the entries graven made (adding, removing or replacing one
    changes its ctime), so its symlinks and its lack of extra entries need no reading."""
    base = str(root)
    try:
        if not table.matches(os.lstat(base), DIR_SHA):
            return False
        seen_dirs: set[str] = set()
        for entry in manifest.entries:
            for parent in _parents(entry.path):
                if parent not in seen_dirs:
                    seen_dirs.add(parent)
                    if not table.matches(os.lstat(f"{base}/{parent}"), DIR_SHA):
                        return False
            if isinstance(entry, FileEntry):
                if not table.matches(os.lstat(f"{base}/{entry.path}"), entry.sha256):
                    return False
            elif isinstance(entry, DirEntry):
                if not table.matches(os.lstat(f"{base}/{entry.path}"), DIR_SHA):
                    return False
            elif os.readlink(f"{base}/{entry.path}") != entry.target:
                return False
    except OSError:
        return False
    return True


@dataclass
class _Scan:
    """What a release directory holds, by relative path (the root itself is ``""``)."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, os.stat_result] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # special files, entries gone while reading


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
        except OSError as exc:
            raise BackendError(f"cannot read the release {root}: {exc.strerror}") from None
    return found


def _check_entries(
    found: _Scan, manifest: TreeManifest, table: StatTable, base: str, check: ReleaseCheck, *, rehash: bool
) -> set[str]:
    """Check every manifest entry against the scan (taking what matched out of it); the directories the
    release must have (``""``, its root, included)."""
    expected_dirs: set[str] = {""}
    for entry in manifest.entries:
        expected_dirs.update(_parents(entry.path))
        if isinstance(entry, FileEntry):
            st = found.files.pop(entry.path, None)
            if st is None:
                check.problems.append(f"{entry.path}: missing or not a regular file")
                continue
            if stat.S_IMODE(st.st_mode) != file_mode(entry.executable):
                check.problems.append(f"{entry.path}: mode {stat.S_IMODE(st.st_mode):04o}")
                continue
            if not table.matches(st, entry.sha256):
                if rehash and _hash_file(f"{base}/{entry.path}") == entry.sha256:
                    table.record(st, entry.sha256)
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
    return expected_dirs


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
    root: Path, manifest: TreeManifest, table: StatTable, *, rehash: bool = True
) -> ReleaseCheck:
    """Compare a release directory with its manifest. When the root, every directory and every file
    still have the stat graven recorded, that is enough. Otherwise every entry is read: paths, kinds,
    modes (the root's too), link targets; a file whose stat changed is hashed (with ``rehash``) and,
    when its content is still right, its record is refreshed. Extra, missing and changed entries are
    problems. Only a release without problems has its directories (and its root) recorded again."""
    if _check_by_stat(root, manifest, table):
        return ReleaseCheck(by_stat=True)
    found = _scan(root)
    if found is None:
        return ReleaseCheck(problems=[f"{root}: missing"])
    check = ReleaseCheck(problems=list(found.problems))
    if not stat.S_ISDIR(found.dirs[""].st_mode):
        return check
    expected_dirs = _check_entries(found, manifest, table, str(root), check, rehash=rehash)
    check.problems.extend(_leftover_problems(found, expected_dirs))
    if not check.problems:  # every entry checked: the directories are right as they are now
        table.record_all((found.dirs[path], DIR_SHA) for path in sorted(expected_dirs))
    return check


def remove_tree(path: Path, table: StatTable | None = None) -> None:
    """Delete a (read-only) tree and forget its records. A file that shares its inode with another
    release loses a link, which changes the inode's ctime: when its record was valid, it is refreshed
    from the still-open file."""

    def remove_dir(directory: str) -> None:
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
        with os.scandir(directory) as entries:
            items = list(entries)
        for item in items:
            if item.is_dir(follow_symlinks=False):
                remove_dir(item.path)
                continue
            if table is not None and item.is_file(follow_symlinks=False):
                before = item.stat(follow_symlinks=False)
                record = table.inodes.get(before.st_ino)
                if before.st_nlink > 1 and record is not None and table.matches(before, record[0]):
                    fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        os.unlink(item.path)
                        after = os.fstat(fd)
                    finally:
                        os.close(fd)
                    if after.st_ino == before.st_ino and after.st_nlink > 0:
                        table.record(after, record[0])
                    continue
                os.unlink(item.path)
                if before.st_nlink <= 1:
                    table.forget(before.st_ino)
                continue
            os.unlink(item.path)
        ino = os.lstat(directory).st_ino if table is not None else None
        os.rmdir(directory)
        if table is not None and ino is not None:
            table.forget(ino)

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            remove_dir(str(path))
        elif os.path.lexists(path):
            os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackendError(f"cannot remove {path}: {exc.strerror}") from None


def integrity_error(exc: IntegrityError, dest: Path, *, doing: str = "writing") -> IntegrityError:
    """Name the release being built (or planned: ``doing``) in an integrity failure."""
    return IntegrityError(f"{exc} (while {doing} {dest.name}); run `graven verify` on the artifact")
