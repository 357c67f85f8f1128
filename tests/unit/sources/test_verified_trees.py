"""Trees and commits read by graven itself, each checked against its id: the listing must be what
``git ls-tree -r`` lists and the comparison what ``git diff-tree -r`` says, and a planted object
(git never hashes what it reads) must be refused, not built under the real commit id."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import Executable, Symlink, commit_all, create_repo, git, write_files
from graven.errors import BackendError, IntegrityError, NotFoundError, SourceError, UnsafeInputError
from graven.sources.git import GitChange, GitEntry, GitRepo, _canon_mode, _parse_tree


def _git_listing(repo: Path, commit: str) -> list[GitEntry]:
    out = subprocess.run(
        ["git", "ls-tree", "-r", "-z", "--full-tree", commit], cwd=repo, capture_output=True, check=True
    ).stdout
    entries = []
    for record in out.split(b"\0")[:-1]:
        meta, _, path = record.partition(b"\t")
        mode, kind, oid = meta.decode().split(" ")
        entries.append(GitEntry(mode, kind, oid, path.decode()))
    return entries


def _git_changes(repo: Path, base: str, commit: str) -> list[GitChange]:
    args = ["git", "diff-tree", "-r", "-z", "--raw", "--no-commit-id", "--no-renames", base, commit]
    fields = subprocess.run(args, cwd=repo, capture_output=True, check=True).stdout.decode().split("\0")[:-1]
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=True):
        parts = meta.split(" ")
        changes.append(GitChange(parts[4], parts[1], parts[3], path))
    return changes


def _changes(repo: Path, base: str, commit: str) -> list[GitChange] | None:
    with GitRepo(repo).start_diff_tree(base, commit) as running:
        return running.result()


def _plant(repo: Path, oid: str, kind: bytes, body: bytes) -> None:
    """Replace the loose object ``oid`` with ``body`` (as someone who can write the .git could)."""
    path = repo / ".git" / "objects" / oid[:2] / oid[2:]
    os.chmod(path, 0o644)
    path.write_bytes(zlib.compress(b"%s %d\0" % (kind, len(body)) + body))


def _tree(entries: list[tuple[str, str, str]]) -> bytes:
    return b"".join(f"{mode} {name}\0".encode() + bytes.fromhex(oid) for mode, name, oid in entries)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """A history with every kind of change: add, edit, chmod, file <-> symlink, file <-> directory,
    a submodule, a removed directory, names that sort around '/'."""
    repo = create_repo(
        tmp_path / "repo",
        {"a.txt": "a\n", "a/b.txt": "b\n", "a-b": "x\n", "d/e/f.txt": "f\n", "run": "r\n", "é.txt": "é\n"},
    )
    commits = [git(repo, "rev-parse", "HEAD").strip()]
    write_files(repo, {"run": Executable("r\n"), "a.txt": Symlink("a-b"), "new/deep/n.txt": "n\n"})
    (repo / "d" / "e" / "f.txt").unlink()
    commits.append(commit_all(repo, "second"))
    (repo / "a-b").unlink()
    write_files(repo, {"a-b/inside": "now a directory\n", "a/b.txt": "changed\n"})
    git(repo, "add", "-A")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{commits[0]},sub")
    commits.append(commit_all(repo, "third"))
    return repo, commits


def test_the_listing_is_git_ls_tree(history: tuple[Path, list[str]]) -> None:
    repo, commits = history
    for commit in commits:
        assert GitRepo(repo).ls_tree(commit) == _git_listing(repo, commit)


def test_the_comparison_is_git_diff_tree(history: tuple[Path, list[str]]) -> None:
    repo, commits = history
    for base in commits:
        for commit in commits:
            assert _changes(repo, base, commit) == _git_changes(repo, base, commit), (base, commit)
    assert _changes(repo, "1" * 40, commits[0]) is None  # a base this repository does not have


def test_modes_are_canonical_as_in_git_tree_walk() -> None:
    assert [_canon_mode(m, "t") for m in (b"100644", b"100664", b"100755", b"100700", b"100744")] == [
        "100644",
        "100644",
        "100755",
        "100755",
        "100755",
    ]
    assert [_canon_mode(m, "t") for m in (b"120000", b"120777", b"40000", b"040000", b"160000", b"1")] == [
        "120000",
        "120000",
        "040000",
        "040000",
        "160000",
        "160000",
    ]
    for bad in (b"", b"10064x", b"9"):
        with pytest.raises(BackendError, match="malformed"):
            _canon_mode(bad, "t")


def test_parse_tree_and_malformed_trees() -> None:
    oid = "1" * 40
    raw = _tree([("100664", "a b", oid), ("40000", "dir", "2" * 40)])
    assert _parse_tree(raw, "3" * 40) == [("100644", b"a b", oid), ("040000", b"dir", "2" * 40)]
    for bad in (raw[:-1], b"100644 x", b" x\0" + bytes(20), b"100644 \0" + bytes(20)):
        with pytest.raises(BackendError, match="malformed"):
            _parse_tree(bad, "3" * 40)


def test_a_name_that_is_not_utf8_is_refused_by_the_listing_and_none_in_the_comparison(tmp_path: Path) -> None:
    repo = create_repo(tmp_path / "repo", {"ok.txt": "ok\n"})
    base = git(repo, "rev-parse", "HEAD").strip()
    write_files(repo, {b"sub/bad\xff.txt": "x\n"})
    commit = commit_all(repo, "bad name")
    with pytest.raises(UnsafeInputError, match=r"sub/bad\\xff.txt: file name is not valid UTF-8"):
        GitRepo(repo).ls_tree(commit)
    assert _changes(repo, base, commit) is None


def test_a_planted_tree_is_refused(tmp_path: Path) -> None:
    repo = create_repo(tmp_path / "repo", {"a.txt": "good\n", "b.txt": "evil\n", "d/c.txt": "c\n"})
    base = git(repo, "rev-parse", "HEAD").strip()
    evil = git(repo, "rev-parse", "HEAD:b.txt").strip()
    (repo / "b.txt").unlink()
    (repo / "d" / "c.txt").write_text("c2\n")
    commit = commit_all(repo, "second")
    sub = git(repo, "rev-parse", "HEAD:d").strip()
    # d's tree now names b.txt's old blob: a path pointing at another existing blob
    _plant(repo, sub, b"tree", _tree([("100644", "c.txt", evil)]))
    git_repo = GitRepo(repo)
    message = f"git object {sub} does not hash to its id"
    with pytest.raises(IntegrityError, match=message):
        git_repo.ls_tree(commit)
    with pytest.raises(IntegrityError, match=message), git_repo.start_ls_tree(commit) as running:
        running.result()
    with pytest.raises(IntegrityError, match=message), git_repo.start_diff_tree(base, commit) as running:
        running.result()
    with pytest.raises(IntegrityError, match=message):
        git_repo.read_commit(commit, "d/c.txt")  # graven.toml's way down is checked too
    assert git_repo.read_commit(commit, "graven.toml").data is not None  # not through d


def test_a_planted_commit_is_refused(tmp_path: Path) -> None:
    repo = create_repo(tmp_path / "repo", {"a.txt": "good\n"})
    first_tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    base = git(repo, "rev-parse", "HEAD").strip()
    write_files(repo, {"a.txt": "better\n"})
    commit = commit_all(repo, "second")
    raw = git(repo, "cat-file", "commit", commit).encode()
    # the real id, the old tree: its files would be built as the commit's
    _plant(repo, commit, b"commit", raw.replace(raw[5:45], first_tree.encode(), 1))
    git_repo = GitRepo(repo)
    message = f"git object {commit} does not hash to its id"
    # peeling (^{commit}) makes git check it itself: said as tampering, not as an unknown revision
    with pytest.raises(
        IntegrityError, match=f"git refuses an object of this repository: .*hash mismatch.*{commit}"
    ):
        git_repo.read_commit(commit, "graven.toml")
    with pytest.raises(IntegrityError, match="hash mismatch"):
        git_repo.commit_time(commit)
    with pytest.raises(IntegrityError, match="hash mismatch"):
        git_repo.read_file(commit, "a.txt")
    with pytest.raises(IntegrityError, match=message):
        git_repo.ls_tree(commit)
    with pytest.raises(IntegrityError, match=message), git_repo.start_diff_tree(base, commit) as running:
        running.result()
    with pytest.raises(IntegrityError, match=message), git_repo.start_diff_tree(commit, base) as running:
        running.result()  # the earlier commit's trees are checked as the new one's


def test_a_missing_tree_says_the_clone_lacks_it(tmp_path: Path) -> None:
    repo = create_repo(tmp_path / "repo", {"d/a.txt": "a\n"})
    sub = git(repo, "rev-parse", "HEAD:d").strip()
    (repo / ".git" / "objects" / sub[:2] / sub[2:]).unlink()
    # an ordinary clone: not called a partial clone (a review: the promisor was named regardless)
    with pytest.raises(
        SourceError, match=f"object {sub} is not in this repository \\(a shallow clone, or a damaged"
    ):
        GitRepo(repo).ls_tree("HEAD")


def test_a_planted_blob_read_by_path_is_refused(tmp_path: Path) -> None:
    """A review: [build.fetch] lockfiles were read with `git cat-file blob C:PATH`, which hashes
    nothing: a planted lockfile let the fetch bring in what the commit does not lock."""
    repo = create_repo(tmp_path / "repo", {"deps.lock": "dep good\n", "other": "x\n"})
    commit = git(repo, "rev-parse", "HEAD").strip()
    blob = git(repo, "rev-parse", "HEAD:deps.lock").strip()
    git_repo = GitRepo(repo)
    assert git_repo.read_file(commit, "deps.lock") == b"dep good\n"
    assert git_repo.read_file(commit, "missing") is None
    assert git_repo.read_file("0" * 40, "deps.lock") is None  # an unknown commit
    _plant(repo, blob, b"blob", b"dep evil\n")
    with pytest.raises(IntegrityError, match=f"git object {blob} does not hash to its id"):
        git_repo.read_file(commit, "deps.lock")


def _object(repo: Path, data: bytes, kind: str = "blob") -> str:
    """Write ``data`` as a git object of ``kind`` (checked by git only as a blob: ``--literally``)."""
    args = ["git", "hash-object", "-t", kind, "-w", "--literally", "--stdin"]
    return subprocess.run(args, cwd=repo, input=data, capture_output=True, check=True).stdout.decode().strip()


def _mktree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    return _object(repo, _tree(entries), "tree")


def _crafted(repo: Path, entries: list[tuple[str, str, str]], parent: str) -> str:
    return git(repo, "commit-tree", _mktree(repo, entries), "-p", parent, "-m", "crafted").strip()


def _one_file_repo(tmp_path: Path) -> tuple[Path, str, str, str]:
    """A repository of graven.toml and ``f`` ("x"): it, its commit, and the two blob ids."""
    repo = create_repo(tmp_path / "repo", {"f": "x\n"})
    base = git(repo, "rev-parse", "HEAD").strip()
    return (
        repo,
        base,
        git(repo, "rev-parse", "HEAD:graven.toml").strip(),
        git(repo, "rev-parse", "HEAD:f").strip(),
    )


@pytest.mark.parametrize("shape", ["changed-and-kept", "twice-the-same", "two-changed", "slash"])
def test_a_crafted_tree_the_listing_refuses_is_never_compared_entry_by_entry(
    tmp_path: Path, shape: str
) -> None:
    """A review: a tree holding f twice (f=y, f=x where x was f before) gave one "M f" incrementally,
    and built, where the listing refuses "duplicate path": the comparison now gives up (None) on what
    only a crafted tree holds, and the build lists the whole tree."""
    repo, base, toml, x = _one_file_repo(tmp_path)
    y = _object(repo, b"y\n")
    entries = {
        "changed-and-kept": [("100644", "f", y), ("100644", "f", x)],
        "twice-the-same": [("100644", "f", y), ("100644", "f", y)],
        "two-changed": [("100644", "f", y), ("100755", "f", y)],
        "slash": [("100644", "f", x), ("100644", "g/h", y)],
    }[shape]
    commit = _crafted(repo, [("100644", "graven.toml", toml), *entries], base)
    assert _changes(repo, base, commit) is None


def test_messages_of_the_comparison_name_the_tree_not_the_commit(tmp_path: Path) -> None:
    repo, base, toml, x = _one_file_repo(tmp_path)
    commit = _crafted(repo, [("100644", "graven.toml", toml), ("4000000100644", "f", x)], base)
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}").strip()
    with pytest.raises(BackendError, match=f"git tree object {tree} is malformed"):
        _changes(repo, base, commit)


def test_leaving_a_running_walk_early_stops_it(history: tuple[Path, list[str]]) -> None:
    repo, commits = history
    with GitRepo(repo).start_ls_tree(commits[-1]):
        pass
    with GitRepo(repo).start_diff_tree(commits[0], commits[-1]):
        pass


@pytest.mark.parametrize("shape", ["two-directories", "file-and-directory", "slash"])
def test_the_listing_refuses_what_only_a_crafted_tree_holds(tmp_path: Path, shape: str) -> None:
    """A review: a tree with two directory entries "d" was listed (their files merged), so it could
    become the base of an incremental build, whose comparison then kept one of them by the hash
    seed's order and carried stale files over; "e/y" as a name next to a directory "e" likewise."""
    repo, base, toml, x = _one_file_repo(tmp_path)
    sub = _mktree(repo, [("100644", "x", x)])
    entries = {
        "two-directories": [("40000", "d", sub), ("40000", "d", _mktree(repo, [("100644", "y", x)]))],
        "file-and-directory": [("100644", "d", x), ("40000", "d", sub)],
        "slash": [("40000", "e", sub), ("100644", "e/y", x)],
    }[shape]  # (an empty name is a malformed tree: refused by the parser)
    commit = _crafted(repo, [("100644", "graven.toml", toml), *entries], base)
    with pytest.raises(UnsafeInputError, match="which git itself never writes"):
        GitRepo(repo).ls_tree(commit)
    assert _changes(repo, base, commit) is None  # and never compared entry by entry
    # (nor can it be a base: no build of it is recorded, as the listing refuses it)


