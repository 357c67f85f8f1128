"""What an environment's directory remembers of the home that last changed it: ``PATH/.graven/witness``.

Every change graven makes to an environment (deploy, promote, rollback, heal) is recorded in the
home's audit log first. After recording it, graven writes in the environment's own directory which log
that was and how far it had got: the log's origin, its size and its root hash at that size (format
``graven.witness/v1``, three lines after the format line). Before the next change, under the
environment's lock, it compares them with the home's log:

- another origin: a copy of a home (two homes sharing keys and one log's past), or a log started anew
  after the old one was lost. What the other log recorded (rejections, holds, what went live where)
  is not in this one.
- a size larger than the home's log: ``GRAVEN_HOME`` (or its database with its high-water mark) was
  restored from an older backup. Rejections, holds, revocations and deployments made since are gone
  from it, and the environment holds newer state than the home.
- another root at that size: a copy of this home that ran on elsewhere (a fork of the log).

Each refuses with one line (exit 1) that says what happened and how to go on on purpose: remove the
witness. A missing witness (a new environment, one deployed by an older graven) is fine, and is
written at the next change. The home's own high-water mark (``GRAVEN_HOME/log/in-use``) catches a
database older than its home; the witness catches a whole home older than what it deployed, since
the deploy roots are not restored with it. It is a guard against accidents (restores, copies), not
against whoever can write ``PATH``: they could only remove it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from graven.core.checkpoint import MAX_TREE_SIZE
from graven.core.record import Frozen
from graven.deploy.layout import EnvLayout
from graven.deploy.recordkey import read_record_file, replace_file_at
from graven.errors import IntegrityError
from graven.service.audit import AuditLog
from graven.service.context import Context

__all__ = ["WITNESS_FORMAT", "Witness", "check_witness", "parse_witness", "witnessed_size", "write_witness"]

WITNESS_FORMAT = "graven.witness/v1"
WITNESS_FILE = "witness"
_MAX_BYTES = 4096
_HEX = re.compile(r"[0-9a-f]{64}")
_SIZE = re.compile(r"[1-9][0-9]{0,18}")  # as graven writes it: a log that recorded a change, in 1..2**63-1
_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)


class Witness(Frozen):
    """The log that last changed an environment: its origin, size and root (hex) at that size."""

    __slots__ = ("origin", "root", "size")
    _fields = ("origin", "size", "root")
    origin: str
    size: int
    root: str

    def __init__(self, origin: str, size: int, root: str) -> None:
        _set(self, "origin", origin)
        _set(self, "size", size)
        _set(self, "root", root)

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        return f"{WITNESS_FORMAT}\n{self.origin}\n{self.size}\n{self.root}\n".encode()


def parse_witness(data: bytes) -> Witness | None:
    """The witness in ``data``; None when it is not one (damaged, or another format)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if len(lines) != 5 or lines[0] != WITNESS_FORMAT or lines[4] != "":
        return None
    origin, size, root = lines[1], lines[2], lines[3]
    if not origin or not origin.isprintable() or _SIZE.fullmatch(size) is None:
        return None
    # a size past the largest log never reaches the database (SQLite's INTEGER overflows)
    if int(size) > MAX_TREE_SIZE or _HEX.fullmatch(root) is None:
        return None
    return Witness(origin, int(size), root)


def witness_path(layout: EnvLayout) -> Path:
    """Where an environment's witness lives."""
    return layout.meta / WITNESS_FILE


def check_witness(ctx: Context, layout: EnvLayout, env: str) -> None:
    """Refuse (IntegrityError, exit 1) to change ``env`` when its directory was last changed by another
    log, by a later state of this home's log, or by a fork of it (see the module's docstring)."""
    path = witness_path(layout)
    data = read_record_file(path, _MAX_BYTES)  # never follows a link, never blocks on a FIFO
    if data is None and not os.path.lexists(path):
        return
    witness = None if data is None else parse_witness(data)  # None: not a regular file, or too big
    on_purpose = f"to go on from this home's state on purpose, remove {path}"
    if witness is None:
        raise IntegrityError(
            f"{path} is damaged: it should say which graven home last changed {env}; {on_purpose}"
        )
    with ctx.db.connect() as conn:
        head = AuditLog.head(conn)
        root = AuditLog.root_at(conn, witness.size) if head is not None else None
    if head is None or head[0] != witness.origin:
        ours = "has no audit log yet" if head is None else f"has the log {head[0]}"
        raise IntegrityError(
            f"{env} ({layout.root}) was last changed by another graven home (audit log "
            f"{witness.origin}; this home {ours}): a copy of a home, or a log started anew, and what "
            f"that log recorded (rejections, holds, deployments) is not here; change {env} from that "
            f"home, or, {on_purpose}"
        )
    if witness.size > head[1]:
        raise IntegrityError(
            f"{env} ({layout.root}) was last changed at entry {witness.size} of this home's audit log, "
            f"which has only {head[1]}: GRAVEN_HOME was restored from an older backup, and what was "
            "recorded since (rejections, holds, revocations, deployments) is gone from it (README: "
            f"Backups); {on_purpose}"
        )
    if root != witness.root:
        raise IntegrityError(
            f"{env} ({layout.root}) was last changed at entry {witness.size} of a log that differs from "
            "this home's at that entry: a copy of this home ran on elsewhere (a fork); change "
            f"{env} from that copy, or, {on_purpose}"
        )


def witnessed_size(layout: EnvLayout) -> int:
    """The size of the home's log when the environment was last changed, as its witness says (0: no
    witness, or one that cannot be read): every entry of a change made since has an index past it."""
    data = read_record_file(witness_path(layout), _MAX_BYTES)
    witness = None if data is None else parse_witness(data)
    return 0 if witness is None else witness.size


def write_witness(ctx: Context, layout: EnvLayout) -> None:
    """Write the home's latest checkpoint (origin, size, root) as the environment's witness, after a
    change was recorded (a temporary file beside it, renamed over it). A failure (or a power loss that
    keeps the old file) is a warning at most: the change is done and recorded, and an older witness
    still names a prefix of the same log."""
    with ctx.db.connect() as conn:
        head = AuditLog.head(conn)
    if head is None:
        return
    path = witness_path(layout)
    try:
        fd = os.open(layout.meta, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            replace_file_at(fd, WITNESS_FILE, Witness(*head).to_bytes())
        finally:
            os.close(fd)
    except OSError as exc:
        ctx.reporter.warn(f"cannot write {path} ({exc.strerror}); the change itself is recorded")
