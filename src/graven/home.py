"""Where graven keeps its state: ``GRAVEN_HOME`` and what lies in it.

``GRAVEN_HOME`` defaults to ``$XDG_DATA_HOME/graven``, else ``~/.local/share/graven``::

    objects/        the content-addressed store (see graven.store.local)
    graven.db       the metadata database (SQLite, WAL) unless GRAVEN_DB_URL names another
    keys/           private (0600) and public signing keys
    trust/          public keys the operator trusts
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Home"]


@dataclass(frozen=True)
class Home:
    """The paths of one graven home."""

    root: Path
    db_url_override: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Home:
        """Resolve ``GRAVEN_HOME`` and ``GRAVEN_DB_URL`` from the environment."""
        env = os.environ if environ is None else environ
        explicit = env.get("GRAVEN_HOME")
        if explicit:
            root = Path(explicit)
        else:
            xdg = env.get("XDG_DATA_HOME")
            base = Path(xdg) if xdg else Path(env.get("HOME", str(Path.home()))) / ".local/share"
            root = base / "graven"
        return cls(root=root.absolute(), db_url_override=env.get("GRAVEN_DB_URL") or None)

    @property
    def objects(self) -> Path:
        """The object store."""
        return self.root / "objects"

    @property
    def db_path(self) -> Path:
        """The default SQLite database file."""
        return self.root / "graven.db"

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of the metadata database."""
        return self.db_url_override or f"sqlite:///{self.db_path}"

    @property
    def keys(self) -> Path:
        """Signing keys."""
        return self.root / "keys"

    @property
    def trust(self) -> Path:
        """Trusted public keys."""
        return self.root / "trust"

    def has_database(self) -> bool:
        """True when a database exists (always assumed for an external GRAVEN_DB_URL)."""
        return self.db_url_override is not None or self.db_path.exists()
