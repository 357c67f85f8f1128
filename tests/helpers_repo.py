"""Making small git repositories and running the CLI in-process, for integration tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from conftest import commit_all, write_files
from conftest import git as conftest_git
from graven.cli.main import main


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with the suite's fixed identity and date; stdout, stripped."""
    return conftest_git(repo, *args).strip()


def make_repo(path: Path, files: Mapping[str, bytes | str], toml: str = '[artifact]\nname = "app"\n') -> Path:
    """A git repository at ``path`` with ``files`` and ``graven.toml``, committed."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    write_files(path, {"graven.toml": toml, **files})
    commit(path, "initial")
    return path


def commit(repo: Path, message: str) -> str:
    """Commit everything; return the commit id."""
    return commit_all(repo, message)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``graven ARGS`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def nest(base: Path, levels: int, name: str = "a", *, content: bytes = b"", locked: bool = False) -> None:
    """``levels`` nested directories ``name`` below ``base`` (made if missing) with a file ``f`` holding
    ``content`` at the bottom, made with relative paths (as a step's ``cd``), so that no path length
    limits the depth; with ``locked``, also a directory ``locked`` there with mode 000 (a step's chmod)."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        made = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(made, content)
        os.close(made)
        if locked:
            os.mkdir("locked", 0o700, dir_fd=fd)
            os.chmod("locked", 0, dir_fd=fd)
    finally:
        os.close(fd)
