"""Bad input gives exit 2 and exactly one ``graven: error:`` line on stderr, never a traceback; and the
small contracts of the read-only commands (--version, --json shapes, an empty home)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Symlink, commit_all, git, write_files
from graven import __version__

Run = Callable[..., tuple[int, str, str]]


def _assert_input_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graven: error: "), err
    assert code == 2, (code, err)
    if out:  # with --json: the error as JSON too, so that a script reading stdout gets JSON
        message = lines[0].removeprefix("graven: error: ")
        assert json.loads(out) == {"ok": False, "error": {"exit_code": 2, "message": message}}, out
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@pytest.fixture
def repo(graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path]) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "a\n"})


# -- build -------------------------------------------------------------------------------------------


def test_unknown_revision(repo: Path, run_cli: Run) -> None:
    _assert_input_error(run_cli("build", "no-such-branch", "-C", repo), "no-such-branch")
    _assert_input_error(run_cli("build", "--json", "deadbeef" * 5, "-C", repo), "deadbeef")
    _assert_input_error(run_cli("build", "HEAD~5", "-C", repo), "HEAD~5")


def test_an_empty_or_multiline_revision_says_how_to_name_one(repo: Path, run_cli: Run) -> None:
    """`graven build "$REV"` with REV unset said only "invalid revision ''": neither what is wrong
    with it nor what to give instead."""
    line = _assert_input_error(run_cli("build", "", "-C", repo, "--json"), "invalid revision ''")
    assert line.endswith(
        "it is empty; name a branch, tag or commit id, or leave REVISION out to build HEAD"
    ), line
    for revision in ("HEAD\nmain", "HEAD\r", "HEAD\0"):
        line = _assert_input_error(run_cli("build", revision, "-C", repo), "invalid revision 'HEAD\\")
        assert line.endswith("a revision holds no line break or NUL; name a branch, tag or commit id"), line


def test_commit_without_graven_toml(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "bare", {"a.txt": "a\n"}, None)
    (repo / "graven.toml").write_text('[artifact]\nname = "uncommitted"\n')  # in the tree, not the commit
    _assert_input_error(run_cli("build", "-C", repo), "graven.toml")


def test_not_a_git_repository(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "graven.toml").write_text('[artifact]\nname = "x"\n')
    _assert_input_error(run_cli("build", "-C", plain), str(plain))
    _assert_input_error(run_cli("build", cwd=plain), "not inside a git repository")
    _assert_input_error(run_cli("build", "-C", tmp_path / "missing"), "missing")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[artifact]\nname = "x"\ncolour = "red"\n', "colour"),
        ('[artifact]\nname = "x"\n\n[build]\nstep = ["make"]\noutputs = ["out/"]\n', "step"),
        ('[artifact]\nname = "x"\n[deploy]\nto = "prod"\n', "deploy"),
        ('[artifact]\ninclude = ["**"]\n', "name"),
        ("", "artifact"),
        ('[artifact\nname = "x"\n', "invalid TOML"),
        ('[artifact]\nname = "Not Valid"\n', "name"),
        ('[artifact]\nname = "x"\n\n[build]\nsteps = ["make"]\n', "outputs"),
        ('[artifact]\nname = "x"\n\n[build]\nsteps = ["make"]\noutputs = ["../up"]\n', "../up"),
        ('[artifact]\nname = "x"\ninclude = "**"\n', "include"),
        ('[artifact]\nname = "x"\n[env.prod]\npath = "/srv/x"\nkeep = ' + "9" * 5000 + "\n", "digits"),
    ],
)
def test_invalid_graven_toml(
    *, graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, toml: str, needle: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)
    line = _assert_input_error(run_cli("build", "-C", repo), needle)
    assert "graven.toml" in line


def test_invalid_utf8_graven_toml(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, None)
    write_files(repo, {"graven.toml": b'[artifact]\nname = "\xff"\n'})
    commit_all(repo)
    _assert_input_error(run_cli("build", "-C", repo), "graven.toml")


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"x": Symlink("../../etc")}, "x"),
        ({"sub/up": Symlink("../../outside")}, "sub/up"),
        ({"abs": Symlink("/etc/passwd")}, "abs"),
        ({"a": Symlink("."), "b": Symlink("a/..")}, "b"),
        ({"e\u0301.txt": "decomposed\n", "\u00e9.txt": "composed\n"}, ".txt"),
        ({b"\xff.txt": "latin-1 name\n"}, "xff.txt"),
        ({"bad\x01name.txt": "control\n"}, "bad"),
    ],
    ids=["relative-escape", "nested-escape", "absolute", "chain", "nfc-collision", "non-utf8", "control"],
)
def test_repository_with_unsafe_paths_is_refused(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    files: dict[str | bytes, object],
    needle: str,
) -> None:
    repo = make_repo(tmp_path / "repo", {"ok.txt": "fine\n", **files})
    _assert_input_error(run_cli("build", "-C", repo), needle)
    code, out, _ = run_cli("artifacts", "--json")
    assert code == 0 and json.loads(out) == []


def test_nfc_collision_names_both_paths(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"e\u0301.txt": "decomposed\n", "\u00e9.txt": "composed\n"})
    line = _assert_input_error(run_cli("build", "-C", repo), "NFC")
    assert "e\u0301.txt" in line and "\u00e9.txt" in line


def test_unsafe_path_outside_the_selection_is_not_an_error(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    toml = '[artifact]\nname = "x"\nexclude = ["vendor/**"]\n'
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "vendor/escape": Symlink("../../..")}, toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err


# -- init ------------------------------------------------------------------------------------------


def test_init_refuses_to_overwrite(repo: Path, run_cli: Run) -> None:
    before = (repo / "graven.toml").read_bytes()
    _assert_input_error(run_cli("init", "-C", repo), "graven.toml", "already exists")
    assert (repo / "graven.toml").read_bytes() == before


def test_init_writes_a_starter_that_builds(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    fresh = tmp_path / "My Project"
    fresh.mkdir()
    git(fresh, "init", "-q", "-b", "main")
    (fresh / "a.txt").write_text("a\n")
    code, _, err = run_cli("init", cwd=fresh)
    assert code == 0, err
    commit_all(fresh)
    code, out, err = run_cli("build", "--json", "-C", fresh)
    assert code == 0, err
    assert json.loads(out)["name"] == "my-project"
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    _assert_input_error(run_cli("init", "--name", "Bad Name", "-C", other), "Bad Name")
    assert not (other / "graven.toml").exists()


def test_init_says_to_create_a_key_when_the_home_has_none(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first build of a new user signs its provenance: without a key it is refused, so the step
    that init names next must not be that build."""
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "new-home"))
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        git(tmp_path / name, "init", "-q")
    code, out, _ = run_cli("init", "-C", tmp_path / "first")
    assert code == 0
    assert "create a signing key with `graven keys generate` (this home has none), then run" in out
    assert run_cli("keys", "generate")[0] == 0
    code, out, _ = run_cli("init", "-C", tmp_path / "second")
    assert code == 0
    assert out.endswith("; commit it, then run `graven build`\n")


