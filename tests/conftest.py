"""Shared fixtures for the CLI integration tests (tests/integration/test_cli_*.py).

A test gets a graven home, a git repository or an in-process CLI only when it asks for the fixture by
name. One fixture is autouse: :func:`_no_thread_left`, which fails a test that leaves a thread running.
"""

from __future__ import annotations

import hmac
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from hypothesis import settings

from graven.store.local import LocalStore
from helpers_services import unavailable

if TYPE_CHECKING:
    from helpers_deploy import World

# A fixed author and committer date, so that the same tree always gives the same commit id.
COMMIT_DATE = "2024-01-02T03:04:05+00:00"
COMMIT_EPOCH = 1704164645

DEFAULT_TOML = '[artifact]\nname = "demo"\n'

# Hypothesis fails an example that takes more than 200 ms (its default deadline) and, when a rerun is
# quick, reports the test as flaky: on a shared, loaded machine that is noise, not a finding. Speed
# belongs in bench/; every @given test (35 of them had the default) runs without a deadline.
settings.register_profile("graven", deadline=None)
settings.load_profile("graven")


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (a test server's accept loop, say). graven
    forks only where no other thread is alive (graven.runtime.can_fork): a leaked thread silently sent
    every later test of the same worker down the one-process paths, their forked halves untested."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while left := [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        if time.monotonic() > deadline:
            pytest.fail(f"the test left {len(left)} thread(s) running: {', '.join(t.name for t in left)}")
        time.sleep(0.01)


@dataclass(frozen=True)
class Symlink:
    """A symbolic link to ``target`` in a repository made by ``make_repo``."""

    target: str


@dataclass(frozen=True)
class Executable:
    """A file with the executable bit set."""

    data: bytes | str


FileSpec = bytes | str | Symlink | Executable
# a path of RepoFiles: str, bytes or either (a Mapping's key type is invariant: Mapping[str | bytes, ...]
# would take no dict[str, ...])
PathKey = TypeVar("PathKey", bound=str | bytes)
RepoFiles = Mapping[PathKey, FileSpec]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_root(reason): runs as root only: skipped otherwise, failed when GRAVEN_REQUIRE_SERVICES"
        " is set (helpers_services.unavailable)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.needs_root(reason)``: a plain skipif would let CI go green without the check."""
    marker = item.get_closest_marker("needs_root")
    if marker is not None and os.geteuid() != 0:
        unavailable(str(marker.args[0]))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def survivors(pids: Iterable[int], within: float = 15.0) -> list[int]:
    """Those of ``pids`` still running after ``within`` seconds (at once when none runs): a killed
    process takes a moment to die, longer on a loaded machine, so a fixed sleep before looking flakes."""
    import time

    wanted, deadline = list(pids), time.monotonic() + within
    while (running := [pid for pid in wanted if process_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return running


class ProgressRecorder:
    """A reporter (graven.service.context.Reporter) that keeps every progress call; a warning fails
    the test, unless ``warnings`` is a list to keep them in."""

    def __init__(self, warnings: list[str] | None = None) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.warnings = warnings

    def warn(self, message: str) -> None:
        if self.warnings is None:
            raise AssertionError(f"unexpected warning: {message}")
        self.warnings.append(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        self.calls.append((stage, done, total))

    def of(self, stage: str) -> list[tuple[int, int | None]]:
        """``(done, total)`` of each call of ``stage``, in order."""
        return [(done, total) for name, done, total in self.calls if name == stage]


def assert_counts_up_to(ticks: list[tuple[int, int | None]], total: int) -> None:
    """Progress of one stage: at least a start and an end, always of ``total``, never going back,
    from below ``total`` to ``total``."""
    assert len(ticks) >= 2, ticks
    assert {t for _, t in ticks} == {total}
    dones = [d for d, _ in ticks]
    assert dones == sorted(dones), "progress never goes back"
    assert dones[0] < total
    assert dones[-1] == total


def assert_cli_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    """A CLI error as the CLI's rules have it: exit ``code``, nothing on stdout, and on stderr one line
    ``graven: error: ...`` holding each of ``needles``, never a traceback. The line."""
    exit_code, out, err = result
    assert "Traceback" not in err, err
    assert exit_code == code, (exit_code, err)
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def blob_cache_tag(home: Path, oid: str, sha: str, size: int) -> str:
    """The tag a build gives the blob cache row (oid, sha, size) under ``home``'s record key,
    computed here with the standard library's HMAC: the format the rows in the field carry."""
    key = (home / "keys" / "records.hmac").read_bytes()
    return hmac.new(key, b"graven.blobcache/v1\0" + f"{oid}\0{sha}\0{size}".encode(), "sha256").hexdigest()


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the test's own git commands: no user or system config, fixed dates."""
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_DATE=COMMIT_DATE,
        GIT_COMMITTER_DATE=COMMIT_DATE,
        GIT_TERMINAL_PROMPT="0",
    )
    if extra:
        env.update(extra)
    return env


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run git in ``repo`` (as a fixed user) and return its stdout."""
    result = subprocess.run(
        ["git", "-c", "user.name=Graven Test", "-c", "user.email=test@graven.invalid", *args],
        cwd=repo,
        env=git_env(env),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="surrogateescape")


def write_files(root: Path, files: RepoFiles[PathKey]) -> None:
    """Write ``files`` (path -> content, Symlink or Executable) below ``root``; bytes paths are raw."""
    base = os.fsencode(root)
    for name, spec in files.items():
        raw = os.fsencode(name) if isinstance(name, str) else name
        full = os.path.join(base, raw)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if os.path.lexists(full):
            os.unlink(full)
        if isinstance(spec, Symlink):
            os.symlink(os.fsencode(spec.target), full)
            continue
        data = spec.data if isinstance(spec, Executable) else spec
        with open(full, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(full, 0o755 if isinstance(spec, Executable) else 0o644)


def commit_all(repo: Path, message: str = "change", *, date: str = COMMIT_DATE) -> str:
    """Stage everything and commit it with a fixed date; return the commit id."""
    git(repo, "add", "-A")
    git(
        repo,
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        message,
        env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
    )
    return git(repo, "rev-parse", "HEAD").strip()


def create_repo(
    path: Path,
    files: RepoFiles[PathKey],
    graven_toml: str | None = DEFAULT_TOML,
    *,
    message: str = "initial",
) -> Path:
    """A new git repository at ``path`` holding ``files`` (and graven.toml unless None), committed."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    if graven_toml is not None:
        write_files(path, {"graven.toml": graven_toml})
    write_files(path, files)
    commit_all(path, message)
    return path


@pytest.fixture
def make_repo() -> Callable[..., Path]:
    """``make_repo(path, files, graven_toml=DEFAULT_TOML)``: see :func:`create_repo`."""
    return create_repo


def _add_signing_key(home: Path) -> None:
    from graven.signing.keys import KeyStore
    from graven.signing.trust import store_trusted_key

    keys = KeyStore(home / "keys")
    keys.generate("default", "ed25519")
    store_trusted_key(home / "trust", keys.export_public("default"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    """An empty object store under ``tmp_path``, closed after the test. Modules that need another
    define their own."""
    made = LocalStore.at(tmp_path / "objects")
    yield made
    made.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GRAVEN_HOME in a temp dir that does not exist yet (no key, no database); GRAVEN_DB_URL unset.
    Modules that need more of it define their own."""
    path = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(path))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    return path


@pytest.fixture
def graven_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GRAVEN_HOME in a temp dir with a default signing key; GRAVEN_DB_URL and GRAVEN_SIGNING_KEY unset."""
    home = tmp_path / "graven-home"
    home.mkdir()
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    _add_signing_key(home)
    return home


@pytest.fixture
def new_home(tmp_path: Path) -> Callable[[str], Path]:
    """Make another graven home (with a signing key) below tmp_path; switch to it with monkeypatch."""

    def make(name: str) -> Path:
        home = tmp_path / name
        home.mkdir()
        _add_signing_key(home)
        return home

    return make


CliResult = tuple[int, str, str]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``graven ARGS`` in-process: ``run_cli("build", "-C", repo) -> (exit code, stdout, stderr)``."""
    from graven.cli.main import main

    def run(*args: object, cwd: Path | None = None) -> CliResult:
        capsys.readouterr()  # drop whatever was printed before
        with monkeypatch.context() as patch:
            if cwd is not None:
                patch.chdir(cwd)
            code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 for one test module (skipped when PostgreSQL is not
    installed and GRAVEN_REQUIRE_SERVICES is unset). Not under pytest's tmp dir: that one is 0700 root,
    and the server runs as the postgres user."""
    from helpers_services import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="graven-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root / "cluster")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """A throwaway OCI registry on 127.0.0.1 for one test module: its ``host:port`` (skipped when
    docker-registry is not installed and GRAVEN_REQUIRE_SERVICES is unset)."""
    from helpers_services import RegistryServer

    root = Path(tempfile.mkdtemp(prefix="graven-registry-"))
    server = RegistryServer(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fat(tmp_path: Path) -> Iterator[Path]:
    """A fresh 16 MiB FAT mounted at ``tmp_path/fat`` (helpers_mounts.mounted_fat: no symbolic links,
    hard links or permission bits; names fold case), unmounted after the test."""
    from helpers_mounts import mounted_fat

    with mounted_fat(tmp_path / "fat") as point:
        yield point


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A repository with staging and prod, a home and a deploy root (helpers_deploy.make_world),
    closed at teardown. Modules that need another world define their own."""
    from helpers_deploy import make_world

    made = make_world(tmp_path, monkeypatch)
    yield made
    made.close()
