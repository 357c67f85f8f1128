"""Hostile review of the audit log's readers: a database whose checkpoints or origin were deleted is a
failed check (exit 1), never "nothing was logged yet" (exit 2); a kept checkpoint that fails
`graven log consistency` is named in one escaped, shortened line whatever its origin holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_log import _append, _db

from conftest import assert_cli_error
from graven.core.checkpoint import Checkpoint, sign_checkpoint
from helpers_repo import run_cli

Capsys = pytest.CaptureFixture[str]


@pytest.mark.parametrize("args", [["log", "prove", "3"], ["log", "checkpoint"]])
def test_a_log_whose_checkpoints_were_deleted_is_a_failed_check_not_an_empty_log(
    home: Path, capsys: Capsys, args: list[str]
) -> None:
    """Deleting every checkpoint row of a log with entries made `prove` and `checkpoint` say "the audit
    log is empty: nothing was logged yet" with exit 2 (bad input), hiding a damaged database."""
    _append(home, 6)
    with _db(home) as db:
        db.execute("DELETE FROM log_checkpoints")
    line = assert_cli_error(run_cli(capsys, *args), 1, "no signed checkpoint", "graven log verify")
    assert "nothing was logged" not in line


def test_the_verifier_key_of_a_log_that_lost_its_origin_is_a_failed_check(home: Path, capsys: Capsys) -> None:
    """`graven log checkpoint --vkey` of a log with entries and no origin said the log was empty (exit 2)."""
    _append(home, 3)
    with _db(home) as db:
        db.execute("DELETE FROM graven_meta WHERE key = 'log_origin'")
    line = assert_cli_error(run_cli(capsys, "log", "checkpoint", "--vkey"), 1, "the log origin is missing")
    assert "nothing was logged" not in line


def _foreign_note(origin: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return sign_checkpoint(Checkpoint(origin, 2, bytes(32)), origin, key)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_kept_checkpoint_that_fails_is_named_in_one_escaped_shortened_line(
    home: Path, tmp_path: Path, capsys: Capsys, as_json: bool
) -> None:
    """The failure of `log consistency` was written raw: an origin holding U+202E or a C1 control (which
    a note may hold) reached the terminal as it was, and one of 100,000 characters made a 100 KB line."""
    _append(home, 3)
    kept = tmp_path / "kept.ckpt"
    extra = ["--json"] if as_json else []
    for origin in ("evil\u202egol/\x9b31m", "o" * 100_000):
        kept.write_bytes(_foreign_note(origin).encode())
        code, out, err = run_cli(capsys, "log", "consistency", str(kept), *extra)
        assert code == 1 and "Traceback" not in err, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
        assert len(lines[0]) < 1200 and lines[0].isprintable(), lines[0][:300]
        if as_json:
            doc = json.loads(out)
            assert doc["ok"] is False and doc["error"]["exit_code"] == 1
        else:
            assert out == ""
