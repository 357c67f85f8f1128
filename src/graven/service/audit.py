"""The tamper-evident audit log: an append-only RFC 9162 Merkle tree with signed checkpoints.

Every event is appended inside the database transaction of the state change it records, so the log
and the state never disagree; concurrent writers serialize on the database's write lock. After each
append graven signs a C2SP checkpoint (origin, size, root) with the log key
(``GRAVEN_HOME/log/checkpoint.key``, Ed25519, 0600) and stores it. Proofs read the stored subtree
hashes of ``service/logtree.py`` (O(log n) rows) and are checked against the latest signed checkpoint
before they are returned (when a stored hash is wrong, the proof is made from the entries instead, with a
warning); ``verify`` recomputes everything from the entries, and ``verify(repair=True)`` rewrites the
stored hashes from entries that lead to the signed root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from graven.core.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    key_id,
    note_head,
    parse_signed_note,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from graven.core.merkle import (
    EMPTY_ROOT,
    CompactRange,
    Node,
    consistency_nodes,
    consistency_path,
    consistency_proof,
    inclusion_nodes,
    inclusion_path,
    inclusion_proof,
    root_hash,
    stored_nodes,
    stored_subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from graven.core.paths import json_text
from graven.core.record import Record
from graven.db import Connection, Row
from graven.errors import (
    BackendError,
    GravenError,
    InputError,
    IntegrityError,
    NotFoundError,
    VerificationError,
)
from graven.home import make_home_dir
from graven.model.logentry import LogEntry, LogEvent
from graven.service import logtree
from graven.service.context import Context, check_limit, utc_now
from graven.signing.keys import (
    SigningKey,
    generate_key,
    load_private_key,
    load_public_key,
    write_private_key,
    write_public_key,
)

__all__ = [
    "CHECK_STAGE",
    "PROGRESS_EVERY",
    "PROOF_STAGE",
    "RECHECK_STAGE",
    "REPAIR_STAGE",
    "AuditLog",
    "LogVerifyReport",
    "SubtreeRepair",
    "actor_from_env",
]

_LEAF = b"\x00"
_ORIGIN_KEY = "log_origin"
_ADVISORY_LOCK = 7438002
_MAX_PROBLEMS = 100
_SHOWN_STRAY = 3  # stray stored subtree hashes named one by one by verify; the rest counted
_SHOWN_REPAIRED = 3  # rewritten or removed stored subtree hashes named by a log-repaired entry
_EMPTY_LOG = "the audit log is empty: nothing was logged yet"
_NO_CHECKPOINT = "the audit log has no signed checkpoint (its checkpoints were deleted)"

# The progress of a walk over every entry (a million, on a large home), reported through the context's
# reporter once per PROGRESS_EVERY entries and at the end: never a call per entry, whatever the reporter
CHECK_STAGE = "checking log entries"  # log verify
RECHECK_STAGE = "checking log entries again"  # log verify --repair: the log as the repair left it
REPAIR_STAGE = "recomputing stored subtree hashes"  # log verify --repair, under the writers' lock
PROOF_STAGE = "reading log entries"  # log prove / consistency, when a stored hash is wrong
PROGRESS_EVERY = 4096


def actor_from_env(default: str) -> str:
    """Who acts: a CI identity when running in CI, else ``user@host``; a byte that is no UTF-8 (in an
    environment variable) as ``\\xNN``, since it is recorded in UTF-8 logs and tables."""
    return json_text(_actor(default))


def _actor(default: str) -> str:
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


def _parse_high_water(data: bytes) -> tuple[int, str] | None:
    """The size and the log origin written in ``log/in-use`` (empty, as older versions left it, or as
    an operator empties it to start the mark again: 0); None when it holds anything else."""
    parts = data.decode("utf-8", "replace").split()
    if not parts:
        return 0, ""
    if len(parts) != 2 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 19:
        return None
    return int(parts[0]), parts[1]


class SubtreeRepair(Record):
    """What ``graven log verify --repair`` did to the stored subtree hashes (``log_subtrees``): recomputed
    from the ``size`` entries of the latest signed checkpoint, how many rows it rewrote (wrong), added
    (missing) and removed (of no complete subtree), and the index of the ``log-repaired`` entry that
    records it (None: nothing changed); ``error`` says why nothing was repaired."""

    __slots__ = ("added", "entry", "error", "removed", "rewritten", "size")
    _fields = ("size", "rewritten", "added", "removed", "entry", "error")

    def __init__(  # noqa: PLR0917 - positional, as the other reports
        self,
        size: int = 0,
        rewritten: int = 0,
        added: int = 0,
        removed: int = 0,
        entry: int | None = None,
        error: str | None = None,
    ) -> None:
        self.size = size
        self.rewritten = rewritten
        self.added = added
        self.removed = removed
        self.entry = entry
        self.error = error

    @property
    def changed(self) -> bool:
        """True when rows were written or removed (and the change logged)."""
        return self.entry is not None

    def to_json(self) -> dict[str, Any]:
        """The ``repair`` member of ``graven log verify --repair --json``."""
        return {
            "ok": self.error is None,
            "size": self.size,
            "rewritten": self.rewritten,
            "added": self.added,
            "removed": self.removed,
            "entry": self.entry,
            "error": self.error,
        }


class LogVerifyReport(Record):
    """What ``graven log verify`` found (at most 100 problems are kept; the rest are counted), and with
    ``--repair`` what was repaired. ``bad_subtrees`` counts the stored subtree hashes that are wrong or of
    no complete subtree (each is a problem too). Mutable (a value written by hand: graven.core.record)."""

    __slots__ = (
        "bad_subtrees",
        "checkpoints_checked",
        "first_bad_index",
        "more_problems",
        "problems",
        "repair",
        "root",
        "size",
    )
    _fields = (
        "size",
        "checkpoints_checked",
        "first_bad_index",
        "problems",
        "root",
        "more_problems",
        "bad_subtrees",
        "repair",
    )

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        size: int = 0,
        checkpoints_checked: int = 0,
        first_bad_index: int | None = None,
        problems: list[str] | None = None,
        root: str | None = None,
        more_problems: int = 0,
        bad_subtrees: int = 0,
        repair: SubtreeRepair | None = None,
    ) -> None:
        self.size = size
        self.checkpoints_checked = checkpoints_checked
        self.first_bad_index = first_bad_index
        self.problems: list[str] = [] if problems is None else problems
        self.root = root
        self.more_problems = more_problems
        self.bad_subtrees = bad_subtrees
        self.repair = repair  # set by verify(repair=True)

    @property
    def ok(self) -> bool:
        """True when the entries, the stored checkpoints, the stored subtree hashes, the log state and the
        latest signature agree."""
        return not self.problems

    def fail(self, message: str, index: int | None = None) -> None:
        """Record a problem (the first bad index is the smallest seen)."""
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(message)
        else:
            self.more_problems += 1
        if index is not None and (self.first_bad_index is None or index < self.first_bad_index):
            self.first_bad_index = index

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (with ``repair`` only when a repair was asked for)."""
        doc: dict[str, Any] = {
            "ok": self.ok,
            "size": self.size,
            "root": self.root,
            "checkpoints_checked": self.checkpoints_checked,
            "first_bad_index": self.first_bad_index,
            "problems": self.problems,
            "more_problems": self.more_problems,
        }
        if self.repair is not None:
            doc["repair"] = self.repair.to_json()
        return doc


