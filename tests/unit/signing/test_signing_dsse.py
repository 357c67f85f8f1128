"""DSSE envelopes: PAE, signing, parsing, every refusal, and interoperability with securesystemslib."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from graven.errors import InputError, PolicyError, VerificationError
from graven.signing.dsse import (
    MAX_SIGNATURES,
    Envelope,
    Signature,
    pae,
    parse_envelope,
    sign,
    sign_envelope,
    verify_envelope,
)
from graven.signing.keys import SigningKey, generate_key

KEY_TYPES = ["ed25519", "ecdsa-p256"]
TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"hello":"world"}'


def test_pae_matches_the_spec_example() -> None:
    # The example of the DSSE protocol document.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("t\u00e9", b"\x00") == b"DSSEv1 3 t\xc3\xa9 1 \x00"  # byte lengths, not characters


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_and_verify(key_type: str) -> None:
    key = generate_key(key_type)
    envelope = sign(PAYLOAD, TYPE, key)
    assert set(envelope) == {"payload", "payloadType", "signatures"}
    assert envelope["payload"] == base64.b64encode(PAYLOAD).decode()
    assert envelope["payloadType"] == TYPE
    assert envelope["signatures"][0]["keyid"] == key.keyid
    parsed = parse_envelope(json.dumps(envelope).encode())
    verified = verify_envelope(parsed, [generate_key().public, key.public])
    assert verified.payload == PAYLOAD
    assert verified.payload_type == TYPE
    assert verified.key == key.public
    assert verified.keyid == key.keyid
    assert verify_envelope(envelope, [key.public]).payload == PAYLOAD  # the dict form works too


def _tamper(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**envelope, **changes}


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_changed_payload_byte_is_a_bad_signature(key_type: str) -> None:
    key = generate_key(key_type)
    envelope = sign(PAYLOAD, TYPE, key)
    changed = bytearray(PAYLOAD)
    changed[3] ^= 0x01
    tampered = _tamper(envelope, payload=base64.b64encode(bytes(changed)).decode())
    with pytest.raises(VerificationError) as caught:
        verify_envelope(tampered, [key.public])
    assert str(caught.value) == (
        f"bad signature: the signature by trusted key {key.keyid} does not match the payload and payloadType"
    )
    assert caught.value.exit_code == 1


def test_changed_payload_type_is_a_bad_signature() -> None:
    key = generate_key()
    envelope = _tamper(sign(PAYLOAD, TYPE, key), payloadType="application/json")
    with pytest.raises(VerificationError, match=r"^bad signature: the signature by trusted key"):
        verify_envelope(envelope, [key.public])


def test_swapped_signature_is_a_bad_signature() -> None:
    key = generate_key()
    envelope = sign(PAYLOAD, TYPE, key)
    other = sign(b'{"hello":"mars"}', TYPE, key)
    swapped = _tamper(envelope, signatures=other["signatures"])
    with pytest.raises(VerificationError, match=r"^bad signature: "):
        verify_envelope(swapped, [key.public])


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_wrong_key_is_untrusted(key_type: str) -> None:
    signer = generate_key(key_type)
    trusted = generate_key(key_type)
    with pytest.raises(PolicyError) as caught:
        verify_envelope(sign(PAYLOAD, TYPE, signer), [trusted.public])
    assert str(caught.value) == (
        f"signed by untrusted key {signer.keyid}: no trusted key verifies the signature"
    )


def test_untrusted_key_without_a_keyid_hint() -> None:
    envelope = sign(PAYLOAD, TYPE, generate_key())
    envelope["signatures"][0]["keyid"] = ""
    with pytest.raises(PolicyError, match=r"^signed by an untrusted key: no trusted key verifies"):
        verify_envelope(envelope, [generate_key().public])


def test_unsigned_envelope() -> None:
    envelope = _tamper(sign(PAYLOAD, TYPE, generate_key()), signatures=[])
    with pytest.raises(VerificationError, match=r"^envelope is unsigned: it has no signatures$"):
        verify_envelope(envelope, [generate_key().public])


def test_no_trusted_keys() -> None:
    with pytest.raises(PolicyError, match="no trusted keys"):
        verify_envelope(sign(PAYLOAD, TYPE, generate_key()), [])


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_revoked_key_is_refused_even_though_it_verifies(key_type: str) -> None:
    key = generate_key(key_type)
    envelope = sign(PAYLOAD, TYPE, key)
    with pytest.raises(PolicyError) as caught:
        verify_envelope(envelope, [key.public], revoked_keyids={key.keyid})
    assert str(caught.value) == f"signed by revoked key {key.keyid}"
    # Revoked and another trusted key: still refused as revoked, not as untrusted.
    other = generate_key()
    with pytest.raises(PolicyError, match=f"^signed by revoked key {key.keyid}$"):
        verify_envelope(envelope, [other.public, key.public], revoked_keyids=[key.keyid])
    # The revoked key is not even loaded: its id in the hint is enough to refuse.
    with pytest.raises(PolicyError, match=f"^signed by revoked key {key.keyid}$"):
        verify_envelope(envelope, [other.public], revoked_keyids=[key.keyid])


def test_revoked_key_with_a_lying_hint_is_still_refused_as_revoked() -> None:
    revoked, trusted = generate_key(), generate_key()
    envelope = sign(PAYLOAD, TYPE, revoked)
    envelope["signatures"][0]["keyid"] = trusted.keyid
    with pytest.raises(PolicyError, match=f"^signed by revoked key {revoked.keyid}$"):
        verify_envelope(envelope, [trusted.public, revoked.public], revoked_keyids=[revoked.keyid])


def test_keyid_is_only_a_hint() -> None:
    key = generate_key()
    decoy = generate_key()
    envelope = sign(PAYLOAD, TYPE, key)
    envelope["signatures"][0]["keyid"] = decoy.keyid  # points at the wrong trusted key
    assert verify_envelope(envelope, [decoy.public, key.public]).key == key.public
    del envelope["signatures"][0]["keyid"]  # keyid is optional in DSSE
    assert verify_envelope(envelope, [decoy.public, key.public]).key == key.public


def test_any_verifying_signature_is_enough() -> None:
    stranger, key = generate_key(), generate_key("ecdsa-p256")
    first = sign_envelope(PAYLOAD, TYPE, stranger)
    second = sign_envelope(PAYLOAD, TYPE, key)
    both = Envelope(PAYLOAD, TYPE, first.signatures + second.signatures)
    assert verify_envelope(both, [key.public]).key == key.public
    assert parse_envelope(both.to_json()) == both


def test_parse_takes_up_to_the_cap_of_signatures_and_refuses_more_in_one_line() -> None:
    """Every signature is tried against every trusted key, on every verify and deploy of the artifact:
    an envelope of 150,000 junk signatures took seconds per key each time (found by review)."""
    key = generate_key()
    real = sign_envelope(PAYLOAD, TYPE, key).signatures[0]
    junk = Signature("", b"x" * 64)
    full = Envelope(PAYLOAD, TYPE, (junk,) * (MAX_SIGNATURES - 1) + (real,))
    assert verify_envelope(parse_envelope(full.to_json()), [key.public]).key == key.public
    over = Envelope(PAYLOAD, TYPE, (junk,) * MAX_SIGNATURES + (real,))
    with pytest.raises(InputError, match=f"has {MAX_SIGNATURES + 1} signatures; graven accepts at most"):
        parse_envelope(over.to_json())


def test_parse_refuses_non_json() -> None:
    with pytest.raises(InputError, match=r"^DSSE envelope is not valid JSON"):
        parse_envelope(b"this is not json")
    with pytest.raises(InputError, match=r"^DSSE envelope is not UTF-8 text$"):
        parse_envelope(b"\xff\xfe{}")
    with pytest.raises(InputError, match=r"^DSSE envelope is not a JSON object$"):
        parse_envelope(b"[1, 2]")


def test_parse_refuses_truncated_envelope() -> None:
    data = sign_envelope(PAYLOAD, TYPE, generate_key()).to_json()
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(InputError, match=r"^DSSE envelope is not valid JSON"):
            parse_envelope(data[:cut])


@pytest.mark.parametrize("field", ["payload", "payloadType", "signatures"])
def test_parse_refuses_missing_fields(field: str) -> None:
    envelope = sign(PAYLOAD, TYPE, generate_key())
    del envelope[field]
    with pytest.raises(InputError, match=f"^DSSE envelope has no '{field}' field$"):
        parse_envelope(json.dumps(envelope))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"payload": "not base64!"}, "DSSE envelope: payload is not valid base64"),
        ({"payload": "abcde"}, "DSSE envelope: payload is not valid base64"),
        ({"payload": 12}, "DSSE envelope: 'payload' is not a string"),
        ({"payloadType": None}, "DSSE envelope: 'payloadType' is not a string"),
        ({"signatures": {}}, "DSSE envelope: 'signatures' is not a list"),
        ({"signatures": ["x"]}, "DSSE envelope: signature 0 is not an object"),
        ({"signatures": [{"keyid": "k"}]}, "DSSE envelope: signature 0 has no 'sig' string"),
        ({"signatures": [{"sig": "AAAA", "keyid": 1}]}, "DSSE envelope: signature 0 has a 'keyid'"),
        ({"signatures": [{"sig": "A==="}]}, "DSSE envelope: signature 0 is not valid base64"),
        ({"signatures": [{"sig": "Zm9v\u00e9"}]}, "DSSE envelope: signature 0 is not valid base64"),
    ],
)
def test_parse_refuses_malformed_fields(change: dict[str, Any], message: str) -> None:
    envelope = {**sign(PAYLOAD, TYPE, generate_key()), **change}
    with pytest.raises(InputError) as caught:
        parse_envelope(json.dumps(envelope))
    assert str(caught.value).startswith(message)
    assert caught.value.exit_code == 2


def test_parse_refuses_duplicate_keys() -> None:
    with pytest.raises(InputError, match="duplicate key 'payload'"):
        parse_envelope(b'{"payload": "", "payload": "", "payloadType": "", "signatures": []}')


def test_parse_accepts_url_safe_unpadded_base64() -> None:
    key = generate_key()
    payload = b"\xfb\xff\xfe?"  # encodes with + and / in standard base64
    envelope = sign(payload, TYPE, key)
    envelope["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"].rstrip("=")
    assert verify_envelope(parse_envelope(json.dumps(envelope)), [key.public]).payload == payload


@given(payload=st.binary(max_size=200), payload_type=st.text(max_size=40))
def test_round_trip_property(payload: bytes, payload_type: str) -> None:
    envelope = sign_envelope(payload, payload_type, _PROPERTY_KEY)
    parsed = parse_envelope(envelope.to_json())
    assert parsed == envelope
    assert verify_envelope(parsed, [_PROPERTY_KEY.public]).payload == payload


_PROPERTY_KEY = generate_key()


# --- independent check: securesystemslib's DSSE implementation --------------------------------


def _sslib_key(key: SigningKey, keyid: str | None = None) -> SSlibKey:
    return SSlibKey.from_crypto(key.public.key, keyid=keyid or key.keyid)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_graven_envelope_verifies_with_securesystemslib(key_type: str) -> None:
    key = generate_key(key_type)
    envelope = sign(PAYLOAD, TYPE, key)
    sslib_envelope = SslibEnvelope.from_dict(json.loads(json.dumps(envelope)))
    assert sslib_envelope.pae() == pae(TYPE, PAYLOAD)
    accepted = sslib_envelope.verify([_sslib_key(key)], 1)
    assert list(accepted) == [key.keyid]

    tampered = _tamper(envelope, payload=base64.b64encode(b'{"hello":"mars"}').decode())
    with pytest.raises(SslibVerificationError, match="Accepted signatures do not match threshold"):
        SslibEnvelope.from_dict(json.loads(json.dumps(tampered))).verify([_sslib_key(key)], 1)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_securesystemslib_envelope_verifies_with_graven(key_type: str) -> None:
    key = generate_key(key_type)
    # securesystemslib's own key id (not graven's): graven must still find the key.
    signer = CryptoSigner(key.private)
    assert signer.public_key.keyid != key.keyid
    sslib_envelope = SslibEnvelope(PAYLOAD, TYPE, {})
    sslib_envelope.sign(signer)
    data = json.dumps(sslib_envelope.to_dict()).encode()
    verified = verify_envelope(parse_envelope(data), [generate_key().public, key.public])
    assert verified.payload == PAYLOAD
    assert verified.key == key.public

    # And with graven's key id as the hint.
    hinted = SslibEnvelope(PAYLOAD, TYPE, {})
    hinted.sign(CryptoSigner(key.private, _sslib_key(key)))
    assert verify_envelope(parse_envelope(json.dumps(hinted.to_dict())), [key.public]).keyid == (key.keyid)

    wrong = SslibEnvelope(b"other", TYPE, {})
    wrong.sign(signer)
    forged = {**sslib_envelope.to_dict(), "payload": wrong.to_dict()["payload"]}
    with pytest.raises(PolicyError, match=r"^signed by untrusted key"):
        verify_envelope(parse_envelope(json.dumps(forged)), [key.public])


def test_signature_dataclass_json_form() -> None:
    assert Signature("k", b"\x00\x01").to_dict() == {"keyid": "k", "sig": "AAE="}
