"""Property tests of the audit log's parsers of untrusted text: a signed checkpoint note (a kept
checkpoint given to `graven log consistency`, a stored note), a log entry (a database row) and an
environment's witness file. Edited anywhere (cut, truncated, grown, with line ends, control
characters, bytes that are no UTF-8, huge numbers, em dashes...), each is refused with graven's own
error (never another exception) or reads back to exactly the same bytes: no other text is accepted."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graven.core.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from graven.errors import InputError, VerificationError
from graven.model.logentry import LogEntry
from graven.service.witness import parse_witness

NAME = "graven.invalid/log/0f6c1e0e-5b7e-4d55-9b0e-2d7f1f3c9a11"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
CHECKPOINT = Checkpoint(NAME, 5, bytes(range(32)))
NOTE = sign_checkpoint(CHECKPOINT, NAME, KEY).encode()
ENTRY = LogEntry(
    3, "2026-01-01T00:00:00.000000Z", "a@b", "deploy", None, None, "e", "r\u00e9", "ok"
).to_bytes()
WITNESS = f"graven.witness/v1\n{NAME}\n12\n{'a' * 64}\n".encode()

# pieces that parsers trip over, inserted anywhere
PIECES = st.sampled_from(
    [
        b"\n",
        b"\r\n",
        b"\n\n",
        b" ",
        b"\xe2\x80\x94 ",  # the em dash and space of a signature line
        b"+",
        b"=",
        b"A",
        b"0",
        b"-",
        b"9" * 25,
        b"9" * 5000,
        b"\x00",
        b"\x7f",
        b"\xff",
        b"\xc2\x9b",  # U+009B, a C1 control
        b"\xed\xa0\x80",  # an encoded surrogate: no UTF-8
        b'"',
        b"\\ud800",
        b"{",
        b"}",
        b"null",
        b"1e5",
    ]
)


def _edited(base: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(base)
    for position, cut, piece in edits:
        start = min(position, len(data))
        data[start : start + cut] = piece
    return bytes(data)


def _edits(size: int) -> st.SearchStrategy[list[tuple[int, int, bytes]]]:
    return st.lists(st.tuples(st.integers(0, size), st.integers(0, 8), PIECES), min_size=1, max_size=4)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_edits(len(NOTE)), st.booleans())
def test_an_edited_signed_note_verifies_only_when_its_signed_text_is_unchanged(
    edits: list[tuple[int, int, bytes]], as_text: bool
) -> None:
    data = _edited(NOTE, edits)
    note: str | bytes = data.decode("utf-8", "surrogateescape") if as_text else data
    try:
        checkpoint = verify_checkpoint(note, NAME, KEY.public_key())
    except (InputError, VerificationError):
        return
    assert checkpoint == CHECKPOINT
    text = data.decode()
    assert text[: text.rfind("\n\n") + 1].encode() == CHECKPOINT.body()  # only signature lines differ


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_edits(len(ENTRY)))
def test_an_edited_log_entry_is_refused_or_is_its_canonical_bytes(
    edits: list[tuple[int, int, bytes]],
) -> None:
    data = _edited(ENTRY, edits)
    try:
        entry = LogEntry.from_bytes(data)
    except InputError:
        return
    assert entry.to_bytes() == data


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_edits(len(WITNESS)))
def test_an_edited_witness_is_refused_or_reads_back_as_written(edits: list[tuple[int, int, bytes]]) -> None:
    data = _edited(WITNESS, edits)
    witness = parse_witness(data)
    if witness is not None:
        assert witness.to_bytes() == data
