"""Reviewed ``graven build`` / ``graven init`` behaviour: every refusal is one ``graven: error:`` line
with exit 2 that names the file, field or path (escaped), and git edge cases (bare repositories,
``:/message`` revisions, a committed graven.toml symlink) work or are refused clearly."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import DEFAULT_TOML, Symlink, commit_all, git, write_files


@pytest.fixture(autouse=True)
def _unsandboxed_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's sandbox = "none" builds run as an operator who allows them."""
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")


ARTIFACT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # docs: the [artifact] name rule
Run = Callable[..., tuple[int, str, str]]
MakeRepo = Callable[..., Path]


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


def _built(result: tuple[int, str, str]) -> tuple[str, str]:
    code, out, err = result
    assert code == 0, err
    return out.splitlines()[-1], err


def _no_artifacts(run_cli: Run) -> None:
    code, out, err = run_cli("artifacts", "--json")
    assert code == 0, err
    assert json.loads(out) == []


APP = {"app/main.py": "print()\n", "app/lib/util.py": "x = 1\n", "README.md": "# r\n"}


# -- 1: invalid globs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[artifact]\nname = "x"\ninclude = ["[z-a]"]\n', "[artifact] include.0 = '[z-a]'"),
        ('[artifact]\nname = "x"\nexclude = ["[b-a]"]\n', "[artifact] exclude.0 = '[b-a]'"),
        ('[artifact]\nname = "x"\n[env.s]\npath = "/srv/x"\nignore = ["[z-a]"]\n', "[env] s.ignore.0"),
    ],
)
def test_an_invalid_glob_is_one_config_error(
    *, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, toml: str, field: str
) -> None:
    repo = make_repo(tmp_path / "repo", APP, toml)
    commit = git(repo, "rev-parse", "HEAD").strip()
    _refused(run_cli("build", "-C", repo), f"graven.toml in {commit[:12]}: {field}", "bad character range")


# -- 2: nothing selected -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "needles"),
    [
        ('include = ["nomatch/**"]', ['include ["nomatch/**"] minus exclude []', "selects no file"]),
        ('exclude = ["**"]', ['include ["**"] minus exclude ["**"]', "selects no file"]),
        ('include = ["./app/**"]', ['include ["./app/**"]', '"./app/**" can never match', "'app/**'"]),
        ('include = ["app/**"]\nexclude = ["app/"]', ['minus exclude ["app/"]']),
        ("include = []", ["[artifact] include must not be empty"]),
    ],
)
def test_a_selection_without_files_is_refused_and_nothing_is_stored(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: MakeRepo,
    run_cli: Run,
    selection: str,
    needles: list[str],
) -> None:
    repo = make_repo(tmp_path / "repo", APP, f'[artifact]\nname = "x"\n{selection}\n')
    _refused(run_cli("build", "-C", repo), "graven.toml in ", *needles)
    _no_artifacts(run_cli)


