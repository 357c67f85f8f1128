"""graven build carries the entries of unchanged paths forward from an earlier build of the same
graven.toml, and must give exactly the digest of a build that reads the whole tree."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import commit_all, git

Run = Callable[..., tuple[int, str, str]]

SELECTIVE_TOML = """[artifact]
name = "carry"
include = ["app/**", "conf/**", "bin/**"]
exclude = ["**/*.md"]
"""


def _build(run_cli: Run, repo: Path, *args: object) -> dict[str, object]:
    code, out, err = run_cli("build", "--json", "-C", repo, *args)
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def _full_digest(run_cli: Run, repo: Path) -> object:
    """The digest of a build that reads every blob from git (no cache, nothing carried)."""
    return _build(run_cli, repo, "--no-cache")["digest"]


def _mutate(repo: Path, rng: random.Random, step: int) -> None:
    """One random change of the working tree: add, edit, delete, chmod, symlinks, file <-> dir."""
    files = sorted(p for p in repo.rglob("*") if ".git" not in p.parts and p.name != "graven.toml")
    leaves = [p for p in files if p.is_symlink() or p.is_file()]
    action = rng.choice(["add", "add", "edit", "delete", "chmod", "link", "retarget", "to_dir", "md"])
    top = rng.choice(["app", "conf", "bin", "other"])
    if action == "add" or not leaves:
        path = repo / top / f"sub{rng.randint(0, 2)}" / f"f{step}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {step}\n")
        return
    victim = rng.choice(leaves)
    if action == "edit" and not victim.is_symlink():
        victim.write_text(victim.read_text() + f"edit {step}\n")
    elif action == "delete":
        victim.unlink()
    elif action == "chmod" and not victim.is_symlink():
        victim.chmod(victim.stat().st_mode ^ 0o111)
    elif action == "link":
        victim.unlink()
        victim.symlink_to("x.txt" if rng.random() < 0.5 else ".")
        (victim.parent / "x.txt").write_text(f"x {step}\n")
    elif action == "retarget" and victim.is_symlink():
        target = os.readlink(victim)
        victim.unlink()
        victim.symlink_to("." if target != "." else "x.txt")
        (victim.parent / "x.txt").write_text(f"x {step}\n")
    elif action == "to_dir":
        victim.unlink()
        victim.mkdir()
        (victim / "inner.txt").write_text(f"inner {step}\n")
    elif action == "md":
        (victim.parent / f"NOTES{step}.md").write_text("excluded\n")
    elif victim.is_symlink():
        victim.unlink()
    else:
        victim.write_text(f"rewritten {step}\n")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_carried_builds_equal_full_builds_over_a_random_history(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, seed: int
) -> None:
    rng = random.Random(seed)
    files = {f"{top}/a{i}.txt": f"{top} {i}\n" for top in ("app", "conf", "bin", "other") for i in range(3)}
    files["app/README.md"] = "excluded\n"
    repo = make_repo(tmp_path / "repo", files, SELECTIVE_TOML)
    first = _build(run_cli, repo)
    assert first["digest"] == _full_digest(run_cli, repo)
    for step in range(8):
        for _ in range(rng.randint(1, 3)):
            _mutate(repo, rng, step)
        commit_all(repo, f"step {step}")
        carried = _build(run_cli, repo)
        assert carried["digest"] == _full_digest(run_cli, repo), f"seed {seed}, step {step}"
        code, _, err = run_cli("verify", carried["digest"])
        assert code == 0, err


def test_only_changed_selected_files_are_read(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    files = {f"app/m{i}.py": f"X = {i}\n" for i in range(20)} | {"docs/a.txt": "doc\n"}
    repo = make_repo(tmp_path / "repo", files, SELECTIVE_TOML)
    assert _build(run_cli, repo)["files_read"] == 20
    (repo / "app/m3.py").write_text("X = 'three'\n")
    (repo / "app/new.py").write_text("NEW = 1\n")
    (repo / "docs/a.txt").write_text("not selected\n")
    (repo / "app/m4.py").unlink()
    commit_all(repo, "two files")
    result = _build(run_cli, repo)
    assert result["files_read"] == 2
    assert result["file_count"] == 20
    assert result["digest"] == _full_digest(run_cli, repo)


@pytest.mark.parametrize("tag", ["none", "copied"])
def test_a_builds_row_the_record_key_did_not_tag_is_never_a_carry_base(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, tag: str
) -> None:
    """A red-team review: whoever could write graven.db (not the home's keys) added a builds row that
    named an older artifact as the build of the base commit, newest of all; the next build carried
    that artifact's entries forward for the paths unchanged since, and signed them."""
    repo = make_repo(
        tmp_path / "repo", {"app/run.sh": "echo MALICIOUS\n", "app/x.txt": "1\n"}, SELECTIVE_TOML
    )
    older = _build(run_cli, repo)["digest"]
    (repo / "app/run.sh").write_text("echo safe\n")
    commit_all(repo, "reviewed")
    _build(run_cli, repo)
    with sqlite3.connect(graven_home / "graven.db") as db:  # the reviewed build's row, forged
        db.execute(
            """INSERT INTO builds (digest, name, "commit", repository, revision, pipeline_digest,
                started_at, finished_at, builder, graven_version, invocation_id, tag)
            SELECT ?, name, "commit", repository, revision, pipeline_digest, started_at,
                '9999-12-31T23:59:59Z', builder, graven_version, invocation_id, ?
            FROM builds ORDER BY id DESC LIMIT 1""",
            (older, None if tag == "none" else db.execute("SELECT max(tag) FROM builds").fetchone()[0]),
        )
    db.close()
    (repo / "app/x.txt").write_text("2\n")
    commit_all(repo, "run.sh unchanged")
    result = _build(run_cli, repo)
    assert result["digest"] == _full_digest(run_cli, repo)
    assert result["files_read"] == 1  # the reviewed build (a row with a valid tag) is carried instead


def test_an_earlier_build_of_another_history_is_not_carried(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    # same artifact name and graven.toml, unrelated repositories: the first one's commit is unknown
    # to the second, so git cannot compare them and the second reads its whole tree
    one = make_repo(tmp_path / "one", {"app/a.txt": "one\n"}, SELECTIVE_TOML)
    two = make_repo(tmp_path / "two", {"app/a.txt": "two\n", "app/b.txt": "b\n"}, SELECTIVE_TOML)
    _build(run_cli, one)
    result = _build(run_cli, two)
    assert result["files_read"] == 2
    assert result["digest"] == _full_digest(run_cli, two)


def test_a_carried_object_missing_from_the_store_is_read_again(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    big = os.urandom(2 << 20)  # above the loose threshold: stored as its own file
    repo = make_repo(tmp_path / "repo", {"app/small.txt": "s\n"}, SELECTIVE_TOML)
    (repo / "app/big.bin").write_bytes(big)
    commit_all(repo, "big")
    _build(run_cli, repo)
    loose = [p for p in (graven_home / "objects").rglob("*") if p.is_file() and p.stat().st_size == len(big)]
    assert len(loose) == 1
    loose[0].chmod(0o644)
    loose[0].unlink()
    (repo / "app/small.txt").write_text("changed\n")
    commit_all(repo, "small")
    result = _build(run_cli, repo)
    assert result["files_read"] == 2  # small.txt, and big.bin again: its object had gone
    code, _, err = run_cli("verify", result["digest"])
    assert code == 0, err


def test_a_lost_earlier_manifest_means_a_full_read(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"app/a.txt": "a\n", "app/b.txt": "b\n"}, SELECTIVE_TOML)
    _build(run_cli, repo)
    shutil.rmtree(graven_home / "objects")  # the earlier manifest and every blob: all gone
    (repo / "app/a.txt").write_text("changed\n")
    commit_all(repo, "a")
    result = _build(run_cli, repo)
    assert result["files_read"] == 2
    assert result["digest"] == _full_digest(run_cli, repo)


def test_a_submodule_added_later_is_refused_as_in_a_full_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"app/a.txt": "a\n"}, SELECTIVE_TOML)
    _build(run_cli, repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},app/vendored")
    git(repo, "commit", "-q", "-m", "submodule")
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2, out
    assert "app/vendored: submodules are not supported" in err


