"""Running build steps in a bubblewrap sandbox (or, when the pipeline says ``sandbox = "none"``, directly).

Inside the sandbox every step sees the same machine, wherever and whenever it runs:

- ``/build/src``: the commit's tree, read-only; ``/build/work``: a writable scratch copy of it, the
  working directory; ``/build/home``: ``HOME``; ``/tmp``: a fresh tmpfs (``TMPDIR``);
- the host's top-level directories read-only, except ``/tmp``, ``/run`` (sockets of host services),
  ``/proc`` and ``/dev`` (fresh ones are mounted), the graven home, the repository's working tree and
  the user's credentials (``~/.ssh``, ``~/.aws``, ``~/.netrc``...: :data:`CREDENTIAL_DIRS`), which are
  hidden (a PATH directory inside one of them, such as a virtualenv's ``bin``, is bound back
  read-only: :func:`shown_paths`); the root itself is read-only, so nothing outside the scratch space
  can be written; ``/tmp`` holds at most :func:`tmp_size_limit` bytes where bwrap can limit it;
- ``/dev``: fresh, with graven's own device nodes when graven runs as root (bwrap's ``--dev`` binds the
  host's nodes writable, and root owns them: a step could ``chmod`` the host's ``/dev/null``);
- no network (a network namespace of its own: even 127.0.0.1 is unreachable), except for the fetch
  phase; no capabilities (so a root build cannot remount anything writable); a fixed host name;
- only the environment graven passes (see :func:`graven.build.steps.clean_environment`), umask 022;
- the commit's time on what the sandbox makes for the step: ``/build/home`` (made so on the host),
  ``/tmp``, ``/dev``, ``/dev/shm`` and bwrap's entries in ``/dev`` (the step's shell first runs
  :func:`times_prelude`; a tmpfs takes no time from outside), graven's own device nodes. Not fixable:
  ctimes (no call sets one), an atime once something reads the directory, ``/``, ``/build`` and the
  hidden directories (read-only mounts bwrap makes: the step cannot set their times, and a host
  directory bound there instead would list in the host file system's order), ``/proc`` (procfs
  times its inodes when first looked up) and, when graven is not root, the host's own device nodes
  that bwrap's ``--dev`` binds (their times are the host's: only root can make nodes of its own);
- the same limits on every machine (:data:`STEP_LIMITS`, set on the step's launcher before it starts
  anything, see :func:`_run_logged`); a hard limit above graven's own that it cannot raise is lowered
  to it, with a warning (:func:`clamp_limits`).

The bwrap argument list is built by a pure function, :func:`bwrap_argv`, from a :class:`SandboxLayout`;
:class:`BubblewrapRunner` runs one command with it (the options go through a pipe, ``bwrap --args 9``,
so that the sandbox's ``/proc/1/cmdline`` does not show the host's random workspace path).
:func:`probe_bubblewrap` checks once per process that bubblewrap exists and can create its namespaces,
and raises an error with a one-line fix otherwise. Steps in a user namespace of their own
(:attr:`SandboxLayout.map_root`; a root build's too: bwrap run by root makes one, mapping 0 to 0 alone)
cannot make another one where bubblewrap can stop them (``--disable-userns``, 0.8 and later:
:func:`userns_disable_supported`): each user namespace an unprivileged process makes opens more of the
kernel to it.

Every step runs in a session of its own, and when it ends (or times out, or graven is interrupted)
the whole process group is killed: ``sleep 1000 &`` does not outlive its step. Without a sandbox
(:class:`HostRunner`) a step can still leave its group (``setsid``, a double fork); on Linux graven
makes itself a child subreaper while a step runs, so that such orphans become graven's children, and
kills them too. A process that escapes both (a daemon started through a service manager, say) is out
of reach without namespaces: that is what the bubblewrap sandbox (a PID namespace) is for.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

from graven.errors import InputError
from graven.runtime import GroupWatchdog

if TYPE_CHECKING:
    import socket

    from graven.build.netns import FetchNetwork

__all__ = [
    "BUILD_HOME",
    "BUILD_SRC",
    "BUILD_USER_ENV",
    "BUILD_WORK",
    "DEFAULT_HOSTNAME",
    "SANDBOX_BUBBLEWRAP",
    "SANDBOX_NONE",
    "BubblewrapRunner",
    "BuildUser",
    "HostEntry",
    "HostRunner",
    "SandboxLayout",
    "StepLimit",
    "StepRunner",
    "build_user",
    "bwrap_argv",
    "bwrap_options",
    "clamp_limits",
    "find_bwrap",
    "host_root_entries",
    "probe_bubblewrap",
    "searchable_by",
    "shown_paths",
    "step_limits_here",
    "times_prelude",
    "tmp_size_limit",
    "tmpfs_size_supported",
    "userns_disable_supported",
    "varied_limits",
]

SANDBOX_BUBBLEWRAP: Final = "bubblewrap"
SANDBOX_NONE: Final = "none"

BUILD_ROOT: Final = "/build"
BUILD_SRC: Final = "/build/src"
BUILD_WORK: Final = "/build/work"
BUILD_HOME: Final = "/build/home"
SANDBOX_TMP: Final = "/tmp"  # noqa: S108 - a fresh tmpfs inside the sandbox, not the host's /tmp
DEFAULT_HOSTNAME: Final = "graven"
STEP_UMASK: Final = 0o022
# The most the sandbox's /tmp (and /dev/shm) may hold: 4 GiB, or half of the RAM when that is less
# (the kernel's own default for a tmpfs, which is otherwise what a step gets). See tmp_size_limit.
TMP_SIZE_LIMIT: Final = 4 << 30
RLIM_INFINITY: Final = -1  # resource.RLIM_INFINITY on Linux


@dataclass(frozen=True, slots=True)
class StepLimit:
    """One resource limit every step process gets, whatever graven's own process has: ``name`` is the
    :mod:`resource` constant's name, ``what`` the limit as ``ulimit`` names it; -1 is unlimited."""

    name: str
    what: str
    soft: int
    hard: int


# The limits of every step process (bwrap and all it starts; a host step). A step can read them
# (ulimit -a, getrlimit), so they are the same on every machine: the kernel's own defaults where
# those do not depend on the machine (open files 1024/4096, stack 8 MiB, message queues), no core
# files (a core dump in the scratch directory would be an output), and fixed counts where the
# kernel's default follows the RAM (processes, pending signals: 8192, what a 2 GiB machine gets).
# A hard limit above the caller's cannot be set without CAP_SYS_RESOURCE: the steps then get the
# caller's, and graven warns (clamp_limits): a build is not refused for a small machine's limits.
STEP_LIMITS: tuple[StepLimit, ...] = (
    StepLimit("RLIMIT_CORE", "core file size (ulimit -c)", 0, 0),
    StepLimit("RLIMIT_CPU", "cpu time (ulimit -t)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_DATA", "data segment size (ulimit -d)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_FSIZE", "file size (ulimit -f)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_LOCKS", "file locks (ulimit -x)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_MEMLOCK", "locked memory (ulimit -l)", 64 << 10, 64 << 10),
    StepLimit("RLIMIT_MSGQUEUE", "POSIX message queues (ulimit -q)", 819200, 819200),
    StepLimit("RLIMIT_NICE", "scheduling priority (ulimit -e)", 0, 0),
    StepLimit("RLIMIT_NOFILE", "open files (ulimit -n)", 1024, 4096),
    StepLimit("RLIMIT_NPROC", "user processes (ulimit -u)", 8192, 8192),
    StepLimit("RLIMIT_RSS", "resident set size (ulimit -m)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_RTPRIO", "real-time priority (ulimit -r)", 0, 0),
    StepLimit("RLIMIT_RTTIME", "real-time timeout (ulimit -R)", RLIM_INFINITY, RLIM_INFINITY),
    StepLimit("RLIMIT_SIGPENDING", "pending signals (ulimit -i)", 8192, 8192),
    StepLimit("RLIMIT_STACK", "stack size (ulimit -s)", 8 << 20, RLIM_INFINITY),
    StepLimit("RLIMIT_AS", "virtual memory (ulimit -v)", RLIM_INFINITY, RLIM_INFINITY),
)
_RLIMIT_LOCKS: Final = 10  # the same number on every Linux architecture; the resource module lacks it

