"""What the file system of an environment directory must do for graven to keep releases there.

A release needs symbolic links (``PATH/current``, ``PATH/config``, an artifact's own links), hard links
(a file repeated within an artifact, files unchanged since the live release) and Unix permission bits
(files 0444 or 0555, directories 0555: drift compares them). vfat, exFAT and some FUSE file systems have
none of these; the kernel then answers EPERM, ENOSYS or EOPNOTSUPP, or a chmod that changes nothing, at
the first thing graven makes there (the deploy lock). :func:`check_release_support` tries each once, in
a directory of its own, when graven first deploys into ``PATH``, and refuses such a directory by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from graven.errors import BackendError, InputError
from graven.home import make_dirs

__all__ = ["check_release_support", "file_system_type", "mounted_noexec", "release_support_problem"]

_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EMLINK})


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


def release_support_problem(directory: Path) -> str | None:
    """Try, in a new directory below ``directory`` (removed again), what a release needs: a read-only
    file (chmod to 0555 and 0444 must show), a symbolic link and a hard link. What the file system
    refuses, as a phrase; None when it does all three. BackendError when nothing can be made there at
    all (a read-only file system, a full one): that is not a property of the file system's kind."""
    probe = directory / f".graven-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.mkdir(probe, 0o700)
    except OSError as exc:
        raise BackendError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        return _try_release_kinds(probe)
    finally:
        for name in ("hard", "link", "file"):
            with contextlib.suppress(OSError):
                os.unlink(probe / name)
        with contextlib.suppress(OSError):
            os.rmdir(probe)


def _try_release_kinds(probe: Path) -> str | None:
    file = probe / "file"
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot write in {probe.parent}: {exc.strerror}") from None
    try:
        for mode in (0o555, 0o444):
            try:
                os.fchmod(fd, mode)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise BackendError(f"cannot write in {probe.parent}: {exc.strerror}") from None
                return f"no Unix permission bits (chmod {mode:04o}: {exc.strerror})"
            found = stat.S_IMODE(os.fstat(fd).st_mode)
            if found != mode:
                return f"no Unix permission bits (chmod {mode:04o} leaves {found:04o})"
    finally:
        os.close(fd)
    try:
        os.symlink("file", probe / "link")
        if os.readlink(probe / "link") != "file":
            return "no symbolic links (a link reads back another target)"
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise BackendError(f"cannot write in {probe.parent}: {exc.strerror}") from None
        return f"no symbolic links ({exc.strerror})"
    try:
        os.link(file, probe / "hard", follow_symlinks=False)
        if os.lstat(file).st_nlink != 2:
            return "no hard links (a link does not count as one)"
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise BackendError(f"cannot write in {probe.parent}: {exc.strerror}") from None
        return f"no hard links ({exc.strerror})"
    return None


def check_release_support(root: Path) -> None:
    """Refuse (InputError) an environment directory ``root`` whose file system cannot hold a release
    (:func:`release_support_problem`), naming what it lacks and its type; ``root`` is made if missing
    (as the deploy lock would make it), and removed again when it was made here and is refused."""
    made = not os.path.lexists(root)
    try:
        make_dirs(root)
    except OSError as exc:
        # made, but its mode could not be set (a chmod refused): the probe says what is missing
        if exc.errno not in _UNSUPPORTED or not os.path.isdir(root):
            raise BackendError(f"cannot create {root}: {exc.strerror}") from None
    problem = release_support_problem(root)
    if problem is None:
        return
    if made:
        with contextlib.suppress(OSError):
            os.rmdir(root)
    kind = file_system_type(root)
    raise InputError(
        f"{root} is on a file system that cannot hold releases{f' ({kind})' if kind else ''}: {problem}; "
        "graven needs symbolic links, hard links and Unix permission bits there (ext4, xfs, btrfs "
        "and tmpfs have them): deploy somewhere else"
    )
