"""The metadata database: one set of plain SQL, two drivers.

SQLite (WAL) by default, through the standard library's ``sqlite3``; any other URL in
``GRAVEN_DB_URL`` (PostgreSQL via psycopg) goes through SQLAlchemy Core, imported only then.
Importing SQLAlchemy costs about 0.1 s, more than half of what a short command otherwise takes,
so the default path never pays for it.

Every statement is written once, in the SQL that SQLite and PostgreSQL share: ``:name`` parameters,
``INSERT ... ON CONFLICT DO NOTHING``, ``RETURNING``. A parameter bound to a list or tuple expands
in place (``digest IN :digests``; the expansion is textual, so never write ``:name`` of a list
parameter inside a string literal). ``"commit"`` and ``"key"`` are keywords and are always quoted.
A result is read lazily, within its transaction: leaving the ``with`` block closes it.

The schema carries a version in ``graven_meta`` and is created and upgraded automatically, one
migration per version (SQL statements, then a backfill where plain SQL cannot derive the new rows),
inside one transaction.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from graven.errors import BackendError, ConfigError, DatabaseBusyError, DatabaseReplacedError, GravenError

if TYPE_CHECKING:
    import sqlalchemy

__all__ = [
    "SCHEMA_VERSION",
    "Connection",
    "Database",
    "Params",
    "Result",
    "Row",
    "sqlite_path",
]

Params = Mapping[str, Any]

# -- the schema -------------------------------------------------------------------------------------
# ``{serial}`` is the type of an auto-incrementing integer key in the dialect at hand. These are the
# statements SQLAlchemy's ``Table.create`` produced for the first releases, so old and new homes agree.

_META = """CREATE TABLE IF NOT EXISTS graven_meta (
    "key" VARCHAR(64) NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY ("key"))"""

_MIGRATION_1 = (
    """CREATE TABLE IF NOT EXISTS artifacts (
    digest VARCHAR(71) NOT NULL,
    name VARCHAR(200) NOT NULL,
    "commit" VARCHAR(64),
    repository TEXT,
    revision TEXT,
    pipeline_digest VARCHAR(71),
    source_date_epoch BIGINT NOT NULL,
    file_count INTEGER NOT NULL,
    total_size BIGINT NOT NULL,
    origin VARCHAR(16) NOT NULL,
    created_at VARCHAR(32) NOT NULL,
    PRIMARY KEY (digest))""",
    """CREATE TABLE IF NOT EXISTS builds (
    id {serial} NOT NULL,
    digest VARCHAR(71) NOT NULL,
    name VARCHAR(200) NOT NULL,
    "commit" VARCHAR(64) NOT NULL,
    repository TEXT NOT NULL,
    revision TEXT NOT NULL,
    pipeline_digest VARCHAR(71) NOT NULL,
    started_at VARCHAR(32) NOT NULL,
    finished_at VARCHAR(32) NOT NULL,
    builder TEXT NOT NULL,
    graven_version VARCHAR(32) NOT NULL,
    invocation_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (id))""",
    "CREATE INDEX IF NOT EXISTS ix_builds_digest ON builds (digest)",
    """CREATE TABLE IF NOT EXISTS git_blob_cache (
    git_oid VARCHAR(64) NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (git_oid))""",
)

_MIGRATION_2 = (
    """CREATE TABLE IF NOT EXISTS attestations (
    id {serial} NOT NULL,
    artifact_digest VARCHAR(71) NOT NULL,
    envelope_digest VARCHAR(71) NOT NULL,
    keyid VARCHAR(64) NOT NULL,
    created_at VARCHAR(32) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (artifact_digest, envelope_digest))""",
    "CREATE INDEX IF NOT EXISTS ix_attestations_artifact_digest ON attestations (artifact_digest)",
)

_MIGRATION_3 = (
    # `entry` is the canonical JSON, the only source of truth; time/event/artifact/env are derived
    # from it for filtering, and `graven log verify` checks that they agree.
    """CREATE TABLE IF NOT EXISTS log_entries (
    idx BIGINT NOT NULL,
    entry TEXT NOT NULL,
    leaf_hash VARCHAR(64) NOT NULL,
    time VARCHAR(32) NOT NULL,
    event VARCHAR(32) NOT NULL,
    artifact VARCHAR(71),
    env VARCHAR(128),
    PRIMARY KEY (idx))""",
    "CREATE INDEX IF NOT EXISTS ix_log_entries_artifact ON log_entries (artifact)",
    "CREATE INDEX IF NOT EXISTS ix_log_entries_time ON log_entries (time)",
    "CREATE INDEX IF NOT EXISTS ix_log_entries_env ON log_entries (env)",
    """CREATE TABLE IF NOT EXISTS log_checkpoints (
    size BIGINT NOT NULL,
    root VARCHAR(64) NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (size))""",
    # one row (id 1): the tree size and its compact range, O(log n) subtree hashes
    """CREATE TABLE IF NOT EXISTS log_state (
    id INTEGER NOT NULL,
    size BIGINT NOT NULL,
    frontier TEXT NOT NULL,
    PRIMARY KEY (id))""",
)

_MIGRATION_4 = (
    # the state of each environment; `path` is the resolved target directory
    """CREATE TABLE IF NOT EXISTS deploy_envs (
    name VARCHAR(64) NOT NULL,
    path TEXT NOT NULL,
    live_digest VARCHAR(71),
    live_deployment INTEGER,
    previous_digest VARCHAR(71),
    held BOOLEAN NOT NULL,
    held_digest VARCHAR(71),
    hold_reason TEXT,
    updated_at VARCHAR(32) NOT NULL,
    PRIMARY KEY (name))""",
    # every deployment: kind is deploy | promote | rollback | auto-rollback; result is pending | ok |
    # failed | interrupted; health is healthy | none | failed | unknown; settings is the canonical
    # JSON of the [env.NAME] settings used
    """CREATE TABLE IF NOT EXISTS deployments (
    id {serial} NOT NULL,
    env VARCHAR(64) NOT NULL,
    digest VARCHAR(71) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    source_env VARCHAR(64),
    previous_digest VARCHAR(71),
    actor TEXT NOT NULL,
    started_at VARCHAR(32) NOT NULL,
    finished_at VARCHAR(32),
    result VARCHAR(16) NOT NULL,
    health VARCHAR(16) NOT NULL,
    override BOOLEAN NOT NULL,
    reason TEXT,
    detail TEXT,
    settings TEXT,
    PRIMARY KEY (id))""",
    "CREATE INDEX IF NOT EXISTS ix_deployments_digest ON deployments (digest)",
    "CREATE INDEX IF NOT EXISTS ix_deployments_env ON deployments (env)",
    """CREATE TABLE IF NOT EXISTS rejections (
    digest VARCHAR(71) NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at VARCHAR(32) NOT NULL,
    PRIMARY KEY (digest))""",
)

_MIGRATION_5 = (
    # what the last check of each environment found: keys and alerted are canonical JSON lists of
    # sorted [path, kind] pairs; since is when the current drift was first found (NULL: clean)
    """CREATE TABLE IF NOT EXISTS drift_state (
    env VARCHAR(64) NOT NULL,
    digest VARCHAR(71),
    keys TEXT NOT NULL,
    count INTEGER NOT NULL,
    since VARCHAR(32),
    checked_at VARCHAR(32) NOT NULL,
    alerted TEXT NOT NULL,
    PRIMARY KEY (env))""",
    # every drift found, resolved, alerted and healed: event is found | resolved | alert | heal,
    # result ok | failed | drift | clean, detail canonical JSON
    """CREATE TABLE IF NOT EXISTS drift_events (
    id {serial} NOT NULL,
    env VARCHAR(64) NOT NULL,
    digest VARCHAR(71),
    event VARCHAR(16) NOT NULL,
    time VARCHAR(32) NOT NULL,
    count INTEGER NOT NULL,
    result VARCHAR(16) NOT NULL,
    detail TEXT,
    PRIMARY KEY (id))""",
    "CREATE INDEX IF NOT EXISTS ix_drift_events_env ON drift_events (env)",
)

_MIGRATION_6 = (
    # the graven.toml (object digest) whose settings a deployment used: drift reads the same ignore
    # globs, whichever other signed provenances of the artifact exist
    "ALTER TABLE deployments ADD COLUMN pipeline_digest VARCHAR(71)",
)

_MIGRATION_7 = (
    # HMAC-SHA256 (hex) of the row under the home's record key (GRAVEN_HOME/keys/records.hmac): a build
    # trusts a blob cache row, or a builds row as the base to carry entries forward from, only with a
    # valid tag, so that whoever can write the database alone cannot change what a build signs. Rows
    # without one (made before this version, or by hand) are ignored.
    "ALTER TABLE git_blob_cache ADD COLUMN tag VARCHAR(64)",
    "ALTER TABLE builds ADD COLUMN tag VARCHAR(64)",
)

_MIGRATION_8 = (
    # what a deploy, a rollback and every round of `graven watch` ask of one environment's history
    # (its pending row, the rows of one digest): each read the environment's every row before, which
    # a soak of months of deployments made tens of ms per question
    "CREATE INDEX IF NOT EXISTS ix_deployments_env_result ON deployments (env, result)",
    "CREATE INDEX IF NOT EXISTS ix_deployments_env_digest ON deployments (env, digest)",
)

_MIGRATION_9 = (
    # the newest N of a listing (`graven artifacts -n N`, `graven history ENV -n N`) read in index
    # order, N rows and no sort of the whole table: artifacts had no index on their time at all, and
    # PostgreSQL's index on deployments (env) does not hold the id (SQLite's holds the rowid, which id is)
    "CREATE INDEX IF NOT EXISTS ix_artifacts_created_at ON artifacts (created_at, digest)",
    "CREATE INDEX IF NOT EXISTS ix_deployments_env_id ON deployments (env, id)",
    # and `graven log --env E -n N` / `--artifact D -n N`: idx is no rowid alias (BIGINT), so the
    # indexes on (env) and (artifact) alone left every match to be sorted; these replace them
    "CREATE INDEX IF NOT EXISTS ix_log_entries_env_idx ON log_entries (env, idx)",
    "CREATE INDEX IF NOT EXISTS ix_log_entries_artifact_idx ON log_entries (artifact, idx)",
    "DROP INDEX IF EXISTS ix_log_entries_env",
    "DROP INDEX IF EXISTS ix_log_entries_artifact",
)

_MIGRATION_10 = (
    # the audit log's stored subtree hashes (service/logtree.py): the hash of every complete subtree of
    # 2**level entries, idx-th from the left, at the levels that are multiples of 8 (256 entries, 65,536,
    # ...; one row per 255 entries): a proof reads O(log n) of them instead of every entry. Filled for an
    # existing log by _fill_log_subtrees below, in the same upgrade transaction.
    """CREATE TABLE IF NOT EXISTS log_subtrees (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (level, idx))""",
)

_MIGRATION_11 = (
    # every deploy settles the pending rows other environments' killed deployers left in its directory
    # (service/deploy_records.reconcile_sharers): a question about all environments, which the index on
    # (env, result) answers only by reading all of it (37 ms at 200,000 deployments); pending rows are
    # few, and this index holds nothing else (result in it too: SQLite reads it alone then)
    "CREATE INDEX IF NOT EXISTS ix_deployments_pending ON deployments (env, result) WHERE result = 'pending'",
)

# One entry per schema version; never edit a released one, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _MIGRATION_1,
    _MIGRATION_2,
    _MIGRATION_3,
    _MIGRATION_4,
    _MIGRATION_5,
    _MIGRATION_6,
    _MIGRATION_7,
    _MIGRATION_8,
    _MIGRATION_9,
    _MIGRATION_10,
    _MIGRATION_11,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _fill_log_subtrees(conn: Connection) -> None:
    """Schema 10's rows for the log written so far: one pass over its entries."""
    from graven.service.logtree import fill  # the log's own code, loaded only by this upgrade

    fill(conn)