# Top-level host directories that are never shown to a step: fresh /proc, /dev and /tmp are mounted
# instead, /run holds the sockets of host services (a socket is reachable without any network), and
# /build is the sandbox's own.
_NOT_MIRRORED: Final = frozenset({"proc", "dev", "tmp", "run", "build", "lost+found"})
# Host directories the sandbox does not show whose PATH directories it binds back read-only at their own
# paths (a virtualenv whole), as it does for PATH directories in a hidden directory: the steps' own /tmp
# is a fresh tmpfs, and /run is not there at all.
UNSHOWN_TOOL_PARENTS: Final = ("/run", "/tmp")  # noqa: S108 - the host's, never written
# What bwrap itself covers read-only in a new /proc when it can (its cover_proc_dirs).
_PROC_READ_ONLY: Final = ("sys", "sysrq-trigger", "irq", "bus")

FIX: Final = (
    'install bubblewrap (apt-get install bubblewrap) or set sandbox = "none" in [build] and allow it '
    "with GRAVEN_ALLOW_UNSANDBOXED=1"
)


# The host user the steps of a build run as root run as, when the operator opts in (in a user namespace
# of their own, as its uid 0): the kernel never applies the process limit to the host's uid 0, and root
# reads every file the sandbox mirrors (/etc/shadow, /root). The operator's setting, never the commit's;
# unset (or root, 0) keeps the steps root's: that user must reach the tools and TMPDIR, which a root
# install (a pyenv under /root, a 0700 TMPDIR) often does not let it.
BUILD_USER_ENV: Final = "GRAVEN_BUILD_USER"
NOBODY: Final = 65534  # nobody and nogroup on Debian, Fedora, Alpine, Arch...


@dataclass(frozen=True, slots=True)
class BuildUser:
    """The unprivileged host user (``uid``, ``gid``; ``name`` for messages) a root build's steps run as."""

    name: str
    uid: int
    gid: int


def build_user(environ: Mapping[str, str] | None = None, *, euid: int | None = None) -> BuildUser | None:
    """Who the sandboxed steps run as: None for graven's own user (graven not run as root, or
    :data:`BUILD_USER_ENV` unset, ``root`` or ``0``), else the user it names (a name, or ``UID[:GID]``;
    nobody, say). InputError for a user this host does not know."""
    env = os.environ if environ is None else environ
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    value = env.get(BUILD_USER_ENV, "").strip()
    if not value:
        return None
    uid_text, _, gid_text = value.partition(":")
    if uid_text.isdigit() and (gid_text.isdigit() or not gid_text):
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
        if uid == 0 and gid == 0:
            return None
        if uid == 0 or gid == 0:  # half root: the steps would read what root's group may read
            raise InputError(
                f"{BUILD_USER_ENV}={value!r} names root's user or group; name an unprivileged user and "
                "group (nobody, 65534:65534, or a dedicated one), or unset it to run the steps as root"
            )
        return BuildUser(value, uid, gid)
    try:
        import pwd

        entry = pwd.getpwnam(value)
    except (ImportError, KeyError):
        raise InputError(
            f"{BUILD_USER_ENV}={value!r}: no such user here; name the unprivileged user (or UID:GID) that "
            f"the steps of a root build run as (nobody, {NOBODY}:{NOBODY}, or a dedicated one), or unset it "
            "to run them as root (no process limit applies to root, and steps read what root reads)"
        ) from None
    if entry.pw_uid == 0:
        return None
    if entry.pw_gid == 0:
        raise InputError(
            f"{BUILD_USER_ENV}={value!r} names a user whose group is root's; name an unprivileged user and "
            "group (nobody, 65534:65534, or a dedicated one), or unset it to run the steps as root"
        )
    return BuildUser(value, entry.pw_uid, entry.pw_gid)


def searchable_by(path: str, user: BuildUser) -> bool:
    """Whether ``user`` (no supplementary groups) can look ``path`` up: search permission on every
    directory above it (by the mode bits; ACLs are not read). A directory the steps cannot reach needs
    no hiding from them, and bubblewrap, which runs as them, could not mount anything there."""
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    while True:
        try:
            info = os.stat(parent)
        except OSError:
            return False
        if info.st_uid == user.uid:
            bit = 0o100
        elif info.st_gid == user.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not info.st_mode & bit:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One entry of the host's ``/``: a directory to mirror read-only, or a symlink to recreate."""

    name: str
    link_target: str | None = None


@dataclass(frozen=True)
class SandboxLayout:
    """Where the host directories of one build go inside the sandbox.

    ``root_entries`` is the host's ``/`` (see :func:`host_root_entries`); ``hidden`` are host
    directories covered by an empty read-only tmpfs; ``shown`` are (host directory, path in the
    sandbox) pairs bound read-only below a hidden directory (the PATH directories in it, see
    :func:`shown_paths`); ``extra_ro`` are host files shown read-only at the same path (the resolver
    configuration of the fetch phase, when /etc/resolv.conf is a link); ``masked`` are host files
    replaced by ``/dev/null``.
    """

    src: Path
    work: Path
    home: Path
    root_entries: tuple[HostEntry, ...]
    hidden: tuple[str, ...] = ()
    shown: tuple[tuple[str, str], ...] = ()
    extra_ro: tuple[str, ...] = field(default=())
    masked: tuple[str, ...] = ()  # host files shown as empty (/dev/null): a signing key file, say
    devices: str | None = None  # graven's own device nodes for /dev (see make_private_devices)
    # graven not run as root: the steps run as uid and gid 0 of a user namespace of their own, as they
    # do when graven runs as root, so that no step output (``id -u``, a tar's owners, ``ls -l``) depends
    # on which user ran the build
    map_root: bool = False
    # the commit time: what bwrap makes for the step (/tmp, /dev and its entries) gets it before the
    # step runs (times_prelude); None leaves them the time they were made
    epoch: int | None = None


def bwrap_argv(
    bwrap: str,
    layout: SandboxLayout,
    env: Mapping[str, str],
    command: Sequence[str],
    *,
    network: bool = False,
    hostname: str = DEFAULT_HOSTNAME,
    tmp_size: int | None = None,
    disable_userns: bool = False,
) -> list[str]:
    """The full bwrap command line that runs ``command`` in ``layout``. Pure: reads nothing."""
    options = bwrap_options(
        layout, env, network=network, hostname=hostname, tmp_size=tmp_size, disable_userns=disable_userns
    )
    return [bwrap, *options, "--", *command]


