"""A team's second machine pointed at the first one's PostgreSQL database: a database belongs to one
home (its log key signs the log there), so the second home is refused, and every refusal says that
homes never share a database and what to do, not only "restore the log key from a backup"."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

CliResult = tuple[int, str, str]
Run = Callable[..., CliResult]

pytestmark = pytest.mark.services


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database of its own for this test, in GRAVEN_DB_URL for both homes."""
    import psycopg

    name = "graven_" + re.sub("[^a-z0-9]", "_", tmp_path.name.lower())
    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    return url


@pytest.mark.usefixtures("shared")
def test_a_second_home_on_the_database_of_another_is_told_to_use_its_own(
    new_home: Callable[[str], Path],
    make_repo: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Run,
) -> None:
    repo = make_repo(tmp_path / "repo", {"app/main.py": "print('v1')\n"})
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("a")))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("b")))
    assert run_cli("status")[0] == 0  # reading needs no log key
    for args in (("log", "verify"), ("log", "checkpoint")):  # said only "restore it from a backup"
        code, out, err = run_cli(*args)
        assert code != 0, (args, out, err)
        assert "names the database of another GRAVEN_HOME" in out + err, (args, out, err)
    code, _, err = run_cli("keys", "generate", "--name", "other")  # a write: its entry needs the key
    assert code == 2 and err.count("\n") == 1, err
    assert "homes never share one" in err and "give this home a database of its own" in err, err


@pytest.mark.usefixtures("shared")
def test_a_second_home_with_a_log_of_its_own_is_told_the_same(
    new_home: Callable[[str], Path],
    make_repo: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Run,
) -> None:
    """A PostgreSQL review: the second machine had begun on its own SQLite database (so it has a log
    key, which signed entries there) before GRAVEN_DB_URL was pointed at the team's database. Every
    write was refused, but as a damaged log ("the audit log's latest checkpoint does not verify ...
    run `graven log verify`", exit 1), and `log verify` reported a checkpoint without this key's
    signature: never that two homes share one database."""
    repo = make_repo(tmp_path / "repo", {"app/main.py": "print('v1')\n"})
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("a")))
    assert run_cli("build", "-C", repo)[0] == 0
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("b")))
    with monkeypatch.context() as own:  # b's first days, on its own SQLite database
        own.delenv("GRAVEN_DB_URL")
        code, _, err = run_cli("keys", "generate", "--name", "early")
        assert code == 0, err
    writes: list[tuple[object, ...]] = [("keys", "generate", "--name", "other"), ("build", "-C", repo)]
    for args in writes:
        code, _, err = run_cli(*args)
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert "homes never share one" in err and "give this home a database of its own" in err, (args, err)
    for reads in (("log", "verify"), ("log", "checkpoint")):
        code, out, err = run_cli(*reads)
        assert code != 0, (reads, out, err)
        assert "names the database of another GRAVEN_HOME" in out + err, (reads, out, err)
