"""The audit log's stored subtree hashes (table ``log_subtrees``): what makes a proof O(log n) reads.

The row ``(level, idx, hash)`` is the RFC 9162 hash of the complete subtree over the entries
``[idx * 2**level, (idx + 1) * 2**level)``, for the levels that are positive multiples of
:data:`~graven.core.merkle.TILE_HEIGHT` (8: subtrees of 256 entries, of 65,536, ...; as C2SP tlog-tiles
keeps them); level 0, the leaves, is hashed from the entries themselves. An append writes the rows it
completes (one every 256 entries) in its own transaction; the upgrade to schema 10 fills them for an
existing log (:func:`fill`, one pass over the entries).

Nothing here is trusted: a proof built from these rows is checked against the latest signed checkpoint
before anyone sees it, so a wrong row never makes a wrong proof: the proof is then made from the entries
(as before these rows existed), and ``graven log verify``, which recomputes every row from the entries,
names the row; ``--repair`` rewrites the table from entries that lead to the signed root
(:func:`recompute`, :func:`rewrite`). A missing row is computed from the level
below it (down to the entries): slower, never wrong. An older graven that was still running when the
database was upgraded appends without rows; the next append that completes a subtree fills them in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from graven.core.merkle import (
    HASH_SIZE,
    TILE_HEIGHT,
    CompactRange,
    Node,
    frontier_ranges,
    range_nodes,
    root_hash,
    stored_nodes,
    stored_subtree_hash,
)
from graven.core.record import Record
from graven.db import Connection
from graven.errors import InputError, IntegrityError, VerificationError

__all__ = [
    "Rewritten",
    "fill",
    "read_nodes",
    "recompute",
    "rewrite",
    "row_name",
    "stored",
    "stored_int",
    "write_nodes",
    "wrong",
]

_LEAF = b"\x00"
_TILE = 1 << TILE_HEIGHT
_DELETE = "DELETE FROM log_subtrees WHERE level = :level AND idx = :idx"
_UPSERT = """INSERT INTO log_subtrees (level, idx, hash) VALUES (:level, :idx, :hash)
    ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash"""


def stored_int(value: object, what: str) -> int:
    """An integer as the log's tables hold it. SQLite keeps whatever is written in a BIGINT column (text
    that is no number, a real): such a value is a damaged log, a failed check (IntegrityError, exit 1)
    that names it, never a traceback."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise IntegrityError(
        f"the audit log's database is damaged: {what} holds {shown}, not an integer; restore the "
        "database from a backup"
    )


def _runs(indices: Sequence[int]) -> Iterable[tuple[int, int]]:
    """Sorted ``indices`` as ``(first, last)`` runs; gaps under a tile are read rather than asked for."""
    first = last = indices[0]
    for index in indices[1:]:
        if index - last > _TILE:
            yield first, last
            first = index
        last = index
    yield first, last


def _fetch(conn: Connection, level: int, indices: Sequence[int]) -> dict[int, bytes]:
    """The hashes of the nodes ``indices`` (sorted) of ``level`` that the database has: level 0 hashed
    from the entries, other levels as stored (a row that is no hash counts as missing)."""
    wanted = set(indices)
    found: dict[int, bytes] = {}
    sha256 = hashlib.sha256
    for first, last in _runs(indices):
        params = {"level": level, "first": first, "last": last}
        if level == 0:
            rows = conn.execute(
                "SELECT idx, entry FROM log_entries WHERE idx >= :first AND idx <= :last", params
            )
            for idx, entry in rows:
                if idx in wanted:
                    found[int(idx)] = sha256(_LEAF + str(entry).encode()).digest()
            continue
        rows = conn.execute(
            "SELECT idx, hash FROM log_subtrees WHERE level = :level AND idx >= :first AND idx <= :last",
            params,
        )
        for idx, text in rows:
            try:
                value = bytes.fromhex(str(text))
            except ValueError:
                continue
            if idx in wanted and len(value) == HASH_SIZE:
                found[int(idx)] = value
    return found


def read_nodes(conn: Connection, wanted: Iterable[Node], size: int) -> dict[Node, bytes]:
    """The hashes of the ``wanted`` nodes of the log's first ``size`` entries (all of them inside it): a
    few queries per level. A stored node that is missing is computed from the 256 below it; an entry
    that is missing is a VerificationError."""
    levels: dict[int, set[int]] = {}
    for level, index in wanted:
        levels.setdefault(level, set()).add(index)
    found: dict[Node, bytes] = {}
    computed: list[Node] = []  # missing stored nodes, highest level first
    for level in range(max(levels, default=0), -1, -TILE_HEIGHT):  # a missing node adds the level below
        indices = sorted(levels.get(level, ()))
        if not indices:
            continue
        got = _fetch(conn, level, indices)
        for index in indices:
            if index in got:
                found[(level, index)] = got[index]
            elif level == 0:
                raise VerificationError(
                    f"the log has no entry {index} below its checkpoint size {size}; run `graven log verify`"
                )
            else:
                computed.append((level, index))
                first = index << TILE_HEIGHT
                levels.setdefault(level - TILE_HEIGHT, set()).update(range(first, first + _TILE))
    for level, index in reversed(computed):  # lowest level first: each needs only the level below
        first = index << TILE_HEIGHT  # 256 complete subtrees of the same size: MTH over them is theirs
        found[(level, index)] = root_hash(
            [found[(level - TILE_HEIGHT, i)] for i in range(first, first + _TILE)]
        )
    return found


