"""``graven db copy URL``: a home's database, history and audit log included, copied into an empty one
(SQLite to PostgreSQL, or to another SQLite file), after which the home goes on from the copy."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.db import Database
from graven.home import Home
from graven.service import dbcopy
from graven.service.context import Context
from helpers_deploy import World, make_world, tree_problems
from helpers_repo import run_cli

Capsys = pytest.CaptureFixture[str]


def _history(world: World, capsys: Capsys) -> dict[str, Any]:
    """What the commands that read the database say about the home."""
    seen: dict[str, Any] = {}
    for args in (["status"], ["history", "staging"], ["history", "prod"], ["artifacts"], ["log"]):
        code, out, err = run_cli(capsys, *args, "--json")
        assert code == 0, err
        seen[" ".join(args)] = json.loads(out)
    return seen


def _lived(world: World, capsys: Capsys) -> tuple[str, str]:
    """A home with history: v1 deployed, promoted to prod, v2 deployed and rolled back (held)."""
    v1 = world.build()
    v2 = world.version(2)
    assert run_cli(capsys, "deploy", v1, "staging")[0] == 0
    assert run_cli(capsys, "promote", "staging", "prod")[0] == 0
    assert run_cli(capsys, "deploy", v2, "staging")[0] == 0
    assert run_cli(capsys, "rollback", "staging", "--reason", "copy test")[0] == 0
    assert run_cli(capsys, "reject", v2, "--reason", "bad")[0] == 0
    return v1, v2


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A repository, a home and a deploy root (helpers_deploy), closed after the test."""
    made = make_world(tmp_path, monkeypatch)
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(made.root))
    yield made
    made.close()


def test_schema_columns_are_read_from_the_schema() -> None:
    booleans, serials = dbcopy.schema_columns()
    assert booleans == {"deploy_envs": ("held",), "deployments": ("override",)}
    assert serials == {"builds": "id", "attestations": "id", "deployments": "id", "drift_events": "id"}


def test_schema_tables_are_graven_s_own() -> None:
    tables = dbcopy.schema_tables()
    assert "graven_meta" in tables and "log_entries" in tables and "drift_events" in tables
    assert len(tables) == 14 and list(tables) == sorted(tables)


