"""graven.db: the same plain SQL on stdlib sqlite3 and on PostgreSQL (through SQLAlchemy)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.db import SCHEMA_VERSION, Database
from graven.errors import BackendError, ConfigError, DatabaseBusyError


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'graven.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = Database.open(url)
    try:
        yield database
    finally:
        with database.begin() as conn:  # the PostgreSQL cluster is shared by the module's tests
            for table in ("deploy_envs", "git_blob_cache", "rejections"):
                conn.execute(f"DELETE FROM {table}")
        database.close()


def _env(name: str, held: bool) -> dict[str, object]:
    return {"name": name, "path": f"/srv/{name}", "held": held, "updated_at": "t"}


INSERT_ENV = (
    "INSERT INTO deploy_envs (name, path, held, updated_at) VALUES (:name, :path, :held, :updated_at)"
)


def test_schema_is_created_at_the_current_version(db: Database) -> None:
    assert db.schema_version() == SCHEMA_VERSION
    assert {"artifacts", "builds", "deployments", "drift_events", "log_entries"} <= db.table_names()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        # graven watch asks this of every environment every round; deploy and drift too
        (
            "SELECT digest, settings FROM deployments WHERE env = 'e' AND result = 'pending' "
            "ORDER BY id DESC LIMIT 1",
            "ix_deployments_pending",  # schema 11's: the pending rows alone
        ),
        (
            "SELECT digest FROM deployments WHERE env = 'e' AND result = 'ok' ORDER BY id DESC LIMIT 1",
            "ix_deployments_env_result",
        ),
        # retention (per release on disk), rollback's target and the graven.toml a digest ran with
        (
            "SELECT count(*), max(id) FROM deployments WHERE env = 'e' AND digest = 'd'",
            "ix_deployments_env_digest",
        ),
    ],
)
def test_questions_about_one_environment_s_history_use_an_index_on_both_columns(
    tmp_path: Path, query: str, index: str
) -> None:
    """A soak of months of deployments: each of these read every row of the environment (the index
    on env alone), tens of ms per question at 25,000 rows. (SQLite's plan; PostgreSQL has the same
    indexes from the same migration.)"""
    db = Database.open(f"sqlite:///{tmp_path / 'graven.db'}")
    try:
        with db.connect() as conn:
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}").all())
    finally:
        db.close()
    assert (
        f"USING INDEX {index} (env=? AND " in plan or f"USING COVERING INDEX {index} (env=? AND " in plan
    ), plan


def test_the_pending_rows_of_every_environment_are_read_from_their_own_index(tmp_path: Path) -> None:
    """Every deploy asks which other environments' deployments are pending (a killed deployer in its
    directory): the index on (env, result) answered it by reading all of itself."""
    db = Database.open(f"sqlite:///{tmp_path / 'graven.db'}")
    query = "SELECT DISTINCT env FROM deployments WHERE result = 'pending' AND env <> 'e'"
    try:
        with db.connect() as conn:
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}").all())
    finally:
        db.close()
    assert "ix_deployments_pending" in plan, plan


def test_rows_have_columns_as_attributes_and_booleans_round_trip(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(INSERT_ENV, [_env("prod", True), _env("qa", False)])  # executemany
    with db.connect() as conn:
        rows = conn.execute("SELECT name, held, path FROM deploy_envs ORDER BY name").all()
    assert [(r.name, r.held) for r in rows] == [("prod", True), ("qa", False)]
    assert all(type(r.held) is bool for r in rows)
    assert rows[0]._asdict() == {"name": "prod", "held": True, "path": "/srv/prod"}
    assert tuple(rows[1]) == ("qa", False, "/srv/qa")


def test_list_parameters_expand_and_an_empty_list_matches_nothing(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(INSERT_ENV, [_env(n, False) for n in ("a", "b", "c")])
    query = "SELECT name FROM deploy_envs WHERE name IN :names AND path <> :path ORDER BY name"
    with db.connect() as conn:
        assert list(conn.execute(query, {"names": ["a", "c", "x"], "path": ""}).scalars()) == ["a", "c"]
        assert conn.execute(query, {"names": [], "path": ""}).all() == []
        assert conn.execute("SELECT count(*) FROM deploy_envs").scalar_one() == 3


def test_select_in_crosses_chunk_boundaries(db: Database) -> None:
    rows = [{"git_oid": f"{i:040x}", "sha256": f"{i:064x}", "size": i} for i in range(2000)]
    with db.begin() as conn:
        conn.execute(
            "INSERT INTO git_blob_cache (git_oid, sha256, size) VALUES (:git_oid, :sha256, :size)", rows
        )
    wanted = [f"{i:040x}" for i in range(0, 2500, 3)]  # some are not there
    with db.connect() as conn:
        found = list(
            conn.select_in("SELECT git_oid, size FROM git_blob_cache WHERE git_oid IN :values", wanted)
        )
    assert sorted(found) == [(f"{i:040x}", i) for i in range(0, 2000, 3)]


def test_one_and_scalar_helpers(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(INSERT_ENV, [_env("a", False), _env("b", False)])
    with db.connect() as conn:
        assert conn.execute("SELECT name FROM deploy_envs WHERE name = 'x'").one_or_none() is None
        assert conn.execute("SELECT name FROM deploy_envs WHERE name = 'x'").scalar_one_or_none() is None
        assert conn.execute("SELECT name FROM deploy_envs ORDER BY name").first() == ("a",)
        with pytest.raises(BackendError, match="at most one row"):
            conn.execute("SELECT name FROM deploy_envs").one_or_none()
        with pytest.raises(BackendError, match="expected one row"):
            conn.execute("SELECT name FROM deploy_envs WHERE name = 'x'").one()


def test_a_failing_block_rolls_back_and_returning_gives_the_new_id(db: Database) -> None:
    with pytest.raises(RuntimeError), db.begin() as conn:
        conn.execute(INSERT_ENV, _env("gone", False))
        raise RuntimeError("boom")
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM deploy_envs").scalar_one() == 0
    with db.begin() as conn:
        ids = [
            conn.execute(
                """INSERT INTO drift_events (env, event, time, count, result)
                VALUES ('e', 'found', 't', 1, 'drift') RETURNING id"""
            ).scalar_one()
            for _ in range(2)
        ]
    assert ids[1] == ids[0] + 1


def test_sql_errors_become_one_line_backend_errors(db: Database) -> None:
    with pytest.raises(BackendError, match="database error"), db.connect() as conn:
        conn.execute("SELECT no_such_column FROM deploy_envs")
    with db.begin() as conn:  # the connection is usable again
        conn.execute(INSERT_ENV, _env("ok", False))
    with db.begin() as conn, pytest.raises(BackendError):
        conn.execute(INSERT_ENV, _env("ok", False))  # duplicate key


def test_concurrent_writers_queue_up(db: Database) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(20):
                with db.begin() as conn:
                    conn.execute(INSERT_ENV, _env(f"w{k}-{i}", False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM deploy_envs").scalar_one() == 80


def test_a_writer_that_waits_less_gives_up_without_writing_and_the_others_still_wait(db: Database) -> None:
    """``begin(wait=...)`` (graven watch's own writes) gives up after its wait with DatabaseBusyError;
    the connection it leaves in the pool waits the default 60 s again."""
    holder_in = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with db.begin() as conn:
            conn.execute(INSERT_ENV, _env("holder", False))
            holder_in.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holder_in.wait(5)
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError, match=r"more than 0\.2 s"), db.begin(wait=0.2) as conn:
            conn.execute(INSERT_ENV, _env("never", False))  # pragma: no cover - not reached
        # it waited, and not the default 60 s; generous (0.2 s is needed): a busy machine is slow at times
        assert 0.15 < time.monotonic() - started < 30
    finally:
        release.set()
        thread.join()
    with db.begin(wait=0.2) as conn:  # free: written at once
        conn.execute(INSERT_ENV, _env("later", False))
        if conn.dialect == "sqlite":  # the wait was for the others' lock; the rest waits as usual
            assert conn.execute("PRAGMA busy_timeout").scalar_one() == 60000
        else:
            assert conn.execute("SHOW lock_timeout").scalar_one() == "1min"
    with db.connect() as conn:
        assert sorted(conn.execute("SELECT name FROM deploy_envs").scalars()) == ["holder", "later"]
        if conn.dialect == "sqlite":
            assert conn.execute("PRAGMA busy_timeout").scalar_one() == 60000


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graven.db'}"
    Database.open(url).close()
    raw = sqlite3.connect(tmp_path / "graven.db")
    raw.execute("""UPDATE graven_meta SET value = '999' WHERE "key" = 'schema_version'""")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigError, match="newer than this graven understands") as refused:
        Database.open(url)
    assert refused.value.exit_code == 2  # not a failed check: this graven cannot read that home
    assert str(refused.value).startswith("cannot open the database ")
    raw = sqlite3.connect(tmp_path / "graven.db")  # refused before any write: nothing added
    assert raw.execute("SELECT value FROM graven_meta").fetchall() == [("999",)]
    raw.close()


def test_a_relative_sqlite_path_and_a_postgresql_url_without_a_database_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade review: sqlite:///meta.db opened meta.db of whatever directory graven ran in (a new,
    empty database there); a PostgreSQL URL without a database put graven's tables in the server's
    default one."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"relative path meta.db.*sqlite:////ABSOLUTE/PATH") as refused:
        Database.open("sqlite:///meta.db")
    assert refused.value.exit_code == 2 and not (tmp_path / "meta.db").exists()
    for url in (
        "postgresql+psycopg://u:Secret1@127.0.0.1:1",
        "postgresql+psycopg://u:Secret1@h:1/?x=1",
        "postgresql+psycopg://u:Sec/ret1@127.0.0.1:1",  # a '/' in the password is no database's
    ):
        with pytest.raises(ConfigError, match="names no database") as refused:
            Database.open(url)
        assert "Secret1" not in str(refused.value)
    # named in the query, or by libpq's environment: tried (nothing listens on port 1)
    for url in (
        "postgresql+psycopg://u@127.0.0.1:1?dbname=graven&connect_timeout=1",
        "postgresql+psycopg://u@127.0.0.1:1?service=graven&connect_timeout=1",
        "postgresql+psycopg://u:pa?ss@127.0.0.1:1/graven?connect_timeout=1",  # '?' in the password
    ):
        with pytest.raises(BackendError, match="cannot open the database"):
            Database.open(url)
    monkeypatch.setenv("PGDATABASE", "graven")
    with pytest.raises(BackendError, match="cannot open the database"):
        Database.open("postgresql+psycopg://u@127.0.0.1:1?connect_timeout=1")


def test_an_older_schema_in_a_home_this_user_cannot_write_says_an_upgrade_needs_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade review: a home of an older schema, read by a user who cannot write it, said only that
    its directory is read-only (the command only reads); the upgrade is what needs the write."""
    path = tmp_path / "graven.db"
    url = f"sqlite:///{path}"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parents[1] / "assets" / "schema-v5-sqlalchemy.sql").read_text())
    raw.execute("""INSERT INTO graven_meta ("key", value) VALUES ('schema_version', '5')""")
    raw.commit()
    raw.close()

    def no_wal(_raw: sqlite3.Connection) -> None:  # what SQLite says in a directory it cannot write
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr("graven.db._set_wal", no_wal)
    monkeypatch.setattr("graven.db._SqliteDatabase._cannot_write", lambda _self: True)
    with pytest.raises(BackendError, match=r"version 5, older than this graven's .* needs a user who can"):
        Database.open(url)