def write_nodes(conn: Connection, rows: Sequence[tuple[int, int, bytes]]) -> None:
    """Store ``(level, index, hash)`` rows (one that is there already is replaced: the rows follow the
    entries, never the other way round)."""
    if rows:
        conn.execute(_UPSERT, [{"level": lv, "idx": i, "hash": h.hex()} for lv, i, h in rows])


def fill(conn: Connection, size: int | None = None) -> int:
    """Store the complete subtrees of the log's first ``size`` entries (all of them: None) that the
    table lacks at its end, in one pass over the entries from the first one missing: the upgrade's
    backfill of a whole log, and an append's repair after entries appended without rows. Stops at a
    missing entry (``graven log verify`` names it). Returns the number of rows written."""
    if size is None:
        last = conn.execute("SELECT max(idx) FROM log_entries").scalar()
        size = 0 if last is None else stored_int(last, "log_entries idx") + 1
    start = size
    level = TILE_HEIGHT
    while 1 << level <= size:
        top = conn.execute(
            "SELECT max(idx) FROM log_subtrees WHERE level = :level", {"level": level}
        ).scalar()
        have = 0 if top is None else stored_int(top, "log_subtrees idx") + 1
        if have < size >> level:
            start = min(start, have << level)
        level += TILE_HEIGHT
    if start >= size:
        return 0
    ranges = frontier_ranges(start)
    try:
        nodes = read_nodes(conn, {n for s, e in ranges for n in range_nodes(s, e)}, start)
        subtree = stored_subtree_hash(nodes)
        compact = CompactRange.from_state(start, [subtree(s, e) for s, e in ranges])
    except (VerificationError, InputError):
        return 0  # an entry before the gap is missing: the proofs fall back, verify names it
    rows: list[tuple[int, int, bytes]] = []
    sha256 = hashlib.sha256
    entries = conn.stream(
        "SELECT idx, entry FROM log_entries WHERE idx >= :start AND idx < :size ORDER BY idx",
        {"start": start, "size": size},
    )
    try:
        for idx, entry in entries:
            if idx != compact.size:
                break
            rows.extend(compact.append_stored(sha256(_LEAF + str(entry).encode()).digest()))
    finally:
        entries.close()
    write_nodes(conn, rows)
    return len(rows)


def row_name(node: Node) -> str:
    """How a message names the row of a node: ``entries 768..1023 (level 8, index 3)``."""
    level, index = node
    first = index << level
    return f"entries {first}..{first + (1 << level) - 1} (level {level}, index {index})"


def stored(conn: Connection) -> dict[Node, str]:
    """Every row of the table as stored (one per 255 entries): ``(level, index) -> hash text``."""
    return {
        (stored_int(level, "log_subtrees level"), stored_int(idx, "log_subtrees idx")): str(value)
        for level, idx, value in conn.execute("SELECT level, idx, hash FROM log_subtrees")
    }


def wrong(rows: Mapping[Node, str], expected: Mapping[Node, bytes]) -> list[Node]:
    """The stored ``rows`` of an ``expected`` node whose text is not its hash (lowercase hex), in order."""
    return sorted(node for node, text in rows.items() if node in expected and text != expected[node].hex())


def recompute(
    conn: Connection, size: int, progress: Callable[[int], None] | None = None, every: int = 4096
) -> tuple[CompactRange, dict[Node, bytes]]:
    """The compact range of the log's first ``size`` entries and every row they make, from the entries
    (one pass, streamed: nothing stored is read). A missing entry is a VerificationError. ``progress``
    is given the number of entries read once per ``every`` and at the end."""

    def leaves(rows: Iterable[tuple[int, str]]) -> Iterator[bytes]:
        sha256 = hashlib.sha256
        expected = 0
        tick = every  # the next count reported: one comparison per entry, a call per batch
        for idx, entry in rows:
            if idx != expected:
                break
            yield sha256(_LEAF + str(entry).encode()).digest()
            expected += 1
            if expected == tick:
                report(expected)
                tick += every
        if expected % every:  # the end, unless its batch said it
            report(expected)
        if expected != size:
            raise VerificationError(
                f"the log has no entry {expected} below its checkpoint size {size}; run `graven log verify`"
            )

    report = progress if progress is not None else _no_progress
    rows = conn.stream("SELECT idx, entry FROM log_entries WHERE idx < :size ORDER BY idx", {"size": size})
    try:
        return stored_nodes(leaves(rows))
    finally:
        rows.close()


def _no_progress(_done: int) -> None:
    """Report nothing."""


class Rewritten(Record):
    """What :func:`rewrite` changed: rows whose hash was wrong, rows that were missing, rows of no node."""

    __slots__ = ("added", "removed", "rewritten")
    _fields = ("rewritten", "added", "removed")

    def __init__(self, rewritten: list[Node], added: list[Node], removed: list[Node]) -> None:
        self.rewritten = rewritten
        self.added = added
        self.removed = removed

    def __bool__(self) -> bool:
        return bool(self.rewritten or self.added or self.removed)


def rewrite(conn: Connection, expected: Mapping[Node, bytes]) -> Rewritten:
    """Make the table hold exactly the ``expected`` rows (:func:`recompute`'s, of entries the caller
    checked against the latest signed checkpoint): a wrong row rewritten, a missing one added, any other
    row deleted. Writes nothing when it holds them already."""
    rows = stored(conn)
    changes = Rewritten(
        rewritten=wrong(rows, expected),
        added=sorted(node for node in expected if node not in rows),
        removed=sorted(node for node in rows if node not in expected),
    )
    write_nodes(conn, [(*node, expected[node]) for node in (*changes.rewritten, *changes.added)])
    if changes.removed:
        conn.execute(_DELETE, [{"level": level, "idx": idx} for level, idx in changes.removed])
    return changes