# What an upgrade computes after a version's statements (by the version it brings the schema to): rows
# that plain SQL cannot derive. Run in the same transaction, so a killed upgrade leaves nothing half-done.
BACKFILLS: dict[int, Callable[[Connection], None]] = {10: _fill_log_subtrees}

_SERIAL = {"sqlite": "INTEGER", "postgresql": "SERIAL"}


# -- rows and results --------------------------------------------------------------------------------


class Row(tuple[Any, ...]):
    """A result row: a tuple whose columns are also attributes (``row.digest``)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - every column is a property
        raise AttributeError(f"no column {name!r} in this row (columns: {', '.join(self._fields)})")

    def _asdict(self) -> dict[str, Any]:
        """The row as ``{column: value}``."""
        return dict(zip(self._fields, self, strict=True))


@functools.cache
def _row_type(fields: tuple[str, ...]) -> type[Row]:
    namespace: dict[str, Any] = {"__slots__": (), "_fields": fields}
    for index, name in enumerate(fields):
        namespace[name] = property(operator.itemgetter(index))
    return type("Row", (Row,), namespace)


class Result:
    """The rows of one statement, read lazily (iterate, or take ``one``/``first``/``all``...)."""

    def __init__(
        self, rows: Iterable[Row], rowcount: int = -1, close: Callable[[], object] | None = None
    ) -> None:
        self._rows = iter(rows)
        self.rowcount = rowcount
        self._close = close

    def __iter__(self) -> Iterator[Row]:
        return self._rows

    def close(self) -> None:
        """Release the cursor (the rows not read yet are dropped). The end of the transaction or read
        closes every result of it as well."""
        if self._close is not None:
            self._close()
            self._close = None
        self._rows = iter(())

    def all(self) -> list[Row]:
        """Every row."""
        rows = list(self._rows)
        self.close()
        return rows

    def first(self) -> Row | None:
        """The first row, or None (the rest is dropped)."""
        row = next(self._rows, None)
        self.close()
        return row

    def one_or_none(self) -> Row | None:
        """The only row, or None; more than one is an error."""
        row = next(self._rows, None)
        extra = row is not None and next(self._rows, None) is not None
        self.close()
        if extra:
            raise BackendError("database error: expected at most one row, got more")
        return row

    def one(self) -> Row:
        """The only row; none or more than one is an error."""
        row = self.one_or_none()
        if row is None:
            raise BackendError("database error: expected one row, got none")
        return row

    def scalar(self) -> Any:
        """The first column of the first row, or None."""
        row = self.first()
        return None if row is None else row[0]

    def scalar_one(self) -> Any:
        """The first column of the only row."""
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        """The first column of the only row, or None."""
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> Iterator[Any]:
        """The first column of every row."""
        return (row[0] for row in self)


class Connection(Protocol):
    """One connection, inside a transaction (:meth:`Database.begin`) or a read (:meth:`Database.connect`)."""

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        ...

    def execute(self, sql: str, params: Params | Sequence[Params] | None = None) -> Result:
        """Run one statement; a sequence of parameter mappings runs it once per mapping."""
        ...

    def stream(self, sql: str, params: Params | None = None) -> Result:
        """Like :meth:`execute`, for results too large to hold in memory at once."""
        ...

    def select_in(self, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` whose one ``IN :values`` is bound to ``values``, queried in chunks, as plain
        tuples: the fast path for looking many keys up at once."""
        ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed (never when it fails or is a read):
        for what may only be said of committed rows. Registered again in the same transaction (an
        append per log entry), it still runs once. Its errors are its own to handle."""
        ...


_PARAM = r"(?<![:\w]):([A-Za-z_]\w*)"  # compiled on first use (re caches it): start-up


def _expand(sql: str, params: Params) -> tuple[str, dict[str, Any]]:
    """Expand list/tuple parameters into ``(:p_0, :p_1, ...)``; an empty list matches nothing."""
    if not any(isinstance(v, list | tuple) for v in params.values()):
        return sql, dict(params)
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                flat[f"{key}__{index}"] = item
        else:
            flat[key] = value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = params.get(name)
        if not isinstance(value, list | tuple):
            return match.group(0)
        if not value:
            return "(SELECT NULL WHERE 1 = 0)"
        return "(" + ", ".join(f":{name}__{i}" for i in range(len(value))) + ")"

    return re.sub(_PARAM, replace, sql), flat


# -- SQLite through the standard library -----------------------------------------------------------

sqlite3.register_converter("BOOLEAN", lambda raw: raw not in (b"0", b""))


class _SqliteConnection:
    dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self.cursors: list[sqlite3.Cursor] = []  # closed when the transaction ends, read or not
        self.committed: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        if callback not in self.committed:  # once per transaction, however often it is asked for
            self.committed.append(callback)

    def close_cursors(self) -> None:
        """Close every cursor of this transaction: an unfinished one would keep a read snapshot open
        on a pooled connection, or make COMMIT fail ("SQL statements in progress")."""
        cursors, self.cursors = self.cursors, []
        for cursor in cursors:
            cursor.close()

    def execute(self, sql: str, params: Params | Sequence[Params] | None = None) -> Result:
        try:
            if params is None:
                cursor = self.raw.execute(sql)
            elif isinstance(params, Mapping):
                text, flat = _expand(sql, params)
                cursor = self.raw.execute(text, flat)
            else:
                if not params:
                    return Result((), 0)
                cursor = self.raw.executemany(sql, params)
        except sqlite3.Error as exc:
            raise BackendError(f"database error: {_sqlite_reason(exc)}") from exc
        if cursor.description is None:
            rowcount = cursor.rowcount
            cursor.close()
            return Result((), rowcount)
        self.cursors.append(cursor)
        row_type = _row_type(tuple(column[0] for column in cursor.description))
        return Result(_guarded(map(row_type, cursor)), cursor.rowcount, cursor.close)

    def stream(self, sql: str, params: Params | None = None) -> Result:
        return self.execute(sql, params)

    def select_in(self, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        # positional parameters (SQLite looks named ones up one by one) and no Row objects
        head, marker, tail = sql.partition(":values")
        if not marker:
            raise ValueError("select_in needs an IN :values placeholder")
        try:
            for start in range(0, len(values), _SQLITE_IN_CHUNK):
                chunk = values[start : start + _SQLITE_IN_CHUNK]
                text = f"{head}({','.join('?' * len(chunk))}){tail}"
                cursor = self.raw.execute(text, chunk)
                self.cursors.append(cursor)
                yield from cursor
        except sqlite3.Error as exc:
            raise BackendError(f"database error: {_sqlite_reason(exc)}") from exc


_SQLITE_IN_CHUNK = 900  # below SQLite's oldest limit of 999 parameters per statement


def _guarded(rows: Iterator[Row]) -> Iterator[Row]:
    try:
        yield from rows
    except sqlite3.Error as exc:
        raise BackendError(f"database error: {_sqlite_reason(exc)}") from exc


def _set_wal(raw: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``. Switching a brand-new file to WAL answers SQLITE_BUSY at once
    (without the busy handler) when another process does the same: two first commands on a fresh
    home. Retried with backoff for up to the busy timeout."""
    import time

    delay, deadline = 0.005, time.monotonic() + 60
    while True:
        try:
            raw.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


