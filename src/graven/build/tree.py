"""Turning a directory on disk into manifest entries while storing its files."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from graven.core.globs import Selection
from graven.core.paths import check_path, decode_path, display_path
from graven.errors import UnsafeInputError
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry
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
    names and link targets that are not UTF-8 (the whole path, escaped).
    """
    entries: list[TreeEntry] = []
    seen: set[str] = set()

    def visit(rel: str) -> None:
        if rel in seen:
            return
        seen.add(rel)
        full = os.path.join(root, rel)
        info = os.lstat(full)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            names = sorted(os.listdir(full))
            if not names and selection.selects(rel):
                entries.append(DirEntry(rel))
            for name in names:
                child = f"{rel}/{name}"  # os.listdir gives undecodable bytes as surrogates
                if not name.isascii():
                    decode_path(os.fsencode(child))  # refuses a name that is not UTF-8, naming the path
                visit(child)
            return
        if not selection.selects(rel):
            return
        check_path(rel)
        if stat.S_ISLNK(mode):
            raw = os.fsencode(os.readlink(full))
            try:
                target = raw.decode("utf-8")
            except UnicodeDecodeError:
                shown = display_path(raw.decode("utf-8", "surrogateescape"))
                raise UnsafeInputError(
                    f"{display_path(rel)}: symlink target {shown} is not valid UTF-8"
                ) from None
            entries.append(SymlinkEntry(rel, target))
        elif stat.S_ISREG(mode):
            entries.append(_store_file(full, rel, info, batch))
            if on_file is not None:
                on_file(info.st_size)
        else:
            raise UnsafeInputError(f"{rel}: special files (devices, sockets, FIFOs) are refused")

    for item in roots:
        rel = item.strip("/")
        try:
            visit(rel)
        except FileNotFoundError:
            raise UnsafeInputError(f"{rel}: not found") from None
    return entries


def _store_file(full: str, rel: str, info: os.stat_result, batch: PackBatch) -> FileEntry:
    executable = bool(info.st_mode & stat.S_IXUSR)
    with open(full, "rb") as handle:
        if info.st_size < LOOSE_THRESHOLD:
            data = handle.read()
            digest = Digest(hashlib.sha256(data).hexdigest())
            batch.add_known(digest, data)
            size = len(data)
        else:
            digest = batch.add_stream(handle, info.st_size)
            size = info.st_size
    return FileEntry(path=rel, sha256=digest.hex, size=size, executable=executable)
