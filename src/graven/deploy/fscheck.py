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
import grp
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from graven.core.paths import display_path, folded_collisions
from graven.errors import BackendError, GravenError, InputError
from graven.home import make_dirs, run_as, user_name
from graven.mounts import file_system_type, mounted_noexec

__all__ = [
    "PROBE_PREFIX",
    "case_fold_refusal",
    "check_path_room",
    "check_release_support",
    "file_system_type",
    "folds_case",
    "mounted_noexec",
    "nearest_existing",
    "not_writable",
    "plan_release_support",
    "release_support_problem",
]

_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EMLINK})
PROBE_PREFIX = ".graven-probe-"  # what _probe_dir makes in an environment's directory, before the lock


def release_support_problem(directory: Path) -> str | None:
    """Try, in a new directory below ``directory`` (removed again), what a release needs: a read-only
    file (chmod to 0555 and 0444 must show), a symbolic link and a hard link. What the file system
    refuses, as a phrase; None when it does all three. BackendError when nothing can be made there at
    all (a read-only file system, a full one): that is not a property of the file system's kind;
    PermissionError when this user may not write there (the caller names the remedy: not_writable)."""
    with _probe_dir(directory) as probe:
        return _try_release_kinds(probe)


@contextlib.contextmanager
def _probe_dir(directory: Path) -> Iterator[Path]:
    """A new directory below ``directory`` to try things in, removed again with what was made in it;
    BackendError when it cannot be made (a read-only or full file system)."""
    probe = directory / f"{PROBE_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.mkdir(probe, 0o700)
    except PermissionError:
        raise  # this user may not write there: the caller knows the environment (not_writable)
    except OSError as exc:
        raise BackendError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        yield probe
    finally:
        with contextlib.suppress(OSError):
            for name in os.listdir(probe):
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