def test_init_in_a_git_directory_names_the_working_tree(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """init run inside a clone's .git was told the .git was a bare repository: it names the working
    tree to run it in instead; a real bare repository is still called one."""
    clone = tmp_path / "clone"
    clone.mkdir()
    git(clone, "init", "-q")
    _assert_input_error(run_cli("init", cwd=clone / ".git"), f"run graven init in {clone}")
    assert not (clone / ".git" / "graven.toml").exists()
    git(tmp_path, "init", "-q", "--bare", str(tmp_path / "server.git"))
    _assert_input_error(run_cli("init", "-C", tmp_path / "server.git"), "is a bare repository")


def test_init_outside_a_repository(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    _assert_input_error(run_cli("init", "-C", tmp_path), "git")
    assert not (tmp_path / "graven.toml").exists()


# -- digests -----------------------------------------------------------------------------------------


def _built(run_cli: Run, repo: Path) -> str:
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


MALFORMED = ["xyz!", "abc", "sha256:", "", "sha256:" + "a" * 65, "md5:" + "a" * 32, "12 34", "sha256:abc"]


def test_malformed_digest(repo: Path, run_cli: Run, tmp_path: Path) -> None:
    _built(run_cli, repo)
    for command in ("show", "verify", "export"):
        extra = ["-o", str(tmp_path / "x.tar")] if command == "export" else []
        for text in MALFORMED:
            _assert_input_error(run_cli(command, text, *extra), "digest")
    # a revision where a digest goes (graven deploy HEAD prod): where digests come from
    _assert_input_error(
        run_cli("show", "HEAD"), "`graven artifacts` lists the digests, `graven build REVISION`"
    )


def test_unknown_digest(repo: Path, run_cli: Run, tmp_path: Path) -> None:
    digest = _built(run_cli, repo)
    unknown = "0000" if not digest.startswith("sha256:0000") else "ffff"
    for command in ("show", "verify", "export"):
        extra = ["-o", str(tmp_path / "x.tar")] if command == "export" else []
        _assert_input_error(run_cli(command, unknown, *extra), unknown)
        _assert_input_error(run_cli(command, "sha256:" + unknown * 16, *extra), unknown)
    assert not (tmp_path / "x.tar").exists()


def test_unknown_digest_in_an_empty_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    home = tmp_path / "empty-home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    _assert_input_error(run_cli("show", "abcd"), "abcd")
    _assert_input_error(run_cli("verify", "sha256:" + "ab" * 32), "abab")
    assert not (home / "graven.db").exists()


def test_ambiguous_digest_prefix(graven_home: Path, repo: Path, run_cli: Run, tmp_path: Path) -> None:
    real = _built(run_cli, repo)
    prefix = real[7:11]
    from graven.db import Database

    db = Database.open(f"sqlite:///{graven_home / 'graven.db'}")
    try:
        with db.begin() as conn:
            for fill in ("0", "1"):
                twin = "sha256:" + (prefix + fill * 60)
                if twin == real:
                    continue
                conn.execute(
                    """INSERT INTO artifacts (digest, name, "commit", repository, revision,
                    pipeline_digest, source_date_epoch, file_count, total_size, origin, created_at)
                    VALUES (:digest, 'twin', NULL, NULL, NULL, NULL, 0, 0, 0, 'import',
                    '2024-01-01T00:00:00.000000Z')""",
                    {"digest": twin},
                )
    finally:
        db.close()
    for command, extra in (("show", []), ("verify", []), ("export", ["-o", str(tmp_path / "x.tar")])):
        _assert_input_error(run_cli(command, prefix, *extra), prefix, "ambiguous")
        _assert_input_error(run_cli(command, f"sha256:{prefix.upper()}", *extra), "ambiguous")
    # three matches are all named; "..." only says that there are more than three
    assert "...)" not in run_cli("show", prefix)[2]
    # Enough digits make it unique again.
    code, out, err = run_cli("show", real[:20], "--json")
    assert code == 0, err
    assert json.loads(out)["artifact"]["digest"] == real


@pytest.mark.parametrize("name", ["out.zip", "out.tar.bz2", "out", "out.tar.xz", "out.gz"])
def test_export_to_a_bad_suffix(repo: Path, run_cli: Run, tmp_path: Path, name: str) -> None:
    digest = _built(run_cli, repo)
    _assert_input_error(run_cli("export", digest, "-o", tmp_path / name), name)
    assert not (tmp_path / name).exists()


def test_export_to_a_directory(repo: Path, run_cli: Run, tmp_path: Path) -> None:
    digest = _built(run_cli, repo)
    target = tmp_path / "dir.tar"
    target.mkdir()
    _assert_input_error(run_cli("export", digest, "-o", target), "dir.tar")


def test_usage_errors_are_one_line(graven_home: Path, run_cli: Run) -> None:
    _assert_input_error(run_cli("no-such-command"), "no-such-command")
    _assert_input_error(run_cli("build", "--no-such-flag"), "--no-such-flag")
    _assert_input_error(run_cli("export", "abcd"), "-o")


# -- contracts of the read-only commands ----------------------------------------------------------------


def test_artifacts_json_on_an_empty_home_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    home = tmp_path / "empty-home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    code, out, err = run_cli("artifacts", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == []
    code, out, err = run_cli("artifacts")
    assert code == 0 and "no artifacts" in out
    assert not home.exists() or not (home / "graven.db").exists()
    assert not home.exists() or list(home.rglob("*")) == []


def test_version(run_cli: Run) -> None:
    code, out, err = run_cli("--version")
    assert (code, err) == (0, "")
    assert out.strip() == f"graven {__version__}"


def test_json_shapes_of_build_show_and_artifacts(repo: Path, run_cli: Run) -> None:
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    built = json.loads(out)
    digest = built["digest"]
    assert digest.startswith("sha256:") and len(digest) == 71
    assert built["file_count"] == 2 and built["name"] == "demo"

    code, out, err = run_cli("show", digest, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert {"artifact", "summary"} <= set(shown)
    assert shown["artifact"]["digest"] == digest
    assert shown["artifact"]["commit"] == built["commit"]
    assert shown["summary"]["files"] == 2
    assert "entries" not in shown
    code, out, _ = run_cli("show", digest, "--json", "--files")
    assert [e["path"] for e in json.loads(out)["entries"]] == ["a.txt", "graven.toml"]

    code, out, _ = run_cli("artifacts", "--json")
    assert [a["digest"] for a in json.loads(out)] == [digest]
    code, out, _ = run_cli("artifacts")
    assert digest[7:19] in out


# -- the real process: one line on stderr, no traceback ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["build", "no-such-rev"],
        ["show", "zzzz"],
        ["import", "{tmp}/not-an-archive.tar"],
        ["import", "{tmp}/latin1.tar"],
        ["export", "abcd", "-o", "{tmp}/x.zip"],
    ],
    ids=["unknown-revision", "bad-digest", "not-an-archive", "non-utf8-entry", "bad-suffix"],
)
def test_subprocess_errors_have_no_traceback(repo: Path, tmp_path: Path, args: list[str]) -> None:
    import io
    import tarfile

    (tmp_path / "not-an-archive.tar").write_bytes(b"hello\n" * 100)
    with tarfile.open(
        tmp_path / "latin1.tar", "w", format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        info = tarfile.TarInfo("\udcff.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    argv = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "graven", *argv],
        cwd=repo,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), result.stderr


@pytest.mark.parametrize(
    "args", [["artifacts"], ["log", "verify"], ["log", "checkpoint"], ["keys", "list"], ["status"]]
)
def test_a_graven_home_that_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    home = tmp_path / "home-file"
    home.write_text("not a directory\n")
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    code, out, err = run_cli(*args)
    assert code == 2 and out == "", (args, out, err)
    assert err.startswith(f"graven: error: GRAVEN_HOME {home} is not a directory; point GRAVEN_HOME at")
    assert err.count("\n") == 1


@pytest.mark.parametrize("args", [["artifacts"], ["keys", "generate"], ["build"], ["status"]])
def test_a_graven_home_below_a_file_or_relative_is_one_line_and_exit_2(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """GRAVEN_HOME=FILE/sub made build say "no signing key, run graven keys generate", which then
    failed on the trust directory, and artifacts and status report an empty home; a relative
    GRAVEN_HOME made a home (keys included) below whatever directory a command ran in."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("GRAVEN_HOME", str(blocker / "sub" / "home"))
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1, (args, out, err)
    assert err.startswith(
        f"graven: error: GRAVEN_HOME {blocker}/sub/home lies below {blocker}, which is not"
    ), err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRAVEN_HOME", "rel/home")
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1, (args, out, err)
    assert err.startswith("graven: error: GRAVEN_HOME rel/home is a relative path"), err
    assert not (tmp_path / "rel").exists()


@pytest.mark.parametrize("link", ["dangling", "loop"])
@pytest.mark.parametrize(
    "args", [["artifacts"], ["drift"], ["log", "verify"], ["keys", "generate"], ["status"]]
)
def test_a_graven_home_that_is_a_link_to_nothing_is_one_line_and_exit_2(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, args: list[str], link: str
) -> None:
    """GRAVEN_HOME a symbolic link to nothing (a volume not mounted) or a loop of links: the read
    commands answered as in a new home (`graven drift` "no live environments", `graven log verify`
    "ok: the audit log is empty", exit 0) and keys generate failed on the trust directory."""
    home = tmp_path / "home"
    if link == "dangling":
        home.symlink_to(tmp_path / "unmounted" / "graven")
    else:
        home.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(home)
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1, (args, out, err)
    assert err.startswith(f"graven: error: GRAVEN_HOME {home} is a symbolic link to "), err
    assert not (tmp_path / "unmounted").exists()


def test_rollback_given_a_digest_where_the_environment_goes_says_how_to_roll_back_to_it(
    graven_home: Path, repo: Path, run_cli: Run
) -> None:
    digest = _built(run_cli, repo)
    code, out, err = run_cli("rollback", digest[7:15])
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "has never been deployed to" in err and f"graven rollback ENV --to {digest[7:15]}" in err, err
    code, _, err = run_cli("rollback", "staging")  # a name: no such hint
    assert code == 2 and "--to" not in err, err


def test_a_stored_object_that_is_no_artifact_is_refused_by_name(
    graven_home: Path, repo: Path, run_cli: Run
) -> None:
    digest = _built(run_cli, repo)
    blob = json.loads(run_cli("show", digest, "--files", "--json")[1])["entries"][0]["sha256"]
    for command, extra in (("verify", []), ("reject", ["--reason", "x"]), ("show", [])):
        _assert_input_error(run_cli(command, blob, *extra), "is a stored object", "not an artifact")


@pytest.mark.parametrize(
    ("args", "helps", "named"),
    [
        (["hold", "staging", "--reason", "\udcff"], "graven hold", "--reason"),
        (["reject", "abcd", "--reason", "\udcff"], "graven reject", "--reason"),
        (["log", "--env", "\udcff"], "graven log", "--env"),
        (["log", "--env", "\udcff", "verify"], "graven log", "--env"),  # --env is the timeline's
        (["deploy", "abcd", "staging", "--reason", "\udcff"], "graven deploy", "--reason"),
        (["db", "copy", "\udcff"], "graven db copy", "URL"),
        (["attest", "verify", "x.json", "--artifact", "\udcff"], "graven attest verify", "--artifact"),
        (
            ["-v", "attest", "verify", "--env", "\udcff", "x.json", "--artifact", "abcd"],
            "graven attest verify",
            "--env",
        ),
    ],
    ids=["hold", "reject", "log-env", "log-env-verify", "deploy", "db-copy", "attest-verify", "attest-env"],
)
def test_an_argument_that_is_not_utf8_is_refused_in_one_line(
    graven_home: Path, run_cli: Run, args: list[str], helps: str, named: str
) -> None:
    """A byte that is no UTF-8 reached the database as a surrogate: a UnicodeEncodeError traceback.
    The hint names the help that describes the argument: a subcommand's said `graven db --help`,
    which lists no argument of `db copy`. The argument is named as it was typed (`--env`), not as
    graven stores it (`log-env`)."""
    line = _assert_input_error(run_cli(*args), "is not valid UTF-8 text", f"(see `{helps} --help`)")
    assert line.startswith(f"graven: error: {named} " + ("'" if named != "URL" else "is")), line


def _graven_process(tmp_path: Path, args: list[str], stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graven.cli.main", *args],
        cwd=tmp_path,
        env=dict(os.environ),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=60,
    )


def test_output_that_cannot_be_written_is_an_error_never_exit_0(graven_home: Path, tmp_path: Path) -> None:
    """A full disk lost the output (a build's digest, say) with exit 120 and Python's own message, and a
    closed pipe exited 0: also for a failed check, whose exit code was lost. Now a closed pipe is 141
    (as for a process SIGPIPE ends) and any other write error 1, said in one line."""
    with open("/dev/full", "wb") as full:
        for args in (["--version"], ["artifacts", "--json"]):
            result = _graven_process(tmp_path, args, full.fileno())
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, (
                result.stderr
            )
            assert result.stderr.startswith("graven: error: "), result.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before graven writes anything
    try:
        result = _graven_process(tmp_path, ["artifacts", "--json"], write)
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["show", "--json"], 2),
        (["show", "--json", "nope"], 2),
        (["build", "--json"], 2),
        (["log", "prove", "0", "--json"], 2),
    ],
)
def test_a_json_error_object_that_cannot_be_written_keeps_the_error_s_exit_code(
    graven_home: Path, tmp_path: Path, args: list[str], code: int
) -> None:
    """With --json on a full disk, the error object's write failed and the usage error (exit 2) ended
    as "cannot write the output" with exit 1: a second error line, and a script that tells bad input
    (2) from a failed check (1) was told the wrong one. The error line said it already."""
    with open("/dev/full", "wb") as full:
        result = _graven_process(tmp_path, args, full.fileno())
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("graven: error: "), result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["log", "--json", "verify"], "--json before `graven log verify` would not apply to it"),
        (
            ["log", "--since", "2020-01-01", "prove", "1"],
            "own options after it (see `graven log prove --help`)",
        ),
        (["log", "--env", "../x"], "invalid environment name"),
        (["log", "--artifact", ""], "--artifact is empty"),
        (
            ["hold", "staging", "--reason", " "],
            "the audit log) (see `graven hold --help`)",
        ),
        (["deploy", "abc", "staging", "--root", ""], "--root: is empty; give the base directory"),
        (["show", "abcd", "--files", "--provenance"], "not allowed with argument --files"),
        (["verify", "abcd", "--env", "Prod"], "invalid environment name"),
    ],
    ids=[
        "log-json-first",
        "log-since-first",
        "log-env",
        "log-artifact",
        "empty-reason",
        "empty-root",
        "show-views",
        "verify-env",
    ],
)
def test_options_that_would_be_dropped_or_mean_nothing_are_refused(
    graven_home: Path, run_cli: Run, args: list[str], needle: str
) -> None:
    """Each of these was accepted and ignored (exit 0): a filter or --json dropped without a word, an
    empty reason recorded for good, an environment name that silently meant the default keys."""
    _assert_input_error(run_cli(*args), needle)


def test_init_has_json_and_a_file_given_as_repository_is_named(
    graven_home: Path, run_cli: Run, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    (repo / "graven.toml").unlink()
    code, out, err = run_cli("init", "-C", repo, "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": str(repo / "graven.toml"), "name": "repo"}
    _assert_input_error(run_cli("build", "-C", repo / "a.txt"), "a.txt: not a directory")


def test_a_failed_check_keeps_its_exit_code_when_the_reader_leaves_early(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """With unbuffered output (CI, Docker) the closed pipe surfaced while the command still wrote:
    exit 141, and the failed check's 1 was lost. The rest of the output is dropped, the command ends,
    and its code stays."""
    from graven.signing.keys import generate_key

    pub = tmp_path / "k.pub"
    pub.write_bytes(generate_key().public.pem())
    assert run_cli("keys", "trust", pub)[0] == 0  # the first log entry: a log key and a database
    for suffix in ("", "-wal", "-shm"):
        (graven_home / f"graven.db{suffix}").unlink(missing_ok=True)
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "graven.cli.main", "log", "verify", "--json"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_file_name_that_is_not_utf8_does_not_break_the_audit_log(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """import and keys trust put the file's name in the log entry: a traceback in its UTF-8 JSON."""
    from graven.signing.keys import generate_key

    pub = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"k\xff.pub")))
    pub.write_bytes(generate_key().public.pem())
    code, _, err = run_cli("keys", "trust", pub)
    assert code == 0, err
    code, out, err = run_cli("log", "--json")
    assert code == 0 and "k\\\\xff.pub" in out, out
    assert run_cli("log", "verify")[0] == 0


def test_the_json_error_writes_a_byte_that_is_not_utf8_as_the_error_line_does(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """docs/json.md: each byte of a name that is not UTF-8 is written as the four characters ``\\xNN``.
    The error document wrote it as ``\\udcff``, a lone surrogate (a strict parser's U+FFFD), while
    the error line on stderr said ``\\xff``."""
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"a\xff.tar.zst"))
    code, out, err = run_cli("import", name, "--json")
    message = err.removeprefix("graven: error: ").rstrip("\n")
    assert code == 2 and "a\\xff.tar.zst" in message and err.count("\n") == 1, err
    assert "\\udc" not in out, out
    assert json.loads(out) == {"ok": False, "error": {"exit_code": 2, "message": message}}, out


