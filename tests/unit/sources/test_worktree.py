"""Blobs from the working tree: only files that are exactly the commit's blob, never through a link."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FileSpec, Symlink, create_repo, git, write_files
from graven.sources.worktree import blob_id, worktree_blobs

DIR_TXT = "sorts between dir and dir/b.txt as a string\n"
FILES: dict[str, FileSpec] = {
    "a.txt": "a\n",
    "dir/b.txt": "b\n",
    "dir/sub/c.txt": "c\n",
    "dir.txt": DIR_TXT,
    "é.txt": "unicode\n",
    "link": Symlink("a.txt"),
}


def _wanted(repo: Path, *paths: str) -> list[tuple[str, str]]:
    return [(path, git(repo, "rev-parse", f"HEAD:{path}").strip()) for path in paths]


def _found(repo: Path, wanted: list[tuple[str, str]], max_size: int = 1 << 20) -> dict[str, bytes]:
    return dict(worktree_blobs(repo, wanted, max_size=max_size))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_repo(tmp_path / "repo", FILES)


def test_a_clean_checkout_gives_every_file_blob_with_its_content(repo: Path) -> None:
    paths = ("a.txt", "dir/b.txt", "dir/sub/c.txt", "dir.txt", "é.txt", "graven.toml")
    wanted = _wanted(repo, *paths)
    found = _found(repo, list(reversed(wanted)))  # any order in
    assert found == {oid: (repo / path).read_bytes() for path, oid in wanted}


def test_what_differs_from_the_blob_is_left_to_git(repo: Path) -> None:
    wanted = _wanted(repo, "a.txt", "dir/b.txt", "dir/sub/c.txt", "é.txt")
    write_files(repo, {"a.txt": "A\n"})  # same size, other content
    (repo / "dir" / "b.txt").write_text("b\nlonger\n")
    (repo / "é.txt").unlink()
    found = _found(repo, wanted)
    assert set(found) == {wanted[2][1]}


def test_nothing_is_read_through_a_symbolic_link(repo: Path, tmp_path: Path) -> None:
    wanted = _wanted(repo, "a.txt", "dir/b.txt", "dir/sub/c.txt")
    # identical content elsewhere, reached through a linked directory and a linked file
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "b.txt").write_text("b\n")
    (elsewhere / "sub" / "c.txt").write_text("c\n")
    os.rename(repo / "dir", tmp_path / "moved")
    os.symlink(elsewhere, repo / "dir")
    os.rename(repo / "a.txt", tmp_path / "a.txt")
    os.symlink(tmp_path / "a.txt", repo / "a.txt")
    assert _found(repo, wanted) == {}


def test_a_fifo_or_a_directory_at_the_path_is_skipped_without_blocking(repo: Path) -> None:
    wanted = _wanted(repo, "a.txt", "dir.txt")
    (repo / "a.txt").unlink()
    os.mkfifo(repo / "a.txt")
    (repo / "dir.txt").unlink()
    (repo / "dir.txt").mkdir()
    assert _found(repo, wanted) == {}


def test_a_fifo_is_never_opened(repo: Path) -> None:
    # opening a FIFO would release a writer blocked in open(2) (which then dies of SIGPIPE)
    wanted = _wanted(repo, "a.txt")
    (repo / "a.txt").unlink()
    os.mkfifo(repo / "a.txt")
    writer = subprocess.Popen(["sh", "-c", "exec 3>a.txt; echo opened"], cwd=repo, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        assert _found(repo, wanted) == {}
        time.sleep(0.2)
        assert writer.poll() is None  # still waiting for a reader
    finally:
        writer.kill()
        writer.wait()


def test_names_are_opened_as_git_spells_them_whatever_the_locale(repo: Path) -> None:
    # an ASCII filesystem encoding cannot encode "é.txt": the bytes come from UTF-8, never the locale
    oid = git(repo, "rev-parse", "HEAD:é.txt").strip()
    code = (
        "import sys; from pathlib import Path; from graven.sources.worktree import worktree_blobs; "
        "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding(); "
        f"print(dict(worktree_blobs(Path(sys.argv[1]), [('\\u00e9.txt', {oid!r})], max_size=99)))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code, os.fsencode(repo)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr({oid: b"unicode\n"})


def test_paths_with_dot_segments_are_not_looked_up(repo: Path, tmp_path: Path) -> None:
    # a crafted tree could name such paths; git never checks them out and graven never opens them
    (tmp_path / "outside.txt").write_text("a\n")
    oid = git(repo, "rev-parse", "HEAD:a.txt").strip()
    hostile = [("../outside.txt", oid), ("dir/../a.txt", oid), ("./a.txt", oid), ("dir//b.txt", oid)]
    assert _found(repo, hostile) == {}
    assert _found(repo, [*hostile, ("a.txt", oid)]) == {oid: b"a\n"}


def test_files_of_max_size_or_more_and_odd_ids_are_left_to_git(repo: Path) -> None:
    wanted = _wanted(repo, "a.txt", "dir.txt")
    assert set(_found(repo, wanted, max_size=3)) == {wanted[0][1]}  # a.txt is 2 bytes
    assert _found(repo, [("a.txt", "abc")]) == {}
    assert _found(repo.parent / "no-such-dir", wanted) == {}


def test_blob_ids_agree_with_git_in_sha1_and_sha256_repositories(tmp_path: Path) -> None:
    for object_format, length in (("sha1", 40), ("sha256", 64)):
        repo = tmp_path / object_format
        repo.mkdir()
        git(repo, "init", "-q", f"--object-format={object_format}")
        for name, data in (("empty", b""), ("text", b"hello\n"), ("binary", bytes(range(256)) * 9)):
            (repo / name).write_bytes(data)
            assert blob_id(data, hex_length=length) == git(repo, "hash-object", name).strip()


def test_a_sha256_repository_is_read_from_its_working_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo256"
    repo.mkdir()
    git(repo, "init", "-q", "--object-format=sha256")
    write_files(repo, {"x/y.txt": "why\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    oid = git(repo, "rev-parse", "HEAD:x/y.txt").strip()
    assert len(oid) == 64
    assert _found(repo, [("x/y.txt", oid)]) == {oid: b"why\n"}


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=3000))
def test_blob_id_is_gits_object_id(data: bytes) -> None:
    import hashlib

    assert blob_id(data, hex_length=40) == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert blob_id(data, hex_length=64) == hashlib.sha256(b"blob %d\0" % len(data) + data).hexdigest()


def test_a_blob_at_several_paths_is_given_once_from_any_path_that_holds_it(tmp_path: Path) -> None:
    repo = create_repo(tmp_path / "repo", {"one.txt": "twin\n", "sub/two.txt": "twin\n"})
    oid = git(repo, "rev-parse", "HEAD:one.txt").strip()
    wanted = [("one.txt", oid), ("sub/two.txt", oid)]
    assert list(worktree_blobs(repo, wanted, max_size=99)) == [(oid, b"twin\n")]
    (repo / "one.txt").write_text("edit\n")  # the first path no longer holds it: the second does
    assert list(worktree_blobs(repo, wanted, max_size=99)) == [(oid, b"twin\n")]


def test_a_file_is_read_with_one_read_and_a_grown_one_is_left_to_git(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = _wanted(repo, "a.txt", "dir/b.txt")
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    assert _found(repo, wanted) == {wanted[0][1]: b"a\n", wanted[1][1]: b"b\n"}
    assert reads == [3, 3]  # size + 1 each, and no second read to find the end

    # a read that gives one byte more than fstat said: the file grew meanwhile (git's copy is used)
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, n - 1) + b"+")
    assert _found(repo, wanted) == {}


def test_a_short_read_goes_on_to_the_end_of_the_file(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = _wanted(repo, "dir.txt")
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 5)))  # 5 bytes at a time
    assert _found(repo, wanted) == {wanted[0][1]: DIR_TXT.encode()}