_BUSY_TIMEOUT_MS = 60_000  # how long an SQLite writer waits for another (Database.begin's default)


def _create_private(path: str) -> None:
    """Make the database file ``path`` mode 0600 when it does not exist yet, before SQLite makes it
    with the umask's mode (0644): a database outside the home's 0700 directory (`graven db copy`'s
    destination, a GRAVEN_DB_URL elsewhere) holds the home's history (actors, reasons, hook outputs)
    and must not be readable by other users. SQLite makes its write-ahead log and shared memory with
    the database file's mode. A file that cannot be made here is left to SQLite, whose error says why.
    Not in a directory private already: there the umask's mode stays, as a shared home needs it."""
    if os.path.lexists(path):
        return
    try:  # in a directory only its owner may enter (the home's, 0700) the umask's mode is kept: a home
        # shared for reading (an auditor's `graven log verify`, its directories made 0755) reads it
        if os.stat(os.path.dirname(os.path.abspath(path))).st_mode & 0o077 == 0:
            return
    except OSError:
        return  # SQLite's error says why
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        os.close(os.open(path, flags, 0o600))
    except OSError:
        return


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_BUSY: another connection holds the lock asked for."""
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


class _SqliteDatabase:
    """A small pool of ``sqlite3`` connections; writers take the lock at BEGIN (IMMEDIATE)."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.read_only = False  # set when the database can only be read (see _open)
        self._copy: str | None = None  # the private copy of a read-only database with its WAL
        self._full = False  # read-only because its file system is full
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file first opened

    def _check_same_file(self) -> None:
        """Refuse to go on when the database file was replaced or removed since this process first
        opened it (a restore, a `graven db copy` moved into place, while `graven watch` ran): its
        connections would read and write the old file, now deleted, and lose what they record."""
        if self._identity is None or self.read_only:
            return
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise DatabaseReplacedError(
                f"the database {self.path} was replaced or removed while this graven ran; start it "
                "again (stop `graven watch` before replacing graven.db)"
            )

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return self._open_read_only()
        _create_private(self.path)
        raw = sqlite3.connect(
            self.path,
            timeout=60,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # a pooled connection may serve another thread later
            detect_types=sqlite3.PARSE_DECLTYPES,
        )
        try:
            _set_wal(raw)
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            raw.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError:
            raw.close()
            full = self._disk_full()
            if not full and not self._cannot_write():
                raise
            self.read_only = True
            self._full = full
            return self._open_read_only()
        if self._identity is None:
            try:
                st = os.stat(self.path)
            except OSError:  # pragma: no cover - just opened: a removal in between is caught next time
                return raw
            self._identity = (st.st_dev, st.st_ino)
        return raw

    def _disk_full(self) -> bool:
        """Whether the database's file system has no space left, where SQLite cannot make the WAL's
        shared-memory file either ("disk I/O error"): what is recorded can still be read."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            st = os.statvfs(directory)
        except OSError:
            return False
        return os.path.isfile(self.path) and st.f_bavail * st.f_frsize < 64 * 1024

    def _cannot_write(self) -> bool:
        """Whether this user cannot write beside the database (a read-only GRAVEN_HOME: a copy kept
        for an audit, a read-only mount), where SQLite cannot make the WAL's shared-memory file."""
        directory = os.path.dirname(os.path.abspath(self.path))
        return os.path.isfile(self.path) and not os.access(directory, os.W_OK)

    def _open_read_only(self) -> sqlite3.Connection:
        """The database opened for reading only, as an immutable file: SQLite then needs no file
        beside it. Right for a home nobody writes (this user cannot); a writer with other rights
        changing it at the same time could make a read see a torn state. Commits still in a
        write-ahead log beside it (a copy made while a process had it open) are not lost: the
        database and its log are then read from a private copy (:meth:`_with_wal`)."""
        from urllib.parse import quote

        wal = f"{self.path}-wal"
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            return self._with_wal(wal)
        uri = "file:" + quote(os.path.abspath(self.path)) + "?mode=ro&immutable=1"
        raw = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            detect_types=sqlite3.PARSE_DECLTYPES,
        )
        raw.execute("PRAGMA foreign_keys=ON")
        return raw

    def _with_wal(self, wal: str) -> sqlite3.Connection:
        """A connection to a private copy of the database and its write-ahead log (made once, removed
        by :meth:`close`), where SQLite can apply the log as it reads."""
        import shutil
        import tempfile

        if self._copy is None:
            # in $TMPDIR (the home is read-only, or full); named after this process, so that the next
            # read-only open removes the copy a killed graven left (this home's WAL stays, so that is
            # the next command run on it)
            from pathlib import Path

            from graven.store.local import remove_dead_dirs, writer_prefix

            remove_dead_dirs(Path(tempfile.gettempdir()), "graven-db-")
            copy = tempfile.mkdtemp(prefix=writer_prefix("graven-db-"))
            try:
                shutil.copyfile(self.path, os.path.join(copy, "graven.db"))
                shutil.copyfile(wal, os.path.join(copy, "graven.db-wal"))
            except OSError as exc:
                shutil.rmtree(copy, ignore_errors=True)
                raise BackendError(f"cannot read the database {self.path}: {exc.strerror}") from None
            self._copy = copy
        raw = sqlite3.connect(
            os.path.join(self._copy, "graven.db"),
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
            detect_types=sqlite3.PARSE_DECLTYPES,
        )
        raw.execute("PRAGMA foreign_keys=ON")
        return raw

    @contextmanager
    def transaction(self, begin: str, *, commit: bool, wait: float | None = None) -> Iterator[Connection]:
        self._check_same_file()
        with self._lock:
            raw = self._idle.pop() if self._idle else None
        opened = False
        try:
            if raw is None:
                raw = self._open()
            if commit and self.read_only:
                raw.close()
                raw = None
                if self._full:
                    raise BackendError(
                        f"cannot write the database {self.path}: no space left on its file system (it "
                        "can be read, not changed); free some space, then run this command again"
                    )
                raise BackendError(
                    f"cannot write the database {self.path}: its directory is read-only for this user "
                    "(it can be read, not changed); run this command where GRAVEN_HOME is writable"
                )
            opened = True
            if wait is None:
                raw.execute(begin)
            else:  # this writer's own wait for the others (the lock is taken at BEGIN IMMEDIATE)
                raw.execute(f"PRAGMA busy_timeout={max(0, round(wait * 1000))}")
                try:
                    raw.execute(begin)
                finally:
                    raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            if raw is not None:
                raw.close()
            if opened and _is_busy(exc):
                reason = (
                    _sqlite_reason(exc)
                    if wait is None
                    else f"{_first_line(exc)}: another writer has held it for more than {wait:g} s"
                )
                raise DatabaseBusyError(
                    f"cannot begin a transaction in the database {self.path}: {reason}"
                ) from exc
            what = "cannot begin a transaction in" if raw is not None and opened else "cannot open"
            parent = os.path.dirname(self.path)
            if what == "cannot open" and _name_too_long(self.path):  # a typo or a paste in the URL
                raise ConfigError(
                    f"cannot open the database {self.path}: file name too long (a name in it longer than "
                    "its file system takes, or the whole path); correct the path in the URL "
                    "(GRAVEN_DB_URL, or the one given to db copy)"
                ) from exc
            if what == "cannot open" and parent and not os.path.lexists(parent):
                # a typo in GRAVEN_DB_URL (graven makes its home's directory before it opens graven.db)
                # or in the URL of `graven db copy`
                raise ConfigError(
                    f"cannot open the database {self.path}: its directory {parent} does not exist; "
                    "create it, or correct the path in the URL (GRAVEN_DB_URL, or the one given to db copy)"
                ) from exc
            if (
                what == "cannot open"
                and os.path.isfile(self.path)
                and not os.access(self.path, os.R_OK | os.W_OK)
            ):
                st = os.stat(self.path)  # not its directory's fault, as SQLite's "unable to open" says
                raise BackendError(
                    f"cannot open the database {self.path}: this user cannot read and write it (mode "
                    f"{st.st_mode & 0o7777:04o}, owner uid {st.st_uid}); make it this user's, mode 0600 "
                    "(chown, chmod)"
                ) from exc
            if what == "cannot open" and os.path.isdir(self.path):  # the URL names a directory
                raise ConfigError(
                    f"cannot open the database {self.path}: it is a directory; name a file in it "
                    f"(sqlite:///{os.path.join(self.path, 'graven.db')})"
                ) from exc
            raise BackendError(f"{what} the database {self.path}: {_sqlite_reason(exc)}") from exc
        conn = _SqliteConnection(raw)
        try:
            yield conn
        except BaseException:
            try:
                conn.close_cursors()
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
            except sqlite3.Error:  # the connection is unusable: drop it, report the first error
                raw.close()
            else:
                with self._lock:
                    self._idle.append(raw)
            raise
        try:
            conn.close_cursors()
            raw.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error as exc:  # pragma: no cover - COMMIT failing after busy_timeout
            raw.close()
            raise BackendError(f"database error: {_sqlite_reason(exc)}") from exc
        with self._lock:
            self._idle.append(raw)
        if commit:
            for callback in conn.committed:
                callback()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            raw.close()
        if self._copy is not None:
            import shutil

            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None


