"""One step build of one commit, in its own workspace: checkout, fetch, steps, declared inputs.

``graven build`` collects the artifact from :attr:`StepRun.work` while the workspace still exists;
``graven build --check`` runs a second one with :data:`CHECK_VARIATION`, and ``graven verify
--rebuild`` runs one with the recorded fetched inputs restored from the store.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from graven.build.compare import DIFFOSCOPE_OPTIONS, Confine, diffoscope_environment
from graven.build.fetch import (
    FETCHED_PREFIX,
    LOCKFILE_PREFIX,
    TOOL_SHA256_LINE,
    FetchedFile,
    check_fetched,
    check_unchanged_outside,
    collect_fetched,
    locked_hashes,
    resolve_tools,
)
from graven.build.netns import HOST, NAT, FetchNetwork, fetch_network_mode, find_slirp, missing_slirp_error
from graven.build.sandbox import (
    BUILD_HOME,
    BUILD_SRC,
    BUILD_USER_ENV,
    BUILD_WORK,
    DEFAULT_HOSTNAME,
    SANDBOX_BUBBLEWRAP,
    SANDBOX_NONE,
    SANDBOX_TMP,
    STEP_UMASK,
    UNSHOWN_TOOL_PARENTS,
    BubblewrapRunner,
    BuildUser,
    HostRunner,
    SandboxLayout,
    StepRunner,
    available_cpus,
    build_user,
    bwrap_argv,
    drop_argv,
    find_bwrap,
    hidden_paths,
    host_root_entries,
    make_private_devices,
    masked_files,
    probe_bubblewrap,
    resolver_files,
    searchable_by,
    shown_paths,
    step_limits_here,
    user_credentials,
    user_homes,
    userns_disable_supported,
    varied_cpus,
)
from graven.build.steps import BuildLog, clean_environment, run_steps
from graven.build.workspace import (
    DIR_MODE,
    Workspace,
    checkout,
    copy_tree,
    ensure_inside,
    give_to,
    reclaim,
    remove_tree,
    settle_tree,
    tempdir_problem,
)
from graven.core.paths import check_path
from graven.db import sqlite_path
from graven.errors import (
    BackendError,
    BuildError,
    ConfigError,
    GravenError,
    InputError,
    IntegrityError,
    PolicyError,
    UnsafeInputError,
)
from graven.fstree import make_dirs
from graven.model.pipeline import Pipeline
from graven.service.context import Context
from graven.signing.provenance import ResourceRef
from graven.sources.git import GitRepo
from graven.store.local import PackBatch

__all__ = ["CANONICAL", "CHECK_VARIATION", "StepRun", "Variation", "run_step_build"]

Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class Variation:
    """How one step build differs from the canonical one (``graven build --check`` varies it all)."""

    prefix: str = "graven-build-"
    nested: int = 0  # extra directory levels: another, deeper host build path
    reverse_order: bool = False  # create the checkout and scratch copy in reverse order
    # the build directory on a file system of another kind than TMPDIR's (tmpfs, or not): directories
    # list their entries in another order (by creation on tmpfs, by a hash of the name on ext4), which
    # creation order alone cannot vary on ext4 (see other_file_system_dir)
    other_file_system: bool = False
    hostname: str = DEFAULT_HOSTNAME
    umask: int = STEP_UMASK
    # graven's own environment when it launches the steps (TZ, locale): the clean step environment
    # must not let it through.
    launcher_env: Mapping[str, str] = field(default_factory=dict)
    # the limits of the steps' launcher before graven sets the steps' own (sandbox.STEP_LIMITS): as if
    # another caller ran graven (every finite soft limit halved), which the steps must not see
    vary_limits: bool = False
    # the steps run on half the CPUs graven may use (sandbox.varied_cpus): a step that records its
    # parallelism (nproc, make -j$(nproc)) then records another number
    fewer_cpus: bool = False
    # start in a later second of the clock than the build before ended: a step that records a time
    # graven cannot fix (the clock, a ctime, /proc's times) then records another one
    next_second: bool = False
    described: tuple[str, ...] = ()


CANONICAL = Variation()
CHECK_VARIATION = Variation(
    prefix="graven-check-",
    nested=2,
    reverse_order=True,
    other_file_system=True,
    hostname="graven-check",
    umask=0o002,
    launcher_env={"TZ": "Pacific/Kiritimati", "LC_ALL": "C", "LANG": "C"},
    vary_limits=True,
    fewer_cpus=True,
    next_second=True,
    described=(
        "the build path",
        "file creation order",
        "umask (002)",
        "hostname",  # not on the host (sandbox = "none"): run_step_build leaves it out there
        "TZ and locale of the launching process",
        "the limits of the launching process (soft limits halved)",
        "the time (a later second)",
    ),
)


# Where ``build --check`` looks for a directory on another kind of file system than TMPDIR's: a tmpfs
# for a TMPDIR on disk, a disk for a TMPDIR on tmpfs.
_TMPFS_DIRS = ("/dev/shm",)  # noqa: S108 - only a sticky, root-owned tmpfs passes _check_tempdir
_DISK_DIRS = ("/var/tmp",)  # noqa: S108 - idem, on disk
_MIN_FREE = 1 << 30  # a second build directory there needs room: the whole checkout, twice


def other_file_system_dir() -> Path | None:
    """A directory for a second build on a file system of another kind than TMPDIR's (tmpfs, or a
    disk), where directories list their entries in another order; None when there is none with 1 GiB
    free and mounted with exec (the check then varies creation order only, which on ext4 does not
    change that order)."""
    from graven.mounts import file_system_type, mounted_noexec

    on_tmpfs = file_system_type(Path(tempfile.gettempdir())) == "tmpfs"
    for path in _check_dirs(on_tmpfs=on_tmpfs):
        try:
            free = os.statvfs(path)
        except OSError:
            continue
        kind = file_system_type(path)
        if kind is None or (kind == "tmpfs") == on_tmpfs or not os.access(path, os.W_OK | os.X_OK):
            continue
        if mounted_noexec(path):  # a step that runs a file of the checkout would fail there
            continue
        if tempdir_problem(path) is not None:  # another user could swap the build there: not used
            continue
        room = free.f_bavail * free.f_frsize
        if kind == "tmpfs":  # its pages are memory: a container's limit counts them, statvfs does not
            room = min(room, _memory_headroom())
        if room >= _MIN_FREE:
            return path
    return None


def _check_dirs(*, on_tmpfs: bool | None = None) -> list[Path]:
    """Where :func:`other_file_system_dir` looks for a place for ``build --check``'s second workspace:
    on a file system of the other kind than TMPDIR's (``on_tmpfs``: whether TMPDIR is a tmpfs; by
    default, looked up)."""
    if on_tmpfs is None:
        from graven.mounts import file_system_type

        on_tmpfs = file_system_type(Path(tempfile.gettempdir())) == "tmpfs"
    return [Path(candidate) for candidate in (_DISK_DIRS if on_tmpfs else _TMPFS_DIRS)]


def _reclaim_elsewhere() -> None:
    """Remove the workspaces killed gravens left where ``build --check`` makes its second one (see
    :func:`other_file_system_dir`): :meth:`Workspace.create` reclaims only the directory it makes one
    in, and a killed check's copy of the checkout on /dev/shm holds memory until it is removed. Only
    where no other user could change the directory, as there alone a workspace is ever made."""
    for candidate in dict.fromkeys((*_TMPFS_DIRS, *_DISK_DIRS)):
        path = Path(candidate)
        if path.is_dir() and tempdir_problem(path) is None:
            reclaim(path)


def _memory_headroom(
    cgroups: Path = Path("/proc/self/cgroup"), mounted: Path = Path("/sys/fs/cgroup")
) -> int:
    """How much more memory this process's memory cgroup and its parents allow, the least of them
    (cgroup v2 ``memory.max`` / ``memory.current``, or v1 ``memory.limit_in_bytes`` /
    ``memory.usage_in_bytes``); unbounded when none sets a limit or none can be read."""
    headroom = 1 << 62
    try:
        with open(cgroups, encoding="ascii", errors="replace") as handle:
            rows = [row.strip().split(":", 2) for row in handle]
    except OSError:
        return headroom
    places = []
    for row in rows:
        if len(row) != 3:
            continue
        if row[0] == "0" and row[1] == "":  # v2
            places.append((mounted, row[2], "memory.max", "memory.current"))
        elif "memory" in row[1].split(","):  # v1
            places.append((mounted / "memory", row[2], "memory.limit_in_bytes", "memory.usage_in_bytes"))
    for root, group, limit_file, used_file in places:
        directory = root / group.lstrip("/")
        while True:
            try:
                limit = (directory / limit_file).read_text().strip()
                used = int((directory / used_file).read_text().strip() or 0)
            except (OSError, ValueError):
                limit, used = "", 0
            if limit.isdigit():
                headroom = min(headroom, max(int(limit) - used, 0))
            if directory == root or root not in directory.parents:
                break
            directory = directory.parent
    return headroom


@dataclass
class StepRun:
    """A finished step build whose workspace still exists (inside :func:`run_step_build`).

    ``snapshot`` holds the fetched files as they were checked against the lockfiles (at their paths
    below the scratch directory), before any build step ran: what is stored and restored.
    """

    workspace: Workspace
    sandbox: str
    lockfiles: list[ResourceRef]
    fetched: list[FetchedFile]
    tools: list[ResourceRef]
    snapshot: Path
    restored: bool = False
    described: tuple[str, ...] = ()  # what this run varied (Variation.described, and where it ran)
    # the network the fetch steps had (netns.NAT: their own; netns.HOST: the host's, the operator's
    # GRAVEN_FETCH_NETWORK=host or sandbox = "none"); None when no fetch ran (none, or restored)
    fetch_network: str | None = None

    @property
    def work(self) -> Path:
        """The scratch directory the artifact is collected from."""
        return self.workspace.work

    @property
    def log(self) -> bytes:
        """The build log (fetch and build steps; capped, see :class:`graven.build.steps.BuildLog`)."""
        return self.workspace.log.read_bytes() if self.workspace.log.exists() else b""

    @property
    def inputs(self) -> list[ResourceRef]:
        """The declared inputs for the provenance: lockfiles, fetched files, tools."""
        fetched = [ResourceRef(f"{FETCHED_PREFIX}{f.path}", f"sha256:{f.sha256}") for f in self.fetched]
        return [*self.lockfiles, *fetched, *self.tools]

    def store_fetched(self, batch: PackBatch) -> None:
        """Add the fetched files, as checked, to the store (so that ``verify --rebuild`` works offline)."""
        for item in self.fetched:
            with open(self.snapshot / item.path, "rb") as handle:
                digest = batch.add_stream(handle, item.size)
            if digest.hex != item.sha256:
                raise IntegrityError(
                    f"fetched file {item.path} changed after it was checked: sha256 {digest.hex}, "
                    f"checked {item.sha256}"
                )

    def openers(self) -> dict[str, Opener]:
        """The fetched files, as checked, to restore them in another build of the same commit."""
        return {f.path: _file_opener(self.snapshot / f.path) for f in self.fetched}


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


def _read_lockfiles(repo: GitRepo, commit: str, pipeline: Pipeline) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    fetch = pipeline.build.fetch
    for path in fetch.lockfiles if fetch is not None else ():
        data = repo.read_file(commit, path.strip("/"))
        if data is None:
            raise ConfigError(
                f"[build.fetch] lockfiles: {path} is not a file in commit {commit[:12]}; commit it first"
            )
        found[path.strip("/")] = data
    return found


def _warn_lowered_limits(ctx: Context, variation: Variation) -> None:
    """Say when the steps cannot get graven's fixed limits here (a hard limit below them): once, in
    the first build (``build --check``'s second, with varied limits, would say it again)."""
    if variation.vary_limits:
        return
    warning = step_limits_here()[1]
    if warning is not None:
        ctx.reporter.warn(warning)


def _runner(
    ctx: Context,
    repo: GitRepo,
    pipeline: Pipeline,
    ws: Workspace,
    *,
    epoch: int,
    variation: Variation,
    fetching: bool = False,
    cpus: frozenset[int] | None = None,
) -> StepRunner:
    """The runner of the steps; ``fetching``: the fetch steps run (not restored), with the network
    that :data:`FETCH_NETWORK_ENV` chooses (graven.build.netns)."""
    host_path = os.environ.get("PATH")
    passed = passed_environment(pipeline.build.env)
    if pipeline.build.sandbox != SANDBOX_BUBBLEWRAP:
        check_unsandboxed_allowed()
        _warn_lowered_limits(ctx, variation)
        env = clean_environment(
            home=ws.home, tmp=ws.tmp, source_date_epoch=epoch, host_path=host_path, passed=passed
        )
        return HostRunner(ws.work, env, umask=variation.umask, vary_limits=variation.vary_limits, cpus=cpus)
    user = build_user()  # graven run as root with GRAVEN_BUILD_USER: the unprivileged user of the steps
    bwrap = probe_bubblewrap(find_bwrap(), user)
    if user is not None:
        _open_workspace(ws, user)
    network = None
    if fetching and fetch_network_mode(os.environ) == NAT:  # before any work, as bwrap's probe
        slirp = find_slirp()
        if slirp is None:
            raise missing_slirp_error()
        network = FetchNetwork.prepare(slirp, ws.root, join_userns=os.geteuid() != 0)
    _warn_lowered_limits(ctx, variation)
    env = clean_environment(
        home=BUILD_HOME, tmp=SANDBOX_TMP, source_date_epoch=epoch, host_path=host_path, passed=passed
    )
    # The graven home (keys, store) and the default one, the working tree and the user's credential dirs are
    # hidden; a signing key file named by GRAVEN_SIGNING_KEY elsewhere and credential files cannot be
    # read (/dev/null over them).
    # So are the repository's git directories (a linked worktree's common one is elsewhere, with the
    # remotes' credentials), the temp directories holding every workspace (this one's and other builds',
    # in a TMPDIR the sandbox mirrors, and where `build --check` makes its second one from this TMPDIR,
    # /var/tmp when TMPDIR is a tmpfs: in both builds of a check, which then see the same; this one is
    # bound at /build), and an SQLite database outside the home.
    cred_dirs, cred_files = user_credentials(passed)
    workspaces = [Path(tempfile.gettempdir()), *_check_dirs()]
    hidden = hidden_paths(
        [ctx.home.root, *_default_homes(), repo.root, *repo.git_dirs(), *workspaces, *cred_dirs],
        (host_path or "").split(os.pathsep),
    )
    masked = masked_files([*_secret_files(ctx), *cred_files], hidden)
    # the host's resolver configuration, for a fetch with the host's network (the fetch's own network
    # has its own: graven.build.netns)
    extra_ro = resolver_files() if pipeline.build.fetch is not None and network is None else ()
    if user is not None:  # what the steps' user cannot reach needs no hiding (and bwrap, as it, cannot)
        hidden = tuple(path for path in hidden if searchable_by(path, user))
        masked = tuple(path for path in masked if searchable_by(path, user))
        extra_ro = tuple(path for path in extra_ro if searchable_by(path, user))
    layout = SandboxLayout(
        src=ws.src,
        work=ws.work,
        home=ws.home,
        root_entries=host_root_entries(),
        hidden=hidden,
        extra_ro=extra_ro,
        masked=masked,
        devices=make_private_devices(ws.root / "dev", epoch, user),
        map_root=os.geteuid() != 0 or user is not None,
        epoch=epoch,
    )
    return BubblewrapRunner(
        bwrap,
        layout,
        env,
        hostname=variation.hostname,
        umask=variation.umask,
        launcher_env=variation.launcher_env,
        vary_limits=variation.vary_limits,
        cpus=cpus,
        fetch_network=network,
        user=user,
    )


def _open_workspace(ws: Workspace, user: BuildUser) -> None:
    """Let ``user`` (a root build's steps' user, whom bwrap runs as) reach the workspace; refuse, naming
    the fix, when a directory above it (TMPDIR's) does not let it through."""
    ws.open_to(user.gid)
    if not searchable_by(str(ws.src), user):
        raise InputError(
            f"the build directory {ws.root} cannot be reached by {user.name} ({user.uid}:{user.gid}), the "
            f"user a root build's steps run as: point TMPDIR at a directory it can search (/tmp), or set "
            f"{BUILD_USER_ENV}=root to run the steps as root"
        )


def _steps_user(runner: StepRunner) -> BuildUser | None:
    """The user the steps run as when that is not graven's own (a root build: :func:`build_user`)."""
    return runner.user if isinstance(runner, BubblewrapRunner) else None


def _hand_over(runner: StepRunner, *paths: Path) -> None:
    """Give what graven made for the steps (``paths``) to the user they run as, when that is not
    graven's own."""
    user = _steps_user(runner)
    if user is not None:
        give_to(paths, user.uid, user.gid)


def diffoscope_confinement(
    ctx: Context, repo: GitRepo, pipeline: Pipeline, *, devices: Path | None = None
) -> Confine | None:
    """How diffoscope runs on two builds of ``pipeline``'s steps: in a sandbox as they ran (bubblewrap:
    no network, no capability, the host read-only with the same directories hidden and credential
    files masked, the first tree read-only at /build/src, the second at /build/work, HOME and /tmp its
    own), so that a commit that makes its build differ on purpose, and feeds diffoscope's parsers
    (archivers, binutils, decompilers) what it likes, reaches nothing its steps could not; None (on
    the host, with an environment of its own: :func:`graven.build.compare.diffoscope_environment`)
    for steps that ran on the host (``sandbox = "none"``) or where bubblewrap is gone meanwhile.

    In a build run as root, as the steps: as the steps' user (``GRAVEN_BUILD_USER``: the trees and its
    scratch directory must be that user's to reach, see :func:`diffoscope_user`), and with graven's own
    device nodes, made in ``devices`` (a directory no step or diffoscope run can write: the
    workspace's), not the host's, which bwrap's ``--dev`` binds writable (root owns them)."""
    if pipeline.build.sandbox != SANDBOX_BUBBLEWRAP:
        return None
    bwrap = find_bwrap()
    if bwrap is None:
        return None
    user = build_user()
    host_path = os.environ.get("PATH")
    cred_dirs, cred_files = user_credentials()
    hidden = hidden_paths(
        [
            ctx.home.root,
            *_default_homes(),
            repo.root,
            *repo.git_dirs(),
            Path(tempfile.gettempdir()),
            *_check_dirs(),
            *cred_dirs,
        ],
        (host_path or "").split(os.pathsep),
    )
    masked = masked_files([*_secret_files(ctx), *cred_files], hidden)
    if user is not None:  # what that user cannot reach needs no hiding (and bwrap, as it, cannot)
        hidden = tuple(path for path in hidden if searchable_by(path, user))
        masked = tuple(path for path in masked if searchable_by(path, user))
    root_entries = host_root_entries()
    env = {**diffoscope_environment(Path(BUILD_HOME)), "TMPDIR": SANDBOX_TMP}
    nodes: list[str | None] = []  # made once, at the first run

    def confine(tool: str, a_root: Path, b_root: Path, path: str, scratch: Path) -> list[str]:
        if not nodes:
            made = None
            if devices is not None and not devices.exists():
                made = make_private_devices(devices, None, user)
            nodes.append(made)
        if user is not None:  # HOME: made by graven, 0700
            give_to([scratch], user.uid, user.gid)
        # the PATH directories (and diffoscope's own) below a hidden one stay reachable, as for steps
        tools = [*env["PATH"].split(os.pathsep), os.path.dirname(os.path.abspath(tool))]
        shown = shown_paths((*hidden, *UNSHOWN_TOOL_PARENTS), tools)
        if user is not None:
            shown = tuple(pair for pair in shown if searchable_by(os.path.join(pair[0], "."), user))
        layout = SandboxLayout(
            src=a_root,
            work=b_root,
            home=scratch,
            root_entries=root_entries,
            hidden=hidden,
            shown=shown,
            masked=masked,
            devices=nodes[0],
            map_root=os.geteuid() != 0 or user is not None,
        )
        command = [tool, *DIFFOSCOPE_OPTIONS, f"{BUILD_SRC}/{path}", f"{BUILD_WORK}/{path}"]
        disable_userns = userns_disable_supported(bwrap, user)
        argv = bwrap_argv(bwrap, layout, env, command, disable_userns=disable_userns)
        return argv if user is None else [*drop_argv(user), *argv]

    return confine


def diffoscope_user(pipeline: Pipeline) -> BuildUser | None:
    """The host user diffoscope runs as on ``pipeline``'s builds when that is not graven's own: a root
    build's steps' user (``GRAVEN_BUILD_USER``), whom what it reads must be given to."""
    if pipeline.build.sandbox != SANDBOX_BUBBLEWRAP:
        return None
    return build_user()


ALLOW_UNSANDBOXED = "GRAVEN_ALLOW_UNSANDBOXED"
ALLOWED_ENV = "GRAVEN_PASS_ENV"


def passed_environment(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The host variables ``[build] env`` names that are set here, once the operator allowed each by
    name in GRAVEN_PASS_ENV (names separated by commas or spaces): graven.toml comes from the commit,
    which must not choose what of this host's environment (a CI token, a cloud credential) its steps
    see, the fetch steps with the network among them. A variable that is not set is not passed, and
    needs no allowing."""
    env = os.environ if environ is None else environ
    allowed = set(env.get(ALLOWED_ENV, "").replace(",", " ").split())
    wanted = [name for name in names if name in env]
    refused = [name for name in wanted if name not in allowed]
    if refused:
        listed = ",".join(refused)
        raise PolicyError(
            f"graven.toml passes the host variable{'s' if len(refused) > 1 else ''} {', '.join(refused)} to "
            "its build steps; the commit must not choose what of this host's environment they see: if "
            f"you trust it, allow {'them' if len(refused) > 1 else 'it'} with {ALLOWED_ENV}={listed}"
        )
    return {name: env[name] for name in wanted}


def check_unsandboxed_allowed() -> None:
    """Refuse ``sandbox = "none"`` unless the operator allows it (``GRAVEN_ALLOW_UNSANDBOXED=1``): the
    commit being built must not be the one to decide that its steps run on this host as this user,
    with its files, its network and graven's own processes in reach."""
    if os.environ.get(ALLOW_UNSANDBOXED) != "1":
        raise PolicyError(
            'graven.toml asks for sandbox = "none": its steps would run on this host as you, with your '
            f"files and network; if you trust this commit, allow it with {ALLOW_UNSANDBOXED}=1"
        )


def _default_homes() -> list[Path]:
    """The graven homes this user has where GRAVEN_HOME is not set (``$XDG_DATA_HOME/graven``,
    ``~/.local/share/graven`` below ``$HOME`` and the password database's home): their signing keys
    are this user's as much as the home in use, which may be another one (a CI home, a staging one)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    homes = [Path(xdg) / "graven"] if os.path.isabs(xdg) else []  # as Home.from_env finds it
    homes += [Path(home) / ".local" / "share" / "graven" for home in user_homes() if os.path.isabs(home)]
    return homes


def _secret_files(ctx: Context) -> list[Path]:
    """Files outside the home a step must not read: the signing key GRAVEN_SIGNING_KEY names (a path,
    relative or with ``~``, as :meth:`graven.signing.keys.KeyStore.resolve` reads it), the password and
    service files of libpq (PGPASSFILE, PGSERVICEFILE) and an SQLite database file named by
    GRAVEN_DB_URL, with its journal files."""
    found: list[Path] = []
    key = os.environ.get("GRAVEN_SIGNING_KEY", "").strip()
    if key:
        candidate = Path(key).expanduser()
        if candidate.is_file():
            found.append(candidate.absolute())
    for variable in ("PGPASSFILE", "PGSERVICEFILE"):  # libpq reads a password from either
        named = os.environ.get(variable, "").strip()
        if named:
            found.append(Path(named).expanduser().absolute())
    url = ctx.home.db_url
    if url.startswith("sqlite"):
        try:
            database = Path(sqlite_path(url)).absolute()
        except GravenError:
            database = None
        if database is not None:
            found += [database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")]
    return found


# what the tool prints on stdout, or else on stderr (java -version, older tools), as its version
# the sha256 of the file the steps would run (symlinks resolved), then what the tool prints on stdout,
# or else on stderr (java -version, older tools), as its version
_VERSION_SCRIPT = (
    't={tool}; r=$(readlink -f -- "$t") && s=$(sha256sum < "$r") || exit 126; '
    f'printf "{TOOL_SHA256_LINE} %s\\n" "${{s%% *}}"; '
    'err=$(mktemp) && out=$("$t" --version 2>"$err" </dev/null); code=$?; '
    'if [ -n "$out" ]; then printf "%s\\n" "$out"; else cat "$err"; fi; rm -f "$err"; exit $code'
)


def _tool_probe(runner: StepRunner, ws: Workspace) -> Callable[[str], tuple[int, bytes]]:
    """``TOOL --version`` as a step runs (in the sandbox, offline, in the scratch copy of the commit):
    the commit names the tool, so it may be one of its own files, and must not run on the host with
    graven's environment in reach. The output goes to a file no step sees."""

    def probe(path: str) -> tuple[int, bytes]:
        out = ws.root / "tool-version.out"
        with open(out, "w+b") as log:
            code = runner.run(
                _VERSION_SCRIPT.replace("{tool}", shlex.quote(path)), log=log, timeout=60, network=False
            )
            log.seek(0)
            data = log.read(1 << 16)
        out.unlink()
        return code, data

    return probe


def _empty_again(path: Path, aside: Path, epoch: int) -> None:
    """Replace the directory ``path`` by a new, empty one (mode 0755, time ``epoch``); the old one goes
    to ``aside`` first, so that whatever a step left in it (even directories it cannot list) is out of
    the way."""
    os.rename(path, aside)
    remove_tree(aside)  # what stays (named by no warning here): ws.remove()
    path.mkdir(mode=DIR_MODE)
    settle_tree(path, epoch)


def _fresh_devices(directory: Path, epoch: int, user: BuildUser | None = None) -> None:
    """Make the sandbox's device nodes (:func:`make_private_devices`) again, if graven made them."""
    if not directory.is_dir():
        return
    shutil.rmtree(directory)
    if make_private_devices(directory, epoch, user) is None:
        raise BackendError(f"cannot make the sandbox's device nodes in {directory} again")


def _snapshot_openers(snapshot: Path, fetched: list[FetchedFile]) -> dict[str, Opener]:
    """Openers of the checked copies of what the fetch wrote (:func:`collect_fetched`'s snapshot)."""

    def opener(path: Path) -> Opener:
        return lambda: path.open("rb")

    return {f.path: opener(snapshot / f.path) for f in fetched}


def _restore(work: Path, files: Mapping[str, Opener], outputs: list[str]) -> None:
    """Write previously fetched files (paths from a provenance: checked) below the fetch outputs."""
    prefixes = [o.strip("/") for o in outputs]
    for rel, opener in sorted(files.items()):
        check_path(rel)
        if not any(rel == p or rel.startswith(p + "/") for p in prefixes):
            raise UnsafeInputError(f"recorded input {rel} is not below the [build.fetch] outputs")
        ensure_inside(work, [rel], "recorded input")  # before creating any directory for it
        target = work / rel
        make_dirs(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with opener() as source, os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
        os.chmod(target, 0o644)


@contextmanager
def _named_variation(described: tuple[str, ...]) -> Iterator[None]:
    """A step that fails in ``build --check``'s varied second build (``described``: what it varied;
    empty in any other build), where the first build passed: say so and name the variations, else
    the failure reads as a broken pipeline that a plain ``graven build`` then builds."""
    try:
        yield
    except BuildError as exc:
        if not described:
            raise
        raise BuildError(
            f"the second build of --check failed where the first passed (it varied "
            f"{', '.join(described)}): {exc}"
        ) from exc


@contextmanager
def run_step_build(
    ctx: Context,
    *,
    repo: GitRepo,
    commit: str,
    epoch: int,
    pipeline: Pipeline,
    variation: Variation = CANONICAL,
    restore: Mapping[str, Opener] | None = None,
    from_worktree: bool = False,
) -> Iterator[StepRun]:
    """Run the pipeline's fetch and build steps for ``commit``; yield the result, then clean up.

    With ``restore`` (path -> opener of a previously fetched file), the fetch steps do not run: the
    files are written where the fetch put them, and checked against the lockfiles all the same.

    After the fetch steps, nothing they wrote outside the fetch outputs reaches the build steps: a
    change to the scratch directory outside them is refused (:func:`check_unchanged_outside`), and
    ``HOME`` (and the host ``TMPDIR`` without a sandbox) is emptied again, so the build steps see what
    they see when the fetched files are restored instead. The fetched files are copied aside as they
    are checked (:attr:`StepRun.snapshot`): the build steps may change or delete them in place.

    ``from_worktree``: the checkout takes each file that is exactly its blob from the repository's
    working tree (:func:`graven.build.workspace.checkout`).
    """
    build = pipeline.build
    if variation.next_second:
        time.sleep(1 - math.modf(time.time())[0])
    lockfiles = _read_lockfiles(repo, commit, pipeline)
    locked = locked_hashes(lockfiles)  # refuses unhashed requirements before anything runs
    base = other_file_system_dir() if variation.other_file_system else None
    described = variation.described
    if base is not None:
        described = (
            *described,
            f"the build directory's file system ({base}: directories list in another order)",
        )
    cpus = None
    if variation.fewer_cpus:
        here = available_cpus()
        cpus = varied_cpus(here)
        if cpus is not None:
            described = (*described, f"the CPUs the steps may use ({len(cpus)} of {len(here)})")
    _reclaim_elsewhere()
    ws = Workspace.create(prefix=variation.prefix, nested=variation.nested, base=base)
    try:
        # Refuses before any work when there is no usable sandbox.
        runner = _runner(
            ctx,
            repo,
            pipeline,
            ws,
            epoch=epoch,
            variation=variation,
            fetching=build.fetch is not None and restore is None,
            cpus=cpus,
        )
        if runner.kind == SANDBOX_NONE and variation.hostname != DEFAULT_HOSTNAME:
            # the steps see the host's own hostname, in every build: no UTS namespace to set another
            described = tuple(item for item in described if item != "hostname")
            ctx.reporter.warn(
                'sandbox = "none": the hostname is not varied (the steps see this host\'s, in both '
                "builds), so a step that records it is not caught"
            )

        def progress(done: int, total: int) -> None:
            ctx.reporter.progress("checking out", done, total)

        checkout(
            repo,
            commit,
            ws.src,
            epoch=epoch,
            reverse=variation.reverse_order,
            progress=progress,
            from_worktree=from_worktree,
        )
        copy_tree(ws.src, ws.work, epoch=epoch, reverse=variation.reverse_order)
        _hand_over(runner, ws.src, ws.work, ws.home)
        tools = [
            ResourceRef(t.ref_name, f"sha256:{t.sha256}")
            for t in resolve_tools(build.tools, runner.env, _tool_probe(runner, ws))
        ]
        # HOME and (without a sandbox) TMPDIR: made now, shown with the commit's time as the checkout
        # is; after the tools' probes, which run as steps do (their mktemp writes TMPDIR, a tool's
        # --version may write HOME)
        settle_tree(ws.home, epoch)
        settle_tree(ws.tmp, epoch)
        fetched: list[FetchedFile] = []
        restored = False
        snapshot = ws.root / "fetched"  # not visible to any step
        with BuildLog(ws.log) as log:
            if build.fetch is not None:
                if restore is not None:
                    _restore(ws.work, restore, build.fetch.outputs)
                    restored = True
                else:
                    ctx.reporter.progress("fetching locked inputs", 0, len(build.fetch.steps))
                    with _named_variation(described):
                        run_steps(
                            build.fetch.steps,
                            runner=runner,
                            log=log,
                            timeout=build.timeout,
                            phase="fetch",
                            network=True,
                        )
                ensure_inside(ws.work, build.fetch.outputs, "[build.fetch] output")
                if not restored:
                    check_unchanged_outside(ws.work, ws.src, build.fetch.outputs)
                fetched = collect_fetched(ws.work, ws.src, build.fetch.outputs, snapshot)
                check_fetched(fetched, locked, lockfiles)
                if not restored:  # tool caches and the like: not carried into the offline build
                    _empty_again(ws.home, ws.root / "fetch-home", epoch)
                    _empty_again(ws.tmp, ws.root / "fetch-tmp", epoch)
                    # and the build starts from the commit and the checked files alone, as a restore
                    # does: nothing else the fetch left (extended attributes, empty directories,
                    # modes) reaches it
                    os.rename(ws.work, ws.root / "fetch-work")
                    remove_tree(ws.root / "fetch-work")  # what stays: ws.remove()
                    copy_tree(ws.src, ws.work, epoch=epoch, reverse=variation.reverse_order)
                    _restore(ws.work, _snapshot_openers(snapshot, fetched), build.fetch.outputs)
                    # graven's own device nodes (a root build): a fetch step owns them, and their
                    # modes and times could carry data to the build steps
                    _fresh_devices(ws.root / "dev", epoch, _steps_user(runner))
                settle_tree(ws.work, epoch)  # what the fetch wrote gets the commit's times too
                _hand_over(runner, ws.work, ws.home)
            ctx.reporter.progress("running build steps", 0, len(build.steps))
            with _named_variation(described):
                run_steps(build.steps, runner=runner, log=log, timeout=build.timeout)
        ctx.reporter.progress("running build steps", len(build.steps), len(build.steps))
        ensure_inside(ws.work, build.outputs, "[build] output")
        lock_refs = [
            ResourceRef(f"{LOCKFILE_PREFIX}{path}", f"sha256:{hashlib.sha256(data).hexdigest()}")
            for path, data in lockfiles.items()
        ]
        network = None
        if build.fetch is not None and not restored:
            own = isinstance(runner, BubblewrapRunner) and runner.fetch_network is not None
            network = NAT if own else HOST
        yield StepRun(ws, runner.kind, lock_refs, fetched, tools, snapshot, restored, described, network)
    finally:
        left = ws.remove()
        if left is not None:
            ctx.reporter.warn(left)
