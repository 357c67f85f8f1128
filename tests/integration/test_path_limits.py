"""An artifact holds at most graven.core.paths.MAX_ENTRIES paths, however they come: a commit's tree, an
archive to import, a build's outputs. A few kilobytes of git objects that nest one tree in itself ten
times over (a "git bomb") list millions of paths; graven held them all in memory (10^6 took 777 MB, one
level more would have taken ~8 GB). The limit is lowered here to keep the tests small."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from conftest import create_repo, git
from graven.core import paths

Run = Callable[..., tuple[int, str, str]]


def _bomb(repo: Path, levels: int, width: int = 10, *, files: bool = True) -> str:
    """Commit a tree ``bomb`` that nests one tree ``width`` times at each of ``levels`` levels (width **
    (levels + 1) files from a handful of objects; without ``files``, empty trees at the bottom: no
    file, only directories); the commit id."""
    blob = _hash(repo, b"x\n")
    files_of = [f"100644 blob {blob}\tf{i}" for i in range(width)] if files else []
    tree = _mktree(repo, files_of) if files_of else _hash(repo, b"", "tree")
    for _ in range(levels):
        tree = _mktree(repo, [f"040000 tree {tree}\td{i}" for i in range(width)])
    listed = git(repo, "ls-tree", "HEAD").splitlines()
    root = _mktree(repo, [*listed, f"040000 tree {tree}\tbomb"])
    commit = git(repo, "commit-tree", root, "-p", "HEAD", "-m", "bomb").strip()
    git(repo, "update-ref", "HEAD", commit)
    return commit


def _hash(repo: Path, data: bytes, kind: str = "blob") -> str:
    import subprocess

    from conftest import git_env

    done = subprocess.run(
        ["git", "hash-object", "-t", kind, "-w", "--stdin"],
        cwd=repo,
        input=data,
        capture_output=True,
        env=git_env(),
        check=True,
    )
    return done.stdout.decode().strip()


def _mktree(repo: Path, lines: list[str]) -> str:
    import subprocess

    from conftest import git_env

    done = subprocess.run(
        ["git", "mktree"],
        cwd=repo,
        input="\n".join(lines).encode() + b"\n",
        capture_output=True,
        env=git_env(),
        check=True,
    )
    return done.stdout.decode().strip()


@pytest.mark.parametrize("built_before", [False, True], ids=["listed", "carried"])
def test_a_commit_whose_tree_lists_too_many_paths_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, built_before: bool
) -> None:
    repo = create_repo(tmp_path / "repo", {"a.txt": "a\n"})
    if built_before:  # the next build compares the commits (carried forward): the bomb is what changed
        code, _, err = run_cli("build", "-C", repo)
        assert code == 0, err
    commit = _bomb(repo, levels=2)  # 1,000 files
    monkeypatch.setattr(paths, "MAX_ENTRIES", 500)
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2, (out, err)
    assert err.strip() == (
        f"graven: error: more than 500 paths in the tree of commit {commit[:12]}: graven takes at most "
        'that many in one artifact (a tree that nests one tree in itself many times over, a "git bomb", '
        "lists millions from a few objects)"
    )
    monkeypatch.setattr(paths, "MAX_ENTRIES", 1_002)  # the bomb, a.txt and graven.toml
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err  # the limit is what refused it


@pytest.mark.parametrize("built_before", [False, True], ids=["listed", "carried"])
def test_a_commit_whose_tree_nests_only_directories_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, built_before: bool
) -> None:
    """Empty trees nested in themselves list no file: the limit, counted in files alone, never came,
    and ten levels of ten took hours to walk (carried forward: the comparison's list of directories
    to descend held them all in memory)."""
    repo = create_repo(tmp_path / "repo", {"a.txt": "a\n"})
    if built_before:
        code, _, err = run_cli("build", "-C", repo)
        assert code == 0, err
    commit = _bomb(repo, levels=2, files=False)  # 111 directories, no file
    monkeypatch.setattr(paths, "MAX_ENTRIES", 100)
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2, (out, err)
    assert err.startswith(f"graven: error: more than 100 paths in the tree of commit {commit[:12]}:"), err


def test_a_tree_nested_in_itself_is_read_once(
    graven_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing read the trees a level at a time, each tree once per place it is named: a bomb of
    a hundred names per tree and four levels asked for 10^8 trees at its last level (memory and hours)
    before the limit was ever counted. Each tree is asked for once."""
    from graven.sources import git as git_source

    repo = create_repo(tmp_path / "repo", {"a.txt": "a\n"})
    commit = _bomb(repo, levels=3)
    asked: list[list[str]] = []
    trees = git_source._Objects.trees

    def counting(self: git_source._Objects, oids: Iterable[str], into: dict[str, bytes]) -> None:
        listed = list(oids)
        asked.append(listed)
        trees(self, listed, into)

    monkeypatch.setattr(git_source._Objects, "trees", counting)
    assert len(git_source.GitRepo(repo).ls_tree(commit)) == 10_002
    assert asked and all(len(level) == len(set(level)) for level in asked), [len(x) for x in asked]


