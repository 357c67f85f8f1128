"""Audit log entries, format ``graven.log/v1``: one canonical JSON object per event.

The leaf hash of an entry is ``SHA-256(0x00 || entry bytes)`` (RFC 9162). See docs/formats/log-v1.md.
"""

from __future__ import annotations

import json
from typing import Any

from graven.core.paths import json_text
from graven.core.record import Frozen
from graven.errors import InputError
from graven.model.manifest import canonical_json

__all__ = ["EVENT_TYPES", "LOG_FORMAT", "LogEntry", "LogEvent"]

LOG_FORMAT = "graven.log/v1"
EVENT_TYPES = frozenset(
    {
        "build",
        "sign",
        "import",
        "push",
        "deploy",
        "promote",
        "rollback",
        "hold",
        "unhold",
        "reject",
        "retire",
        "drift",
        "heal",
        "override",
        "verify-failure",
        "key-trusted",
        "key-revoked",
        "log-repaired",
    }
)
_FIELDS = ("actor", "artifact", "commit", "env", "event", "format", "index", "reason", "result", "time")


_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)


class LogEvent(Frozen):
    """What happened, before the log gives it an index, a time and an actor."""

    __slots__ = ("artifact", "commit", "env", "event", "reason", "result")
    _fields = ("event", "artifact", "commit", "env", "reason", "result")
    event: str
    artifact: str | None
    commit: str | None
    env: str | None
    reason: str | None
    result: str

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        event: str,
        artifact: str | None = None,
        commit: str | None = None,
        env: str | None = None,
        reason: str | None = None,
        result: str = "ok",
    ) -> None:
        if event not in EVENT_TYPES:
            raise InputError(f"unknown log event type {event!r}")
        _set(self, "event", event)
        _set(self, "artifact", artifact)
        _set(self, "commit", commit)
        _set(self, "env", env)
        # a file or directory name in the reason may hold bytes that are no UTF-8 (surrogate escapes):
        # entries are UTF-8 JSON, so such a byte is written as \xNN
        _set(self, "reason", None if reason is None else json_text(reason))
        _set(self, "result", result)


class LogEntry(Frozen):
    """One entry of the log, as hashed."""

    __slots__ = ("actor", "artifact", "commit", "env", "event", "index", "reason", "result", "time")
    _fields = ("index", "time", "actor", "event", "artifact", "commit", "env", "reason", "result")
    index: int
    time: str
    actor: str
    event: str
    artifact: str | None
    commit: str | None
    env: str | None
    reason: str | None
    result: str

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        index: int,
        time: str,
        actor: str,
        event: str,
        artifact: str | None,
        commit: str | None,
        env: str | None,
        reason: str | None,
        result: str,
    ) -> None:
        _set(self, "index", index)
        _set(self, "time", time)
        _set(self, "actor", actor)
        _set(self, "event", event)
        _set(self, "artifact", artifact)
        _set(self, "commit", commit)
        _set(self, "env", env)
        _set(self, "reason", reason)
        _set(self, "result", result)

    @classmethod
    def of(cls, event: LogEvent, *, index: int, time: str, actor: str) -> LogEntry:
        """Place an event in the log."""
        return cls(
            index=index,
            time=time,
            actor=actor,
            event=event.event,
            artifact=event.artifact,
            commit=event.commit,
            env=event.env,
            reason=event.reason,
            result=event.result,
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object (all fields, null when absent)."""
        return {
            "actor": self.actor,
            "artifact": self.artifact,
            "commit": self.commit,
            "env": self.env,
            "event": self.event,
            "format": LOG_FORMAT,
            "index": self.index,
            "reason": self.reason,
            "result": self.result,
            "time": self.time,
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes that are hashed into the log."""
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> LogEntry:
        """Parse canonical entry bytes; anything else is refused."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"log entry is not JSON: {exc}") from None
        except RecursionError:
            raise InputError("log entry is not JSON: nested too deeply") from None
        if not isinstance(doc, dict) or tuple(sorted(doc)) != _FIELDS or doc["format"] != LOG_FORMAT:
            raise InputError(f"not a {LOG_FORMAT} entry")
        index = doc["index"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InputError("log entry index must be a non-negative integer")
        for key in ("time", "actor", "event", "result"):
            if not isinstance(doc[key], str):
                raise InputError(f"log entry field {key} must be a string")
        for key in ("artifact", "commit", "env", "reason"):
            if doc[key] is not None and not isinstance(doc[key], str):
                raise InputError(f"log entry field {key} must be a string or null")
        entry = cls(
            index=index,
            time=doc["time"],
            actor=doc["actor"],
            event=doc["event"],
            artifact=doc["artifact"],
            commit=doc["commit"],
            env=doc["env"],
            reason=doc["reason"],
            result=doc["result"],
        )
        try:
            canonical = entry.to_bytes()
        except UnicodeEncodeError:  # a lone surrogate ("\\ud800"): JSON, but no UTF-8 text
            raise InputError("log entry holds a string that is not Unicode text") from None
        if canonical != data:
            raise InputError("log entry is not in canonical form")
        return entry
