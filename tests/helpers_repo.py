"""Making small git repositories and running the CLI in-process, for integration tests."""

from __future__ import annotations

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
