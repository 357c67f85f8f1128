"""Names git takes for ``.git`` on Windows or macOS (``GIT~1``, ``.git.``, ``.g\\u200cit``, ...) and
symlinks it takes for ``.gitmodules``, at each way into the store: a commit's tree, a build's step
outputs (and what an incremental build carries from an earlier one), and an exported artifact an
earlier graven stored with one (exported with a warning). `graven import` is tested with the other
hostile archives (tests/integration/test_cli_archive.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Symlink, commit_all, git, write_files

Run = Callable[..., tuple[int, str, str]]
MakeRepo = Callable[..., Path]
APP = {"app/main.py": "print()\n"}
Z = "\u200c"  # ZERO WIDTH NON-JOINER: HFS+ (macOS) ignores it in a name


@pytest.fixture(autouse=True)
def _unsandboxed_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's sandbox = "none" builds run as an operator who allows them."""
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")


def _refused(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert code == 2, (code, err)
    assert out == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _no_artifacts(run_cli: Run) -> None:
    code, out, err = run_cli("artifacts", "--json")
    assert code == 0, err
    assert json.loads(out) == []


def _paths(run_cli: Run, digest: str) -> list[str]:
    code, out, err = run_cli("show", digest, "--json", "--files")
    assert code == 0, err
    return sorted(entry["path"] for entry in json.loads(out)["entries"])


def _crafted_commit(repo: Path, mode: str, name: str) -> str:
    """A commit whose root holds graven.toml and ``name`` (a tree holding ``config``, or a blob of
    ``mode``), made with git mktree: git add refuses these names (core.protectNTFS)."""

    def hashed(*args: str, data: bytes) -> str:
        out = subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=True)
        return out.stdout.decode().strip()

    blob = hashed("hash-object", "-w", "--stdin", data=b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
    toml = hashed("hash-object", "-w", "--stdin", data=b'[artifact]\nname = "x"\n')
    if mode == "040000":
        sub = hashed("mktree", data=f"100644 blob {blob}\tconfig\n".encode())
        entry = f"040000 tree {sub}\t{name}"
    else:
        entry = f"{mode} blob {blob}\t{name}"
    root = hashed("mktree", data=f"{entry}\n100644 blob {toml}\tgraven.toml\n".encode())
    return git(repo, "commit-tree", root, "-m", "crafted").strip()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("GIT~1", "'GIT~1' is its short (8.3) name on Windows"),
        (".git.", "Windows drops the trailing dots and spaces of '.git.'"),
        (".git ", "Windows drops the trailing dots and spaces of '.git '"),
        (".git::$INDEX_ALLOCATION", "'.git::$INDEX_ALLOCATION' names it on Windows: an NTFS stream"),
        ("a\\.git", "Windows splits 'a\\\\.git' at each backslash"),
    ],
)
def test_a_commit_holding_a_name_windows_takes_for_dotgit_is_refused(
    *, name: str, why: str, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP)
    commit = _crafted_commit(repo, "040000", name)
    line = _refused(run_cli("build", "-C", repo, commit), f"{name}/config: a path through .git ({why})")
    assert "which git refuses in a tree (git fsck reports it" in line, line
    assert "build a commit without it" in line, line
    _no_artifacts(run_cli)


def test_a_commit_made_by_git_on_linux_with_a_name_macos_takes_for_dotgit_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """git on Linux commits ".g\\u200cit/config" (core.protectHFS is off there); checked out on macOS,
    it is .git/config."""
    repo = make_repo(tmp_path / "repo", {**APP, f".g{Z}it/config": "[core]\n\tfsmonitor = x\n"})
    assert f".g{Z}it/config" in git(repo, "ls-files", "-z").split("\0")  # git itself took it
    _refused(
        run_cli("build", "-C", repo),
        # the CLI shows the invisible code point escaped, in the path as in the name
        "graven: error: .g\\u200cit/config: a path through .git (macOS ignores U+200C in '.g\\u200cit')",
    )
    _no_artifacts(run_cli)


