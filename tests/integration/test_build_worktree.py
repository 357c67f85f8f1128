"""graven build takes a blob from the working tree only when the file there is exactly that blob:
the artifact is always the commit's content, whatever the working tree holds."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from conftest import Executable, Symlink, commit_all, git, write_files
from graven.sources.git import BlobStream, GitRepo

Run = Callable[..., tuple[int, str, str]]

FILES = {
    "app/main.py": "print('main')\n",
    "app/util.py": "X = 1\n",
    "bin/run": Executable("#!/bin/sh\nexec app\n"),
    "docs/link": Symlink("../app/main.py"),
    "same/one.txt": "twin\n",
    "same/two.txt": "twin\n",
}


@pytest.fixture
def from_git(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The blob ids the build asks ``git cat-file`` for."""
    asked: list[str] = []
    original = GitRepo.open_blobs

    def spy(self: GitRepo, oids: Iterable[str]) -> BlobStream:
        oids = list(oids)
        asked.extend(oids)
        return original(self, oids)

    monkeypatch.setattr(GitRepo, "open_blobs", spy)
    return asked


def _build(run_cli: Run, *args: object) -> dict[str, object]:
    code, out, err = run_cli("build", "--json", *args)
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def _oid(repo: Path, rev_path: str) -> str:
    return git(repo, "rev-parse", rev_path).strip()


def test_a_clean_checkout_is_read_from_the_working_tree_with_the_same_digest(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    from_git: list[str],
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    built = _build(run_cli, "-C", repo)
    assert from_git == [_oid(repo, "HEAD:docs/link")]  # only the symlink's blob came from git
    assert built["files_read"] == 6  # graven.toml, 4 distinct file blobs, the link
    assert built["files_from_worktree"] == 5

    monkeypatch.setenv("GRAVEN_HOME", str(new_home("plain")))
    from_git.clear()
    plain = _build(run_cli, "-C", repo, "--no-cache")  # every blob from git
    assert len(from_git) == 6
    assert plain["digest"] == built["digest"]
    assert plain["files_from_worktree"] == 0
    code, _, err = run_cli("build", "-C", repo)  # the same commit again: every blob is known
    assert code == 0
    assert "(0 read)" in err
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("third")))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0
    assert "(6 read, 5 from the working tree)" in err


def test_uncommitted_changes_never_reach_the_artifact(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    from_git: list[str],
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    expected = _build(run_cli, "-C", repo, "--no-cache")["digest"]
    # a new home, so that nothing is known: the same size with other bytes, a longer file, a file
    # replaced by a link to an identical copy, a FIFO, a deleted file
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("second-home")))
    write_files(repo, {"app/main.py": "print('MAIN')\n", "app/util.py": "X = 1  # edited\n"})
    (tmp_path / "copy").write_text("twin\n")
    (repo / "same" / "one.txt").unlink()
    os.symlink(tmp_path / "copy", repo / "same" / "one.txt")
    (repo / "same" / "two.txt").unlink()
    os.mkfifo(repo / "same" / "two.txt")
    (repo / "bin" / "run").unlink()
    from_git.clear()
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    assert json.loads(out)["digest"] == expected
    assert "uncommitted changes" in err
    changed = {_oid(repo, f"HEAD:{p}") for p in ("app/main.py", "app/util.py", "same/one.txt", "bin/run")}
    assert changed <= set(from_git)
    assert _oid(repo, "HEAD:graven.toml") not in from_git  # unchanged: from the working tree


def test_an_older_commit_takes_only_the_files_that_did_not_change_since(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    from_git: list[str],
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    first = git(repo, "rev-parse", "HEAD").strip()
    write_files(repo, {"app/util.py": "X = 2\n"})
    commit_all(repo, "second")
    older = _build(run_cli, "-C", repo, first)  # HEAD (and the working tree) is the second commit
    assert _oid(repo, f"{first}:app/util.py") in from_git
    assert _oid(repo, f"{first}:app/main.py") not in from_git
    code, _, err = run_cli("verify", "--json", older["digest"])
    assert code == 0, err
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("plain-home")))
    assert _build(run_cli, "-C", repo, first, "--no-cache")["digest"] == older["digest"]


