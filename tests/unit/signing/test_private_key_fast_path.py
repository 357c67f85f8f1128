"""Canonical Ed25519 private keys are read without cryptography's serialization module, and give
exactly the key the full PEM parser gives; anything else still goes through that parser."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import InputError
from graven.signing import keys


def _pem(private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_the_fast_path_gives_the_key_the_full_parser_gives(seed: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    pem = _pem(private)
    assert keys._ed25519_seed(pem) == seed
    fast = keys.parse_private_key(pem)
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    full = keys.SigningKey.from_private_key(loaded)
    assert (fast.keyid, fast.key_type, fast.public_pem(), fast.private_pem()) == (
        full.keyid,
        full.key_type,
        full.public_pem(),
        full.private_pem(),
    )
    assert fast.public.verify(fast.sign(b"message"), b"message")


def test_other_forms_take_the_full_parser() -> None:
    pem = _pem(Ed25519PrivateKey.generate())
    crlf = pem.replace(b"\n", b"\r\n")
    assert keys._ed25519_seed(crlf) is None  # not canonical: cryptography decides
    assert keys.parse_private_key(crlf).key_type == "ed25519"
    assert keys._ed25519_seed(_pem(ec.generate_private_key(ec.SECP256R1()))) is None
    assert keys.parse_private_key(_pem(ec.generate_private_key(ec.SECP256R1()))).key_type == "ecdsa-p256"
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InputError, match="encrypted"):
        keys.parse_private_key(encrypted)
    # a 48-byte DER with another algorithm identifier is not taken for an Ed25519 key
    der = bytearray(base64.b64decode(b"".join(pem.splitlines()[1:-1])))
    der[11] ^= 1  # the OID's last byte: 1.3.101.113 (Ed448's arc), not Ed25519
    forged = (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(bytes(der)) + b"\n-----END PRIVATE KEY-----\n"
    )
    assert keys._ed25519_seed(forged) is None
    with pytest.raises(InputError):
        keys.parse_private_key(forged)


def test_loading_a_canonical_key_does_not_import_serialization(tmp_path: Path) -> None:
    key = keys.generate_key("ed25519")
    path = tmp_path / "k.key"
    keys.write_private_key(path, key)
    probe = (
        "import sys\n"
        "from graven.signing.keys import load_private_key\n"
        f"k = load_private_key({str(path)!r})\n"
        "k.sign(b'x'); print(k.keyid)\n"
        "print('cryptography.hazmat.primitives.serialization' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == [key.keyid, "False"], out


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_an_ed25519_key_is_written_as_cryptography_writes_it(seed: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert keys.SigningKey.from_private_key(private).private_pem() == _pem(private)


def test_an_ecdsa_key_is_written_by_cryptography() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    assert keys.SigningKey.from_private_key(private).private_pem() == _pem(private)
