"""What graven prints for people never carries raw control characters: a file name planted in an
environment directory, a reason given to rollback or reject, or an OS error reaching the top cannot
draw fake lines or drive the operator's terminal (graven often runs as root over directories another
user can write)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import DEFAULT_TOML, Executable, Symlink
from graven.cli.output import printable
from helpers_deploy import World, env_toml

Run = Callable[..., tuple[int, str, str]]
EVIL = "x\n\x1b[31mRED\u202e"


def _clean(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text, text
    assert "RED" not in text or "\\x1b[31mRED" in text, text


def test_drift_heal_history_and_reject_escape_what_they_show(world: World, run_cli: Run) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    live = world.env_dir("staging") / "current" / "app"
    release_dir = live.resolve()
    release_dir.chmod(0o755)
    (release_dir / EVIL).write_text("planted\n")
    code, out, err = run_cli("drift", "staging")
    assert code == 1
    _clean(out + err)
    assert "app/x\\x0a\\x1b[31mRED\\u202e" in out
    rows = [line.split() for line in out.splitlines()[2:]]  # after the summary and the header
    assert sorted(row[:2] for row in rows) == [["staging", "added"], ["staging", "mode"]]  # no fake row
    code, out, err = run_cli("heal", "staging", "--plan")
    _clean(out + err)
    code, out, err = run_cli("rollback", "staging", "--to", v1, "--reason", EVIL, "--root", world.root)
    _clean(out + err)
    code, out, err = run_cli("history", "staging")
    assert code == 0, err
    _clean(out + err)
    v2 = world.version(2)
    assert run_cli("reject", v2, "--reason", EVIL)[0] == 0
    code, out, err = run_cli("reject", v2, "--reason", "again")
    assert code == 0, err
    _clean(out + err)
    assert "already rejected (x\\x0a\\x1b[31mRED\\u202e)" in out


def test_a_name_that_reads_like_an_escape_is_told_apart_from_the_name_it_escapes(
    world: World, run_cli: Run
) -> None:
    """A file really named ``a\\x1b`` (four printable characters after the a) and a file named a+ESC
    were both shown ``a\\x1b``: the drift report could not say which was planted. A backslash is now
    shown doubled; --json keeps the names as they are (JSON escapes them its own way)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    release_dir = (world.env_dir("staging") / "current" / "app").resolve()
    release_dir.chmod(0o755)
    (release_dir / "a\x1b").write_text("escape\n")
    (release_dir / "a\\x1b").write_text("backslash\n")
    code, out, err = run_cli("drift", "staging")
    assert code == 1, err
    _clean(out + err)
    shown = sorted(line.split()[2] for line in out.splitlines()[2:] if line.split()[1] == "added")
    assert shown == ["app/a\\\\x1b", "app/a\\x1b"]
    code, out, err = run_cli("drift", "staging", "--json")
    assert code == 1, err
    (report,) = json.loads(out)["environments"]
    added = sorted(d["path"] for d in report["differences"] if d["kind"] == "added")
    assert added == ["app/a\x1b", "app/a\\x1b"]


