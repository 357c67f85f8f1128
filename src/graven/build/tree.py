"""Turning a directory on disk (the ``[build] outputs`` of a step build) into manifest entries while
storing its files.

What the steps left that graven cannot collect is an :class:`~graven.errors.InputError` (exit 2), one
line naming the path, as for an output reached through a symlink: an output the steps did not produce
(or whose path goes through a file), and an output graven cannot read (a step's ``chmod 000``). The
fix is in the pipeline, not in graven's environment.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graven.core import paths
from graven.core.globs import Selection
from graven.core.paths import check_path, display_path
from graven.errors import InputError, UnsafeInputError
from graven.model.digest import Digest
from graven.model.manifest import MAX_PATH, DirEntry, FileEntry, SymlinkEntry, TreeEntry
from graven.store.local import LOOSE_THRESHOLD, PackBatch

__all__ = ["collect_tree"]


def collect_tree(
    root: Path,
    roots: list[str],
    selection: Selection,
    batch: PackBatch,
    on_file: Callable[[int], None] | None = None,
) -> list[TreeEntry]:
    """Walk ``roots`` (paths relative to ``root``), store every selected file and return the entries.

    Symlinks are recorded, never followed; sockets, devices and FIFOs are refused by path, and so are
    names and link targets that are not UTF-8 (the whole path, escaped; not a name the selection
    leaves out), and paths longer than a file system takes (:data:`MAX_PATH` bytes: a step can nest
    directories without end). A root that does not exist (or lies below a file) and an entry that
    cannot be read raise InputError naming the path.
    """
    entries: list[TreeEntry] = []
    seen: set[str] = set()
    named = 0  # characters of the entries' paths and link targets (paths.MAX_PATH_BYTES)

    def add(entry: TreeEntry) -> None:
        nonlocal named
        named += len(entry.path) + (len(entry.target) if isinstance(entry, SymlinkEntry) else 0)
        if named > paths.MAX_PATH_BYTES:
            raise paths.too_many_path_bytes("the build's outputs")
        entries.append(entry)

    def visit(rel: str) -> list[str]:
        """Record ``rel``; the paths below it (a directory's entries, sorted), to visit next."""
        if rel in seen:
            return []
        if len(seen) >= paths.MAX_ENTRIES:  # the outputs' directories and files alike
            raise paths.too_many_paths("the build's outputs")
        seen.add(rel)
        if len(rel) > MAX_PATH // 4 and len(os.fsencode(rel)) > MAX_PATH:
            raise UnsafeInputError(
                f"[build] outputs: {display_path(rel[:120])}...: a path of more than {MAX_PATH} bytes "
                f"({rel.count('/')} levels deep); at most {MAX_PATH} are allowed (what a file system takes)"
            )
        full = os.path.join(root, rel)
        with _reading(rel):
            info = os.lstat(full)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            with _reading(rel):
                names = sorted(os.listdir(full))
            if not names and selection.selects_dir(rel):
                check_path(rel)
                add(DirEntry(rel))
            # os.listdir gives undecodable bytes as surrogates: such a name is refused (check_path)
            # only once it is selected, so that [artifact] exclude can leave it out
            return [f"{rel}/{name}" for name in names]
        if not selection.selects(rel):
            return []
        check_path(rel)
        if stat.S_ISLNK(mode):
            with _reading(rel):
                raw = os.fsencode(os.readlink(full))
            try:
                target = raw.decode("utf-8")
            except UnicodeDecodeError:
                shown = display_path(raw.decode("utf-8", "surrogateescape"))
                raise UnsafeInputError(
                    f"{display_path(rel)}: symlink target {shown} is not valid UTF-8"
                ) from None
            add(SymlinkEntry(rel, target))
        elif stat.S_ISREG(mode):
            add(_store_file(full, rel, info, batch))
            if on_file is not None:
                on_file(info.st_size)
        else:
            raise UnsafeInputError(f"{rel}: special files (devices, sockets, FIFOs) are refused")
        return []

    for item in roots:
        rel = item.strip("/")
        _check_produced(root, rel)
        # depth first, each directory's entries in order, without recursion: a step can nest
        # directories deeper than Python's recursion limit (about 1,000 levels)
        pending = [rel]
        while pending:
            pending.extend(reversed(visit(pending.pop())))
    return entries


@contextmanager
def _reading(rel: str) -> Iterator[None]:
    """Turn an OSError raised inside into one InputError line naming the output ``rel``."""
    try:
        yield
    except OSError as exc:
        raise _unreadable(rel, exc) from None


def _unreadable(rel: str, exc: OSError) -> InputError:
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = "; a step left it unreadable: make it readable (chmod -R u+rwX) before the steps end"
    reason = exc.strerror or str(exc)
    shown = display_path(rel) if len(rel) <= 240 else f"{display_path(rel[:120])}..."  # one short line
    return InputError(f"[build] outputs: cannot read {shown}: {reason}{hint}")


def _check_produced(root: Path, rel: str) -> None:
    """Refuse a declared output that is not there, or whose path goes through a file, naming it."""
    try:
        os.lstat(os.path.join(root, rel))
        return
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:  # EACCES on a parent, say
        raise _unreadable(rel, exc) from None
    shown = display_path(rel)
    parent = rel
    while "/" in parent:  # the nearest parent that exists: is it a file?
        parent = parent.rsplit("/", 1)[0]
        try:
            info = os.stat(os.path.join(root, parent))
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise InputError(
                f"[build] outputs: '{shown}' was not produced by the steps "
                f"({display_path(parent)} is not a directory)"
            )
        break
    raise InputError(
        f"[build] outputs: '{shown}' was not produced by the steps; "
        "make a step create it, or leave it out of outputs"
    )


def _store_file(full: str, rel: str, info: os.stat_result, batch: PackBatch) -> FileEntry:
    executable = bool(info.st_mode & stat.S_IXUSR)
    with _reading(rel):
        handle = open(full, "rb")  # noqa: SIM115 - closed below; only opening it is a reading error
    with handle:
        if info.st_size < LOOSE_THRESHOLD:
            data = handle.read()
            digest = Digest(hashlib.sha256(data).hexdigest())
            batch.add_known(digest, data)
            size = len(data)
        else:
            digest = batch.add_stream(handle, info.st_size)
            size = info.st_size
    return FileEntry(path=rel, sha256=digest.hex, size=size, executable=executable)
