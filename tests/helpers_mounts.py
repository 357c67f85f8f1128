"""Small file systems of other kinds for a test: mounted in a fixture, always unmounted after it.

Mounting needs root; a FAT needs dosfstools and fusefat (a FAT in user space through FUSE: kernels built
without vfat have it too). When they are missing, the test is skipped, or fails when
GRAVEN_REQUIRE_SERVICES is set (helpers_services.unavailable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers_services import require_tool, unavailable


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def _unmount(point: Path, *, fuse: bool) -> None:
    for _ in range(50):
        done = _run("fusermount", "-u", str(point)) if fuse and shutil.which("fusermount") else None
        if done is None or done.returncode != 0:
            done = _run("umount", str(point))
        if done.returncode == 0 or not os.path.ismount(point):
            return
        time.sleep(0.1)  # busy for a moment (a process of the test still closing files)
    _run("umount", "-l", str(point))  # never leave a mount behind


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"mounting {what} needs root")


@contextmanager
def mounted_tmpfs(point: Path, *options: str) -> Iterator[Path]:
    """A fresh 16 MiB tmpfs at ``point`` with mount ``options`` (``noexec``, ...)."""
    point.mkdir(parents=True, exist_ok=True)
    with _mounted(
        "a tmpfs", point, "-t", "tmpfs", "-o", ",".join(("size=16m", "mode=0755", *options)), "tmpfs"
    ):
        yield point


@contextmanager
def mounted_bind(source: Path, point: Path) -> Iterator[Path]:
    """``source`` bind-mounted at ``point`` (the same file system, another mount)."""
    with _mounted("a bind mount", point, "--bind", str(source)):
        yield point


@contextmanager
def _mounted(what: str, point: Path, *argv: str) -> Iterator[None]:
    """``mount ARGV POINT`` (as root; the test is unavailable otherwise), unmounted at the end."""
    _need_root(what)
    done = _run("mount", *argv, str(point))
    if done.returncode != 0:
        unavailable(f"cannot mount {what}: {done.stderr.strip()}")
    try:
        yield
    finally:
        _unmount(point, fuse=False)


@contextmanager
def mounted_fat(point: Path) -> Iterator[Path]:
    """A fresh 16 MiB FAT at ``point`` (fusefat): no symbolic links, no hard links, no permission bits,
    and names compared without case."""
    _need_root("a FAT")
    require_tool("mkfs.vfat")
    require_tool("fusefat")
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing: no FUSE file systems here")
    image = point.with_name(point.name + ".img")
    with open(image, "wb") as handle:
        handle.truncate(16 << 20)
    made = _run("mkfs.vfat", str(image))
    if made.returncode != 0:
        unavailable(f"mkfs.vfat failed: {made.stderr.strip()}")
    point.mkdir(parents=True, exist_ok=True)
    done = _run("fusefat", "-o", "rw+", str(image), str(point))
    if done.returncode != 0 or not os.path.ismount(point):
        unavailable(f"cannot mount a FAT with fusefat: {done.stderr.strip() or done.stdout.strip()}")
    try:
        yield point
    finally:
        _unmount(point, fuse=True)
        image.unlink(missing_ok=True)