def test_an_os_error_no_check_caught_is_one_line(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net under every command: an OSError that reaches the top is ``path: reason``
    (exit 2 when the user can fix it), never a traceback."""
    from graven.service import artifacts

    def unreadable(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", f"/srv/{EVIL}")

    monkeypatch.setattr(artifacts, "resolve_digest", unreadable)
    code, _out, err = run_cli("show", "abcd")
    assert code == 2
    assert err == "graven: error: /srv/x\\x0a\\x1b[31mRED\\u202e: permission denied; check its permissions\n"
    assert os.linesep not in err[:-1]

    # escaped once (the path is a value of the line), and --json says the path as it is
    def backslash(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/srv/a\\x1b\x1b")

    monkeypatch.setattr(artifacts, "resolve_digest", backslash)
    code, out, err = run_cli("show", "abcd", "--json")
    assert code == 2
    assert err == "graven: error: /srv/a\\\\x1b\\x1b: permission denied; check its permissions\n"
    assert json.loads(out)["error"]["message"] == "/srv/a\\x1b\x1b: permission denied; check its permissions"

    def not_utf8(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", b"/srv/caf\xe9")

    monkeypatch.setattr(artifacts, "resolve_digest", not_utf8)
    code, out, err = run_cli("show", "abcd", "--json")
    assert err == "graven: error: /srv/caf\\xe9: permission denied; check its permissions\n"
    assert json.loads(out)["error"]["message"] == "/srv/caf\\xe9: permission denied; check its permissions"


def test_a_config_diff_keeps_its_tabs(world: World, run_cli: Run) -> None:
    """The config's own lines are shown as they are (a tab-indented nginx file stays readable); only
    what could drive the terminal is escaped."""
    world.commit({"config/staging.toml": 'port = 8001\n\tbanner = "one"\n'})  # the health check reads it
    assert world.deploy(world.build(), "staging").ok
    world.commit({"config/staging.toml": 'port = 8001\n\tbanner = "two"\x1b[2J\n'})
    code, out, err = run_cli("deploy", world.build(), "staging", "--plan", "--root", world.root)
    assert code == 0, err
    assert '-\tbanner = "one"\n' in out and '+\tbanner = "two"\\x1b[2J\n' in out, out


def test_show_files_is_an_aligned_table_with_names_escaped(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """``show --files`` printed ``file    0644  PATH  SHA256``: the whole digest after paths of any
    length (nothing lined up past the path) and names as they were, so a U+202E in a name reversed
    what followed it on the line. It is now a table like the other listings, the path last."""
    rlo = "\u202e"
    long = "deep/" + "d" * 120 + "/file.txt"
    repo = make_repo(
        tmp_path / "repo",
        {
            "README.md": "# x\n",
            f"app/rtl{rlo}txt.exe": "x\n",
            "app/link": Symlink(f"rtl{rlo}txt.exe"),
            "bin/run": Executable("#!/bin/sh\n"),
            "sp ace.txt": b"",
            long: "y" * 3000,
        },
    )
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, out, err = run_cli("show", digest, "--files", "--json")
    assert code == 0, err
    entries = json.loads(out)["entries"]  # --json keeps every field, the names as they are
    assert {e["path"] for e in entries} >= {f"app/rtl{rlo}txt.exe", "app/link", long}
    assert next(e for e in entries if e["path"] == "app/link")["target"] == f"rtl{rlo}txt.exe"
    code, out, err = run_cli("show", digest, "--files")
    assert code == 0, err
    _clean(out + err)
    lines = out.split("\n\n")[-1].splitlines()  # the listing: the last block
    header = lines[0]
    assert header.split() == ["TYPE", "MODE", "SIZE", "SHA256", "PATH"]
    start = header.index("PATH")
    assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines[1:]), out
    rows = {line[start:]: re.split(r"\s{2,}", line[:start].strip()) for line in lines[1:]}
    sha = {e["path"]: e.get("sha256", "")[:12] for e in entries}
    assert rows == {
        "README.md": ["file", "0644", "4 B", sha["README.md"]],
        "app/link -> rtl\\u202etxt.exe": ["symlink", "-", "-", "-"],
        "app/rtl\\u202etxt.exe": ["file", "0644", "2 B", sha[f"app/rtl{rlo}txt.exe"]],
        "bin/run": ["file", "0755", "10 B", sha["bin/run"]],
        long: ["file", "0644", "2.9 KiB", sha[long]],
        "graven.toml": ["file", "0644", f"{len(DEFAULT_TOML)} B", sha["graven.toml"]],
        "sp ace.txt": ["file", "0644", "0 B", sha["sp ace.txt"]],
    }


def test_deploy_plan_retire_and_status_escape_the_environment_path(
    world: World, run_cli: Run, tmp_path: Path
) -> None:
    """The environment's directory (the deploy root and the path of graven.toml) and the config path
    were printed as they were: a root holding ESC drove the terminal, and a backslash in either read
    like an escape. Each is now a value shown :func:`printable`; --json keeps them as they are."""
    root = tmp_path / "srv\x1b[2J\\x1b"
    toml = env_toml("app", {"staging": {"path": "st\\x0a", "config": "config/a\\x1b.toml"}})
    world.commit({"config/a\\x1b.toml": "port = 1\n"}, toml)
    digest = world.build()
    shown_root = printable(str(root))
    assert shown_root.endswith("srv\\x1b[2J\\\\x1b")
    code, out, err = run_cli("deploy", digest, "staging", "--plan", "--root", root)
    assert code == 0, err
    _clean(out + err)
    assert f"to staging ({shown_root}/st\\\\x0a)\n" in out, out
    assert "config (config/a\\\\x1b.toml):\n" in out, out
    code, out, err = run_cli("deploy", digest, "staging", "--plan", "--root", root, "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == f"{root}/st\\x0a"
    code, out, err = run_cli("deploy", digest, "staging", "--root", root)
    assert code == 0, err
    _clean(out + err)
    assert f"in staging ({shown_root}/st\\\\x0a); " in out, out
    code, out, err = run_cli("deploy", digest, "staging", "--plan", "--root", root)
    assert code == 0, err
    assert "config (config/a\\\\x1b.toml): unchanged\n" in out, out
    (root / "st\\x0a" / "current").unlink()  # status warns that current is gone, and what puts it back
    code, out, err = run_cli("status")
    assert code == 0, err
    _clean(out + err)
    assert f"staging: {shown_root}/st\\\\x0a/current is not a link to a release" in err, err
    assert "`graven heal staging` points it back" in err, err
    code, out, err = run_cli("retire", "staging", "--reason", "gone")
    assert code == 0, err
    _clean(out + err)
    assert f"its directory {shown_root}/st\\\\x0a may become" in out, out


def test_build_check_escapes_the_differing_paths_and_diffoscope_lines(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``differs: PATH: DETAIL`` and diffoscope's summary (which quotes the files' content) were written
    as they were: a file holding ESC drove the terminal through ``build --check`` or ``verify
    --rebuild``. The path is a value (a backslash doubled), diffoscope's lines are a file's lines."""
    from graven.build import compare
    from graven.service import build

    diff = compare.Difference(
        "app/a\\x1b\x1b",
        ("content",),
        "content (size 1 != 2)",
        diffoscope="--- a\n+\tb\\x1b\x1b[2J\n@@\x0b",
    )

    def not_reproducible(*_args: object, **_kwargs: object) -> None:
        raise compare.NotReproducibleError("c" * 40, [diff], ["time"])

    monkeypatch.setattr(build, "build", not_reproducible)
    code, out, err = run_cli("build", "--check", "-C", world.repo)
    assert code != 0
    _clean(out + err)
    assert err.startswith(
        "differs: app/a\\\\x1b\\x1b: content (size 1 != 2)\n    --- a\n    +\tb\\\\x1b\\x1b[2J\n    @@\\x0b\n"
    ), err
    code, out, err = run_cli("build", "--check", "-C", world.repo, "--json")
    (item,) = json.loads(out)["check"]["differences"]
    assert item["path"] == diff.path and item["diffoscope"] == diff.diffoscope


def test_show_provenance_escapes_what_the_envelope_says(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key ids and payload type of an attestation are whatever an imported or pulled envelope holds
    (show does not verify it): they were printed as they were."""
    from graven.signing import bundle
    from graven.signing.dsse import Envelope, Signature

    digest = world.build()
    load = bundle.load_attestation

    def planted(*args: object, **kwargs: object) -> Envelope:
        real = load(*args, **kwargs)  # type: ignore[arg-type]
        sig = Signature("k\\x1b\x1b]0;owned\x07", real.signatures[0].sig)
        return Envelope(real.payload, f"{real.payload_type}\x1b[2J", (sig,))

    monkeypatch.setattr(bundle, "load_attestation", planted)
    code, out, err = run_cli("show", digest, "--provenance")
    assert code == 0, err
    _clean(out + err)
    assert "\x07" not in out
    assert "\nsigned by:   k\\\\x1b\\x1b]0;owned\\x07\n" in out, out
    assert "\\x1b[2J\n" in out.splitlines(keepends=True)[0], out
    code, out, err = run_cli("show", digest, "--provenance", "--json")
    assert json.loads(out)["keyids"] == ["k\\x1b\x1b]0;owned\x07"]


def test_a_permission_denied_in_another_user_s_home_says_whose_it_is(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walked through as an ordinary user with a home root made (GRAVEN_HOME=/var/lib/graven, say):
    `graven build` said `.../keys: permission denied; check its permissions`, an invitation to open
    up the directory of the signing keys. A path in a home of another user's says whose it is and
    what to do instead."""
    from graven.service import artifacts

    owner = os.stat(world.home).st_uid

    def theirs(*_args: object, **_kwargs: object) -> None:
        monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)  # this user is not the home's owner
        raise PermissionError(13, "Permission denied", str(world.home / "keys"))

    monkeypatch.setattr(artifacts, "resolve_digest", theirs)
    code, _out, err = run_cli("show", "abcd")
    assert code == 2
    assert err.startswith(f"graven: error: {world.home}/keys: permission denied; "), err
    assert "check its permissions" not in err
    assert f"GRAVEN_HOME {world.home} belongs to another user (" in err
    assert "run graven as that user" in err and "set GRAVEN_HOME to a home of your own" in err
    assert err.count("\n") == 1