def bwrap_options(
    layout: SandboxLayout,
    env: Mapping[str, str],
    *,
    network: bool = False,
    hostname: str = DEFAULT_HOSTNAME,
    tmp_size: int | None = None,
    resolver: tuple[str, str] | None = None,
    disable_userns: bool = False,
) -> list[str]:
    """The bwrap options (everything before ``--``) for ``layout``; ``tmp_size`` limits the
    sandbox's /tmp and /dev/shm (bwrap's ``--size``, 0.7 and later); ``resolver`` (host file, sandbox
    path) is bound read-only over the sandbox's resolver configuration (the fetch's own network:
    :mod:`graven.build.netns`); ``disable_userns`` keeps the steps of a layout with a user namespace
    (``map_root``) from making more (bwrap's ``--disable-userns``, 0.8 and later: it needs
    ``--unshare-user``). Pure: reads nothing."""
    userns = ["--unshare-user", "--uid", "0", "--gid", "0"] if layout.map_root else []
    if disable_userns:
        # bwrap run by root already makes a user namespace (--unshare-all's --unshare-user-try) that
        # maps 0 to 0 alone; --unshare-user names it, without changing its maps, as --disable-userns needs
        userns = [*(userns or ["--unshare-user"]), "--disable-userns"]
    argv = [
        "--unshare-all",  # user (when needed), ipc, pid, net, uts, cgroup namespaces
        *(["--share-net"] if network else []),
        *userns,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        hostname,
        "--clearenv",
    ]
    for key in sorted(env):
        argv += ["--setenv", key, env[key]]
    for entry in layout.root_entries:
        if entry.name in _NOT_MIRRORED or entry.name.startswith("."):
            continue
        dest = f"/{entry.name}"
        if entry.link_target is not None:
            argv += ["--symlink", entry.link_target, dest]
        else:
            argv += ["--ro-bind", dest, dest]
    size = ["--size", str(tmp_size)] if tmp_size else []
    argv += ["--proc", "/proc"]
    # bwrap makes these read-only only in a user namespace it maps itself; a step running as root
    # (graven run by root: its user namespace maps 0 to the host's 0) could otherwise write the
    # host's kernel settings (kernel.core_pattern runs a command as root on the next crash) or
    # /proc/sysrq-trigger. Bound read-only from the host: a sysctl of a namespace (hostname, net.*)
    # still reads the step's own.
    for name in _PROC_READ_ONLY:
        argv += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
    argv += [*_dev_argv(layout.devices, size), *size, "--tmpfs", SANDBOX_TMP]
    for path in layout.extra_ro:
        argv += ["--ro-bind", path, path]
    # A hidden directory is an empty tmpfs; the PATH directories below it are bound back into it
    # before it is made read-only (bwrap cannot create their mount points in a read-only tmpfs), a
    # directory always before what lies below it.
    mounts = [((path, 0), ["--tmpfs", path]) for path in layout.hidden]
    mounts += [((dest, 1), ["--ro-bind", source, dest]) for source, dest in layout.shown]
    for _key, args in sorted(mounts, key=lambda mount: mount[0]):
        argv += args
    for path in layout.hidden:
        argv += ["--remount-ro", path]
    for path in layout.masked:
        argv += ["--ro-bind", "/dev/null", path]
    if resolver is not None:
        argv += ["--ro-bind", resolver[0], resolver[1]]
    argv += [
        "--dir",
        BUILD_ROOT,
        "--ro-bind",
        str(layout.src),
        BUILD_SRC,
        "--bind",
        str(layout.work),
        BUILD_WORK,
        "--bind",
        str(layout.home),
        BUILD_HOME,
        "--chdir",
        BUILD_WORK,
        "--remount-ro",
        "/",
    ]
    return argv


# The device nodes a step gets in /dev: (name, major, minor), as bwrap's --dev gives them.
DEVICES: Final = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)


def _dev_argv(devices: str | None, size: list[str]) -> list[str]:
    """/dev for a step. bwrap's ``--dev`` bind-mounts the host's own nodes, writable: a step running as
    root (who owns them) could ``chmod 600 /dev/null`` on the host. With ``devices`` (graven's private
    nodes, see :func:`make_private_devices`) those are mounted over bwrap's binds of the host's nodes
    (a step without capabilities cannot unmount them); the rest of bwrap's /dev stays as it is (its own
    devpts instance for ptys, the fd links), and its /dev/shm becomes a tmpfs of ``size``."""
    if devices is None:
        return ["--dev", "/dev"]
    argv = ["--dev", "/dev"]
    for name, _major, _minor in DEVICES:
        argv += ["--dev-bind", f"{devices}/{name}", f"/dev/{name}"]
    argv += [*size, "--tmpfs", "/dev/shm"]  # noqa: S108 - the sandbox's own, empty
    return argv


def make_private_devices(
    directory: Path, epoch: int | None = None, owner: BuildUser | None = None
) -> str | None:
    """Make graven's own device nodes (:data:`DEVICES`, mode 0666; access and modification time
    ``epoch``, when given; owned by ``owner``, the steps' user, when given: they show as uid 0's, as
    they do when the steps run as root) in ``directory`` for the sandbox's /dev, so that nothing a step
    does to them reaches the host's nodes.

    Only needed when graven runs as root: without privileges bwrap runs the step in a user namespace
    whose root does not own the host's nodes. None (use bwrap's ``--dev``) when not root, or when nodes
    cannot be made or used here (no CAP_MKNOD, a ``nodev`` file system)."""
    if os.geteuid() != 0:
        return None
    import stat

    try:
        directory.mkdir(mode=0o755)
        for name, major, minor in DEVICES:
            path = directory / name
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)  # noqa: S103 - a device node, as on any host; whatever the umask
            if owner is not None:
                os.chown(path, owner.uid, owner.gid)
            if epoch is not None:
                os.utime(path, (epoch, epoch))
        fd = os.open(directory / "null", os.O_WRONLY | os.O_CLOEXEC)  # fails on a nodev mount
        os.close(fd)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return str(directory)


def host_root_entries(root: str = "/") -> tuple[HostEntry, ...]:
    """The host's top-level entries, sorted: directories and the symlinks among them (``/bin -> usr/bin``)."""
    entries: list[HostEntry] = []
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if os.path.islink(full):
            entries.append(HostEntry(name, os.readlink(full)))
        elif os.path.isdir(full):
            entries.append(HostEntry(name))
    return tuple(entries)


def hidden_paths(candidates: Iterable[Path], tool_dirs: Iterable[str]) -> tuple[str, ...]:
    """Host directories to hide from steps: ``candidates`` (resolved) that exist, are not ``/``, are not
    below a directory the sandbox does not mirror anyway, and are not themselves a PATH directory.

    A candidate that merely holds a PATH directory (the repository with its ``.venv/bin``) is hidden
    all the same: :class:`BubblewrapRunner` binds the PATH directories back (:func:`shown_paths`)."""
    tools = {os.path.realpath(d) for d in tool_dirs if d}
    chosen: list[str] = []
    for candidate in candidates:
        real = os.path.realpath(candidate)
        top = real.strip("/").split("/", 1)[0]
        if real == "/" or not os.path.isdir(real) or top in _NOT_MIRRORED or real in tools:
            continue
        chosen.append(real)
    unique = sorted(set(chosen))
    # one below another is hidden with it (its own tmpfs would show up as an empty directory there)
    return tuple(path for path in unique if not any(path.startswith(other + "/") for other in unique))