# -- anything else through SQLAlchemy Core ----------------------------------------------------------

# Where a URL came from, as an error's hint names what to correct: the home's database; ``graven db
# copy`` opens its destination as "the URL given to db copy".
HOME_URL = "GRAVEN_DB_URL"


class _AlchemyConnection:
    def __init__(self, conn: sqlalchemy.Connection, named: str) -> None:
        self.conn = conn
        self.named = named
        self.dialect = conn.dialect.name
        self.committed: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        if callback not in self.committed:  # once per transaction, however often it is asked for
            self.committed.append(callback)

    def _run(self, sql: str, params: Params | Sequence[Params] | None, *, stream: bool) -> Result:
        import sqlalchemy as sa

        # per statement: Connection.execution_options() changes the connection itself (SQLAlchemy 2), and
        # every statement after a stream in the transaction was streamed too (executemany then failed)
        options = {"stream_results": True, "yield_per": 20_000} if stream else {}
        conn = self.conn
        try:
            if params is None or isinstance(params, Mapping):
                text, flat = _expand(sql, params or {})
                result = conn.execute(sa.text(text), flat, execution_options=options)
            else:
                if not params:
                    return Result((), 0)
                result = conn.execute(sa.text(sql), list(params))
        except sa.exc.SQLAlchemyError as exc:
            raise _alchemy_error(exc, where=_engine_url(self.conn.engine), named=self.named) from exc
        if not result.returns_rows:
            return Result((), result.rowcount)
        row_type = _row_type(tuple(result.keys()))
        return Result((row_type(row) for row in result), result.rowcount, result.close)

    def execute(self, sql: str, params: Params | Sequence[Params] | None = None) -> Result:
        return self._run(sql, params, stream=False)

    def stream(self, sql: str, params: Params | None = None) -> Result:
        return self._run(sql, params, stream=True)

    def select_in(self, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(values), 500):
            yield from (
                tuple(row) for row in self.execute(sql, {"values": list(values[start : start + 500])})
            )


