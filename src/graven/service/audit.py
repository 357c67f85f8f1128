"""The tamper-evident audit log: an append-only RFC 9162 Merkle tree with signed checkpoints.

Every event is appended inside the database transaction of the state change it records, so the log
and the state never disagree; concurrent writers serialize on the database's write lock. After each
append graven signs a C2SP checkpoint (origin, size, root) with the log key
(``GRAVEN_HOME/log/checkpoint.key``, Ed25519, 0600) and stores it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from graven.core.checkpoint import (
    Checkpoint,
    parse_signed_note,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from graven.core.merkle import CompactRange, consistency_proof, inclusion_proof, verify_consistency
from graven.db import Connection
from graven.errors import InputError, NotFoundError, VerificationError
from graven.model.logentry import LogEntry, LogEvent
from graven.service.context import Context, utc_now
from graven.signing.keys import (
    SigningKey,
    generate_key,
    load_private_key,
    write_private_key,
    write_public_key,
)

__all__ = ["AuditLog", "LogVerifyReport", "actor_from_env"]

_LEAF = b"\x00"
_ORIGIN_KEY = "log_origin"
_ADVISORY_LOCK = 7438002


def actor_from_env(default: str) -> str:
    """Who acts: a CI identity when running in CI, else ``user@host``."""
    env = os.environ
    if env.get("GITHUB_ACTIONS") == "true":
        who, repo, run = (env.get(k, "?") for k in ("GITHUB_ACTOR", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
        return f"github:{who}@{repo}#{run}"
    if env.get("GITLAB_CI") == "true":
        who, repo, run = (env.get(k, "?") for k in ("GITLAB_USER_LOGIN", "CI_PROJECT_PATH", "CI_JOB_ID"))
        return f"gitlab:{who}@{repo}#{run}"
    if env.get("GRAVEN_ACTOR"):
        return env["GRAVEN_ACTOR"]
    return default


@dataclass
class LogVerifyReport:
    """What ``graven log verify`` found."""

    size: int = 0
    checkpoints_checked: int = 0
    first_bad_index: int | None = None
    problems: list[str] = field(default_factory=list)
    root: str | None = None

    @property
    def ok(self) -> bool:
        """True when the entries, the stored checkpoints and the latest signature all agree."""
        return not self.problems

    def fail(self, message: str, index: int | None = None) -> None:
        """Record a problem (the first bad index is the smallest seen)."""
        self.problems.append(message)
        if index is not None and (self.first_bad_index is None or index < self.first_bad_index):
            self.first_bad_index = index

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "ok": self.ok,
            "size": self.size,
            "root": self.root,
            "checkpoints_checked": self.checkpoints_checked,
            "first_bad_index": self.first_bad_index,
            "problems": self.problems,
        }


class AuditLog:
    """The log of one graven home (its database and its log key)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._key: SigningKey | None = None
        self._origin: str | None = None
        self.actor = actor_from_env(ctx.actor)

    # -- keys and identity ------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        """The log's private key."""
        return self._ctx.home.root / "log" / "checkpoint.key"

    def _signing_key(self, *, create: bool) -> SigningKey:
        if self._key is None:
            path = self.key_path
            if not path.exists():
                if not create:
                    raise NotFoundError(f"this graven home has no log key ({path}); nothing was logged yet")
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                key = generate_key("ed25519")
                try:
                    write_private_key(path, key)
                    write_public_key(path.with_suffix(".pub"), key)
                except InputError:
                    pass  # another process created it first: use theirs
            self._key = load_private_key(path)
        return self._key

    def public_key(self) -> Ed25519PublicKey:
        """The log's public key (from the key file, never from the database)."""
        public = self._signing_key(create=False).public.key
        assert isinstance(public, Ed25519PublicKey)
        return public

    def origin(self, conn: Connection | None = None) -> str:
        """This instance's log origin (created once, kept in the database)."""
        if self._origin is None:
            if conn is None:
                with self._ctx.db.connect() as own:
                    self._origin = self._read_origin(own)
            else:
                self._origin = self._read_origin(conn)
            if self._origin is None:
                raise NotFoundError("the audit log is empty: nothing was logged yet")
        return self._origin

    @staticmethod
    def _read_origin(conn: Connection) -> str | None:
        value = conn.execute(
            """SELECT value FROM graven_meta WHERE "key" = :key""", {"key": _ORIGIN_KEY}
        ).scalar_one_or_none()
        return str(value) if value is not None else None

    def verifier_key(self) -> str:
        """The Go ``note`` verifier key string (``name+keyid+base64``) for auditors."""
        return verifier_key(self.origin(), self.public_key())

    # -- appending --------------------------------------------------------------------------------

    def append(self, conn: Connection, event: LogEvent) -> LogEntry:
        """Append ``event`` inside the caller's transaction and sign the new checkpoint."""
        key = self._signing_key(create=True)
        private = key.private
        assert isinstance(private, Ed25519PrivateKey)
        if conn.dialect == "postgresql":
            conn.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
        origin = self._read_origin(conn)
        if origin is None:
            origin = f"graven.invalid/log/{uuid.uuid4()}"
            conn.execute(
                """INSERT INTO graven_meta ("key", value) VALUES (:key, :value)""",
                {"key": _ORIGIN_KEY, "value": origin},
            )
        self._origin = origin
        state = conn.execute("SELECT size, frontier FROM log_state").one_or_none()
        if state is None:
            compact = CompactRange()
        else:
            hashes = [bytes.fromhex(h) for h in state.frontier.split(",") if h]
            compact = CompactRange.from_state(int(state.size), hashes)
        entry = LogEntry.of(event, index=compact.size, time=utc_now(), actor=self.actor)
        data = entry.to_bytes()
        leaf = hashlib.sha256(_LEAF + data).digest()
        compact.append(leaf)
        root = compact.root()
        note = sign_checkpoint(Checkpoint(origin, compact.size, root), origin, private)
        conn.execute(
            """INSERT INTO log_entries (idx, entry, leaf_hash, time, event, artifact, env)
            VALUES (:idx, :entry, :leaf_hash, :time, :event, :artifact, :env)""",
            {
                "idx": entry.index,
                "entry": data.decode(),
                "leaf_hash": leaf.hex(),
                "time": entry.time,
                "event": entry.event,
                "artifact": entry.artifact,
                "env": entry.env,
            },
        )
        frontier = ",".join(h.hex() for h in compact.hashes)
        if state is None:
            conn.execute(
                "INSERT INTO log_state (id, size, frontier) VALUES (1, :size, :frontier)",
                {"size": compact.size, "frontier": frontier},
            )
        else:
            conn.execute(
                "UPDATE log_state SET size = :size, frontier = :frontier",
                {"size": compact.size, "frontier": frontier},
            )
        conn.execute(
            "INSERT INTO log_checkpoints (size, root, note) VALUES (:size, :root, :note)",
            {"size": compact.size, "root": root.hex(), "note": note},
        )
        return entry

    def record(self, event: LogEvent) -> LogEntry:
        """Append ``event`` in a transaction of its own (for events that change no other state)."""
        with self._ctx.db.begin() as conn:
            return self.append(conn, event)

    # -- reading ----------------------------------------------------------------------------------

    def latest_checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        with self._ctx.db.connect() as conn:
            note = conn.execute(
                "SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
            ).scalar_one_or_none()
        if note is None:
            raise NotFoundError("the audit log is empty: nothing was logged yet")
        return str(note)

    def entries(
        self,
        *,
        env: str | None = None,
        artifact: str | None = None,
        since: str | None = None,
        since_index: int | None = None,
    ) -> Iterator[tuple[LogEntry, str]]:
        """Entries (with their leaf hash, hex) in index order, filtered."""
        where: list[str] = []
        params: dict[str, Any] = {}
        if env is not None:
            where.append("env = :env")
            params["env"] = env
        if artifact is not None:
            where.append("artifact = :artifact")
            params["artifact"] = artifact
        if since is not None:
            where.append("time >= :since")
            params["since"] = since
        if since_index is not None:
            where.append("idx >= :since_index")
            params["since_index"] = since_index
        query = "SELECT entry, leaf_hash FROM log_entries"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY idx"
        with self._ctx.db.connect() as conn:
            for row in conn.execute(query, params):
                yield LogEntry.from_bytes(str(row.entry).encode()), str(row.leaf_hash)

    def _leaf_hashes(self, conn: Connection, size: int) -> list[bytes]:
        rows = conn.stream("SELECT entry FROM log_entries WHERE idx < :size ORDER BY idx", {"size": size})
        leaves = [hashlib.sha256(_LEAF + str(r.entry).encode()).digest() for r in rows]
        if len(leaves) != size:
            raise VerificationError(f"the log has {len(leaves)} entries below its checkpoint size {size}")
        return leaves

    def prove(self, index: int) -> dict[str, Any]:
        """An inclusion proof of entry ``index`` in the tree of the latest checkpoint."""
        note = self.latest_checkpoint()
        checkpoint = verify_checkpoint(note, self.origin(), self.public_key())
        if not 0 <= index < checkpoint.size:
            raise NotFoundError(f"no log entry {index}: the log has entries 0..{checkpoint.size - 1}")
        with self._ctx.db.connect() as conn:
            leaves = self._leaf_hashes(conn, checkpoint.size)
        proof = inclusion_proof(leaves, index)
        return {
            "index": index,
            "tree_size": checkpoint.size,
            "leaf_hash": leaves[index].hex(),
            "proof": [h.hex() for h in proof],
            "root": checkpoint.root.hex(),
            "checkpoint": note,
        }

    def consistency(self, old_note: str) -> dict[str, Any]:
        """Prove that an old checkpoint is a prefix of the current log (VerificationError on a fork)."""
        old = verify_checkpoint(old_note, self.origin(), self.public_key())
        note = self.latest_checkpoint()
        new = verify_checkpoint(note, self.origin(), self.public_key())
        if old.size > new.size:
            raise VerificationError(
                f"fork: the old checkpoint has {old.size} entries, the log now has only {new.size}"
            )
        with self._ctx.db.connect() as conn:
            leaves = self._leaf_hashes(conn, new.size)
        old_root_now = CompactRange()
        old_root_now.extend(leaves[: old.size])
        if old.size and old_root_now.root() != old.root:
            raise VerificationError(
                f"fork: the log's first {old.size} entries no longer hash to the old checkpoint's root"
            )
        proof = consistency_proof(leaves, old.size) if 0 < old.size < new.size else []
        if old.size > 0:
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        return {
            "old_size": old.size,
            "new_size": new.size,
            "old_root": old.root.hex(),
            "new_root": new.root.hex(),
            "proof": [h.hex() for h in proof],
            "checkpoint": note,
        }

    # -- verifying --------------------------------------------------------------------------------

    def verify(self, *, all_signatures: bool = False) -> LogVerifyReport:
        """Recompute the tree from every entry; check every stored checkpoint and the latest signature."""
        report = LogVerifyReport()
        db = self._ctx.db
        with db.connect() as conn:
            checkpoints = (
                {
                    int(r.size): (str(r.root), str(r.note))
                    for r in conn.execute("SELECT size, root, note FROM log_checkpoints")
                }
                if all_signatures
                else {
                    int(r.size): (str(r.root), "")
                    for r in conn.execute("SELECT size, root FROM log_checkpoints")
                }
            )
            latest_row = conn.execute(
                "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
            ).one_or_none()
            compact = CompactRange()
            expected = 0
            sha256 = hashlib.sha256
            rows = conn.stream(
                "SELECT idx, entry, leaf_hash, event, artifact, env, time FROM log_entries ORDER BY idx"
            )
            for idx, text, stored_leaf, event, artifact, env, time in rows:
                if idx != expected:
                    report.fail(f"entry {expected} is missing (next is {idx})", expected)
                    break
                data = str(text).encode()
                leaf = sha256(_LEAF + data).digest()
                if leaf.hex() != stored_leaf:
                    report.fail(f"entry {idx} was changed: its leaf hash does not match", idx)
                try:
                    entry = LogEntry.from_bytes(data)
                except InputError as exc:
                    report.fail(f"entry {idx} is malformed: {exc}", idx)
                else:
                    if entry.index != idx or (entry.event, entry.artifact, entry.env, entry.time) != (
                        event,
                        artifact,
                        env,
                        time,
                    ):
                        report.fail(f"entry {idx} was changed: its columns disagree with its content", idx)
                compact.append(leaf)
                expected += 1
                stored = checkpoints.get(expected)
                if stored is not None:
                    report.checkpoints_checked += 1
                    if compact.root().hex() != stored[0]:
                        report.fail(
                            f"checkpoint {expected} does not match the entries (first bad index at most "
                            f"{expected - 1})",
                            expected - 1,
                        )
            report.size = expected
            report.root = compact.root().hex()
        for size in sorted(s for s in checkpoints if s > expected):
            report.fail(f"a checkpoint covers {size} entries but the log has only {expected}", expected)
            break
        if latest_row is None:
            if expected:
                report.fail("entries exist but no checkpoint was ever signed", 0)
            return report
        try:
            latest = verify_checkpoint(str(latest_row.note), self.origin(), self.public_key())
        except (VerificationError, InputError) as exc:
            report.fail(f"the latest checkpoint does not verify: {exc}")
        else:
            if latest.size == expected and latest.root.hex() != report.root:
                report.fail("the latest signed checkpoint does not match the entries", None)
        if all_signatures:
            for size, (_, note) in sorted(checkpoints.items()):
                try:
                    verify_checkpoint(note, self.origin(), self.public_key())
                except (VerificationError, InputError) as exc:
                    report.fail(f"checkpoint {size} does not verify: {exc}")
        return report

    def parse_old_checkpoint(self, text: str) -> Checkpoint:
        """Parse a checkpoint file given by a user (malformed input is an InputError)."""
        checkpoint, _ = parse_signed_note(text)
        return checkpoint