def test_a_submodule_that_gitmodules_ignores_is_still_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"app/a.txt": "a\n"}, SELECTIVE_TOML)
    _build(run_cli, repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / ".gitmodules").write_text('[submodule "v"]\n\tpath = app/vendored\n\turl = ./v\n\tignore = all\n')
    git(repo, "add", ".gitmodules")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},app/vendored")
    git(repo, "commit", "-q", "-m", "an ignored submodule")
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2, out
    assert "app/vendored: submodules are not supported" in err


def test_a_planted_tree_in_one_checkout_poisons_no_build_of_another(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """git never hashes the trees it reads: a checkout whose .git someone else can write may hold a
    tree under a commit's real tree id that names another blob for a path. Its build must fail, and
    a later build of that commit from a clean clone (earlier builds of the same graven.toml are
    carried from any repository) must be the commit's true content."""
    clean = make_repo(tmp_path / "clean", {"a.txt": "good\n", "b.txt": "evil\n"})
    evil = git(clean, "rev-parse", "HEAD:b.txt").strip()
    git(clean, "rm", "-q", "b.txt")
    git(clean, "commit", "-q", "-m", "c2")
    untrusted = tmp_path / "untrusted"
    shutil.copytree(clean, untrusted, symlinks=True)
    tree = git(untrusted, "rev-parse", "HEAD^{tree}").strip()
    toml = git(untrusted, "rev-parse", "HEAD:graven.toml").strip()
    body = b"100644 a.txt\0" + bytes.fromhex(evil) + b"100644 graven.toml\0" + bytes.fromhex(toml)
    loose = untrusted / ".git" / "objects" / tree[:2] / tree[2:]
    os.chmod(loose, 0o644)
    loose.write_bytes(zlib.compress(b"tree %d\0" % len(body) + body))

    _build(run_cli, untrusted, "HEAD~1")  # an earlier build of the same graven.toml
    code, out, err = run_cli("build", "-C", untrusted, "HEAD")
    assert code == 1, out
    assert f"git object {tree} does not hash to its id" in err
    code, out, err = run_cli("build", "-C", untrusted, "--no-cache", "HEAD")
    assert code == 1, out
    assert f"git object {tree} does not hash to its id" in err

    carried = _build(run_cli, clean, "HEAD")
    assert carried["digest"] == _full_digest(run_cli, clean)