def test_a_step_build_whose_outputs_are_all_excluded_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    toml = (
        '[artifact]\nname = "x"\nexclude = ["**/*.txt"]\n[build]\nsandbox = "none"\n'
        'steps = ["mkdir -p out && echo x > out/a.txt"]\noutputs = ["out/"]\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    _refused(run_cli("build", "-C", repo), 'selects no file of the step outputs ["out/"]')
    _no_artifacts(run_cli)


def test_patterns_that_add_nothing_are_warned_about(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    toml = (
        '[artifact]\nname = "x"\ninclude = ["app/**", "nomatch/**", "README.md", "./docs/"]\n'
        'exclude = ["./app/secret", "**/*.pyc", "app/lib/"]\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    _, err = _built(run_cli("build", "-C", repo))
    warnings = [line for line in err.splitlines() if line.startswith("graven: warning: ")]
    assert len(warnings) == 3, err
    assert 'include "nomatch/**" adds no file' in warnings[0]
    assert 'include "./docs/" adds no file' in warnings[1]
    assert 'exclude "./app/secret" excludes nothing' in warnings[2]
    assert "built x" in err and ": 2 files" in err  # app/main.py and README.md


def test_outputs_without_steps_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP, '[artifact]\nname = "x"\n[build]\noutputs = ["app/"]\n')
    _refused(run_cli("build", "-C", repo), "[build] outputs is given without steps")


@pytest.mark.parametrize(
    "case",
    [
        ('[env.prod]\npath = "/a"\nrequires = ["prod"]\n', "requires itself"),
        ('[env.prod]\npath = "/a"\nrequires = ["nope"]\n', "requires 'nope', which is not defined"),
        ('[env.a]\npath = "/a"\nrequires = ["b"]\n[env.b]\npath = "/b"\nrequires = ["a"]\n', "cycle"),
        ('[env.Prod]\npath = "/a"\n', "invalid environment name"),
        ('[env.a]\npath = "/a"\n[env.b]\npath = "/a"\n', "directory of its own"),
        (  # not neighbours once sorted: every pair is compared
            '[env.a]\npath = "/s/a"\n[env.b]\npath = "/s/a/b"\n[env.c]\npath = "/s/a/releases/x"\n',
            "inside the files graven keeps",
        ),
    ],
)
def test_environments_no_deploy_would_accept_are_refused_at_build(
    case: tuple[str, str], graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    """Not signed into an artifact that every deploy would then refuse."""
    envs, needle = case
    repo = make_repo(tmp_path / "repo", APP, '[artifact]\nname = "x"\n' + envs)
    _refused(run_cli("build", "-C", repo), needle)
    _no_artifacts(run_cli)


# -- 3, 4, 5: unsafe names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        ({"caf\u00e9": "x", "cafe\u0301/x": "y"}, ["caf\u00e9", "cafe\u0301/", "NFC"]),
        ({"cafe\u0301": "x", "caf\u00e9/x": "y"}, ["cafe\u0301", "caf\u00e9/", "NFC"]),
        ({"d/caf\u00e9/a": "x", "d/cafe\u0301/b": "y"}, ["d/caf\u00e9/", "d/cafe\u0301/", "NFC"]),
    ],
)
def test_nfc_collisions_between_files_and_directories_are_refused(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: MakeRepo,
    run_cli: Run,
    files: dict[str, str],
    needles: list[str],
) -> None:
    repo = make_repo(tmp_path / "repo", files)
    _refused(run_cli("build", "-C", repo), *needles)
    _no_artifacts(run_cli)


@pytest.mark.parametrize("ch", ["\x9b", "\x85", "\x80", "\x9f"])
def test_c1_control_characters_in_paths_are_refused_escaped(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, ch: str
) -> None:
    repo = make_repo(tmp_path / "repo", {f"dir/a{ch}31mX.txt": "x", "ok.txt": "y"})
    line = _refused(run_cli("build", "-C", repo), f"dir/a\\x{ord(ch):02x}31mX.txt", "control characters")
    assert ch not in line


def test_a_symlink_target_that_is_not_utf8_names_the_link(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"a.txt": "a", "d/e/lnk": Symlink("x\udcff\udcfe"), "z": Symlink("a.txt")}
    )
    _refused(run_cli("build", "-C", repo), "d/e/lnk: symlink target x\\xff\\xfe is not valid UTF-8")
    _refused(run_cli("build", "--no-cache", "-C", repo), "d/e/lnk")