def test_an_archive_with_too_many_paths_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = create_repo(tmp_path / "repo", {f"d/f{i}.txt": f"{i}\n" for i in range(30)})
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    archive = tmp_path / "a.tar"
    assert run_cli("export", out.strip().splitlines()[-1], "-o", archive)[0] == 0
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "other-home"))
    monkeypatch.setattr(paths, "MAX_ENTRIES", 20)
    code, _, err = run_cli("import", archive)
    assert code == 2, err
    assert err.startswith("graven: error: more than 20 paths in the archive:") and len(err.splitlines()) == 1


def _outputs_repo(tmp_path: Path, step: str, outputs: list[str]) -> Path:
    listed = ", ".join(f'"{output}"' for output in outputs)
    toml = f'[artifact]\nname = "many"\n\n[build]\nsteps = ["{step}"]\noutputs = [{listed}]\n'
    return create_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)


@pytest.mark.parametrize(
    ("outputs", "limits"),
    [
        # 40 files below out/: refused at 20, taken at 41 (out/ itself counts)
        ((["mkdir out && for i in $(seq 40); do : > out/f$i; done", "out/"]), (20, 41)),
        # 21 files named one by one: they were counted before the path at hand was added, so one
        # path more than the limit went through, where a commit's tree and an archive stop at it
        (["touch " + " ".join(f"f{i}" for i in range(21)), *(f"f{i}" for i in range(21))], (20, 21)),
    ],
    ids=["a-directory", "one-past-the-limit"],
)
@pytest.mark.usefixtures("graven_home")
def test_build_outputs_with_too_many_paths_are_refused(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, outputs: list[str], limits: tuple[int, int]
) -> None:
    step, *paths_out = outputs
    repo = _outputs_repo(tmp_path, step, paths_out)
    refused, taken = limits
    monkeypatch.setattr(paths, "MAX_ENTRIES", refused)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2, err
    assert err.startswith(f"graven: error: more than {refused} paths in the build's outputs:"), err
    monkeypatch.setattr(paths, "MAX_ENTRIES", taken)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err


def _long_paths_archive(path: Path, count: int) -> Path:
    """``count`` empty files, each named by a path of ~3.8 KB in one deep directory (a pax ``path``
    record per member): a few hundred bytes of zstd per thousand of them."""
    import io
    import tarfile

    import zstandard

    deep = "/".join(["d" * 254] * 15)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"{deep}/{i:0200d}"), io.BytesIO(b""))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.SYMTYPE, "/".join(["d" * 254] * 16)
        tar.addfile(link)
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(buf.getvalue()))
    return path


def test_an_archive_whose_paths_make_too_many_bytes_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_ENTRIES paths of up to 4 KB each: a 4.6 MB .tar.zst of 2,000,000 empty files with 3.8 KB
    paths in one directory held ~16 KB per path while it was read (200,000 of them took 3.4 GB, the
    whole of it ~33 GB). The bytes of an artifact's paths and link targets are bounded as they are read."""
    monkeypatch.setattr(paths, "MAX_PATH_BYTES", 200 << 10)
    archive = _long_paths_archive(tmp_path / "long.tar.zst", 60)  # ~233 KB of paths
    code, out, err = run_cli("import", archive)
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1, err
    assert "more than 200.0 KiB of paths and link targets" in err, err
    assert run_cli("artifacts", "--json")[1].strip() == "[]"
    assert not [
        p for p in (graven_home / "objects").rglob("*") if p.is_file() and p.name != "consolidate.lock"
    ]
    monkeypatch.setattr(paths, "MAX_PATH_BYTES", 240 << 10)  # the bound is what refused it
    code, _, err = run_cli("import", archive)
    assert code == 0, err


@pytest.mark.usefixtures("graven_home")
def test_build_outputs_whose_paths_make_too_many_bytes_are_refused(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a build takes, an import of its export takes: the outputs are held to the same bound."""
    repo = _outputs_repo(
        tmp_path, "mkdir out && for i in $(seq 40); do : > out/f$i-$(printf %0200d 0); done", ["out/"]
    )
    monkeypatch.setattr(paths, "MAX_PATH_BYTES", 4 << 10)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2, err
    assert err.startswith(
        "graven: error: the build's outputs: more than 4.0 KiB of paths and link targets"
    ), err
    monkeypatch.setattr(paths, "MAX_PATH_BYTES", 16 << 10)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err