def folds_case(directory: Path) -> bool:
    """True when names made in ``directory`` fold case (ext4/f2fs ``casefold``, vfat, exFAT): a file
    made as ``Probe`` is found as ``probe``. Tried in a new directory below ``directory`` (which
    inherits a casefold flag), removed again; BackendError when nothing can be made there."""
    with _probe_dir(directory) as probe:
        try:
            os.close(os.open(probe / "Probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise BackendError(f"cannot write in {directory}: {exc.strerror}") from None
        return os.path.lexists(probe / "probe")


def case_fold_refusal(dest: Path, first: str, second: str) -> str:
    """The error for two paths of an artifact that the file system of ``dest`` takes for one name."""
    return (
        f"cannot write the release {dest}: {display_path(first)} and {display_path(second)} are one "
        "name there (its file system folds case: a casefold directory, vfat, exFAT); deploy this "
        "artifact to a case-sensitive directory, or rename one of them in the commit"
    )


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest ancestor that does (where it would be made)."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def plan_release_support(root: Path, release: Path, paths: list[str], *, first: bool) -> None:
    """What a deploy of an artifact with ``paths`` as ``release`` of the environment directory ``root``
    refuses for its file system, refused alike without making anything that stays (``deploy --plan``):
    on a ``first`` deploy (graven has made nothing there yet), a file system that cannot hold releases
    (:func:`check_release_support`, probed in ``root`` or the directory it would be made in); and two
    paths that differ only in case where names fold case (probed only when the artifact has such)."""
    check_path_room(release, paths)
    where = nearest_existing(root)
    try:
        if first:
            problem = release_support_problem(where)
            if problem is not None:
                raise InputError(_unsupported(root, problem))
        pairs = folded_collisions(paths)
        if pairs and folds_case(where):
            raise InputError(case_fold_refusal(release, *pairs[0]))
    except PermissionError as exc:
        raise not_writable(f"cannot write in {where}", root, where / PROBE_PREFIX, exc) from None


PATH_MAX = 4096  # bytes of a path the kernel takes, its terminating NUL included (ENAMETOOLONG past it)


def check_path_room(release: Path, paths: Iterable[str]) -> None:
    """Refuse (InputError) an artifact with ``paths`` whose longest path, below the release directory
    ``release``, makes an absolute path longer than the kernel takes (PATH_MAX, NUL included): graven
    writes and checks a release by path, and so would whatever runs from it. A manifest's path may have
    4,096 bytes (what one file system takes): such an artifact is built, exported and imported, but
    deployed only where ``PATH/releases/<hex>/`` leaves room for it."""
    longest = max(paths, key=len, default="")
    if len(longest) * 4 + len(os.fsencode(release)) < PATH_MAX:  # UTF-8: at most 4 bytes a character
        return
    longest = max(paths, key=lambda path: len(path.encode("utf-8", "surrogatepass")))
    size = len(longest.encode("utf-8", "surrogatepass"))
    total = len(os.fsencode(release)) + 1 + size
    if total < PATH_MAX:
        return
    shown = display_path(longest[:60]) + ("..." if len(longest) > 60 else "")
    room = PATH_MAX - 1 - size - len("/releases/") - 64 - 1  # the longest environment PATH it fits in
    where = (
        f"deploy it to an environment whose path has at most {room} bytes"
        if room > 1
        else "no environment path leaves room for it: its paths must be shorter"
    )
    raise InputError(
        f"{shown}: a path of {size} bytes ({longest.count('/')} levels deep) makes one of {total} bytes "
        f"in {release}, more than the {PATH_MAX - 1} a file system takes; {where}"
    )


def _unsupported(root: Path, problem: str) -> str:
    kind = file_system_type(nearest_existing(root))
    return (
        f"{root} is on a file system that cannot hold releases{f' ({kind})' if kind else ''}: {problem}; "
        "graven needs symbolic links, hard links and Unix permission bits there (ext4, xfs, btrfs "
        "and tmpfs have them): deploy somewhere else"
    )


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
            raise not_writable(f"cannot create {root}", root, root, exc) from None
    try:
        problem = release_support_problem(root)
    except PermissionError as exc:
        raise not_writable(f"cannot write in {root}", root, root / PROBE_PREFIX, exc) from None
    if problem is None:
        return
    message = _unsupported(root, problem)
    if made:
        with contextlib.suppress(OSError):
            os.rmdir(root)
    raise InputError(message)


def not_writable(what: str, root: Path, tried: Path, exc: OSError) -> GravenError:
    """The error for ``what`` (``cannot create PATH``), refused with ``exc`` while graven made or opened
    ``tried`` in (or on the way to) the environment directory ``root``. Permission denied is the
    operator's to fix (InputError, exit 2): it names the directory that refused (its owner and mode),
    the user graven runs as, and the remedy: a missing environment made for this user, an empty one
    given to it, one that another user deploys deployed as that user. Anything else (a read-only or
    full file system) is the disk's (BackendError, exit 1)."""
    reason = exc.strerror or str(exc)
    if exc.errno != errno.EACCES:
        return BackendError(f"{what}: {reason}")
    me, group = _user_name(os.geteuid()), _group_name(os.getegid())
    blocker = nearest_existing(tried)
    try:
        st = os.lstat(blocker)
        whose = f"{blocker} is {_user_name(st.st_uid)}'s, mode {stat.S_IMODE(st.st_mode):04o}; "
    except OSError:
        whose = ""
    meta = root / ".graven"
    try:
        deployer = os.lstat(meta).st_uid
    except OSError:
        deployer = None
    if deployer is not None and deployer != os.geteuid():
        owner = _user_name(deployer)
        how = run_as(deployer, owner)
        fix = (
            f"{root} is deployed by another user ({owner}, whose {meta} it is): run graven as {owner} "
            f"({how}, with {owner}'s GRAVEN_HOME)"
        )
    elif os.path.lexists(root) and blocker == root:
        fix = (
            f"give the environment directory to {me} (as root: chown {me}: {root}), or deploy it as its owner"
        )
    elif not os.path.lexists(root):
        fix = (
            f"make the environment directory for {me} (as root: install -d -o {me} -g {group} {root}), "
            f"or deploy it where {me} may write"
        )
    else:
        fix = f"let {me} write there, or run graven as the user who owns it"
    return InputError(f"{what}: {reason} ({whose}graven runs as {me}): {fix}")


def _user_name(uid: int) -> str:
    return user_name(uid) or f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