def test_a_bare_repository_reads_every_blob_from_git(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, from_git: list[str]
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    _build(run_cli, "-C", bare)
    assert len(from_git) == 6


def test_a_checkout_git_converted_is_built_as_the_commit_holds_it(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    from_git: list[str],
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clone through core.autocrlf, eol and ident attributes and the operator's LFS-like filter
    holds other bytes than the blobs: those come from git, the others from the working tree, and the
    digest is that of the raw blobs (an LFS file is its pointer; export-ignore and export-subst,
    which only git archive applies, change nothing). An edit hidden by assume-unchanged or
    skip-worktree never reaches the artifact either."""
    filters = {"clean": "sed s/REAL/POINTER/", "smudge": "sed s/POINTER/REAL/"}
    for name, command in filters.items():
        (tmp_path / f"{name}.sh").write_text(f"#!/bin/sh\n{command}\n")
        (tmp_path / f"{name}.sh").chmod(0o755)
    global_config = tmp_path / "gitconfig"
    global_config.write_text(
        "[core]\n\tautocrlf = true\n"
        f'[filter "lfs"]\n\tclean = {tmp_path / "clean.sh"}\n\tsmudge = {tmp_path / "smudge.sh"}\n'
    )
    attributes = (
        "*.bin filter=lfs -text\ncrlf.txt eol=crlf\nid.txt ident\nbin.dat -text\n"
        "gone.txt export-ignore\nsubst.txt export-subst\n"
    )
    files = {
        ".gitattributes": attributes,
        "a.bin": "POINTER\n",
        "crlf.txt": "one\ntwo\n",
        "auto.txt": "lf\n",
        "id.txt": "$Id$\n",
        "bin.dat": "raw\n",
        "gone.txt": "kept\n",
        "subst.txt": "$Format:%H$\n",
        "hidden.txt": "committed\n",
        "skipped.txt": "committed\n",
    }
    repo = make_repo(tmp_path / "repo", files)
    expected = _build(run_cli, "-C", repo, "--no-cache")["digest"]
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone), env={"GIT_CONFIG_GLOBAL": str(global_config)})
    assert (clone / "a.bin").read_bytes() == b"REAL\n"
    assert (clone / "crlf.txt").read_bytes() == b"one\r\ntwo\r\n"
    assert (clone / "auto.txt").read_bytes() == b"lf\r\n"
    assert (clone / "id.txt").read_bytes().startswith(b"$Id: ")
    (clone / "hidden.txt").write_text("EDITED\n")
    git(clone, "update-index", "--assume-unchanged", "hidden.txt")
    git(clone, "update-index", "--skip-worktree", "skipped.txt")
    (clone / "skipped.txt").write_text("EDITED\n")
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("fresh")))
    from_git.clear()
    built = _build(run_cli, "-C", clone)
    assert built["digest"] == expected
    converted = {_oid(clone, f"HEAD:{p}") for p in ("a.bin", "crlf.txt", "auto.txt", "id.txt", "hidden.txt")}
    assert converted <= set(from_git)
    assert _oid(clone, "HEAD:bin.dat") not in from_git  # not converted: from the working tree


def test_build_check_says_the_check_read_every_file_again(
    graven_home: Path, tmp_path: Path, *, make_repo: Callable[..., Path], run_cli: Run, from_git: list[str]
) -> None:
    """`graven build --check` of a built commit said "(1 read)" (its link), though its second build read every
    blob from git again: the count is the first build's, and the summary now says so."""
    repo = make_repo(tmp_path / "repo", FILES)
    assert run_cli("build", "-C", repo)[0] == 0
    from_git.clear()
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 0, err
    assert len(from_git) >= 6, from_git  # the check read every blob again
    assert " read by the first build; the second read every file again)\n" in err, err