_LOCK_WAIT_MS = 60_000  # how long a PostgreSQL writer waits for another (SQLite: busy_timeout)
_CONNECT_TIMEOUT_S = 30  # how long a new connection to PostgreSQL may take, unless the URL says


def _sets_connect_timeout(url: str) -> bool:
    """Whether libpq is told how long to wait for a connection other than by graven: ``connect_timeout``
    in the URL's query, PGCONNECT_TIMEOUT, or a service (pg_service.conf may set it; an explicit value
    would override the file's)."""
    query = url.partition("?")[2]
    keys = {part.partition("=")[0] for part in query.split("&")}
    environ = os.environ.get("PGCONNECT_TIMEOUT") or os.environ.get("PGSERVICE")
    return bool(keys & {"connect_timeout", "service"}) or bool(environ)


class _AlchemyDatabase:
    def __init__(self, url: str, named: str) -> None:
        self.named = named
        try:
            import sqlalchemy as sa
        except ImportError:
            raise BackendError(
                f"{named} names a database other than SQLite, which needs SQLAlchemy: "
                "install graven[postgres]"
            ) from None

        # libpq waits without end for a server that takes the connection and never answers (hung, or a
        # firewall that drops): a bounded wait, unless the URL, its service or PGCONNECT_TIMEOUT sets one
        timeout = {} if _sets_connect_timeout(url) else {"connect_timeout": _CONNECT_TIMEOUT_S}
        self.engine = sa.create_engine(url, pool_pre_ping=True, connect_args=timeout)
        self.dialect = self.engine.dialect.name

    @contextmanager
    def transaction(self, begin: str, *, commit: bool, wait: float | None = None) -> Iterator[Connection]:
        import sqlalchemy as sa

        try:
            if commit:
                # READ COMMITTED whatever the server's default_transaction_isolation: each statement
                # after the lock then sees what the writer before committed (under repeatable read or
                # serializable, the snapshot of the statement that waited for the lock: a writer that
                # queued up failed with "could not serialize access" or wrote from stale rows)
                with (
                    self.engine.connect().execution_options(isolation_level="READ COMMITTED") as conn,
                    conn.begin(),
                ):
                    # writers queue up, as BEGIN IMMEDIATE makes them on SQLite: a transaction that
                    # reads, then writes what it read (state rows, the audit log) is never interleaved;
                    # and, as there, a writer waits 60 s at most for the others (or ``wait``)
                    wait_ms = _LOCK_WAIT_MS if wait is None else max(1, round(wait * 1000))
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{wait_ms}ms'"))
                    try:
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7438002)"))
                    except sa.exc.OperationalError as exc:
                        if "lock timeout" not in str(exc):
                            raise
                        raise DatabaseBusyError(
                            "the database is locked: another graven has been writing to it for more "
                            f"than {wait_ms / 1000:g} s"
                            + (
                                "; try again when it is done (a stuck one shows in pg_stat_activity)"
                                if wait is None
                                else ""
                            )
                        ) from None
                    if wait_ms != _LOCK_WAIT_MS:  # ``wait`` is for the others' lock; the rest waits as usual
                        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_LOCK_WAIT_MS}ms'"))
                    written = _AlchemyConnection(conn, self.named)
                    yield written
                # committed: the block ended without an error
                for callback in written.committed:
                    callback()
            else:
                # a read sees one snapshot, as on SQLite (READ COMMITTED gives each statement its own)
                with (
                    self.engine.connect().execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    ) as conn,
                    conn.begin(),
                ):
                    # and waits as long as a writer at most: a migration's or a stuck session's ACCESS
                    # EXCLUSIVE lock kept status, artifacts, history waiting without end
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_LOCK_WAIT_MS}ms'"))
                    yield _AlchemyConnection(conn, self.named)
        except sa.exc.SQLAlchemyError as exc:
            raise _alchemy_error(exc, where=_engine_url(self.engine), named=self.named) from exc

    def close(self) -> None:
        self.engine.dispose()