def test_an_error_line_to_a_closed_pipe_keeps_the_exit_code(graven_home: Path, tmp_path: Path) -> None:
    """`2>&1 | head`: the error line itself met the closed pipe, and the exit was 141 instead of 2."""
    graven = f'"{sys.executable}" -m graven.cli.main'
    script = f'{graven} show ffff 2>&1 | (exec 0<&-; sleep 0.3); echo "${{PIPESTATUS[0]}}"'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout.strip() == "2", (result.stdout, result.stderr)


def test_a_closed_stdout_is_one_line_and_exit_1(graven_home: Path, tmp_path: Path) -> None:
    """`graven status >&-` gave a traceback (sys.stdout is None)."""
    for command in ("status", "artifacts --json", "keys list"):
        result = subprocess.run(
            ["bash", "-c", f'exec "{sys.executable}" -m graven.cli.main {command} >&-'],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr == "graven: error: cannot write the output: Bad file descriptor\n", result.stderr


def test_an_actor_that_is_not_utf8_is_recorded_not_a_traceback(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRAVEN_ACTOR (or a CI's user name) with a byte that is no UTF-8 crashed every logged command."""
    monkeypatch.setenv("GRAVEN_ACTOR", os.fsdecode(b"bad\xffactor"))
    code, _, err = run_cli("keys", "revoke", "c" * 64)
    assert code == 0, err
    code, out, _ = run_cli("log", "--json")
    assert code == 0 and json.loads(out)[-1]["actor"] == "bad\\xffactor", out


@pytest.mark.parametrize(
    "args",
    [
        ["--plan", "build"],  # a review: `graven --plan deploy D prod` deployed for real, exit 0
        ["--json", "artifacts"],  # ... and `graven --json status` printed the table
        ["--bogus", "artifacts"],
        ["-v", "--json", "artifacts"],
        ["--verb", "artifacts"],  # no abbreviation (allow_abbrev=False): it was dropped, not taken
        ["--he", "artifacts"],
    ],
)
def test_an_option_before_the_command_word_is_refused(repo: Path, run_cli: Run, args: list[str]) -> None:
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    # nothing ran: stdout holds only the error object, and only for a line that asked for JSON
    if "--json" in args:
        assert json.loads(out)["error"]["message"] == err.removeprefix("graven: error: ").rstrip("\n")
    else:
        assert out == "", out
    assert err.count("\n") == 1 and "unrecognized arguments before the command" in err, err
    assert f"a command's options go after its name (graven {args[-1]} ... " in err


def test_graven_own_options_may_come_before_the_command(repo: Path, run_cli: Run) -> None:
    for args in (["-v", "artifacts"], ["--verbose", "artifacts", "--json"], ["-vh"]):
        code, _, err = run_cli(*args)
        assert code == 0, err


def test_python_dash_m_graven_is_the_console_script(tmp_path: Path) -> None:
    """A CLI review: `python -m graven` ran main() without entry(), so what entry() handles (a failed
    write of the output, Ctrl-C at start-up) ended in a traceback there."""
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "graven", "--version"],
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr == b"graven: error: cannot write the output: No space left on device\n"


def test_with_json_a_failure_before_any_result_prints_an_error_object(
    repo: Path, run_cli: Run, tmp_path: Path
) -> None:
    """A JSON review: most failures printed nothing on stdout with --json (a refused deploy, a busy
    lock, a bad digest), so a script reading stdout got no JSON at all. A command that printed its
    result (a failed verify) keeps it as it is; without --json nothing is added."""
    code, out, err = run_cli("show", "abcdef123456", "--json")
    assert code == 2 and err.count("\n") == 1
    assert json.loads(out) == {
        "ok": False,
        "error": {"exit_code": 2, "message": err.removeprefix("graven: error: ").rstrip("\n")},
    }
    assert run_cli("show", "abcdef123456")[1] == ""
    code, out, _ = run_cli("build", "-C", repo, "--json")
    digest = json.loads(out)["digest"]
    code, out, _ = run_cli("verify", digest, "--json")
    assert code == 0 and "error" not in json.loads(out)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "--json"],  # a missing argument
        ["status", "--no-such-option", "--json"],  # an unknown option
        ["history", "staging", "--json", "--limit", "many"],  # a value of the wrong type
    ],
    ids=["missing", "unknown", "bad-value"],
)
def test_with_json_a_refused_command_line_prints_the_error_object_too(run_cli: Run, args: list[str]) -> None:
    """A command line that argparse refused before the command started printed nothing on stdout with
    --json (there was no parsed --json yet): a script reading stdout got no JSON at all."""
    code, out, err = run_cli(*args)
    assert code == 2 and err.count("\n") == 1, err
    assert json.loads(out) == {
        "ok": False,
        "error": {"exit_code": 2, "message": err.removeprefix("graven: error: ").rstrip("\n")},
    }
    without = [a for a in args if a != "--json"]
    assert run_cli(*without)[1] == ""  # without --json, stdout stays empty
    assert run_cli(*without, "--", "--json")[1] == ""  # after --, --json is an operand, not the option


