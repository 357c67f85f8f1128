"""``graven db copy URL``: this home's metadata database copied whole into an empty one, so that a home
that began on SQLite can move to PostgreSQL (or back, or to another file) without losing its history.

The copy is one transaction on each side: the source is read under its writers' lock (``BEGIN
IMMEDIATE`` on SQLite, the advisory lock every graven writer takes on PostgreSQL), so it is one
consistent state and no graven writes to it meanwhile (an SQLite file this user can only read, on a
full disk or a read-only mount, is read as one snapshot of that immutable file instead); the
destination is written in one transaction, so a copy that fails or is killed leaves it empty. Only
graven's tables are copied, rows as they are (ids included); on PostgreSQL the serial sequences follow
and the tables are analyzed. The source's audit log is verified first (a damaged or rolled-back one is
refused before anything is written), and the destination's after the copy, as ``graven log verify``
does. Nothing is written to the source.

The destination is only as new as the moment of the copy: when the source changes afterwards (a deploy
still using the old URL), the home's high-water mark (``log/in-use``) moves past the copy, and every
write and ``graven log verify`` refuse the copy as a rolled-back database. Stop deployers first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from graven.core.record import Frozen
from graven.db import MIGRATIONS, Connection, Database, redacted_url, sqlite_path
from graven.errors import BackendError, GravenError, InputError, VerificationError
from graven.service.audit import CHECK_STAGE  # the copy verifies two logs: audit is loaded anyway
from graven.service.context import Context, Reporter
from graven.service.records import insert_rows

__all__ = ["COPY_CHECK_STAGE", "CopyReport", "copy_database", "schema_columns", "schema_tables"]

COPY_CHECK_STAGE = "checking the copy's log entries"  # the source's walk, before, is log verify's own

_BATCH = 1000  # rows per INSERT statement (executemany)
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)\Z", re.DOTALL)
_COLUMN = re.compile(r'\s*"?(\w+)"? (\S+)')
_ADD = re.compile(r'ALTER TABLE (\w+) ADD COLUMN "?(\w+)"? (\S+)')


def schema_columns() -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """From the schema's statements (:data:`graven.db.MIGRATIONS`): the BOOLEAN columns of each table
    (SQLite keeps them as 0 and 1, which PostgreSQL refuses for a boolean) and each table's serial key
    (its sequence must follow the copied ids on PostgreSQL)."""
    booleans: dict[str, list[str]] = {}
    serials: dict[str, str] = {}
    for statement in (s for migration in MIGRATIONS for s in migration):
        if created := _CREATE.match(statement):
            table = created.group(1)
            for line in created.group(2).split(",\n"):
                column = _COLUMN.match(line)
                if column is None or column.group(1) in ("PRIMARY", "UNIQUE"):
                    continue
                name, kind = column.groups()
                if kind == "BOOLEAN":
                    booleans.setdefault(table, []).append(name)
                elif kind == "{serial}":
                    serials[table] = name
        elif (added := _ADD.match(statement)) and added.group(3) == "BOOLEAN":
            booleans.setdefault(added.group(1), []).append(added.group(2))
    return {t: tuple(c) for t, c in booleans.items()}, serials


def schema_tables() -> tuple[str, ...]:
    """The tables of graven's schema (:data:`graven.db.MIGRATIONS`, and ``graven_meta``), sorted: what
    a copy takes. Other tables in the source (``sqlite_stat1`` after an ``ANALYZE``, an application's
    own in a shared PostgreSQL database) are none of graven's business."""
    names = {"graven_meta"}
    for statement in (s for migration in MIGRATIONS for s in migration):
        if created := _CREATE.match(statement):
            names.add(created.group(1))
    return tuple(sorted(names))


class CopyReport(Frozen):
    """What a copy did."""

    __slots__ = ("log_root", "log_size", "rows", "target")
    _fields = ("target", "rows", "log_size", "log_root")
    target: str  # the destination, without secrets
    rows: dict[str, int]  # rows copied, by table
    log_size: int  # entries of the audit log, verified at the destination
    log_root: str  # its root (hex), as the latest signed checkpoint says

    def __init__(self, target: str, rows: dict[str, int], log_size: int, log_root: str) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "log_size", log_size)
        object.__setattr__(self, "log_root", log_root)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "target": self.target,
            "rows": dict(self.rows),
            "total_rows": sum(self.rows.values()),
            "log_size": self.log_size,
            "log_root": self.log_root,
        }