def test_bad_urls_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in-memory"):  # a URL naming no file: exit 2
        Database.open("sqlite://")
    with pytest.raises(ConfigError, match=r"cannot open the database .*: its directory .* does not exist"):
        Database.open(f"sqlite:///{tmp_path}/no/such/dir/graven.db")  # a typo in the URL: exit 2
    with pytest.raises(ConfigError, match="graven does not run on nosuchdialect databases"):
        Database.open("nosuchdialect://x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "does not run on mysql databases"),
        ("mssql+pyodbc://u@h/db", "does not run on mssql databases"),
        ("postgres://u@h/db", r"write postgresql\+psycopg://"),
        ("bogus", "is not a URL"),
        ("postgresql://gr:Hunter@PW42secret@127.0.0.1/db", "unescaped '@'"),
    ],
)
def test_urls_of_other_databases_are_refused_by_name_as_bad_input(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Database.open(url)
    assert refused.value.exit_code == 2
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # a CLI review: these were exit 1 with Python's own words, one with the password in them
        ("sqlite://u:Secret1@host/x.db", "names a host; an SQLite URL names a file"),
        ("postgresql+psycopg://u:Secret1@127.0.0.1:abc/db", "cannot be used"),
        ("postgresql+psycopg://u:Secret1@[::1/db", "cannot be used"),
        ("postgresql+asyncpg://u:Secret1@127.0.0.1/db", "through psycopg, not asyncpg"),
    ],
)
def test_unusable_database_urls_are_bad_input_and_never_show_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Database.open(url)
    assert refused.value.exit_code == 2
    assert "Secret1" not in str(refused.value), refused.value
    assert "\n" not in str(refused.value)


