"""Mutation-testing gaps in graven.core.checkpoint (belongs next to tests/unit/core/test_checkpoint.py).

The existing refusal tests pass a value that a later check also refuses (a short key is also bad
base64, a type 0x02 key also has the wrong key id), so these checks could be deleted unnoticed."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graven.core.checkpoint import (
    key_id,
    parse_checkpoint,
    parse_verifier_key,
    verifier_key,
)
from graven.errors import InputError

NAME = "example.com/log"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ROOT_B64 = base64.b64encode(hashlib.sha256(b"root").digest()).decode()


def _vkey(raw: bytes, hex_id: str | None = None) -> str:
    hex_id = key_id(NAME, KEY.public_key()).hex() if hex_id is None else hex_id
    return f"{NAME}+{hex_id}+{base64.b64encode(raw).decode()}"


def test_the_helper_builds_a_good_verifier_key() -> None:
    raw = bytes(KEY.public_key().public_bytes_raw())
    assert _vkey(b"\x01" + raw) == verifier_key(NAME, KEY.public_key())
    assert parse_verifier_key(_vkey(b"\x01" + raw))[0] == NAME


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02" + bytes(KEY.public_key().public_bytes_raw()),  # type 0x02, its id as if Ed25519
        b"\x01" + bytes(KEY.public_key().public_bytes_raw())[:31],  # valid base64, 31-byte key
        b"\x01" + bytes(KEY.public_key().public_bytes_raw()) + b"\x00",  # 33-byte key
        b"\x01",
    ],
)
def test_verifier_key_of_another_type_or_length_is_an_input_error(raw: bytes) -> None:
    with pytest.raises(InputError, match="not an Ed25519 key"):
        parse_verifier_key(_vkey(raw))


def test_a_checkpoint_text_without_its_final_newline_is_refused_not_truncated() -> None:
    # without the check, the last character of the last line is cut off: "ext" would parse as "ex"
    assert parse_checkpoint(f"{NAME}\n42\n{ROOT_B64}\next\n").extensions == ("ext",)
    with pytest.raises(InputError, match="must end with a newline"):
        parse_checkpoint(f"{NAME}\n42\n{ROOT_B64}\next")
