"""Unit tests of graven.core.merkle against the RFC 9162 definitions and known values."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from graven.core.merkle import (
    EMPTY_ROOT,
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
    node_hash,
    range_nodes,
    root_hash,
    stored_subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from graven.errors import InputError, VerificationError

# --- reference implementation, written straight from the recursive definitions of RFC 9162 §2.1 ---


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], complete), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


DATA = [b"entry-%d" % i for i in range(70)]
LEAVES = [leaf_hash(d) for d in DATA]

CT_LEAVES_HEX = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOT_HEX = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


# --- hashing ---


def test_leaf_and_node_hashes_are_domain_separated_sha256() -> None:
    assert leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_classic_certificate_transparency_root() -> None:
    leaves = [leaf_hash(bytes.fromhex(h)) for h in CT_LEAVES_HEX]
    assert root_hash(leaves).hex() == CT_ROOT_HEX


@pytest.mark.parametrize("size", range(len(DATA) + 1))
def test_root_hash_matches_the_recursive_definition(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ref_mth(DATA[:size])


# --- compact range ---


def test_compact_range_gives_the_root_at_every_size() -> None:
    compact = CompactRange()
    assert compact.root() == EMPTY_ROOT
    for size, leaf in enumerate(LEAVES, start=1):
        compact.append(leaf)
        assert compact.size == size
        assert len(compact.hashes) == size.bit_count()
        assert compact.root() == ref_mth(DATA[:size])


def test_compact_range_extend_and_extend_data_agree_with_append() -> None:
    by_extend, by_data = CompactRange(), CompactRange()
    by_extend.extend(LEAVES[:40])
    by_extend.extend(LEAVES[40:])
    by_data.extend_data(DATA)
    assert by_extend.root() == by_data.root() == ref_mth(DATA)
    assert by_extend.size == by_data.size == len(DATA)


def test_compact_range_resumes_from_saved_state() -> None:
    first = CompactRange()
    first.extend(LEAVES[:37])
    resumed = CompactRange.from_state(first.size, first.hashes)
    resumed.extend(LEAVES[37:])
    assert resumed.root() == ref_mth(DATA)


@pytest.mark.parametrize(
    ("size", "hashes"),
    [(-1, []), (3, [b"x" * 32]), (2, [b"x" * 32, b"y" * 32]), (1, [b"short"])],
)
def test_compact_range_rejects_inconsistent_state(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(InputError):
        CompactRange.from_state(size, hashes)


def test_compact_range_rejects_leaves_that_are_not_hashes() -> None:
    compact = CompactRange()
    with pytest.raises(InputError, match="32 bytes"):
        compact.append(b"not a hash")
    compact.extend(LEAVES[:3])
    with pytest.raises(InputError, match="32 bytes"):
        compact.extend([LEAVES[3], b"\x00" * 33])
    # The leaves before the bad one were taken, and the state stays usable.
    assert compact.size == 4
    assert compact.root() == ref_mth(DATA[:4])


# --- proof generation ---


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 70])
def test_inclusion_proofs_match_the_recursive_definition(size: int) -> None:
    for index in range(size):
        assert inclusion_proof(LEAVES[:size], index) == ref_path(index, DATA[:size])


@pytest.mark.parametrize("size2", [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 70])
def test_consistency_proofs_match_the_recursive_definition(size2: int) -> None:
    for size1 in range(1, size2 + 1):
        expected = ref_subproof(size1, DATA[:size2], True)
        assert consistency_proof(LEAVES[:size2], size1) == expected


def test_proof_paths_ask_only_for_subtrees_of_the_tree() -> None:
    asked: list[tuple[int, int]] = []

    def subtree_hash(start: int, end: int) -> bytes:
        asked.append((start, end))
        return root_hash(LEAVES[start:end])

    assert inclusion_path(5, 8, subtree_hash) == inclusion_proof(LEAVES[:8], 5)
    assert asked == [(0, 4), (6, 8), (4, 5)]
    asked.clear()
    assert consistency_path(6, 8, subtree_hash) == consistency_proof(LEAVES[:8], 6)
    assert asked == [(0, 4), (6, 8), (4, 6)]


@pytest.mark.parametrize(("index", "size"), [(0, 0), (3, 3), (-1, 4)])
def test_inclusion_path_refuses_indexes_outside_the_tree(index: int, size: int) -> None:
    with pytest.raises(InputError):
        inclusion_path(index, size, lambda start, end: b"")


@pytest.mark.parametrize(("old", "new"), [(0, 0), (0, 5), (6, 5), (-1, 1)])
def test_consistency_path_refuses_bad_sizes(old: int, new: int) -> None:
    with pytest.raises(InputError):
        consistency_path(old, new, lambda start, end: b"")


def test_consistency_between_equal_sizes_is_the_empty_proof() -> None:
    assert consistency_proof(LEAVES[:9], 9) == []


# --- inclusion verification ---

ROOT8 = root_hash(LEAVES[:8])
PROOF_5_OF_8 = inclusion_proof(LEAVES[:8], 5)


def test_verify_inclusion_accepts_every_leaf_of_every_small_tree() -> None:
    for size in range(1, 34):
        root = root_hash(LEAVES[:size])
        for index in range(size):
            verify_inclusion(LEAVES[index], index, size, inclusion_proof(LEAVES[:size], index), root)


@pytest.mark.parametrize(
    ("leaf", "index", "size", "proof", "root", "message"),
    [
        pytest.param(LEAVES[5], 8, 8, PROOF_5_OF_8, ROOT8, "not below the tree size", id="index-equals-size"),
        pytest.param(LEAVES[5], 0, 0, [], EMPTY_ROOT, "not below the tree size", id="empty-tree"),
        pytest.param(LEAVES[5], -1, 8, PROOF_5_OF_8, ROOT8, "negative", id="negative-index"),
        pytest.param(LEAVES[4], 5, 8, PROOF_5_OF_8, ROOT8, "expected root", id="wrong-leaf"),
        pytest.param(LEAVES[5], 4, 8, PROOF_5_OF_8, ROOT8, "expected root", id="wrong-index"),
        pytest.param(LEAVES[5], 5, 8, PROOF_5_OF_8, root_hash(LEAVES[:7]), "expected root", id="wrong-root"),
        pytest.param(
            LEAVES[5], 5, 8, PROOF_5_OF_8[:-1], ROOT8, "has 2 hashes, expected 3", id="truncated-proof"
        ),
        pytest.param(
            LEAVES[5], 5, 8, [*PROOF_5_OF_8, ROOT8], ROOT8, "has 4 hashes, expected 3", id="extended-proof"
        ),
        pytest.param(LEAVES[5], 5, 8, PROOF_5_OF_8[::-1], ROOT8, "expected root", id="reversed-proof"),
        pytest.param(LEAVES[5], 5, 16, PROOF_5_OF_8, ROOT8, "has 3 hashes, expected 4", id="wrong-size"),
        pytest.param(
            LEAVES[5][:31], 5, 8, PROOF_5_OF_8, ROOT8, "leaf hash must be 32 bytes", id="short-leaf"
        ),
        pytest.param(
            LEAVES[5], 5, 8, PROOF_5_OF_8, ROOT8 + b"\x00", "root hash must be 32 bytes", id="long-root"
        ),
        pytest.param(
            LEAVES[5],
            5,
            8,
            [b"", *PROOF_5_OF_8[1:]],
            ROOT8,
            "proof hash #0 must be 32 bytes",
            id="empty-proof-hash",
        ),
    ],
)
def test_verify_inclusion_rejects(
    *, leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes, message: str
) -> None:
    with pytest.raises(VerificationError, match=message):
        verify_inclusion(leaf, index, size, proof, root)


def test_verify_inclusion_single_leaf_tree_needs_the_empty_proof() -> None:
    verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    with pytest.raises(VerificationError):
        verify_inclusion(LEAVES[0], 0, 1, [LEAVES[0]], node_hash(LEAVES[0], LEAVES[0]))
    with pytest.raises(VerificationError):
        verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[1])


# --- consistency verification ---

ROOT6 = root_hash(LEAVES[:6])
PROOF_6_TO_8 = consistency_proof(LEAVES[:8], 6)


def test_verify_consistency_accepts_every_pair_of_small_sizes() -> None:
    for size2 in range(1, 34):
        root2 = root_hash(LEAVES[:size2])
        for size1 in range(1, size2 + 1):
            proof = consistency_proof(LEAVES[:size2], size1)
            verify_consistency(size1, size2, proof, root_hash(LEAVES[:size1]), root2)


def test_verify_consistency_refuses_a_first_size_one_above_the_second() -> None:
    # the boundary of `size1 > size2`: off by one, (2, 1, [], R, R) verified (mutation-tested)
    for size2 in range(1, 34):
        root = root_hash(LEAVES[:size2])
        for proof in ([], consistency_proof(LEAVES[: size2 + 1], size2)):
            with pytest.raises(VerificationError, match="larger than second"):
                verify_consistency(size2 + 1, size2, proof, root, root)


@pytest.mark.parametrize(
    ("size1", "size2", "proof", "root1", "root2", "message"),
    [
        pytest.param(0, 8, [], EMPTY_ROOT, ROOT8, "from the empty tree", id="from-empty-tree"),
        pytest.param(0, 0, [], EMPTY_ROOT, EMPTY_ROOT, "from the empty tree", id="empty-to-empty"),
        pytest.param(8, 6, PROOF_6_TO_8, ROOT8, ROOT6, "larger than second", id="size1-above-size2"),
        pytest.param(-1, 8, PROOF_6_TO_8, ROOT6, ROOT8, "negative", id="negative-size"),
        pytest.param(8, 8, [ROOT8], ROOT8, ROOT8, "not empty", id="equal-sizes-nonempty-proof"),
        pytest.param(8, 8, [], ROOT8, ROOT6, "different roots", id="equal-sizes-different-roots"),
        pytest.param(6, 8, [], ROOT6, ROOT8, "has 0 hashes, expected 3", id="empty-proof"),
        pytest.param(6, 8, PROOF_6_TO_8[:-1], ROOT6, ROOT8, "has 2 hashes, expected 3", id="truncated-proof"),
        pytest.param(
            6, 8, [*PROOF_6_TO_8, ROOT8], ROOT6, ROOT8, "has 4 hashes, expected 3", id="extended-proof"
        ),
        pytest.param(6, 8, PROOF_6_TO_8, ROOT8, ROOT8, "root of size 6", id="wrong-root1"),
        pytest.param(6, 8, PROOF_6_TO_8, ROOT6, ROOT6, "root of size 8", id="wrong-root2"),
        pytest.param(6, 8, PROOF_6_TO_8[::-1], ROOT6, ROOT8, "root of size", id="reversed-proof"),
        pytest.param(5, 8, PROOF_6_TO_8, ROOT6, ROOT8, "has 3 hashes, expected 4", id="wrong-size1"),
        pytest.param(
            6, 8, PROOF_6_TO_8, ROOT6[:16], ROOT8, "first root hash must be 32 bytes", id="short-root1"
        ),
        pytest.param(6, 8, PROOF_6_TO_8, ROOT6, b"", "second root hash must be 32 bytes", id="empty-root2"),
        pytest.param(
            6,
            8,
            [*PROOF_6_TO_8[:2], b"x"],
            ROOT6,
            ROOT8,
            "proof hash #2 must be 32 bytes",
            id="short-proof-hash",
        ),
        pytest.param(
            1, 2, [b"y" * 32], b"x" * 12, b"x" * 32, "first root hash must be 32 bytes", id="short-root"
        ),
    ],
)
def test_verify_consistency_rejects(
    *, size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes, message: str
) -> None:
    with pytest.raises(VerificationError, match=message):
        verify_consistency(size1, size2, proof, root1, root2)


def test_verify_consistency_of_equal_sizes_needs_equal_roots_only() -> None:
    verify_consistency(8, 8, [], ROOT8, ROOT8)


def test_error_messages_are_one_line() -> None:
    with pytest.raises(VerificationError) as info:
        verify_consistency(6, 8, PROOF_6_TO_8, ROOT8, ROOT8)
    assert "\n" not in str(info.value)


# --- many leaves (the speed of a million is bench/log_bench.py's to measure) ---


def test_extend_data_from_a_generator_gives_the_root_of_every_leaf() -> None:
    size = 3_000  # not a power of two: the compact range keeps several subtrees
    entries = [i.to_bytes(8, "big") * 25 for i in range(size)]  # 200 bytes each
    compact = CompactRange()
    compact.extend_data(entry for entry in entries)  # consumed as it comes, as for a large log
    assert compact.size == size
    assert len(compact.hashes) == size.bit_count()
    assert compact.root() == ref_mth(entries)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65_537, 300_000, 10**12, 2**63 - 1])
def test_proofs_need_o_log_n_stored_nodes(size: int) -> None:
    """What a proof reads grows with the log's height, not its size: per stored level at most two
    tiles' worth (a complete subtree on each side of the path) for an inclusion proof, four for a
    consistency proof with both roots."""
    levels = -(-size.bit_length() // TILE_HEIGHT)
    for index in {0, size // 3, size - 1}:
        assert len(inclusion_nodes(index, size)) <= 2 * 256 * levels
    for old in {1, size // 2, size - 1, size}:
        assert len(consistency_nodes(old, size)) <= 4 * 256 * levels


def test_stored_nodes_are_at_multiples_of_the_height_and_inside_the_tree() -> None:
    size = 300_000
    for level, index in inclusion_nodes(123_456, size) | consistency_nodes(70_000, size):
        assert level % TILE_HEIGHT == 0 and (index + 1) << level <= size


def test_stored_subtree_helpers_refuse_bad_input() -> None:
    with pytest.raises(InputError):
        range_nodes(5, 4)
    with pytest.raises(InputError):
        range_nodes(0, 4, height=0)
    with pytest.raises(InputError):
        consistency_nodes(5, 4)
    with pytest.raises(InputError):
        inclusion_nodes(4, 4)
    with pytest.raises(InputError):
        frontier_ranges(-1)
    with pytest.raises(InputError):
        CompactRange().append_stored(b"short")
    with pytest.raises(KeyError):
        stored_subtree_hash({})(0, 256)  # a node that is not there is named, never guessed
    assert stored_subtree_hash({})(3, 3) == EMPTY_ROOT
