"""Review of the audit log: forged checkpoints, truncation, the log key, proofs and CLI input.

Every test tampers with the test home's graven.db through sqlite3, as an attacker with write access to
the database would, and checks that `graven log verify` (or `prove`, `consistency`) notices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audit_log import _append, _db

from conftest import assert_cli_error
from graven.core.merkle import CompactRange, leaf_hash
from graven.errors import IntegrityError, NotFoundError, VerificationError
from graven.home import Home
from graven.model.logentry import LogEntry, LogEvent
from graven.service.context import Context
from helpers_repo import run_cli
from helpers_services import unavailable


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(path))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_ACTOR", raising=False)
    return path


def _verify(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, _ = run_cli(capsys, "log", "verify", "--json", *extra)
    report: dict[str, Any] = json.loads(out)
    assert (code == 0) is report["ok"]
    return report


def _verify_fails(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """`graven log verify` exits 1 and ends with one summary line; return all of stderr."""
    code, out, err = run_cli(capsys, "log", "verify", *extra)
    assert code == 1 and out == "", (out, err)
    assert err.splitlines()[-1].startswith("graven: error: the audit log does not verify")
    assert "Traceback" not in err
    return err


def _one_line_error(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("graven: error: ") and "Traceback" not in err, err


def _roots(db: sqlite3.Connection) -> list[str]:
    """The roots recomputed from the entries: ``roots[n]`` is the root of the first n entries."""
    compact = CompactRange()
    roots = [compact.root().hex()]
    for (text,) in db.execute("SELECT entry FROM log_entries ORDER BY idx"):
        compact.append(leaf_hash(text.encode()))
        roots.append(compact.root().hex())
    return roots


def _rewrite_entry(db: sqlite3.Connection, index: int, reason: str) -> None:
    """Change an entry's reason and recompute its stored leaf hash, as a careful attacker would."""
    (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
    doc = json.loads(text)
    doc["reason"] = reason
    new = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    leaf = hashlib.sha256(b"\x00" + new.encode()).hexdigest()
    db.execute("UPDATE log_entries SET entry = ?, leaf_hash = ? WHERE idx = ?", (new, leaf, index))


def _rewrite_state(db: sqlite3.Connection) -> None:
    """Make log_state agree with the entries (an attacker can compute it)."""
    compact = CompactRange()
    for (text,) in db.execute("SELECT entry FROM log_entries ORDER BY idx"):
        compact.append(leaf_hash(text.encode()))
    frontier = ",".join(h.hex() for h in compact.hashes)
    db.execute("UPDATE log_state SET size = ?, frontier = ?", (compact.size, frontier))


# -- 1: the signed notes, not the root column ----------------------------------------------------------


def test_a_changed_last_entry_with_its_checkpoint_deleted_fails(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        _rewrite_entry(db, 8, "forged")
        db.execute("DELETE FROM log_checkpoints WHERE size = 9")
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 8
    assert any("not covered by the latest signed checkpoint" in p for p in report["problems"])
    assert "entries 8..8 are not covered" in _verify_fails(capsys)


def test_copied_notes_with_rewritten_root_columns_fail(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        _rewrite_entry(db, 4, "forged")
        roots = _roots(db)
        (note4,) = db.execute("SELECT note FROM log_checkpoints WHERE size = 4").fetchone()
        for size in range(5, 10):
            db.execute(
                "UPDATE log_checkpoints SET root = ?, note = ? WHERE size = ?", (roots[size], note4, size)
            )
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 4
    assert any("holds a signed note of 4 entries" in p for p in report["problems"])
    assert any(p.startswith("checkpoint 5: its note is signed for '4' entries") for p in report["problems"])
    # every copied note still carries a valid signature: --all-signatures compares their sizes too
    report = _verify(capsys, "--all-signatures")
    assert not report["ok"] and report["first_bad_index"] == 4


def test_a_forged_note_in_an_older_row_fails_without_all_signatures(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        _rewrite_entry(db, 2, "forged")
        roots = _roots(db)
        for size in range(3, 9):  # every row but the latest: only its note still names the true root
            db.execute("UPDATE log_checkpoints SET root = ? WHERE size = ?", (roots[size], size))
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 2
    assert "checkpoint 3: its signed root does not match the entries" in report["problems"][0]


def _forge_completely(home: Path) -> None:
    """Rewrite entry 2 of 9 and everything but the latest note's signature to agree with it: its leaf
    hash, every root column, the root line of every older note and the log state."""
    with _db(home) as db:
        true_roots = _roots(db)
        _rewrite_entry(db, 2, "forged")
        roots = _roots(db)
        for size in range(3, 10):
            (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = ?", (size,)).fetchone()
            if size < 9:  # without --all-signatures an older note's text head is all that is compared
                old, new = (base64.b64encode(bytes.fromhex(r[size])).decode() for r in (true_roots, roots))
                assert note.count(old) == 1
                note = note.replace(old, new)
            db.execute(
                "UPDATE log_checkpoints SET root = ?, note = ? WHERE size = ?", (roots[size], note, size)
            )
        _rewrite_state(db)


def test_a_complete_forgery_is_caught_by_the_latest_signature_alone(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entry 2, its leaf hash, every root column, the root line of every older (unsigned-checked) note
    and the log state all agree with the forgery: only the latest note's signature names the true root."""
    _append(home, 9)
    _forge_completely(home)
    report = _verify(capsys)
    assert not report["ok"]
    assert report["problems"] == [
        "the latest signed checkpoint (9) does not match the entries (first bad index at most 8)"
    ]
    assert report["first_bad_index"] == 8
    err = _verify_fails(capsys)
    assert "the latest signed checkpoint (9) does not match the entries (first bad index at most 8)" in err
    # the older notes' signatures no longer verify either
    problems = _verify(capsys, "--all-signatures")["problems"]
    assert [p.split(":")[0] for p in problems[:6]] == [f"checkpoint {n} does not verify" for n in range(3, 9)]
    assert problems[6:] == [
        "the latest signed checkpoint (9) does not match the entries (first bad index at most 8)"
    ]


def test_an_append_never_signs_a_forgery_that_only_the_latest_signature_catches(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The next append signs its checkpoint from the stored compact range: after a complete forgery,
    a checkpoint signed from it would cover the forged entry, and the whole forged log would verify."""
    _append(home, 9)
    _forge_completely(home)
    with _db(home) as db:
        notes = db.execute("SELECT size, note FROM log_checkpoints ORDER BY size").fetchall()
    refused = "does not lead to the root of its latest signed checkpoint"
    with Context(home=Home(root=home)) as ctx, pytest.raises(IntegrityError, match=refused):
        ctx.audit.check_ready()  # what a deployer asks before it switches
    with pytest.raises(IntegrityError, match="an append would sign a log that the log key never signed"):
        _append(home, 1)
    with _db(home) as db:
        assert db.execute("SELECT size, note FROM log_checkpoints ORDER BY size").fetchall() == notes
        assert db.execute("SELECT count(*) FROM log_entries").fetchone() == (9,)
    assert _verify(capsys)["problems"] == [
        "the latest signed checkpoint (9) does not match the entries (first bad index at most 8)"
    ]


@pytest.mark.parametrize("size", [4, 9, 10])
def test_an_append_never_signs_a_rewritten_compact_range(home: Path, size: int) -> None:
    """A log state whose compact range is of other entries (the log cut to its size first, or not, or
    one entry longer than the log) would have the key sign a root that someone else chose."""
    _append(home, 9)
    forged = CompactRange()
    for i in range(size):
        forged.append(leaf_hash(f"forged {i}".encode()))
    with _db(home) as db:
        db.execute("DELETE FROM log_entries WHERE idx >= ?", (size,))
        db.execute("DELETE FROM log_checkpoints WHERE size > ?", (size,))
        frontier = ",".join(h.hex() for h in forged.hashes)
        db.execute("UPDATE log_state SET size = ?, frontier = ?", (size, frontier))
        notes = db.execute("SELECT size, note FROM log_checkpoints ORDER BY size").fetchall()
    (home / "log" / "in-use").write_text("")  # not the high-water mark: the signed checkpoint refuses
    with pytest.raises(IntegrityError, match="an append would sign a log that the log key never signed"):
        _append(home, 1)
    with _db(home) as db:
        assert db.execute("SELECT size, note FROM log_checkpoints ORDER BY size").fetchall() == notes


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 20), data=st.data())
def test_any_bit_of_the_compact_range_changed_refuses_the_append(
    home: Path, size: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "home"
        _append(root, size)
        with _db(root) as db:
            (frontier,) = db.execute("SELECT frontier FROM log_state").fetchone()
            hashes = [bytearray(bytes.fromhex(h)) for h in frontier.split(",")]
            which = data.draw(st.integers(0, len(hashes) - 1), label="hash")
            bit = data.draw(st.integers(0, 255), label="bit")
            hashes[which][bit // 8] ^= 1 << bit % 8
            db.execute("UPDATE log_state SET frontier = ?", (",".join(h.hex() for h in hashes),))
        with pytest.raises(IntegrityError, match="does not lead to the root of its latest signed"):
            _append(root, 1)
        with _db(root) as db:
            assert db.execute("SELECT max(size) FROM log_checkpoints").fetchone() == (size,)


def test_an_append_after_a_latest_note_that_does_not_verify_is_refused(home: Path) -> None:
    _append(home, 3)
    with _db(home) as db:
        (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = 3").fetchone()
        db.execute("UPDATE log_checkpoints SET note = ? WHERE size = 3", (note.replace("\n3\n", "\n2\n"),))
    with pytest.raises(IntegrityError, match="latest checkpoint does not verify"):
        _append(home, 1)
    with _db(home) as db:
        db.execute("DELETE FROM log_checkpoints WHERE size = 3")
    with pytest.raises(IntegrityError, match="records 3 entries, its latest signed checkpoint 2"):
        _append(home, 1)


def test_an_entry_appended_without_a_checkpoint_fails(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 9)
    forged = LogEntry.of(
        LogEvent("deploy", env="prod"), index=9, time="2030-01-01T00:00:00.000000Z", actor="x"
    )
    with _db(home) as db:
        data = forged.to_bytes()
        db.execute(
            "INSERT INTO log_entries VALUES (?, ?, ?, ?, ?, ?, ?)",
            (9, data.decode(), leaf_hash(data).hex(), forged.time, "deploy", None, "prod"),
        )
        _rewrite_state(db)  # even with a consistent state, the latest signed size is 9
    report = _verify(capsys)
    assert not report["ok"] and report["size"] == 10 and report["first_bad_index"] == 9
    assert report["problems"] == [
        "entries 9..9 are not covered by the latest signed checkpoint (9 entries): entries were added "
        "or checkpoints removed"
    ]


def test_a_deleted_middle_checkpoint_and_a_bad_note_signature_are_reported(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 6)
    with _db(home) as db:
        db.execute("DELETE FROM log_checkpoints WHERE size = 3")
    report = _verify(capsys)
    assert not report["ok"] and report["checkpoints_checked"] == 5
    assert (
        "1 checkpoints are missing (graven signs one per entry), the first one of 3 entries"
        in (report["problems"])
    )
    with _db(home) as db:
        (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = 6").fetchone()
        body, sig = note.rsplit(" ", 1)
        flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
        db.execute("UPDATE log_checkpoints SET note = ? WHERE size = 6", (f"{body} {flipped}",))
    report = _verify(capsys)
    assert any(p.startswith("the latest checkpoint (6) does not verify") for p in report["problems"])


def test_checkpoint_rows_outside_the_log_are_reported(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 3)
    with _db(home) as db:
        (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = 3").fetchone()
        db.execute("INSERT INTO log_checkpoints VALUES (0, 'x', ?), (7, 'x', ?)", (note, note))
    report = _verify(capsys)
    assert report["problems"] == [
        "a checkpoint covers 7 entries but the log has only 3",
        "a checkpoint row has the size 0 (graven never signs an empty log)",
        "the latest checkpoint row (7) holds a signed note of 3 entries",
    ]


def test_an_untouched_log_verifies_with_all_signatures(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 7)
    report = _verify(capsys, "--all-signatures")
    assert report["ok"] and report["size"] == 7 and report["checkpoints_checked"] == 7
    assert report["more_problems"] == 0


def test_problems_are_capped(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 130)
    with _db(home) as db:
        db.execute("UPDATE log_checkpoints SET root = 'x'")
    report = _verify(capsys)
    assert len(report["problems"]) == 100 and report["more_problems"] > 0
    err = _verify_fails(capsys)
    assert "more problems" in err and len(err.splitlines()) == 22


# -- 2: truncation -------------------------------------------------------------------------------------


def test_truncating_entries_with_their_checkpoints_fails(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        db.execute("DELETE FROM log_entries WHERE idx >= 7")
        db.execute("DELETE FROM log_checkpoints WHERE size > 7")
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 7
    assert (
        report["problems"][0]
        == "the log state records 9 entries but only 7 are in the log: the log was truncated"
    )
    # and this home's high-water mark (log/in-use) says so too, whatever the state row says
    assert len(report["problems"]) == 2 and "but this home committed 9" in report["problems"][1]


def test_a_changed_compact_range_fails(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 5)
    with _db(home) as db:
        (frontier,) = db.execute("SELECT frontier FROM log_state").fetchone()
        changed = ("1" if frontier[0] != "1" else "2") + frontier[1:]
        db.execute("UPDATE log_state SET frontier = ?", (changed,))
    assert _verify(capsys)["problems"] == ["the log state's compact range does not match the entries"]


def test_emptying_the_log_fails_while_its_origin_or_key_remains(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        db.execute("DELETE FROM log_entries")
        db.execute("DELETE FROM log_checkpoints")
    report = _verify(capsys)
    assert not report["ok"] and report["size"] == 0 and report["first_bad_index"] == 0
    assert any("the log has no entries but the database has its origin" in p for p in report["problems"])
    with _db(home) as db:
        db.execute("DELETE FROM log_state")
        db.execute("DELETE FROM graven_meta WHERE key = 'log_origin'")
    report = _verify(capsys)
    assert report["problems"] == [f"the log has no entries but its key {home}/log/checkpoint.key exists"]
    for suffix in ("", "-wal", "-shm"):
        (home / f"graven.db{suffix}").unlink(missing_ok=True)
    report = _verify(capsys)
    key = f"{home}/log/checkpoint"
    assert report["problems"] == [f"the log's database is missing but its key {key}.key exists"]
    (home / "log" / "checkpoint.key").unlink()
    report = _verify(capsys)
    assert report["problems"] == [f"the log's database is missing but its key {key}.pub exists"]
    assert not (home / "graven.db").exists()
    # and a new log is not started over the lost one's public key
    with pytest.raises(NotFoundError, match=r"missing but its public key checkpoint\.pub exists"):
        _append(home, 1)
    (home / "log" / "checkpoint.pub").unlink()
    _append(home, 1)
    assert _verify(capsys)["ok"]


@pytest.mark.parametrize("how", ["truncate", "empty", "empty-and-forget", "delete-database"])
def test_consistency_with_a_kept_checkpoint_detects_truncation(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    _append(home, 9)
    old = tmp_path / "old.ckpt"
    old.write_text(run_cli(capsys, "log", "checkpoint")[1])
    with _db(home) as db:
        if how == "truncate":
            db.execute("DELETE FROM log_entries WHERE idx >= 6")
            db.execute("DELETE FROM log_checkpoints WHERE size > 6")
            _rewrite_state(db)
        elif how.startswith("empty"):
            db.execute("DELETE FROM log_entries")
            db.execute("DELETE FROM log_checkpoints")
            db.execute("DELETE FROM log_state")
            if how == "empty-and-forget":
                db.execute("DELETE FROM graven_meta WHERE key = 'log_origin'")
    if how == "delete-database":
        for suffix in ("", "-wal", "-shm"):
            (home / f"graven.db{suffix}").unlink(missing_ok=True)
    code, out, err = run_cli(capsys, "log", "consistency", str(old))
    assert code == 1 and out == "", err
    _one_line_error(err)
    assert "truncated" in err and "the old checkpoint has 9 entries" in err
    if how == "truncate":
        # a careful truncation (state rewritten) passed verify; this home's high-water mark sees it
        report = _verify(capsys)
        assert not report["ok"] and any("but this home committed 9" in p for p in report["problems"])


def test_consistency_rejects_a_checkpoint_of_another_key(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    _append(other, 3)
    with Context(home=Home(root=other)) as ctx:
        foreign = ctx.audit.signed_checkpoint()
    _append(home, 4)
    path = tmp_path / "foreign.ckpt"
    path.write_text(foreign)
    code, _, err = run_cli(capsys, "log", "consistency", str(path))
    assert code == 1 and "no signature by key" in err
    _one_line_error(err)


def test_consistency_names_entries_that_no_longer_match_the_latest_checkpoint(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 4)
    old = tmp_path / "old.ckpt"
    old.write_text(run_cli(capsys, "log", "checkpoint")[1])
    _append(home, 4)
    with _db(home) as db:
        _rewrite_entry(db, 6, "forged")
    code, _, err = run_cli(capsys, "log", "consistency", str(old))
    assert code == 1 and "do not match its latest signed checkpoint (8 entries)" in err
    _one_line_error(err)


# -- 3: the log key ------------------------------------------------------------------------------------


def test_a_missing_log_key_is_never_replaced(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 3)
    key = home / "log" / "checkpoint.key"
    saved = key.read_bytes()
    key.unlink()
    with pytest.raises(NotFoundError, match=r"^the log key .*checkpoint\.key is missing but the log already"):
        _append(home, 1)
    assert not key.exists()
    with _db(home) as db:
        assert db.execute("SELECT count(*) FROM log_entries").fetchone() == (3,)
    # verification needs only the public key
    assert _verify(capsys)["ok"]
    assert run_cli(capsys, "log", "prove", "1")[0] == 0
    assert run_cli(capsys, "log", "checkpoint", "--vkey")[0] == 0
    key.write_bytes(saved)
    key.chmod(0o600)
    _append(home, 1)
    assert _verify(capsys)["size"] == 4


def test_a_missing_key_with_only_an_origin_is_refused(home: Path) -> None:
    _append(home, 2)
    with _db(home) as db:
        db.execute("DELETE FROM log_entries")
        db.execute("DELETE FROM log_checkpoints")
        db.execute("DELETE FROM log_state")
    (home / "log" / "checkpoint.key").unlink()
    with pytest.raises(NotFoundError, match="is missing but the log already has entries"):
        _append(home, 1)


def test_a_lost_origin_or_state_is_refused_not_restarted(home: Path) -> None:
    _append(home, 2)
    with _db(home) as db:
        db.execute("DELETE FROM log_state")
    with pytest.raises(IntegrityError, match="origin or state is missing from the database") as info:
        _append(home, 1)
    assert info.value.exit_code == 1


def test_a_replaced_private_key_is_refused(home: Path) -> None:
    from graven.signing.keys import generate_key, write_private_key

    _append(home, 2)
    key = home / "log" / "checkpoint.key"
    key.unlink()
    write_private_key(key, generate_key("ed25519"))
    with pytest.raises(VerificationError, match=r"does not match checkpoint\.pub"):
        _append(home, 1)


def test_verify_without_any_key_reports_it(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 2)
    (home / "log" / "checkpoint.key").unlink()
    (home / "log" / "checkpoint.pub").unlink()
    report = _verify(capsys)
    assert not report["ok"]
    assert any(
        p.startswith("cannot check the checkpoint signatures: the log key is missing")
        for p in report["problems"]
    )


def test_a_damaged_public_key_is_named_not_blamed_on_the_checkpoint(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbage checkpoint.pub was reported as "the latest checkpoint is malformed", sending the
    operator to the database instead of to the key file."""
    _append(home, 2)
    (home / "log" / "checkpoint.pub").write_bytes(b"not a key\n")
    for command in (("log", "checkpoint"), ("log", "prove", "0")):
        code, out, err = run_cli(capsys, *command)
        assert code == 2 and out == "", (command, err)
        _one_line_error(err)
        assert "checkpoint.pub" in err and "checkpoint is malformed" not in err, err


def test_the_first_append_creates_both_key_files(home: Path) -> None:
    _append(home, 1)
    assert (home / "log" / "checkpoint.key").stat().st_mode & 0o777 == 0o600
    assert (home / "log" / "checkpoint.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


# -- 4: proofs are checked before they are printed ---------------------------------------------------


def test_prove_refuses_entries_that_do_not_lead_to_the_signed_root(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 9)
    with _db(home) as db:
        _rewrite_entry(db, 3, "forged")
        roots = _roots(db)
        for size in range(4, 10):
            db.execute("UPDATE log_checkpoints SET root = ? WHERE size = ?", (roots[size], size))
    for index in ("3", "0", "8"):
        code, out, err = run_cli(capsys, "log", "prove", index)
        assert code == 1 and out == "", (index, out)
        _one_line_error(err)
        assert "do not lead to the root of its latest signed checkpoint (9 entries)" in err


def test_checkpoint_refuses_a_note_that_does_not_verify(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 3)
    with _db(home) as db:
        (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = 3").fetchone()
        db.execute("UPDATE log_checkpoints SET note = ? WHERE size = 3", (note.replace("\n3\n", "\n4\n"),))
    code, out, err = run_cli(capsys, "log", "checkpoint")
    assert code == 1 and out == ""
    _one_line_error(err)


def test_prove_and_checkpoint_fail_when_the_origin_was_deleted(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 3)
    with _db(home) as db:
        db.execute("DELETE FROM graven_meta WHERE key = 'log_origin'")
    for args in (["log", "prove", "1"], ["log", "checkpoint"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 1 and out == "" and "the log origin is missing" in err, args
        _one_line_error(err)
    assert "the log origin is missing from the database (graven_meta log_origin)" in _verify_fails(capsys)


# -- 5: command-line input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["log", "export", "--since", "9223372036854775808"],
        ["log", "export", "--since", "-1"],
        ["log", "export", "--since", "1_0"],
        ["log", "--since", "0001-01-01T00:00:00+01:00"],
        ["log", "--since", "yesterday"],
        ["log", "prove", "1_0"],
        ["log", "prove", "-1"],
        ["log", "prove", "\u0661"],  # ARABIC-INDIC DIGIT ONE: int() would take it
        ["log", "prove", "99999999999999999999"],
    ],
)
def test_bad_log_input_is_one_line_and_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    _append(home, 12)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == "", (args, out, err)
    _one_line_error(err)


def test_export_since_the_largest_index_prints_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 3)
    assert run_cli(capsys, "log", "export", "--since", "9223372036854775807") == (0, "", "")
    code, out, _ = run_cli(capsys, "log", "export", "--since", "2")
    assert code == 0 and [json.loads(line)["index"] for line in out.splitlines()] == [2]


def test_export_gives_the_leaf_hash_of_each_entry_not_the_stored_column(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stored leaf_hash is derived data (verify names a wrong one): what export prints is the RFC
    9162 leaf hash of the entry it prints, the one `log prove` proves."""
    _append(home, 3)
    with _db(home) as db:
        db.execute("UPDATE log_entries SET leaf_hash = ? WHERE idx = 1", ("00" * 32,))
    code, out, _ = run_cli(capsys, "log", "export")
    assert code == 0
    stated = []
    for line in out.splitlines():
        doc = json.loads(line)
        stated.append(doc.pop("leaf_hash"))
        data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert stated[-1] == leaf_hash(data).hex(), doc["index"]
    assert json.loads(run_cli(capsys, "log", "prove", "1")[1])["leaf_hash"] == stated[1]


def test_since_a_year_before_1000_is_zero_padded(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 2)
    for since in ("0999-01-01", "0001-01-01T05:00:00+01:00", "0001-01-01"):
        code, out, _ = run_cli(capsys, "log", "--since", since, "--json")
        assert code == 0 and len(json.loads(out)) == 2, since
    code, out, _ = run_cli(capsys, "log", "--since", "9999-12-31T23:59:59Z", "--json")
    assert code == 0 and json.loads(out) == []


# -- 6: control characters in the human output ---------------------------------------------------------


def test_actor_and_reason_cannot_fake_rows_or_drive_the_terminal(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = "mallory\n99  2026-01-01 00:00:00  deploy  -  prod  ok  alice@ci\x1b[2K\x1b[1A\u202e"
    monkeypatch.setenv("GRAVEN_ACTOR", fake)
    with Context(home=Home(root=home)) as ctx:
        ctx.audit.record(LogEvent("deploy", env="prod", reason="line1\r\nline2\x07\x9b"))
    code, out, _ = run_cli(capsys, "log")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2  # the header and one row
    assert not any(ch in out for ch in "\x1b\r\x07\x9b\u202e")
    assert "mallory\\x0a99" in lines[1] and "\\x1b[2K" in lines[1] and "\\u202e" in lines[1]
    assert "line1\\x0d\\x0aline2\\x07\\x9b" in lines[1]
    code, out, _ = run_cli(capsys, "log", "--json")
    (entry,) = json.loads(out)
    assert entry["actor"] == fake and entry["reason"] == "line1\r\nline2\x07\x9b"


# -- 7: nothing is created by reading ------------------------------------------------------------------


def test_verify_on_an_empty_home_creates_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "log", "verify")
    assert (code, err) == (0, "") and out == "ok: the audit log is empty (nothing was logged yet)\n"
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 0 and report["problems"] == []
    for args in (["log", "checkpoint"], ["log", "checkpoint", "--vkey"], ["log", "prove", "0"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == "" and "nothing was logged yet" in err, args
        _one_line_error(err)
    assert run_cli(capsys, "log") == (0, "the audit log has no matching entries\n", "")
    assert run_cli(capsys, "log", "export") == (0, "", "")
    assert not home.exists()


def test_a_lost_database_does_not_start_a_new_log_under_the_old_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new log signed with the old key would verify, and hide that the old one is gone. The key
    counts as used once a transaction that appended with it committed (log/in-use)."""
    _append(home, 3)
    assert (home / "log" / "in-use").is_file()
    for suffix in ("", "-wal", "-shm"):
        (home / f"graven.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(IntegrityError, match=r"the audit log is empty but its key .* has signed entries"):
        _append(home, 1)
    report = _verify(capsys)
    assert not report["ok"]
    code, out, err = run_cli(capsys, "log")
    assert code == 1 and out == "" and "the audit log is empty but its key" in err, (out, err)
    code, _, err = run_cli(capsys, "keys", "generate", "--name", "second")
    assert code == 1 and "restore it from a backup" in err and "move" in err, err
    # the refused trust left no key behind: a build would otherwise sign with an untrusted key
    assert not list((home / "keys").glob("second.*"))


def test_a_home_without_the_mark_gets_it_from_a_verify_and_then_notices_a_lost_database(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upgrade review: a home written by a graven before log/in-use, its database lost before the
    next append, started a new log under the old key without a word. A verify that finds the log
    whole now writes the mark."""
    _append(home, 3)
    (home / "log" / "in-use").unlink()  # as a graven before the mark left the home
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 3
    assert (home / "log" / "in-use").read_text().startswith("3 ")
    for suffix in ("", "-wal", "-shm"):
        (home / f"graven.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(IntegrityError, match=r"the audit log is empty but its key .* has signed entries"):
        _append(home, 1)


def test_a_verify_by_another_user_writes_no_mark_in_the_home(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: root's `graven log verify` made log/in-use as root, 0600, and the home's owner could
    then not read its own mark (every append and verify failed). The other user may read the home,
    not write it (one who could is refused: graven.home.check_home)."""
    _append(home, 2)
    (home / "log" / "in-use").unlink()
    monkeypatch.setattr("graven.service.audit.os.geteuid", lambda: os.stat(home / "log").st_uid + 1)
    access = os.access
    monkeypatch.setattr(
        "graven.home.os.access", lambda path, mode: False if mode & os.W_OK else access(path, mode)
    )
    report = _verify(capsys)
    assert report["ok"]
    assert not (home / "log" / "in-use").exists()


def test_another_user_verifies_a_shared_home_whose_mark_only_its_owner_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: a home shared for reading (an auditor's `graven log verify`) failed whenever it had a
    mark, as every home has after its first entry: log/in-use is its owner's, 0600, and the reader was
    told the log "does not verify (first bad index N)" and to give the file back "(a sudo run may have
    taken it)". The reader cannot make that one check; the log itself verifies, with a warning."""
    if os.geteuid() != 0:
        unavailable("needs root, to read a home as another user")
    import shutil

    from helpers_deploy import exit_code_as_nobody

    shared = Path(tempfile.mkdtemp(prefix="graven-review-"))  # SQLite opens the real path: one nobody
    try:  # can walk (the test's own directory is root's, 0700)
        shared.chmod(0o755)
        _another_user_verifies(shared / "home", monkeypatch, exit_code_as_nobody)
    finally:
        shutil.rmtree(shared)


def _another_user_verifies(home: Path, monkeypatch: pytest.MonkeyPatch, as_nobody: Any) -> None:
    _append(home, 3)
    assert (home / "log" / "in-use").stat().st_mode & 0o777 == 0o600
    for directory in (home, home / "log"):
        directory.chmod(0o755)  # shared for reading (graven makes both 0700)
    monkeypatch.chdir(home)  # nobody cannot walk to the test's directory: /proc/self/cwd is the home
    warnings: list[str] = []

    class Warnings:
        def warn(self, message: str) -> None:
            warnings.append(message)

        def progress(self, stage: str, done: int, total: int | None) -> None:
            pass

    def verify() -> int:
        with Context(home=Home(root=Path("/proc/self/cwd")), reporter=Warnings()) as ctx:
            report = ctx.audit.verify()
        if not report.ok:
            print(report.problems)
            return 3
        if report.size != 3 or len(warnings) != 1:
            return 4
        return 0 if "cannot read /proc/self/cwd/log/in-use (Permission denied)" in warnings[0] else 5

    assert as_nobody(verify) == 0
    assert (home / "log" / "in-use").read_text().startswith("3 ")
    # its owner's verify still checks the mark: a rolled-back database is found
    (home / "log" / "in-use").write_text((home / "log" / "in-use").read_text().replace("3 ", "9 ", 1))
    with Context(home=Home(root=home)) as ctx:
        assert not ctx.audit.verify().ok


def test_a_mark_root_makes_in_another_users_home_is_that_users(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review: a root append (sudo graven build) or verify in a home that has no mark yet made it
    root's, 0600, and the owner's next append could not read it. Root gives it to the owner."""
    if os.geteuid() != 0:
        unavailable("needs root, to own a home as another user")
    _append(home, 2)
    (home / "log" / "in-use").unlink()
    os.chown(home / "log", 65534, 65534)
    try:
        _append(home, 1)  # as root
        st = os.stat(home / "log" / "in-use")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        (home / "log" / "in-use").unlink()
        assert _verify(capsys)["ok"]
        assert os.stat(home / "log" / "in-use").st_uid == 65534
        # a hard link the owner put there to a file of root's is written, never given away
        (home / "log" / "in-use").unlink()
        roots = home.parent / "roots-file"
        roots.write_text("")
        roots.chmod(0o600)
        os.link(roots, home / "log" / "in-use")
        _append(home, 1)
        assert os.stat(roots).st_uid == 0
    finally:
        os.chown(home / "log", 0, 0)


def _failed_transaction(home: Path, appends: int) -> None:
    """A command whose transaction appends ``appends`` entries, then fails before its commit."""
    from graven.errors import BackendError
    from graven.home import Home
    from graven.model.logentry import LogEvent
    from graven.service.context import Context

    with Context(home=Home(root=home)) as ctx, pytest.raises(BackendError), ctx.db.begin() as conn:
        for i in range(appends):
            ctx.audit.append(conn, LogEvent("deploy", env="x", reason=f"try {i}"))
        raise BackendError("disk full at commit")


def test_entries_that_never_committed_do_not_lock_the_home(home: Path) -> None:
    """The first command of a home makes the log key, then fails before its transaction commits (a full
    disk, say); so does the next, which appends twice (a build: build and sign) and sees its own first
    row: the key has signed nothing that exists, and a later command starts the log with it."""
    _failed_transaction(home, 1)
    assert (home / "log" / "checkpoint.key").is_file()
    _failed_transaction(home, 2)
    assert not (home / "log" / "in-use").exists()
    _append(home, 2)  # not refused
    assert (home / "log" / "in-use").is_file()


def test_a_database_rolled_back_to_an_older_backup_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a restored older database verified, and the next command signed a fork of what this
    home had committed: only an auditor's kept checkpoint could tell. log/in-use now keeps the largest
    size this home committed (its high-water mark)."""
    import shutil

    _append(home, 3)
    backup = home.parent / "backup.db"
    db = sqlite3.connect(home / "graven.db")
    try:  # a consistent copy, as a backup tool makes
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM INTO ?", (str(backup),))
    finally:
        db.close()
    _append(home, 2)
    assert (home / "log" / "in-use").read_text().split()[0] == "5"
    for suffix in ("-wal", "-shm"):
        (home / f"graven.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, home / "graven.db")
    with pytest.raises(IntegrityError, match=r"the audit log has 3 entries, but this home committed 5"):
        _append(home, 1)
    err = _verify_fails(capsys)
    assert "this home committed 5" in err, err


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_high_water_mark_that_cannot_be_kept_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """log/in-use as a symlink or a directory silently switched the high-water mark off (writes never
    follow a link)."""
    _append(home, 2)
    in_use = home / "log" / "in-use"
    in_use.unlink()
    if kind == "symlink":
        (home / "elsewhere").write_text("2 x\n")
        in_use.symlink_to(home / "elsewhere")
    else:
        in_use.mkdir()
    with pytest.raises(IntegrityError, match="is not a file"):
        _append(home, 1)
    assert "is not a file" in _verify_fails(capsys)


def test_a_high_water_mark_that_cannot_be_read_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log/in-use left root's by a sudo run read as no mark at all: a rolled-back log verified and
    the next append signed a fork."""
    import builtins

    _append(home, 2)
    in_use = str(home / "log" / "in-use")
    real_open = builtins.open

    def unreadable(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == in_use:
            raise PermissionError(13, "Permission denied", in_use)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", unreadable)
    with pytest.raises(IntegrityError, match=r"cannot read .*in-use"):
        _append(home, 1)


@pytest.mark.parametrize("damaged", ["nonsense", "12", "١٢ graven.invalid/log/x", "3 a b"])
def test_a_damaged_mark_is_reported_never_read_as_zero(
    home: Path, capsys: pytest.CaptureFixture[str], damaged: str
) -> None:
    """An architecture review: anything but "SIZE ORIGIN" in log/in-use was read as 0, which turned the
    check of a rolled-back database off without a word. Empty (an operator starting the mark again)
    still means 0; anything else is reported, refuses appends, and is never written over."""
    _append(home, 3)
    mark = home / "log" / "in-use"
    mark.write_text(damaged)
    with pytest.raises(IntegrityError, match=r"in-use is damaged: it should hold this home's high-water"):
        _append(home, 1)
    assert mark.read_text() == damaged
    report = _verify(capsys)
    assert not report["ok"] and any("in-use is damaged" in p for p in report["problems"]), report
    assert mark.read_text() == damaged
    mark.write_text("")
    _append(home, 1)
    assert mark.read_text().startswith("4 ")


def test_one_process_checks_each_signature_once_and_still_sees_a_state_changed_meanwhile(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process appending many entries checks the latest note once: after that, the state and note in
    the database are byte for byte those it signed itself. A state someone rewrote between two of its
    appends is not that, and is checked (and refused) as by a process of its own."""
    from graven.core import checkpoint
    from graven.service import audit

    _append(home, 3)
    checked: list[str] = []
    real = checkpoint.verify_checkpoint

    def counting(note: str, *args: Any, **kwargs: Any) -> Any:
        checked.append(note)
        return real(note, *args, **kwargs)

    monkeypatch.setattr(audit, "verify_checkpoint", counting)
    with Context(home=Home(root=home)) as ctx:
        for i in range(5):
            ctx.audit.record(LogEvent("deploy", env="prod", reason=f"r{i}"))
        assert len(checked) == 1  # the note of size 3, left by another process
        with _db(home) as db:
            (frontier,) = db.execute("SELECT frontier FROM log_state").fetchone()
            forged = bytearray(bytes.fromhex(frontier.split(",")[0]))
            forged[0] ^= 1
            db.execute(
                "UPDATE log_state SET frontier = ?", (",".join([forged.hex(), *frontier.split(",")[1:]]),)
            )
        with pytest.raises(IntegrityError, match="does not lead to the root of its latest signed"):
            ctx.audit.record(LogEvent("deploy", env="prod", reason="after the forgery"))
    assert len(checked) == 2
    with _db(home) as db:
        assert db.execute("SELECT max(size) FROM log_checkpoints").fetchone() == (8,)


def test_a_log_key_pair_another_process_writes_meanwhile_is_used(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes making the first entry of a log at once: the other one writes the key pair between
    this one's look for the private key and its look for the public key. That pair is the log's key,
    not a private key "missing" beside its public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from graven.signing.keys import generate_key, write_private_key, write_public_key

    theirs = generate_key("ed25519")
    assert isinstance(theirs.private, Ed25519PrivateKey)
    key_path = home / "log" / "checkpoint.key"
    real_exists = Path.exists
    looked: list[Path] = []

    def exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        if self == key_path and not looked:
            looked.append(self)  # the first look: missing, then the other process writes both files
            answer = real_exists(self)
            key_path.parent.mkdir(parents=True, exist_ok=True)
            write_private_key(key_path, theirs)
            write_public_key(key_path.with_suffix(".pub"), theirs)
            return answer
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    _append(home, 1)
    monkeypatch.undo()
    assert looked
    assert _verify(capsys)["ok"]
    with Context(home=Home(root=home)) as ctx:
        assert ctx.audit.public_key().public_bytes_raw() == theirs.private.public_key().public_bytes_raw()


# -- a number column that holds text (SQLite keeps whatever is written in a BIGINT column) --------------


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE log_state SET size = 'abc'",
        "UPDATE log_entries SET idx = 'abc' WHERE idx = 256",
        "UPDATE log_checkpoints SET size = 'abc' WHERE size = 257",
        "UPDATE log_subtrees SET level = 'x'",
        "UPDATE log_subtrees SET idx = 'x'",
    ],
)
def test_text_in_a_number_column_fails_verify_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    _append(home, 257)  # a stored subtree row (level 8, index 0)
    assert _verify(capsys)["ok"]
    with _db(home) as db:
        db.execute(tamper)
    line = assert_cli_error(run_cli(capsys, "log", "verify"), 1, "damaged", "not an integer")
    assert "'abc'" in line or "'x'" in line


def test_an_append_after_text_in_the_state_size_is_refused_in_one_line(home: Path) -> None:
    _append(home, 3)
    with _db(home) as db:
        db.execute("UPDATE log_state SET size = 'abc'")
    with pytest.raises(IntegrityError, match="not an integer"):
        _append(home, 1)
