"""Small-order Ed25519 public keys are refused: under one, OpenSSL accepts the signature R = neutral,
S = 0 of any message. The fast check (a set of y coordinates) is held against the curve's arithmetic."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import InputError
from graven.signing.keys import ED25519_SPKI_PREFIX, VerifyingKey, check_ed25519_point, generate_key

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _decode(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3 point decoding (None: no point)."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P:
            return None
    if x == 0 and sign:
        return None
    return (P - x if x & 1 != sign else x), y


def _small_order(point: tuple[int, int]) -> bool:
    x, y = point
    for _ in range(3):  # 8 * P by doubling in affine coordinates (a = -1)
        xy = x * y % P
        dxy2 = D * xy * xy % P
        x, y = 2 * xy * pow(1 + dxy2, P - 2, P) % P, (y * y + x * x) * pow(1 - dxy2, P - 2, P) % P
    return x == 0 and y == 1


# libsodium's blocklist (ed25519_ref10.c, has_small_order): canonical encodings of small-order points
LIBSODIUM = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


@pytest.mark.parametrize("encoded", LIBSODIUM)
def test_every_small_order_point_is_refused(encoded: str) -> None:
    raw = bytes.fromhex(encoded)
    point = _decode(raw)
    assert point is not None and _small_order(point)  # the reference agrees it is one
    with pytest.raises(InputError, match="weak key"):
        check_ed25519_point(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_the_fast_check_refuses_exactly_the_small_order_points(raw: bytes) -> None:
    point = _decode(raw)
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    refused = True
    try:
        check_ed25519_point(raw)
        refused = False
    except InputError:
        pass
    if y >= P:
        assert refused  # a second encoding of a point
    elif point is not None:
        assert refused == _small_order(point)


def test_generated_keys_pass_and_a_weak_trusted_key_is_refused() -> None:
    for _ in range(50):
        check_ed25519_point(generate_key().public.spki[len(ED25519_SPKI_PREFIX) :])
    from graven.signing.keys import parse_public_key

    der = ED25519_SPKI_PREFIX + bytes.fromhex(LIBSODIUM[0])
    pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der) + b"\n-----END PUBLIC KEY-----\n"
    with pytest.raises(InputError, match="weak key"):
        parse_public_key(pem, "the key to trust")
    with pytest.raises(InputError, match="weak key"):
        VerifyingKey.from_canonical_der(der)


# The 19 y values P .. 2**255 - 1 do not fit the field: each is a second encoding of y - P (random
# bytes hit one with probability 2**-251, so the property test above never does). P + 1 encodes the
# neutral point without being any of the 8 canonical small-order encodings the fast check lists.
NON_CANONICAL = [
    pytest.param(((P + k) | (sign << 255)).to_bytes(32, "little"), id=f"P+{k}{'-signed' if sign else ''}")
    for k in range(19)
    for sign in (0, 1)
]
# R = the neutral point (y = 1, canonical), S = 0: valid under the neutral point for every message
FORGED_SIGNATURE = (1).to_bytes(32, "little") + bytes(32)


@pytest.mark.parametrize("raw", NON_CANONICAL)
def test_a_non_canonical_y_is_refused_wherever_a_key_is_made(raw: bytes) -> None:
    assert int.from_bytes(raw, "little") & ((1 << 255) - 1) >= P
    with pytest.raises(InputError, match="not canonically encoded"):
        check_ed25519_point(raw)
    der = ED25519_SPKI_PREFIX + raw
    with pytest.raises(InputError, match="not canonically encoded"):
        VerifyingKey.from_canonical_der(der)
    from graven.signing.keys import parse_public_key

    pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der) + b"\n-----END PUBLIC KEY-----\n"
    with pytest.raises(InputError, match="not canonically encoded"):
        parse_public_key(pem, "the key to trust")


@pytest.mark.parametrize("sign", [0, 1], ids=["unsigned", "signed"])
def test_the_neutral_point_encoded_as_p_plus_1_verifies_no_forgery(sign: int) -> None:
    der = ED25519_SPKI_PREFIX + ((P + 1) | (sign << 255)).to_bytes(32, "little")
    try:
        key = VerifyingKey.from_canonical_der(der)
    except InputError:
        return  # refused: nothing can verify under it
    assert key is not None  # an Ed25519 SPKI is of the canonical layout: a key or a refusal
    verified = [key.verify(FORGED_SIGNATURE, message) for message in (b"any message", b"another")]
    pytest.fail(f"a non-canonical neutral-point key was accepted; the forged signature verifies: {verified}")
