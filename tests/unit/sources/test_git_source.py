"""Reading commits with git: one cat-file for revision + graven.toml + time, background listings, blobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import COMMIT_EPOCH, Executable, FileSpec, Symlink, commit_all, create_repo, git, write_files
from graven.errors import NotFoundError, SourceError
from graven.sources.git import GitEntry, GitRepo, _committer_time

FILES: dict[str, FileSpec] = {
    "a.txt": "a\n",
    "dir/b.txt": "b\n",
    "dir/run.sh": Executable("#!/bin/sh\n"),
    "link": Symlink("a.txt"),
    "sp ace\ttab.txt": "odd name\n",
    "é.txt": "unicode\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_repo(tmp_path / "repo", FILES)


def test_open_commit_agrees_with_the_one_call_per_question_methods(repo: Path) -> None:
    write_files(repo, {"a.txt": "changed\n"})
    second = commit_all(repo, "second", date="2024-05-06T07:08:09+00:00")
    for revision in ("HEAD", "HEAD~1", "main", second[:10], f"{second}^{{commit}}"):
        found, read = GitRepo.open_commit(repo / "dir", revision, "graven.toml")
        assert found.root == GitRepo.discover(repo).root
        commit = found.resolve(revision)
        assert read.commit == commit
        assert read.epoch == found.commit_time(commit)
        assert read.data == found.read_file(commit, "graven.toml")
        assert found.read_commit(revision, "graven.toml") == read
    assert GitRepo.open_commit(repo, "HEAD~1", "graven.toml")[1].epoch == COMMIT_EPOCH


def test_open_commit_file_that_is_missing_or_not_a_blob(repo: Path) -> None:
    repo_, read = GitRepo.open_commit(repo, "HEAD", "nope.toml")
    assert read.data is None
    assert repo_.read_commit("HEAD", "dir").data is None  # a tree
    assert repo_.read_commit("HEAD", "link").data == b"a.txt"  # as `git cat-file blob` gives it


@pytest.mark.parametrize("revision", ["nope", "HEAD:a.txt", "HEAD^{tree}", "HEAD@{99}", "-x", "HEAD~5"])
def test_open_commit_refuses_what_is_not_a_commit(repo: Path, revision: str) -> None:
    with pytest.raises(NotFoundError, match="unknown revision") as info:
        GitRepo.open_commit(repo / "dir", revision, "graven.toml")
    assert str(repo) in str(info.value)  # the top level, not the directory asked about
    with pytest.raises(NotFoundError, match="unknown revision"):
        GitRepo(repo).resolve(revision)


@pytest.mark.parametrize("revision", ["", "HEAD\nmain", "HEAD\r", "HEAD\0"])
def test_open_commit_refuses_invalid_revisions(repo: Path, revision: str) -> None:
    with pytest.raises(NotFoundError, match="invalid revision"):
        GitRepo.open_commit(repo, revision, "graven.toml")


def test_open_commit_outside_a_repository_names_that_first(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not inside a git repository"):
        GitRepo.open_commit(tmp_path, "nope", "graven.toml")
    with pytest.raises(SourceError, match="no such directory"):
        GitRepo.open_commit(tmp_path / "missing", "HEAD", "graven.toml")


def test_committer_time_parsing() -> None:
    raw = b"tree 1\nparent 2\nauthor A <a@x> 5 +0000\ncommitter C D <c@x> 1700000000 -0130\n\nmsg committer x"
    assert _committer_time(raw) == 1700000000
    assert _committer_time(b"tree 1\ncommitter C <c@x> notatime +0000\n\n") is None
    assert _committer_time(b"tree 1\n\ncommitter C <c@x> 5 +0000\n") is None  # in the message
    for zone in (b"0000", b"+000", b"+00000", b"Z", b"+00:00"):
        assert _committer_time(b"tree 1\ncommitter C <c@x> 1700000000 " + zone + b"\n\n") is None


def test_background_listing_equals_ls_tree(repo: Path) -> None:
    git_repo = GitRepo(repo)
    with git_repo.start_ls_tree("HEAD") as pending:
        entries = pending.result()
    assert entries == git_repo.ls_tree("HEAD")
    by_path = {e.path: e for e in entries}
    assert set(by_path) == {"graven.toml", *FILES}
    assert by_path["dir/run.sh"].mode == "100755"
    assert by_path["link"].mode == "120000"
    assert by_path["a.txt"] == GitEntry(
        "100644", "blob", git(repo, "rev-parse", "HEAD:a.txt").strip(), "a.txt"
    )
    missing = pytest.raises(SourceError, match="not in this repository")
    with missing, git_repo.start_ls_tree("0" * 40) as pending:
        pending.result()
    with git_repo.start_ls_tree("HEAD"):
        pass  # left without waiting: git is stopped


def test_describe_remote_in_the_background(repo: Path) -> None:
    git_repo = GitRepo(repo)
    with git_repo.start_describe_remote() as pending:
        assert pending.result() == repo.as_uri() == git_repo.describe_remote()
    git(repo, "remote", "add", "origin", "https://example.invalid/app.git")
    with git_repo.start_describe_remote() as pending:
        assert pending.result() == "https://example.invalid/app.git" == git_repo.describe_remote()


def test_open_blobs_reads_in_order_and_may_be_left_early(repo: Path) -> None:
    git_repo = GitRepo(repo)
    oids = {e.path: e.oid for e in git_repo.ls_tree("HEAD")}
    wanted = [oids["dir/b.txt"], oids["a.txt"], oids["dir/b.txt"]]
    with git_repo.open_blobs(wanted) as blobs:
        assert [(oid, reader.read()) for oid, reader in blobs] == list(
            zip(wanted, [b"b\n", b"a\n", b"b\n"], strict=True)
        )
    with git_repo.open_blobs(wanted) as blobs:
        pass  # never read: git is stopped
    with git_repo.open_blobs([]) as blobs:
        assert list(blobs) == []
    missing = pytest.raises(SourceError, match=f"object {'0' * 40} is not in this repository")
    with missing, git_repo.open_blobs(["0" * 40]) as blobs:
        list(blobs)
    assert [reader.read() for _, reader in git_repo.cat_blobs([oids["a.txt"]])] == [b"a\n"]
