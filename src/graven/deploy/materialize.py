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
    "build_release",
    "check_release",
    "file_mode",
    "remove_tree",
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
                    st = os.lstat(src)
                    if (
                        stat.S_ISREG(st.st_mode)
                        and stat.S_IMODE(st.st_mode) == file_mode(entry.executable)
                        and table.matches(st, entry.sha256)
                    ):
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
    files = list(manifest.files())
    firsts: dict[tuple[str, bool], FileEntry] = {}
    duplicates: list[tuple[FileEntry, FileEntry]] = []
    for entry in files:
        first = firsts.setdefault((entry.sha256, entry.executable), entry)
        if first is not entry:
            duplicates.append((entry, first))
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
        builder.total = len(files)
        try:
            builder.make_dirs(ordered_dirs)
            missing = builder.link_unchanged(list(firsts.values()))
            builder.copy(missing)
            builder.link_duplicates(duplicates)
            builder.finish(ordered_dirs)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackendError(f"cannot write the release {dest}: {exc.strerror}{where}") from None
    stats = builder.stats
    stats.files = len(files)
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


def check_release(
    root: Path, manifest: TreeManifest, table: StatTable, *, rehash: bool = True
) -> ReleaseCheck:
    """Compare a release directory with its manifest. When every directory and file still has the stat
    graven recorded, that is enough. Otherwise every entry is read: paths, kinds, modes, link targets; a
    file whose stat changed is hashed (with ``rehash``) and, when its content is still right, its record
    is refreshed. Extra, missing and changed entries are problems."""
    if _check_by_stat(root, manifest, table):
        return ReleaseCheck(by_stat=True)
    check = ReleaseCheck()
    files: dict[str, os.stat_result] = {}
    links: dict[str, str] = {}
    dirs: dict[str, os.stat_result] = {}
    stack: list[tuple[str, str]] = [("", str(root))]
    try:
        while stack:
            rel, absdir = stack.pop()
            with os.scandir(absdir) as entries:
                for item in entries:
                    path = f"{rel}{item.name}"
                    if item.is_symlink():
                        links[path] = os.readlink(item.path)
                    elif item.is_dir(follow_symlinks=False):
                        dirs[path] = item.stat(follow_symlinks=False)
                        stack.append((f"{path}/", item.path))
                    elif item.is_file(follow_symlinks=False):
                        files[path] = item.stat(follow_symlinks=False)
                    else:
                        check.problems.append(f"{path}: unexpected special file")
        root_st = os.lstat(root)
    except FileNotFoundError:
        check.problems.append(f"{root}: missing")
        return check
    except OSError as exc:
        raise BackendError(f"cannot read the release {root}: {exc.strerror}") from None
    expected_dirs: set[str] = set()
    base = str(root)
    for entry in manifest.entries:
        expected_dirs.update(_parents(entry.path))
        if isinstance(entry, FileEntry):
            st = files.pop(entry.path, None)
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
            target = links.pop(entry.path, None)
            if target != entry.target:
                what = "missing" if target is None else f"points to {target}"
                check.problems.append(f"{entry.path}: symlink {what}, expected {entry.target}")
        elif isinstance(entry, DirEntry):
            expected_dirs.add(entry.path)
    for path in sorted(set(dirs) - expected_dirs):
        check.problems.append(f"{path}/: unexpected directory")
    for path in sorted(expected_dirs - set(dirs)):
        check.problems.append(f"{path}/: missing directory")
    for path in sorted(files):
        check.problems.append(f"{path}: unexpected file")
    for path in sorted(links):
        check.problems.append(f"{path}: unexpected symlink")
    for path in sorted(expected_dirs & set(dirs)):
        if stat.S_IMODE(dirs[path].st_mode) != DIR_MODE:
            check.problems.append(f"{path}/: mode {stat.S_IMODE(dirs[path].st_mode):04o}")
    if not check.problems:  # every entry checked: the directories are right as they are now
        for st in (root_st, *(dirs[p] for p in expected_dirs)):
            table.record(st, DIR_SHA)
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


def integrity_error(exc: IntegrityError, dest: Path) -> IntegrityError:
    """Name the release being built in an integrity failure."""
    return IntegrityError(f"{exc} (while writing {dest.name}); run `graven verify` on the artifact")