# No wall-clock bound (a busy machine is slow at times): 100,000 names take some 1.5 s to compare in one
# linear pass, and a scan of the whole tree per changed name (25,000 took 10 to 25 s) would take
# minutes, which the timeout (far from anything the linear pass needs) ends.
@pytest.mark.timeout(60)
def test_the_comparison_of_a_wide_tree_stays_linear(tmp_path: Path) -> None:
    """A review: the check for crafted names scanned the whole tree once per changed entry: a
    directory of 40,000 files all rewritten took 27 s to compare (1.8 s before)."""
    repo, base, toml, x = _one_file_repo(tmp_path)
    y = _object(repo, b"y\n")
    names = [f"{i:06d}" for i in range(100_000)]
    old = _crafted(
        repo,
        [("100644", "graven.toml", toml), ("40000", "d", _mktree(repo, [("100644", n, x) for n in names]))],
        base,
    )
    new = _crafted(
        repo,
        [("100644", "graven.toml", toml), ("40000", "d", _mktree(repo, [("100644", n, y) for n in names]))],
        old,
    )
    changes = _changes(repo, old, new)
    assert changes is not None and len(changes) == len(names)


def test_a_planted_commit_named_by_rev_parse_is_tampering_too(tmp_path: Path) -> None:
    """verify --rebuild resolves with rev-parse: a planted commit said "not in the repository"."""
    repo = create_repo(tmp_path / "repo", {"a.txt": "good\n"})
    first = git(repo, "rev-parse", "HEAD").strip()
    write_files(repo, {"a.txt": "better\n"})
    commit = commit_all(repo, "second")
    first_path = repo / ".git" / "objects" / first[:2] / first[2:]
    os.chmod(first_path, 0o644)
    first_path.write_bytes((repo / ".git" / "objects" / commit[:2] / commit[2:]).read_bytes())
    with pytest.raises(IntegrityError, match="hash mismatch"):
        GitRepo(repo).resolve(first)
    with pytest.raises(NotFoundError, match="unknown revision"):
        GitRepo(repo).resolve("no-such-branch")