def _same_file(a: str, b: str) -> bool:
    if not (a.startswith("sqlite") and b.startswith("sqlite")):
        return False
    try:
        return os.path.samefile(sqlite_path(a), sqlite_path(b))
    except (OSError, GravenError):  # no file of its own (a host, a password): Database.open says so
        return False


def _rows(table: str) -> str:
    """The rows of ``table`` a copy takes: all but the schema version (the destination has its own)."""
    if table == "graven_meta":
        return """FROM graven_meta WHERE "key" <> 'schema_version'"""
    return f"FROM {table}"


def _count(conn: Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) {_rows(table)}").scalar_one())


def copy_database(ctx: Context, url: str) -> CopyReport:
    """Copy every row of this home's database into the empty graven database at ``url`` (created there
    when the database holds no tables), then verify the copy's audit log. Raises InputError for a
    destination that is this database (under any name) or holds rows already, VerificationError when
    this home's log does not verify (before anything is copied) or the copy's does not (nothing of the
    source is changed either way)."""
    source_url = ctx.home.db_url
    target = redacted_url(url)
    if url == source_url or _same_file(url, source_url):
        raise InputError(f"{target} is this home's database already; name another one to copy it into")
    if not ctx.home.has_database():
        raise InputError(
            f"this home has no database yet ({ctx.home.db_path}): there is nothing to copy; set "
            "GRAVEN_DB_URL to the new database and start there"
        )
    source = ctx.db  # opened (and brought to this graven's schema) first: a broken source fails here
    destination = _open_destination(url)
    booleans, serials = schema_columns()
    rows: dict[str, int] = {}
    try:
        _check_source(ctx)
        # a source this user can only read (a full disk, an auditor's read-only copy) is read as an
        # immutable file, which none of this user's gravens can write meanwhile: its writers' lock
        # cannot be taken (it is a write), and one snapshot is as consistent
        with source.connect() if source.read_only else source.begin() as src:
            if src.dialect == "postgresql" and destination.dialect == "postgresql":
                _refuse_same_database(src, destination, target)
            _refuse_rows(destination, target)  # before its schema is upgraded: a refusal changes nothing
            try:
                destination.upgrade()
            except (BackendError, InputError) as exc:  # which database, of the two, refused
                raise type(exc)(f"cannot make graven's tables in {target}: {exc.message}") from exc
            with destination.begin() as dst:
                tables = schema_tables()  # graven_meta too: the log's origin is there
                missing = set(tables) - destination.table_names()
                if missing:  # pragma: no cover - Database.open made them; a safeguard
                    names = ", ".join(sorted(missing))
                    raise InputError(f"{target} lacks the tables {names}: it is not graven's")
                _refuse_held(dst, tables, target)  # again, under the transaction the copy writes in
                total, done, report = sum(_count(src, t) for t in tables), 0, ctx.reporter.progress
                for table in tables:
                    flags = booleans.get(table, ()) if dst.dialect == "postgresql" else ()
                    copied = _copy_table(src, dst, table, flags, progress=report, of=(done, total))
                    done += copied
                    rows[table] = copied
                    report("copying rows", done, total)
                    if dst.dialect == "postgresql":
                        _follow(dst, table, serials.get(table))
    finally:
        destination.close()
    return _verified(ctx, url, target, rows)


def _open_destination(url: str) -> Database:
    """The destination, opened without changing its schema; a file that is no SQLite database is
    refused as a destination (InputError), not as a damaged graven.db to restore."""
    try:
        return Database.open(url, upgrade=False, named="the URL given to db copy")
    except BackendError as exc:
        if "file is not a database" in exc.message and url.startswith("sqlite"):
            raise InputError(
                f"{sqlite_path(url)} is a file but not an SQLite database; name a new file, or an empty "
                "database, to copy into"
            ) from None
        raise


def _refuse_rows(destination: Database, target: str) -> None:
    """Refuse a destination whose graven tables (of any schema version) hold rows."""
    present = destination.table_names()
    with destination.connect() as dst:
        _refuse_held(dst, [t for t in schema_tables() if t in present], target)


def _refuse_held(dst: Connection, tables: Iterable[str], target: str) -> None:
    held = {t: n for t in tables if (n := _count(dst, t))}
    if held:
        what = ", ".join(f"{n} in {t}" for t, n in sorted(held.items()))
        raise InputError(
            f"{target} holds rows already ({what}); copy into an empty database (drop and create it "
            "again, or name a new one)"
        )


