"""What the mount table says about a path: the type of its file system, whether it is mounted noexec.

Read by the deploy's file system checks (graven.deploy.fscheck) and by the database's errors (a home
on a file system SQLite cannot keep its write-ahead log on)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["file_system_type", "mounted_noexec"]


def file_system_type(path: Path) -> str | None:
    """The type of the file system that holds ``path`` (``ext4``, ``vfat``, ``fuse.fusefat``), from
    /proc/self/mountinfo: the mount point that is the longest prefix of its real path; None if unknown."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split(" ")
        if not sep or len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
        point = point.replace("\\134", "\\")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):  # a later mount over the same point wins
            best = (len(point), tail.split(" ")[0])
    return None if best is None else best[1]


def mounted_noexec(path: Path) -> bool:
    """True when ``path`` lies on a file system mounted ``noexec`` (no file there can be run)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
    except OSError:
        return False
