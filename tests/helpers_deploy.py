"""A small world for the environment tests: a graven home with a trusted signing key, a git repository
whose graven.toml defines environments, a deploy root, and an independent check that a deployed tree is
exactly an artifact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import git as conftest_git
from graven.home import Home
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest
from graven.service.context import Context, Reporter

# A health command that really checks something: the exposed config file parses as TOML.
CONFIG_PARSES = 'python3 -c \'import tomllib; tomllib.load(open("config", "rb"))\''


def env_toml(name: str = "app", envs: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A graven.toml with ``[artifact] name`` and one ``[env.NAME]`` section per entry."""
    lines = ["[artifact]", f'name = "{name}"']
    for env, settings in (envs or {}).items():
        lines.append(f"[env.{env}]")
        for key, value in settings.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def staging_prod(**extra: Any) -> dict[str, dict[str, Any]]:
    """Two environments: staging (config parses as health) and prod (requires staging)."""
    staging: dict[str, Any] = {
        "path": "staging",
        "config": "config/staging.toml",
        "health": CONFIG_PARSES,
        "health_interval": 0,
        "health_retries": 0,
    }
    prod: dict[str, Any] = {
        "path": "prod",
        "config": "config/prod.toml",
        "health": CONFIG_PARSES,
        "health_interval": 0,
        "health_retries": 0,
        "requires": ["staging"],
    }
    staging.update(extra)
    prod.update(extra)
    return {"staging": staging, "prod": prod}


