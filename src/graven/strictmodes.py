"""Who could change a path under graven: the checks sshd's StrictModes makes, for environment
directories (:mod:`graven.deploy.layout`) and the home's trust material (:mod:`graven.signing.trust`).

A path is safe for user ``me`` when nobody else can change what it resolves to: every directory the
kernel walks through on the way (each symlink followed where it points) belongs to ``me`` or to root
and is not writable by other users unless it is sticky (``/tmp``: nobody renames another user's
entries there), a link in such a sticky directory belongs to ``me`` or root, and the last directory or
file itself is neither another user's nor writable by others (not even when sticky). Writable by its
group counts as writable by others when the group has a member besides ``me`` and root (sshd refuses
any group write; a group of one, as Debian's per-user groups, changes nothing): a member could swap a
directory graven is writing into for a link, and have a root deploy write and chmod where it points.
"""

from __future__ import annotations

import os
import stat

from graven.errors import BackendError, InputError

__all__ = ["first_problem", "group_others", "unsafe_mode", "unsafe_owner", "walk"]

_MAX_LINKS = 40  # as the kernel's ELOOP limit


def unsafe_owner(st: os.stat_result, me: int, *, top: bool) -> str | None:
    """What makes a directory (or, with ``top``, a file) on the way unsafe for user ``me``, or None.
    ``top``: the end of the way, which must not be writable by every user even when sticky (other users
    could put names there that graven then owns, or rewrite the file)."""
    if st.st_uid not in (me, 0):
        return f"belongs to another user (uid {st.st_uid}; you are {me})"
    return unsafe_mode(st, me, top=top)


def unsafe_mode(st: os.stat_result, me: int, *, top: bool) -> str | None:
    """What of :func:`unsafe_owner` is the mode's: writable by every user, or by a group with members
    other than ``me`` and root (whoever owns it)."""
    if st.st_mode & stat.S_IWOTH and (top or not st.st_mode & stat.S_ISVTX):
        return f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWGRP and (top or not st.st_mode & stat.S_ISVTX):
        others = group_others(st.st_gid, me)
        if others:
            return (
                f"is writable by its group {others[0]} (mode {stat.S_IMODE(st.st_mode):04o}), whose members "
                f"include {', '.join(others[1:])}"
            )
    return None


def group_others(gid: int, me: int) -> list[str]:
    """The name of group ``gid`` and its members other than ``me`` and root (by supplementary
    membership or as their primary group); empty when it has none. A group the system cannot name is
    taken as having others (its members cannot be known)."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return [f"gid {gid}", "users the system cannot list, as it has no such group"]
    mine = {0, me}
    names = set(group.gr_mem)
    try:
        users = pwd.getpwall()
    except OSError:  # pragma: no cover - no user database at all
        users = []
    skip = {u.pw_name for u in users if u.pw_uid in mine}
    others = sorted((names | {u.pw_name for u in users if u.pw_gid == gid}) - skip)
    return [group.gr_name, *others] if others else []


def walk(path: str) -> tuple[list[tuple[str, os.stat_result]], str | None]:
    """What the kernel goes through to reach the absolute ``path``: (where, its lstat) for ``/``, each
    existing component and each symlink (whose target is walked in turn), up to the first component
    that does not exist or is not a directory (included); and the directory ``path`` resolves to, when
    all of it exists and is one."""
    walked: list[tuple[str, os.stat_result]] = []
    try:
        walked.append(("/", os.lstat("/")))
        current = "/"
        parts = [p for p in path.split("/") if p]
        links = 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                current = os.path.dirname(current) or "/"
                continue
            candidate = f"{current.rstrip('/')}/{name}"
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                return walked, None  # from here on graven makes what is missing
            walked.append((candidate, st))
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise InputError(f"{path}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = "/"
                parts = [p for p in target.split("/") if p] + parts
            elif stat.S_ISDIR(st.st_mode):
                current = candidate
            else:
                return walked, None  # a file on the way (or at its end)
    except OSError as exc:
        raise BackendError(f"cannot read the way to {path}: {exc.strerror}") from None
    return walked, current


def first_problem(
    walked: list[tuple[str, os.stat_result]], tops: set[str], *, files: bool = False
) -> tuple[str, str] | None:
    """The first (where, what) on a :func:`walk` that another user could change, or None. ``tops``:
    the directories (and, with ``files``, the files) at the end of the way; other files are skipped
    (a file where a directory should be: the caller says so)."""
    me = os.geteuid()
    directories = {path: st for path, st in walked if stat.S_ISDIR(st.st_mode)}
    for path, st in walked:
        if stat.S_ISLNK(st.st_mode):
            # a link is replaced through its directory (checked as one); only in a sticky directory
            # others may write can its owner, and no one else, re-point it
            holder = directories.get(os.path.dirname(path) or "/")
            shared = holder is not None and holder.st_mode & stat.S_ISVTX and holder.st_mode & 0o022
            if shared and st.st_uid not in (me, 0):
                return path, f"is a link of another user (uid {st.st_uid})"
        elif stat.S_ISDIR(st.st_mode) or (files and stat.S_ISREG(st.st_mode) and path in tops):
            problem = unsafe_owner(st, me, top=path in tops)
            if problem is not None:
                return path, problem
    return None