def test_a_password_in_the_query_is_never_shown() -> None:
    url = "postgresql+psycopg://gr:pw1@127.0.0.1:1/db?password=Secret1&sslpassword=Secret2&user=gr"
    with pytest.raises(BackendError) as failed:  # nothing listens on port 1
        Database.open(url)
    shown = str(failed.value)
    assert "Secret" not in shown and "pw1" not in shown, shown
    assert "password=***" in shown


def test_a_home_made_by_the_sqlalchemy_schema_keeps_working(tmp_path: Path) -> None:
    """Homes created before graven.db moved to plain SQL: the same tables, booleans stored as 0/1."""
    path = tmp_path / "graven.db"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parents[1] / "assets" / "schema-v5-sqlalchemy.sql").read_text())
    raw.execute("""INSERT INTO graven_meta ("key", value) VALUES ('schema_version', '5')""")
    raw.execute("INSERT INTO deploy_envs (name, path, held, updated_at) VALUES ('prod', '/srv', 1, 't')")
    raw.execute(
        """INSERT INTO deployments (env, digest, kind, actor, started_at, result, health, override)
        VALUES ('prod', 'sha256:00', 'deploy', 'me', 't', 'ok', 'none', 0)"""
    )
    raw.commit()
    raw.close()
    db = Database.open(f"sqlite:///{path}")
    try:
        assert db.schema_version() == SCHEMA_VERSION  # upgraded in place if newer than 5
        with db.connect() as conn:  # version 7: the rows a build trusts carry a tag
            assert conn.execute("SELECT count(tag) FROM git_blob_cache").scalar_one() == 0
            assert conn.execute("SELECT count(tag) FROM builds").scalar_one() == 0
            assert conn.execute("SELECT held FROM deploy_envs").scalar_one() is True
            assert conn.execute("SELECT override FROM deployments").scalar_one() is False
        with db.begin() as conn:  # new rows get the next id of the old table
            new_id = conn.execute(
                """INSERT INTO deployments (env, digest, kind, actor, started_at, result, health, override)
                VALUES ('prod', 'sha256:01', 'rollback', 'me', 't', 'ok', 'none', :o) RETURNING id""",
                {"o": False},
            ).scalar_one()
        assert new_id == 2
    finally:
        db.close()


