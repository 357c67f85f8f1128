"""The step build's checkout takes files that are exactly their blob from the working tree: the same
tree (content, modes, times) as a checkout from git, and nothing uncommitted."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from conftest import COMMIT_EPOCH, Executable, FileSpec, Symlink, create_repo, git, write_files
from graven.build.workspace import checkout
from graven.sources.git import BlobReader, GitRepo

FILES: dict[str, FileSpec] = {
    "src/app.py": "print('app')\n",
    "src/same.txt": "twin\n",
    "other/same.txt": "twin\n",
    "bin/run": Executable("#!/bin/sh\n"),
    "link": Symlink("src/app.py"),
    "twin-link": Symlink("twin"),
    "twin": "twin\n",
    "deep/a/b/c.txt": "deep\n",
}


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    found: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                body = os.readlink(full).encode()
            elif os.path.isfile(full):
                body = Path(full).read_bytes()
            else:
                body = b""
            found[os.path.relpath(full, root)] = (st.st_mode, int(st.st_mtime), body)
    return found


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The blob ids the checkout asks git for."""
    seen: list[str] = []
    original = GitRepo.cat_blobs

    def spy(self: GitRepo, oids: Iterable[str]) -> Iterator[tuple[str, BlobReader]]:
        oids = list(oids)
        seen.extend(oids)
        return original(self, oids)

    monkeypatch.setattr(GitRepo, "cat_blobs", spy)
    return seen


@pytest.mark.parametrize("reverse", [False, True])
def test_the_checkout_is_the_same_tree_as_from_git(tmp_path: Path, asked: list[str], reverse: bool) -> None:
    repo = GitRepo(create_repo(tmp_path / "repo", FILES))
    commit = git(repo.root, "rev-parse", "HEAD").strip()
    checkout(repo, commit, tmp_path / "plain", epoch=COMMIT_EPOCH, reverse=reverse)
    from_git = set(asked)
    asked.clear()
    checkout(repo, commit, tmp_path / "fast", epoch=COMMIT_EPOCH, reverse=reverse, from_worktree=True)
    assert _snapshot(tmp_path / "fast") == _snapshot(tmp_path / "plain")
    links = {git(repo.root, "rev-parse", f"HEAD:{p}").strip() for p in ("link", "twin-link")}
    assert set(asked) == links  # the symlinks' blobs (one of them also a file's) came from git
    assert len(from_git) > len(asked)


def test_uncommitted_changes_do_not_reach_the_checkout(tmp_path: Path, asked: list[str]) -> None:
    repo = GitRepo(create_repo(tmp_path / "repo", FILES))
    commit = git(repo.root, "rev-parse", "HEAD").strip()
    checkout(repo, commit, tmp_path / "plain", epoch=COMMIT_EPOCH)
    write_files(repo.root, {"src/app.py": "print('APP')\n", "deep/a/b/c.txt": "changed, longer\n"})
    (repo.root / "bin" / "run").unlink()
    asked.clear()
    checkout(repo, commit, tmp_path / "fast", epoch=COMMIT_EPOCH, from_worktree=True)
    assert _snapshot(tmp_path / "fast") == _snapshot(tmp_path / "plain")
    changed = {
        git(repo.root, "rev-parse", f"HEAD:{p}").strip() for p in ("src/app.py", "deep/a/b/c.txt", "bin/run")
    }
    assert changed <= set(asked)


def test_directories_list_in_the_same_order_whatever_the_working_tree_holds(tmp_path: Path) -> None:
    # tmpfs lists a directory in creation order: that order must follow from the commit alone
    files = {f"d/{name}": f"{name}\n" for name in "abcdefgh"}
    repo = GitRepo(create_repo(tmp_path / "repo", {**files, "d/link": Symlink("a")}))
    commit = git(repo.root, "rev-parse", "HEAD").strip()
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path))
    try:
        listings = []
        for name, from_worktree, dirty in (
            ("git", False, ()),
            ("clean", True, ()),
            ("dirty", True, ("c", "f")),
        ):
            for path in dirty:
                (repo.root / "d" / path).write_text("uncommitted\n")
            dest = base / name
            checkout(repo, commit, dest, epoch=COMMIT_EPOCH, from_worktree=from_worktree)
            listings.append(os.listdir(dest / "d"))
        assert listings[0] == listings[1] == listings[2]
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("from_worktree", [False, True])
def test_a_directory_of_symlinks_only_is_checked_out(tmp_path: Path, from_worktree: bool) -> None:
    repo = GitRepo(
        create_repo(
            tmp_path / "repo", {"tool.sh": Executable("#!/bin/sh\n"), "bin/tool": Symlink("../tool.sh")}
        )
    )
    commit = git(repo.root, "rev-parse", "HEAD").strip()
    checkout(repo, commit, tmp_path / "out", epoch=COMMIT_EPOCH, from_worktree=from_worktree)
    assert os.readlink(tmp_path / "out" / "bin" / "tool") == "../tool.sh"


def _crafted_commit(repo: Path, target: bytes) -> str:
    """A commit whose tree holds a symlink ``a`` and a directory ``a`` with a symlink ``c`` (git
    fsck refuses such a tree; a crafted one can still be fetched)."""

    def run(*args: str, data: bytes) -> str:
        result = subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=True)
        return result.stdout.decode().strip()

    def obj(kind: str, data: bytes) -> str:
        return run("hash-object", "-t", kind, "-w", "--literally", "--stdin", data=data)

    def tree(entries: list[tuple[str, str, str]]) -> str:
        return obj("tree", b"".join(f"{m} {n}\0".encode() + bytes.fromhex(o) for m, n, o in entries))

    inner = tree([("120000", "c", obj("blob", b"/etc/passwd"))])
    top = tree([("120000", "a", obj("blob", target)), ("40000", "a", inner)])
    return git(repo, "commit-tree", top, "-m", "crafted").strip()


@pytest.mark.parametrize("reverse", [False, True])
def test_a_path_below_a_symlink_of_the_same_tree_is_refused(tmp_path: Path, reverse: bool) -> None:
    from graven.errors import UnsafeInputError

    outside = tmp_path / "outside"
    outside.mkdir()
    repo = create_repo(tmp_path / "repo", {"keep": "k\n"})
    commit = _crafted_commit(repo, os.fsencode(outside))
    # the verified listing refuses the tree first (a name twice); the checkout's own check of a path
    # below a symlink ("a/c: lies below a") stays behind it
    with pytest.raises(UnsafeInputError, match=r"holds a name twice \('a'\)|a/c: lies below a"):
        checkout(GitRepo(repo), commit, tmp_path / "out", epoch=COMMIT_EPOCH, reverse=reverse)
    assert list(outside.iterdir()) == []
