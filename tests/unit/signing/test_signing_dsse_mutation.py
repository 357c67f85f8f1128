"""Mutation-testing gaps in graven.signing.dsse: check_signature with a memo, revoked_signer with a
memo, strict base64 and strict JSON (belongs next to tests/unit/signing/test_signing_dsse.py)."""

from __future__ import annotations

import json

import pytest

from graven.errors import InputError, PolicyError
from graven.signing.dsse import (
    b64decode,
    check_signature,
    load_json_object,
    pae,
    parse_envelope,
    revoked_signer,
    sign,
    sign_envelope,
    verify_envelope,
)
from graven.signing.keys import generate_key

TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"hello":"world"}'


class _Memo:
    """An in-memory SignatureMemo that records what it was asked."""

    def __init__(self) -> None:
        self.entries: set[tuple[str, bytes, bytes]] = set()

    def seen(self, keyid: str, message: bytes, signature: bytes) -> bool:
        return (keyid, message, signature) in self.entries

    def add(self, keyid: str, message: bytes, signature: bytes) -> None:
        self.entries.add((keyid, message, signature))


class _NoCrypto:
    """A key that must not be asked: the memo has the answer."""

    def __init__(self, keyid: str) -> None:
        self.keyid = keyid

    def verify(self, signature: bytes, message: bytes) -> bool:
        raise AssertionError("verified although the memo knew the signature")


def test_check_signature_with_a_memo_refuses_and_does_not_remember_a_bad_signature() -> None:
    key = generate_key()
    message = pae(TYPE, PAYLOAD)
    good = key.sign(message)
    bad = generate_key().sign(message)  # another key's signature of the same message
    memo = _Memo()
    assert check_signature(key.public, bad, message, memo) is False
    assert memo.entries == set()
    assert check_signature(key.public, good, message, memo) is True
    assert memo.entries == {(key.keyid, message, good)}
    # remembered: no cryptography; but only for exactly that key, message and signature
    assert check_signature(_NoCrypto(key.keyid), good, message, memo) is True  # type: ignore[arg-type]
    assert check_signature(key.public, good, message + b"x", memo) is False
    assert check_signature(key.public, bad, message, None) is False
    assert check_signature(key.public, good, message, None) is True


def test_revoked_signer_with_a_memo_does_not_blame_a_revoked_key_that_did_not_sign() -> None:
    revoked, stranger = generate_key(), generate_key()
    envelope = sign_envelope(PAYLOAD, TYPE, stranger)
    memo = _Memo()
    assert revoked_signer(envelope, [revoked.public], {revoked.keyid}, memo=memo) is None
    assert memo.entries == set()
    # through verify_envelope: no usable key, not "signed by revoked key"
    with pytest.raises(PolicyError, match=r"^no trusted keys to verify the envelope with$"):
        verify_envelope(envelope, [revoked.public], revoked_keyids={revoked.keyid}, memo=_Memo())
    # and the revoked key's own signature is found with a memo too
    by_revoked = sign_envelope(PAYLOAD, TYPE, revoked)
    assert revoked_signer(by_revoked, [revoked.public], {revoked.keyid}, memo=_Memo()) == revoked.keyid


@pytest.mark.parametrize("text", ["aGVs bG8h", "aGVsbG8h*", "aGVs\nbG8h", "aGVsbG8h!!!!", "aGVs.bG8h"])
def test_base64_with_characters_outside_the_alphabet_is_refused(text: str) -> None:
    # without validate=True, base64 drops them and these all decode to b"hello!": one payload or
    # signature would then have many envelope spellings
    assert b64decode("aGVsbG8h", "x") == b"hello!"
    with pytest.raises(InputError, match=r"^x is not valid base64$"):
        b64decode(text, "x")


def test_envelope_with_junk_in_its_base64_is_refused() -> None:
    envelope = sign(PAYLOAD, TYPE, generate_key())
    envelope["payload"] = envelope["payload"][:4] + " " + envelope["payload"][4:]
    with pytest.raises(InputError, match="payload is not valid base64"):
        parse_envelope(json.dumps(envelope))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_refused(constant: str) -> None:
    with pytest.raises(InputError, match="is not valid JSON"):
        load_json_object(f'{{"a": {constant}}}', "envelope")


def test_json_nested_too_deeply_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"^envelope is not valid JSON \(nested too deeply\)$"):
        load_json_object("[" * 100_000 + "]" * 100_000, "envelope")


def test_canonical_json_refuses_nan_and_infinity() -> None:
    # what it writes must be JSON that load_json_object (and every other verifier) reads back
    from graven.signing.dsse import canonical_json

    assert canonical_json({"b": 1, "a": "\u00e9"}) == '{"a":"\u00e9","b":1}'.encode()
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            canonical_json({"x": value})


@pytest.mark.parametrize(
    "document",
    [
        '{"payload":"","payloadType":"\\ud800","signatures":[]}',
        '{"payload":"","payloadType":"t","signatures":[{"keyid":"\\udfff","sig":""}]}',
    ],
)
def test_a_lone_surrogate_in_payload_type_or_keyid_is_an_input_error(document: str) -> None:
    # JSON allows "\ud800"; UTF-8 (and so the PAE) does not: refused when parsed, not a crash later
    with pytest.raises(InputError, match="not a string"):
        parse_envelope(document)
