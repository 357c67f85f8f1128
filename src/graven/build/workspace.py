"""The host directories of one step build, and copying a checkout so that only the commit shows.

Every mode and time a step can observe comes from the commit: files 0644 or 0755, directories 0755,
every mtime (directories and symlinks included) the commit time, whatever the host's umask, clock or
file creation order. ``reverse=True`` writes the same tree in the opposite order (``--check`` uses it:
directory listing order follows creation order on many file systems).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from graven.core.paths import check_path
from graven.errors import UnsafeInputError
from graven.sources.git import MODE_EXECUTABLE, MODE_SUBMODULE, MODE_SYMLINK, GitEntry, GitRepo

__all__ = ["Workspace", "checkout", "copy_tree", "ensure_inside", "settle_tree"]

# Every directory a step sees has this mode (what git checkouts give under the usual umask 022).
DIR_MODE = 0o755


@dataclass(frozen=True)
class Workspace:
    """``root`` holds ``src`` (the checkout), ``work`` (the steps' scratch copy), ``home``, ``tmp``."""

    root: Path

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
    def create(cls, *, prefix: str = "graven-build-", nested: int = 0) -> Workspace:
        """A new workspace in the temp directory; ``nested`` extra levels give a deeper, different path."""
        root = Path(tempfile.mkdtemp(prefix=prefix))
        for level in range(nested):
            root = root / f"level-{level}"
        for path in (root, root / "src", root / "home", root / "tmp"):
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(path, DIR_MODE)
        return cls(root)

    def remove(self) -> None:
        """Delete everything (the top-level temp directory, also when nested)."""
        top = self.root
        while top.name.startswith("level-"):
            top = top.parent
        shutil.rmtree(top, ignore_errors=True)


def checkout(
    repo: GitRepo,
    commit: str,
    dest: Path,
    *,
    epoch: int,
    reverse: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write the commit's whole tree (raw blobs, no filters) to ``dest``, settled with :func:`settle_tree`.

    Submodules are skipped; unsafe paths are refused. ``reverse`` creates the files in reverse order.
    """
    by_oid: dict[str, list[GitEntry]] = {}
    for entry in repo.ls_tree(commit):
        check_path(entry.path)
        if entry.mode == MODE_SUBMODULE:
            continue
        by_oid.setdefault(entry.oid, []).append(entry)
    oids = sorted(by_oid, reverse=reverse)
    total = len(oids)
    dest.mkdir(mode=DIR_MODE, exist_ok=True)
    for done, (oid, reader) in enumerate(repo.cat_blobs(oids), start=1):
        written: Path | None = None  # the first regular file with this content
        content: bytes | None = None  # the content, once it was read for a symlink
        for entry in sorted(by_oid[oid], key=lambda e: e.path, reverse=reverse):
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.mode == MODE_SYMLINK:
                if content is None:
                    content = written.read_bytes() if written is not None else reader.read()
                try:
                    os.symlink(content.decode("utf-8"), target)
                except UnicodeDecodeError:
                    raise UnsafeInputError(f"{entry.path}: symlink target is not valid UTF-8") from None
                continue
            if written is not None:
                shutil.copyfile(written, target)
            elif content is not None:
                target.write_bytes(content)
            else:
                with target.open("xb") as handle:
                    while chunk := reader.read(1 << 20):
                        handle.write(chunk)
            written = written or target
            os.chmod(target, 0o755 if entry.mode == MODE_EXECUTABLE else 0o644)
        if progress is not None and (done % 256 == 0 or done == total):
            progress(done, total)
    settle_tree(dest, epoch)


def copy_tree(src: Path, dst: Path, *, epoch: int, reverse: bool = False) -> None:
    """Copy the checkout ``src`` to a new directory ``dst`` with the same modes and times."""
    items: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            items.append((rel, os.lstat(os.path.join(src, rel))))
    if reverse:
        items.reverse()
    os.mkdir(dst, DIR_MODE)
    for rel, info in items:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(info.st_mode):
            target.mkdir(exist_ok=True)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src / rel), target)
        else:
            shutil.copyfile(src / rel, target)
            os.chmod(target, 0o755 if info.st_mode & stat.S_IXUSR else 0o644)
    settle_tree(dst, epoch)


def settle_tree(root: Path, epoch: int) -> None:
    """Give every directory mode 0755, and every entry (links too, ``root`` included) mtime ``epoch``.

    Directories are done bottom-up and last, since writing below a directory changes its mtime.
    """
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
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