def shown_paths(hidden: Iterable[str], tool_dirs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The PATH directories below a ``hidden`` directory, as (host directory, path in the sandbox)
    pairs to bind back read-only, so that the tools in them stay reachable and nothing else is.

    A PATH directory is looked for at its resolved path and at its own (normalised) path, since a
    symlink inside a hidden directory is hidden too. A virtualenv's ``bin`` (its parent holds
    ``pyvenv.cfg``) brings the whole virtualenv, without which its scripts cannot run; relative PATH
    entries (which name directories of the sandbox) and PATH directories below another one are left
    out."""
    covered = tuple(hidden)

    def strictly_below(path: str) -> bool:
        return any(path.startswith(h + "/") for h in covered)

    found: dict[str, str] = {}  # path in the sandbox -> host directory
    for entry in tool_dirs:
        if not entry or not os.path.isabs(entry):
            continue
        real = os.path.realpath(entry)
        if not os.path.isdir(real):
            continue
        venv = os.path.dirname(real)
        is_venv = os.path.basename(real) == "bin" and os.path.isfile(os.path.join(venv, "pyvenv.cfg"))
        for where in dict.fromkeys((os.path.normpath(entry), real)):
            if not strictly_below(where):
                continue
            if is_venv and strictly_below(os.path.dirname(where)):
                found.setdefault(os.path.dirname(where), venv)
            else:
                found.setdefault(where, real)
    chosen = sorted(found)
    outer = [d for d in chosen if not any(d.startswith(o + "/") for o in chosen)]
    return tuple((found[dest], dest) for dest in outer)


# Where users keep credentials in their home directory: the directories are hidden from steps (an
# empty read-only tmpfs, like the graven home itself) and the files made unreadable (/dev/null bound
# over them, which opens with EACCES: the sandbox's mounts allow no device). A build step runs code
# from the commit, which may come from anyone who can push a branch.
CREDENTIAL_DIRS: Final = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".config/hub",
    ".config/containers",  # auth.json of podman, buildah, skopeo
    ".config/rclone",
    ".config/op",
    ".docker",
    ".kube",
    ".password-store",
    ".local/share/keyrings",
    ".terraform.d",
    ".vault.d",
)
CREDENTIAL_FILES: Final = (
    ".netrc",
    ".git-credentials",
    ".gitconfig",  # http.extraHeader, credential helpers, tokens in insteadOf URLs
    ".config/git/config",
    ".config/git/credentials",
    ".pypirc",
    ".pip/pip.conf",
    ".config/pip/pip.conf",  # an index URL with its token
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".m2/settings.xml",
    ".m2/settings-security.xml",
    ".gradle/gradle.properties",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".composer/auth.json",
    ".config/composer/auth.json",
    ".gem/credentials",
    ".nuget/NuGet/NuGet.Config",
    ".vault-token",
    ".s3cfg",
    ".boto",
    ".my.cnf",
    ".pgpass",  # the password GRAVEN_DB_URL's PostgreSQL connection may come from
    ".pg_service.conf",  # or a service's (GRAVEN_DB_URL ?service=, PGSERVICE): libpq reads it there too
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".lesshst",
    ".viminfo",
)


def credential_paths(homes: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """The credential directories and files (see :data:`CREDENTIAL_DIRS`) below each of ``homes``."""
    bases = [Path(home) for home in dict.fromkeys(homes) if home and os.path.isabs(home)]
    dirs = [base / name for base in bases for name in CREDENTIAL_DIRS]
    files = [base / name for base in bases for name in CREDENTIAL_FILES]
    return dirs, files


# Where the operator's own environment says credentials are, wherever that is: a CI job's cloud login
# (google-github-actions/auth writes GOOGLE_APPLICATION_CREDENTIALS into the runner's temp directory,
# which the sandbox mirrors), a docker or kubectl login in a directory of the job's, an SSH agent's
# socket (an agent signs with the user's keys for whoever connects). Directories are hidden, files and
# sockets masked, as those below the home are.
CREDENTIAL_ENV_DIRS: Final = (
    "GNUPGHOME",
    "DOCKER_CONFIG",
    "CLOUDSDK_CONFIG",
    "AZURE_CONFIG_DIR",
    "GH_CONFIG_DIR",
    "PASSWORD_STORE_DIR",
)
CREDENTIAL_ENV_FILES: Final = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AZURE_FEDERATED_TOKEN_FILE",
    "KUBECONFIG",  # a list, as PATH
    "REGISTRY_AUTH_FILE",
    "GIT_CONFIG_GLOBAL",
    "NETRC",
    "NPM_CONFIG_USERCONFIG",
    "npm_config_userconfig",
    "PIP_CONFIG_FILE",
    "RCLONE_CONFIG",
    "TF_CLI_CONFIG_FILE",
    "BOTO_CONFIG",
    "VAULT_CONFIG_PATH",
    "HISTFILE",
    "SSH_AUTH_SOCK",
)
# Variables naming a directory of tools that holds credentials too: those alone (the rest is a
# toolchain the steps may use), as for the home's ~/.cargo.
CREDENTIAL_ENV_HOMES: Final = (
    ("CARGO_HOME", ".cargo/"),
    ("GRADLE_USER_HOME", ".gradle/"),
    ("XDG_CONFIG_HOME", ".config/"),
    ("XDG_DATA_HOME", ".local/share/"),
)


def environment_credentials(
    environ: Mapping[str, str], homes: Iterable[str] = ()
) -> tuple[list[Path], list[Path]]:
    """The credential directories and files ``environ`` names (:data:`CREDENTIAL_ENV_DIRS`,
    :data:`CREDENTIAL_ENV_FILES`, and the credential places of :data:`CREDENTIAL_DIRS` and
    :data:`CREDENTIAL_FILES` below :data:`CREDENTIAL_ENV_HOMES`). Absolute paths only (a relative one
    names no host file here); a directory that is one of ``homes`` or holds one is left out: hiding it
    would hide the home's toolchains, whose credentials are looked for by name. Pure."""
    bases = [os.path.normpath(home) for home in homes if home and os.path.isabs(home)]
    dirs: list[Path] = []
    files: list[Path] = []
    for name in CREDENTIAL_ENV_DIRS:
        value = environ.get(name, "")
        if not os.path.isabs(value):
            continue
        real = os.path.normpath(value)
        if any(base == real or base.startswith(real.rstrip("/") + "/") for base in bases):
            continue
        dirs.append(Path(real))
    for name in CREDENTIAL_ENV_FILES:
        for value in environ.get(name, "").split(os.pathsep):
            if os.path.isabs(value):
                files.append(Path(os.path.normpath(value)))
    for name, prefix in CREDENTIAL_ENV_HOMES:
        value = environ.get(name, "")
        if not os.path.isabs(value):
            continue
        base = Path(os.path.normpath(value))
        dirs += [base / entry[len(prefix) :] for entry in CREDENTIAL_DIRS if entry.startswith(prefix)]
        files += [base / entry[len(prefix) :] for entry in CREDENTIAL_FILES if entry.startswith(prefix)]
    return list(dict.fromkeys(dirs)), list(dict.fromkeys(files))


