"""Cross-check graven's checkpoints and proofs with Go's golang.org/x/mod/sumdb note and tlog.

The checker in tests/assets/gochecker is built into a pytest temporary directory. Without ``go`` or
the x/mod sources the tests skip, or fail when GRAVEN_REQUIRE_SERVICES is set.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graven.core.checkpoint import Checkpoint, sign_checkpoint, verifier_key
from graven.core.merkle import consistency_proof, inclusion_proof, leaf_hash, root_hash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/helpers_services.py
from helpers_services import build_go_program

pytestmark = pytest.mark.services

CHECKER_SOURCE = Path(__file__).resolve().parents[1] / "assets" / "gochecker" / "main.go"
X_MOD_PACKAGES = dict.fromkeys(
    ("golang.org/x/mod/sumdb/note", "golang.org/x/mod/sumdb/tlog"), "golang-golang-x-mod-dev"
)

NAME = "graven.example/log"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
ENTRIES = [f"entry {i}: {'x' * (i % 7)}".encode() for i in range(23)]
LEAVES = [leaf_hash(e) for e in ENTRIES]
SIZE = len(LEAVES)

Checker = Callable[[dict[str, Any]], "subprocess.CompletedProcess[str]"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Checker:
    """Build the Go checker once and return a function that runs it on a JSON request."""
    out = build_go_program(CHECKER_SOURCE, tmp_path_factory.mktemp("gochecker") / "gochecker", X_MOD_PACKAGES)

    def run(request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(out)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def _request(note: str, key: Ed25519PrivateKey = KEY, **extra: Any) -> dict[str, Any]:
    return {"vkey": verifier_key(NAME, key.public_key()), "checkpoint": note, **extra}


def _note(size: int = SIZE, extensions: tuple[str, ...] = ()) -> str:
    return sign_checkpoint(Checkpoint(NAME, size, root_hash(LEAVES[:size]), extensions), NAME, KEY)


def _assert_accepted(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"Go checker rejected: {result.stderr}"


def _assert_rejected(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, f"Go checker did not reject (exit {result.returncode}): {result}"


def test_go_accepts_a_graven_checkpoint_and_recomputes_its_root(checker: Checker) -> None:
    result = checker(_request(_note(), entries=[_b64(e) for e in ENTRIES]))
    _assert_accepted(result)
    assert result.stdout.startswith(f"ok {NAME} {SIZE} ")


def test_go_accepts_a_checkpoint_with_extension_lines(checker: Checker) -> None:
    _assert_accepted(checker(_request(_note(extensions=("Timestamp: 1700000000",)))))


def test_go_accepts_an_empty_tree_checkpoint(checker: Checker) -> None:
    _assert_accepted(checker(_request(_note(size=0))))


def test_go_accepts_every_inclusion_proof(checker: Checker) -> None:
    note = _note()
    for index in range(SIZE):
        inclusion = {
            "index": index,
            "leafHash": _b64(LEAVES[index]),
            "proof": [_b64(h) for h in inclusion_proof(LEAVES, index)],
        }
        _assert_accepted(checker(_request(note, inclusion=inclusion)))


def test_go_accepts_every_consistency_proof(checker: Checker) -> None:
    note = _note()
    for old_size in range(1, SIZE + 1):
        consistency = {
            "oldSize": old_size,
            "oldRoot": _b64(root_hash(LEAVES[:old_size])),
            "proof": [_b64(h) for h in consistency_proof(LEAVES, old_size)],
        }
        _assert_accepted(checker(_request(note, consistency=consistency)))


def _split_note(note: str) -> tuple[str, str]:
    body, signature = note.split("\n\n")
    return body + "\n", signature


def test_go_rejects_a_changed_root(checker: Checker) -> None:
    note = _note()
    tampered = note.replace(_b64(root_hash(LEAVES)), _b64(root_hash(LEAVES[:-1])))
    assert tampered != note
    _assert_rejected(checker(_request(tampered)))


def test_go_rejects_a_changed_size(checker: Checker) -> None:
    note = _note()
    tampered = note.replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n")
    assert tampered != note
    _assert_rejected(checker(_request(tampered)))


def test_go_rejects_a_changed_signature(checker: Checker) -> None:
    body, line = _split_note(_note())
    prefix, encoded = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x80
    _assert_rejected(checker(_request(f"{body}\n{prefix} {_b64(bytes(raw))}\n")))


def test_go_rejects_a_checkpoint_signed_by_another_key(checker: Checker) -> None:
    _assert_rejected(checker(_request(_note(), key=OTHER_KEY)))


def test_go_rejects_a_wrong_inclusion_proof(checker: Checker) -> None:
    inclusion = {
        "index": 4,
        "leafHash": _b64(LEAVES[5]),
        "proof": [_b64(h) for h in inclusion_proof(LEAVES, 4)],
    }
    _assert_rejected(checker(_request(_note(), inclusion=inclusion)))


def test_go_rejects_a_wrong_consistency_proof(checker: Checker) -> None:
    proof = consistency_proof(LEAVES, 7)
    consistency = {
        "oldSize": 7,
        "oldRoot": _b64(root_hash(LEAVES[:7])),
        "proof": [_b64(h) for h in reversed(proof)],
    }
    _assert_rejected(checker(_request(_note(), consistency=consistency)))


def test_go_rejects_entries_that_do_not_match_the_root(checker: Checker) -> None:
    entries = [_b64(e) for e in ENTRIES]
    entries[3] = _b64(b"forged")
    _assert_rejected(checker(_request(_note(), entries=entries)))


# Sizes where RFC 9162's proofs take their edge shapes: a single leaf, powers of two (the old root is
# itself a node of the new tree and is left out of the consistency proof), one past them, and equal
# old and new sizes (the empty proof). The tests above use one size, 23, none of these.
EDGE_SIZES = (1, 2, 3, 4, 8, 9, 16, 17, 32)


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_go_accepts_every_proof_in_trees_of_edge_sizes(checker: Checker, size: int) -> None:
    leaves = [leaf_hash(f"edge {i}".encode()) for i in range(size)]
    note = sign_checkpoint(Checkpoint(NAME, size, root_hash(leaves)), NAME, KEY)
    for index in range(size):
        inclusion = {
            "index": index,
            "leafHash": _b64(leaves[index]),
            "proof": [_b64(h) for h in inclusion_proof(leaves, index)],
        }
        _assert_accepted(checker(_request(note, inclusion=inclusion)))
    for old_size in range(1, size + 1):
        consistency = {
            "oldSize": old_size,
            "oldRoot": _b64(root_hash(leaves[:old_size])),
            "proof": [_b64(h) for h in consistency_proof(leaves, old_size)],
        }
        _assert_accepted(checker(_request(note, consistency=consistency)))


def test_go_rejects_an_equal_size_proof_that_is_not_empty_or_of_another_root(checker: Checker) -> None:
    """Between equal sizes only the empty proof of the same root holds, for Go as for graven."""
    note = _note()
    root = _b64(root_hash(LEAVES))
    _assert_accepted(checker(_request(note, consistency={"oldSize": SIZE, "oldRoot": root, "proof": []})))
    extra = {"oldSize": SIZE, "oldRoot": root, "proof": [root]}
    _assert_rejected(checker(_request(note, consistency=extra)))
    other = {"oldSize": SIZE, "oldRoot": _b64(root_hash(LEAVES[:-1])), "proof": []}
    _assert_rejected(checker(_request(note, consistency=other)))
