"""Which repository a build reads: -C REPO whatever GIT_DIR says (as inside a git hook), the
current directory as git finds it without -C (a pre-receive hook's quarantine), a repository whose
working tree is elsewhere (core.worktree), and a git directory without a working tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import git, git_env

Run = Callable[..., tuple[int, str, str]]
MakeRepo = Callable[..., Path]


def _built(run_cli: Run, *args: object, cwd: Path | None = None) -> dict[str, object]:
    code, out, err = run_cli("build", "--json", *args, cwd=cwd)
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def test_dash_c_builds_the_named_repository_inside_a_hook_of_another(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked = make_repo(tmp_path / "hooked", {"f": "hooked\n"}, '[artifact]\nname = "hooked"\n')
    target = make_repo(tmp_path / "target", {"f": "target\n"}, '[artifact]\nname = "target"\n')
    git(target, "remote", "add", "origin", "https://example.com/target.git")
    head = git(target, "rev-parse", "HEAD").strip()
    # what git exports to a hook of "hooked"
    monkeypatch.setenv("GIT_DIR", str(hooked / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(hooked))
    monkeypatch.setenv("GIT_INDEX_FILE", str(hooked / ".git" / "index"))
    result = _built(run_cli, "-C", target, cwd=hooked)
    assert result["name"] == "target"
    assert result["commit"] == head
    assert result["repository"] == "https://example.com/target.git"
    assert _built(run_cli, cwd=hooked)["name"] == "hooked"  # without -C: the hook's repository


def test_a_pre_receive_hook_builds_the_pushed_commit_from_its_quarantine(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo
) -> None:
    work = make_repo(tmp_path / "work", {"app.py": "print(1)\n"})
    server = tmp_path / "server.git"
    git(tmp_path, "init", "-q", "--bare", str(server))
    hook = server / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\nread old new ref\n"
        f'exec {sys.executable} -m graven build --json "$new" > "{tmp_path}/hook.json"\n'
    )
    hook.chmod(0o755)
    env = git_env({"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "GRAVEN_HOME": str(graven_home)})
    pushed = subprocess.run(
        ["git", "push", "-q", str(server), "HEAD:refs/heads/main"],
        cwd=work,
        env=env,
        capture_output=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    result = json.loads((tmp_path / "hook.json").read_text())
    assert result["commit"] == git(work, "rev-parse", "HEAD").strip()


def test_a_repository_whose_working_tree_is_elsewhere(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "print(1)\n"})
    expected = _built(run_cli, "-C", repo)["digest"]
    files = tmp_path / "files"
    files.mkdir()
    git(repo, "config", "core.worktree", str(files))  # valid: git log and git status work
    assert _built(run_cli, "-C", repo)["digest"] == expected
    assert _built(run_cli, cwd=repo)["digest"] == expected
    other = tmp_path / "other"
    git(tmp_path, "init", "-q", str(other))
    git(repo, "config", "core.worktree", str(other))  # the working tree lies in another repository
    assert _built(run_cli, "-C", repo)["digest"] == expected


def test_a_git_directory_without_a_working_tree_builds_as_a_bare_repository(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "print(1)\n"})
    expected = _built(run_cli, "-C", repo)["digest"]
    git(repo, "worktree", "add", "-q", str(tmp_path / "linked"))
    separate = tmp_path / "separate"
    git(
        tmp_path,
        "clone",
        "-q",
        "--separate-git-dir",
        str(tmp_path / "separate.git"),
        str(repo),
        str(separate),
    )
    for git_dir in (repo / ".git", repo / ".git" / "worktrees" / "linked", tmp_path / "separate.git"):
        code, out, err = run_cli("build", "--json", "-C", git_dir)
        assert code == 0, (git_dir, err)
        assert json.loads(out)["digest"] == expected