def test_tables_of_the_source_that_are_not_graven_s_are_left_out(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    """``sqlite_stat1`` (an operator's ANALYZE) or an application's table beside graven's: the copy
    refused before, blaming the destination ("lacks the tables sqlite_stat1: it is not graven's")."""
    world.build()
    with sqlite3.connect(world.home / "graven.db") as db:
        db.execute("CREATE TABLE notes (x INTEGER)")
        db.execute("ANALYZE")
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    code, out, err = run_cli(capsys, "db", "copy", url, "--json")
    assert code == 0, err
    assert set(json.loads(out)["rows"]) == set(dbcopy.schema_tables())


def test_a_source_whose_log_does_not_verify_is_refused_before_anything_is_written(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    """A copy of a rolled-back or damaged database cannot verify: it was written whole, then called
    unusable with "drop it and copy again", which could never help."""
    _lived(world, capsys)
    mark = world.home / "log" / "in-use"
    size, origin = mark.read_text().split()
    mark.write_text(f"{int(size) + 3} {origin}\n")  # the database is behind the home: rolled back
    target = tmp_path / "copy.db"
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{target}")
    assert code == 1 and "this home's audit log does not verify" in err and "rolled back" in err, err
    assert "nothing was copied" in err and len(err.strip().splitlines()) == 1, err
    with sqlite3.connect(target) as db:  # not even its schema was made
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []
    mark.write_text(f"{size} {origin}\n")
    with sqlite3.connect(world.home / "graven.db") as db:
        db.execute("UPDATE log_entries SET entry = replace(entry, 'copy test', 'edited') WHERE 1")
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{target}")
    assert code == 1 and "was changed" in err and "nothing was copied" in err, err
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_a_copy_to_another_sqlite_file_carries_the_home_on(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    v1, v2 = _lived(world, capsys)
    before = _history(world, capsys)
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    code, out, err = run_cli(capsys, "db", "copy", url, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["log_size"] == len(before["log"]) and report["rows"]["deployments"] == 4
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    assert _history(world, capsys) == before
    assert run_cli(capsys, "log", "verify")[0] == 0
    code, _, err = run_cli(capsys, "deploy", v2, "staging")  # still rejected and held
    assert code == 1 and "rejected" in err, err
    assert run_cli(capsys, "unhold", "staging", "--reason", "go on")[0] == 0
    v3 = world.version(3)
    code, _, err = run_cli(capsys, "deploy", v3, "staging")  # the witness knows this log
    assert code == 0, err
    assert tree_problems(world.root / "staging" / "current", world.manifest(v3)) == []
    assert run_cli(capsys, "log", "verify")[0] == 0
    assert v1 in json.dumps(_history(world, capsys)["history prod"])


def test_a_copy_into_a_database_with_rows_or_into_itself_is_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "empty-home"))
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{tmp_path / 'x.db'}")
    assert code == 2 and "has no database yet" in err, err
    assert not (tmp_path / "empty-home").exists() and not (tmp_path / "x.db").exists()
    monkeypatch.setenv("GRAVEN_HOME", str(world.home))
    world.build()
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{world.home / 'graven.db'}")
    assert code == 2 and "is this home's database already" in err, err
    other = tmp_path / "other.db"
    assert run_cli(capsys, "db", "copy", f"sqlite:///{other}")[0] == 0
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{other}")
    assert code == 2 and "holds rows already" in err and "in artifacts" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_copy_that_fails_midway_leaves_the_destination_empty(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    world.build()
    calls = 0
    real = dbcopy._insert

    def failing(conn: Any, table: str, batch: list[dict[str, Any]]) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        return real(conn, table, batch)

    monkeypatch.setattr(dbcopy, "_insert", failing)
    target = tmp_path / "copy.db"
    with pytest.raises(OSError), Context(home=Home.from_env()) as ctx:
        dbcopy.copy_database(ctx, f"sqlite:///{target}")
    assert calls == 3
    with sqlite3.connect(target) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "artifacts" in tables
        assert all(
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0 for t in tables if t != "graven_meta"
        )
    monkeypatch.setattr(dbcopy, "_insert", real)
    assert run_cli(capsys, "db", "copy", f"sqlite:///{target}")[0] == 0  # empty: a retry goes through


def test_a_source_written_after_the_copy_makes_the_copy_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """The copy is as new as the moment it was made: a deploy that still used the old database moved
    the home's high-water mark past it, and the copy is then a rolled-back database."""
    v1 = world.build()
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    assert run_cli(capsys, "db", "copy", url)[0] == 0
    assert run_cli(capsys, "deploy", v1, "staging")[0] == 0  # on the old database
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    code, _, err = run_cli(capsys, "log", "verify")
    assert code == 1, err
    code, _, err = run_cli(capsys, "deploy", v1, "prod")
    assert code != 0 and "roll" in err, err
    assert "graven db copy" in err and "copy again" in err, err  # what happened, and what to do


@pytest.mark.services
def test_a_copy_into_postgres_carries_the_home_on(
    world: World, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """SQLite to PostgreSQL: booleans (held, override) and the serial ids' sequences follow."""
    import psycopg

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS graven_copy")
        admin.execute("CREATE DATABASE graven_copy")
    url = postgres_url.rsplit("/", 1)[0] + "/graven_copy"
    _, v2 = _lived(world, capsys)
    before = _history(world, capsys)
    code, out, err = run_cli(capsys, "db", "copy", url)
    assert code == 0, err
    assert out.strip() == url  # no password to hide here
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    assert _history(world, capsys) == before
    assert run_cli(capsys, "unhold", "staging", "--reason", "go on")[0] == 0
    v3 = world.version(3)
    code, _, err = run_cli(capsys, "deploy", v3, "staging")
    assert code == 0, err
    rows = json.loads(run_cli(capsys, "history", "staging", "--json")[1])
    assert [r["digest"] for r in rows][-1] == v3 and rows[-1]["id"] > max(r["id"] for r in rows[:-1])
    assert run_cli(capsys, "log", "verify")[0] == 0
    database = Database.open(url)
    try:
        with database.connect() as conn:
            held = conn.execute("SELECT held FROM deploy_envs WHERE name = 'prod'").scalar_one()
        assert held is False
    finally:
        database.close()
    code, _, err = run_cli(capsys, "deploy", v2, "staging")
    assert code == 1 and "rejected" in err


def _new_database(postgres_url: str, name: str) -> str:
    import psycopg

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.services
def test_the_same_postgres_database_named_another_way_is_refused_at_once(
    world: World, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """localhost for 127.0.0.1: the copy waited 60 s for the writers' lock its own source held, then
    said another graven had been writing all that time."""
    import time

    url = _new_database(postgres_url, "graven_same")
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    world.build()
    start = time.monotonic()
    code, _, err = run_cli(capsys, "db", "copy", url.replace("@127.0.0.1:", "@localhost:"))
    assert code == 2 and "is this home's database already" in err, err
    assert time.monotonic() - start < 20


@pytest.mark.services
def test_a_copy_into_postgres_leaves_the_planner_statistics_of_its_rows(
    world: World, postgres_url: str, capsys: Capsys
) -> None:
    """Without them, after an earlier copy into the same database failed and autovacuum analyzed its
    dead rows (no rows in many pages), the copy's own verification joined entries to checkpoints by a
    nested loop: minutes for 50,000 entries."""
    url = _new_database(postgres_url, "graven_stats")
    _lived(world, capsys)
    assert run_cli(capsys, "db", "copy", url)[0] == 0
    database = Database.open(url)
    try:
        with database.connect() as conn:
            entries = conn.execute("SELECT COUNT(*) FROM log_entries").scalar_one()
            known = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'log_entries'").scalar_one()
        assert entries > 0 and known == entries
    finally:
        database.close()


def test_the_help_of_db_says_what_copy_does_in_a_whole_sentence(capsys: Capsys) -> None:
    """The listing showed the first line of a docstring cut mid-sentence: '... into an empty one (to
    move to'."""
    code, out, _ = run_cli(capsys, "db", "--help")
    assert code == 0
    listed = " ".join(out.split("copy", 1)[1].split())
    assert listed.endswith("into an empty one."), out


def _older_database(path: Path, version: int) -> None:
    """An SQLite file in graven's schema ``version`` (its first migrations only), one row past the
    version in graven_meta."""
    from graven.db import _META, MIGRATIONS

    conn = sqlite3.connect(path)
    try:
        conn.execute(_META)
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                conn.execute(statement.replace("{serial}", "INTEGER"))
        conn.execute(
            """INSERT INTO graven_meta ("key", value) VALUES ('schema_version', ?)""", (str(version),)
        )
        conn.execute("""INSERT INTO graven_meta ("key", value) VALUES ('log_origin', 'elsewhere')""")
        conn.commit()
    finally:
        conn.close()


def _schema_version(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        (value,) = conn.execute("""SELECT value FROM graven_meta WHERE "key" = 'schema_version'""").fetchone()
    finally:
        conn.close()
    return str(value)


def test_a_destination_of_an_older_schema_with_rows_is_refused_and_left_as_it_was(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    from graven.db import SCHEMA_VERSION

    world.build()
    older = tmp_path / "older.db"
    _older_database(older, SCHEMA_VERSION - 1)
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{older}")
    assert code == 2 and "holds rows already (1 in graven_meta)" in err, err
    assert _schema_version(older) == str(SCHEMA_VERSION - 1)  # not upgraded by a copy it refused
    empty = tmp_path / "older-empty.db"
    _older_database(empty, SCHEMA_VERSION - 1)
    conn = sqlite3.connect(empty)
    conn.execute("""DELETE FROM graven_meta WHERE "key" <> 'schema_version'""")
    conn.commit()
    conn.close()
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{empty}")
    assert code == 0, err  # an empty one of an older schema is upgraded, then filled
    assert _schema_version(empty) == str(SCHEMA_VERSION)


def test_a_destination_that_is_no_database_is_refused_as_a_destination(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    world.build()
    notes = tmp_path / "notes.db"
    notes.write_text("not a database, but a file someone cares about\n" * 100)
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{notes}")
    assert code == 2, err
    assert err.strip() == (
        f"graven: error: {notes} is a file but not an SQLite database; name a new file, or an empty "
        "database, to copy into"
    )
    assert notes.read_text().startswith("not a database")


def test_a_destination_that_refuses_graven_s_tables_is_named(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    """An error while the destination's tables were made did not say which of the two databases it was
    about (PostgreSQL: "database error: permission denied for schema public")."""
    world.build()
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("""CREATE TABLE graven_meta ("key" TEXT PRIMARY KEY, value TEXT NOT NULL)""")
    conn.execute("""INSERT INTO graven_meta ("key", value) VALUES ('schema_version', '99')""")
    conn.commit()
    conn.close()
    code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{newer}")
    assert code == 2, err
    assert err.startswith(f"graven: error: cannot make graven's tables in sqlite:///{newer}: "), err
    assert "99" in err and len(err.strip().splitlines()) == 1


@pytest.mark.services
@pytest.mark.parametrize(
    ("change", "hint"),
    [
        (lambda url: url.rsplit("/", 1)[0] + "/nosuchdb", "correct the database in the URL given to db copy"),
        (lambda url: url.replace("postgres@", "nosuchrole@"), "correct the user in the URL given to db copy"),
    ],
)
def test_a_destination_the_server_does_not_know_names_the_url_given_to_copy(
    world: World, postgres_url: str, capsys: Capsys, change: Any, hint: str
) -> None:
    """Found in a team review: a copy into a database not created yet said to "correct the database
    in GRAVEN_DB_URL", which names the source (the home's own database, fine as it is), and named the
    destination twice."""
    world.build()
    url = change(postgres_url)
    code, _, err = run_cli(capsys, "db", "copy", url)
    assert code == 2 and err.count("\n") == 1, err
    assert hint in err and "GRAVEN_DB_URL" not in err, err
    assert err.count(url.split("://", 1)[1]) == 1, err


@pytest.mark.parametrize("authority", ["bob:Hunter2Secret@", "bob:Hunter2Secret@db.example"])
def test_an_sqlite_url_with_a_password_is_refused_without_showing_it(
    world: World, tmp_path: Path, capsys: Capsys, authority: str
) -> None:
    world.build()  # a home with a database: the copy gets as far as comparing the two files
    code, out, err = run_cli(capsys, "db", "copy", f"sqlite://{authority}/{tmp_path / 'x.db'}", "--json")
    assert code == 2 and "names a host" in err, err
    assert "Hunter2Secret" not in err + out
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_a_home_this_user_can_only_read_is_copied(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """A home whose file system is full, or that this user cannot write (an auditor's copy, a
    read-only mount), is read as an immutable file, which nobody writes meanwhile: the copy, which
    writes nothing to its source, was refused with "cannot write the database ...", though moving
    such a home to PostgreSQL (or to a disk with room) is what it is for."""
    import os

    import graven.db

    _lived(world, capsys)
    before = _history(world, capsys)
    home, real_access, real_wal = str(world.home), os.access, graven.db._set_wal

    def cannot_make_shm(raw: sqlite3.Connection) -> None:  # as in a directory this user cannot write
        if any(row[2].startswith(home + os.sep) for row in raw.execute("PRAGMA database_list")):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real_wal(raw)

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    with monkeypatch.context() as patched:
        patched.setattr("graven.db.os.access", lambda p, mode: str(p) != home and real_access(p, mode))
        patched.setattr("graven.db._set_wal", cannot_make_shm)
        code, out, err = run_cli(capsys, "db", "copy", url, "--json")
    assert code == 0, err
    assert json.loads(out)["log_size"] == len(before["log"])
    monkeypatch.setenv("GRAVEN_DB_URL", url)
    assert _history(world, capsys) == before
    assert run_cli(capsys, "log", "verify")[0] == 0


def test_a_new_sqlite_destination_is_made_private_whatever_the_umask(
    world: World, tmp_path: Path, capsys: Capsys
) -> None:
    """The copy holds the home's history (actors, reasons, hook outputs), which the home keeps in a
    0700 directory: a new file made with the umask's mode (0644) let every user read it, and its
    write-ahead log beside it (SQLite makes those with the database file's mode)."""
    import os
    import stat

    _lived(world, capsys)
    target = tmp_path / "shared" / "copy.db"
    target.parent.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "db", "copy", f"sqlite:///{target}")
    finally:
        os.umask(old)
    assert code == 0, err
    database = Database.open(f"sqlite:///{target}")
    try:
        with database.begin() as conn:  # its write-ahead log and shared memory, while open
            conn.execute("INSERT INTO graven_meta (key, value) VALUES ('x', 'y')")
            made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.parent.iterdir()}
    finally:
        database.close()
    assert made == {"copy.db": 0o600, "copy.db-wal": 0o600, "copy.db-shm": 0o600}
