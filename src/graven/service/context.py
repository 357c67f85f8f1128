"""The shell's wiring: one :class:`Context` holds the home, the store and the database, opened lazily
so that cheap commands never pay for what they do not use."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from graven.core.record import Record
from graven.errors import InputError, IntegrityError, NeverDeployedError
from graven.home import Home, check_home, make_home

if TYPE_CHECKING:
    from graven.db import Database
    from graven.service.audit import AuditLog
    from graven.store.local import LocalStore
    from graven.store.manifest_cache import ManifestCache

__all__ = [
    "BYTES",
    "MAX_LIMIT",
    "Context",
    "NullReporter",
    "Reporter",
    "check_limit",
    "never_deployed",
    "refuse_lost_log",
    "utc_now",
]

BYTES = " (bytes)"  # the end of a progress stage counted in bytes
MAX_LIMIT = 2**63 - 1  # the largest LIMIT both databases take (a signed 64-bit integer)


def _refuse_emptied_database(home: Home) -> None:
    """IntegrityError for a graven.db of 0 bytes in a home whose log key signed committed entries
    (``log/in-use``, :class:`graven.service.audit.AuditLog`): the file was truncated or restored from a
    bad copy. SQLite would make a new database of it, and every command would answer as in a new home
    (no artifacts, no environments, an artifact unsigned)."""
    try:
        emptied = home.db_path.stat().st_size == 0 and (home.root / "log" / "in-use").exists()
    except OSError:  # missing (a new home), or not readable: opening it says what is wrong
        return
    if emptied:
        raise IntegrityError(
            f"the database {home.db_path} is empty (0 bytes), but this home recorded entries in its audit "
            "log (log/in-use): it was truncated, or restored from a bad copy; restore it from a backup"
        )


def refuse_lost_log(ctx: Context) -> None:
    """For a read that found nothing (no artifacts, no environments): IntegrityError (exit 1) when this
    home's log key signed committed entries (``log/in-use``) and the database holds none (graven.db
    deleted, or a new database under ``GRAVEN_DB_URL``), as ``graven log`` and every write refuse
    (:meth:`graven.service.audit.AuditLog.check_not_lost`): "no environments yet" there would hide
    that every environment is still live and no longer watched. One stat in a home never used."""
    if (ctx.home.root / "log" / "in-use").exists():
        ctx.audit.check_not_lost()


def never_deployed(ctx: Context, env: str) -> NeverDeployedError:
    """The error for ``env``, which the database does not know: the one :func:`refuse_lost_log` raises
    when the database lost its log (every environment "never deployed to"), else NeverDeployedError."""
    refuse_lost_log(ctx)
    return NeverDeployedError(env)


def check_limit(limit: int | None) -> None:
    """Refuse a ``limit`` (how many of the newest rows a listing shows) that is not a positive
    integer a database can take: an InputError (exit 2). None means no limit."""
    if limit is None:
        return
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise InputError(f"the limit must be a positive integer, not {limit!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"the limit must be a positive integer (1 to {MAX_LIMIT}), not {limit}")


def utc_now() -> str:
    """The current UTC time as RFC 3339 with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Reporter(Protocol):
    """Where long-running work reports progress and warnings (the CLI draws them). Its calls come from
    the middle of work that must finish what it started (a heal between its writes and its records, a
    deploy before its switch): a reporter must not raise. What it cannot show it drops; to stop the
    work, interrupt it (Ctrl-C, SIGTERM), which graven's own steps handle."""

    def warn(self, message: str) -> None:
        """A warning that does not stop the work."""
        ...

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """``done`` of ``total`` units of ``stage`` are finished; the units are bytes when ``stage``
        ends with :data:`BYTES` (`` (bytes)``), else items."""
        ...


class NullReporter:
    """Reports nothing."""

    def warn(self, message: str) -> None:
        """Ignore the warning."""

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """Ignore progress."""


class Context(Record):
    """Everything a use case needs, opened on first use. Equal when home and reporter are (a value
    written by hand: graven.core.record)."""

    # no __slots__: the cached properties live in the instance's __dict__
    _fields = ("home", "reporter")

    def __init__(self, home: Home, reporter: Reporter | None = None) -> None:
        self.home = home
        self.reporter: Reporter = NullReporter() if reporter is None else reporter

    @classmethod
    def from_env(cls, reporter: Reporter | None = None) -> Context:
        """The context for the current environment (``GRAVEN_HOME``, ``GRAVEN_DB_URL``)."""
        return cls(home=Home.from_env(), reporter=reporter or NullReporter())

    @cached_property
    def store(self) -> LocalStore:
        """The object store."""
        from graven.store.local import LocalStore

        try:
            make_home(self.home.root)  # another user's home, or one others may write: refused
        except OSError:  # not made: the store says what is wrong, naming its own directory
            check_home(self.home.root)
        return LocalStore.at(self.home.objects)

    @cached_property
    def db(self) -> Database:
        """The metadata database (created on first use)."""
        from graven.db import Database

        if self.home.db_url_override is None:
            make_home(self.home.root)
            _refuse_emptied_database(self.home)
            self.home.refuse_dangling_database()
        return Database.open(self.home.db_url)

    @cached_property
    def audit(self) -> AuditLog:
        """The tamper-evident audit log."""
        from graven.service.audit import AuditLog

        return AuditLog(self)

    @cached_property
    def manifest_cache(self) -> ManifestCache:
        """Manifests this home parsed and validated before (``GRAVEN_HOME/cache/manifests``)."""
        from graven.store.manifest_cache import ManifestCache

        return ManifestCache(self.home.root / "cache" / "manifests", self._existing_record_key)

    @cached_property
    def record_key(self) -> bytes:
        """The key that authenticates the stat records beside deployments (made on first use)."""
        from graven.deploy.recordkey import load_or_create

        return load_or_create(self.home.keys)

    def _existing_record_key(self) -> bytes:
        """The record key when the home has one; a cache never makes one (a home that only verifies
        and imports keeps no keys)."""
        key: bytes | None = self.__dict__.get("record_key")
        if key is None:
            from graven.deploy.recordkey import load_existing
            from graven.errors import BackendError

            key = load_existing(self.home.keys)
            if key is None:
                raise BackendError(f"no record key in {self.home.keys}")
            self.__dict__["record_key"] = key
        return key

    def close(self) -> None:
        """Release the database connections, if any were opened."""
        db = self.__dict__.pop("db", None)
        if db is not None:
            db.close()
        store = self.__dict__.pop("store", None)
        if store is not None:
            store.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @cached_property
    def actor(self) -> str:
        """Who is acting: ``user@host``."""
        import getpass
        import os

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        from graven.core.paths import json_text

        return json_text(f"{user}@{os.uname().nodename}")  # gethostname(), without importing socket