# -- the database ------------------------------------------------------------------------------------


class Database:
    """The metadata database; open with :meth:`open`."""

    def __init__(self, backend: _SqliteDatabase | _AlchemyDatabase, url: str) -> None:
        self._backend = backend
        self.url = url

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.dialect

    @property
    def read_only(self) -> bool:
        """Whether this database can only be read (an SQLite file this user cannot write beside, or on
        a full file system), as found when it was first opened: read as an immutable file then."""
        return isinstance(self._backend, _SqliteDatabase) and self._backend.read_only

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True, named: str = HOME_URL) -> Database:
        """Connect and bring the schema up to date (with ``upgrade`` False: only read which schema it
        holds, for a caller that must look at it first; :meth:`upgrade` then). A URL of another kind of
        database is a ConfigError (exit 2): graven's schema and locks are SQLite's and PostgreSQL's.
        ``named``: where ``url`` came from, as the hints of its errors say what to correct."""
        _check_dialect(url)
        try:
            backend: _SqliteDatabase | _AlchemyDatabase
            if url.startswith("sqlite"):
                backend = _SqliteDatabase(sqlite_path(url))
            else:
                backend = _AlchemyDatabase(url, named)
        except BackendError:
            raise
        except (ValueError, ImportError) as exc:  # a malformed URL (a port that is no number), no driver
            raise _unusable(url, exc) from exc
        except Exception as exc:  # SQLAlchemy's URL and driver errors
            if type(exc).__name__ in ("ArgumentError", "NoSuchModuleError"):
                raise _unusable(url, exc) from exc
            raise BackendError(f"cannot open the database {redacted_url(url)}: {_first_line(exc)}") from exc
        database = cls(backend, url)
        try:
            if upgrade:
                database.upgrade()
            else:
                database.stored_version()  # the first connection, failing as an upgrade's would
        except (BackendError, ConfigError) as exc:
            database.close()
            if isinstance(backend, _SqliteDatabase) and "disk I/O error" in exc.message:
                kind = _walless_file_system(backend.path)
                if kind is not None:
                    raise BackendError(
                        f"cannot open the database {backend.path}: disk I/O error on a {kind} file "
                        "system, where SQLite cannot keep graven's database (its write-ahead log needs "
                        "shared memory maps and POSIX locks); put GRAVEN_HOME on a local file system "
                        "(ext4, xfs, btrfs, tmpfs), or set GRAVEN_DB_URL to a PostgreSQL database"
                    ) from exc
            if exc.message.startswith("cannot open the database"):
                raise  # it says so already (the backend's own first connection)
            message = exc.message
            if isinstance(backend, _AlchemyDatabase):  # its "(database URL)" would name it a second time
                message = message.removesuffix(f" (database {_engine_url(backend.engine)})")
            raise type(exc)(f"cannot open the database {redacted_url(url)}: {message}") from exc
        return database

    def _stored_version(self, conn: Connection) -> int | None:
        if not _has_table(conn, "graven_meta"):
            return None
        value = conn.execute(
            """SELECT value FROM graven_meta WHERE "key" = 'schema_version'"""
        ).scalar_one_or_none()
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise BackendError(
                f"the database's schema_version is {str(value)[:40]!r}, not a number: it is not graven's, "
                "or it was edited by hand"
            ) from None

    def stored_version(self) -> int | None:
        """The schema version the database holds; None when it holds no graven schema."""
        with self.connect() as conn:
            return self._stored_version(conn)

    def upgrade(self) -> None:
        """Bring the schema up to this graven's version (refusing a newer one)."""
        with self.connect() as conn:
            stored = self._stored_version(conn)
        if stored == SCHEMA_VERSION:
            return  # the common case: a read, no write lock
        if stored is not None and stored > SCHEMA_VERSION:
            raise _newer(stored)  # said before any write (or lock) is asked for
        try:
            self._migrate()
        except BackendError as exc:
            text = exc.message.lower()
            if stored is not None and any(word in text for word in ("read-only", "readonly", "permission")):
                raise BackendError(
                    f"the database schema is version {stored}, older than this graven's "
                    f"({SCHEMA_VERSION}), and upgrading it needs a user who can write it ({exc.message}); "
                    "run one graven command as that user first"
                ) from exc
            raise

    def _migrate(self) -> None:
        with self.begin() as conn:
            if conn.dialect == "postgresql":
                conn.execute("SELECT pg_advisory_xact_lock(7438001)")
            conn.execute(_META)
            stored = self._stored_version(conn)
            current = stored or 0
            if stored is None and _has_table(conn, "artifacts"):
                raise BackendError(
                    "the database holds graven's tables but no schema version (graven_meta): it was "
                    "edited by hand; restore it from a backup"
                )
            if current > SCHEMA_VERSION:  # upgraded meanwhile by a newer graven
                raise _newer(current)
            serial = _SERIAL.get(conn.dialect, "INTEGER")
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement.replace("{serial}", serial))
                if (backfill := BACKFILLS.get(version + 1)) is not None:
                    backfill(conn)
            if current != SCHEMA_VERSION:
                conn.execute(
                    """INSERT INTO graven_meta ("key", value) VALUES ('schema_version', :v)
                    ON CONFLICT ("key") DO UPDATE SET value = :v""",
                    {"v": str(SCHEMA_VERSION)},
                )

    @contextmanager
    def begin(self, *, wait: float | None = None) -> Iterator[Connection]:
        """A transaction that commits when the block ends normally and rolls back otherwise.

        On SQLite it takes the write lock at once (``BEGIN IMMEDIATE``), so that concurrent writers
        queue up instead of failing halfway through. A writer waits 60 s at most for the others, or
        ``wait`` seconds (``graven watch``, whose checks must not stall): DatabaseBusyError then, with
        nothing written.
        """
        with self._backend.transaction("BEGIN IMMEDIATE", commit=True, wait=wait) as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read: one consistent snapshot, never committed."""
        with self._backend.transaction("BEGIN", commit=False) as conn:
            yield conn

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self.connect() as conn:
            version = self._stored_version(conn)
        if version is None:
            raise BackendError("the database has no schema version")
        return version

    def table_names(self) -> set[str]:
        """The tables in the database."""
        with self.connect() as conn:
            if conn.dialect == "sqlite":
                rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            else:
                rows = conn.execute(
                    "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
                )
            return set(rows.scalars())

    def close(self) -> None:
        """Release every connection."""
        self._backend.close()


def _newer(version: int) -> GravenError:
    """A database upgraded by a newer graven: exit 2 (not a failed check: this graven cannot read it)."""
    return ConfigError(
        f"the database schema is version {version}, newer than this graven understands "
        f"({SCHEMA_VERSION}); upgrade graven"
    )


def sqlite_path(url: str) -> str:
    """The file of an SQLAlchemy-style SQLite URL, read as SQLAlchemy reads it: ``sqlite:///rel``,
    ``sqlite:////abs``, an optional ``+driver`` (``sqlite+pysqlite:///``), ``%XX`` escapes decoded,
    ``?query`` ignored. An in-memory database is refused: graven's state must outlive the process."""
    from urllib.parse import unquote_to_bytes

    def unquote(text: str) -> str:  # %XX are bytes of the file name, UTF-8 or not
        return os.fsdecode(unquote_to_bytes(text))

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] != "sqlite":
        raise BackendError(f"cannot open the database {redacted_url(url)}: expected sqlite:///PATH")
    path = unquote(rest.removeprefix("/").split("?", 1)[0]) if rest.startswith("/") else None
    if path and path.startswith("file:"):
        path = "./" + path  # sqlite3 would read 'file:...' as a URI (file::memory: is in memory)
    if not path or path == ":memory:":
        raise BackendError(
            f"cannot open the database {redacted_url(url)}: an in-memory or unnamed SQLite database "
            "cannot hold graven's state; use sqlite:///PATH"
        )
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# What an SQLite error means for the user, and what to do (the message alone names neither).
_SQLITE_HINTS = (
    (
        ("database is locked", "database is busy"),
        "another graven has been writing to it for more than 60 s; try again when it is done",
    ),
    (("file is not a database", "malformed"), "the file is damaged: restore graven.db from a backup"),
    (("readonly database",), "make graven.db and its directory writable for this user"),
    (
        ("disk I/O error", "database or disk is full"),
        "the file system of GRAVEN_HOME is full or failing; free some space (df) and try again",
    ),
    (
        ("unable to open database file",),
        "its directory is missing or not writable, or a directory stands in its place",
    ),
)


