"""Atomic switches: a symlink replaced with ``rename(2)``, two directories swapped with ``renameat2``.

A reader that resolves ``current`` at any moment sees either the old release or the new one, both
complete; never a missing link and never a half-written tree.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache
from pathlib import Path
from typing import Any

from graven.errors import BackendError

__all__ = ["exchange_dirs", "fsync_dir", "point_symlink", "remove_symlink"]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise BackendError(f"cannot fsync {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def point_symlink(link: Path, target: str) -> bool:
    """Make ``link`` a symlink to ``target`` atomically (a new link renamed over the old one), then
    fsync the directory. Returns False when it already pointed there (nothing is changed)."""
    try:
        if os.readlink(link) == target:
            return False
    except OSError:
        pass
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.symlink(target, tmp)
        os.rename(tmp, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BackendError(f"cannot switch {link} to {target}: {exc.strerror}") from None
    fsync_dir(link.parent)
    return True


def remove_symlink(link: Path) -> bool:
    """Remove a symlink (if it is one) and fsync its directory; True when something was removed."""
    try:
        if not os.path.islink(link):
            return False
        os.unlink(link)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BackendError(f"cannot remove {link}: {exc.strerror}") from None
    fsync_dir(link.parent)
    return True


@cache
def _renameat2() -> Any:
    """libc's ``renameat2`` through ctypes (imported here: only directory swaps need it), or None."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange_dirs(a: Path, b: Path) -> None:
    """Swap two directories in one step (``renameat2(RENAME_EXCHANGE)``); where the kernel or libc
    cannot, fall back to two renames (a reader may then miss ``b`` for a moment)."""
    func = _renameat2()
    if func is not None:
        result = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if result == 0:
            fsync_dir(b.parent)
            return
        import ctypes

        err = ctypes.get_errno()
        if err not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
            raise BackendError(f"cannot swap {a} and {b}: {os.strerror(err)}")
    aside = b.with_name(f".trash-swap-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(b, aside)
    except OSError as exc:
        raise BackendError(f"cannot swap {a} and {b}: {exc.strerror}") from None
    try:
        os.rename(a, b)
    except OSError as exc:
        try:
            os.rename(aside, b)  # b back where it was: nothing swapped, nothing left dangling
        except OSError:
            raise BackendError(
                f"cannot swap {a} and {b}: {exc.strerror}; {b.name} is at {aside} now: rename it back"
            ) from None
        raise BackendError(f"cannot swap {a} and {b}: {exc.strerror}") from None
    try:
        os.rename(aside, a)
    except OSError as exc:
        raise BackendError(f"cannot swap {a} and {b}: {exc.strerror} (the old {b.name} is {aside})") from None
    fsync_dir(b.parent)


def link_kind(path: Path) -> tuple[str, str | None]:
    """What stands at ``path`` (``current``, ``config``): (symlink, its target), or (missing | dir |
    file | other, None)."""
    try:
        return "symlink", os.readlink(path)
    except FileNotFoundError:
        return "missing", None
    except OSError:
        pass
    try:
        st = os.lstat(path)
    except OSError:
        return "missing", None
    if os.path.isdir(path):
        return "dir", None
    return ("file" if (st.st_mode & 0o170000) == 0o100000 else "other"), None
