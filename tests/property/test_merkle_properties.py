"""Property tests: proofs of random trees verify, and any single-bit change is caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.merkle import (
    TILE_HEIGHT,
    CompactRange,
    consistency_nodes,
    consistency_path,
    consistency_proof,
    frontier_ranges,
    inclusion_nodes,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    range_nodes,
    root_hash,
    stored_nodes,
    stored_subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from graven.errors import VerificationError

# Draw the size first so that sizes spread over the whole range, not only the small lists that
# hypothesis favours.
trees = st.integers(1, 48).flatmap(
    lambda size: st.lists(st.binary(max_size=24), min_size=size, max_size=size).map(
        lambda entries: [leaf_hash(e) for e in entries]
    )
)


def _flip_one_bit(hashes: list[bytes], data: st.DataObject) -> list[bytes]:
    """Return a copy of ``hashes`` with one bit of one of them, both chosen by hypothesis, flipped."""
    position = data.draw(st.integers(0, len(hashes) - 1), label="which hash")
    bit = data.draw(st.integers(0, 8 * len(hashes[position]) - 1), label="which bit")
    flipped = bytearray(hashes[position])
    flipped[bit // 8] ^= 1 << (bit % 8)
    return [*hashes[:position], bytes(flipped), *hashes[position + 1 :]]


@settings(deadline=None, max_examples=150)
@given(trees)
def test_every_inclusion_proof_of_every_leaf_verifies(leaves: list[bytes]) -> None:
    root = root_hash(leaves)
    for index, leaf in enumerate(leaves):
        verify_inclusion(leaf, index, len(leaves), inclusion_proof(leaves, index), root)


@settings(deadline=None, max_examples=300)
@given(trees, st.data())
def test_any_bit_flip_in_inclusion_proof_leaf_or_root_is_rejected(
    leaves: list[bytes], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = inclusion_proof(leaves, index)
    *bad_proof, bad_leaf, bad_root = _flip_one_bit([*proof, leaves[index], root_hash(leaves)], data)
    with pytest.raises(VerificationError):
        verify_inclusion(bad_leaf, index, len(leaves), bad_proof, bad_root)


@settings(deadline=None, max_examples=150)
@given(trees, st.data())
def test_dropping_or_adding_an_inclusion_proof_hash_is_rejected(
    leaves: list[bytes], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = inclusion_proof(leaves, index)
    root = root_hash(leaves)
    longer = [*proof, root]
    with pytest.raises(VerificationError):
        verify_inclusion(leaves[index], index, len(leaves), longer, root)
    if proof:
        with pytest.raises(VerificationError):
            verify_inclusion(leaves[index], index, len(leaves), proof[:-1], root)


@settings(deadline=None, max_examples=150)
@given(trees)
def test_consistency_proofs_between_all_sizes_verify(leaves: list[bytes]) -> None:
    roots = []
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf)
        roots.append(compact.root())
    size2 = len(leaves)
    for size1 in range(1, size2 + 1):
        proof = consistency_proof(leaves, size1)
        verify_consistency(size1, size2, proof, roots[size1 - 1], roots[-1])


@settings(deadline=None, max_examples=300)
@given(trees, st.data())
def test_any_bit_flip_in_consistency_proof_or_roots_is_rejected(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size1 = data.draw(st.integers(1, len(leaves)), label="size1")
    proof = consistency_proof(leaves, size1)
    values = [*proof, root_hash(leaves[:size1]), root_hash(leaves)]
    *bad_proof, bad_root1, bad_root2 = _flip_one_bit(values, data)
    with pytest.raises(VerificationError):
        verify_consistency(size1, len(leaves), bad_proof, bad_root1, bad_root2)


@settings(deadline=None, max_examples=150)
@given(trees, st.data())
def test_dropping_or_adding_a_consistency_proof_hash_is_rejected(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size1 = data.draw(st.integers(1, len(leaves)), label="size1")
    proof = consistency_proof(leaves, size1)
    root1, root2 = root_hash(leaves[:size1]), root_hash(leaves)
    with pytest.raises(VerificationError):
        verify_consistency(size1, len(leaves), [*proof, root2], root1, root2)
    if proof:
        with pytest.raises(VerificationError):
            verify_consistency(size1, len(leaves), proof[1:], root1, root2)


# -- stored subtrees: proofs from O(log n) stored nodes equal the list-based ones ----------------------


def _leaves(size: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]


def _stored(leaves: list[bytes], height: int) -> dict[tuple[int, int], bytes]:
    """Every node a log keeps: the leaves (level 0) and what append_stored gave, one append at a time."""
    nodes = {(0, i): leaf for i, leaf in enumerate(leaves)}
    compact = CompactRange()
    for leaf in leaves:
        for level, index, value in compact.append_stored(leaf, height):
            nodes[(level, index)] = value
    return nodes


def _only(nodes: dict[tuple[int, int], bytes], wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    assert wanted <= nodes.keys()  # never a node of a subtree that is not complete yet
    return {n: nodes[n] for n in wanted}


# sizes up to 2,100 with heights 1..4 cross several stored levels; height 8 (graven's) one or two
stored_trees = st.tuples(st.integers(1, 2100), st.sampled_from([1, 2, 3, 4, TILE_HEIGHT]))


@settings(deadline=None, max_examples=120)
@given(stored_trees, st.data())
def test_inclusion_proofs_from_the_stored_nodes_they_name_are_the_list_based_ones(
    tree: tuple[int, int], data: st.DataObject
) -> None:
    size, height = tree
    leaves = _leaves(size)
    nodes = _stored(leaves, height)
    for index in {0, size - 1, data.draw(st.integers(0, size - 1), label="index")}:
        wanted = inclusion_nodes(index, size, height)
        assert (0, index) in wanted
        proof = inclusion_path(index, size, stored_subtree_hash(_only(nodes, wanted), height))
        assert proof == inclusion_proof(leaves, index)


@settings(deadline=None, max_examples=120)
@given(stored_trees, st.data())
def test_consistency_proofs_and_roots_from_the_stored_nodes_they_name_are_the_list_based_ones(
    tree: tuple[int, int], data: st.DataObject
) -> None:
    size, height = tree
    leaves = _leaves(size)
    nodes = _stored(leaves, height)
    for old in {1, size, data.draw(st.integers(0, size), label="old size")}:
        subtree_hash = stored_subtree_hash(_only(nodes, consistency_nodes(old, size, height)), height)
        assert subtree_hash(0, size) == root_hash(leaves)
        assert subtree_hash(0, old) == root_hash(leaves[:old])
        if old:
            assert consistency_path(old, size, subtree_hash) == consistency_proof(leaves, old)


@settings(deadline=None, max_examples=150)
@given(stored_trees, st.data())
def test_any_range_is_the_mth_of_its_leaves(tree: tuple[int, int], data: st.DataObject) -> None:
    size, height = tree
    leaves = _leaves(size)
    start = data.draw(st.integers(0, size), label="start")
    end = data.draw(st.integers(start, min(size, start + 300)), label="end")
    wanted = set(range_nodes(start, end, height))
    assert stored_subtree_hash(_only(_stored(leaves, height), wanted), height)(start, end) == root_hash(
        leaves[start:end]
    )


@settings(deadline=None, max_examples=100)
@given(stored_trees)
def test_appends_store_exactly_the_complete_subtrees_at_stored_levels(tree: tuple[int, int]) -> None:
    size, height = tree
    leaves = _leaves(size)
    stored = {n: h for n, h in _stored(leaves, height).items() if n[0]}
    expected = {
        (level, index) for level in range(height, size.bit_length(), height) for index in range(size >> level)
    }
    assert stored.keys() == expected
    for (level, index), value in stored.items():
        assert value == root_hash(leaves[index << level : (index + 1) << level])


@settings(deadline=None, max_examples=100)
@given(st.integers(0, 5000))
def test_frontier_ranges_rebuild_the_compact_range(size: int) -> None:
    leaves = _leaves(size)
    compact = CompactRange()
    compact.extend(leaves)
    hashes = [root_hash(leaves[start:end]) for start, end in frontier_ranges(size)]
    assert hashes == list(compact.hashes)


@settings(deadline=None, max_examples=100)
@given(stored_trees)
def test_stored_nodes_recomputes_every_stored_node_and_the_compact_range(tree: tuple[int, int]) -> None:
    """What a repair of the stored rows writes: every complete subtree at a stored level, from the leaves."""
    size, height = tree
    leaves = _leaves(size)
    compact, nodes = stored_nodes(iter(leaves), height)
    assert nodes == {n: h for n, h in _stored(leaves, height).items() if n[0]}
    assert compact.size == size and compact.root() == root_hash(leaves)