BASE_FILES: dict[str, bytes] = {
    "app/main.py": b"print('hello')\n",
    "app/__init__.py": b"",
    "bin/run": b"#!/bin/sh\nexec python3 -m app.main\n",
    "config/staging.toml": b'port = 8001\nbanner = "staging"\n',
    "config/prod.toml": b'port = 8002\nbanner = "prod"\n',
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with the suite's fixed identity and date; stdout, stripped."""
    return conftest_git(repo, *args).strip()


def fail_switch_to(monkeypatch: pytest.MonkeyPatch, digest: str) -> None:
    """``current`` cannot be pointed at ``digest`` (a full disk, a file system gone read-only): the
    switch fails before ``current`` changes; every other link is made as usual."""
    from graven.deploy.switch import point_symlink as real  # what deploy_release calls
    from graven.errors import BackendError
    from graven.service import deploy_release

    def full(link: Path, target: str) -> bool:
        if link.name == "current" and digest.removeprefix("sha256:") in target:
            raise BackendError(f"cannot switch {link} to {target}: No space left on device")
        return real(link, target)

    monkeypatch.setattr(deploy_release, "point_symlink", full)


def add_signing_key(home: Path) -> None:
    """A default ed25519 signing key in ``home``, trusted there."""
    from graven.signing.keys import KeyStore
    from graven.signing.trust import store_trusted_key

    keys = KeyStore(home / "keys")
    keys.generate("default", "ed25519")
    store_trusted_key(home / "trust", keys.export_public("default"))


@dataclass
class World:
    """A home, a repository and a deploy root; builds and deploys in-process."""

    home: Path
    repo: Path
    root: Path
    contexts: list[Context] = field(default_factory=list)

    def ctx(self, reporter: Reporter | None = None) -> Context:
        """A fresh context on the home and GRAVEN_DB_URL, if set (closed at teardown)."""
        ctx = Context(
            home=Home(root=self.home, db_url_override=os.environ.get("GRAVEN_DB_URL") or None),
            reporter=reporter,
        )
        self.contexts.append(ctx)
        return ctx

    def commit(self, files: Mapping[str, bytes | str | None], toml: str | None = None) -> str:
        """Write (None deletes) files and optionally graven.toml, commit; return the commit id."""
        if toml is not None:
            (self.repo / "graven.toml").write_text(toml)
        for name, content in files.items():
            path = self.repo / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                path.unlink()
            if isinstance(content, str) and content.startswith("->"):
                path.symlink_to(content[2:])
                continue
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            if name.startswith("bin/"):
                path.chmod(0o755)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", "change")
        return git(self.repo, "rev-parse", "HEAD")

    def build(self, revision: str = "HEAD") -> str:
        """Build (and sign) ``revision``; its digest."""
        from graven.service.build import build

        return build(self.ctx(), path=self.repo, revision=revision).digest

    def version(self, n: int, toml: str | None = None) -> str:
        """Commit a version with ``app/version.txt`` = n, build it, return the digest."""
        self.commit({"app/version.txt": f"version {n}\n"}, toml)
        return self.build()

    def options(self, **kwargs: Any) -> Any:
        """DeployOptions with this world's deploy root."""
        from graven.service.deploy import DeployOptions

        return DeployOptions(root=str(self.root), **kwargs)

    def deploy(self, digest: str, env: str, **kwargs: Any) -> Any:
        """Deploy in-process; the DeployResult."""
        from graven.service.deploy import deploy

        return deploy(self.ctx(), digest, env, self.options(**kwargs))

    def manifest(self, digest: str) -> TreeManifest:
        """The artifact's manifest."""
        from graven.service.artifacts import load_manifest

        return load_manifest(self.ctx(), Digest.parse(digest))

    def env_dir(self, env: str) -> Path:
        """The directory of an environment whose path is its name."""
        return self.root / env

    def live(self, env: str) -> str | None:
        """The digest ``current`` points to."""
        try:
            target = os.readlink(self.env_dir(env) / "current")
        except FileNotFoundError:
            return None
        return "sha256:" + target.removeprefix("releases/")

    def close(self) -> None:
        """Close every context."""
        for ctx in self.contexts:
            ctx.close()


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str | None = None) -> World:
    """A world with staging and prod, the base files committed (not built)."""
    home = tmp_path / "home"
    home.mkdir()
    add_signing_key(home)
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    monkeypatch.delenv("GRAVEN_DEPLOY_ROOT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    world = World(home=home, repo=repo, root=tmp_path / "srv")
    world.commit(dict(BASE_FILES), toml if toml is not None else env_toml("app", staging_prod()))
    return world


def tree_problems(root: Path, manifest: TreeManifest) -> list[str]:
    """Independently compare a directory with a manifest: content hash, executable bit, symlink targets,
    empty directories, and nothing extra."""
    problems: list[str] = []
    expected = manifest.by_path()
    expected_dirs: set[str] = set()
    for path, listed in expected.items():
        parts = path.split("/")
        expected_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if isinstance(listed, DirEntry):
            expected_dirs.add(path)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            entry = expected.get(rel)
            if stat.S_ISDIR(st.st_mode):
                if rel not in expected_dirs:
                    problems.append(f"extra directory {rel}")
                seen.add(rel)
            elif stat.S_ISLNK(st.st_mode):
                if not isinstance(entry, SymlinkEntry) or os.readlink(full) != entry.target:
                    problems.append(f"wrong symlink {rel}")
                seen.add(rel)
            elif stat.S_ISREG(st.st_mode):
                if not isinstance(entry, FileEntry):
                    problems.append(f"extra file {rel}")
                else:
                    with open(full, "rb") as handle:
                        digest = hashlib.sha256(handle.read()).hexdigest()
                    if digest != entry.sha256:
                        problems.append(f"wrong content {rel}")
                    if bool(st.st_mode & stat.S_IXUSR) != entry.executable:
                        problems.append(f"wrong mode {rel}")
                    if st.st_mode & 0o222:
                        problems.append(f"writable {rel}")
                seen.add(rel)
            else:
                problems.append(f"special file {rel}")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    for path in expected:
        if path not in seen:
            problems.append(f"missing {path}")
    for path in expected_dirs - seen:
        problems.append(f"missing directory {path}")
    return problems


@contextlib.contextmanager
def opened_up(*paths: Path) -> Iterator[None]:
    """Each of ``paths`` (a file or directory of a deployed release, which graven leaves read-only)
    writable by its owner for the block, as an intruder with the deployer's rights must make it first
    (root could write through the read-only modes; a user gets EACCES), and given its mode back after
    the block, even when the block moved it: the drift the block leaves is only what it did there, not
    a ``mode`` finding of its own making. A path already writable by its owner, and a symlink, are not
    touched."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
            stack.callback(os.close, fd)
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) or mode & stat.S_IWUSR:
                continue
            by_fd = f"/proc/self/fd/{fd}"  # the same inode wherever the block moves it
            os.chmod(by_fd, stat.S_IMODE(mode) | stat.S_IWUSR)
            stack.callback(os.chmod, by_fd, stat.S_IMODE(mode))
        yield


def append_to(path: Path, data: bytes) -> None:
    """Append ``data`` to a deployed (read-only) file, leaving its mode and its directory's as they
    were: only its content drifts."""
    with opened_up(path), open(path, "ab") as handle:
        handle.write(data)


def remove_deployed(path: Path) -> None:
    """Remove a deployed tree whose directories are read-only, as its owner can: each directory made
    writable first."""
    for directory, _dirs, _files in os.walk(path):
        if not os.path.islink(directory):
            os.chmod(directory, 0o755)
    shutil.rmtree(path)


NOBODY = 65534


def give_to_deployer(*paths: Path) -> None:
    """Hand ``paths`` to the deployer that is not root of :func:`exit_code_as_deployer`: as root, to
    nobody; a user's own paths are that user's already."""
    if os.geteuid() == 0:
        for path in paths:
            os.lchown(path, NOBODY, NOBODY)


def exit_code_as_deployer(action: Callable[[], int]) -> int:
    """:func:`exit_code_as_nobody` when the suite runs as root; as any other user, which already is a
    deployer that is not root, ``action`` runs in a forked child as that user."""
    return _exit_code_in_child(action, NOBODY if os.geteuid() == 0 else None, ())


def exit_code_as_nobody(action: Callable[[], int], groups: Sequence[int] = ()) -> int:
    """Run ``action`` in a forked child that has dropped root for the ``nobody`` user (as a deployer
    that is not root: permission bits apply), a member of ``groups`` besides its own; its return value
    (or 1 when it raises) is the exit code returned here. Open what it needs before: nobody may not
    reach the test's directories by path."""
    return _exit_code_in_child(action, NOBODY, groups)


def _exit_code_in_child(action: Callable[[], int], uid: int | None, groups: Sequence[int]) -> int:
    """``action``'s return value (1 when it raises) as the exit code of a forked child, which first
    becomes ``uid`` (None: stays who it is)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if uid is not None:
                os.setresgid(uid, uid, uid)
                os.setgroups(list(groups))
                os.setresuid(uid, uid, uid)
            code = action()
        except BaseException:
            traceback.print_exc()  # shown with the failing test's captured output
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1


def signal_state(pid: int) -> str:
    """What process ``pid`` does with signals (its /proc status: blocked, ignored, caught masks), for
    the message of a test of Ctrl-C or SIGTERM that failed: a signal that had no effect at all shows
    whether the process ignored or blocked it, or caught it and did nothing."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        return f"(no status of {pid}: {exc.strerror})"
    return " ".join(
        line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
    )