def user_credentials(passed: Collection[str] = ()) -> tuple[list[Path], list[Path]]:
    """The credential directories and files of the user running graven: below its homes
    (:func:`credential_paths`) and where its environment says (:func:`environment_credentials`), but
    for the variables ``passed`` to the steps (``[build] env``, as the operator allowed: the steps are
    meant to use what those name)."""
    homes = user_homes()
    dirs, files = credential_paths(homes)
    environ = {name: value for name, value in os.environ.items() if name not in passed}
    named_dirs, named_files = environment_credentials(environ, homes)
    return [*dirs, *named_dirs], [*files, *named_files]


def user_homes() -> list[str]:
    """The home directories of the user running graven: ``$HOME`` and the password database's."""
    homes = [os.environ.get("HOME", "")]
    with contextlib.suppress(ImportError, KeyError):
        import pwd

        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    return homes


def masked_files(candidates: Iterable[Path], hidden: Iterable[str]) -> tuple[str, ...]:
    """Host files to replace by /dev/null: ``candidates`` (resolved) that are regular files or sockets
    (an SSH agent's) the sandbox would otherwise show (not below an unmirrored or a hidden directory)."""
    import stat

    covered = tuple(hidden)
    chosen: set[str] = set()
    for candidate in candidates:
        real = os.path.realpath(candidate)
        top = real.strip("/").split("/", 1)[0]
        try:
            mode = os.stat(real).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISSOCK(mode)) or top in _NOT_MIRRORED:
            continue
        if any(real.startswith(h + "/") for h in covered):
            continue
        chosen.add(real)
    return tuple(sorted(chosen))


def resolver_files() -> tuple[str, ...]:
    """What the fetch phase needs to resolve names when /etc/resolv.conf links outside /etc (into /run)."""
    conf = "/etc/resolv.conf"
    if os.path.islink(conf):
        target = os.path.realpath(conf)
        if os.path.isfile(target) and not target.startswith("/etc/"):
            return (target,)
    return ()


def find_bwrap(path: str | None = None) -> str | None:
    """The bubblewrap executable on ``path`` (default: the process PATH), or None."""
    return shutil.which("bwrap", path=path)


_PROBED: dict[str, str | None] = {}


def probe_bubblewrap(bwrap: str | None, user: BuildUser | None = None) -> str:
    """Check once per process that ``bwrap`` can build a sandbox (run as ``user``, when given: a root
    build's steps' user); return its path or raise InputError."""
    if bwrap is None:
        raise InputError(f"[build] steps run in a bubblewrap sandbox, but bwrap is not installed; {FIX}")
    key = bwrap if user is None else f"{bwrap}\0{user.uid}:{user.gid}"
    if key not in _PROBED:
        _PROBED[key] = _probe(bwrap, user)
    problem = _PROBED[key]
    if problem is not None and user is not None:
        raise InputError(
            f"bubblewrap cannot create a sandbox as {user.name} ({user.uid}:{user.gid}), the user a root "
            f"build's steps run as ({problem}): allow unprivileged user namespaces "
            "(kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, "
            f"kernel.apparmor_restrict_unprivileged_userns=0), or set {BUILD_USER_ENV}=root to run the "
            "steps as root (no process limit applies to root, and steps read what root reads)"
        )
    if problem is not None:  # bwrap is installed: what blocks it is the kernel's settings
        raise InputError(
            f"bubblewrap cannot create a sandbox here ({problem}); user namespaces may be blocked for "
            "this user: allow them (as root: sysctl user.max_user_namespaces=N with N > 0, "
            "kernel.unprivileged_userns_clone=1 where that exists, "
            "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap), or set "
            'sandbox = "none" in [build] and allow it with GRAVEN_ALLOW_UNSANDBOXED=1'
        )
    return bwrap


_USERNS_DISABLE: dict[str, bool] = {}


def userns_disable_supported(bwrap: str, user: BuildUser | None = None) -> bool:
    """Whether ``bwrap`` (run as ``user``, when given) can keep the steps of a sandbox with a user
    namespace from making more (``--disable-userns``: bubblewrap 0.8 and later, and a kernel that lets
    it set user.max_user_namespaces in the sandbox's); tried once per process. False: the steps run as
    before, able to nest user namespaces."""
    key = bwrap if user is None else f"{bwrap}\0{user.uid}:{user.gid}"
    if key not in _USERNS_DISABLE:
        _USERNS_DISABLE[key] = _probe(bwrap, user, map_root=True, options=["--disable-userns"]) is None
    return _USERNS_DISABLE[key]


def _probe(
    bwrap: str, user: BuildUser | None = None, *, map_root: bool | None = None, options: Sequence[str] = ()
) -> str | None:
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/"]
    if map_root is None:  # as the steps run (SandboxLayout.map_root)
        map_root = os.geteuid() != 0 or user is not None
    if map_root:
        argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
    argv += [*options, "--", "/bin/sh", "-c", "exit 0"]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
            env={"PATH": os.defpath},
            cwd="/",
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap}: {exc}"
    if result.returncode == 0:
        return None
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"{bwrap} exited with {result.returncode}"


_SIZE_SUPPORT: dict[str, bool] = {}