def test_an_unfinished_result_never_outlives_its_transaction(db: Database, tmp_path: Path) -> None:
    with db.begin() as conn:
        conn.execute(INSERT_ENV, [_env(f"e{i}", False) for i in range(3)])
    # a read left half-way must not keep its snapshot on the pooled connection
    with db.connect() as conn:
        rows = conn.execute("SELECT name FROM deploy_envs ORDER BY name")
        assert next(iter(rows)).name == "e0"
    other = Database.open(db.url)
    try:
        with other.begin() as conn:
            conn.execute(INSERT_ENV, _env("later", False))
    finally:
        other.close()
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM deploy_envs").scalar_one() == 4
    # a write whose RETURNING rows are not all read still commits
    with db.begin() as conn:
        result = conn.execute("UPDATE deploy_envs SET path = 'p' RETURNING name")
        assert result.first() is not None
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM deploy_envs WHERE path = 'p'").scalar_one() == 4


def test_sqlite_urls_are_read_as_sqlalchemy_reads_them(tmp_path: Path) -> None:
    odd = tmp_path / "a%b?c"
    odd.mkdir()
    from graven.home import Home

    url = Home(odd).db_url  # the home's own URL escapes '%' and '?'
    Database.open(url).close()
    assert (odd / "graven.db").exists()
    Database.open(f"sqlite+pysqlite:///{tmp_path}/driver.db?timeout=5").close()
    assert (tmp_path / "driver.db").exists()
    Database.open(f"sqlite:///{tmp_path}/%41.db").close()  # %XX escapes are decoded
    assert (tmp_path / "A.db").exists()