def _follow(dst: Connection, table: str, serial: str | None) -> None:
    """On PostgreSQL, after the rows of ``table``: its serial key's sequence goes on after the copied
    ids, and its statistics are taken (ANALYZE counts the rows of its own transaction). Without them
    the planner knows nothing of the new rows, or believes what autovacuum saw of an earlier copy that
    failed (no rows in many pages): the verification below, and every ``graven log verify`` until
    autovacuum came by, then joined the log's entries to its checkpoints by a nested loop, minutes for
    50,000 entries."""
    if serial is not None:
        dst.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{serial}'), "  # noqa: S608
            f"(SELECT COALESCE(MAX({serial}), 0) + 1 FROM {table}), false)"
        )
    dst.execute(f"ANALYZE {table}")


def _copy_table(
    src: Connection,
    dst: Connection,
    table: str,
    flags: tuple[str, ...],
    *,
    progress: Callable[[str, int, int | None], None],
    of: tuple[int, int],
) -> int:
    """Copy the rows of ``table`` in batches (``flags``: its BOOLEAN columns, for PostgreSQL), reporting
    ``progress`` after ``of`` (rows copied before, in all); how many."""
    done, total = of
    batch: list[dict[str, Any]] = []
    copied = 0
    for row in src.stream(f"SELECT * {_rows(table)}"):
        record = row._asdict()
        for column in flags:
            if record[column] is not None:
                record[column] = bool(record[column])
        batch.append(record)
        if len(batch) == _BATCH:
            copied += _insert(dst, table, batch)
            batch = []
            progress("copying rows", done + copied, total)
    if batch:
        copied += _insert(dst, table, batch)
    return copied


def _check_source(ctx: Context) -> None:
    """Refuse, before anything is written, a source whose audit log does not verify (damaged, or rolled
    back behind this home's high-water mark): its copy would not verify either, and copying again
    would not help."""
    problems = ctx.audit.verify().problems
    if problems:
        raise VerificationError(
            f"this home's audit log does not verify ({problems[0]}); nothing was copied (a copy would not "
            "verify either): `graven log verify` lists what is wrong"
        )


def _refuse_same_database(src: Connection, destination: Database, target: str) -> None:
    """Refuse a destination that is the source's PostgreSQL database under another URL (localhost for
    127.0.0.1, another port forwarded to the server, another schema of it): the copy would wait for
    the writers' lock its own source holds, and then fail as if another graven were writing."""
    pid, started = src.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()::text").one()
    with destination.connect() as dst:
        same = dst.execute(
            """SELECT 1 FROM pg_stat_activity WHERE pid = :pid AND datname = current_database()
            AND pg_postmaster_start_time()::text = :started""",
            {"pid": pid, "started": started},
        ).first()
    if same is not None:
        raise InputError(
            f"{target} is this home's database already (the PostgreSQL database of GRAVEN_DB_URL, named "
            "another way); name another database to copy it into"
        )


class _CopyCheck:
    """The reporter of the copy's verification: its walk over the log is named apart from the
    source's, which ran before the copy under the same name as ``graven log verify``'s."""

    def __init__(self, inner: Reporter) -> None:
        self._inner = inner

    def warn(self, message: str) -> None:
        self._inner.warn(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        self._inner.progress(COPY_CHECK_STAGE if stage == CHECK_STAGE else stage, done, total)


def _insert(conn: Connection, table: str, batch: list[dict[str, Any]]) -> int:
    insert_rows(conn, table, batch)  # the destination is empty: a collision is an error
    return len(batch)


def _verified(ctx: Context, url: str, target: str, rows: dict[str, int]) -> CopyReport:
    """Verify the copy's audit log from this home, as ``graven log verify`` with the new URL would."""
    from graven.home import Home

    reporter = _CopyCheck(ctx.reporter)
    with Context(home=Home(root=ctx.home.root, db_url_override=url), reporter=reporter) as copy:
        report = copy.audit.verify()
    if report.problems:
        raise VerificationError(
            f"the copy in {target} was written, but its audit log does not verify: {report.problems[0]}; "
            "do not use it (drop it and copy again)"
        )
    return CopyReport(target=target, rows=rows, log_size=report.size, log_root=report.root or "")
