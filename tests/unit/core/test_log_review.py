"""Unit tests of the audit log review fixes: note heads, the verify report, and CLI value parsing."""

from __future__ import annotations

import argparse
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graven.cli.log_cmds import _log_index, _since
from graven.cli.output import printable as _printable
from graven.core.checkpoint import Checkpoint, note_head, parse_signed_note, sign_checkpoint
from graven.errors import InputError
from graven.service.audit import LogVerifyReport, _note_mismatch

NAME = "graven.invalid/log/test"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ROOT = hashlib.sha256(b"root").digest()


@pytest.mark.parametrize("size", [1, 9, 10, 2**63 - 1])
def test_a_signed_note_starts_with_its_note_head(size: int) -> None:
    note = sign_checkpoint(Checkpoint(NAME, size, ROOT), NAME, KEY)
    head = note_head(NAME, size, ROOT)
    assert note.startswith(head) and note[len(head)] == "\n"  # then the blank line
    assert Checkpoint(NAME, size, ROOT).body().decode() == head
    assert parse_signed_note(note)[0] == Checkpoint(NAME, size, ROOT)


def test_note_heads_of_other_sizes_roots_or_origins_differ() -> None:
    note = sign_checkpoint(Checkpoint(NAME, 10, ROOT), NAME, KEY)
    assert not note.startswith(note_head(NAME, 1, ROOT))  # "1" is a prefix of "10": the LF matters
    assert not note.startswith(note_head(NAME, 10, bytes(32)))
    assert not note.startswith(note_head(NAME + "x", 10, ROOT))


def test_note_mismatch_names_what_differs() -> None:
    note = sign_checkpoint(Checkpoint(NAME, 4, ROOT), NAME, KEY)
    assert _note_mismatch(note, NAME, 5) == "checkpoint 5: its note is signed for '4' entries, not 5"
    assert _note_mismatch(note, "other", 4).startswith("checkpoint 4: its note is for another log")
    assert _note_mismatch(note, NAME, 4).startswith("checkpoint 4: its signed root does not match")
    assert _note_mismatch("garbage", NAME, 4) == "checkpoint 4: its note is malformed"
    assert "\n" not in _note_mismatch(f"{'x' * 500}\n\x1b\n\n\n", NAME, 4)


def test_the_report_keeps_the_first_100_problems_and_the_smallest_index() -> None:
    report = LogVerifyReport()
    for index in range(150, 0, -1):
        report.fail(f"problem {index}", index)
    assert len(report.problems) == 100 and report.more_problems == 50
    assert report.first_bad_index == 1 and not report.ok
    assert report.to_json()["more_problems"] == 50


@pytest.mark.parametrize("text", ["0", "7", "0009", "9223372036854775807"])
def test_log_index_accepts_ascii_digits(text: str) -> None:
    assert _log_index(text) == int(text)


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", "1_0", " 1", "1 ", "\u0661", "\uff11", "1e3", "0x10", "9223372036854775808"]
)
def test_log_index_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _log_index(text)


def test_printable_escapes_control_and_invisible_characters() -> None:
    assert _printable("alice@ci r\u00e9sum\u00e9 \u65e5\u672c") == "alice@ci r\u00e9sum\u00e9 \u65e5\u672c"
    assert _printable("a\nb\r\x1b[1A\x7f\x9b") == "a\\x0ab\\x0d\\x1b[1A\\x7f\\x9b"
    assert _printable("\u202eevil\u2028\U000e0001") == "\\u202eevil\\u2028\\U000e0001"
    assert _printable("\ud800") == "\\ud800"  # a lone surrogate could not even be printed


def test_printable_doubles_a_backslash_so_that_an_escape_reads_back_one_way() -> None:
    """A name really holding the four characters ``\\x1b`` and a name holding ESC were both shown
    ``a\\x1b``: which file drifted could not be told from what was printed."""
    assert _printable("a\x1b") == "a\\x1b"
    assert _printable("a\\x1b") == "a\\\\x1b"
    assert _printable("C:\\tmp\\new") == "C:\\\\tmp\\\\new"  # printable otherwise: escaped all the same
    assert _printable("\\") == "\\\\"
    assert _printable('a\t\\t"', tabs=True) == 'a\t\\\\t"'
    shown = {_printable(name) for name in ("a\x1b", "a\\x1b", "a\\\x1b", "a\\\\x1b")}
    assert len(shown) == 4


def test_printable_message_escapes_controls_and_keeps_the_backslashes_of_its_quoted_values() -> None:
    """An error or a warning quotes its values already (repr, display_path): those are not escaped
    twice, and a line escaped twice is unchanged."""
    from graven.cli.output import printable_message

    name, path = "a\x1b", _printable("/srv/b\\x1b\n")
    line = f"invalid environment name {name!r} at {path}: \x1b[2Jgone"
    assert printable_message(line) == "invalid environment name 'a\\x1b' at /srv/b\\\\x1b\\x0a: \\x1b[2Jgone"
    assert printable_message(printable_message(line)) == printable_message(line)
    assert printable_message("caf\\xe9 \u202e") == "caf\\xe9 \\u202e"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0999-01-01", "0999-01-01T00:00:00.000000Z"),
        ("0001-01-01T05:00:00+01:00", "0001-01-01T04:00:00.000000Z"),
        ("2026-11-26T08:00:00Z", "2026-11-26T08:00:00.000000Z"),
        ("2026-11-26T09:00:00.5+01:00", "2026-11-26T08:00:00.500000Z"),
    ],
)
def test_since_is_utc_with_a_four_digit_year(value: str, expected: str) -> None:
    assert _since(value) == expected


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00", "soon", "10000-01-01"]
)
def test_since_out_of_range_or_malformed_is_an_input_error(value: str) -> None:
    with pytest.raises(InputError, match=r"^--since"):
        _since(value)