def test_a_home_this_user_cannot_write_is_read_but_not_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only GRAVEN_HOME (a copy kept for an audit, a read-only mount): SQLite cannot make the
    WAL's shared-memory file beside the database, so graven reads it as an immutable file; a command
    that would write says so in one line. A writable home where the same open fails is an error."""
    path = tmp_path / "graven.db"
    url = f"sqlite:///{path}"
    made = Database.open(url)
    with made.begin() as conn:
        conn.execute(INSERT_ENV, _env("prod", True))
    made.close()
    (tmp_path / "graven.db-wal").mkdir()  # SQLite cannot open its write-ahead log: a real failure
    with pytest.raises(BackendError, match="cannot open the database") as failed:
        Database.open(url).schema_version()
    assert str(failed.value).count("cannot open the database") == 1  # said once, not twice
    real_access = os.access
    monkeypatch.setattr(
        "graven.db.os.access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    db = Database.open(url)
    try:
        with db.connect() as conn:
            assert conn.execute("SELECT name, held FROM deploy_envs").all() == [("prod", True)]
        with (
            pytest.raises(BackendError, match="directory is read-only for this user") as caught,
            db.begin() as conn,
        ):
            conn.execute(INSERT_ENV, _env("staging", False))
        assert "\n" not in str(caught.value)
    finally:
        db.close()


def test_a_read_only_home_with_commits_in_its_write_ahead_log_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy made while a process had the database open (graven watch, say) keeps recent commits in
    graven.db-wal: reading the database file alone would show an older state."""
    live = tmp_path / "live"
    live.mkdir()
    made = Database.open(f"sqlite:///{live / 'graven.db'}")
    holder = sqlite3.connect(live / "graven.db")  # keeps the log from being folded in at close
    holder.execute("SELECT 1 FROM deploy_envs").fetchall()
    with made.begin() as conn:
        conn.execute(INSERT_ENV, _env("prod", False))
    made.close()
    copy = tmp_path / "copy"
    copy.mkdir()
    (tmp_path / "system-tmp").mkdir(exist_ok=True)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "system-tmp"))
    for name in ("graven.db", "graven.db-wal"):  # no -shm: it is not copied, or not writable
        shutil.copyfile(live / name, copy / name)
    holder.close()
    assert (copy / "graven.db-wal").stat().st_size > 0
    real_access = os.access
    monkeypatch.setattr(
        "graven.db.os.access", lambda p, mode: False if str(p) == str(copy) else real_access(p, mode)
    )

    def cannot_make_shm(raw: sqlite3.Connection) -> None:  # as in a directory this user cannot write
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr("graven.db._set_wal", cannot_make_shm)
    db = Database.open(f"sqlite:///{copy / 'graven.db'}")
    try:
        with db.connect() as conn:
            assert list(conn.execute("SELECT name FROM deploy_envs").scalars()) == ["prod"]
    finally:
        db.close()
    assert sorted(p.name for p in copy.iterdir()) == ["graven.db", "graven.db-wal"]  # untouched


