"""Reading commits with the ``git`` command: resolve a revision once, then read only that commit.

Replace objects are disabled (``GIT_NO_REPLACE_OBJECTS``) so that a commit id always means the same
content, and blobs are read raw: no smudge filters, no end-of-line conversion, no export-subst.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Generic, NamedTuple, TypeVar, cast

from graven.core import paths
from graven.core.paths import decode_path
from graven.errors import (
    BackendError,
    GravenError,
    IntegrityError,
    NotFoundError,
    SourceError,
    UnsafeInputError,
)

__all__ = ["BlobReader", "BlobStream", "CommitFile", "GitChange", "GitEntry", "GitRepo", "Pending", "Running"]

MODE_FILE = "100644"
MODE_EXECUTABLE = "100755"
MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"


class GitEntry(NamedTuple):
    """One entry of ``git ls-tree -r`` (a named tuple: many thousands are made per build)."""

    mode: str
    kind: str
    oid: str
    path: str


class GitChange(NamedTuple):
    """One path of ``git diff-tree -r``: its status (``A``, ``M``, ``T`` or ``D``) and its new mode
    and object id (``000000`` and zeros for ``D``)."""

    status: str
    mode: str
    oid: str
    path: str


class CommitFile(NamedTuple):
    """A resolved commit, its committer time and the raw content of one file in it.

    ``symlink`` is True when the file is a symbolic link in the commit: ``data`` is then the link's
    target, as ``git cat-file blob`` gives it, not the content of a file.
    """

    commit: str
    epoch: int
    data: bytes | None
    symlink: bool = False


_T = TypeVar("_T")
_PRIVATE_ENV = ("GRAVEN_", "PGPASSWORD")


# Settings of the repository's own configuration that make git run a program of its choosing in the
# commands graven runs: a checkout graven did not clone (a CI cache, an unpacked tarball, a rebuild's
# -C REPO) may name one in .git/config. git status runs core.fsmonitor (a hook, or a daemon) and the
# clean filter of a file whose stat changed; in a partial clone, every command that reads a missing
# object fetches it from the promisor remote, and that fetch runs the remote's upload-pack, ssh, a
# credential helper... and then `git maintenance run --auto` (hooks). What no git command of graven
# needs is off here; what the repository itself names is overridden by name (_repository_overrides).
_FORCED_CONFIG = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.path.join(os.devnull, "no-hooks")),
    ("maintenance.auto", "false"),
    ("gc.auto", "0"),
)


# What `git rev-parse --local-env-vars` prints (git 2.39): the variables that choose a repository
# and how it is read. Inside a git hook, git exports GIT_DIR (and, in a pre-receive hook, the
# quarantine's GIT_OBJECT_DIRECTORY...): a repository named with -C must not be read through them.
_LOCAL_ENV = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
)


class _Where(NamedTuple):
    """Which repository a git command reads: with ``isolated``, git's repository variables of the
    environment are dropped (the repository was named: -C REPO); ``git_dir`` and ``work_tree``, once
    discovered, are given to git (GIT_DIR, GIT_WORK_TREE) instead of letting it look from the
    directory it runs in, which need not hold the repository (core.worktree elsewhere)."""

    isolated: bool = False
    git_dir: Path | None = None
    work_tree: Path | None = None
    overrides: tuple[tuple[str, str], ...] = ()  # _repository_overrides: config, then env ("=" + name)


_HERE = _Where()  # the repository git finds from the directory it runs in, as the environment says


def _git_env(config: Iterable[tuple[str, str]] = (), where: _Where = _HERE) -> dict[str, str]:
    """graven's environment for git, without graven's own settings (GRAVEN_SIGNING_KEY names the key,
    GRAVEN_DB_URL may hold a password: nothing git needs), with :data:`_FORCED_CONFIG` and
    ``config`` (passed as GIT_CONFIG_KEY_n/VALUE_n: a key holding "=" stays one key), for the
    repository ``where`` says."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(_PRIVATE_ENV)}
    if where.isolated:
        for name in _LOCAL_ENV:
            env.pop(name, None)
    if where.git_dir is not None:
        env["GIT_DIR"] = str(where.git_dir)
        if where.work_tree is not None:
            env["GIT_WORK_TREE"] = str(where.work_tree)
    try:
        count = int(env.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        count = 0
    settings = [*_FORCED_CONFIG, *config]
    for key, value in where.overrides:
        if key.startswith("="):
            env[key[1:]] = value
        else:
            settings.append((key, value))
    for key, value in settings:  # after the caller's own (the last value of a key wins)
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    env.update(
        GIT_NO_REPLACE_OBJECTS="1",
        # info/grafts (deprecated) would re-parent commits, as replace refs would: a file that cannot
        # exist (git then reads none, and prints no deprecation notice as it does for /dev/null)
        GIT_GRAFT_FILE=os.path.join(os.devnull, "no-grafts"),
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        GIT_OPTIONAL_LOCKS="0",
    )
    return env


def _not_its_id(oid: str) -> IntegrityError:
    return IntegrityError(
        f"git object {oid} does not hash to its id: the repository's object store is "
        "damaged or was tampered with; run `git fsck` there, or build from a fresh clone"
    )


def _check_object(kind: bytes, raw: bytes, oid: str) -> None:
    """Refuse ``raw`` unless it is the object ``oid`` names: git hashes no object it reads (only
    ``git fsck`` does), so a planted commit or tree would name other files under the real id."""
    header = b"%s %d\0" % (kind, len(raw))
    digest = hashlib.sha1(header) if len(oid) == 40 else hashlib.sha256(header)  # noqa: S324
    digest.update(raw)
    if digest.hexdigest() != oid:
        raise _not_its_id(oid)


class BlobReader:
    """Reads exactly ``size`` bytes of the blob ``oid`` from a ``cat-file --batch`` stream, and checks
    them against ``oid`` when the last byte is read: git returns what its object store holds without
    hashing it again, and a blob whose bytes are not its id's (a damaged or planted object file) must
    never be built, nor remembered as that id's content (the blob cache serves every repository)."""

    def __init__(self, stream: IO[bytes], size: int, oid: str) -> None:
        self._stream = stream
        self.size = size
        self._left = size
        self._oid = oid
        header = b"blob %d\0" % size
        self._hash = hashlib.sha1(header) if len(oid) == 40 else hashlib.sha256(header)  # noqa: S324
        if size == 0:
            self._check()

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all that is left when ``n`` < 0)."""
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._stream.read(want)
        if len(data) != want:
            raise BackendError("git cat-file ended early")
        self._left -= len(data)
        self._hash.update(data)
        if self._left == 0:
            self._check()
        return data

    def _check(self) -> None:
        if self._hash.hexdigest() != self._oid:
            raise _not_its_id(self._oid)

    def drain(self) -> None:
        """Skip what the consumer did not read."""
        while self._left > 0:
            self.read(1 << 20)


# one thread (no preloadIndex): the build keeps the other core on a small machine
# and no submodule: graven builds none (they are refused), and git would run the filters of each
# submodule's own configuration there
_STATUS = (
    "git",
    "-c",
    "core.preloadIndex=false",
    "status",
    "--porcelain",
    "--untracked-files=no",
    "--ignore-submodules=all",
    "-z",
)


# what the repository's own configuration may name that makes git run a program: a filter driver
# (filter.NAME.clean...), a remote's upload-pack, ssh, the git:// proxy, the askpass program, a
# credential helper, the command listing an alternate's refs, and which transports are allowed (ext::
# runs a command); core.hooksPath and core.fsmonitor are forced for every repository
_COMMAND_KEYS = (
    r"^(filter\.|credential\.|protocol\.|remote\..*\.uploadpack$"
    r"|core\.(sshcommand|gitproxy|askpass|alternaterefscommand)$)"
)
_TRANSPORTS = ("file", "git", "ssh", "http", "https")  # those git allows by default: not ext::
_FILTER_OFF = (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false"))
_SINGLE_DEFAULTS = {"core.sshcommand": None, "core.askpass": "", "core.alternaterefscommand": ":"}


def _repository_overrides(root: Path, where: _Where) -> tuple[tuple[str, str], ...]:
    """Settings (and, as ``("=NAME", value)``, environment variables) that undo each setting of the
    repository's own configuration (.git/config, a worktree's config.worktree, and what they include)
    that makes git run a program (:data:`_COMMAND_KEYS`): the value the user's or the system's
    configuration gives (theirs is the operator's, and stays), else git's default. A filter driver
    without commands leaves the bytes as they are, and is not required (unless the operator's
    configuration says so). Reading the configuration
    runs nothing."""
    try:
        found = subprocess.run(
            ["git", "config", "--show-scope", "--includes", "-z", "--get-regexp", _COMMAND_KEYS],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_git_env(where=where._replace(overrides=())),
            check=False,
        )
    except OSError:
        return ()
    fields = found.stdout.split(b"\0")
    local: set[str] = set()
    operator: list[tuple[str, str]] = []  # the other scopes' values, in git's order
    for scope, item in zip(fields[0::2], fields[1::2], strict=False):  # scope, then key "\n" value
        key, _, value = (part.decode("utf-8", "surrogateescape") for part in item.partition(b"\n"))
        if scope in (b"local", b"worktree"):
            local.add(key)
        elif scope != b"command":  # the command scope is the environment's: git applies it anyway
            operator.append((key, value))
    out: list[tuple[str, str]] = []
    filters = sorted({key[len("filter.") : key.rindex(".")] for key in local if key.startswith("filter.")})
    # each command the repository sets, emptied (an empty process, set, is one git then runs neither
    # instead of: so only where the repository sets one), and no driver required; then the operator's
    # own settings of those again (`git lfs install --local` writes the filter ~/.gitconfig has into
    # .git/config): theirs run, the repository's do not
    off = {
        key: value
        for name in filters
        if name
        for var, value in _FILTER_OFF
        if (key := f"filter.{name}.{var}") in local or var == "required"
    }
    out += off.items()
    out += [(key, value) for key, value in operator if key in off]
    for key in sorted(local):
        if key in _SINGLE_DEFAULTS:  # git takes the last value of these
            theirs = [value for name, value in operator if name == key]
            if theirs:
                out.append((key, theirs[-1]))
            elif key == "core.sshcommand":  # what git runs without one: GIT_SSH, else ssh
                if "GIT_SSH_COMMAND" not in os.environ:
                    ssh = os.environ.get("GIT_SSH")
                    out.append(("=GIT_SSH_COMMAND", shlex.quote(ssh) if ssh else "ssh"))
            else:
                out.append((key, _SINGLE_DEFAULTS[key] or ""))
    if any(key.startswith("credential.") for key in local):
        # an empty helper empties the list: then the operator's own helpers again
        out.append(("credential.helper", ""))
        out += [(key, value) for key, value in operator if key.startswith("credential.")]
    if "core.gitproxy" in local and "GIT_PROXY_COMMAND" not in os.environ:
        out.append(("=GIT_PROXY_COMMAND", ""))  # set, even empty, it wins over every core.gitProxy
    # git takes the first remote.NAME.uploadpack (the repository's, before any of ours): a remote
    # naming one is fetched from over no transport that runs it (file://, ssh); GIT_ALLOW_PROTOCOL
    # wins over every protocol.*.allow, and the operator's own list stays (less those two)
    pack = any(key.startswith("remote.") for key in local)
    if pack or any(key.startswith("protocol.") for key in local):
        given = os.environ.get("GIT_ALLOW_PROTOCOL")
        allowed = _TRANSPORTS if given is None else tuple(given.split(":"))
        kept = [name for name in allowed if not (pack and name in ("file", "ssh"))]
        out.append(("=GIT_ALLOW_PROTOCOL", ":".join(kept)))
    return tuple(out)


class DirtyCheck:
    """``git status`` running in the background while a build works (nothing, for a bare repository:
    it has no working tree that could differ)."""

    def __init__(self, root: Path | None, where: _Where = _HERE) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed: Exception | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # why git could not tell, after result()
        self.changed: list[str] = []  # the changed tracked paths (from the root), after result()
        if root is not None:  # started from a thread: git's start is not on the way
            self._thread = threading.Thread(target=self._start, args=(root, where), name="graven-dirty-check")
            self._thread.start()

    def _start(self, root: Path, where: _Where) -> None:
        try:
            self._proc = subprocess.Popen(
                list(_STATUS),
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_git_env(where=where),
            )
        except Exception as exc:  # said by result() (the check is advisory; the build goes on)
            self._failed = exc

    def _joined(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def result(self) -> bool:
        """Wait for git: True when tracked files differ from HEAD; False when they do not, or when git
        could not tell (then :attr:`error` says why: a damaged index, say)."""
        self._joined()
        if self._failed is not None:  # git could not even start: said, as a failed status is
            self.error = str(self._failed) or type(self._failed).__name__
            return False
        if self._proc is None:
            return False
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            self.error = lines[-1] if lines else f"exit {self._proc.returncode}"
            return False
        self.changed = _porcelain_paths(out)
        return bool(out.strip())

    def __enter__(self) -> DirtyCheck:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._joined()
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()


def _porcelain_paths(out: bytes) -> list[str]:
    """The paths of ``git status --porcelain -z`` (``XY PATH``; a rename or copy is followed by the
    path it came from, which is skipped)."""
    paths: list[str] = []
    fields = iter(out.split(b"\0"))
    for field in fields:
        if len(field) < 4:
            continue
        paths.append(field[3:].decode("utf-8", "surrogateescape"))
        if field[:1] in (b"R", b"C"):
            next(fields, None)
    return paths


def _scratch_fd() -> int:
    """An unnamed file for a child's output: in memory on Linux, else an unlinked temporary file."""
    try:
        return os.memfd_create("graven-git", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile  # not at the top: ~2 ms of start-up that Linux never needs

        fd, name = tempfile.mkstemp(prefix="graven-git-")
        os.unlink(name)
        return fd


def _read_fd(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as handle:
        handle.seek(0)
        return handle.read()


class Pending(Generic[_T]):
    """A git command running in the background (use as a context manager); :meth:`result` waits.

    Its output goes to unnamed files, not pipes: git never waits for us, and no thread of ours has
    to take the GIL to drain a pipe while the caller works.
    """

    def __init__(
        self,
        root: Path,
        args: list[str],
        parse: Callable[[subprocess.CompletedProcess[bytes]], _T],
        where: _Where = _HERE,
    ) -> None:
        self._args = args
        self._parse = parse
        self._fds: list[int] = []
        try:
            self._fds += (_scratch_fd(), _scratch_fd())
            self._proc = subprocess.Popen(
                ["git", *args],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=self._fds[0],
                stderr=self._fds[1],
                env=_git_env(where=where),
            )
        except OSError as exc:
            self._close_fds()
            raise BackendError(f"cannot run git: {exc}") from exc

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def result(self) -> _T:
        """Wait for git and parse what it printed."""
        returncode = self._proc.wait()
        out, err = (_read_fd(fd) for fd in self._fds)
        return self._parse(subprocess.CompletedProcess(self._args, returncode, out, err))

    def __enter__(self) -> Pending[_T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._close_fds()


def _checked(args: list[str], result: subprocess.CompletedProcess[bytes]) -> bytes:
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise BackendError(f"git {args[0]} failed: {message.splitlines()[-1]}")
    return result.stdout


_TREE_CHUNK = 256  # requests written before their answers are read: ≤ 17 KB, less than a pipe holds
_MODE_TREE = "040000"
_MALFORMED_TREE = "git tree object {} is malformed"


class _Objects:
    """``git cat-file --batch`` for the commits and trees graven relies on (use as a context manager).

    Its errors go to an unnamed file: when an object is missing, the last thing git said (a promisor
    remote it could not reach) explains why."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self._err = _scratch_fd()
        try:
            self._proc = subprocess.Popen(
                ["git", "cat-file", "--batch"],
                cwd=root,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                env=env,
            )
        except OSError as exc:
            os.close(self._err)
            raise BackendError(f"cannot run git: {exc}") from exc
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self.stdin: IO[bytes] = self._proc.stdin
        self.stdout: IO[bytes] = self._proc.stdout

    def request(self, name: str) -> tuple[str, str, bytes] | None:
        """:func:`_batch_request` on this git; BackendError when git was killed (a signal, the OOM
        killer): what it did not answer is not missing."""
        ended: list[bool] = []
        found = _batch_request(self.stdin, self.stdout, name, ended)
        if ended:  # no answer: git stopped, which it does on some revision syntax errors too
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(timeout=5)
                if code < 0:
                    raise BackendError(f"git cat-file was killed (signal {-code}); run the command again")
        return found

    def trees(self, oids: Iterable[str], into: dict[str, bytes]) -> None:
        """Read the trees ``oids`` that ``into`` lacks, check each against its id, and add them (raw).
        Without ``--buffer`` git answers each request at once: up to :data:`_TREE_CHUNK` requests are
        written, then their answers read."""
        wanted = [oid for oid in dict.fromkeys(oids) if oid not in into]
        read, write, take = self.stdout.readline, self.stdin.write, self.stdout.read
        for start in range(0, len(wanted), _TREE_CHUNK):
            chunk = wanted[start : start + _TREE_CHUNK]
            try:
                write("".join(f"{oid}\n" for oid in chunk).encode())
                self.stdin.flush()
            except OSError:
                raise BackendError("git cat-file ended early") from None
            for oid in chunk:
                header = read().split()
                if len(header) != 3 or not header[2].isdigit():
                    if not header or header[1:] == [b"missing"]:
                        raise self.missing(oid)
                    raise BackendError(f"git cat-file cannot read tree {oid}")
                size = int(header[2])
                raw = take(size)
                if len(raw) != size or take(1) != b"\n":
                    raise BackendError("git cat-file output is malformed")
                if header[1] != b"tree":
                    raise _wrong_kind(oid, header[1].decode(errors="replace"), "a directory")
                _check_object(b"tree", raw, oid)
                into[oid] = raw

    def root_tree(self, commit: str) -> tuple[str, str] | None:
        """The id of ``commit`` (checked against its content) and of its tree; None when git has no
        such commit."""
        found = self.request(commit)
        if found is None:
            return None
        oid, kind, raw = found
        if kind != "commit":
            raise BackendError(f"git object {commit} is a {kind}, not a commit")
        _check_object(b"commit", raw, oid)
        return oid, _tree_of(raw, oid)

    def missing(self, oid: str) -> SourceError | BackendError:
        """The error for an object this repository does not have."""
        return _missing(oid, self._err)

    def checked(self, oid: str, kind: str) -> bytes | None:
        """The content of the object ``oid``, checked against its id, when it is a ``kind`` (tree,
        blob); None when it is another kind; :meth:`missing` raised when the repository lacks it."""
        found = self.request(oid)
        if found is None:
            raise self.missing(oid)
        if found[1] != kind:
            return None
        _check_object(kind.encode(), found[2], oid)
        return found[2]

    def raise_if_damaged(self) -> None:
        """IntegrityError when git said an object it read does not hash to its id (a revision whose
        commit or tag was planted then looks unknown to git: say what it is)."""
        damaged = _hash_mismatch(_read_fd(self._err))
        if damaged is not None:
            raise damaged

    def kill(self) -> None:
        """Stop git: a reader waiting for it gets the end of its output."""
        if self._proc.poll() is None:
            self._proc.kill()

    def __enter__(self) -> _Objects:
        return self

    def __exit__(self, *_exc: object) -> None:
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.kill()
        self._proc.wait()
        os.close(self._err)


def _missing(oid: str, err_fd: int) -> SourceError | BackendError:
    """An object git does not have: a partial clone whose promisor could not give it (git said why on
    ``err_fd``), or a shallow one. Not "not found": the commit names it, the clone lacks it. When git
    said something else (it ended for another reason), that."""
    lines = _read_fd(err_fd).decode(errors="replace").strip().splitlines()
    if lines and oid not in lines[-1] and "promisor" not in lines[-1]:
        return BackendError(f"git cat-file failed reading {oid}: {lines[-1].strip()}")
    said = f": {lines[-1].strip()}" if lines else ""
    if any("promisor" in line for line in lines):
        return SourceError(
            f"object {oid} is not in this repository (a partial clone: its promisor remote could not "
            f"give it{said})"
        )
    return SourceError(
        f"object {oid} is not in this repository (a shallow clone, or a damaged repository: `git "
        f"fsck` there says more{said})"
    )


def _wrong_kind(oid: str, kind: str, entry: str) -> UnsafeInputError:
    """The refusal of a tree entry whose object is of another kind than its mode says: only a crafted
    tree holds one (bad input, not git failing underneath)."""
    return UnsafeInputError(
        f"git object {oid} is a {kind}, yet a tree of the commit names it as {entry}, which git itself "
        "never writes (git fsck reports the tree); build a commit made by git"
    )


def _hash_mismatch(stderr: bytes) -> IntegrityError | None:
    """The error to raise when git said it refused an object that does not hash to its id (it checks
    the commits and tags it peels a revision through), else None."""
    for line in stderr.decode(errors="replace").splitlines():
        if "hash mismatch" in line:
            return IntegrityError(
                f"git refuses an object of this repository: {line.strip()}: the repository's object "
                "store is damaged or was tampered with; run `git fsck` there, or build from a fresh clone"
            )
    return None


def _tree_of(raw_commit: bytes, commit: str) -> str:
    first = raw_commit.split(b"\n", 1)[0]
    if not first.startswith(b"tree ") or len(first) != 5 + len(commit):
        raise BackendError(f"git commit {commit} is malformed (no tree)")
    return first[5:].decode("ascii", "replace")


_CANON_MODES: dict[bytes, str] = {}


def _canon_mode(mode: bytes, oid: str) -> str:
    """A tree entry's mode as git's tree-walk.c reads it (canon_mode): a regular file is 100644 or
    100755 by its owner's execute bit, a symlink 120000, a directory 040000, anything else a
    submodule (160000); what is no octal number is a malformed tree."""
    canon = _CANON_MODES.get(mode)
    if canon is not None:
        return canon
    if not mode or len(mode) > 12 or mode.strip(b"01234567"):
        raise BackendError(_MALFORMED_TREE.format(oid))
    value = int(mode, 8)
    kind = value & 0o170000
    if kind == 0o100000:
        canon = MODE_EXECUTABLE if value & 0o100 else MODE_FILE
    elif kind == 0o120000:
        canon = MODE_SYMLINK
    elif kind == 0o040000:
        canon = _MODE_TREE
    else:
        canon = MODE_SUBMODULE
    if len(_CANON_MODES) < 64:  # a crafted tree may spell modes many ways: remember the usual ones
        _CANON_MODES[mode] = canon
    return canon


# an entry: mode, name, and the binary id (20 bytes for SHA-1, 32 for SHA-256); the whole tree must be
# such entries. A C loop each: a build reads thousands of trees.
_ENTRY = rb"([^ \0]+) ([^\0]+)\0(.{%d})"
_TREE = {size: re.compile(rb"(?:%s)*" % (_ENTRY % size), re.DOTALL).fullmatch for size in (20, 32)}
_FIELDS = {size: re.compile(_ENTRY % size, re.DOTALL).findall for size in (20, 32)}
_WHOLE = {size: re.compile(rb"[^ \0]+ [^\0]+\0.{%d}" % size, re.DOTALL).findall for size in (20, 32)}


def _parse_tree(raw: bytes, oid: str) -> list[tuple[str, bytes, str]]:
    """The entries of a raw tree object, in its order: (canonical mode, name, object id). An entry is
    ``<octal mode> <name>\\0<binary id>``; the id is 20 (SHA-1) or 32 (SHA-256) bytes, as the tree's."""
    size = len(oid) // 2
    if _TREE[size](raw) is None:
        raise BackendError(_MALFORMED_TREE.format(oid))
    modes = _CANON_MODES
    return [
        (modes.get(mode) or _canon_mode(mode, oid), name, binary.hex())
        for mode, name, binary in _FIELDS[size](raw)
    ]


def _raw_entries(raw: bytes, oid: str) -> list[bytes]:
    """The entries of a raw tree object, each as its bytes (mode, name and binary id)."""
    size = len(oid) // 2
    if _TREE[size](raw) is None:
        raise BackendError(_MALFORMED_TREE.format(oid))
    return _WHOLE[size](raw)


def _keyed(entries: Iterable[bytes], oid: str) -> dict[tuple[bytes, bool], tuple[str, str]]:
    """Entries as (name, is a tree) -> (canonical mode, object id): as git compares two trees, a file
    and a directory of one name are two paths."""
    size = len(oid) // 2
    keyed = {}
    for entry in entries:
        mode_bytes, _, rest = entry.partition(b" ")
        mode = _canon_mode(mode_bytes, oid)
        keyed[rest[: -size - 1], mode == _MODE_TREE] = (mode, rest[-size:].hex())
    return keyed


def _names_are_plain(names: list[bytes]) -> bool:
    """Whether a tree's entry names are what git makes: each once (a file and a directory of one
    name included), none empty, none holding a ``/``. git fsck flags the others (duplicateEntries,
    fullPathname, emptyName); only a crafted tree holds them."""
    unique = set(names)
    return len(unique) == len(names) and b"" not in unique and b"/" not in b"\0".join(names)


def _entry_names(entries: list[bytes], oid: str) -> list[bytes]:
    """The names of raw tree entries (:func:`_raw_entries`)."""
    tail = len(oid) // 2 + 1  # the NUL and the binary id
    return [entry.partition(b" ")[2][:-tail] for entry in entries]


def _crafted_tree(oid: str, names: list[bytes]) -> UnsafeInputError:
    seen: set[bytes] = set()
    for name in names:
        if not name or b"/" in name or name in seen:
            what = "an empty name" if not name else "a '/' in a name" if b"/" in name else "a name twice"
            shown = name.decode("utf-8", "backslashreplace")
            return UnsafeInputError(
                f"git tree {oid} holds {what} ({shown!r}), which git itself never writes (git fsck "
                "reports the tree); build a commit made by git"
            )
        seen.add(name)
    raise AssertionError("a plain tree")  # pragma: no cover - called only for one that is not


def _listing(objects: _Objects, commit: str) -> list[GitEntry]:
    """Every entry of the commit's tree, recursively, as ``git ls-tree -r`` lists them (in its order,
    with its modes; a submodule is of kind ``commit``), from objects each checked against its id.
    The trees are read a level at a time, then walked; paths must be valid UTF-8."""
    found = objects.root_tree(commit)
    if found is None:
        raise objects.missing(commit)
    root = found[1]
    raw: dict[str, bytes] = {}
    trees: dict[str, list[tuple[str, bytes, str]]] = {}
    level = [root]
    while level:
        objects.trees(level, raw)
        for oid in level:
            if oid not in trees:
                parsed = trees[oid] = _parse_tree(raw[oid], oid)
                names = [name for _, name, _ in parsed]
                if not _names_are_plain(names):
                    raise _crafted_tree(oid, names)
        # each tree once: a tree nested many times in itself (a "git bomb") is named once per place
        level = list(
            dict.fromkeys(
                oid for tree in level for mode, _, oid in trees[tree] if mode == _MODE_TREE and oid not in raw
            )
        )
    entries: list[GitEntry] = []
    append = entries.append
    walked = 0  # directories: a bomb of trees alone (no file) lists none, yet takes as long to walk
    stack = [(iter(trees[root]), "")]
    while stack:
        walking, prefix = stack[-1]
        for mode, name, oid in walking:
            try:
                path = prefix + name.decode("utf-8")
            except UnicodeDecodeError:
                decode_path(prefix.encode() + name)  # raises, naming the path
                raise
            if mode == _MODE_TREE:
                walked += 1
                if len(entries) > paths.MAX_ENTRIES or walked > paths.MAX_ENTRIES:  # before a tree
                    # nested in itself fills the memory, or takes hours to walk
                    raise paths.too_many_paths(f"the tree of commit {commit[:12]}")
                stack.append((iter(trees[oid]), path + "/"))
                break
            append(GitEntry(mode, "commit" if mode == MODE_SUBMODULE else "blob", oid, path))
        else:
            stack.pop()
    if len(entries) > paths.MAX_ENTRIES:
        raise paths.too_many_paths(f"the tree of commit {commit[:12]}")
    return entries


def _changes(objects: _Objects, base: str, commit: str) -> list[GitChange] | None:
    """What ``git diff-tree -r --no-renames`` says between the trees of ``base`` and ``commit`` (A, M,
    T or D, the new mode and id, by path), from objects each checked against its id: equal subtrees
    are skipped, added and removed ones walked; a file that became a directory (or the reverse) is
    a D and A's. Only the entries whose bytes differ between two versions of a tree are parsed (a
    large directory where one file changed costs two C loops). None when ``base`` or one of its trees
    is not in this repository, a changed path is not UTF-8, or a tree on either side holds names only
    a crafted tree has (:func:`_names_are_plain`): the caller then lists the whole tree (which names
    what is wrong)."""
    old = objects.root_tree(base)
    new = objects.root_tree(commit)
    if new is None:
        raise objects.missing(commit)
    if old is None:
        return None
    zero = "0" * len(new[0])
    raw: dict[str, bytes] = {}
    found: list[tuple[bytes, str, str, str]] = []
    pairs: list[tuple[bytes, str | None, str | None]] = [(b"", old[1], new[1])]
    descended = 0  # directories, as the listing counts them (a bomb of trees alone has no file)
    while pairs:
        try:
            objects.trees([oid for _, a, b in pairs for oid in (a, b) if oid is not None], raw)
        except (SourceError, BackendError):
            return None  # a tree is missing (a partial clone): git could not compare either
        deeper: list[tuple[bytes, str | None, str | None]] = []
        for prefix, a, b in pairs:
            was_listed = [] if a is None else _raw_entries(raw[a], a)
            listed = [] if b is None else _raw_entries(raw[b], b)
            # the new side only: the base's trees were all checked when it was built (the listing
            # refuses what is not plain, and so does this comparison, which then falls back to it)
            if b is not None and not _names_are_plain(_entry_names(listed, b)):
                return None  # the full listing names (and refuses) what git fsck would flag
            gone, came = set(was_listed), set(listed)
            same = gone & came  # byte for byte: the same mode, name and object
            before = _keyed(gone - same, a or commit)
            after = _keyed(came - same, b or commit)
            for (name, is_tree), (mode, oid) in after.items():
                was = before.get((name, is_tree))
                if was == (mode, oid):
                    continue  # the same after canon_mode (100664 is 100644)
                if is_tree:
                    deeper.append((prefix + name + b"/", None if was is None else was[1], oid))
                elif was is None:
                    found.append((prefix + name, "A", mode, oid))
                else:
                    found.append((prefix + name, "T" if was[0][:2] != mode[:2] else "M", mode, oid))
            for (name, is_tree), (_, oid) in before.items():
                if (name, is_tree) in after:
                    continue
                if is_tree:
                    deeper.append((prefix + name + b"/", oid, None))
                else:
                    found.append((prefix + name, "D", "000000", zero))
            if len(found) > paths.MAX_ENTRIES or descended + len(deeper) > paths.MAX_ENTRIES:
                return None  # the full listing refuses it, naming the limit
        descended += len(deeper)
        pairs = deeper
    found.sort()  # byte order of the paths: git's order of a recursive diff
    try:
        return [GitChange(status, mode, oid, path.decode("utf-8")) for path, status, mode, oid in found]
    except UnicodeDecodeError:
        return None


class Running(Generic[_T]):
    """Work on git's objects in a thread while the caller works (use as a context manager);
    :meth:`result` waits for it, and raises what it raised."""

    def __init__(self, objects: _Objects, work: Callable[[_Objects], _T]) -> None:
        self._objects = objects
        self._value: _T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="graven-git-trees", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[_Objects], _T]) -> None:
        try:
            with self._objects:
                self._value = work(self._objects)
        except BaseException as exc:  # handed to result()
            self._error = exc

    def result(self) -> _T:
        """Wait for the work, and return what it gave."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return cast(_T, self._value)

    def __enter__(self) -> Running[_T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._thread.is_alive():
            self._objects.kill()  # left without waiting: git is stopped, the thread ends
        self._thread.join()


def _committer_line(raw: bytes) -> bytes | None:
    """The committer header of a raw commit object (after "committer "), or None without one."""
    for line in raw.split(b"\n"):
        if not line:
            break  # the end of the headers
        if line.startswith(b"committer "):
            return line[len(b"committer ") :]
    return None


_ZONE = re.compile(rb"[+-][0-9]{4}")


def _committer_time(raw: bytes) -> int | None:
    """The committer time in a raw commit object, or None when its committer line is not ``<ident>
    <seconds> [+-]HHMM``: git fsck flags any other, and ``git show --format=%ct`` prints none for a
    malformed zone, so a build and a rebuild (:meth:`GitRepo.commit_time`) both refuse it."""
    line = _committer_line(raw)
    if line is None:
        return None
    fields = line.rpartition(b">")[2].split()
    if (
        len(fields) == 2
        and fields[0].isdigit()
        and len(fields[0]) <= 12
        and int(fields[0]) <= _MAX_EPOCH
        and _ZONE.fullmatch(fields[1])
    ):
        return int(fields[0])
    return None


def _no_usable_time(commit: str, raw: bytes) -> SourceError:
    line = _committer_line(raw) or b""
    text = line.rpartition(b">")[2].strip().decode(errors="replace")
    return SourceError(
        f"commit {commit[:12]} has no usable committer time ({text[:40]!r}): graven needs one "
        "(SOURCE_DATE_EPOCH, the archive's mtime); build another commit"
    )


_MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z: what a date, an archive and SQLite all hold

_REMOTE_URL = ("config", "--get", "remote.origin.url")


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/?#]*)@")


def without_credentials(url: str) -> str:
    """``url`` without the credentials of a ``scheme://user:secret@host/...`` URL: CI systems clone
    with a token there (``https://TOKEN@github.com/...``, ``gitlab-ci-token:TOKEN@``), and it must
    never reach a signed provenance or a log. The host follows the *last* "@" of the authority (an
    "@" in a user name, ``https://me@corp.com:TOKEN@host/``, is not the end of the credentials). An
    ssh user name without a password (``ssh://git@host``, ``git@host:path``) is no secret and
    stays."""
    match = _USERINFO.match(url)
    if match is None:
        return url
    scheme, user = match["scheme"].lower(), match["user"]
    if scheme in ("ssh://", "git+ssh://", "ssh+git://") and ":" not in user:
        return url
    return match["scheme"] + url[match.end() :]


def _check_revision(revision: str) -> None:
    """Refuse a revision that is empty, spans lines, or is not valid UTF-8 (it goes into the records
    and the provenance as text): NotFoundError, naming it escaped."""
    try:
        revision.encode("utf-8")
    except UnicodeEncodeError:
        shown = revision.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise NotFoundError(
            f"invalid revision '{shown}': not valid UTF-8; name the commit by its id"
        ) from None
    if not revision:  # `graven build "$REV"` with REV unset
        raise NotFoundError(
            "invalid revision '': it is empty; name a branch, tag or commit id, or leave REVISION out "
            "to build HEAD"
        )
    if any(ch in revision for ch in "\n\r\0"):
        raise NotFoundError(
            f"invalid revision {revision!r}: a revision holds no line break or NUL; name a branch, tag "
            "or commit id"
        )


def _batch_request(
    stdin: IO[bytes], stdout: IO[bytes], name: str, ended: list[bool] | None = None
) -> tuple[str, str, bytes] | None:
    """Ask a ``cat-file --batch`` for ``name``: (object id, type, content), or None when it is missing
    or git stopped (as it does on some revision syntax errors; then True is added to ``ended``)."""
    try:
        stdin.write(f"{name}\n".encode())
        stdin.flush()
    except OSError:
        if ended is not None:
            ended.append(True)
        return None
    line = stdout.readline()
    if not line and ended is not None:
        ended.append(True)
    header = line.decode(errors="replace").split()
    if len(header) != 3 or not header[2].isdigit():
        return None  # "<name> missing", "<name> ambiguous", or git ended
    size = int(header[2])
    content = stdout.read(size + 1)
    if len(content) != size + 1 or content[-1:] != b"\n":
        raise BackendError("git cat-file output is malformed")
    return header[0], header[1], content[:-1]


def _request_commit(objects: _Objects, revision: str) -> tuple[str, bytes] | None:
    """The commit ``revision`` names (id, raw object) from a ``cat-file --batch``, or None.

    Usually one request for ``<revision>^{commit}`` (which also peels tags, and picks the commit when
    a short id is ambiguous). A revision that starts with ``:`` (``:/message`` searches commit
    messages to the end of the string, ``:path`` names an index entry) would swallow that suffix:
    it is looked up as it is, and a tag it names peeled after.
    """
    if not revision.startswith(":"):
        found = objects.request(f"{revision}^{{commit}}")
    else:
        found = objects.request(revision)
        if found is not None and found[1] == "tag":
            found = objects.request(f"{found[0]}^{{commit}}")
    if found is None or found[1] != "commit":
        objects.raise_if_damaged()
        return None
    return found[0], found[2]


def _tree_entry(raw: bytes, name: bytes, oid_size: int) -> tuple[bytes, str] | None:
    """The (mode, object id) of ``name`` in a raw tree object, or None when it has no such entry.

    A tree is a sequence of ``<mode> <name>\\0<binary id>`` entries; ``oid_size`` is 20 (SHA-1) or
    32 (SHA-256) bytes.
    """
    key = name + b"\0"
    pos, end = 0, len(raw)
    while pos < end:
        space = raw.find(b" ", pos)
        if space < 0:
            break
        if raw.startswith(key, space + 1):
            start = space + 1 + len(key)
            return raw[pos:space], raw[start : start + oid_size].hex()
        nul = raw.find(b"\0", space + 1)
        if nul < 0:
            break
        pos = nul + 1 + oid_size
    if pos < end:
        raise BackendError("git tree object is malformed")
    return None


def _request_file(objects: _Objects, commit: str, raw_commit: bytes, path: str) -> tuple[bytes, bool] | None:
    """The content of ``path`` in the commit and whether it is a symlink there, or None when it is
    no file there (missing, a directory, a submodule). Walks the trees from the commit's root tree:
    a tree entry's mode is the only place that tells a symlink from a file. Each tree and the blob
    are checked against their ids, as every object a build relies on; one the repository lacks (a
    partial clone whose promisor is gone) is an error, not a file that is not there."""
    oid = _tree_of(raw_commit, commit)
    oid_size = len(commit) // 2
    mode = b"40000"
    for name in path.split("/"):
        if mode != b"40000":
            return None  # below a file, a link or a submodule
        tree = objects.checked(oid, "tree")
        if tree is None:
            return None
        entry = _tree_entry(tree, name.encode("utf-8", "surrogateescape"), oid_size)
        if entry is None:
            return None
        mode, oid = entry
    symlink = mode == b"120000"
    if not (symlink or mode.startswith(b"100")):
        return None
    blob = objects.checked(oid, "blob")
    return None if blob is None else (blob, symlink)


def _alternate_repositories(git_dirs: list[Path], depth: int = 5) -> list[Path]:
    """The repositories whose objects ``git_dirs`` borrow (``objects/info/alternates``: ``git clone
    --reference``, ``--shared``), followed as git follows them (a few levels): each one's directory
    (the parent of its ``objects``), which holds its config and the remotes' credentials too."""
    found: list[Path] = []
    todo = [(d / "objects", depth) for d in git_dirs]
    seen: set[Path] = set()
    while todo:
        objects, left = todo.pop()
        if objects in seen or left <= 0:
            continue
        seen.add(objects)
        try:
            text = (objects / "info" / "alternates").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            # a relative one is to this objects directory, its links resolved first (as git does)
            other = Path(os.path.normpath(Path(os.path.realpath(objects)) / line))
            if other.name != "objects" or not other.is_dir() or not (other.parent / "HEAD").exists():
                continue  # git ignores what is no repository's objects: hiding /usr would break steps
            found.append(other.parent)
            todo.append((other, left - 1))
    return found


class GitRepo:
    """A git repository, found with :meth:`discover`. ``root`` is its working tree, or the repository
    itself when it is ``bare`` (graven reads commits only: it never needs a working tree); a git
    directory without a working tree (a clone's .git, a linked worktree's) counts as bare.

    ``git_dir`` is the repository's git directory once discovered: git is then told it, as it need
    not be found from ``root`` (core.worktree, GIT_WORK_TREE elsewhere). ``isolated``: the
    repository was named (-C REPO), and git's repository variables of the environment (GIT_DIR, as
    git exports it to a hook) are ignored; else (the current directory) they count, as for git."""

    def __init__(
        self,
        root: Path,
        *,
        bare: bool = False,
        git_dir: Path | None = None,
        isolated: bool = False,
        overrides: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self.root = root
        self.bare = bare
        self.git_dir = git_dir
        self._base = _Where(isolated, git_dir, None if bare else root)
        self._overrides = overrides

    @property
    def _where(self) -> _Where:
        """Where git reads, with :func:`_repository_overrides` (read once, at the first git run)."""
        if self._overrides is None:
            self._overrides = _repository_overrides(self.root, self._base)
        return self._base._replace(overrides=self._overrides)

    @classmethod
    def discover(cls, path: Path, *, isolated: bool = True) -> GitRepo:
        """The repository containing ``path``; SourceError when there is none. ``isolated`` (the
        default): ``path`` names the repository, whatever GIT_DIR says."""
        return cls._discovered(path, cls._start_discover(path, isolated), isolated)

    @staticmethod
    def _start_discover(path: Path, isolated: bool) -> subprocess.Popen[bytes]:
        if not path.is_dir():
            what = "not a directory" if path.exists() else "no such directory"
            raise SourceError(f"{path}: {what}; give the repository's directory")
        try:
            return subprocess.Popen(
                # the git directory first: it is printed even where there is no working tree
                ["git", "rev-parse", "--absolute-git-dir", "--show-toplevel"],
                cwd=path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_git_env(where=_Where(isolated)),
            )
        except FileNotFoundError:
            raise SourceError("git is not installed; install it (apt-get install git)") from None

    @classmethod
    def _discovered(
        cls,
        path: Path,
        proc: subprocess.Popen[bytes],
        isolated: bool,
        overrides: tuple[tuple[str, str], ...] | None = None,
    ) -> GitRepo:
        with proc:
            out, err = proc.communicate()
        # exactly git's bytes, one path a line: a name may end in a space
        lines = out[:-1].split(b"\n") if out.endswith(b"\n") else [out]
        if proc.returncode < 0:  # a signal (the OOM killer, a CI timeout): nothing wrong with the input
            raise BackendError(f"git rev-parse was killed (signal {-proc.returncode}); run the command again")
        if proc.returncode != 0:
            text = err.decode(errors="replace")
            detail = text.strip().splitlines()
            reason = detail[-1].strip() if detail else "git rev-parse failed"
            if "dubious ownership" in text:
                raise SourceError(
                    f"git refuses the repository at {path}: it belongs to another user (dubious "
                    f"ownership); run graven as its owner, or trust it: {reason}"
                )
            if "not a git repository" in reason:
                raise SourceError(f"{path} is not inside a git repository; run graven in one (or git init)")
            if "must be run in a work tree" in reason and len(lines) == 1 and lines[0]:
                # a bare repository, or a git directory without a working tree (a clone's .git, a
                # linked worktree's, a --separate-git-dir): its commits are read all the same
                git_dir = Path(cls._path(lines[0]))
                return cls(git_dir, bare=True, git_dir=git_dir, isolated=isolated, overrides=overrides)
            raise SourceError(f"{path}: {reason}")
        if len(lines) != 2:
            raise SourceError(
                f"the path of the repository at {path} holds a line break; rename the directory"
            )
        root, git_dir = Path(cls._path(lines[1])), Path(cls._path(lines[0]))
        return cls(root, git_dir=git_dir, isolated=isolated, overrides=overrides)

    @staticmethod
    def _path(raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise SourceError(
                f"the repository's path {raw.decode(errors='backslashreplace')} is not valid UTF-8, which "
                "its records and provenance need; rename the directory"
            ) from None

    def git_dirs(self) -> list[Path]:
        """The repository's git directory and, for a linked worktree, the common one (which holds the
        config with the remotes' URLs, and the other worktrees'); empty when git cannot say."""
        try:
            result = subprocess.run(
                ["git", "rev-parse", "--absolute-git-dir", "--git-common-dir"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=_git_env(where=self._where),
                check=False,
            )
        except OSError:
            return []
        if result.returncode != 0:
            return []
        lines = result.stdout.decode(errors="surrogateescape").splitlines()
        found = [(self.root / line).absolute() for line in lines if line]
        return found + _alternate_repositories(found)

    @classmethod
    def open_commit(
        cls, path: Path, revision: str, file: str, *, isolated: bool = True
    ) -> tuple[GitRepo, CommitFile]:
        """:meth:`discover`, then :meth:`read_commit`, with the two git processes running at once
        (git finds the repository from ``path`` for both); the errors are those of the two in turn."""
        proc = cls._start_discover(path, isolated)
        found: CommitFile | GravenError | None
        here = cls(path, isolated=isolated)  # the repository's overrides, read once for both
        try:
            found = here._read_commit(revision, file)
        except GravenError as exc:
            found = exc
        except BaseException:
            with proc:
                proc.kill()
            raise
        repo = cls._discovered(path, proc, isolated, here._overrides)
        if isinstance(found, GravenError):
            raise found
        if found is None:
            raise repo._unknown_revision(revision)
        return repo, found

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                ["git", *args],
                cwd=self.root,
                capture_output=True,
                env=_git_env(where=self._where),
                check=False,
            )
        except OSError as exc:
            raise BackendError(f"cannot run git: {exc}") from exc
        if check:
            _checked(list(args), result)
        return result

    def resolve(self, revision: str) -> str:
        """The full id of the commit that ``revision`` names, resolved once."""
        _check_revision(revision)
        # as _request_commit: a revision starting with ':' is resolved first, then peeled
        if revision.startswith(":"):
            named = self._run("rev-parse", "--verify", "--quiet", "--end-of-options", revision, check=False)
            if named.returncode != 0:
                raise self._unknown_revision(revision)
            target = f"{named.stdout.decode().strip()}^{{commit}}"
        else:
            target = f"{revision}^{{commit}}"
        result = self._run("rev-parse", "--verify", "--quiet", "--end-of-options", target, check=False)
        if result.returncode != 0:
            damaged = _hash_mismatch(result.stderr)  # a planted commit or tag: git refused to peel it
            if damaged is not None:
                raise damaged
            raise self._unknown_revision(revision)
        return result.stdout.decode().strip()

    def _unknown_revision(self, revision: str) -> NotFoundError:
        shallow = self._run("rev-parse", "--is-shallow-repository", check=False).stdout.strip() == b"true"
        hint = (
            "; this clone is shallow: the commit may be outside its history (git fetch --unshallow, or "
            "--deepen N)"
            if shallow
            else ""
        )
        return NotFoundError(
            f"unknown revision {revision!r}: not a commit in {self.root} "
            f"(commit first, or name a branch, tag or commit id){hint}"
        )

    def read_file(self, commit: str, path: str) -> bytes | None:
        """The raw content of ``path`` in ``commit`` (a symlink's target for a link), or None when it
        is not a file there or ``commit`` is unknown; the commit, each tree on the way and the blob
        are checked against their ids (:meth:`read_commit`)."""
        found = self._read_commit(commit, path)
        return None if found is None else found.data

    def object_type(self, commit: str, path: str) -> str | None:
        """What ``path`` is in ``commit`` (``blob``, ``tree``, ``commit`` for a submodule), or None."""
        result = self._run("cat-file", "-t", f"{commit}:{path}", check=False)
        return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else None

    def commit_time(self, commit: str) -> int:
        """The committer time of ``commit`` (seconds since the epoch), read as a build reads it
        (:func:`_committer_time`); SourceError when the commit has none graven can use (a crafted or
        damaged committer line)."""
        with self._objects() as objects:
            found = _request_commit(objects, commit)
        if found is None:
            raise self._unknown_revision(commit)
        oid, raw = found
        _check_object(b"commit", raw, oid)
        epoch = _committer_time(raw)
        if epoch is None:
            raise _no_usable_time(commit, raw)
        return epoch

    def _objects(self) -> _Objects:
        return _Objects(self.root, _git_env(where=self._where))

    def ls_tree(self, commit: str) -> list[GitEntry]:
        """Every entry of the commit's tree, recursively, as ``git ls-tree -r`` lists them, from trees
        checked against their ids (:func:`_listing`); paths must be valid UTF-8."""
        with self._objects() as objects:
            return _listing(objects, commit)

    def start_ls_tree(self, commit: str) -> Running[list[GitEntry]]:
        """:meth:`ls_tree` in the background (use as a context manager)."""
        return Running(self._objects(), lambda objects: _listing(objects, commit))

    def start_diff_tree(self, base: str, commit: str) -> Running[list[GitChange] | None]:
        """The paths whose blob or mode differ between the trees of commits ``base`` and ``commit``
        (every file, recursively, submodules included; no rename detection), in the background, from
        trees checked against their ids (:func:`_changes`); None when that cannot tell (``base``
        unknown to this repository, say)."""
        return Running(self._objects(), lambda objects: _changes(objects, base, commit))

    def read_commit(self, revision: str, path: str) -> CommitFile:
        """Resolve ``revision`` as :meth:`resolve` does, then read the commit's committer time and the
        raw content of ``path`` in it (None when it is not a file there; a symlink's target, marked
        as such), all with one git process."""
        found = self._read_commit(revision, path)
        if found is None:
            raise self._unknown_revision(revision)
        return found

    def _read_commit(self, revision: str, path: str) -> CommitFile | None:
        _check_revision(revision)
        if not path or any(ch in path for ch in "\n\r\0"):
            raise NotFoundError(f"invalid path {path!r}")
        with self._objects() as objects:
            # Without --buffer git flushes after every object: ask, read the answer, ask again.
            found = _request_commit(objects, revision)
            if found is None:
                return None
            commit, raw = found
            _check_object(b"commit", raw, commit)  # its tree, parents and time are taken from it
            target = _request_file(objects, commit, raw, path)
        epoch = _committer_time(raw)
        if epoch is None:
            raise _no_usable_time(commit, raw)
        if target is None:
            return CommitFile(commit, epoch, None)
        return CommitFile(commit, epoch, target[0], target[1])

    def start_dirty_check(self) -> DirtyCheck:
        """Start ``git status`` in the background (use as a context manager); a bare repository has
        no working tree, so nothing runs and it is never dirty."""
        return DirtyCheck(None if self.bare else self.root, self._where)

    def describe_remote(self) -> str:
        """The repository's identity for records: the origin URL, else a file URL of its path."""
        return self._remote_or_path(self._run(*_REMOTE_URL, check=False))

    def start_describe_remote(self) -> Pending[str]:
        """:meth:`describe_remote` in the background (use as a context manager)."""
        return Pending(self.root, list(_REMOTE_URL), self._remote_or_path, self._where)

    def _remote_or_path(self, result: subprocess.CompletedProcess[bytes]) -> str:
        url = result.stdout.decode(errors="replace").strip() if result.returncode == 0 else ""
        return without_credentials(url) or self.root.as_uri()

    def prefetch(self, commit: str, oids: Iterable[str]) -> None:
        """In a partial clone, fetch the blobs of ``commit`` among ``oids`` that it lacks with one
        fetch from its promisor remote, as git's own checkout does: ``git cat-file`` fetches each
        missing blob on its own (a process, a round trip and a pack file per blob). The same fetch
        git would run, with the same configuration (:func:`_repository_overrides`); what it could not
        fetch is left to ``cat-file``, which fetches it or says why not."""
        if not self._has_promisor_pack():
            return  # no partial clone: no git process spent on asking (every build reads blobs)
        # the remote a partial clone fetches from: extensions.partialClone, or (git 2.39's clone) a
        # remote.NAME.promisor set true; none when this is no partial clone
        found = self._run(
            "config",
            "--type=bool-or-str",
            "--get-regexp",
            r"^(extensions\.partialclone|remote\..*\.promisor)$",
            check=False,
        ).stdout.decode(errors="surrogateescape")
        remotes = [
            value if key == "extensions.partialclone" else key[len("remote.") : -len(".promisor")]
            for key, _, value in (line.partition(" ") for line in found.splitlines())
            if key == "extensions.partialclone" or value == "true"
        ]
        remote = next((name for name in remotes if name and not name.startswith("-")), None)
        if remote is None:
            return
        # --missing=print: rev-list lists what is missing, fetching nothing
        listed = self._run(
            "rev-list", "--objects", "--no-walk", "--no-object-names", "--missing=print", commit, check=False
        ).stdout.split()
        wanted = set(oids)
        missing = [oid for line in listed if line[:1] == b"?" and (oid := line[1:].decode()) in wanted]
        if not missing:
            return
        fetch = ["fetch", remote, "--no-tags", "--no-write-fetch-head"]
        fetch += ["--recurse-submodules=no", "--filter=blob:none", "--stdin"]
        with contextlib.suppress(OSError):
            subprocess.run(
                ["git", "-c", "fetch.negotiationAlgorithm=noop", *fetch],
                cwd=self.root,
                input="".join(f"{oid}\n" for oid in missing).encode(),
                capture_output=True,
                env=_git_env(where=self._where),
                check=False,
            )

    def _has_promisor_pack(self) -> bool:
        """Whether the repository's object directory holds a promisor pack (``*.promisor``: what a
        partial clone fetched from its promisor remote); True when it cannot tell (the fetch is then
        looked for as git would)."""
        common = self.git_dir
        if common is None:
            return True
        try:
            with contextlib.suppress(FileNotFoundError):  # a linked worktree: the common directory's
                common = common / (common / "commondir").read_text(encoding="utf-8").strip()
            return any(name.endswith(".promisor") for name in os.listdir(common / "objects" / "pack"))
        except (OSError, UnicodeDecodeError):
            return True

    def cat_blobs(self, oids: Iterable[str]) -> Iterator[tuple[str, BlobReader]]:
        """Stream the blobs ``oids`` in order, each as a reader that must be consumed in turn."""
        with self.open_blobs(oids) as blobs:
            yield from blobs

    def open_blobs(self, oids: Iterable[str]) -> BlobStream:
        """:meth:`cat_blobs`, with git started at once (use as a context manager, iterate once)."""
        return BlobStream(self.root, list(oids), self._where)


_F_SETPIPE_SZ = 1031  # fcntl(2) on Linux
_PIPE_BYTES = 1 << 20  # the default /proc/sys/fs/pipe-max-size


class BlobStream:
    """``git cat-file --batch`` reading blobs in order. Git starts when this is made and works ahead
    (about a MiB: a larger pipe) while the caller does other work; iterate to read the blobs."""

    def __init__(self, root: Path, oids: list[str], where: _Where = _HERE) -> None:
        self._wanted = oids
        self._proc: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None
        self._err: int | None = None
        if not oids:
            return
        self._err = _scratch_fd()  # why a blob is missing (a promisor remote git could not reach)
        try:
            proc = subprocess.Popen(
                # --buffer: no flush after every object; small pack windows bound git's mapped memory
                [
                    "git",
                    "-c",
                    "core.packedGitWindowSize=32m",
                    "-c",
                    "core.packedGitLimit=64m",
                    "cat-file",
                    "--batch",
                    "--buffer",
                ],
                cwd=root,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                env=_git_env(where=where),
                bufsize=1 << 20,
            )
        except OSError as exc:
            self._close_err()
            raise BackendError(f"cannot run git: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        with contextlib.suppress(OSError):  # not Linux, or over the user's pipe quota: the default
            fcntl.fcntl(proc.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        stdin = proc.stdin

        def feed() -> None:
            # A separate thread: git stops reading our input while its output pipe is full.
            try:
                stdin.write(b"".join(f"{oid}\n".encode() for oid in oids))
                stdin.close()
            except OSError:
                pass

        self._feeder = threading.Thread(target=feed, daemon=True)
        self._feeder.start()

    def __iter__(self) -> Iterator[tuple[str, BlobReader]]:
        proc = self._proc
        if proc is None:
            return
        stdout = proc.stdout
        assert stdout is not None
        for oid in self._wanted:
            header = stdout.readline().decode().split()
            if (not header or header[1:] == ["missing"]) and self._err is not None:
                raise _missing(oid, self._err)  # a partial clone's git ends when it cannot fetch
            if len(header) == 3 and header[1] in ("tree", "commit", "tag"):
                raise _wrong_kind(oid, header[1], "a file or symlink")
            if len(header) != 3 or header[1] != "blob":
                raise BackendError(f"git cat-file cannot read blob {oid}: {' '.join(header) or 'git ended'}")
            reader = BlobReader(stdout, int(header[2]), oid)
            yield oid, reader
            reader.drain()
            if stdout.read(1) != b"\n":
                raise BackendError("git cat-file output is malformed")

    def _close_err(self) -> None:
        fd, self._err = self._err, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Stop git (if it is still running) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            self._close_err()
            return
        assert proc.stdout is not None
        proc.stdout.close()
        proc.kill()
        proc.wait()
        if self._feeder is not None:
            self._feeder.join()
        self._close_err()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
