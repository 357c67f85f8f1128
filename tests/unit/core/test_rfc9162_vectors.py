"""Data-driven tests: every RFC 9162 vector of transparency-dev/merkle in tests/assets/rfc9162."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from graven.core.merkle import leaf_hash, root_hash, verify_consistency, verify_inclusion
from graven.errors import VerificationError

VECTORS = Path(__file__).resolve().parents[2] / "assets" / "rfc9162"


def _cases(kind: str) -> list[Any]:
    paths = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(p, id=p.relative_to(VECTORS).as_posix()) for p in paths]


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in case["proof"] or []]


def test_vectors_are_all_there() -> None:
    assert len(_cases("inclusion")) == 98
    assert len(_cases("consistency")) == 98
    assert (VECTORS / "README.md").is_file()


@pytest.mark.parametrize("path", _cases("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)
    args = (
        _b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _proof(case),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"))
def test_consistency_vector(path: Path) -> None:
    case = _load(path)
    args = (
        case["size1"],
        case["size2"],
        _proof(case),
        _b64(case["root1"]),
        _b64(case["root2"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_equal_sizes_with_empty_proof_and_well_formed_equal_roots_is_consistent() -> None:
    root = leaf_hash(b"")
    verify_consistency(1, 1, [], root, root)


def test_classic_certificate_transparency_vector_from_readme() -> None:
    readme = (VECTORS / "README.md").read_text()
    expected = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert expected in readme
    leaves = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
    leaves.append("606162636465666768696a6b6c6d6e6f")
    assert root_hash([leaf_hash(bytes.fromhex(h)) for h in leaves]).hex() == expected