def test_step_outputs_name_the_full_path_of_a_bad_name_or_target(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    def steps(command: str) -> str:
        return (
            f'[artifact]\nname = "x"\n[build]\nsandbox = "none"\nsteps = [{json.dumps(command)}]\n'
            'outputs = ["out/"]\n'
        )

    bad_name = "mkdir -p out/sub/deeper && echo x > out/sub/deeper/\"$(printf '\\377x')\""
    repo = make_repo(tmp_path / "repo", APP, steps(bad_name))
    _refused(run_cli("build", "-C", repo), "out/sub/deeper/\\xffx: file name is not valid UTF-8")

    bad_target = "mkdir -p out/sub && ln -s \"$(printf 'to\\377')\" out/sub/link && echo x > out/f"
    write_files(repo, {"graven.toml": steps(bad_target)})
    commit_all(repo)
    _refused(run_cli("build", "-C", repo), "out/sub/link: symlink target to\\xff is not valid UTF-8")


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        # a step that clones or `git init`s inside its outputs (a vendored checkout, say)
        ("git init -q out/vendor && echo x > out/f", "out/vendor/.git/"),
        ("mkdir -p out/.GIT && echo '[core]' > out/.GIT/config && echo x > out/f", "out/.GIT/config"),
        ("mkdir -p out && echo 'gitdir: /tmp/x' > out/.git && echo x > out/f", "out/.git: a path"),
        ("mkdir -p out/repo && ln -s repo out/.git && echo x > out/f", "out/.git: a path"),
        ("mkdir -p out/.git/empty && echo x > out/f", "out/.git/empty: a path"),
    ],
)
def test_step_outputs_through_git_are_refused_as_a_commit_s_tree_is(
    *, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, command: str, needle: str
) -> None:
    """A release holding .git/config makes any git command run there execute what it names
    (core.fsmonitor): a commit cannot hold one (git refuses it), and step outputs may not either."""
    toml = (
        f'[artifact]\nname = "x"\n[build]\nsandbox = "none"\nsteps = [{json.dumps(command)}]\n'
        'outputs = ["out/"]\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    line = _refused(run_cli("build", "-C", repo), "graven: error: [build] outputs: out/", needle)
    assert "a path through .git" in line and "exclude it from the outputs" in line, line
    _no_artifacts(run_cli)


def test_step_outputs_build_once_their_git_directory_is_excluded(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    command = "git init -q out/vendor && echo x > out/vendor/f && echo x > out/.gitignore"
    toml = (
        f'[artifact]\nname = "x"\nexclude = ["out/vendor/.git/"]\n[build]\nsandbox = "none"\n'
        f'steps = [{json.dumps(command)}]\noutputs = ["out/"]\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    digest, _ = _built(run_cli("build", "-C", repo))
    code, out, err = run_cli("show", digest, "--json", "--files")
    assert code == 0, err
    assert sorted(e["path"] for e in json.loads(out)["entries"]) == [
        "out/.gitignore",
        "out/vendor/f",
    ]


def test_an_artifact_an_earlier_graven_built_with_git_outputs_still_verifies_exports_and_deploys(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is for what graven makes now: a manifest stored before it is read as before."""
    import graven.service.build

    srv = tmp_path / "srv"
    command = "mkdir -p out/.git && echo '[core]' > out/.git/config && echo x > out/f"
    toml = (
        f'[artifact]\nname = "x"\n[build]\nsandbox = "none"\nsteps = [{json.dumps(command)}]\n'
        f'outputs = ["out/"]\n[env.staging]\npath = "{srv}"\n'
    )
    repo = make_repo(tmp_path / "repo", APP, toml)
    with monkeypatch.context() as patch:  # as a graven before the rule built it
        patch.setattr(graven.service.build, "_check_no_dotgit", lambda _entries: None)
        digest, _ = _built(run_cli("build", "-C", repo))
    code, _, err = run_cli("verify", digest)
    assert code == 0, err
    code, _, err = run_cli("export", digest, "-o", tmp_path / "x.tar")
    assert code == 0, err
    code, _, err = run_cli("deploy", digest, "staging")
    assert code == 0, err
    assert (srv / "current" / "out" / ".git" / "config").read_text() == "[core]\n"
    # its export is refused by import all the same, saying why without blaming the archive's maker
    code, _, err = run_cli("import", tmp_path / "x.tar")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "out/.git: a path through .git" in line, line
    assert "not made by graven export" not in line and "earlier graven" in line, line


# -- 6: graven init ----------------------------------------------------------------------------------


def test_init_refuses_a_dangling_graven_toml_symlink(tmp_path: Path, run_cli: Run) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "graven.toml").symlink_to("nowhere/at/all.toml")
    _refused(run_cli("init", "-C", repo), "graven.toml already exists")
    assert not (repo / "nowhere").exists()


@pytest.mark.parametrize(
    ("directory", "expected"),
    [
        ("a" * 200, "a" * 128),
        ("My Project!! (v2)", "my-project-v2"),
        ("-" * 3 + "x" * 126 + "...", "x" * 126),
        ("b" * 127 + "-c", "b" * 127),  # truncated to 128, a trailing '-' would be left: dropped
        ("\u00dcber", "ber"),
        ("___", "app"),
    ],
)
def test_init_derives_a_valid_artifact_name_from_any_directory_name(
    graven_home: Path, tmp_path: Path, run_cli: Run, directory: str, expected: str
) -> None:
    repo = tmp_path / directory
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    code, _, err = run_cli("init", "-C", repo)
    assert code == 0, err
    text = (repo / "graven.toml").read_text()
    name = text.split('name = "', 1)[1].split('"', 1)[0]
    assert name == expected and ARTIFACT_NAME.fullmatch(name)
    write_files(repo, {"a.txt": "a"})
    commit_all(repo)
    digest, err = _built(run_cli("build", "-C", repo))
    assert digest.startswith("sha256:") and f"built {name} " in err


# -- 7: git edge cases -------------------------------------------------------------------------------


def test_a_bare_repository_builds_the_same_digest(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP)
    expected, _ = _built(run_cli("build", "-C", repo))
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    digest, err = _built(run_cli("build", "-C", bare))
    assert digest == expected
    assert "uncommitted" not in err and "work tree" not in err
    assert _built(run_cli("build", "main", "-C", bare / "refs"))[0] == expected  # from inside it too


def test_a_message_search_revision_builds_that_commit(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "1"}, message="first: the base")
    write_files(repo, {"a.txt": "2"})
    second = commit_all(repo, "second: tweak")
    write_files(repo, {"a.txt": "3"})
    commit_all(repo, "third")
    by_id, _ = _built(run_cli("build", second, "-C", repo))
    code, out, err = run_cli("build", ":/second: tweak", "--json", "-C", repo)
    assert code == 0, err
    assert json.loads(out)["commit"] == second and json.loads(out)["digest"] == by_id
    git(repo, "tag", "-a", "-m", "annotated", "v1", second)
    assert _built(run_cli("build", "v1", "-C", repo))[0] == by_id
    _refused(
        run_cli("build", ":/no commit says this", "-C", repo), "unknown revision ':/no commit says this'"
    )
    _refused(run_cli("build", ":a.txt", "-C", repo), "unknown revision")  # an index entry: a blob

    from graven.sources.git import GitRepo

    assert GitRepo(repo).resolve(":/second: tweak") == second
    assert GitRepo(repo).resolve("v1") == second


def test_a_committed_graven_toml_symlink_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"real.toml": DEFAULT_TOML, "graven.toml": Symlink("real.toml")}, None
    )
    commit = git(repo, "rev-parse", "HEAD").strip()
    _refused(
        run_cli("build", "-C", repo),
        f"graven.toml in {commit[:12]} is a symlink (to real.toml)",
        "must be a regular file in the commit",
    )


def test_graven_toml_in_a_subdirectory_tree_walk_is_not_confused(
    graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run
) -> None:
    # names around graven.toml in the root tree (sorted before and after it, and a directory)
    files = {"graven.tom": "x", "graven.toml.bak": "y", "graven.toml.d/x": "z", "a b": "w"}
    repo = make_repo(tmp_path / "repo", files)
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    assert json.loads(out)["file_count"] == 5


# -- 8: numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("health_interval = 1e300", "[env] s.health_interval = 1e+300 is too large: at most 86400 seconds"),
        ("health_timeout = inf", "[env] s.health_timeout = inf is too large"),
        ("activate_timeout = 1e20", "[env] s.activate_timeout"),
        ("health_retries = 1000000", "[env] s.health_retries must be at most 1000"),
    ],
)
def test_numbers_that_would_overflow_later_are_refused_at_build(
    *, graven_home: Path, tmp_path: Path, make_repo: MakeRepo, run_cli: Run, setting: str, field: str
) -> None:
    toml = f'[artifact]\nname = "x"\n[env.s]\npath = "{os.fspath(tmp_path / "env")}"\n{setting}\n'
    repo = make_repo(tmp_path / "repo", APP, toml)
    _refused(run_cli("build", "-C", repo), field)