def test_a_read_only_open_removes_the_copy_a_killed_graven_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The private copy of a read-only database and its WAL is made in $TMPDIR (the home cannot hold
    it): a graven killed while it read left graven-db-* there for good. It is named after its
    process, and the next read-only open removes those whose process is gone, and only those."""
    import signal
    import subprocess
    import sys
    import tempfile

    from graven.store.local import writer_prefix

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, tempfile; from graven.store.local import writer_prefix; "
            f"tempfile.mkdtemp(prefix=writer_prefix('graven-db-'), dir={str(system_tmp)!r}); "
            "os.kill(os.getpid(), 9)",
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    assert len(os.listdir(system_tmp)) == 1  # the killed one's copy
    running = Path(tempfile.mkdtemp(prefix=writer_prefix("graven-db-"), dir=system_tmp))  # this process
    foreign = system_tmp / "graven-db-abc123"  # another graven's name, or not graven's: kept
    foreign.mkdir()
    test_a_read_only_home_with_commits_in_its_write_ahead_log_shows_them(tmp_path, monkeypatch)
    # the dead one removed; the private copy made meanwhile gone with the database
    assert sorted(os.listdir(system_tmp)) == sorted([running.name, foreign.name])


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("database is locked", "another graven has been writing to it for more than 60 s"),
        ("file is not a database", "restore graven.db from a backup"),
        ("database disk image is malformed", "restore graven.db from a backup"),
        ("attempt to write a readonly database", "make graven.db and its directory writable"),
    ],
)
def test_sqlite_errors_say_what_they_mean(message: str, hint: str) -> None:
    from graven.db import _sqlite_reason

    assert _sqlite_reason(sqlite3.OperationalError(message)).startswith(f"{message}: ")
    assert hint in _sqlite_reason(sqlite3.OperationalError(message))


def test_a_damaged_database_file_says_to_restore_it(tmp_path: Path) -> None:
    path = tmp_path / "graven.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(BackendError, match=r"restore graven\.db from a backup"):
        Database.open(f"sqlite:///{path}")


def test_tables_without_a_schema_version_are_refused_by_name(tmp_path: Path) -> None:
    """graven_meta emptied by hand: re-running the migrations would fail half-way (a column exists)."""
    url = f"sqlite:///{tmp_path / 'graven.db'}"
    Database.open(url).close()
    raw = sqlite3.connect(tmp_path / "graven.db")
    raw.execute("DELETE FROM graven_meta")
    raw.commit()
    raw.close()
    with pytest.raises(BackendError, match=r"tables but no schema version .* restore it from a backup"):
        Database.open(url)


def test_a_home_on_a_full_file_system_is_read_and_a_write_says_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite cannot make the WAL's shared-memory file on a full file system ("disk I/O error"):
    every command, `graven status` too, failed with that line, as if the disk were broken."""
    path = tmp_path / "graven.db"
    made = Database.open(f"sqlite:///{path}")
    with made.begin() as conn:
        conn.execute(INSERT_ENV, _env("prod", True))
    made.close()

    def no_shm(_raw: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    real_statvfs = os.statvfs

    class Full:
        f_bavail = 0
        f_frsize = 4096

    monkeypatch.setattr("graven.db._set_wal", no_shm)
    monkeypatch.setattr(
        "graven.db.os.statvfs", lambda p: Full() if str(p) == str(tmp_path) else real_statvfs(p)
    )
    db = Database.open(f"sqlite:///{path}")
    try:
        with db.connect() as conn:
            assert conn.execute("SELECT name, held FROM deploy_envs").all() == [("prod", True)]
        with (
            pytest.raises(BackendError, match="no space left on its file system") as caught,
            db.begin() as conn,
        ):
            conn.execute(INSERT_ENV, _env("staging", False))
        assert "free some space" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        db.close()


def test_a_database_file_replaced_while_a_process_runs_is_refused_not_written_behind(tmp_path: Path) -> None:
    """`graven watch` kept the replaced file open (a restore, a `db copy` moved into place): it went on
    recording into the deleted file, whose rows nobody would ever read, and said the new one was
    "malformed". Every transaction now checks that the file is still the one it opened."""
    import shutil

    path = tmp_path / "graven.db"
    db = Database.open(f"sqlite:///{path}")
    try:
        with db.begin() as conn:
            conn.execute("""INSERT INTO graven_meta ("key", value) VALUES ('marker', 'old')""")
        copy = tmp_path / "copy.db"
        source = sqlite3.connect(path)  # a consistent copy, then moved over the original
        source.execute(f"VACUUM INTO '{copy}'")
        source.close()
        shutil.move(copy, path)
        with (
            pytest.raises(
                BackendError, match=r"was replaced or removed while this graven ran; start it again"
            ),
            db.begin() as conn,
        ):
            conn.execute("""UPDATE graven_meta SET value = 'lost' WHERE "key" = 'marker'""")
    finally:
        db.close()
    fresh = Database.open(f"sqlite:///{path}")  # a new process takes the new file
    try:
        with fresh.connect() as conn:
            assert conn.execute("""SELECT value FROM graven_meta WHERE "key" = 'marker'""").scalar() == "old"
    finally:
        fresh.close()
    removed = Database.open(f"sqlite:///{path}")
    try:
        with removed.connect() as conn:
            conn.execute("SELECT 1")
        path.unlink()
        with pytest.raises(BackendError, match="was replaced or removed"), removed.connect() as conn:
            conn.execute("SELECT 1")
    finally:
        removed.close()


@pytest.mark.parametrize("given", ["/srv/graven/graven.db", "graven.db", "state/graven.db"])
def test_a_path_given_as_the_url_is_shown_with_the_url_to_write(given: str) -> None:
    """`graven db copy /srv/x.db` (or GRAVEN_DB_URL=/srv/x.db) said 'the database URL <invalid URL> is
    not a URL': neither what was typed nor the URL that names that file."""
    with pytest.raises(ConfigError) as refused:
        Database.open(given)
    assert refused.value.exit_code == 2
    assert str(refused.value) == (
        f"the database URL {given} is a path, not a URL; an SQLite file is "
        f"sqlite:///{os.path.abspath(given)} (sqlite:/// then the absolute path)"
    )


def test_a_url_naming_a_directory_is_bad_input_naming_a_file_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:  # was exit 1, "unable to open database file"
        Database.open(f"sqlite:///{tmp_path}")
    assert refused.value.exit_code == 2
    assert str(refused.value) == (
        f"cannot open the database {tmp_path}: it is a directory; name a file in it "
        f"(sqlite:///{tmp_path}/graven.db)"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory or unnamed"),
        ("sqlite:///:memory:", "in-memory or unnamed"),
        ("SQLITE:////srv/graven/graven.db", r"in lower case \(sqlite://\)"),
        ("Sqlite+pysqlite:////srv/graven/graven.db", r"in lower case \(sqlite\+pysqlite://\)"),
        ("POSTGRESQL+psycopg://u:Secret1@127.0.0.1/db", r"in lower case \(postgresql\+psycopg://\)"),
    ],
)
def test_a_malformed_sqlite_url_or_a_scheme_in_capitals_is_bad_input(url: str, message: str) -> None:
    """A database review: GRAVEN_DB_URL=sqlite:// (or :memory:, or SQLITE:////PATH) was exit 1, as if
    the database had failed, though the URL is what is wrong; SQLITE:// said only 'expected
    sqlite:///PATH', and POSTGRESQL+psycopg:// spoke of a plugin SQLAlchemy could not load."""
    with pytest.raises(ConfigError, match=message) as refused:
        Database.open(url)
    assert refused.value.exit_code == 2
    assert "Secret1" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////srv/graven/gra%00ven.db",
        "postgresql+psycopg://u:Sec%00ret1@127.0.0.1:1/db",
        "postgresql+psycopg://u:Secret1@127.0.0.1:1/d%00b?connect_timeout=1",
    ],
)
def test_a_nul_in_the_database_url_is_bad_input_never_a_truncated_connection(url: str) -> None:
    """A database review: %00 in an SQLite URL was a traceback (ValueError: embedded null byte); in a
    PostgreSQL URL libpq read its connection string only up to the NUL, and connected to another
    port and database (5432, the user's own) than the URL names."""
    with pytest.raises(ConfigError, match="NUL") as refused:
        Database.open(url)
    assert refused.value.exit_code == 2
    assert "Sec" not in str(refused.value) and "\n" not in str(refused.value)
