"""Running build steps in a bubblewrap sandbox (or, when the pipeline says ``sandbox = "none"``, directly).

Inside the sandbox every step sees the same machine, wherever and whenever it runs:

- ``/build/src``: the commit's tree, read-only; ``/build/work``: a writable scratch copy of it, the
  working directory; ``/build/home``: ``HOME``; ``/tmp``: a fresh tmpfs (``TMPDIR``);
- the host's top-level directories read-only, except ``/tmp``, ``/run`` (sockets of host services),
  ``/proc`` and ``/dev`` (fresh ones are mounted), the graven home, the repository's working tree and
  the user's credentials (``~/.ssh``, ``~/.aws``, ``~/.netrc``...: :data:`CREDENTIAL_DIRS`), which are
  hidden; the root itself is read-only, so nothing outside the scratch space can be written;
- ``/dev``: fresh, with graven's own device nodes when graven runs as root (bwrap's ``--dev`` binds the
  host's nodes writable, and root owns them: a step could ``chmod`` the host's ``/dev/null``);
- no network (a network namespace of its own: even 127.0.0.1 is unreachable), except for the fetch
  phase; no capabilities (so a root build cannot remount anything writable); a fixed host name;
- only the environment graven passes (see :func:`graven.build.steps.clean_environment`), umask 022.

The bwrap argument list is built by a pure function, :func:`bwrap_argv`, from a :class:`SandboxLayout`;
:class:`BubblewrapRunner` runs one command with it. :func:`probe_bubblewrap` checks once per process
that bubblewrap exists and can create its namespaces, and raises an error with a one-line fix otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from graven.errors import InputError

__all__ = [
    "BUILD_HOME",
    "BUILD_SRC",
    "BUILD_WORK",
    "DEFAULT_HOSTNAME",
    "SANDBOX_BUBBLEWRAP",
    "SANDBOX_NONE",
    "BubblewrapRunner",
    "HostEntry",
    "HostRunner",
    "SandboxLayout",
    "StepRunner",
    "bwrap_argv",
    "find_bwrap",
    "host_root_entries",
    "probe_bubblewrap",
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

# Top-level host directories that are never shown to a step: fresh /proc, /dev and /tmp are mounted
# instead, /run holds the sockets of host services (a socket is reachable without any network), and
# /build is the sandbox's own.
_NOT_MIRRORED: Final = frozenset({"proc", "dev", "tmp", "run", "build", "lost+found"})

FIX: Final = 'install bubblewrap (apt-get install bubblewrap) or set sandbox = "none" in [build]'


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One entry of the host's ``/``: a directory to mirror read-only, or a symlink to recreate."""

    name: str
    link_target: str | None = None


@dataclass(frozen=True)
class SandboxLayout:
    """Where the host directories of one build go inside the sandbox.

    ``root_entries`` is the host's ``/`` (see :func:`host_root_entries`); ``hidden`` are host
    directories covered by an empty read-only tmpfs; ``extra_ro`` are host files shown read-only at
    the same path (the resolver configuration of the fetch phase, when /etc/resolv.conf is a link);
    ``masked`` are host files replaced by ``/dev/null``.
    """

    src: Path
    work: Path
    home: Path
    root_entries: tuple[HostEntry, ...]
    hidden: tuple[str, ...] = ()
    extra_ro: tuple[str, ...] = field(default=())
    masked: tuple[str, ...] = ()  # host files shown as empty (/dev/null): a signing key file, say
    devices: str | None = None  # graven's own device nodes for /dev (see make_private_devices)


def bwrap_argv(
    bwrap: str,
    layout: SandboxLayout,
    env: Mapping[str, str],
    command: Sequence[str],
    *,
    network: bool = False,
    hostname: str = DEFAULT_HOSTNAME,
) -> list[str]:
    """The full bwrap command line that runs ``command`` in ``layout``. Pure: reads nothing."""
    argv = [
        bwrap,
        "--unshare-all",  # user (when needed), ipc, pid, net, uts, cgroup namespaces
        *(["--share-net"] if network else []),
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
    argv += ["--proc", "/proc", *_dev_argv(layout.devices), "--tmpfs", SANDBOX_TMP]
    for path in layout.extra_ro:
        argv += ["--ro-bind", path, path]
    for path in layout.hidden:
        argv += ["--tmpfs", path, "--remount-ro", path]
    for path in layout.masked:
        argv += ["--ro-bind", "/dev/null", path]
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
        "--",
        *command,
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


def _dev_argv(devices: str | None) -> list[str]:
    """/dev for a step. bwrap's ``--dev`` bind-mounts the host's own nodes, writable: a step running as
    root (who owns them) could ``chmod 600 /dev/null`` on the host. With ``devices`` (graven's private
    nodes, see :func:`make_private_devices`) /dev is a tmpfs holding those and the usual links instead."""
    if devices is None:
        return ["--dev", "/dev"]
    argv = ["--tmpfs", "/dev"]
    for name, _major, _minor in DEVICES:
        argv += ["--dev-bind", f"{devices}/{name}", f"/dev/{name}"]
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        argv += ["--symlink", target, f"/dev/{name}"]
    argv += ["--symlink", "/proc/self/fd/1", "/dev/stdout", "--symlink", "/proc/self/fd/2", "/dev/stderr"]
    argv += ["--tmpfs", "/dev/shm"]  # noqa: S108 - the sandbox's own, empty
    return argv


def make_private_devices(directory: Path) -> str | None:
    """Make graven's own device nodes (:data:`DEVICES`, mode 0666) in ``directory`` for the sandbox's
    /dev, so that nothing a step does to them reaches the host's nodes.

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
    below a directory the sandbox does not mirror anyway, and hold none of the PATH directories."""
    tools = [os.path.realpath(d) for d in tool_dirs if d]
    chosen: list[str] = []
    for candidate in candidates:
        real = os.path.realpath(candidate)
        top = real.strip("/").split("/", 1)[0]
        if real == "/" or not os.path.isdir(real) or top in _NOT_MIRRORED:
            continue
        if any(t == real or t.startswith(real + "/") for t in tools):
            continue
        chosen.append(real)
    return tuple(sorted(set(chosen)))


# Where users keep credentials in their home directory: the directories are hidden from steps (an
# empty read-only tmpfs) and the files read as empty, like the graven home itself. A build step runs
# code from the commit, which may come from anyone who can push a branch.
CREDENTIAL_DIRS: Final = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".docker",
    ".kube",
    ".password-store",
)
CREDENTIAL_FILES: Final = (".netrc", ".git-credentials", ".pypirc", ".npmrc", ".config/git/credentials")