def test_json_error_object_for_log_timeline_watch_and_consistency(
    repo: Path,
    run_cli: Run,
    tmp_path: Path,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error object was missing where --json is stored under another name (`log --json`) and for
    `watch --json` (which writes its own stdout); `log consistency --json` gave its failed check as a
    bare string. Every failure with --json now prints the same {"exit_code", "message"} object."""

    def error_object(out: str, err: str, code: int) -> None:
        assert json.loads(out) == {
            "ok": False,
            "error": {"exit_code": code, "message": err.removeprefix("graven: error: ").rstrip("\n")},
        }, out

    code, out, _ = run_cli("build", "-C", repo, "--json")
    assert code == 0
    code, out, err = run_cli("log", "--since", "yesterday", "--json")
    assert code == 2 and err.count("\n") == 1, err
    error_object(out, err, 2)
    code, out, err = run_cli("watch", "--interval", "soon", "--json")
    assert code == 2 and err.count("\n") == 1, err
    error_object(out, err, 2)
    code, out, err = run_cli("watch", "nosuchenv", "--json")
    assert code == 2 and err.count("\n") == 1, err
    error_object(out, err, 2)

    old = tmp_path / "old.ckpt"
    old.write_text(run_cli("log", "checkpoint")[1])
    # a checkpoint of another home's log: signed by a key this log does not know (a failed check)
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("other-home")))
    code, out, _ = run_cli("build", "-C", repo, "--json")
    assert code == 0
    code, out, err = run_cli("log", "consistency", str(old), "--json")
    assert code == 1 and err.count("\n") == 1, err
    error_object(out, err, 1)


@pytest.mark.parametrize("command", [["import"], ["log", "consistency"]])
def test_a_directory_where_a_file_is_read_is_named_without_python_repr(
    graven_home: Path, tmp_path: Path, run_cli: Run, command: list[str]
) -> None:
    result = run_cli(*command, tmp_path, "--json")
    line = _assert_input_error(result, f"cannot read {tmp_path}: Is a directory")
    assert "[Errno" not in line and repr(str(tmp_path)) not in line


def test_a_trust_directory_that_is_a_file_is_refused_not_read_as_empty(
    graven_home: Path, repo: Path, run_cli: Run
) -> None:
    """verify, deploy and keys list took a file at GRAVEN_HOME/trust for an empty trust directory:
    `keys list` said all was well with no trusted key, and verify said to add a key to trust/."""
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    trust = graven_home / "trust"
    for path in trust.iterdir():
        path.unlink()
    trust.rmdir()
    trust.write_text("not a directory\n")
    for command in (["verify", digest], ["keys", "list"]):
        _assert_input_error(run_cli(*command), f"the trust directory {trust} is not a directory")


def test_a_database_url_into_a_missing_directory_is_bad_input(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It exited 1, as a failing disk would, for what is a typo in GRAVEN_DB_URL."""
    missing = tmp_path / "no-such-dir" / "graven.db"
    monkeypatch.setenv("GRAVEN_DB_URL", f"sqlite:///{missing}")
    for command in (["artifacts"], ["keys", "generate", "--name", "second"]):
        _assert_input_error(
            run_cli(*command),
            f"cannot open the database {missing}: its directory {missing.parent} does not exist",
            "GRAVEN_DB_URL",
        )
    assert not missing.parent.exists()
    assert not (graven_home / "keys" / "second.key").exists()


def test_a_database_url_mistake_names_the_url_to_write(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: a plain file path or a directory in GRAVEN_DB_URL "is refused naming the URL to write".
    The CLI hid every copy of the variable's value as a secret (its name holds DB_URL), so the URL
    to write came out as `sqlite:///***`; only the password of a URL is one."""
    path = tmp_path / "graven.db"
    monkeypatch.setenv("GRAVEN_DB_URL", str(path))
    line = _assert_input_error(
        run_cli("artifacts"), f"the database URL {path} is a path", f"sqlite:///{path} "
    )
    assert "***" not in line
    monkeypatch.setenv("GRAVEN_DB_URL", f"sqlite:///{tmp_path}")
    line = _assert_input_error(run_cli("artifacts", "--json"), f"(sqlite:///{tmp_path}/graven.db)")
    assert "***" not in line
    monkeypatch.setenv("GRAVEN_DB_URL", "postgresql+psycopg://u:Secret1@127.0.0.1")  # no database
    line = _assert_input_error(run_cli("artifacts"), "postgresql+psycopg://u:***@127.0.0.1 names no database")
    assert "Secret1" not in line


def test_a_path_with_a_name_too_long_is_bad_input(repo: Path, run_cli: Run, tmp_path: Path) -> None:
    """A name longer than the file system takes (ENAMETOOLONG, an OSError of no subclass) exited 1, as a
    failing disk does, where `import` of the same name said exit 2: the user fixes it by typing another
    path."""
    digest = _built(run_cli, repo)
    long = tmp_path / ("a" * 300)
    _assert_input_error(run_cli("export", digest, "-o", f"{long}.tar", "--json"), "file name too long")
    _assert_input_error(run_cli("build", "-C", long), "file name too long")
    _assert_input_error(run_cli("init", "-C", long), "file name too long")
    _assert_input_error(run_cli("import", f"{long}.tar"), "File name too long")


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "abcd", "--policy", ""],
        ["export", "abcd", "-o", ""],
        ["export", "abcd", "-o", "x.tar", "--attestation", ""],
        ["import", ""],
        ["import", "x.tar", "--attestation", ""],
        ["keys", "trust", ""],
        ["attest", "verify", "", "--artifact", "abcd"],
        ["log", "consistency", ""],
        ["deploy", "abcd", "prod", "--policy", ""],
    ],
)
def test_an_empty_file_argument_is_named_not_taken_for_the_current_directory(
    graven_home: Path, run_cli: Run, args: list[str]
) -> None:
    """An empty file name (an unset shell variable) was Path(""), the current directory: `policy file
    . is a directory`, `cannot read .: Is a directory`."""
    line = _assert_input_error(run_cli(*args, "--json"), "is empty; give a file name")
    assert " . " not in line and "read ." not in line


def test_a_file_argument_ending_in_a_slash_is_refused(
    repo: Path, run_cli: Run, tmp_path: Path, graven_home: Path
) -> None:
    """`-o new.tar/` (a directory that does not exist) wrote a file `new.tar`: Path drops the
    slash. A trailing slash names a directory, never the file the argument asks for."""
    digest = _built(run_cli, repo)
    out = tmp_path / "new.tar"
    line = _assert_input_error(run_cli("export", digest, "-o", f"{out}/"), "ends with '/'")
    assert "give a file name" in line
    assert not out.exists()
    (tmp_path / "p.toml").write_text("")
    _assert_input_error(run_cli("verify", digest, "--policy", f"{tmp_path / 'p.toml'}/"), "ends with '/'")


def test_an_empty_database_url_to_copy_into_is_named(repo: Path, run_cli: Run) -> None:
    """It said `the database URL <invalid URL> is not a URL`."""
    _built(run_cli, repo)  # a database to copy
    line = _assert_input_error(run_cli("db", "copy", ""), "the database URL is empty")
    assert "<invalid URL>" not in line


@pytest.mark.parametrize("option", ["--attestation", "--bundle"])
def test_export_writes_no_file_named_dash_for_an_attestation(
    repo: Path, run_cli: Run, tmp_path: Path, option: str
) -> None:
    """`-o -` is standard output; `--attestation -` silently wrote a file named `-` in the current
    directory (beside an archive on stdout too). `./-` still names that file."""
    digest = _built(run_cli, repo)
    _assert_input_error(
        run_cli("export", digest, "-o", tmp_path / "a.tar", option, "-", cwd=tmp_path), "only for -o"
    )
    assert not (tmp_path / "-").exists() and not (tmp_path / "a.tar").exists()
    code, _, err = run_cli("export", digest, "-o", tmp_path / "a.tar", option, "./-", cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "-").is_file()


@pytest.mark.parametrize(
    "content",
    [
        "hello\n",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_trusting_a_file_that_is_no_public_key_names_it_and_says_how_to_get_one(
    graven_home: Path, run_cli: Run, tmp_path: Path, content: str
) -> None:
    """It said `the key to trust is not a PEM public key (Unable to load PEM file. See https://...
    MalformedFraming)`: not the file, and cryptography's words instead of what to give."""
    text = tmp_path / "notes.txt"
    text.write_text(content)
    line = _assert_input_error(
        run_cli("keys", "trust", text, "--json"),
        f"{text}: not a PEM public key (-----BEGIN PUBLIC KEY-----",
        "graven keys export NAME",
    )
    assert "cryptography" not in line and "Malformed" not in line and "ASN.1" not in line


@pytest.mark.parametrize(
    "content",
    [
        "hello\n",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_a_signing_key_file_that_is_no_private_key_is_named_without_its_content(
    repo: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    key = tmp_path / "mine.key"
    key.write_text(content)
    key.chmod(0o600)
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", str(key))
    line = _assert_input_error(
        run_cli("build", "-C", repo),
        f"GRAVEN_SIGNING_KEY file {key}: not a PEM private key (-----BEGIN PRIVATE KEY-----",
        "graven keys generate",
    )
    assert "cryptography" not in line and "Malformed" not in line and "AAAA" not in line


def test_a_long_value_is_shortened_in_the_middle_of_the_error_line(
    repo: Path, run_cli: Run, tmp_path: Path
) -> None:
    """`graven show <100,000 characters>` printed a line of 100 KB (and the same in the JSON message):
    a value longer than 200 characters keeps its start and its end, and says how long it was."""
    long = "a" * 99_996 + "tail"
    for args in (
        ["show", long, "--json"],
        ["build", long, "-C", repo],
        ["deploy", "abcd", long],
        ["log", "--env", long],
        ["keys", "revoke", long],
        ["import", tmp_path / long],
        ["status", long],
    ):
        line = _assert_input_error(run_cli(*args), "aaa…", "atail", ",0")
        assert "(100,000 characters)" in line or args[0] == "import", line
        assert len(line) < 700, (args, len(line))
    spaced = "a b " * 25_000  # a value with spaces: the line keeps its start and its end
    line = _assert_input_error(
        run_cli("build", spaced, "-C", repo), "unknown revision 'a b", "characters left out"
    )
    assert len(line) < 1000 and line.endswith("(commit first, or name a branch, tag or commit id)")
    # a short value is shown whole
    _assert_input_error(run_cli("show", "x" * 150), "x" * 150)


def test_shortened_keeps_quotes_and_punctuation_outside() -> None:
    from graven.cli.output import shortened, shortened_message

    assert shortened("abc") == "abc"
    assert shortened("x" * 201) == f"{'x' * 80}…{'x' * 80} (201 characters)"
    assert (
        shortened_message(f"no env {'e' * 300!r}: fix it")
        == f"no env '{'e' * 80}…{'e' * 80}' (300 characters): fix it"
    )
    assert shortened_message("short 'value'; hint") == "short 'value'; hint"


@pytest.mark.parametrize("url", ["http://exa mple/", "https://example:70000/hook"])
def test_watch_refuses_a_webhook_it_could_never_send_to_at_start(
    graven_home: Path, tmp_path: Path, url: str
) -> None:
    """`--webhook 'http://exa mple/'` was taken, and the watcher (waiting for its first deployment here)
    failed only when it sent an alert. A process of its own: the old watcher ran until killed."""
    result = subprocess.run(
        [sys.executable, "-m", "graven", "watch", "--webhook", url],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    _assert_input_error((result.returncode, result.stdout, result.stderr), "--webhook http")


@pytest.mark.parametrize("name", ["a" * 300 + ".db", "a" * 300 + "/graven.db"])
def test_a_database_url_with_a_name_too_long_is_bad_input(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """It exited 1 with SQLite's `unable to open database file`, as a failing disk would, for what
    is a mistake in GRAVEN_DB_URL (README: a bad SQLite URL is exit 2)."""
    monkeypatch.setenv("GRAVEN_DB_URL", f"sqlite:///{tmp_path / name}")
    for command in (["artifacts"], ["keys", "generate", "--name", "second"]):
        line = _assert_input_error(
            run_cli(*command, "--json"), "cannot open the database", "file name too long", "GRAVEN_DB_URL"
        )
        assert "unable to open" not in line
    assert not (graven_home / "keys" / "second.key").exists()


def test_keys_trust_dash_reads_the_key_from_standard_input(
    graven_home: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven keys export NAME | ssh host graven keys trust -` read a file named `-`; standard input
    is read, at most 64 KiB of it, and `./-` still names that file."""
    import io

    from graven.signing.keys import generate_key

    key = generate_key()

    def stdin(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    stdin(key.public_pem())
    code, out, err = run_cli("keys", "trust", "-", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["keyid"] == key.keyid and json.loads(out)["changed"] is True
    assert (graven_home / "trust" / f"{key.keyid}.pub").is_file()
    code, out, err = run_cli("log", "--json")
    assert code == 0, err
    assert any(entry["reason"] == f"key {key.keyid} from stdin" for entry in json.loads(out)), out
    stdin(b"hello\n")
    _assert_input_error(run_cli("keys", "trust", "-"), "standard input: not a PEM public key")
    stdin(key.public_pem() + b"\n" * (64 * 1024))
    _assert_input_error(run_cli("keys", "trust", "-"), "standard input: more than 64 KiB")
    _assert_input_error(run_cli("keys", "trust", "./-", cwd=tmp_path), "./-: no such file")
    (tmp_path / "-").write_bytes(generate_key().public_pem())
    assert run_cli("keys", "trust", "./-", cwd=tmp_path)[0] == 0


def test_init_that_cannot_write_the_whole_file_leaves_none(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """A disk or quota that fills up as init writes (EFBIG here: a file size limit) must not leave a cut
    starter behind, which the next `graven init` would refuse to replace."""
    import resource
    import signal

    fresh = tmp_path / "full"
    fresh.mkdir()
    git(fresh, "init", "-q")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
        result = run_cli("init", "-C", fresh)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    _assert_input_error(result, "cannot write")
    assert not (fresh / "graven.toml").exists()
    assert run_cli("init", "-C", fresh)[0] == 0


def test_deploy_with_the_environment_before_the_digest_says_the_order(repo: Path, run_cli: Run) -> None:
    """`graven deploy staging 3fa2` (the order of `kubectl`, `helm`...) said only that 'staging' is not a
    digest, and pointed at `graven build`: the newcomer never learned that the digest comes first."""
    prefix = _built(run_cli, repo)[7:15]
    line = _assert_input_error(run_cli("deploy", "staging", prefix, "--json"), "DIGEST ENV")
    assert f"graven deploy {prefix} staging" in line, line
    line = _assert_input_error(run_cli("deploy", "staging", prefix.upper(), "--plan"), "DIGEST ENV")
    assert f"graven deploy {prefix.upper()} staging" in line, line
    # neither a digest: where digests come from, as before
    _assert_input_error(run_cli("deploy", "v1", "staging"), "`graven artifacts` lists the digests")


def test_a_file_given_as_attestation_that_is_none_is_named(repo: Path, run_cli: Run, tmp_path: Path) -> None:
    """`import A --attestation B` and `attest verify B` with B not an attestation (the archive itself,
    graven.toml, some JSON) said `attestation is not UTF-8 text` or `DSSE envelope has no 'payload'
    field`: no file named, and nothing said of which file is wanted."""
    digest = _built(run_cli, repo)
    archive = tmp_path / "a.tar.gz"
    assert run_cli("export", digest, "-o", archive)[0] == 0
    some_json = tmp_path / "some.json"
    some_json.write_text('{"a": 1}\n')
    for wrong in (archive, repo / "graven.toml", some_json):
        for args in (
            ("import", archive, "--attestation", wrong),
            ("attest", "verify", wrong, "--artifact", digest),
        ):
            line = _assert_input_error(run_cli(*args, "--json"), str(wrong))
            assert "graven export" in line, line


def test_a_checkpoint_that_is_not_text_is_named_without_a_codec_message(
    repo: Path, run_cli: Run, tmp_path: Path
) -> None:
    """`log consistency FILE` with a binary FILE (an archive given by mistake) printed Python's
    `'utf-8' codec can't decode byte 0xb5 in position 1: ...`."""
    _built(run_cli, repo)
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"(\xb5/\xfd\x00binary")
    line = _assert_input_error(
        run_cli("log", "consistency", binary, "--json"), str(binary), "graven log checkpoint"
    )
    assert "codec" not in line and "position" not in line, line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["db", "copy", "postgresql+psycopg://app:S3CR3T-xyz@db.invalid/graven\udcff"], "URL"),
        (["watch", "--webhook", "https://hooks.invalid/services/T0/B0/S3CR3T-xyz\udcff"], "--webhook"),
        (
            ["watch", "--alert-command", "curl -H 'Authorization: Bearer S3CR3T-xyz\udcff' x"],
            "--alert-command",
        ),
    ],
    ids=["db-copy-url", "webhook", "alert-command"],
)
def test_an_argument_that_may_hold_a_secret_is_not_echoed_when_it_is_not_utf8(
    graven_home: Path, run_cli: Run, args: list[str], named: str
) -> None:
    """A database URL's password, a webhook's token (in its path) and an alert command's credentials
    must not reach a terminal or a CI log through the error about a stray byte in them."""
    line = _assert_input_error(run_cli(*args), "is not valid UTF-8 text")
    assert line.startswith(f"graven: error: {named} "), line
    assert "S3CR3T" not in line


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--webhook", "https://hooks.slack.com/services/T0001/B0001/S3CR3Tpath"],
        ["status", "postgresql://user:S3CR3Tpw@db.example/graven"],
        ["status", "https://ci.example/x?token=S3CR3Ttok"],
        ["history", "postgresql://user:S3CR3Tpw@db.example/graven"],
        ["verify", "x", "--env", "https://hooks.slack.com/services/T0001/B0001/S3CR3Tpath"],
    ],
    ids=[
        "webhook-option-of-another-command",
        "stray-database-url",
        "stray-url-with-token",
        "url-as-an-environment",
        "webhook-as-an-environment",
    ],
)
def test_a_usage_error_never_echoes_a_credential_it_quotes(
    graven_home: Path, run_cli: Run, args: list[str]
) -> None:
    """argparse repeats what it could not place ('unrecognized arguments: ...'), and an input error
    quotes the value it refuses: a webhook URL or a database URL given in the wrong place put its token
    or password in the error line (and the --json error object)."""
    code, out, err = run_cli(*args)
    assert code == 2, err
    assert "S3CR3T" not in err + out, err
    assert "***" in err, err


def test_a_value_holding_a_newline_does_not_cut_the_error_line(
    repo: Path, run_cli: Run, tmp_path: Path
) -> None:
    """A path typed with a newline (`-C "$(printf 'a\\nb')"`) is a value of the line: the line showed
    only what came before it (`graven: error: a`), the reason and the hint after it lost, and a value
    with a leading space lost the space (` : no such file` in JSON, `: no such file` on stderr). The
    line escapes the newline as it escapes any control character, and keeps the message whole."""
    odd = str(tmp_path / "a\nb")
    code, digest, err = run_cli("build", "-C", repo)
    assert code == 0, err
    for args, needle in (
        (["build", "-C", odd], "no such directory; give the repository's directory"),
        (["init", "-C", odd], "no such directory; give the repository's directory"),
        (["import", odd], "no such file"),
        (["export", digest.strip(), "-o", str(tmp_path / "x\n.tgz2")], "unknown archive type; use a name"),
        (["verify", digest.strip(), "--policy", odd], "does not exist"),
    ):
        line = _assert_input_error(run_cli(*args), needle)
        assert "a\\x0ab" in line or "x\\x0a.tgz2" in line, line
    for args in (["import", " ", "--json"], ["build", "-C", " ", "--json"]):
        code, out, err = run_cli(*args)
        message = json.loads(out)["error"]["message"]
        assert code == 2 and err == f"graven: error: {message}\n", (out, err)


@pytest.mark.parametrize(
    "url",
    [
        "host=localhost user=me password=Hunter2secret dbname=graven",  # libpq's keyword form
        "host=localhost password='Hunter2secret' dbname=graven",
        "postgresql://me@127.0.0.1/graven password=Hunter2secret",  # a URL, then a keyword
    ],
)
def test_a_password_in_a_database_url_that_is_no_url_is_not_shown(
    graven_home: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Since the CLI shows GRAVEN_DB_URL's value (but a URL's password) in its errors, a connection
    string written in libpq's keyword form (host=... password=...), a common mistake, came out whole,
    its password included: that password is hidden too, the rest still named."""
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    code, out, err = run_cli("artifacts")
    assert code in (1, 2), (code, out, err)
    assert err.startswith("graven: error: ") and "database" in err, err
    assert "Hunter2secret" not in err + out, err
