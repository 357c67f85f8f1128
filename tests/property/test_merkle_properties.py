"""Property tests: proofs of random trees verify, and any single-bit change is caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
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