@pytest.mark.parametrize("name", [".gitmodules", "GITMOD~1", ".Gitmodules.", "GI7EBA~1"])
def test_a_commit_holding_a_symlink_named_gitmodules_is_refused(
    name: str, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """git refuses .gitmodules as a symlink (it would read a checkout's submodules through it)."""
    repo = make_repo(tmp_path / "repo", APP)
    commit = _crafted_commit(repo, "120000", name)
    line = _refused(run_cli("build", "-C", repo, commit), f"{name}: a symlink named .gitmodules")
    assert "submodules through it" in line, line
    _no_artifacts(run_cli)


def test_names_that_only_look_like_git_build(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    files = {
        **APP,
        ".gitignore": "*.log\n",
        ".gitmodules": "",  # a file: git reads (and fsck checks) it as any other
        ".github/workflows/ci.yml": "on: push\n",
        "git~2/x": "x\n",  # .git is a clone's first entry: its short name is git~1
        "vendor/lib.git/x": "x\n",
        ".gitx/y": "y\n",
        ".\u0147it/z": "z\n",  # git fsck allows it: only ASCII letters fold
        "links/.gitignore": Symlink("../.gitignore"),  # fsck only notes it
    }
    repo = make_repo(tmp_path / "repo", files)
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    assert _paths(run_cli, out.splitlines()[-1]) == sorted([*files, "graven.toml"])


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("mkdir -p out/GIT~1 && echo '[core]' > out/GIT~1/config", "out/GIT~1/config: a path through .git ("),
        ("mkdir -p 'out/.git. ' && echo x > 'out/.git. /HEAD'", "out/.git. /HEAD: a path through .git ("),
        ("mkdir -p out && ln -s ../x out/.gitmodules", "out/.gitmodules: a symlink named .gitmodules"),
    ],
)
def test_step_outputs_git_refuses_in_a_tree_are_refused(
    *, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, command: str, needle: str
) -> None:
    step = json.dumps(command + " && echo x > out/f")
    toml = f'[artifact]\nname = "x"\n[build]\nsandbox = "none"\nsteps = [{step}]\noutputs = ["out/"]\n'
    repo = make_repo(tmp_path / "repo", APP, toml)
    line = _refused(run_cli("build", "-C", repo), "graven: error: [build] outputs: ", needle)
    assert "which a release must not hold" in line and "exclude it from the outputs" in line, line
    _no_artifacts(run_cli)


def test_an_incremental_build_does_not_carry_a_path_an_earlier_graven_took(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build carries what did not change from an earlier build of the same graven.toml: a path
    an earlier graven took (before it refused names such as GIT~1) is not carried into a new one."""
    import graven.core.paths

    repo = make_repo(tmp_path / "repo", APP)
    write_files(repo, {"GIT~1/config": "[core]\n"})
    git(repo, "-c", "core.protectNTFS=false", "add", "-A")  # git itself refuses it otherwise
    commit_all(repo, "as a graven before the rule took it")
    with monkeypatch.context() as patch:
        patch.setattr(graven.core.paths, "refused_by_git", lambda *_: None)
        code, _, err = run_cli("build", "-C", repo)
        assert code == 0, err
    write_files(repo, {"app/main.py": "print(2)\n"})
    commit_all(repo, "an unrelated change")
    _refused(run_cli("build", "-C", repo), "GIT~1/config: a path through .git ('GIT~1' is its short")


def test_an_artifact_stored_with_one_exports_with_a_warning_and_its_archive_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an earlier graven stored is still verified, deployed and exported (it is what was signed);
    the export says that its archive holds such a name, which graven import refuses."""
    import graven.core.paths

    command = "mkdir -p out/.git. && echo '[core]' > out/.git./config && echo x > out/f"
    toml = (
        f'[artifact]\nname = "x"\n[build]\nsandbox = "none"\nsteps = [{json.dumps(command)}]\n'
        'outputs = ["out/"]\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    with monkeypatch.context() as patch:  # as a graven before the rule built it
        patch.setattr(graven.core.paths, "refused_by_git", lambda *_: None)
        code, out, err = run_cli("build", "-C", repo)
        assert code == 0, err
    digest = out.splitlines()[-1]
    code, _, err = run_cli("verify", digest)
    assert code == 0, err
    archive = tmp_path / "x.tar"
    code, _, err = run_cli("export", digest, "-o", archive)
    assert code == 0, err
    (line,) = err.strip().splitlines()
    assert line.startswith("graven: warning: out/.git./config: a path through .git (Windows drops"), line
    assert line.endswith("graven import refuses this archive: build the artifact again without it"), line
    _refused(run_cli("import", archive), "out/.git.: a path through .git (Windows drops")