def credential_paths(homes: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """The credential directories and files (see :data:`CREDENTIAL_DIRS`) below each of ``homes``."""
    bases = [Path(home) for home in dict.fromkeys(homes) if home and os.path.isabs(home)]
    dirs = [base / name for base in bases for name in CREDENTIAL_DIRS]
    files = [base / name for base in bases for name in CREDENTIAL_FILES]
    return dirs, files


def user_homes() -> list[str]:
    """The home directories of the user running graven: ``$HOME`` and the password database's."""
    homes = [os.environ.get("HOME", "")]
    with contextlib.suppress(ImportError, KeyError):
        import pwd

        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    return homes


def masked_files(candidates: Iterable[Path], hidden: Iterable[str]) -> tuple[str, ...]:
    """Host files to replace by /dev/null: ``candidates`` (resolved) that are regular files the
    sandbox would otherwise show (not below an unmirrored or a hidden directory)."""
    covered = tuple(hidden)
    chosen: set[str] = set()
    for candidate in candidates:
        real = os.path.realpath(candidate)
        top = real.strip("/").split("/", 1)[0]
        if not os.path.isfile(real) or top in _NOT_MIRRORED:
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


def probe_bubblewrap(bwrap: str | None) -> str:
    """Check once per process that ``bwrap`` can build a sandbox; return its path or raise InputError."""
    if bwrap is None:
        raise InputError(f"[build] steps run in a bubblewrap sandbox, but bwrap is not installed; {FIX}")
    if bwrap not in _PROBED:
        _PROBED[bwrap] = _probe(bwrap)
    problem = _PROBED[bwrap]
    if problem is not None:
        raise InputError(
            f"bubblewrap cannot create a sandbox here ({problem}); user namespaces may be blocked "
            f"(e.g. kernel.apparmor_restrict_unprivileged_userns=1): allow them, or {FIX}"
        )
    return bwrap


def _probe(bwrap: str) -> str | None:
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/"]
    argv += ["--", "/bin/sh", "-c", "exit 0"]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
            env={"PATH": os.defpath},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap}: {exc}"
    if result.returncode == 0:
        return None
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"{bwrap} exited with {result.returncode}"


class StepRunner(Protocol):
    """Runs one shell command of a build; ``kind`` is what the provenance records."""

    kind: str

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run ``/bin/sh -c command``; output goes to ``log``; return the exit code.

        Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the process is killed).
        """
        ...


def _run_logged(
    argv: list[str], *, cwd: Path | None, env: Mapping[str, str], log: BinaryIO, timeout: int, umask: int
) -> int:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        umask=umask,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=timeout)
    except BaseException:  # the timeout, or an interrupt: no step outlives graven
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
    ) -> None:
        self.bwrap = bwrap
        self.layout = layout
        self.env = dict(env)
        self.hostname = hostname
        self.umask = umask
        self.launcher_env = {"PATH": os.defpath, **(launcher_env or {})}

    def argv(self, command: str, *, network: bool) -> list[str]:
        """The bwrap command line for one step."""
        return bwrap_argv(
            self.bwrap,
            self.layout,
            self.env,
            ["/bin/sh", "-c", command],
            network=network,
            hostname=self.hostname,
        )

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run one step in the sandbox."""
        argv = self.argv(command, network=network)
        return _run_logged(argv, cwd=None, env=self.launcher_env, log=log, timeout=timeout, umask=self.umask)


class HostRunner:
    """Runs commands directly on the host (``sandbox = "none"``): clean environment and umask only."""

    kind = SANDBOX_NONE

    def __init__(self, cwd: Path, env: Mapping[str, str], *, umask: int = STEP_UMASK) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.umask = umask

    def run(self, command: str, *, log: BinaryIO, timeout: int, network: bool) -> int:
        """Run one step in ``cwd`` (``network`` cannot be taken away without a sandbox)."""
        del network
        argv = ["/bin/sh", "-c", command]
        return _run_logged(argv, cwd=self.cwd, env=self.env, log=log, timeout=timeout, umask=self.umask)