def _shown(text: str) -> str:
    """A value from the database, quoted, escaped and cut short for a one-line message."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _note_mismatch(note: str, origin: str, size: int) -> str:
    """Say how a stored note disagrees with the checkpoint of ``size`` recomputed from the entries."""
    lines = note.split("\n", 3)
    if len(lines) < 4:
        return f"checkpoint {size}: its note is malformed"
    if lines[0] != origin:
        return f"checkpoint {size}: its note is for another log ({_shown(lines[0])})"
    if lines[1] != str(size):
        return f"checkpoint {size}: its note is signed for {_shown(lines[1])} entries, not {size}"
    return (
        f"checkpoint {size}: its signed root does not match the entries (first bad index at most {size - 1})"
    )


# A database belongs to one home (its log key signs the log there): a home whose GRAVEN_DB_URL names
# another's finds a log with entries and no key of its own, as a home that lost its key does.
_ANOTHER_HOME = (
    "if GRAVEN_DB_URL names the database of another GRAVEN_HOME (homes never share one), give this home "
    "a database of its own"
)


def _signed_elsewhere(note: str, origin: str, public: Ed25519PublicKey) -> bool:
    """Whether the note is signed, but by no key of this home's (``public`` under ``origin``): the log of
    another home, whose key signed it (or a note someone replaced; `graven log verify` tells)."""
    try:
        _, signatures = parse_signed_note(note)
    except InputError:
        return False
    ours = key_id(origin, public)
    return bool(signatures) and not any(s.name == origin and s.key_id == ours for s in signatures)


class AuditLog:
    """The log of one graven home (its database and its log key)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._key: SigningKey | None = None
        self._public: Ed25519PublicKey | None = None
        self._origin: str | None = None
        self._committing = 0  # the log's size after this process's latest append
        # (origin, size, frontier, note): a state and its latest note this process verified or signed
        # itself, taken as signed when the database holds exactly that again (_signed_state)
        self._vouched: tuple[str, int, str, str] | None = None
        self.actor = actor_from_env(ctx.actor)

    # -- keys and identity ------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        """The log's private key."""
        return self._ctx.home.root / "log" / "checkpoint.key"

    @property
    def in_use_path(self) -> Path:
        """An empty file saying that the log key has signed entries that were committed: written
        right after the first transaction that appended one commits. An empty log whose key has it
        lost its entries; one whose key has not may be a home whose first command failed before its
        first entry was committed."""
        return self.key_path.with_name("in-use")

    @property
    def public_key_path(self) -> Path:
        """The log's public key, written with the private key; verifying needs only this file."""
        return self.key_path.with_suffix(".pub")

    def _signing_key(self, *, create: bool) -> SigningKey:
        """The log's private key; ``create`` makes one when there is none (only for an empty log)."""
        if self._key is None:
            path = self.key_path
            if not path.exists():
                if not create:
                    raise NotFoundError(
                        f"the log key {path} is missing but the log already has entries: restore "
                        "GRAVEN_HOME/log/checkpoint.key from a backup (a new key would not match "
                        f"the log's checkpoints), or, {_ANOTHER_HOME}"
                    )
                if self.public_key_path.exists() and not path.exists():  # not another process's new pair
                    raise NotFoundError(
                        f"the log key {path} is missing but its public key {self.public_key_path.name} "
                        "exists: restore GRAVEN_HOME/log/checkpoint.key from a backup (or remove "
                        f"{self.public_key_path.name} to start a new log)"
                    )
                try:
                    make_home_dir(path.parent)
                except OSError as exc:
                    raise BackendError(f"cannot create {path.parent}: {exc.strerror}") from None
                key = generate_key("ed25519")
                try:
                    write_private_key(path, key)
                    write_public_key(self.public_key_path, key)
                except InputError:
                    pass  # another process created it first: use theirs
            loaded = load_private_key(path)
            if not isinstance(loaded.private, Ed25519PrivateKey):
                raise InputError(f"the log key {path} is not an Ed25519 key")
            if self.public_key_path.exists():
                stored = self._load_public_file()
                if stored.public_bytes_raw() != loaded.private.public_key().public_bytes_raw():
                    raise VerificationError(
                        f"the log key {path} does not match {self.public_key_path.name}: restore the "
                        "log's own key from a backup"
                    )
            self._key = loaded
        return self._key

    def _note_in_use(self) -> None:
        """Write :attr:`in_use_path` after a commit that appended (best effort): it exists once the key
        signed committed entries, and holds the largest log size this home committed (its high-water
        mark), raised under a lock, never lowered."""
        self._raise_mark(self._committing, self._origin)

    def _raise_mark(self, size: int, origin: str | None) -> None:
        """Raise the high-water mark in :attr:`in_use_path` to ``size`` (best effort). The file is the
        home's owner's: made by root in another user's home (sudo graven ...), it is given to that
        user; another user who is not root makes none (a 0600 file of theirs would lock the owner
        out of the mark: every later append and verify failed to read it)."""
        if not self.key_path.exists() or origin is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            owner = os.stat(self.in_use_path.parent)
            euid = os.geteuid()
            if euid not in (owner.st_uid, 0) and not self.in_use_path.exists():
                return
            flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
            try:
                fd, created = os.open(self.in_use_path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
            except FileExistsError:
                fd, created = os.open(self.in_use_path, flags), False
            try:
                if created and euid == 0 and owner.st_uid != 0:  # only the file made here: never
                    os.fchown(fd, owner.st_uid, owner.st_gid)  # one a hard link brought in
                fcntl.flock(fd, fcntl.LOCK_EX)
                mark = _parse_high_water(os.pread(fd, 256, 0))
                if mark is None:  # damaged: left for high_water() to report, never written over
                    return
                marked, marked_origin = mark
                if size > marked or origin != marked_origin:  # a log started anew: its own mark
                    text = f"{size} {origin}\n".encode()
                    os.pwrite(fd, text, 0)
                    os.ftruncate(fd, len(text))
            finally:
                os.close(fd)

    def high_water(self) -> tuple[int, str]:
        """The largest size this home committed of the log with the given origin (:attr:`in_use_path`);
        (0, "") when it never did, or when the file predates the mark (it was empty). IntegrityError
        when the file is there but cannot be read: the mark would be off without a word."""
        import fcntl

        try:
            with open(self.in_use_path, "rb") as handle:
                # shared: a writer (_raise_mark) writes a new text over the old, then cuts the file,
                # under the lock held exclusively; read between the two, a sound mark looks damaged
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                mark = _parse_high_water(handle.read(256))
        except FileNotFoundError:
            return 0, ""
        except OSError as exc:
            raise IntegrityError(
                f"cannot read {self.in_use_path} ({exc.strerror}): this home's high-water mark of the log "
                "is in it; give it back to this user (a sudo run may have taken it)"
            ) from None
        if mark is None:  # read as 0 it would turn the check of a rolled-back database off unnoticed
            raise IntegrityError(
                f"{self.in_use_path} is damaged: it should hold this home's high-water mark of the log "
                "(a size and the log's origin); empty the file to start the mark again (graven writes it "
                "at the next entry)"
            )
        return mark

    def _read_mark(self) -> tuple[int, str] | IntegrityError:
        """The high-water mark, or why it cannot be read. Read it before the database: the mark is raised
        only after a commit, so one read first is never past the log a later snapshot shows, whereas one
        read after the snapshot may count what other writers committed since (a live log "rolled back")."""
        try:
            st = os.lstat(self.in_use_path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):  # its mark could never be kept
            return IntegrityError(
                f"{self.in_use_path} is not a file (a symlink or a directory): this home's high-water "
                "mark of the log cannot be kept there; remove it (graven writes it again)"
            )
        try:
            return self.high_water()
        except IntegrityError as exc:
            return exc

    def _rolled_back(
        self, size: int, origin: str | None, mark: tuple[int, str] | IntegrityError
    ) -> IntegrityError | None:
        """Whether the log of ``size`` entries is behind ``mark`` (:meth:`_read_mark`, read before it)."""
        if isinstance(mark, IntegrityError):
            return mark
        marked, marked_origin = mark
        if size >= marked or origin != marked_origin:
            return None
        return IntegrityError(
            f"the audit log has {size} entries, but this home committed {marked}: the database "
            f"({self._ctx.home.db_shown}) was rolled back (an older backup, or a `graven db copy` of a "
            f"database written since) and the newer entries are not in it; restore the newest backup "
            f"or copy again (from the database written since, into an empty one), or, to go on from "
            f"this one on purpose, empty {self.in_use_path}"
        )

    def _owners_mark(self) -> bool:
        """Whether the high-water mark is the home's owner's and this user, another, may not read it (a
        home shared for reading: the mark is 0600): a reader cannot make that check, which is no fault
        of the log's."""
        try:
            owner = os.stat(self.in_use_path.parent).st_uid
        except OSError:
            return False
        return owner != os.geteuid() and not os.access(self.in_use_path, os.R_OK)

    def _existing_key_file(self) -> Path | None:
        """The log key file (private, else public) when one exists: the log had a key."""
        for path in (self.key_path, self.public_key_path):
            if path.exists():
                return path
        return None

    def _load_public_file(self) -> Ed25519PublicKey:
        public = load_public_key(self.public_key_path).key
        if not isinstance(public, Ed25519PublicKey):
            raise InputError(f"the log's public key {self.public_key_path} is not an Ed25519 key")
        return public

    def public_key(self) -> Ed25519PublicKey:
        """The log's public key: ``checkpoint.pub``, else the private key file (never the database)."""
        if self._public is None:
            if self.public_key_path.exists():
                self._public = self._load_public_file()
            elif self.key_path.exists():
                public = load_private_key(self.key_path).public.key
                if not isinstance(public, Ed25519PublicKey):
                    raise InputError(f"the log key {self.key_path} is not an Ed25519 key")
                self._public = public
            else:
                raise NotFoundError(
                    f"the log key is missing ({self.key_path} and {self.public_key_path.name}): "
                    f"restore it from a backup, or, {_ANOTHER_HOME}"
                )
        return self._public

    def _require_database(self) -> None:
        """Refuse to read a log that was never written (without creating a database)."""
        if not self._ctx.home.has_database():
            raise NotFoundError(_EMPTY_LOG)

    def origin(self, conn: Connection | None = None) -> str:
        """This instance's log origin (created once, kept in the database). A log that has none is empty
        (NotFoundError), or, when it holds anything else, damaged (VerificationError)."""
        if self._origin is None:
            if conn is None:
                self._require_database()
                with self._ctx.db.connect() as own:
                    self._origin = self._read_origin(own)
                    if self._origin is None:
                        raise self._headless(own, "the log origin is missing from the database")
            else:
                self._origin = self._read_origin(conn)
                if self._origin is None:
                    raise self._headless(conn, "the log origin is missing from the database")
        return self._origin

    @staticmethod
    def _headless(conn: Connection, what: str) -> GravenError:
        """Why the log has no origin or no signed checkpoint: it is empty (NotFoundError, exit 2: nothing
        was logged yet), or it holds entries or a state that say otherwise, and the database lost or
        someone deleted what it lacks (VerificationError, exit 1: never shown as an empty log)."""
        populated = (
            conn.execute("SELECT 1 FROM log_entries LIMIT 1").first() is not None
            or conn.execute("SELECT 1 FROM log_state LIMIT 1").first() is not None
        )
        if not populated:
            return NotFoundError(_EMPTY_LOG)
        return VerificationError(f"{what} although the log has entries; run `graven log verify`")

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
        """Append ``event`` inside the caller's transaction and sign the new checkpoint.

        The log key is created only for an empty log: when the log already has entries (or an origin
        or a state) and the key is missing, nothing is appended and the caller's transaction fails.
        """
        if conn.dialect == "postgresql":
            conn.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
        origin, state, populated = self._appendable(conn, self._read_mark())  # under the writers' lock
        key = self._signing_key(create=not populated)
        conn.after_commit(self._note_in_use)  # only committed entries make the key "used"
        private = key.private
        assert isinstance(private, Ed25519PrivateKey)
        if populated and (origin is None or state is None):
            raise IntegrityError(
                "the audit log's origin or state is missing from the database although the log has "
                "entries: restore the database from a backup (`graven log verify` shows what is wrong)"
            )
        if origin is None:
            from graven.runtime import random_uuid

            origin = f"graven.invalid/log/{random_uuid()}"
            conn.execute(
                """INSERT INTO graven_meta ("key", value) VALUES (:key, :value)""",
                {"key": _ORIGIN_KEY, "value": origin},
            )
        self._origin = origin
        if state is None:
            compact = CompactRange()
        else:
            compact = self._signed_state(conn, origin, state, private.public_key())
        entry = LogEntry.of(event, index=compact.size, time=utc_now(), actor=self.actor)
        data = entry.to_bytes()
        leaf = hashlib.sha256(_LEAF + data).digest()
        subtrees = compact.append_stored(leaf)  # one every 256 entries
        self._committing = compact.size  # the high-water mark once the transaction commits
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
        self._vouched = (origin, compact.size, frontier, note)  # what this process just signed
        if subtrees:
            logtree.fill(conn, entry.index)  # rows an older graven's appends left out (else 1-3 reads)
            logtree.write_nodes(conn, subtrees)
        return entry

    def _signed_state(
        self, conn: Connection, origin: str, state: Row, public: Ed25519PublicKey
    ) -> CompactRange:
        """The log state's compact range, once it is that of the latest checkpoint the log key signed
        (its size and root): the next checkpoint is signed from it, so a state row that someone
        rewrote (a compact range of other entries, another size) would have the key sign a log it
        never signed, one that verifies with the verifier key. One signature check per append."""
        try:
            hashes = [bytes.fromhex(h) for h in str(state.frontier).split(",") if h]
            compact = CompactRange.from_state(logtree.stored_int(state.size, "log_state size"), hashes)
        except (ValueError, InputError) as exc:
            raise IntegrityError(f"the audit log's stored state is damaged: {exc}") from None
        note = self._latest_note(conn)
        # A state and note byte for byte those this process signed (or checked) before: the
        # signature check is not repeated (an append signs one, a check would be a second Ed25519
        # operation per entry: a third of the append throughput).
        if note is not None and self._vouched == (origin, compact.size, str(state.frontier), note):
            return compact
        try:
            if note is None:
                raise VerificationError("the log has no signed checkpoint")
            signed = verify_checkpoint(note, origin, public)
        except (VerificationError, InputError) as exc:
            if note is not None and _signed_elsewhere(note, origin, public):  # never signed by this home
                raise InputError(
                    f"the audit log's latest checkpoint is signed by another key than this home's log key "
                    f"({self.key_path}): {_ANOTHER_HOME}; else the database or this home's log/ was "
                    "changed (`graven log verify` shows what)"
                ) from None
            raise IntegrityError(
                f"the audit log's latest checkpoint does not verify ({exc}): nothing is signed after "
                "it; run `graven log verify`"
            ) from None
        if signed.origin != origin:
            what = f"cannot be checked: its latest checkpoint is for another log ({_shown(signed.origin)})"
        elif signed.size != compact.size:
            what = f"records {compact.size} entries, its latest signed checkpoint {signed.size}"
        elif signed.root != compact.root():
            what = f"does not lead to the root of its latest signed checkpoint ({signed.size} entries)"
        else:
            self._vouched = (origin, compact.size, str(state.frontier), note)
            return compact
        raise IntegrityError(
            f"the audit log's state (size and compact range) {what}: the database was changed, and an "
            "append would sign a log that the log key never signed; run `graven log verify`, and "
            "restore the database from a backup"
        )

    def _appendable(
        self, conn: Connection, mark: tuple[int, str] | IntegrityError
    ) -> tuple[str | None, Row | None, bool]:
        """The log's origin, state row (size, frontier) and whether it has anything, once nothing
        forbids appending to it: raises when the log is gone although its key signed committed
        entries, or when the database was rolled back behind this home's high-water ``mark`` (read
        before ``conn``'s snapshot, or under the writers' lock)."""
        origin = self._read_origin(conn)
        state = conn.execute("SELECT size, frontier FROM log_state").one_or_none()
        populated = (
            origin is not None
            or state is not None
            or conn.execute("SELECT 1 FROM log_entries LIMIT 1").first() is not None
        )
        if not populated and self._key is None and self.in_use_path.exists() and self.key_path.exists():
            # the key has signed committed entries, and they are gone: a new log signed with the old
            # key would verify, and hide that the old one is lost (`graven log verify` says so too)
            raise self._lost_error()
        rolled_back = None if state is None else self._rolled_back(_state_size(state), origin, mark)
        if rolled_back is not None:
            raise rolled_back  # appending would sign a fork of what this home committed
        return origin, state, populated

    def check_ready(self) -> None:
        """Raise what :meth:`append` would raise now for the log's state (a database rolled back
        behind this home's high-water mark, a log lost while its key signed entries, a missing log
        key), without appending: an operation that changes an environment asks first, so that it
        never switches and runs hooks only to find that it cannot be recorded."""
        if not self._ctx.home.has_database():
            self.check_not_lost()
            return
        mark = self._read_mark()  # before the snapshot: writers may commit (and raise it) meanwhile
        with self._ctx.db.connect() as conn:
            origin, state, populated = self._appendable(conn, mark)
            if populated:
                key = self._signing_key(create=False)
                if origin is not None and state is not None:
                    assert isinstance(key.private, Ed25519PrivateKey)
                    self._signed_state(conn, origin, state, key.private.public_key())

    @staticmethod
    def head(conn: Connection) -> tuple[str, int, str] | None:
        """(origin, size, root hex) of the log's latest checkpoint in ``conn``; None for an empty log."""
        origin = AuditLog._read_origin(conn)
        row = conn.execute("SELECT size, root FROM log_checkpoints ORDER BY size DESC LIMIT 1").one_or_none()
        if origin is None or row is None:
            return None
        return origin, logtree.stored_int(row.size, "log_checkpoints size"), str(row.root)

    @staticmethod
    def root_at(conn: Connection, size: int) -> str | None:
        """The root hex of the log's checkpoint at ``size`` entries; None when the log has none."""
        root = conn.execute(
            "SELECT root FROM log_checkpoints WHERE size = :size", {"size": size}
        ).scalar_one_or_none()
        return None if root is None else str(root)

    def record(self, event: LogEvent) -> LogEntry:
        """Append ``event`` in a transaction of its own (for events that change no other state)."""
        with self._ctx.db.begin() as conn:
            return self.append(conn, event)

    # -- reading ----------------------------------------------------------------------------------

    def latest_checkpoint(self) -> str:
        """The latest stored checkpoint note, as stored (see :meth:`signed_checkpoint`)."""
        self._require_database()
        with self._ctx.db.connect() as conn:
            note = self._latest_note(conn)
            if note is None:
                raise self._headless(conn, _NO_CHECKPOINT)
        return note

    @staticmethod
    def _latest_note(conn: Connection) -> str | None:
        note = conn.execute(
            "SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        ).scalar_one_or_none()
        return None if note is None else str(note)

    def _check_note(self, note: str, origin: str) -> Checkpoint:
        """The checkpoint of a stored note once the log key's signature and the origin check out."""
        public = self.public_key()  # its own errors name the key file, not the checkpoint
        try:
            checkpoint = verify_checkpoint(note, origin, public)
        except InputError as exc:
            raise VerificationError(f"the latest checkpoint is malformed: {exc}") from None
        except VerificationError as exc:
            if _signed_elsewhere(note, origin, public):
                raise VerificationError(f"{exc.message}: {_ANOTHER_HOME}") from None
            raise
        if checkpoint.origin != origin:
            raise VerificationError(f"the latest checkpoint is for another log ({_shown(checkpoint.origin)})")
        return checkpoint

    def signed_checkpoint(self) -> str:
        """The latest checkpoint note once its signature verifies (for an auditor to keep)."""
        self._require_database()
        with self._ctx.db.connect() as conn:
            note = self._latest_note(conn)
            if note is None:
                raise self._headless(conn, _NO_CHECKPOINT)
            self._check_note(note, self._signed_origin(conn))
        return note

    def _signed_origin(self, conn: Connection) -> str:
        """The origin of a log that has signed checkpoints (its loss is a failed check, exit 1)."""
        origin = self._read_origin(conn)
        if origin is None:
            raise VerificationError(
                "the log origin is missing from the database although checkpoints exist; run "
                "`graven log verify`"
            )
        return origin

    def _lost_error(self) -> IntegrityError:
        return IntegrityError(
            f"the audit log is empty but its key {self.key_path} has signed entries: the database "
            f"({self._ctx.home.db_shown}) lost its log, or is a new one; restore it from a "
            f"backup, or, to start a new log on purpose, move {self.key_path.parent} aside"
        )

    def check_not_lost(self) -> None:
        """IntegrityError when the log is empty although its key signed committed entries (the
        database lost them): what reads the log must not show an empty one as if all were well."""
        if not (self.in_use_path.exists() and self.key_path.exists()):
            return
        if self._ctx.home.has_database():
            with self._ctx.db.connect() as conn:
                if conn.execute("SELECT 1 FROM log_entries LIMIT 1").first() is not None:
                    return
        raise self._lost_error()

    def entries(
        self,
        *,
        env: str | None = None,
        artifact: str | None = None,
        since: str | None = None,
        since_index: int | None = None,
        event: str | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[LogEntry, str]]:
        """Entries (with the leaf hash of each, hex, hashed from it) in index order, filtered; none when
        nothing was logged.

        With ``limit``, only the newest ``limit`` entries that pass the filters, still in index order
        (as ``tail`` would): the database is asked for them newest first with ``LIMIT``, so the work
        grows with ``limit``, not with the log. Each entry given is parsed and checked to be canonical,
        as without a limit; with or without one, the tree is not recomputed here (:meth:`verify` does).
        """
        if since_index is not None and not 0 <= since_index <= MAX_TREE_SIZE:
            raise InputError(f"a log index must be in 0..{MAX_TREE_SIZE}, got {since_index}")
        check_limit(limit)
        if not self._ctx.home.has_database():
            return
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
        if event is not None:
            where.append("event = :event")
            params["event"] = event
        if since_index is not None:
            where.append("idx >= :since_index")
            params["since_index"] = since_index
        query = "SELECT idx, entry FROM log_entries"
        if where:
            query += " WHERE " + " AND ".join(where)
        if limit is None:
            query += " ORDER BY idx"
        else:
            query += " ORDER BY idx DESC LIMIT :limit"
            params["limit"] = limit
        with self._ctx.db.connect() as conn:
            result = conn.execute(query, params)
            rows: Iterable[Row] = result if limit is None else reversed(result.all())
            sha256 = hashlib.sha256
            for row in rows:
                data = str(row.entry).encode()
                try:
                    entry = LogEntry.from_bytes(data)
                except InputError as exc:  # the database's, not the caller's input: a failed check
                    raise IntegrityError(
                        f"log entry {row.idx} is damaged ({exc}); run `graven log verify`"
                    ) from None
                # the leaf hash of these bytes, never the stored column (derived data verify checks)
                yield entry, sha256(_LEAF + data).hexdigest()

    def _leaf_hashes(self, conn: Connection, size: int) -> list[bytes]:
        """The leaf hash of each of the first ``size`` entries: the whole log read (a proof's fallback),
        its progress reported (:data:`PROOF_STAGE`, once per :data:`PROGRESS_EVERY` entries)."""
        rows = iter(
            conn.stream("SELECT entry FROM log_entries WHERE idx < :size ORDER BY idx", {"size": size})
        )
        report, sha256 = self._ctx.reporter.progress, hashlib.sha256
        report(PROOF_STAGE, 0, size)
        leaves: list[bytes] = []
        while batch := [sha256(_LEAF + str(r.entry).encode()).digest() for r in islice(rows, PROGRESS_EVERY)]:
            leaves += batch
            report(PROOF_STAGE, len(leaves), size)
        if len(leaves) != size:
            raise VerificationError(
                f"the log has {len(leaves)} entries below its checkpoint size {size}; run `graven log verify`"
            )
        return leaves

    def _warn_wrong_subtrees(self, conn: Connection, leaves: Sequence[bytes]) -> None:
        """Say, in one warning, that a proof was made from the entries because stored subtree hashes are
        wrong (naming the first), and what rewrites them. Reads only the table: ``leaves`` (all of the
        checkpoint's, which lead to its signed root) give what each row should be."""
        _, expected = stored_nodes(leaves)
        bad = logtree.wrong(logtree.stored(conn), expected)
        if len(bad) == 1:
            what = (
                f"the audit log's stored subtree hash of {logtree.row_name(bad[0])} does not match its "
                "entries"
            )
        elif bad:
            what = (
                f"{len(bad)} of the audit log's stored subtree hashes do not match its entries, the first "
                f"that of {logtree.row_name(bad[0])}"
            )
        else:  # pragma: no cover - right rows and entries that lead to the root make a proof that verifies
            what = "the audit log's stored subtree hashes gave no proof, its entries did"
        self._ctx.reporter.warn(
            f"{what}: this proof was made from the entries instead (the whole log read); "
            "`graven log verify --repair` rewrites the stored hashes"
        )

    def prove(self, index: int) -> dict[str, Any]:
        """An inclusion proof of entry ``index`` in the tree of the latest checkpoint.

        The proof is checked against the signed root before it is returned. One made from the stored
        subtree hashes that does not check out is made again from the entries (the whole log read, as
        before those rows existed): when that one checks out it is returned, with a warning (the
        context's reporter) naming the wrong row; entries that no longer lead to the signed root raise
        VerificationError. Nothing is written: proving is a read (a read-only home proves too).
        """
        self._require_database()
        with self._ctx.db.connect() as conn:
            note = self._latest_note(conn)
            if note is None:
                raise self._headless(conn, _NO_CHECKPOINT)
            checkpoint = self._check_note(note, self._signed_origin(conn))
            size, root = checkpoint.size, checkpoint.root
            if not 0 <= index < size:
                raise NotFoundError(f"no log entry {index}: the log has entries 0..{size - 1}")
            nodes = logtree.read_nodes(conn, inclusion_nodes(index, size), size)
            leaf = nodes[(0, index)]  # hashed from the entry; its siblings from stored subtrees, unverified
            proof = inclusion_path(index, size, stored_subtree_hash(nodes))
            if not _includes(leaf, index, size, proof, root):
                leaves = self._leaf_hashes(conn, size)
                leaf, proof = leaves[index], inclusion_proof(leaves, index)
                if not _includes(leaf, index, size, proof, root):
                    raise VerificationError(
                        f"the log's entries do not lead to the root of its latest signed checkpoint "
                        f"({size} entries): no proof for entry {index}; run `graven log verify`"
                    )
                self._warn_wrong_subtrees(conn, leaves)
        return {
            "index": index,
            "tree_size": checkpoint.size,
            "leaf_hash": leaf.hex(),
            "proof": [h.hex() for h in proof],
            "root": checkpoint.root.hex(),
            "checkpoint": note,
        }

    def consistency(self, old_note: str) -> dict[str, Any]:
        """Prove that an old checkpoint is a prefix of the current log.

        Raises VerificationError when the old checkpoint is not signed by the log key, when the log
        was truncated below it (also when it was emptied or deleted), forked from it, or when the
        entries no longer match the latest signed checkpoint.
        """
        claimed, _ = parse_signed_note(old_note)  # malformed: InputError
        try:
            old = verify_checkpoint(old_note, claimed.origin, self.public_key())
        except InputError as exc:
            if isinstance(exc, NotFoundError):
                raise
            raise VerificationError(f"the old checkpoint does not verify: {exc}") from None
        if not self._ctx.home.has_database():
            return self._empty_log_consistency(old)
        with self._ctx.db.connect() as conn:
            origin = self._read_origin(conn)
            note = self._latest_note(conn)
            if origin is None or note is None:
                return self._empty_log_consistency(old)
            if old.origin != origin:
                raise VerificationError(
                    f"the old checkpoint is for another log ({_shown(old.origin)}), not {origin}"
                )
            new = self._check_note(note, origin)
            if old.size > new.size:
                raise VerificationError(
                    f"fork: the log was truncated: the old checkpoint has {old.size} entries, the log's "
                    f"latest signed checkpoint only {new.size}"
                )
            proof = self._consistency_proof(conn, old, new)
        return {
            "old_size": old.size,
            "new_size": new.size,
            "old_root": old.root.hex(),
            "new_root": new.root.hex(),
            "proof": [h.hex() for h in proof],
            "checkpoint": note,
        }

    def _consistency_proof(self, conn: Connection, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        """The consistency proof from ``old`` to ``new`` (the log's latest signed checkpoint), from the
        stored subtree hashes, once it and both roots check out. When they do not, the entries, read
        whole only then, say what is wrong: a fork, or entries that no longer match; when neither,
        stored subtree hashes were wrong (never called a fork): the proof is made from the entries,
        checked, and returned with a warning that names the wrong row."""
        nodes = logtree.read_nodes(conn, consistency_nodes(old.size, new.size), new.size)
        subtree_hash = stored_subtree_hash(nodes)
        if subtree_hash(0, new.size) == new.root and (old.size == 0 or subtree_hash(0, old.size) == old.root):
            if old.size == 0:
                return []
            proof = consistency_path(old.size, new.size, subtree_hash) if old.size < new.size else []
            try:
                verify_consistency(old.size, new.size, proof, old.root, new.root)
            except VerificationError:
                pass
            else:
                return proof
        leaves = self._leaf_hashes(conn, new.size)
        if root_hash(leaves) != new.root:
            raise VerificationError(
                f"the log's entries do not match its latest signed checkpoint ({new.size} entries); "
                "run `graven log verify`"
            )
        if old.size and root_hash(leaves[: old.size]) != old.root:
            raise VerificationError(
                f"fork: the log's first {old.size} entries no longer hash to the old checkpoint's root"
            )
        proof = consistency_proof(leaves, old.size) if 0 < old.size < new.size else []
        if old.size:
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        self._warn_wrong_subtrees(conn, leaves)
        return proof

    @staticmethod
    def _empty_log_consistency(old: Checkpoint) -> dict[str, Any]:
        """An old checkpoint against a log with no entries, origin or database: truncated, or empty."""
        if old.size:
            raise VerificationError(
                f"fork: the log was truncated: the old checkpoint has {old.size} entries, the log now "
                "has none"
            )
        raise NotFoundError(_EMPTY_LOG)

    # -- verifying --------------------------------------------------------------------------------

    def verify(self, *, all_signatures: bool = False, repair: bool = False) -> LogVerifyReport:
        """Recompute the tree from every entry and check it against everything stored about it
        (:meth:`_verify`); with ``repair``, when stored subtree hashes are wrong or stray, rewrite them
        (:meth:`repair_subtrees`) and verify again. The report's ``repair`` says what was done, or why
        nothing was (the report then fails: the rows are still wrong)."""
        report = self._verify(all_signatures=all_signatures, stage=CHECK_STAGE)
        if not repair:
            return report
        if not report.bad_subtrees:  # nothing to repair: no write, no entry (a read-only home too)
            report.repair = SubtreeRepair(size=report.size)
            return report
        try:
            done = self.repair_subtrees()
        except GravenError as exc:  # the report fails already (the rows); it says why they stay wrong
            report.repair = SubtreeRepair(size=report.size, error=str(exc))
            return report
        # the report of the log as it is now (a new entry too); also when another repair came first
        report = self._verify(all_signatures=all_signatures, stage=RECHECK_STAGE)
        report.repair = done
        return report

    def _verify(self, *, all_signatures: bool, stage: str) -> LogVerifyReport:
        """Recompute the tree from every entry and check it against everything stored about it.

        Checks, in one pass over the entries (no signature per entry unless ``all_signatures``):

        * every entry: contiguous index, stored leaf hash and derived columns;
        * every stored checkpoint: its root column and its note's text (origin, size and root
          lines) against the root recomputed at its size; one checkpoint per entry;
        * every stored subtree hash (``log_subtrees``) against the one recomputed from the entries, and
          none beyond them (a missing one is no problem: proofs compute it);
        * the latest note: its signature by the log key, and its signed size and root equal to the
          number of entries and their root;
        * the log state (size and compact range) and, for an empty log, that no origin, state or
          log key says it once had entries.

        The walk reports its progress as ``stage`` (entries checked of the log's), once per
        :data:`PROGRESS_EVERY` entries and at its end.

        Nothing is created (a home without a database gives an empty report), but for the high-water
        mark (:attr:`in_use_path`) of a log that verified whole and has none yet: a home written by a
        graven before the mark would otherwise not notice a database lost before its next append.
        """
        report = LogVerifyReport(root=EMPTY_ROOT.hex())
        if not self._ctx.home.has_database():
            key_file = self._existing_key_file()
            if key_file is not None:
                report.fail(f"the log's database is missing but its key {key_file} exists", 0)
            return report
        public: Ed25519PublicKey | None
        key_problem = ""
        try:
            public = self.public_key()
        except InputError as exc:  # missing or unreadable: reported below when the log has entries
            public, key_problem = None, str(exc)
        mark = self._read_mark()  # before the snapshot: writers may commit (and raise it) meanwhile
        if isinstance(mark, IntegrityError) and self._owners_mark():
            self._ctx.reporter.warn(
                f"cannot read {self.in_use_path} (Permission denied): this home's owner keeps the high-water "
                "mark of the log there; whether the database was rolled back behind it is not checked "
                "(only the owner's graven log verify checks that)"
            )
            mark = (0, "")
        with self._ctx.db.connect() as conn:
            origin = self._read_origin(conn)
            states = conn.execute("SELECT size, frontier FROM log_state").all()
            latest = conn.execute(
                "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
            ).one_or_none()
            name = origin if origin is not None else self._claimed_origin(latest)
            last = conn.execute("SELECT max(idx) FROM log_entries").scalar()  # the same snapshot as the walk
            total = 0 if last is None else logtree.stored_int(last, "log_entries idx") + 1
            progress = self._ctx.reporter.progress
            if total:
                progress(stage, 0, total)
            compact, latest_root = self._check_entries(
                conn,
                report,
                name,
                public if all_signatures else None,
                None if latest is None else logtree.stored_int(latest.size, "log_checkpoints size"),
                progress=lambda done: progress(stage, done, total),
            )
            beyond = conn.execute(
                "SELECT min(size) FROM log_checkpoints WHERE size > :size", {"size": report.size}
            ).scalar()
            below = conn.execute("SELECT min(size) FROM log_checkpoints WHERE size < 1").scalar()
        if beyond is not None:
            report.fail(
                f"a checkpoint covers {beyond} entries but the log has only {report.size}", report.size
            )
        if below is not None:
            report.fail(f"a checkpoint row has the size {below} (graven never signs an empty log)")
        if report.size or latest is not None:
            if origin is None:
                report.fail("the log origin is missing from the database (graven_meta log_origin)")
            if public is None:
                report.fail(f"cannot check the checkpoint signatures: {key_problem}")
        if latest is None:
            if report.size:
                report.fail("entries exist but no checkpoint was ever signed", 0)
        elif public is not None:
            self._check_latest(report, latest, latest_root, name, public)
        self._check_state(report, states, compact)
        if (rolled_back := self._rolled_back(report.size, origin, mark)) is not None and report.size:
            report.fail(str(rolled_back), report.size)
        if report.size == 0:
            if origin is not None:
                report.fail(f"the log has no entries but the database has its origin {origin}", 0)
            elif (key_file := self._existing_key_file()) is not None:
                report.fail(f"the log has no entries but its key {key_file} exists", 0)
        if report.size and not report.problems and not self.in_use_path.exists():
            # a home of a graven before the mark: without it, a database lost before the next append
            # would go unnoticed (a new log signed with the old key)
            self._raise_mark(report.size, origin)
        return report

    @staticmethod
    def _claimed_origin(latest: Row | None) -> str:
        """The origin that the latest note claims (when the database lost its own), else ``""``."""
        if latest is None:
            return ""
        try:
            return parse_signed_note(str(latest.note))[0].origin
        except InputError:
            return ""

    @staticmethod
    def _check_entries(
        conn: Connection,
        report: LogVerifyReport,
        origin: str,
        public: Ed25519PublicKey | None,
        latest_size: int | None,
        *,
        progress: Callable[[int], None],
    ) -> tuple[CompactRange, bytes | None]:
        """Stream the entries with their checkpoints; return the tree and the root at ``latest_size``.

        Each stored note but the latest is compared as text with the recomputed checkpoint; with a
        ``public`` key its signature is also verified (slow: one signature per entry). ``progress``
        is given the number of entries checked once per :data:`PROGRESS_EVERY` and at the end (not
        for an empty log).
        """
        every = PROGRESS_EVERY
        tick = every  # the next count reported: one comparison per entry, a call per batch
        compact = CompactRange()
        latest_root: bytes | None = None
        first_missing: int | None = None
        missing = 0
        expected = 0
        sha256 = hashlib.sha256
        gap = False
        subtrees = logtree.stored(conn)  # one row per 255 entries
        rows = conn.stream(
            "SELECT e.idx, e.entry, e.leaf_hash, e.event, e.artifact, e.env, e.time, c.size, c.root, c.note "
            "FROM log_entries e LEFT JOIN log_checkpoints c ON c.size = e.idx + 1 ORDER BY e.idx"
        )
        for idx, text, stored_leaf, event, artifact, env, time, size, stored_root, note in rows:
            if idx != expected:
                report.fail(f"entry {expected} is missing (next is {idx})", expected)
                gap = True
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
            for level, index, value in compact.append_stored(leaf):
                stored = subtrees.pop((level, index), None)
                if stored is not None and stored != value.hex():  # a missing one is computed when needed
                    first = index << level
                    report.bad_subtrees += 1
                    report.fail(
                        f"the stored subtree hash of entries {first}..{first + (1 << level) - 1} (level "
                        f"{level}, index {index}) does not match the entries"
                    )
            expected += 1
            if expected == tick:
                progress(expected)
                tick += every
            if size is None:
                if latest_size is not None and expected < latest_size:  # the rest: _check_latest
                    missing += 1
                    if first_missing is None:
                        first_missing = expected
                continue
            report.checkpoints_checked += 1
            root = compact.root()
            if expected == latest_size:
                latest_root = root  # its note is verified in full by _check_latest
                mismatch = None
            elif public is not None:
                mismatch = _check_signed_note(
                    report, str(note), origin=origin, size=expected, root=root, public=public
                )
            elif str(note).startswith(note_head(origin, expected, root)):
                mismatch = None
            else:
                mismatch = _note_mismatch(str(note), origin, expected)
            if mismatch is None and stored_root != root.hex():
                mismatch = (
                    f"checkpoint {expected}: its root column does not match the entries (first bad "
                    f"index at most {expected - 1})"
                )
            if mismatch is not None:
                report.fail(mismatch, expected - 1)
        if expected % every:  # the end, unless its batch said it
            progress(expected)
        report.size = expected
        report.root = compact.root().hex()
        # past a missing entry the rest were not read: their rows are none of this report's business
        stray = [] if gap else sorted(subtrees)
        report.bad_subtrees += len(stray)
        for level, index in stray[:_SHOWN_STRAY]:
            report.fail(
                f"a stored subtree hash (level {level}, index {index}) is of no complete subtree of the "
                f"{expected} entries"
            )
        if len(stray) > _SHOWN_STRAY:  # a truncated log leaves one per 255 entries: one line for them
            report.fail(
                f"{len(stray) - _SHOWN_STRAY} more stored subtree hashes are of no complete subtree of the "
                f"{expected} entries"
            )
        if first_missing is not None:
            report.fail(
                f"{missing} checkpoints are missing (graven signs one per entry), the first one of "
                f"{first_missing} entries",
                None,
            )
        return compact, latest_root

    @staticmethod
    def _check_latest(
        report: LogVerifyReport, latest: Row, root: bytes | None, origin: str, public: Ed25519PublicKey
    ) -> None:
        """The latest note must verify and sign exactly the entries: their number and their root."""
        size = logtree.stored_int(latest.size, "log_checkpoints size")
        try:
            signed = verify_checkpoint(str(latest.note), origin, public)
        except (VerificationError, InputError) as exc:
            elsewhere = _signed_elsewhere(str(latest.note), origin, public)
            report.fail(
                f"the latest checkpoint ({size}) does not verify: {exc}"
                + (f"; {_ANOTHER_HOME}" if elsewhere else "")
            )
            return
        if signed.origin != origin:
            report.fail(f"the latest checkpoint ({size}) is for another log ({_shown(signed.origin)})")
        elif signed.size != size:
            report.fail(
                f"the latest checkpoint row ({size}) holds a signed note of {signed.size} entries",
                min(size, signed.size),
            )
        elif size < report.size:
            report.fail(
                f"entries {size}..{report.size - 1} are not covered by the latest signed checkpoint "
                f"({size} entries): entries were added or checkpoints removed",
                size,
            )
        elif size == report.size and signed.root != root:
            report.fail(
                f"the latest signed checkpoint ({size}) does not match the entries (first bad index at "
                f"most {size - 1})",
                size - 1,
            )
        # a latest checkpoint larger than the log is reported with the other stray checkpoints

    @staticmethod
    def _check_state(report: LogVerifyReport, states: list[Row], compact: CompactRange) -> None:
        """The stored log state (size and compact range) must describe exactly the entries."""
        if not states:
            if report.size:
                report.fail("the log state (size and compact range) is missing from the database")
            return
        if len(states) > 1:
            report.fail(f"the log state has {len(states)} rows instead of one")
        size, frontier = _state_size(states[0]), str(states[0].frontier)
        if size > report.size:
            report.fail(
                f"the log state records {size} entries but only {report.size} are in the log: "
                "the log was truncated",
                report.size,
            )
        elif size < report.size:
            report.fail(
                f"the log state records {size} entries but the log has {report.size}: entries were "
                "added outside graven",
                size,
            )
        elif frontier != ",".join(h.hex() for h in compact.hashes):
            report.fail("the log state's compact range does not match the entries")

    def repair_subtrees(self) -> SubtreeRepair:
        """Rewrite the stored subtree hashes (``log_subtrees``) from the entries, in one write transaction.

        Under the writers' lock, the latest checkpoint's signature is verified and its entries are read
        whole: only when they lead to its signed root, the log state describes exactly them and no entry
        lies beyond them does the table become exactly the rows they make (a wrong row rewritten, a
        missing one added, any other removed); else VerificationError, nothing written. A change is
        logged, in the same transaction: a ``log-repaired`` entry naming the rows (the wrong ones are
        gone from the database after it; a row is derived data, but a wrong one is the trace of a bug or
        of someone who wrote the database). It needs the log's private key, as every append; a table
        that is right is left alone and nothing is logged.
        """
        self._require_database()
        with self._ctx.db.begin() as conn:
            origin = self._read_origin(conn)
            note = self._latest_note(conn)
            if origin is None or note is None:
                raise VerificationError(
                    "the log has no signed checkpoint to recompute its stored subtree hashes against"
                )
            checkpoint = self._check_note(note, origin)
            size = checkpoint.size
            report = self._ctx.reporter.progress
            report(REPAIR_STAGE, 0, size)
            compact, expected = logtree.recompute(
                conn, size, lambda done: report(REPAIR_STAGE, done, size), PROGRESS_EVERY
            )
            if compact.root() != checkpoint.root:
                raise VerificationError(
                    f"the log's entries do not lead to the root of its latest signed checkpoint ({size} "
                    "entries): the entries themselves are damaged, and no stored hash is rewritten from them"
                )
            beyond = conn.execute(
                "SELECT min(idx) FROM log_entries WHERE idx >= :size", {"size": size}
            ).scalar()
            rows = conn.execute("SELECT size, frontier FROM log_state")
            states = [(_state_size(r), str(r.frontier)) for r in rows]
            if beyond is not None or states != [(size, ",".join(h.hex() for h in compact.hashes))]:
                raise VerificationError(
                    f"the log's entries or its state do not end at its latest signed checkpoint ({size} "
                    "entries)"
                )
            changes = logtree.rewrite(conn, expected)
            if not changes:
                return SubtreeRepair(size=size)
            entry = self.append(conn, LogEvent("log-repaired", reason=_repair_reason(size, changes)))
        return SubtreeRepair(
            size=size,
            rewritten=len(changes.rewritten),
            added=len(changes.added),
            removed=len(changes.removed),
            entry=entry.index,
        )

    def parse_old_checkpoint(self, text: str) -> Checkpoint:
        """Parse a checkpoint file given by a user (malformed input is an InputError)."""
        checkpoint, _ = parse_signed_note(text)
        return checkpoint


def _check_signed_note(
    report: LogVerifyReport, note: str, *, origin: str, size: int, root: bytes, public: Ed25519PublicKey
) -> str | None:
    """Verify one stored note's signature (a failure is reported here) and return how it disagrees
    with the checkpoint of ``size`` and the recomputed ``root``, or None when it agrees."""
    try:
        signed = verify_checkpoint(note, origin, public)
    except (VerificationError, InputError) as exc:
        report.fail(f"checkpoint {size} does not verify: {exc}")
        return None
    if signed.origin != origin or signed.size != size or signed.root != root:
        return _note_mismatch(note, origin, size)
    return None


def _state_size(state: Row) -> int:
    """The size of the log state's row (IntegrityError when it is no integer)."""
    return logtree.stored_int(state.size, "log_state size")


def _includes(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Whether ``proof`` proves ``leaf`` at ``index`` in the tree of ``size`` entries with ``root``."""
    try:
        verify_inclusion(leaf, index, size, proof, root)
    except VerificationError:
        return False
    return True


def _named(nodes: list[Node]) -> str:
    """Rows named by level and index, the first few, the rest counted."""
    named = "; ".join(f"level {level}, index {index}" for level, index in nodes[:_SHOWN_REPAIRED])
    more = f" and {len(nodes) - _SHOWN_REPAIRED} more" if len(nodes) > _SHOWN_REPAIRED else ""
    return f" ({named}{more})" if nodes else ""


def _repair_reason(size: int, changes: logtree.Rewritten) -> str:
    """The reason of a ``log-repaired`` entry: what was rewritten, added and removed."""
    return (
        f"stored subtree hashes recomputed from the {size} entries of the latest signed checkpoint: "
        f"{len(changes.rewritten)} rewritten{_named(changes.rewritten)}, {len(changes.added)} added, "
        f"{len(changes.removed)} removed{_named(changes.removed)}"
    )