def tmpfs_size_supported(bwrap: str) -> bool:
    """Whether ``bwrap`` knows ``--size`` (bubblewrap 0.7 and later); tried once per process, without
    creating any namespace (``--version`` answers once the options before it were parsed)."""
    if bwrap not in _SIZE_SUPPORT:
        try:
            result = subprocess.run(
                [bwrap, "--size", "4096", "--tmpfs", SANDBOX_TMP, "--version"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
                check=False,
                env={"PATH": os.defpath},
            )
            _SIZE_SUPPORT[bwrap] = result.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _SIZE_SUPPORT[bwrap] = False
    return _SIZE_SUPPORT[bwrap]


def tmp_size_limit() -> int:
    """The size of the sandbox's /tmp: :data:`TMP_SIZE_LIMIT`, or half of the RAM when that is less
    (a limit above the kernel's default would let a step fill more memory than without one)."""
    try:
        half = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (OSError, ValueError, AttributeError):
        return TMP_SIZE_LIMIT
    return min(TMP_SIZE_LIMIT, half) if half > 0 else TMP_SIZE_LIMIT


def _resource(name: str) -> int | None:
    """The number of the resource ``name`` (an ``RLIMIT_*`` name) here, or None where there is none."""
    if name == "RLIMIT_LOCKS":
        return _RLIMIT_LOCKS if sys.platform.startswith("linux") else None
    import resource

    value = getattr(resource, name, None)
    return value if isinstance(value, int) else None


def _shown(value: int) -> str:
    return "unlimited" if value == RLIM_INFINITY else str(value)


def _above(wanted: int, limit: int) -> bool:
    """Whether the limit ``wanted`` is more than ``limit`` (-1: unlimited)."""
    if limit == RLIM_INFINITY:
        return False
    return wanted == RLIM_INFINITY or wanted > limit


def clamp_limits(
    current: Mapping[str, tuple[int, int]], *, can_raise: bool, limits: Sequence[StepLimit] | None = None
) -> tuple[list[StepLimit], str | None]:
    """The limits the steps can get from a process whose limits are ``current`` (name: (soft, hard)):
    ``limits`` (default :data:`STEP_LIMITS`), each hard limit above the process's own lowered to it
    when it cannot raise hard limits (``can_raise``: CAP_SYS_RESOURCE), and its soft limit with it;
    and a one-line warning naming what was lowered (None when nothing was). Pure.

    Lowered rather than refused: a machine with little RAM (the kernel's process limit follows it) or
    a caller's ``ulimit`` must not stop every build. A step that records such a limit builds
    differently there, which the warning says."""
    wanted = list(STEP_LIMITS if limits is None else limits)
    if can_raise:
        return wanted, None
    given: list[StepLimit] = []
    lowered: list[str] = []
    for limit in wanted:
        hard = current.get(limit.name, (RLIM_INFINITY, RLIM_INFINITY))[1]
        if not _above(limit.hard, hard):
            given.append(limit)
            continue
        soft = hard if _above(limit.soft, hard) else limit.soft
        given.append(StepLimit(limit.name, limit.what, soft, hard))
        lowered.append(f"{limit.what} {_shown(hard)} (not {_shown(limit.hard)})")
    if not lowered:
        return given, None
    return given, (
        f"build steps get {', '.join(lowered)} here: this process's hard limit is lower, and only "
        "CAP_SYS_RESOURCE (root) raises it; a step that records its limits builds differently on this "
        "machine (raise them for graven: limits.conf, systemd's Limit*=, docker run --ulimit)"
    )


_CAP_SYS_RESOURCE: Final = 24
_INIT_USER_NS: Final = 0xEFFFFFFD  # PROC_USER_INIT_INO: the inode of the initial user namespace


def _in_initial_user_namespace() -> bool:
    """Whether this process is in the initial user namespace, where alone a capability raises a hard
    limit (the kernel asks ``capable()``: a user namespace's root, which has every capability there,
    still cannot). True where this cannot be told (no /proc)."""
    try:
        return os.stat("/proc/self/ns/user").st_ino == _INIT_USER_NS
    except OSError:
        pass
    try:
        with open("/proc/self/uid_map", encoding="ascii") as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def _can_raise_limits() -> bool:
    """Whether this process may raise hard limits: CAP_SYS_RESOURCE in its effective set, in the
    initial user namespace (root in a rootless container or ``unshare -r`` has it in its own only)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    capable = bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
                    return capable and _in_initial_user_namespace()
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0 and _in_initial_user_namespace()


def current_limits(limits: Sequence[StepLimit] | None = None) -> dict[str, tuple[int, int]]:
    """This process's own limits (soft, hard) of ``limits`` (default :data:`STEP_LIMITS`), by name."""
    import resource

    found: dict[str, tuple[int, int]] = {}
    for limit in STEP_LIMITS if limits is None else limits:
        number = _resource(limit.name)
        if number is None:
            continue
        try:
            found[limit.name] = resource.getrlimit(number)
        except (OSError, ValueError):
            continue
    return found


def step_limits_here() -> tuple[list[StepLimit], str | None]:
    """:func:`clamp_limits` for this process: the limits its steps get, and the warning, if any."""
    return clamp_limits(current_limits(), can_raise=_can_raise_limits())


def step_limits(limits: Sequence[StepLimit] | None = None) -> list[tuple[int, int, int]]:
    """``limits`` (default: :func:`step_limits_here`) as (resource, soft, hard), those this system
    knows."""
    found = []
    for limit in step_limits_here()[0] if limits is None else limits:
        number = _resource(limit.name)
        if number is not None:
            found.append((number, limit.soft, limit.hard))
    return found


def varied_limits(current: Mapping[int, tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Other limits than ``current`` (resource: (soft, hard)) for ``build --check``'s second build:
    every finite soft limit of 2 or more halved. Pure."""
    return [
        (number, soft // 2, hard)
        for number, (soft, hard) in sorted(current.items())
        if soft != RLIM_INFINITY and soft >= 2
    ]


def launcher_limits() -> list[tuple[int, int, int]]:
    """:func:`varied_limits` of this process's own limits, every resource this system knows."""
    import resource

    names = sorted({n for n in dir(resource) if n.startswith("RLIMIT_")} | {"RLIMIT_LOCKS"})
    current: dict[int, tuple[int, int]] = {}
    for name in names:
        number = _resource(name)
        if number is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            current[number] = resource.getrlimit(number)
    return varied_limits(current)


def varied_cpus(cpus: Collection[int]) -> frozenset[int] | None:
    """The CPUs of ``build --check``'s second build, of those the first may use (``cpus``): the lower
    half, at least one, so that a step that records its parallelism (``nproc``, ``make -j$(nproc)``,
    Go's GOMAXPROCS) sees another number; None with one CPU (nothing to vary). Pure."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return None
    return frozenset(ordered[: len(ordered) // 2])


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity, which ``nproc`` counts); none where the system
    does not say."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def _apply_cpus(pid: int, cpus: frozenset[int] | None) -> None:
    """Let the process ``pid`` (graven's child, waiting to exec the step) run on ``cpus`` only."""
    if cpus is None:
        return
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError as exc:
        raise InputError(f"cannot give the build steps CPUs {sorted(cpus)}: {exc}") from None


def _apply_limits(pid: int, limits: Sequence[tuple[int, int, int]]) -> None:
    """Set ``limits`` (resource, soft, hard) on the process ``pid`` (graven's child, waiting to exec
    the step); InputError when one cannot be set."""
    import resource

    for number, soft, hard in limits:
        try:
            resource.prlimit(pid, number, (soft, hard))
        except (OSError, ValueError) as exc:
            named = next((lim.what for lim in STEP_LIMITS if _resource(lim.name) == number), str(number))
            raise InputError(
                f"cannot give the build steps their limit of {named} ({_shown(soft)} soft, {_shown(hard)} "
                f"hard): {exc}; raise graven's hard limit (limits.conf, systemd's Limit*=, docker run "
                "--ulimit) or run graven as root"
            ) from None


# Before a step runs, the sandbox's own directories and /dev entries (made by bwrap when the step
# starts) get the commit's time, as the checkout's files have: a tmpfs cannot be given a time from
# outside, so the step's shell does it first, then becomes the step (``exec``: the same process and
# command line). Only what bwrap made: the device nodes are graven's own (given the time when made)
# or the host's, which a step must not touch. ``-c``: what this bwrap does not make is skipped.
_SANDBOX_MADE: Final = (
    SANDBOX_TMP,
    "/dev/shm",  # noqa: S108 - the sandbox's own tmpfs
    "/dev/pts/ptmx",
    "/dev/pts",
    "/dev/ptmx",
    "/dev/fd",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/core",
    "/dev",
)


def times_prelude(touch: str, epoch: int) -> str:
    """The shell text that gives what the sandbox made (:data:`_SANDBOX_MADE`) the time ``epoch``, then
    runs the step (``sh -c PRELUDE /bin/sh -c STEP``). Pure."""
    listed = " ".join(_SANDBOX_MADE)
    return (
        f"{touch} -h -c -d @{int(epoch)} {listed} || "
        '{ echo "graven: cannot set the times of the sandbox\'s /tmp and /dev" >&2; exit 125; }; '
        'exec "$0" "$@"'
    )


def find_touch() -> str:
    """The ``touch`` the sandbox runs: the system's (/usr/bin, /bin), else whichever the step's PATH finds."""
    return shutil.which("touch", path="/usr/bin:/bin") or "touch"


class StepRunner(Protocol):
    """Runs one shell command of a build; ``kind`` is what the provenance records, ``env`` the
    environment the command gets."""

    kind: str
    env: dict[str, str]

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run ``/bin/sh -c command``; output goes to ``log``; return the exit code.

        Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the process is killed).
        """
        ...


# bwrap's options go through a pipe (``--args``) so that its command line (which is /proc/1/cmdline
# in the sandbox: bwrap's own init) shows no host path. The pipe is moved to a fixed descriptor by
# this shell, which then execs bwrap: the descriptor number graven's pipe happens to get varies. The
# shell would export PWD (graven's working directory) to bwrap, and so to /proc/1/environ: not so.
# The shell first says it runs (a byte on its standard input, a socket) and waits for one line:
# graven sets the step's limits on it (prlimit) meanwhile, so that bwrap and everything it starts
# inherit them from their start.
_ARGS_FD: Final = 9
_ARGS_TRAMPOLINE: Final = (
    "echo >&0 && IFS= read -r go || exit 125; unset go PWD OLDPWD; "
    f'exec "$0" --args {_ARGS_FD} "$@" {_ARGS_FD}<&0 0</dev/null'
)
# The gate of a root build's steps, which bwrap runs as another user (BuildUser): graven (which may
# lack CAP_SYS_RESOURCE, as root in a container does) can set the limits of its own user's processes
# only, so the launcher stays root's until it has them, then execs "$@": drop_argv's command, which
# becomes that user (inheriting the limits) and execs bwrap with its options on the same descriptor.
_DROP_TRAMPOLINE: Final = (
    f'echo >&0 && IFS= read -r go || exit 125; unset go PWD OLDPWD; exec "$0" "$@" {_ARGS_FD}<&0 0</dev/null'
)
# Without setpriv (util-linux), the interpreter running graven does the same: no supplementary group,
# then the group and the user (real, effective and saved), then exec.
_DROP_SCRIPT: Final = (
    "import os, sys; os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[2])); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def drop_argv(user: BuildUser) -> list[str]:
    """The command that runs the command after it as ``user`` (no supplementary group): setpriv from
    the system's directories, else this Python."""
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if setpriv is not None:
        return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    return [sys.executable, "-I", "-S", "-c", _DROP_SCRIPT, str(user.gid), str(user.uid)]


# The same gate for a step on the host (the step's standard input is /dev/null, as before).
_HOST_GATE: Final = 'echo >&0 && IFS= read -r go || exit 125; unset go; exec "$0" "$@" 0</dev/null'
_GO: Final = b"\n"


def _run_logged(
    argv: list[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    log: BinaryIO,
    timeout: int,
    umask: int,
    stdin_data: bytes | None = None,
    adopt_orphans: bool = False,
    limits: Sequence[tuple[int, int, int]] = (),
    cpus: frozenset[int] | None = None,
    pass_fds: Sequence[int] = (),
    attach: Callable[[float], None] | None = None,
) -> int:
    """Run ``argv`` in a new session with output to ``log``.

    ``pass_fds`` are inherited by the command; ``attach`` is called with the deadline once the command
    has ``stdin_data`` (it gives bwrap's sandbox its network: :class:`graven.build.netns.Slirp`).

    With ``stdin_data``, the command's standard input is a socket: once the command says it runs (it
    writes a byte to its standard input: the gate of :data:`_ARGS_TRAMPOLINE`, written after its
    ``exec`` is over, which would otherwise still put back the stack limit it started with),
    ``limits`` (resource, soft, hard, in order) and the CPUs it may run on (``cpus``: all of graven's
    when None) are set on it, then ``stdin_data`` is sent.

    When the command ends, times out or graven is interrupted, its whole process group is killed
    (the leader is reaped only afterwards, so that its group id cannot have been reused). With
    ``adopt_orphans`` graven is a child subreaper meanwhile (Linux), and the orphans the command
    left behind in other sessions are killed too; and a watchdog kills the group if graven itself
    is killed (SIGKILL runs no ``finally``), as bubblewrap's ``--die-with-parent`` does in a sandbox."""
    import socket

    adopted = _children() if adopt_orphans and _set_subreaper(True) else None
    try:
        ours, theirs = socket.socketpair() if stdin_data is not None else (None, None)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL if theirs is None else theirs.fileno(),
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=umask,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        deadline = time.monotonic() + timeout  # the gate, the data and the step: one timeout in all
        watchdog: GroupWatchdog | None = None
        try:
            if adopt_orphans:
                watchdog = GroupWatchdog(proc.pid)
            if ours is not None and stdin_data is not None:
                with ours:
                    _start(proc, ours, stdin_data, limits, cpus, deadline=deadline, timeout=timeout)
            if attach is not None:
                attach(deadline)
            _wait_exited(proc, deadline, timeout)
        finally:  # a normal end, the timeout or an interrupt: nothing the step started outlives it
            _kill_group(proc, watchdog)
        return proc.returncode
    finally:
        if adopted is not None:
            _kill_orphans(adopted)
            _set_subreaper(False)


def _start(
    proc: subprocess.Popen[bytes],
    sock: socket.socket,
    data: bytes,
    limits: Sequence[tuple[int, int, int]],
    cpus: frozenset[int] | None = None,
    *,
    deadline: float,
    timeout: int,
) -> None:
    """Wait for the gate's byte on ``sock``, set ``limits`` and ``cpus`` on ``proc``, send ``data``
    (the caller closes ``sock``: the end of the data). A command that ended first gets nothing (its
    exit code tells). Waiting for the gate or for the command to take the data ends at ``deadline`` (a
    ``time.monotonic()``) with TimeoutExpired, as the step's own ``timeout`` does."""
    try:
        sock.settimeout(_left(deadline))
        ready = sock.recv(1)
        if not ready:
            return
        _apply_limits(proc.pid, limits)
        _apply_cpus(proc.pid, cpus)
        sock.settimeout(_left(deadline))
        sock.sendall(data)
    except TimeoutError:
        raise subprocess.TimeoutExpired(proc.args, timeout) from None
    except OSError:  # the command ended first (a broken pipe, a reset): its exit code tells
        return


def _left(deadline: float) -> float:
    """The seconds left until ``deadline``; none left is a timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _wait_exited(proc: subprocess.Popen[bytes], deadline: float, timeout: int) -> None:
    """Return once ``proc`` has exited, without reaping it; raise TimeoutExpired (naming ``timeout``)
    at ``deadline`` (a ``time.monotonic()``)."""
    left = max(0.0, deadline - time.monotonic())
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3: wait (and reap) the usual way
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(proc.args, timeout) from None
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(math.ceil(left * 1000)):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)


def _kill_group(proc: subprocess.Popen[bytes], watchdog: GroupWatchdog | None = None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if watchdog is not None:
        watchdog.stop()  # before the leader is reaped: the group id it holds is still the step's
    proc.wait()


_PR_SET_CHILD_SUBREAPER: Final = 36


def _set_subreaper(on: bool) -> bool:
    """Make graven a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), or stop; False where that
    is not possible (not Linux, no libc to call)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _children() -> set[int]:
    """The process ids of graven's children (zombies included)."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as handle:
                pids.update(int(pid) for pid in handle.read().split())
        return pids
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: read every process's parent
        pass
    except OSError:
        return pids
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat_line = handle.read()
        except OSError:
            continue
        fields = stat_line[stat_line.rfind(b")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 1 and int(fields[1]) == me:
            pids.add(int(name))
    return pids


_KILL_ROUNDS: Final = 64


def _kill_orphans(before: set[int]) -> None:
    """Kill and reap graven's children that were not there ``before`` a step: the step's orphans
    (adopted as a subreaper), with their process groups. Killing one orphans its children in turn,
    so this goes on until none is left."""
    own_group = os.getpgrp()
    for _ in range(_KILL_ROUNDS):
        strays = _children() - before
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(OSError):
                group = os.getpgid(pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)


class BubblewrapRunner:
    """Runs commands in the sandbox described by a layout; one bwrap process per command."""

    kind = SANDBOX_BUBBLEWRAP

    def __init__(
        self,
        bwrap: str,
        layout: SandboxLayout,
        env: Mapping[str, str],
        *,
        hostname: str = DEFAULT_HOSTNAME,
        umask: int = STEP_UMASK,
        launcher_env: Mapping[str, str] | None = None,
        vary_limits: bool = False,
        cpus: frozenset[int] | None = None,
        fetch_network: FetchNetwork | None = None,
        user: BuildUser | None = None,
    ) -> None:
        self.bwrap = bwrap
        # the host user bwrap runs as (graven run as root: see build_user); None: graven's own
        self.user = user
        # the network of a step run with ``network``: slirp4netns (the default), or None: the host's
        self.fetch_network = fetch_network
        # the PATH directories inside a hidden directory (a venv in the repository), or in /tmp or /run,
        # which the sandbox does not show (a venv made in /tmp, NixOS's /run/current-system/sw/bin),
        # stay reachable
        shown = shown_paths((*layout.hidden, *UNSHOWN_TOOL_PARENTS), env.get("PATH", "").split(os.pathsep))
        if user is not None:  # what the steps' user cannot reach on the host it cannot run either
            shown = tuple(pair for pair in shown if searchable_by(os.path.join(pair[0], "."), user))
        self.layout = replace(layout, shown=tuple(dict.fromkeys((*layout.shown, *shown))))
        self.env = dict(env)
        self.hostname = hostname
        self.umask = umask
        self.launcher_env = {"PATH": os.defpath, **(launcher_env or {})}
        self.vary_limits = vary_limits
        self.cpus = cpus  # the CPUs the steps may use (build --check's second build); None: graven's
        self.touch = find_touch() if layout.epoch is not None else None

    def tmp_size(self) -> int | None:
        """The size limit of the sandbox's /tmp, or None where this bwrap cannot set one."""
        return tmp_size_limit() if tmpfs_size_supported(self.bwrap) else None

    def disable_userns(self) -> bool:
        """Whether the steps, in a user namespace of their own (a root build's too: bwrap makes one that
        maps 0 to 0), are kept from making more (where this bwrap can: :func:`userns_disable_supported`)."""
        return userns_disable_supported(self.bwrap, self.user)

    def command(self, command: str) -> list[str]:
        """What bwrap runs for one step: ``/bin/sh -c COMMAND``, after :func:`times_prelude` when the
        layout has an epoch."""
        if self.touch is None or self.layout.epoch is None:
            return ["/bin/sh", "-c", command]
        return ["/bin/sh", "-c", times_prelude(self.touch, self.layout.epoch), "/bin/sh", "-c", command]

    def argv(self, command: str, *, network: bool) -> list[str]:
        """The bwrap command line for one step (:meth:`run` passes the options through a pipe)."""
        return bwrap_argv(
            self.bwrap,
            self.layout,
            self.env,
            self.command(command),
            network=network,
            hostname=self.hostname,
            tmp_size=self.tmp_size(),
            disable_userns=self.disable_userns(),
        )

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run one step in the sandbox, with :data:`STEP_LIMITS`; with ``network``, through
        slirp4netns when the runner has a :class:`FetchNetwork` (else the host's network)."""
        with contextlib.ExitStack() as stack:
            slirp = None
            if network and self.fetch_network is not None:
                from graven.build.netns import Slirp

                slirp = stack.enter_context(Slirp(self.fetch_network))
            options = bwrap_options(
                self.layout,
                self.env,
                network=network and slirp is None,
                hostname=self.hostname,
                tmp_size=self.tmp_size(),
                resolver=None if slirp is None else slirp.resolver(),
                disable_userns=self.disable_userns(),
            )
            if slirp is not None:
                options += slirp.options()
            argv = ["/bin/sh", "-c", _ARGS_TRAMPOLINE, self.bwrap, "--", *self.command(command)]
            if self.user is not None:  # the limits are set on the launcher while it is still root's
                launch = [*drop_argv(self.user), self.bwrap, "--args", str(_ARGS_FD)]
                argv = ["/bin/sh", "-c", _DROP_TRAMPOLINE, *launch, "--", *self.command(command)]
            data = _GO + b"".join(os.fsencode(option) + b"\0" for option in options)
            return _run_logged(
                argv,
                cwd=Path("/"),  # bwrap's --chdir sets the step's; graven's own is nothing to the step
                env=self.launcher_env,
                log=log,
                timeout=timeout,
                umask=self.umask,
                stdin_data=data,
                limits=_limits(vary=self.vary_limits),
                cpus=self.cpus,
                pass_fds=() if slirp is None else slirp.child_fds,
                attach=None if slirp is None else slirp.attach,
            )


def _limits(*, vary: bool) -> list[tuple[int, int, int]]:
    """The limits to set on a step's launcher, in order: with ``vary`` (``build --check``'s second
    build) other ones first, as if another caller ran graven, then :data:`STEP_LIMITS`."""
    return [*(launcher_limits() if vary else ()), *step_limits()]


class HostRunner:
    """Runs commands directly on the host (``sandbox = "none"``): clean environment and umask only;
    whatever a step leaves running is killed when it ends (see the module's documentation)."""

    kind = SANDBOX_NONE

    def __init__(
        self,
        cwd: Path,
        env: Mapping[str, str],
        *,
        umask: int = STEP_UMASK,
        vary_limits: bool = False,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.umask = umask
        self.vary_limits = vary_limits
        self.cpus = cpus

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run one step in ``cwd`` with :data:`STEP_LIMITS` (``network`` cannot be taken away without
        a sandbox)."""
        del network
        argv = ["/bin/sh", "-c", _HOST_GATE, "/bin/sh", "-c", command]
        return _run_logged(
            argv,
            cwd=self.cwd,
            env=self.env,
            log=log,
            timeout=timeout,
            umask=self.umask,
            stdin_data=_GO,
            adopt_orphans=True,
            limits=_limits(vary=self.vary_limits),
            cpus=self.cpus,
        )
