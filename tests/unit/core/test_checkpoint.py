"""Unit tests of graven.core.checkpoint: C2SP checkpoints as Ed25519 signed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graven.core.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteSignature,
    key_id,
    parse_checkpoint,
    parse_signed_note,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from graven.errors import InputError, VerificationError

NAME = "example.com/log"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
CHECKPOINT = Checkpoint(NAME, 42, ROOT)
URLSAFE_ROOT_B64 = base64.urlsafe_b64encode(bytes([0xFF] * 32)).decode()

# From golang.org/x/mod/sumdb/note's own tests: a key, its verifier key and a signature line.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="


def _go_key() -> Ed25519PrivateKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(seed[1:])


def _sig_line(name: str, key: Ed25519PrivateKey, body: bytes) -> str:
    raw = key_id(name, key.public_key()) + key.sign(body)
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


# --- checkpoint body ---


def test_body_is_origin_size_and_base64_root_lines() -> None:
    assert CHECKPOINT.body() == f"{NAME}\n42\n{ROOT_B64}\n".encode()


def test_body_appends_extension_lines() -> None:
    checkpoint = Checkpoint(NAME, 0, ROOT, ("ext one", "ext-two"))
    assert checkpoint.body() == f"{NAME}\n0\n{ROOT_B64}\next one\next-two\n".encode()


def test_parse_checkpoint_round_trips() -> None:
    checkpoint = Checkpoint("origin with spaces", 2**63 - 1, ROOT, ("x",))
    assert parse_checkpoint(checkpoint.body().decode()) == checkpoint


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("a\tb", 1, ROOT, ()),
        (NAME, -1, ROOT, ()),
        (NAME, 2**63, ROOT, ()),
        (NAME, True, ROOT, ()),
        (NAME, 1, ROOT[:31], ()),
        (NAME, 1, ROOT, ("",)),
        (NAME, 1, ROOT, ("two\nlines",)),
        ("lone\udcffsurrogate", 1, ROOT, ()),
    ],
)
def test_checkpoint_refuses_values_without_an_encoding(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(InputError):
        Checkpoint(origin, size, root, extensions)


@pytest.mark.parametrize(
    "text",
    [
        f"{NAME}\n42\n{ROOT_B64}",  # no final newline
        f"{NAME}\n42\n",  # no root
        f"\n42\n{ROOT_B64}\n",  # empty origin
        f"{NAME}\n042\n{ROOT_B64}\n",  # leading zero
        f"{NAME}\n+42\n{ROOT_B64}\n",
        f"{NAME}\n 42\n{ROOT_B64}\n",
        f"{NAME}\n4_2\n{ROOT_B64}\n",
        f"{NAME}\n\u0664\u0662\n{ROOT_B64}\n",  # Arabic-Indic digits
        f"{NAME}\n-1\n{ROOT_B64}\n",
        f"{NAME}\n{2**63}\n{ROOT_B64}\n",
        f"{NAME}\n42\n{ROOT_B64.rstrip('=')}\n",  # no padding
        f"{NAME}\n42\n{ROOT_B64[:-2]}x=\n",  # non-canonical trailing bits
        f"{NAME}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{NAME}\n42\n{URLSAFE_ROOT_B64}\n",  # URL-safe alphabet
        f"{NAME}\n42\n{ROOT_B64}\n\n",  # empty extension line
    ],
)
def test_parse_checkpoint_refuses_malformed_text(text: str) -> None:
    with pytest.raises(InputError):
        parse_checkpoint(text)


# --- keys ---


def test_key_id_is_truncated_sha256_of_name_newline_type_and_key() -> None:
    raw = KEY.public_key().public_bytes_raw()
    expected = hashlib.sha256(NAME.encode() + b"\n\x01" + raw).digest()[:4]
    assert key_id(NAME, KEY.public_key()) == expected


def test_verifier_key_matches_go_note_package() -> None:
    key = _go_key()
    assert verifier_key("PeterNeumann", key.public_key()) == GO_VKEY
    assert key_id("PeterNeumann", key.public_key()) == base64.b64decode(GO_SIG)[:4]
    assert key.sign(GO_TEXT.encode()) == base64.b64decode(GO_SIG)[4:]


def test_parse_verifier_key_round_trips() -> None:
    name, public_key = parse_verifier_key(GO_VKEY)
    assert name == "PeterNeumann"
    assert verifier_key(name, public_key) == GO_VKEY


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+x",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case hex
        "PeterNeumann+c74f20a3+AhpcAQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # short key
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_parse_verifier_key_refuses_bad_keys(vkey: str) -> None:
    with pytest.raises(InputError):
        parse_verifier_key(vkey)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "nbsp\u00a0name", "tab\tname"])
def test_key_names_must_be_non_empty_without_spaces_or_plus(name: str) -> None:
    with pytest.raises(InputError):
        key_id(name, KEY.public_key())
    with pytest.raises(InputError):
        sign_checkpoint(CHECKPOINT, name, KEY)


# --- signing and parsing ---


def test_signed_note_is_body_blank_line_and_em_dash_signature_line() -> None:
    note = sign_checkpoint(CHECKPOINT, NAME, KEY)
    body, sig_line = note.split("\n\n")
    assert f"{body}\n".encode() == CHECKPOINT.body()
    assert sig_line.startswith(f"\u2014 {NAME} ")
    assert sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert len(raw) == 68
    assert raw[:4] == key_id(NAME, KEY.public_key())
    KEY.public_key().verify(raw[4:], CHECKPOINT.body())


def test_parse_signed_note_returns_checkpoint_and_signatures() -> None:
    note = sign_checkpoint(CHECKPOINT, NAME, KEY)
    note += _sig_line("witness.example", OTHER_KEY, CHECKPOINT.body())
    checkpoint, signatures = parse_signed_note(note)
    assert checkpoint == CHECKPOINT
    assert [(s.name, s.key_id) for s in signatures] == [
        (NAME, key_id(NAME, KEY.public_key())),
        ("witness.example", key_id("witness.example", OTHER_KEY.public_key())),
    ]
    name, kid, sig = signatures[0]
    assert isinstance(signatures[0], NoteSignature)
    assert (name, kid, len(sig)) == (NAME, key_id(NAME, KEY.public_key()), 64)


def test_parse_signed_note_accepts_bytes() -> None:
    note = sign_checkpoint(CHECKPOINT, NAME, KEY).encode()
    assert parse_signed_note(note)[0] == CHECKPOINT


GOOD = sign_checkpoint(CHECKPOINT, NAME, KEY)
GOOD_SIG_LINE = GOOD.split("\n\n")[1]


@pytest.mark.parametrize(
    "note",
    [
        GOOD.replace("\n\n", "\n"),  # no blank line
        GOOD[:-1],  # no final newline
        GOOD + "\n",  # blank line after the signatures
        GOOD.replace("\n\n", "\n\n\n"),  # empty signature line
        CHECKPOINT.body().decode() + "\n",  # no signatures
        GOOD.replace("\u2014", "-"),  # hyphen, not em dash
        GOOD.replace("\u2014 ", "\u2014"),
        GOOD.replace(f"\u2014 {NAME} ", f"\u2014 {NAME}  "),  # two spaces
        GOOD.replace(f"\u2014 {NAME} ", f"\u2014 {NAME}+x "),  # plus in name
        GOOD.replace(f"\u2014 {NAME} ", "\u2014  "),  # empty name
        GOOD.rstrip("\n") + "!\n",  # bad base64
        GOOD.rstrip("\n").rstrip("=") + "\n",  # missing padding
        GOOD + "\u2014 short AAAAAA==\n",  # 4 bytes: key id but no signature
        GOOD + f"\u2014 {NAME}\n",  # no signature at all
        GOOD.replace(f"{NAME}\n42", f"{NAME}\r\n42"),  # control character
        GOOD.replace("\n42\n", "\n4\x002\n"),
        GOOD.replace("\n42\n", "\n042\n"),
        GOOD.replace(f"\n{ROOT_B64}\n", "\n\n"),
        GOOD + GOOD_SIG_LINE * MAX_SIGNATURES,  # too many signatures
    ],
)
def test_parse_signed_note_refuses_malformed_notes(note: str) -> None:
    with pytest.raises(InputError):
        parse_signed_note(note)
    with pytest.raises(InputError):
        verify_checkpoint(note, NAME, KEY.public_key())


def test_parse_signed_note_refuses_invalid_utf8() -> None:
    with pytest.raises(InputError, match="UTF-8"):
        parse_signed_note(GOOD.encode().replace(b"example", b"ex\xffample"))
    with pytest.raises(InputError, match="Unicode"):
        verify_checkpoint(GOOD.replace("example", "ex\udcffample"), NAME, KEY.public_key())


def test_many_signatures_up_to_the_limit_are_accepted() -> None:
    note = GOOD + GOOD_SIG_LINE * (MAX_SIGNATURES - 1)
    assert len(parse_signed_note(note)[1]) == MAX_SIGNATURES


# --- verification ---


def test_verify_checkpoint_returns_the_checkpoint() -> None:
    assert verify_checkpoint(GOOD, NAME, KEY.public_key()) == CHECKPOINT
    assert verify_checkpoint(GOOD.encode(), NAME, KEY.public_key()) == CHECKPOINT


def test_verify_checkpoint_with_extensions() -> None:
    checkpoint = Checkpoint(NAME, 7, ROOT, ("Timestamp: 1700000000",))
    note = sign_checkpoint(checkpoint, NAME, KEY)
    assert verify_checkpoint(note, NAME, KEY.public_key()) == checkpoint


def test_verify_checkpoint_ignores_signatures_by_unknown_keys() -> None:
    body = CHECKPOINT.body()
    note = GOOD + _sig_line("witness.example", OTHER_KEY, body)
    note = note.replace("\n\n", "\n\n" + _sig_line("other.example", OTHER_KEY, b"junk"), 1)
    assert verify_checkpoint(note, NAME, KEY.public_key()) == CHECKPOINT


def test_verify_checkpoint_ignores_signatures_sharing_only_the_name_or_only_the_key_id() -> None:
    kid = key_id(NAME, KEY.public_key())
    other_kid = bytes(4)
    same_id = f"\u2014 other.example {base64.b64encode(kid + bytes(64)).decode()}\n"
    same_name = f"\u2014 {NAME} {base64.b64encode(other_kid + bytes(64)).decode()}\n"
    assert verify_checkpoint(GOOD + same_id + same_name, NAME, KEY.public_key()) == CHECKPOINT


def _tamper_signature(note: str) -> str:
    body, line = note.split("\n\n")
    prefix, encoded = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 0x01
    return f"{body}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (GOOD.replace("\n42\n", "\n43\n"), "does not verify"),
        (GOOD.replace(f"\n{ROOT_B64}\n", f"\n{base64.b64encode(bytes(32)).decode()}\n"), "verify"),
        (GOOD.replace(f"{NAME}\n42", "example.com/other\n42"), "does not verify"),
        (GOOD.replace("\n\n", "\next\n\n"), "does not verify"),
        (_tamper_signature(GOOD), "does not verify"),
        (sign_checkpoint(CHECKPOINT, NAME, OTHER_KEY), "no signature by key"),
        (sign_checkpoint(CHECKPOINT, "example.com/other-name", KEY), "no signature by key"),
        (GOOD + _sig_line(NAME, KEY, b"another text"), "does not verify"),  # one bad of two
    ],
)
def test_verify_checkpoint_rejects(note: str, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        verify_checkpoint(note, NAME, KEY.public_key())


def test_verify_checkpoint_rejects_signature_of_the_wrong_length() -> None:
    kid = key_id(NAME, KEY.public_key())
    line = f"\u2014 {NAME} {base64.b64encode(kid + KEY.sign(CHECKPOINT.body())[:63]).decode()}\n"
    note = CHECKPOINT.body().decode() + "\n" + line
    with pytest.raises(VerificationError, match="not 64 bytes"):
        verify_checkpoint(note, NAME, KEY.public_key())


def test_signing_is_deterministic_and_verifies_with_parsed_vkey() -> None:
    assert sign_checkpoint(CHECKPOINT, NAME, KEY) == GOOD
    name, public_key = parse_verifier_key(verifier_key(NAME, KEY.public_key()))
    assert verify_checkpoint(GOOD, name, public_key) == CHECKPOINT
