"""Repositories as CI systems and developers really have them (a review of git edge cases): each builds
the commit it names, or is refused in one line that says why, never with a traceback or from another
directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import commit_all, git, git_env, write_files
from graven.errors import SourceError
from graven.sources.git import GitRepo

Run = Callable[..., tuple[int, str, str]]
MakeRepo = Callable[..., Path]
FILES = {"app/main.py": "print('hi')\n"}


def _refused(result: tuple[int, str, str], *needles: str) -> str:
    code, _out, err = result
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert code == 2, (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_a_repository_whose_name_ends_in_a_space_is_that_one(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """git prints the top directory's exact name: stripping it named the sibling without the space."""
    spaced = make_repo(tmp_path / "proj ", FILES)
    git(spaced, "remote", "add", "origin", "https://example.com/spaced.git")
    other = make_repo(tmp_path / "proj", FILES)
    git(other, "remote", "add", "origin", "https://example.com/OTHER.git")
    (spaced / "app" / "main.py").write_text("edited\n")  # only the spaced one is dirty
    code, out, err = run_cli("build", "-C", spaced, "--json")
    assert code == 0, err
    built = json.loads(out)
    assert built["repository"] == "https://example.com/spaced.git"
    assert built["dirty_worktree"] is True


def test_a_repository_path_that_is_not_utf8_is_refused_in_one_line(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")), FILES)
    _refused(run_cli("build", "-C", repo), "is not valid UTF-8", "rename the directory")


def test_a_revision_that_is_not_utf8_is_refused_in_one_line(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    _refused(
        run_cli("build", "-C", repo, os.fsdecode(b"caf\xe9")),
        "REVISION 'caf\\xe9'",
        "not valid UTF-8",
    )


def test_a_commit_without_a_usable_committer_time_is_refused_in_one_line(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    # no zone, a time past 9999, a zone without its sign (git fsck flags it; %ct prints nothing)
    for committer in (b"c <c> 1577836800", b"c <c> 99999999999999999999 +0000", b"c <c> 1577836800 0000"):
        raw = b"tree " + tree.encode() + b"\nauthor a <a> 1577836800 +0000\ncommitter " + committer
        made = subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"],
            cwd=repo,
            input=raw + b"\n\nodd\n",
            capture_output=True,
            check=True,
        )
        commit = made.stdout.decode().strip()
        _refused(run_cli("build", "-C", repo, commit), f"commit {commit[:12]} has no usable committer time")
        with pytest.raises(SourceError, match=f"commit {commit[:12]} has no usable committer time"):
            GitRepo(repo).commit_time(commit)  # what verify --rebuild reads: the same answer


def test_a_shallow_clone_says_so_when_a_revision_is_outside_it(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    write_files(repo, {"app/main.py": "print(2)\n"})
    commit_all(repo, "second")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)], check=True, capture_output=True
    )
    assert run_cli("build", "-C", clone)[0] == 0
    _refused(
        run_cli("build", "-C", clone, "HEAD~1"), "unknown revision", "this clone is shallow", "--unshallow"
    )


def test_a_working_tree_git_cannot_read_is_said_so(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    (repo / ".git" / "index").write_bytes(b"DIRC garbage")
    code, _out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    assert "graven: warning: cannot tell whether the working tree has uncommitted changes" in err


def test_a_graven_toml_committed_as_a_directory_is_named_so(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {**FILES, "graven.toml/x": "not a pipeline\n"}, None)
    _refused(run_cli("build", "-C", repo), "graven.toml in commit", "is a directory")


def test_grafts_do_not_change_what_a_revision_names(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """As replace refs: HEAD~1 is the commit's real parent, whatever .git/info/grafts says."""
    repo = make_repo(tmp_path / "repo", FILES)
    first = git(repo, "rev-parse", "HEAD").strip()
    write_files(repo, {"app/main.py": "print(2)\n"})
    second = commit_all(repo, "second")
    write_files(repo, {"app/main.py": "print(3)\n"})
    third = commit_all(repo, "third")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "grafts").write_text(f"{third} {first}\n")  # pretend third follows first
    code, out, err = run_cli("build", "-C", repo, "HEAD~1", "--json")
    assert code == 0, err
    assert json.loads(out)["commit"] == second


@pytest.mark.needs_root("a repository of another user needs root to make")
def test_a_repository_of_another_user_says_why_git_refuses_it(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    for root, dirs, files in os.walk(repo):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), 65534, 65534)
    os.lchown(repo, 65534, 65534)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # no safe.directory of this machine's
    line = _refused(
        run_cli("build", "-C", repo), "belongs to another user (dubious ownership)", "safe.directory"
    )
    assert "\\x09" not in line


