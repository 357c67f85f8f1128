"""The same build and verify with the metadata in PostgreSQL (GRAVEN_DB_URL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers_repo import make_repo, run_cli

pytestmark = pytest.mark.services


def test_build_verify_and_schema_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "b/c.txt": "c\n"})
    assert run_cli(capsys, "keys", "generate")[0] == 0
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    code, out, err = run_cli(capsys, "build", "-C", str(repo))  # again: cache rows already there
    assert code == 0 and out.strip().splitlines()[-1] == digest
    assert run_cli(capsys, "verify", digest[:12])[0] == 0
    code, out, _ = run_cli(capsys, "artifacts", "--json")
    assert digest in out
    assert not (tmp_path / "home" / "graven.db").exists()
    assert (tmp_path / "home" / "log" / "in-use").is_file()  # written after a PostgreSQL commit too

    from graven.db import SCHEMA_VERSION, Database

    database = Database.open(postgres_url)
    try:
        assert database.schema_version() == SCHEMA_VERSION
    finally:
        database.close()


def test_a_writer_waits_for_another_a_bounded_time(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As SQLite's busy timeout: a writer stuck behind another fails in one line instead of waiting
    for ever (60 s; shortened here)."""
    import graven.db
    from graven.db import Database
    from graven.errors import BackendError

    monkeypatch.setattr(graven.db, "_LOCK_WAIT_MS", 300)
    holder, waiter = Database.open(postgres_url), Database.open(postgres_url)
    try:
        with (
            holder.begin(),  # holds the write lock
            pytest.raises(BackendError, match="the database is locked: another graven"),
            waiter.begin(),
        ):
            pass
        with waiter.begin() as conn:  # free again
            assert conn.execute("SELECT 1").scalar() == 1
    finally:
        holder.close()
        waiter.close()


