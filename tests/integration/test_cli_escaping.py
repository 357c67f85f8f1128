"""What graven prints for people never carries raw control characters: a file name planted in an
environment directory, a reason given to rollback or reject, or an OS error reaching the top cannot
draw fake lines or drive the operator's terminal (graven often runs as root over directories another
user can write)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from helpers_deploy import World

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


def test_a_config_diff_keeps_its_tabs(world: World, run_cli: Run) -> None:
    """The config's own lines are shown as they are (a tab-indented nginx file stays readable); only
    what could drive the terminal is escaped."""
    world.commit({"config/staging.toml": 'port = 8001\n\tbanner = "one"\n'})  # the health check reads it
    assert world.deploy(world.build(), "staging").ok
    world.commit({"config/staging.toml": 'port = 8001\n\tbanner = "two"\x1b[2J\n'})
    code, out, err = run_cli("deploy", world.build(), "staging", "--plan", "--root", world.root)
    assert code == 0, err
    assert '-\tbanner = "one"\n' in out and '+\tbanner = "two"\\x1b[2J\n' in out, out
