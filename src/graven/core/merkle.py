"""RFC 6962 / RFC 9162 Merkle trees: hashing, a compact accumulator, proofs and their verification.

Pure functions over 32-byte SHA-256 hashes. A leaf is hashed as ``SHA-256(0x00 || data)`` and an inner
node as ``SHA-256(0x01 || left || right)``; the tree over ``n`` leaves splits at the largest power of
two smaller than ``n`` (RFC 9162 §2.1.1). Proofs are lists of hashes ordered from the leaf level up,
exactly as RFC 9162 §2.1.3 and §2.1.4 define them, so they interoperate with other implementations.

Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and raises :class:`~graven.errors.VerificationError`
on any failure. Proof generation takes a ``subtree_hash(start, end)`` callable so that a caller can
serve subtree hashes from storage; :func:`inclusion_proof` and :func:`consistency_proof` are the
list-based conveniences.

Stored subtrees (as C2SP tlog-tiles keeps them): the hash of every complete, aligned subtree of
``2**level`` leaves whose level is a multiple of :data:`TILE_HEIGHT` (the leaves themselves at level 0,
then 256 leaves, 65,536 leaves, ...). The node ``(level, index)`` is the subtree over the leaves
``[index * 2**level, (index + 1) * 2**level)``. :meth:`CompactRange.append_stored` gives the ones an
append completes, :func:`stored_nodes` all of them at once (what a repair of stored ones writes);
:func:`range_nodes`, :func:`inclusion_nodes` and :func:`consistency_nodes` say which
stored nodes a range or a proof needs (a proof: at most a few tiles of 2**TILE_HEIGHT nodes per stored
level, so O(log n)); :func:`stored_subtree_hash` combines them into any ``subtree_hash(start, end)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from graven.errors import InputError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "TILE_HEIGHT",
    "CompactRange",
    "Node",
    "SubtreeHash",
    "consistency_nodes",
    "consistency_path",
    "consistency_proof",
    "frontier_ranges",
    "inclusion_nodes",
    "inclusion_path",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_hash",
    "stored_nodes",
    "stored_subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: ``SHA-256()`` of no input (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

SubtreeHash = Callable[[int, int], bytes]
"""``subtree_hash(start, end)`` returns the root hash of the leaves ``[start, end)``."""

TILE_HEIGHT = 8
"""Stored subtrees are those whose level is a multiple of this (tiles of 2**8 = 256 hashes)."""

Node = tuple[int, int]
"""A complete, aligned subtree ``(level, index)``: the leaves ``[index << level, (index + 1) << level)``."""


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of a leaf holding ``data``: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an inner node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class CompactRange:
    """A streaming Merkle tree accumulator that keeps O(log n) hashes.

    It holds the roots of the perfect subtrees that the binary decomposition of the size gives, from
    the largest (leftmost) to the smallest, which is all that is needed to append and to compute the
    root at the current size.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """Start with the empty tree."""
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild an accumulator from :attr:`size` and :attr:`hashes` saved earlier."""
        if size < 0:
            raise InputError(f"compact range size must not be negative, got {size}")
        if len(hashes) != size.bit_count():
            raise InputError(
                f"compact range of size {size} needs {size.bit_count()} hashes, got {len(hashes)}"
            )
        for h in hashes:
            _require_hash_input(h, "compact range hash")
        compact = cls()
        compact._size = size
        compact._hashes = list(hashes)
        return compact

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees that make up the tree, largest first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (see :func:`leaf_hash`)."""
        self.extend((leaf,))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes; the fast path for (re)building a large tree."""
        stack = self._hashes
        size = self._size
        sha256 = hashlib.sha256
        try:
            for leaf in leaves:
                if len(leaf) != HASH_SIZE:
                    raise InputError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
                right = leaf
                carry = size  # each trailing 1 bit of the old size is a subtree to merge with
                while carry & 1:
                    right = sha256(_NODE_PREFIX + stack.pop() + right).digest()
                    carry >>= 1
                stack.append(right)
                size += 1
        finally:
            self._size = size  # the leaves taken before an error stay appended

    def append_stored(self, leaf: bytes, height: int = TILE_HEIGHT) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return ``(level, index, hash)`` of every complete subtree this append
        completed whose level is a positive multiple of ``height`` (lowest first): what is stored."""
        if len(leaf) != HASH_SIZE:
            raise InputError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        stack = self._hashes
        size = self._size + 1
        stored: list[tuple[int, int, bytes]] = []
        right = leaf
        level = 0
        carry = self._size
        while carry & 1:
            right = hashlib.sha256(_NODE_PREFIX + stack.pop() + right).digest()
            carry >>= 1
            level += 1
            if level % height == 0:
                stored.append((level, (size >> level) - 1, right))
        stack.append(right)
        self._size = size
        return stored

    def extend_data(self, entries: Iterable[bytes]) -> None:
        """Hash each entry as a leaf (see :func:`leaf_hash`) and append it."""
        sha256 = hashlib.sha256
        self.extend(sha256(_LEAF_PREFIX + entry).digest() for entry in entries)

    def root(self) -> bytes:
        """Return the root hash of the tree at its current size (RFC 9162 MTH)."""
        if not self._hashes:
            return EMPTY_ROOT
        it = reversed(self._hashes)
        root = next(it)
        for left in it:
            root = node_hash(left, root)
        return root


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (RFC 9162 MTH) of a list of leaf hashes; empty gives EMPTY_ROOT."""
    compact = CompactRange()
    compact.extend(leaf_hashes)
    return compact.root()


def _split(size: int) -> int:
    """Largest power of two strictly smaller than ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_path(index: int, tree_size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Return the inclusion proof of leaf ``index`` in a tree of ``tree_size`` (RFC 9162 §2.1.3.1).

    ``subtree_hash(start, end)`` must return the root hash of the leaves ``[start, end)``.
    """
    if not 0 <= index < tree_size:
        raise InputError(f"leaf index {index} is outside a tree of size {tree_size}")
    path: list[bytes] = []
    start, end = 0, tree_size
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            path.append(subtree_hash(middle, end))
            end = middle
        else:
            path.append(subtree_hash(start, middle))
            start = middle
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Return the consistency proof from ``old_size`` to ``new_size`` (RFC 9162 §2.1.4.1).

    Requires ``0 < old_size <= new_size``; equal sizes give the empty proof. ``subtree_hash(start,
    end)`` must return the root hash of the leaves ``[start, end)`` of the newer tree.
    """
    if not 0 < old_size <= new_size:
        raise InputError(f"no consistency proof from size {old_size} to size {new_size}: need 0 < old <= new")
    path: list[bytes] = []
    start, end = 0, new_size
    complete = True  # the current subtree starts at leaf 0, so the verifier knows its old root
    while old_size - start != end - start:
        middle = start + _split(end - start)
        if old_size <= middle:
            path.append(subtree_hash(middle, end))
            end = middle
        else:
            path.append(subtree_hash(start, middle))
            start = middle
            complete = False
    if not complete:
        path.append(subtree_hash(start, end))
    path.reverse()
    return path


def _perfect_level(start: int, end: int) -> int | None:
    """The level of ``[start, end)`` when it is one complete, aligned subtree, else None."""
    size = end - start
    if size > 0 and size & (size - 1) == 0 and start % size == 0:
        return size.bit_length() - 1
    return None


def _check_range(start: int, end: int, height: int) -> None:
    if height < 1:
        raise InputError(f"the stored levels' height must be at least 1, got {height}")
    if not 0 <= start <= end:
        raise InputError(f"no range [{start}, {end}) of leaves: need 0 <= start <= end")


def range_nodes(start: int, end: int, height: int = TILE_HEIGHT) -> list[Node]:
    """The stored nodes (levels that are multiples of ``height``, the leaves at level 0) that
    :func:`stored_subtree_hash` combines into the RFC 9162 MTH of the leaves ``[start, end)``, in order.

    Any range works. One that a proof asks for (a node of the tree: ``start`` a multiple of the smallest
    power of two >= its size) is at most one complete subtree per level, each read as at most
    ``2**(height - 1)`` nodes of the stored level below it: O(2**height * log(n) / height) nodes. In
    another range, each piece that is no aligned subtree is split as MTH splits it, down to single
    leaves when need be.
    """
    _check_range(start, end, height)
    nodes: list[Node] = []
    _collect(start, end, height, nodes)
    return nodes


def _collect(start: int, end: int, height: int, nodes: list[Node]) -> None:
    if start == end:
        return
    level = _perfect_level(start, end)
    if level is not None:
        stored = level - level % height
        first = start >> stored
        nodes.extend((stored, i) for i in range(first, first + (1 << (level - stored))))
        return
    middle = start + _split(end - start)
    _collect(start, middle, height, nodes)
    _collect(middle, end, height, nodes)


def stored_subtree_hash(nodes: Mapping[Node, bytes], height: int = TILE_HEIGHT) -> SubtreeHash:
    """A ``subtree_hash(start, end)`` that combines the stored ``nodes`` (:func:`range_nodes` of the range
    must all be there: a KeyError names the first missing one). An empty range is :data:`EMPTY_ROOT`."""

    def subtree_hash(start: int, end: int) -> bytes:
        _check_range(start, end, height)
        return _combine(start, end) if start < end else EMPTY_ROOT

    def _combine(start: int, end: int) -> bytes:
        level = _perfect_level(start, end)
        if level is None:
            middle = start + _split(end - start)
            return node_hash(_combine(start, middle), _combine(middle, end))
        stored = level - level % height
        first = start >> stored
        hashes = [nodes[(stored, i)] for i in range(first, first + (1 << (level - stored)))]
        while len(hashes) > 1:  # a complete subtree over 2**k stored nodes, one level at a time
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    return subtree_hash


def _ranges(path: Callable[[SubtreeHash], object]) -> list[tuple[int, int]]:
    """The ranges that ``path(subtree_hash)`` asks ``subtree_hash`` for, in order."""
    asked: list[tuple[int, int]] = []

    def record(start: int, end: int) -> bytes:
        asked.append((start, end))
        return EMPTY_ROOT

    path(record)
    return asked


def _nodes_of(ranges: Iterable[tuple[int, int]], height: int) -> set[Node]:
    needed: set[Node] = set()
    for start, end in ranges:
        needed.update(range_nodes(start, end, height))
    return needed


def inclusion_nodes(index: int, tree_size: int, height: int = TILE_HEIGHT) -> set[Node]:
    """The stored nodes :func:`inclusion_path` of ``index`` in ``tree_size`` needs, and the leaf itself
    (``(0, index)``): O(log n) of them."""
    ranges = _ranges(lambda subtree_hash: inclusion_path(index, tree_size, subtree_hash))
    return _nodes_of([*ranges, (index, index + 1)], height)


def consistency_nodes(old_size: int, new_size: int, height: int = TILE_HEIGHT) -> set[Node]:
    """The stored nodes :func:`consistency_path` from ``old_size`` to ``new_size`` needs, and those of
    both roots (``[0, old_size)`` and ``[0, new_size)``): O(log n) of them. ``old_size`` 0 needs only
    the new root's."""
    ranges = [(0, old_size), (0, new_size)]
    if 0 < old_size < new_size:
        ranges += _ranges(lambda subtree_hash: consistency_path(old_size, new_size, subtree_hash))
    elif not 0 <= old_size <= new_size:
        raise InputError(f"no consistency proof from size {old_size} to size {new_size}")
    return _nodes_of(ranges, height)


def stored_nodes(
    leaf_hashes: Iterable[bytes], height: int = TILE_HEIGHT
) -> tuple[CompactRange, dict[Node, bytes]]:
    """The compact range of ``leaf_hashes`` and every complete subtree over them at a level that is a
    positive multiple of ``height``, ``(level, index) -> hash``: what is stored for a tree of these
    leaves, recomputed from them in one pass (about one node hash per leaf)."""
    compact = CompactRange()
    nodes: dict[Node, bytes] = {}
    for leaf in leaf_hashes:
        for level, index, value in compact.append_stored(leaf, height):
            nodes[(level, index)] = value
    return compact, nodes


def frontier_ranges(size: int) -> list[tuple[int, int]]:
    """The leaf ranges of the complete subtrees that a :class:`CompactRange` of ``size`` holds, largest
    first (with :func:`stored_subtree_hash`, :meth:`CompactRange.from_state` rebuilds it)."""
    if size < 0:
        raise InputError(f"compact range size must not be negative, got {size}")
    ranges: list[tuple[int, int]] = []
    start = 0
    for bit in reversed(range(size.bit_length())):
        if size >> bit & 1:
            ranges.append((start, start + (1 << bit)))
            start += 1 << bit
    return ranges


def _list_subtree_hash(leaf_hashes: Sequence[bytes]) -> SubtreeHash:
    def subtree_hash(start: int, end: int) -> bytes:
        return root_hash(leaf_hashes[start:end])

    return subtree_hash


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof of leaf ``index`` in the tree over all of ``leaf_hashes``."""
    return inclusion_path(index, len(leaf_hashes), _list_subtree_hash(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the consistency proof from the first ``old_size`` leaves to all of ``leaf_hashes``."""
    return consistency_path(old_size, len(leaf_hashes), _list_subtree_hash(leaf_hashes))


def _require_hash_input(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InputError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _require_proof_hashes(proof: Sequence[bytes], what: str) -> None:
    for position, h in enumerate(proof):
        _require_hash(h, f"{what} hash #{position}")


def _inclusion_proof_length(index: int, tree_size: int) -> int:
    """Length of the inclusion proof of ``index`` in a tree of ``tree_size`` (0 <= index < size)."""
    inner = (index ^ (tree_size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` is the leaf hash at ``index`` of the tree of ``tree_size`` with ``root``.

    Implements RFC 9162 §2.1.3.2 and raises VerificationError if the proof does not hold, including
    for ``index >= tree_size`` (so for every proof in the empty tree), a proof of the wrong length, or
    any hash that is not 32 bytes.
    """
    if index < 0 or tree_size < 0:
        raise VerificationError(f"negative leaf index {index} or tree size {tree_size}")
    if index >= tree_size:
        raise VerificationError(f"leaf index {index} is not below the tree size {tree_size}")
    _require_hash(leaf, "leaf hash")
    _require_hash(root, "root hash")
    _require_proof_hashes(proof, "inclusion proof")
    # Checking the length up front gives a clear message; the RFC's own checks on sn below then
    # cannot fail, but they stay so that the loop reads exactly like §2.1.3.2.
    expected = _inclusion_proof_length(index, tree_size)
    if len(proof) != expected:
        raise VerificationError(
            f"inclusion proof for leaf {index} of {tree_size} has {len(proof)} hashes, expected {expected}"
        )
    fn, sn = index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise VerificationError(
            f"inclusion proof for leaf {index} of {tree_size} does not lead to the expected root"
        )


def _consistency_proof_length(size1: int, size2: int) -> int:
    """Length of the consistency proof between ``0 < size1 < size2``."""
    shift = (size1 & -size1).bit_length() - 1  # trailing zero bits of size1
    length = _inclusion_proof_length(size1 - 1, size2) - shift
    return length if size1 == 1 << shift else length + 1


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``.

    Implements RFC 9162 §2.1.4.2 for ``0 < size1 < size2``. Equal sizes are consistent only with an
    empty proof and equal roots. A consistency proof from the empty tree is meaningless and rejected;
    so are ``size1 > size2``, a proof of the wrong length and any hash that is not 32 bytes. Raises
    VerificationError on every failure.
    """
    if size1 < 0 or size2 < 0:
        raise VerificationError(f"negative tree size {size1} or {size2}")
    if size1 > size2:
        raise VerificationError(f"first tree size {size1} is larger than second size {size2}")
    if size1 == 0:
        raise VerificationError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        # As RFC 9162 §2.1.4.2 and the reference implementation: equal sizes need an empty proof and
        # equal roots, and nothing more is claimed, so the roots' length is not checked here.
        if proof:
            raise VerificationError(f"consistency proof between equal sizes {size1} is not empty")
        if root1 != root2:
            raise VerificationError(f"trees of the same size {size1} have different roots")
        return
    _require_hash(root1, "first root hash")
    _require_hash(root2, "second root hash")
    _require_proof_hashes(proof, "consistency proof")
    # The length check covers step 1 of §2.1.4.2 (an empty proof is never the right length) and
    # gives a clear message; the RFC's checks on sn below then cannot fail but stay for fidelity.
    expected = _consistency_proof_length(size1, size2)
    if len(proof) != expected:
        raise VerificationError(
            f"consistency proof from {size1} to {size2} has {len(proof)} hashes, expected {expected}"
        )
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is an exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than the path to the root")
    if fr != root1:
        raise VerificationError(f"consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise VerificationError(f"consistency proof does not lead to the root of size {size2}")