@pytest.mark.parametrize("name", [".git", ".GIT"])
def test_a_crafted_tree_holding_a_git_directory_is_refused(
    name: str, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """git refuses to commit a .git (git fsck flags a tree that holds one); in a release, its config
    could make any git command run there execute what it names."""
    repo = make_repo(tmp_path / "repo", FILES)

    def hashed(*args: str, data: bytes) -> str:
        out = subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=True)
        return out.stdout.decode().strip()

    blob = hashed("hash-object", "-w", "--stdin", data=b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
    toml = hashed("hash-object", "-w", "--stdin", data=b'[artifact]\nname = "x"\n')
    sub = hashed("mktree", data=f"100644 blob {blob}\tconfig\n".encode())
    root = hashed("mktree", data=f"040000 tree {sub}\t{name}\n100644 blob {toml}\tgraven.toml\n".encode())
    commit = git(repo, "commit-tree", root, "-m", "crafted").strip()
    _refused(run_cli("build", "-C", repo, commit), f"{name}/config: a path through .git")


def test_programs_a_repository_configures_never_run_in_a_build(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout graven did not clone (a CI cache, a rebuild's -C REPO) may name programs in its
    .git/config. A review had `git status` (the dirty check) run core.fsmonitor as graven's user,
    with GRAVEN_SIGNING_KEY in its environment; a clean filter runs the same way for a file whose
    stat changed. Neither runs now, and the dirty check still sees an edit."""
    canary = tmp_path / "canary"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$0 ${{GRAVEN_SIGNING_KEY:-}}" >> {canary}\ncat\n')
    hook.chmod(0o755)
    repo = make_repo(tmp_path / "repo", {**FILES, ".gitattributes": "* filter=evil\n"})
    git(repo, "config", "core.fsmonitor", str(hook))
    git(repo, "config", "filter.evil.clean", str(hook))
    git(repo, "config", "filter.evil.required", "true")
    # and one in a worktree's own configuration (a review of the first fix found it ran)
    git(repo, "config", "extensions.worktreeConfig", "true")
    git(repo, "config", "--worktree", "filter.wt.clean", str(hook))
    (repo / ".gitattributes").write_text("*.py filter=evil\n*.txt filter=wt\n")
    (repo / "a.txt").write_text("a\n")
    commit_all(repo, "attributes")
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", str(graven_home / "keys" / "default.key"))
    (repo / "app" / "main.py").write_text("print('edited')\n")  # the dirty check sees an edit
    (repo / "a.txt").write_text("b\n")  # same size, new mtime: git must clean it to compare
    os.utime(repo / "a.txt", (1, 1))
    canary.unlink(missing_ok=True)  # the test's own commits ran the filters: from here on, graven
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    assert json.loads(out)["dirty_worktree"] is True
    assert not canary.exists(), canary.read_text()


def test_a_filter_of_the_users_own_configuration_still_runs_for_the_dirty_check(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the repository's own configuration is distrusted: a filter the operator configured for
    the user (git-lfs installs one in ~/.gitconfig) keeps working, so a checkout whose files git
    stores cleaned is not called dirty (a review of the first fix saw every touched LFS file so)."""
    filters = {"clean": "sed s/REAL/POINTER/", "smudge": "sed s/POINTER/REAL/"}
    for name, command in filters.items():
        (tmp_path / f"{name}.sh").write_text(f"#!/bin/sh\n{command}\n")
        (tmp_path / f"{name}.sh").chmod(0o755)
    global_config = tmp_path / "gitconfig"
    global_config.write_text(
        f'[filter "lfs"]\n\tclean = {tmp_path / "clean.sh"}\n\tsmudge = {tmp_path / "smudge.sh"}\n'
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    # committed as the filter stores it, then checked out through it (as git lfs does)
    repo = make_repo(
        tmp_path / "repo", {**FILES, ".gitattributes": "*.bin filter=lfs\n", "a.bin": "POINTER\n"}
    )
    (repo / "a.bin").unlink()
    git(repo, "checkout", "--", "a.bin", env=git_env({"GIT_CONFIG_GLOBAL": str(global_config)}))
    assert (repo / "a.bin").read_text() == "REAL\n"
    os.utime(repo / "a.bin", (1, 1))  # a stat change: status cleans the file again to compare
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    assert json.loads(out)["dirty_worktree"] is False


def test_the_users_filter_still_runs_when_the_repository_names_the_same_one(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git lfs install --local` (actions/checkout with `lfs: true` runs it) writes the filter the
    operator also has in ~/.gitconfig into .git/config. Emptying the repository's filter emptied the
    operator's too, so every touched LFS file was called dirty; the operator's commands stay, and
    a command only the repository names is still emptied."""
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\necho ran >> {canary}\ncat\n")
    evil.chmod(0o755)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "b.txt").write_text("b\n")
    filters = {"clean": "sed s/REAL/POINTER/", "smudge": "sed s/POINTER/REAL/"}
    for name, command in filters.items():
        (tmp_path / f"{name}.sh").write_text(f"#!/bin/sh\n{command}\n")
        (tmp_path / f"{name}.sh").chmod(0o755)
    global_config = tmp_path / "gitconfig"
    global_config.write_text(
        f'[filter "lfs"]\n\tclean = {tmp_path / "clean.sh"}\n\tsmudge = {tmp_path / "smudge.sh"}\n'
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    repo = make_repo(
        tmp_path / "repo",
        {**FILES, ".gitattributes": "*.bin filter=lfs\n*.txt filter=own\n", "a.bin": "POINTER\n"},
    )
    for name in filters:  # the same commands, as `git lfs install --local` writes them
        git(repo, "config", f"filter.lfs.{name}", str(tmp_path / f"{name}.sh"))
    (repo / "a.bin").unlink()
    git(repo, "checkout", "--", "a.bin", env=git_env({"GIT_CONFIG_GLOBAL": str(global_config)}))
    assert (repo / "a.bin").read_text() == "REAL\n"
    git(repo, "config", "filter.lfs.required", "true")
    git(repo, "config", "filter.own.clean", str(evil))  # the repository's own: never run
    git(repo, "config", "filter.own.required", "true")
    os.utime(repo / "a.bin", (1, 1))  # a stat change: status cleans the file again to compare
    os.utime(repo / "b.txt", (1, 1))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    assert json.loads(out)["dirty_worktree"] is False, err
    assert not canary.exists()


def test_a_git_status_that_cannot_start_is_a_warning_not_a_failed_build(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: once the dirty check started git from a thread, a failure to start it (EMFILE) was
    raised after the build had stored its objects, and the build went unrecorded. It is said."""
    repo = make_repo(tmp_path / "repo", FILES)

    # git status alone cannot start (as with EMFILE): a program that is not there
    monkeypatch.setattr("graven.sources.git._STATUS", (str(tmp_path / "no-git"), "status"))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    assert "cannot tell whether the working tree has uncommitted changes" in err
    assert json.loads(out)["digest"].startswith("sha256:")


def test_a_partial_clone_whose_promisor_is_gone_says_the_object_is_missing(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a": "1\n"}, '[artifact]\nname = "old"\n')
    git(repo, "config", "uploadpack.allowFilter", "true")
    write_files(repo, {"a": "2\n", "graven.toml": '[artifact]\nname = "x"\n'})
    commit_all(repo, "2")
    write_files(repo, {"a": "3\n"})
    commit_all(repo, "3")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--filter=blob:none", f"file://{repo}", str(clone))
    git(clone, "remote", "set-url", "origin", f"file://{tmp_path}/gone")  # offline, moved
    toml = git(clone, "rev-parse", "HEAD~2:graven.toml").strip()
    blob = git(clone, "rev-parse", "HEAD~1:a").strip()
    # graven.toml's blob is not local: not "graven.toml not found ... graven init"
    _refused(
        run_cli("build", "-C", clone, "HEAD~2"),
        f"object {toml} is not in this repository (a partial clone: its promisor remote could not "
        "give it: fatal: could not fetch",
    )
    # graven.toml is local, another file's blob is not: not "cannot read blob X:" and nothing more
    _refused(run_cli("build", "-C", clone, "HEAD~1"), f"object {blob} is not in this repository", "fatal:")


@pytest.mark.parametrize("command", ["cat-file", "rev-parse"])
@pytest.mark.usefixtures("graven_home")
def test_a_git_killed_under_the_build_is_a_failure_not_an_unknown_revision(
    tmp_path: Path,
    make_repo: MakeRepo,
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """A fault-injection review: git killed by a signal (the OOM killer, a CI timeout) while it was asked
    for the commit made an existing HEAD "unknown revision ... (commit first ...)", exit 2, telling the
    user to fix what they typed. It is said as git's failure (exit 1), and the next build works."""
    repo = make_repo(tmp_path / "repo", FILES)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *{command}*) kill -9 $$;; esac\nexec {shutil.which("git")} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out, err = run_cli("build", "-C", repo)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert "killed" in lines[0] and "unknown revision" not in lines[0], lines[0]
    assert code == 1, (code, err)
    assert out == ""
    monkeypatch.setenv("PATH", os.environ["PATH"].removeprefix(f"{bin_dir}:"))
    assert run_cli("build", "-C", repo)[0] == 0


def test_a_lazy_fetch_runs_no_command_the_repositorys_own_config_names(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: in a partial clone, git fetches a blob it lacks from the promisor remote as graven reads
    it, and that fetch ran what the clone's own .git/config names (remote.*.uploadpack, the upload-pack
    of a file:// or ssh remote; core.sshCommand): a checkout graven did not clone ran its command. The
    operator's own settings stay, and a clone that names none still fetches its blobs."""
    repo = make_repo(tmp_path / "repo", {"a": "1\n"})
    git(repo, "config", "uploadpack.allowFilter", "true")
    operator = tmp_path / "gitconfig"
    operator.write_text("[core]\n\tsshCommand = false\n")  # the user's own: it fails at once
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(operator))
    mark = tmp_path / "ran"
    clones = []
    for name, key, value in (
        ("plain", "", ""),
        ("pack", "remote.origin.uploadpack", f"touch {mark}; git-upload-pack"),
        ("ssh", "core.sshCommand", f"touch {mark}; false"),
    ):
        clone = tmp_path / name
        git(tmp_path, "clone", "-q", "--no-checkout", "--filter=blob:none", f"file://{repo}", str(clone))
        if name == "ssh":
            git(clone, "remote", "set-url", "origin", "ssh://graven.invalid/repo")
        if key:
            git(clone, "config", key, value)
        clones.append(clone)
    code, out, err = run_cli("build", "-C", clones[0], "--json")
    assert code == 0, err
    assert json.loads(out)["file_count"] == 2
    for clone in clones[1:]:
        _refused(run_cli("build", "-C", clone), "is not in this repository (a partial clone")
        assert not mark.exists(), clone


def _crafted_links(repo: Path, link_target: bytes, *, also_a_file: bool) -> str:
    """A commit of ``repo`` whose tree holds the symlink ``d/l`` to ``link_target`` (and, with
    ``also_a_file``, the regular file ``f`` of the same blob), made without git's checks."""

    def hashed(*args: str, data: bytes) -> str:
        out = subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=True)
        return out.stdout.decode().strip()

    blob = hashed("hash-object", "-w", "--stdin", data=link_target)
    toml = hashed("hash-object", "-w", "--stdin", data=b'[artifact]\nname = "x"\n')
    sub = hashed("mktree", data=f"120000 blob {blob}\tl\n".encode())
    listed = f"040000 tree {sub}\td\n100644 blob {toml}\tgraven.toml\n"
    if also_a_file:
        listed += f"100644 blob {blob}\tf\n"
    return git(repo, "commit-tree", hashed("mktree", data=listed.encode()), "-m", "crafted").strip()


@pytest.mark.usefixtures("graven_home")
@pytest.mark.parametrize("also_a_file", [False, True])
def test_a_symlink_blob_longer_than_a_target_is_refused_unread(
    also_a_file: bool,
    tmp_path: Path,
    make_repo: MakeRepo,
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A symlink's blob is its target: one of megabytes (a crafted tree; a few KB of git objects
    can hold gigabytes of it) was read whole into memory, decoded and split into names before its
    length was refused; the blob of a file of 1 MiB or more that is also a symlink's was streamed
    as the file only, and the link's missing target was a KeyError."""
    import graven.service.build as build_module

    read: list[int] = []
    decode = build_module._link_target

    def spy(data: bytes, oid: str, chosen: list[object]) -> str:
        read.append(len(data))
        return decode(data, oid, chosen)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "_link_target", spy)
    repo = make_repo(tmp_path / "repo", FILES)
    commit = _crafted_links(repo, b"a/" * (1 << 19), also_a_file=also_a_file)
    for flags in ((), ("--no-cache",)):
        refused = run_cli("build", *flags, "-C", repo, commit)
        _refused(refused, "d/l: a symlink target of more than 4096 bytes")
    assert all(size <= 4096 for size in read), read


def test_a_partial_clone_fetches_the_blobs_it_lacks_at_once(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """A review: in a partial clone (``--filter=blob:none``: a CI's clone, or an older commit of a
    developer's), git cat-file fetched each blob it lacked on its own, one fetch (a process, a
    round trip to the remote, a pack file in the clone) per file: 1,000 files took a minute and left
    1,000 packs behind. The blobs the build reads are fetched at once, as git's own checkout does."""
    files = {f"d/f{i}": f"{i}\n" for i in range(40)}
    repo = make_repo(tmp_path / "repo", files)
    git(repo, "config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-checkout", "--filter=blob:none", f"file://{repo}", str(clone))
    packs = clone / ".git" / "objects" / "pack"
    before = len(list(packs.glob("*.pack")))
    code, out, err = run_cli("build", "-C", clone, "--json")
    assert code == 0, err
    assert len(list(packs.glob("*.pack"))) - before <= 2  # a fetch or two, not one per blob
    code, again, err = run_cli("build", "-C", repo, "--no-cache", "--json")
    assert code == 0, err
    assert json.loads(out)["digest"] == json.loads(again)["digest"]


def test_a_repository_that_is_no_partial_clone_spends_no_git_process_on_the_prefetch(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefetch of a partial clone's blobs asked git's configuration on every build (a process, a
    few ms of an incremental build): a repository without a promisor pack is no partial clone."""
    from graven.sources.git import GitRepo

    repo = make_repo(tmp_path / "repo", {f"f{i}": f"{i}\n" for i in range(5)})
    asked: list[tuple[str, ...]] = []
    real = GitRepo._run

    def run(self: GitRepo, *args: str, **kwargs: object) -> object:
        asked.append(args)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(GitRepo, "_run", run)
    code, _, err = run_cli("build", "-C", repo, "--no-cache")
    assert code == 0, err
    assert not [args for args in asked if args[:1] in (("config",), ("rev-list",))], asked


@pytest.mark.usefixtures("graven_home")
@pytest.mark.parametrize(("mode", "kind"), [("100644", "tree"), ("120000", "tree"), ("40000", "blob")])
def test_a_tree_entry_naming_an_object_of_another_kind_is_refused_as_crafted(
    tmp_path: Path, make_repo: MakeRepo, run_cli: Run, mode: str, kind: str
) -> None:
    """A review: a crafted tree (git fsck reports it) whose file or symlink entry names a tree, or whose
    directory entry names a blob, failed as git's failure (exit 1: "git cat-file cannot read blob X: X
    tree 34"), as if the disk had failed underneath graven. It is refused as the input it is (exit 2),
    as a tree holding a name twice is."""
    repo = make_repo(tmp_path / "repo", FILES)

    def written(kind_: str, data: bytes) -> str:
        args = ["git", "hash-object", "-w", "--literally", "-t", kind_, "--stdin"]
        found = subprocess.run(args, cwd=repo, input=data, capture_output=True, check=True)
        return found.stdout.decode().strip()

    toml = git(repo, "rev-parse", "HEAD:graven.toml").strip()
    other = git(repo, "rev-parse", "HEAD:app" if kind == "tree" else "HEAD:app/main.py").strip()
    entries = [(mode.encode(), b"f", other), (b"100644", b"graven.toml", toml)]
    tree = written("tree", b"".join(m + b" " + n + b"\0" + bytes.fromhex(o) for m, n, o in entries))
    crafted = git(repo, "commit-tree", tree, "-m", "crafted").strip()
    _refused(run_cli("build", "-C", repo, crafted), other, f"is a {kind}", "git fsck")


def test_a_commit_naming_one_deep_tree_from_many_places_is_refused_before_it_takes_gigabytes(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review of import found paths 2,048 levels deep implying gigabytes of directory names; in git
    the same takes a few objects (one chain of trees, named from many top-level entries), and the
    build's checks held every implied directory. Bounded (MAX_IMPLIED_BYTES), one line, exit 2."""
    from graven.core import paths

    monkeypatch.setattr(paths, "MAX_IMPLIED_BYTES", 16 << 20)  # the test's memory: 8 paths imply ~32 MiB
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    deep = "a/" * 2044 + "f"
    files = {"graven.toml": '[artifact]\nname = "demo"\n', **{f"{i:05d}/{deep}": "x\n" for i in range(8)}}
    stream = ["commit refs/heads/main", "committer t <t@x> 1704164645 +0000", "data 1", "x"]
    for name, text in files.items():
        stream += [f"M 100644 inline {name}", f"data {len(text.encode())}", text.rstrip("\n")]
    subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=repo,
        input="\n".join(stream).encode() + b"\n",
        check=True,
        env=git_env(),
    )
    code, out, err = run_cli("build", "-C", repo, "main")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "MiB of names" in err and "Traceback" not in err, err
