"""Hostile review of the audit log's readers: a database whose checkpoints or origin were deleted is a
failed check (exit 1), never "nothing was logged yet" (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_audit_log import _append, _db

from conftest import assert_cli_error
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