def _has_table(conn: Connection, name: str) -> bool:
    if conn.dialect == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"
        return conn.execute(query, {"name": name}).first() is not None
    return conn.execute("SELECT to_regclass(:name)", {"name": name}).scalar() is not None


# File systems where SQLite's write-ahead log fails (no shared memory maps or POSIX locks of the kind
# it needs): FAT and network file systems, and FUSE ones (fusefat among them). Named in the error for
# a disk I/O error there, instead of "full or failing".
_WALLESS_KINDS = frozenset({"vfat", "msdos", "exfat", "ntfs", "nfs", "nfs4", "cifs", "smb3", "9p"})


def _walless_file_system(path: str) -> str | None:
    """The type of the file system holding the SQLite file ``path`` when it is one of those SQLite
    cannot keep a write-ahead log on (``_WALLESS_KINDS``, ``fuse.*``); None otherwise or unknown."""
    from pathlib import Path

    from graven.mounts import file_system_type

    kind = file_system_type(Path(os.path.dirname(path) or "."))
    if kind is not None and (kind in _WALLESS_KINDS or kind.startswith("fuse")):
        return kind
    return None


def _name_too_long(path: str) -> bool:
    """Whether the file system refuses ``path`` for its length (ENAMETOOLONG: a name of more than 255
    bytes, or a path of more than PATH_MAX), which SQLite reports only as "unable to open"."""
    import errno

    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno == errno.ENAMETOOLONG
    return False


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """The first line of an SQLite error, with what it means where that is known."""
    text = _first_line(exc)
    for needles, hint in _SQLITE_HINTS:
        if any(needle in text for needle in needles):
            return f"{text}: {hint}"
    return text


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return _first_line(orig or exc)


# What a PostgreSQL error (libpq's words, which name neither) means for the user, and what to do:
# (pattern, whether it is a mistake in GRAVEN_DB_URL (exit 2, as a typo in an SQLite path), hint; {url}
# in it: where the URL came from, GRAVEN_DB_URL or the URL given to db copy).
# The patterns are compiled on first use (an error), not when every command imports this module.
_PG_HINTS: tuple[tuple[str, bool, str], ...] = (
    (
        r"password authentication failed|no password supplied|authentication failed for user",
        True,
        "correct the user or password in {url} (or in ~/.pgpass)",
    ),
    (
        r'role "[^"]*" does not exist',
        True,
        "correct the user in {url}, or create that role on the server (createuser)",
    ),
    (
        r'database "[^"]*" does not exist',
        True,
        "correct the database in {url}, or create it on the server (createdb)",
    ),
    (
        r"invalid connection option|bad value for|invalid \w+ value|invalid port number",
        True,
        "correct the query parameters of {url} (libpq's connection parameters)",
    ),
    (
        r"Connection refused|could not connect|server closed the connection|terminating connection"
        r"|the database system is (?:shutting down|starting up|in recovery)|connection is (?:closed|lost)"
        r"|consuming input failed|on socket .* failed: No such file|connection timeout expired",
        False,
        "is the PostgreSQL server running and reachable? start it (or wait for its restart), then run "
        "this command again",
    ),
    (
        r"failed to resolve host|could not translate host name",
        False,
        "check the host in {url} and this machine's network",
    ),
    (
        r"too many clients|remaining connection slots are reserved|too many connections for",
        False,
        "the server has no free connection (max_connections, or a CONNECTION LIMIT of the role or "
        "database); try again when fewer clients are connected, or raise the limit",
    ),
    (
        r"permission denied for schema",
        False,
        "this user may not create graven's tables there; make it the database's owner, or GRANT CREATE "
        "ON SCHEMA to it",
    ),
    (
        r"permission denied for (?:table|sequence|relation)|must be owner of",
        False,
        "this user may not change graven's tables; run this command as a user who may (one that only "
        "reads, such as status or log verify, needs SELECT alone)",
    ),
    (
        r"permission denied for database",
        False,
        "this user may not connect to that database; GRANT CONNECT ON DATABASE to it",
    ),
    (
        r"due to lock timeout",
        False,
        "another transaction held a row or table graven needed for more than 60 s (a stuck one shows "
        "in pg_stat_activity); try again when it is done",
    ),
    (
        r"due to statement timeout|idle-in-transaction (?:session )?timeout",
        False,
        "the server's statement_timeout or idle_in_transaction_session_timeout (of the role, the "
        "database or the URL's options) stopped graven; lift it for graven's user (ALTER ROLE ... SET "
        "statement_timeout = 0)",
    ),
    (
        r"in a read-only transaction|recovery is in progress",
        False,
        "the server only reads (a standby, or default_transaction_read_only); point {url} at the primary",
    ),
)


def _alchemy_error(exc: Exception, *, where: str | None = None, named: str = HOME_URL) -> GravenError:
    """A database error of SQLAlchemy or psycopg as one line that says what to do: a ConfigError
    (exit 2) when GRAVEN_DB_URL is wrong (a user, password or database the server does not know), a
    BackendError (exit 1) otherwise. ``where``: the database, as it may be shown (libpq's messages
    do not name it), said at the end; ``named``: where the URL came from, as the hint names it."""
    text = _reason(exc)
    at = f" (database {where})" if where else ""
    for pattern, bad_input, hint in _PG_HINTS:
        if re.search(pattern, text):
            kind = ConfigError if bad_input else BackendError
            return kind(f"database error: {text}: {hint.format(url=named)}{at}")
    return BackendError(f"database error: {text}{at}")


