"""Directory trees of any depth, without recursion.

Python 3.11's ``os.walk``, ``os.makedirs`` and pathlib's ``mkdir(parents=True)`` call themselves once
per level, and a tree can be nested deeper than the interpreter's recursion limit (about 1,000 levels):
git accepts such a tree in a commit, a build step can make one, and a drifted release can hold one. These
do the same work with a list instead of the call stack. No import beyond the standard library's ``os``:
the build's workspace, the drift watcher and the fetch phase use them alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["make_dirs", "walk"]


def make_dirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)`` without recursion: pathlib's (and ``os.makedirs``)
    call themselves once per missing parent, and a commit's tree can be nested deeper than Python's
    recursion limit (about 1,000 levels, still within PATH_MAX)."""
    missing: list[Path] = []
    here = path
    while True:
        try:
            here.mkdir()
        except FileNotFoundError:
            if here.parent == here:
                raise
            missing.append(here)
            here = here.parent
            continue
        except FileExistsError:
            if not here.is_dir():
                raise
        break
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)


def walk(top: Path | str, *, topdown: bool = True) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, topdown)`` without recursion (Python 3.11's calls itself once per level: a tree
    deeper than about 1,000 raises RecursionError), names sorted. A symlink is never followed (it is
    among the file names); a directory that cannot be listed is skipped, as os.walk skips it. With
    ``topdown``, removing a name from the directory names leaves that directory out."""
    stack: list[str | tuple[str, list[str], list[str]]] = [os.fspath(top)]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):  # bottom-up: a directory, once all below it was given
            yield item
            continue
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(item) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry.name)
        except OSError:
            continue
        dirs.sort()
        files.sort()
        if topdown:
            yield item, dirs, files
        else:
            stack.append((item, dirs, files))
        stack.extend(os.path.join(item, name) for name in reversed(dirs))