def test_a_lock_held_past_the_wait_after_the_write_lock_says_so_and_names_the_database(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction outside graven (a DBA's, say) holding a table graven writes: the statement's
    lock timeout says what it is and what to do, and names the database, as SQLite's errors name the
    file (libpq's words name neither; found left open by a review)."""
    import sqlalchemy as sa

    import graven.db
    from graven.db import Database
    from graven.errors import BackendError

    monkeypatch.setattr(graven.db, "_LOCK_WAIT_MS", 300)
    db = Database.open(postgres_url)
    other = sa.create_engine(postgres_url)
    try:
        with db.begin() as conn:  # the schema exists
            conn.execute("SELECT 1")
        with other.connect() as holder, holder.begin():
            holder.execute(sa.text("LOCK TABLE deploy_envs IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(BackendError) as caught, db.begin() as conn:
                conn.execute("SELECT count(*) FROM deploy_envs")
        message = caught.value.message
        assert message.startswith("database error: canceling statement due to lock timeout"), message
        assert "held a row or table graven needed" in message and "pg_stat_activity" in message
        assert message.endswith(f"(database {sa.engine.make_url(postgres_url).render_as_string()})")
        assert "\n" not in message
    finally:
        other.dispose()
        db.close()


def test_a_database_named_in_an_error_shows_no_password() -> None:
    import sqlalchemy as sa

    from graven.db import _engine_url

    engine = sa.create_engine("postgresql+psycopg://graven:s3cret@db.example/graven?sslpassword=k3y")
    try:
        shown = _engine_url(engine)
    finally:
        engine.dispose()
    assert shown is not None and "s3cret" not in shown and "k3y" not in shown, shown
    assert shown.startswith("postgresql+psycopg://graven:***@db.example/graven"), shown


@pytest.mark.parametrize(
    "case",
    [
        (lambda url: url.replace("postgres@", "nosuchrole@"), "correct the user in GRAVEN_DB_URL"),
        (lambda url: url.rsplit("/", 1)[0] + "/nosuchdb", "correct the database in GRAVEN_DB_URL"),
        (lambda url: url + "?bogus=1", "correct the query parameters of GRAVEN_DB_URL"),
        (lambda url: url + "?sslmode=bogus", "correct the query parameters of GRAVEN_DB_URL"),
    ],
)
def test_a_user_or_database_the_server_does_not_know_is_a_mistake_in_the_url(
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[Callable[[str], str], str],
) -> None:
    """Found in a PostgreSQL review: these were exit 1 (a failure of the server underneath) with
    libpq's words alone; the user fixes them by changing GRAVEN_DB_URL, as a typo in an SQLite path."""
    change, hint = case
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRAVEN_DB_URL", change(postgres_url))
    code, out, err = run_cli(capsys, "status")
    assert code == 2, err
    assert out == ""
    assert err.startswith("graven: error: cannot open the database ") and err.count("\n") == 1, err
    assert hint in err


def test_a_wrong_password_says_to_correct_it() -> None:
    import psycopg
    import sqlalchemy as sa

    from graven.db import _alchemy_error
    from graven.errors import ConfigError

    failed = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
        'authentication failed for user "graven"'
    )
    error = _alchemy_error(sa.exc.OperationalError("connect", {}, failed))
    assert isinstance(error, ConfigError) and error.exit_code == 2
    assert error.message.endswith("correct the user or password in GRAVEN_DB_URL (or in ~/.pgpass)")


def _as_superuser(url: str, *statements: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_a_user_who_may_not_create_or_change_graven_s_tables_is_told_what_it_lacks(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in a PostgreSQL review: "permission denied for schema public" alone, with nothing said of
    what the user lacks or of who may run the command instead."""
    from graven.db import Database

    server = postgres_url.rsplit("/", 1)[0]
    _as_superuser(
        postgres_url,
        "CREATE DATABASE connect_only",
        "CREATE ROLE connector LOGIN",
        "GRANT CONNECT ON DATABASE connect_only TO connector",
        "CREATE DATABASE read_only",
        "CREATE ROLE reader LOGIN",
    )
    Database.open(f"{server}/read_only").close()  # graven's tables, owned by the superuser
    _as_superuser(f"{server}/read_only", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRAVEN_DB_URL", f"{server}/connect_only".replace("postgres@", "connector@"))
    code, _, err = run_cli(capsys, "status")
    assert code == 1 and err.count("\n") == 1, err
    assert "permission denied for schema public: this user may not create graven's tables" in err
    monkeypatch.setenv("GRAVEN_DB_URL", f"{server}/read_only".replace("postgres@", "reader@"))
    assert run_cli(capsys, "status")[0] == 0  # reading needs SELECT alone
    code, _, err = run_cli(capsys, "keys", "generate")  # its log entry is a write
    assert code == 1 and err.count("\n") == 1, err
    assert "this user may not change graven's tables; run this command as a user who may" in err


def test_a_server_that_is_down_says_to_start_it(tmp_path: Path) -> None:
    from graven.db import Database
    from graven.errors import BackendError

    with pytest.raises(BackendError, match="is the PostgreSQL server running and reachable") as failed:
        Database.open("postgresql+psycopg://graven@127.0.0.1:1/graven")  # nothing listens on port 1
    assert failed.value.exit_code == 1


def test_a_server_that_never_answers_is_given_up_on_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database review: a URL whose host takes the connection but never answers (a hung server, a
    firewall that drops, the wrong service behind the port) made every command wait forever: libpq
    waits without end unless connect_timeout is set. Now graven waits a bounded time, unless the URL
    (or PGCONNECT_TIMEOUT) says how long."""
    import socket
    import time

    from graven.db import Database
    from graven.errors import BackendError

    monkeypatch.setattr("graven.db._CONNECT_TIMEOUT_S", 2)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    with socket.socket() as silent:  # takes connections into its backlog, never accepts nor answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BackendError) as failed:
            Database.open(f"postgresql+psycopg://graven:Secret1@127.0.0.1:{port}/graven")
        assert time.monotonic() - started < 15
    shown = str(failed.value)
    assert "timeout expired" in shown and "is the PostgreSQL server running and reachable" in shown, shown
    assert "Secret1" not in shown and "\n" not in shown


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("FATAL:  sorry, too many clients already", "the server has no free connection"),
        ("FATAL:  remaining connection slots are reserved for roles", "the server has no free connection"),
        ("canceling statement due to statement timeout", "lift it for graven's user"),
        ("canceling statement due to lock timeout", "held a row or table graven needed"),
        ("terminating connection due to administrator command", "is the PostgreSQL server running"),
        ("FATAL:  the database system is shutting down", "is the PostgreSQL server running"),
        ("cannot execute INSERT in a read-only transaction", "point GRAVEN_DB_URL at the primary"),
        ('FATAL:  permission denied for database "graven"', "GRANT CONNECT ON DATABASE"),
    ],
)
def test_failures_of_the_server_say_what_to_do(message: str, hint: str) -> None:
    import psycopg
    import sqlalchemy as sa

    from graven.db import _alchemy_error
    from graven.errors import BackendError

    error = _alchemy_error(sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(message)))
    assert type(error) is BackendError
    assert error.message.startswith(f"database error: {message}: ")
    assert hint in error.message


def test_statements_after_a_stream_in_the_same_transaction_are_not_streamed(postgres_url: str) -> None:
    """A stream's options were set on the connection (SQLAlchemy 2 changes it in place), so every later
    statement of the transaction ran on a server-side cursor, and an executemany failed ("executemany
    not supported on server-side cursors": the audit log's upgrade streams entries, then inserts)."""
    from graven.db import Database

    db = Database.open(postgres_url)
    try:
        with db.begin() as conn:
            conn.execute("CREATE TEMP TABLE streamed (x INTEGER) ON COMMIT DROP")
            assert [row.one for row in conn.stream("SELECT 1 AS one")] == [1]
            conn.execute("INSERT INTO streamed (x) VALUES (:x)", [{"x": 1}, {"x": 2}])
            assert conn.execute("SELECT count(*) FROM streamed").scalar() == 2
    finally:
        db.close()


def test_writers_queue_up_whatever_isolation_the_server_defaults_to(postgres_url: str) -> None:
    """A server (or database, or role) whose default_transaction_isolation is repeatable read or
    serializable: a writer that waited for another's write lock read the rows as they were before that
    one committed (its snapshot was taken by the statement that waited), and failed with "could not
    serialize access" where SQLite queues writers up (found by a PostgreSQL runtime review)."""
    import threading

    import psycopg

    from graven.db import Database

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS graven_rr")
        admin.execute("CREATE DATABASE graven_rr")
        admin.execute("ALTER DATABASE graven_rr SET default_transaction_isolation = 'repeatable read'")
    url = postgres_url.rsplit("/", 1)[0] + "/graven_rr"
    first, second = Database.open(url), Database.open(url)
    bump = """INSERT INTO graven_meta ("key", value) VALUES ('counter', :v)
        ON CONFLICT ("key") DO UPDATE SET value = :v"""
    read = """SELECT value FROM graven_meta WHERE "key" = 'counter'"""
    failures: list[BaseException] = []

    def waiter() -> None:
        try:
            with second.begin() as conn:  # waits for the first writer's lock
                value = int(conn.execute(read).scalar() or 0)
                conn.execute(bump, {"v": str(value + 1)})
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    try:
        with first.begin() as conn:
            conn.execute(bump, {"v": "1"})
            thread = threading.Thread(target=waiter)
            thread.start()
            thread.join(0.5)  # the second writer is waiting for the lock now
            assert thread.is_alive()
        thread.join(10)
        assert not failures, failures
        with first.connect() as conn:
            assert conn.execute(read).scalar() == "2"  # the second read what the first committed
    finally:
        first.close()
        second.close()


def test_a_read_behind_a_lock_gives_up_in_one_line_instead_of_hanging(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL review: reads set no lock_timeout, so `graven status` (or artifacts, history) waited
    without end behind a migration's or a stuck session's ACCESS EXCLUSIVE lock, where a writer gives
    up after 60 s. A watchdog lets the lock go after 20 s, so that the old behaviour fails, not hangs."""
    import threading
    import time

    import psycopg

    import graven.db

    monkeypatch.setattr(graven.db, "_LOCK_WAIT_MS", 300)
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    assert run_cli(capsys, "status")[0] == 0  # the schema exists
    holder = psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    watchdog = threading.Timer(20, holder.close)
    try:
        holder.execute("LOCK TABLE deploy_envs IN ACCESS EXCLUSIVE MODE")
        watchdog.start()
        started = time.monotonic()
        code, out, err = run_cli(capsys, "status")
        elapsed = time.monotonic() - started
    finally:
        watchdog.cancel()
        holder.close()
    assert code == 1 and out == "", (code, out, err)
    assert elapsed < 15, elapsed
    assert err.startswith("graven: error: database error: canceling statement due to lock timeout"), err
    assert "pg_stat_activity" in err and err.count("\n") == 1, err


def _icu_database(postgres_url: str, name: str) -> str:
    """A database whose default collation is ICU's en-US, where '_' < '-' < '.' < digits (bytewise:
    '-' < '.' < digits < '_'): the URL of it, with graven's schema."""
    from graven.db import Database

    _as_superuser(
        postgres_url,
        f"DROP DATABASE IF EXISTS {name}",
        f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
    )
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    Database.open(url).close()
    return url


def test_environments_are_listed_in_the_same_order_as_on_sqlite_whatever_the_collation(
    postgres_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL review: `ORDER BY name` followed the database's collation, so status, drift's
    environments and reject's "live in" came out in another order than on SQLite (bytewise) under an
    en_US database."""
    import sqlalchemy as sa

    from graven.home import Home
    from graven.service.context import Context
    from graven.service.drift_live import live_targets
    from graven.service.environments import status

    url = _icu_database(postgres_url, "graven_icu")
    names = ["a1", "a.b", "a_b", "a-b"]
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            order = [
                row[0]
                for row in conn.execute(sa.text("SELECT unnest(CAST(:n AS text[])) ORDER BY 1"), {"n": names})
            ]
            assert order != sorted(names)  # the collation does differ from bytewise
            for name in names:
                conn.execute(
                    sa.text(
                        "INSERT INTO deploy_envs (name, path, live_digest, held, updated_at)"
                        " VALUES (:name, :path, :digest, false, '2024-01-01T00:00:00Z')"
                    ),
                    {"name": name, "path": str(tmp_path / name), "digest": "sha256:" + "0" * 64},
                )
    finally:
        engine.dispose()
    with Context(home=Home(root=tmp_path / "home", db_url_override=url)) as ctx:
        assert [env.env for env in status(ctx)] == sorted(names)
        assert [target.env for target in live_targets(ctx)] == sorted(names)


def test_the_psycopg_the_project_allows_says_what_is_wrong_in_a_bad_url() -> None:
    """A PostgreSQL review: psycopg 3.1.0-3.1.18 drop libpq's words for a bad connection parameter
    (`?sslmode=bogus` failed as 'connection is bad: "bogus"'), so the hint that makes it bad input (exit
    2) never matched and it was exit 1; 3.1.19 keeps them ('invalid sslmode value'). The lower bound
    of both requirements must not allow the older ones."""
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    bounds = [
        re.fullmatch(r"psycopg\[binary\]>=([\d.]+),<4", requirement)
        for requirement in (*extras["postgres"], *extras["dev"])
        if requirement.startswith("psycopg")
    ]
    assert len(bounds) == 2 and all(bounds), bounds
    for bound in bounds:
        assert bound is not None
        assert tuple(int(part) for part in bound.group(1).split(".")) >= (3, 1, 19), bound.group(0)
