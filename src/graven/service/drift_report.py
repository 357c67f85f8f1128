"""What one drift check of one environment found: :class:`DriftReport`.

Kept apart from the checks (``drift_check``) and free of their imports, so that a default check that a
clean snapshot answers (``drift_quick``) loads neither the manifest code nor the provenance code.
"""

from __future__ import annotations

from graven.core.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

    from graven.core.drift import Difference

__all__ = ["DriftReport"]


class DriftReport(Record):
    """What one check of one environment found (a mutable value: graven.core.record)."""

    _fields = (
        "env",
        "path",
        "digest",
        "name",
        "commit",
        "mode",
        "differences",
        "files",
        "hashed",
        "listed",
        "seconds",
        "checked_at",
        "note",
        "error",
    )
    __slots__ = (
        "checked_at",
        "commit",
        "differences",
        "digest",
        "env",
        "error",
        "files",
        "hashed",
        "listed",
        "mode",
        "name",
        "note",
        "path",
        "seconds",
    )

    def __init__(
        self,
        *,
        env: str,
        path: str,
        digest: str,
        name: str | None,
        commit: str | None,
        mode: str,  # fast | full
        differences: list[Difference] | None = None,
        files: int = 0,
        hashed: int = 0,
        listed: int = 0,
        seconds: float = 0.0,
        checked_at: str = "",
        note: str | None = None,
        error: str | None = None,
    ) -> None:
        self.env = env
        self.path = path
        self.digest = digest
        self.name = name
        self.commit = commit
        self.mode = mode
        self.differences: list[Difference] = differences if differences is not None else []
        self.files = files
        self.hashed = hashed
        self.listed = listed
        self.seconds = seconds
        self.checked_at = checked_at
        self.note = note
        self.error = error  # the check itself failed (a damaged object of this artifact, say)

    @property
    def clean(self) -> bool:
        """True when nothing drifts (and the check could be made)."""
        return not self.differences and self.error is None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: every difference."""
        kinds: dict[str, int] = {}
        if self.differences:
            from graven.core.drift import summarize

            kinds = summarize(self.differences)
        return {
            "env": self.env,
            "path": self.path,
            "digest": self.digest,
            "name": self.name,
            "commit": self.commit,
            "mode": self.mode,
            "clean": self.clean,
            "count": len(self.differences),
            "kinds": kinds,
            "differences": [d.to_json() for d in self.differences],
            "files": self.files,
            "hashed": self.hashed,
            "directories_listed": self.listed,
            "seconds": round(self.seconds, 6),
            "checked_at": self.checked_at,
            "note": self.note,
            "error": self.error,
        }