def _engine_url(engine: Any) -> str | None:
    """The URL of a SQLAlchemy engine as it may be shown (no password, none in the query)."""
    try:
        shown = str(engine.url.render_as_string(hide_password=True))
    except Exception:  # a detail of a message: never an error of its own
        return None
    return re.sub(_SECRET_QUERY, r"\1***", shown, flags=re.IGNORECASE)


_SUPPORTED = "use sqlite:////ABSOLUTE/PATH or postgresql+psycopg://USER@HOST[:PORT]/DATABASE"


def _check_dialect(url: str) -> None:
    """Refuse, naming it, a URL that is none or of a database graven does not run on."""
    if not url.strip():  # `graven db copy ""`, an unset shell variable: shown as "<invalid URL>"
        raise ConfigError(f"the database URL is empty; {_SUPPORTED}")
    if "%00" in url:  # SQLite refuses the file name; libpq would read its connection string up to it
        raise ConfigError(
            f"the database URL {redacted_url(url)} holds %00, a NUL byte, which no file name, user, "
            "password or database name can hold; remove it"
        )
    scheme, sep, _ = url.partition("://")
    dialect = scheme.split("+", 1)[0].lower()
    plain = not sep and "@" not in url and ":" not in url  # no user or password to hide
    if plain and ("/" in url or url.endswith((".db", ".sqlite", ".sqlite3"))):  # a file's path
        raise ConfigError(
            f"the database URL {url} is a path, not a URL; an SQLite file is "
            f"sqlite:///{os.path.abspath(url)} (sqlite:/// then the absolute path)"
        )
    if not sep or not dialect:
        shown = url if plain and url.strip() else redacted_url(url)
        raise ConfigError(f"the database URL {shown} is not a URL; {_SUPPORTED}")
    if dialect == "postgres":
        raise ConfigError(f"database URL scheme {scheme}:// is not known; write postgresql+psycopg://")
    if dialect not in ("sqlite", "postgresql"):
        raise ConfigError(f"graven does not run on {dialect} databases ({scheme}://); {_SUPPORTED}")
    if scheme != scheme.lower():  # SQLAlchemy knows its schemes in lower case only
        raise ConfigError(
            f"the database URL scheme {scheme}:// is not known; write it in lower case ({scheme.lower()}://)"
        )
    if url.partition("://")[2].split("/", 1)[0].count("@") > 1:
        raise ConfigError(
            "the database URL's user or password holds an unescaped '@' (its host would be read from "
            "the password): write it as %40"
        )
    if dialect == "sqlite":
        if url.partition("://")[2].split("/", 1)[0]:  # never shown: it may hold a user and password
            raise ConfigError(
                f"the database URL {scheme}://... names a host; an SQLite URL names a file: "
                "sqlite:////ABSOLUTE/PATH (four slashes)"
            )
        try:
            path = sqlite_path(url)
        except BackendError as exc:  # no file named (sqlite://, :memory:): the URL is what is wrong
            raise ConfigError(exc.message) from None
        if not os.path.isabs(path):  # each command would open the file of its own working directory
            raise ConfigError(
                f"the database URL {url} names the relative path {path}, a file of whatever directory "
                "graven runs in; write an absolute one: sqlite:////ABSOLUTE/PATH (four slashes)"
            )
    elif "+" in scheme and scheme.split("+", 1)[1].lower() not in ("psycopg", ""):
        raise ConfigError(
            f"graven reaches PostgreSQL through psycopg, not {scheme.split('+', 1)[1]}: write "
            "postgresql+psycopg://"
        )
    elif not _names_database(url):
        raise ConfigError(
            f"the database URL {redacted_url(url)} names no database (graven's tables would go to the "
            f"server's default one); {_SUPPORTED}"
        )


def _names_database(url: str) -> bool:
    """Whether a PostgreSQL URL names its database, or libpq will: a path after the host,
    ``?dbname=`` or ``?service=`` (pg_service.conf), or PGDATABASE / PGSERVICE in the environment.
    Read with SQLAlchemy's own parser, as the URL will be: a password may hold '/' or '?'."""
    parsed = _parsed_url(url)
    if parsed is None:
        return True  # not a URL SQLAlchemy reads: opening it says so (_unusable)
    named = {key for key, value in parsed.query.items() if value}
    environ = bool(os.environ.get("PGDATABASE") or os.environ.get("PGSERVICE"))
    return bool(parsed.database) or bool(named & {"dbname", "service"}) or environ


def _parsed_url(url: str) -> Any:
    """``url`` as SQLAlchemy reads it (its ``URL``), or None when it cannot."""
    try:
        import sqlalchemy as sa

        return sa.engine.make_url(url)
    except Exception:
        return None


# query parameters that carry a secret (libpq's password, sslpassword; common spellings)
_SECRET_QUERY = r"((?:^|[?&;])(?:[a-z_]*pass(?:word|wd)?|pwd|secret|token)=)[^&;]*"  # noqa: S105 - a pattern


def _unusable(url: str, exc: BaseException) -> ConfigError:
    """A URL that SQLAlchemy cannot parse, or whose driver is missing: bad input (exit 2)."""
    reason = _scrubbed(_first_line(exc), url)
    return ConfigError(f"the database URL {redacted_url(url)} cannot be used ({reason}); {_SUPPORTED}")


def _scrubbed(text: str, url: str) -> str:
    """``text`` (a library's message about ``url``) without the URL itself or its password."""
    parsed = _parsed_url(url)
    if parsed is not None and isinstance(parsed.password, str):  # as the URL is read: may hold '/'
        password = parsed.password
    else:  # a URL SQLAlchemy cannot read: its message may quote what stands where the password would
        userinfo = url.partition("://")[2].split("/", 1)[0].rpartition("@")[0]
        password = userinfo.partition(":")[2]
    text = text.replace(url, redacted_url(url))
    return text.replace(password, "***") if len(password) >= 3 else text


def redacted_url(url: str) -> str:
    """``url`` as it may be shown: no password, in the user part or in the query."""
    if url.startswith("sqlite"):
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        return f"{scheme}://<hidden>{slash}{path}" if authority else url
    authority = url.partition("://")[2].split("/", 1)[0]
    if authority.count("@") > 1:  # an unescaped '@' in the password: where it ends is a guess
        return f"{url.partition('://')[0]}://<hidden>"
    parsed = _parsed_url(url)
    if parsed is None:
        return "<invalid URL>"
    shown = str(parsed.render_as_string(hide_password=True))
    return re.sub(_SECRET_QUERY, r"\1***", shown, flags=re.IGNORECASE)
