"""The metadata database, through SQLAlchemy Core.

SQLite (WAL) by default, any SQLAlchemy URL with ``GRAVEN_DB_URL`` (PostgreSQL via psycopg). The
schema carries a version in ``graven_meta`` and is created and upgraded automatically, one migration
per version, inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from graven.errors import BackendError

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "artifacts",
    "attestations",
    "blob_cache",
    "builds",
    "deploy_envs",
    "deployments",
    "drift_events",
    "drift_state",
    "log_checkpoints",
    "log_entries",
    "log_state",
    "meta",
    "metadata",
    "rejections",
]

metadata = sa.MetaData()

meta = sa.Table(
    "graven_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("commit", sa.String(64)),
    sa.Column("repository", sa.Text),
    sa.Column("revision", sa.Text),
    sa.Column("pipeline_digest", sa.String(71)),
    sa.Column("source_date_epoch", sa.BigInteger, nullable=False),
    sa.Column("file_count", sa.Integer, nullable=False),
    sa.Column("total_size", sa.BigInteger, nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),  # build | import
    sa.Column("created_at", sa.String(32), nullable=False),
)

builds = sa.Table(
    "builds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("digest", sa.String(71), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("commit", sa.String(64), nullable=False),
    sa.Column("repository", sa.Text, nullable=False),
    sa.Column("revision", sa.Text, nullable=False),
    sa.Column("pipeline_digest", sa.String(71), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32), nullable=False),
    sa.Column("builder", sa.Text, nullable=False),
    sa.Column("graven_version", sa.String(32), nullable=False),
    sa.Column("invocation_id", sa.String(64), nullable=False),
)

blob_cache = sa.Table(
    "git_blob_cache",
    metadata,
    sa.Column("git_oid", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)


attestations = sa.Table(
    "attestations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("artifact_digest", sa.String(71), nullable=False, index=True),
    sa.Column("envelope_digest", sa.String(71), nullable=False),
    sa.Column("keyid", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("artifact_digest", "envelope_digest"),
)


log_entries = sa.Table(
    "log_entries",
    metadata,
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.Text, nullable=False),  # canonical JSON: the only source of truth
    sa.Column("leaf_hash", sa.String(64), nullable=False),
    # derived from the entry, for filtering; `graven log verify` checks that they agree
    sa.Column("time", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("artifact", sa.String(71), index=True),
    sa.Column("env", sa.String(128), index=True),
)

log_checkpoints = sa.Table(
    "log_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.String(64), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
)

log_state = sa.Table(
    "log_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("frontier", sa.Text, nullable=False),  # the compact range: O(log n) subtree hashes
)


# -- environments (issue 4): the state of each environment, every deployment, rejected digests ------

deploy_envs = sa.Table(
    "deploy_envs",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),  # the resolved target directory
    sa.Column("live_digest", sa.String(71)),
    sa.Column("live_deployment", sa.Integer),  # deployments.id of the live release
    sa.Column("previous_digest", sa.String(71)),
    sa.Column("held", sa.Boolean, nullable=False, default=False),
    sa.Column("held_digest", sa.String(71)),
    sa.Column("hold_reason", sa.Text),
    sa.Column("updated_at", sa.String(32), nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("env", sa.String(64), nullable=False, index=True),
    sa.Column("digest", sa.String(71), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # deploy | promote | rollback | auto-rollback
    sa.Column("source_env", sa.String(64)),  # promote: the environment it came from
    sa.Column("previous_digest", sa.String(71)),  # what was live before
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("result", sa.String(16), nullable=False),  # pending | ok | failed | interrupted
    sa.Column("health", sa.String(16), nullable=False),  # healthy | none | failed | unknown
    sa.Column("override", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("settings", sa.Text),  # the [env.NAME] settings used, canonical JSON
)

rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)


# -- drift (issue 5): what the last check of each environment found, and every drift, alert and heal --

drift_state = sa.Table(
    "drift_state",
    metadata,
    sa.Column("env", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(71)),  # the release that was checked
    sa.Column("keys", sa.Text, nullable=False),  # canonical JSON: sorted [path, kind] pairs that drift
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("since", sa.String(32)),  # when the current drift was first found (None: clean)
    sa.Column("checked_at", sa.String(32), nullable=False),
    sa.Column("alerted", sa.Text, nullable=False),  # canonical JSON: the [path, kind] pairs alerted
)

drift_events = sa.Table(
    "drift_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("env", sa.String(64), nullable=False, index=True),
    sa.Column("digest", sa.String(71)),
    sa.Column("event", sa.String(16), nullable=False),  # found | resolved | alert | heal
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("result", sa.String(16), nullable=False),  # ok | failed | drift | clean
    sa.Column("detail", sa.Text),  # canonical JSON: the differences, or what was sent / healed
)


def _migrate_1(conn: Connection) -> None:
    for table in (artifacts, builds, blob_cache):
        table.create(conn, checkfirst=True)


def _migrate_2(conn: Connection) -> None:
    attestations.create(conn, checkfirst=True)


def _migrate_3(conn: Connection) -> None:
    for table in (log_entries, log_checkpoints, log_state):
        table.create(conn, checkfirst=True)


def _migrate_4(conn: Connection) -> None:
    for table in (deploy_envs, deployments, rejections):
        table.create(conn, checkfirst=True)


def _migrate_5(conn: Connection) -> None:
    for table in (drift_state, drift_events):
        table.create(conn, checkfirst=True)


# One function per schema version; never edit a released one, append a new one.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy drive transactions, and take the write lock at BEGIN so that concurrent
        # writers queue up instead of failing with "database is locked" halfway through.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """A connection pool plus the schema; open with :meth:`open`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Database:
        """Connect and bring the schema up to date."""
        try:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            database = cls(engine)
            database._upgrade()
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"cannot open the database {_redact(url)}: {_reason(exc)}") from exc
        return database

    def _upgrade(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7438001)")
            meta.create(conn, checkfirst=True)
            row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
            value = row.scalar_one_or_none()
            current = int(value) if value is not None else 0
            if current > SCHEMA_VERSION:
                raise BackendError(
                    f"the database schema is version {current}, newer than this graven "
                    f"understands ({SCHEMA_VERSION}); upgrade graven"
                )
            for version in range(current, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
            if current != SCHEMA_VERSION:
                if value is None:
                    conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                else:
                    conn.execute(
                        meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
                    )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; backend failures become BackendError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"database error: {_reason(exc)}") from exc

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read-only connection."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"database error: {_reason(exc)}") from exc

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self.connect() as conn:
            value: str = conn.execute(
                sa.select(meta.c.value).where(meta.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid URL>"
