"""The audit log's stored subtree hashes (log_subtrees): proofs read O(log n) of them and come out as the
list-based ones did; a wrong one makes the proofs that use it come from the entries (with a warning),
`log verify` names it and `log verify --repair` rewrites it; a missing one is computed; a database of
the previous schema is filled once by its upgrade."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from graven.core.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from graven.home import Home
from graven.model.logentry import LogEvent
from graven.service.audit import AuditLog
from graven.service.context import Context
from helpers_repo import run_cli

SIZE = 3000  # 11 stored subtrees of 256 entries; the rest of the proofs come from the entries
Capsys = pytest.CaptureFixture[str]


def _append(home: Path, count: int, db_url: str | None = None) -> None:
    """``count`` entries, in one transaction (each still its own append and signed checkpoint)."""
    with Context(home=Home(root=home, db_url_override=db_url)) as ctx, ctx.db.begin() as conn:
        for i in range(count):
            ctx.audit.append(conn, LogEvent("deploy", env=f"env{i % 3}", reason=f"r{i}"))


@pytest.fixture(scope="module")
def made_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("subtrees") / "home"
    _append(path, SIZE)
    return path


@pytest.fixture
def log_home(made_log: Path, home: Path) -> Path:
    """A copy of the module's log of SIZE entries as this test's GRAVEN_HOME."""
    shutil.copytree(made_log, home)
    return home


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "graven.db", isolation_level=None)


def _leaves(home: Path) -> list[bytes]:
    with _db(home) as db:
        return [leaf_hash(e.encode()) for (e,) in db.execute("SELECT entry FROM log_entries ORDER BY idx")]


def _subtrees(home: Path) -> dict[tuple[int, int], str]:
    with _db(home) as db:
        return {(lv, i): h for lv, i, h in db.execute("SELECT level, idx, hash FROM log_subtrees")}


def _note(home: Path, size: int) -> str:
    with _db(home) as db:
        (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = ?", (size,)).fetchone()
    return str(note)


def _verify(capsys: Capsys) -> dict[str, Any]:
    code, out, _ = run_cli(capsys, "log", "verify", "--json")
    report: dict[str, Any] = json.loads(out)
    assert (code == 0) is report["ok"]
    return report


def _expected_rows(leaves: list[bytes]) -> dict[tuple[int, int], str]:
    return {(8, i): root_hash(leaves[i * 256 : (i + 1) * 256]).hex() for i in range(len(leaves) // 256)}


def _no_full_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proofs that check out never read the whole log (only a failure does, to say what is wrong)."""

    def refuse(*_args: object) -> None:
        raise AssertionError("the whole log was read")

    monkeypatch.setattr(AuditLog, "_leaf_hashes", refuse)


def test_proofs_from_stored_subtrees_are_the_list_based_proofs(
    log_home: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = _leaves(log_home)
    assert _subtrees(log_home) == _expected_rows(leaves)  # written by the appends themselves
    _no_full_read(monkeypatch)
    rng = random.Random(19)
    indices = {0, 1, 255, 256, 257, 1023, 2047, 2048, SIZE - 2, SIZE - 1, *rng.sample(range(SIZE), 25)}
    with Context(home=Home(root=log_home)) as ctx:
        for index in sorted(indices):
            proof = ctx.audit.prove(index)
            assert proof["leaf_hash"] == leaves[index].hex()
            assert proof["proof"] == [h.hex() for h in inclusion_proof(leaves, index)], index
        for old in sorted({1, 2, 255, 256, 257, 1024, 2049, SIZE - 1, SIZE, *rng.sample(range(1, SIZE), 10)}):
            result = ctx.audit.consistency(_note(log_home, old))
            assert result["proof"] == [h.hex() for h in consistency_proof(leaves, old)], old
            assert result["old_root"] == root_hash(leaves[:old]).hex()
    code, out, _ = run_cli(capsys, "log", "prove", "1234")
    assert code == 0 and json.loads(out)["proof"] == [h.hex() for h in inclusion_proof(leaves, 1234)]
    assert _verify(capsys) | {"problems": None} == {
        "ok": True,
        "size": SIZE,
        "root": root_hash(leaves).hex(),
        "checkpoints_checked": SIZE,
        "first_bad_index": None,
        "problems": None,
        "more_problems": 0,
    }


FORGED = hashlib.sha256(b"forged").hexdigest()
FALLBACK = (
    "graven: warning: the audit log's stored subtree hash of entries 768..1023 (level 8, index 3) does not "
    "match its entries: this proof was made from the entries instead (the whole log read); `graven log "
    "verify --repair` rewrites the stored hashes\n"
)


def _forge(home: Path, level: int = 8, idx: int = 3) -> None:
    with _db(home) as db:
        db.execute("UPDATE log_subtrees SET hash = ? WHERE level = ? AND idx = ?", (FORGED, level, idx))


def _check_inclusion(out: str, leaves: list[bytes], index: int) -> None:
    """The printed proof verifies on its own against the root of the entries (the signed one)."""
    proof = json.loads(out)
    assert proof["tree_size"] == len(leaves) and proof["root"] == root_hash(leaves).hex()
    assert proof["leaf_hash"] == leaves[index].hex()
    verify_inclusion(
        leaves[index], index, len(leaves), [bytes.fromhex(h) for h in proof["proof"]], root_hash(leaves)
    )
    assert proof["proof"] == [h.hex() for h in inclusion_proof(leaves, index)]


def _check_consistency(result: dict[str, Any], leaves: list[bytes], old: int) -> None:
    proof = [bytes.fromhex(h) for h in result["proof"]]
    verify_consistency(old, len(leaves), proof, root_hash(leaves[:old]), root_hash(leaves))
    assert result["proof"] == [h.hex() for h in consistency_proof(leaves, old)]
    assert (result["old_root"], result["new_root"]) == (
        root_hash(leaves[:old]).hex(),
        root_hash(leaves).hex(),
    )


def test_a_wrong_stored_subtree_hash_gives_proofs_from_the_entries_with_one_warning_and_verify_names_it(
    log_home: Path, tmp_path: Path, capsys: Capsys
) -> None:
    """A wrong row used to fail every proof that read it until the database was edited by hand; the
    proof is made from the entries instead, checked against the signed root, and says so once."""
    leaves = _leaves(log_home)
    _forge(log_home)
    code, out, err = run_cli(capsys, "log", "prove", "5")  # its path holds entries 512..1023
    assert code == 0 and err == FALLBACK
    _check_inclusion(out, leaves, 5)
    code, out, err = run_cli(capsys, "log", "prove", "800")  # inside that subtree: its path is elsewhere
    assert code == 0 and err == ""
    _check_inclusion(out, leaves, 800)
    old = tmp_path / "old.ckpt"
    old.write_text(_note(log_home, 1024))
    code, out, err = run_cli(capsys, "log", "consistency", str(old))
    assert (code, err) == (0, FALLBACK) and "fork" not in err
    assert (
        out == "ok: the checkpoint of 1024 entries is a prefix of the log (3000 entries); proof: 2 hashes\n"
    )
    code, out, err = run_cli(capsys, "log", "consistency", "--json", str(old))
    assert (code, err) == (0, FALLBACK)
    result = json.loads(out)
    assert result["ok"] is True and (result["old_size"], result["new_size"]) == (1024, SIZE)
    _check_consistency(result, leaves, 1024)
    assert _subtrees(log_home)[(8, 3)] == FORGED  # proving is a read: nothing was written
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] is None  # no entry is bad
    assert report["problems"] == [
        "the stored subtree hash of entries 768..1023 (level 8, index 3) does not match the entries"
    ]
    assert "repair" not in report  # only asked for with --repair
    code, out, err = run_cli(capsys, "log", "verify")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "the stored subtree hash of entries 768..1023 (level 8, index 3) does not match the entries",
        "the stored subtree hashes are derived from the entries: `graven log verify --repair` rewrites them",
        "graven: error: the audit log does not verify",
    ]


def test_log_verify_repair_rewrites_the_rows_in_one_logged_change_and_proofs_read_them_again(
    log_home: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = _leaves(log_home)
    _forge(log_home)
    _forge(log_home, 16, 0)  # no such node in 3000 entries: stray, as the level-3 row
    with _db(log_home) as db:
        db.execute("DELETE FROM log_subtrees WHERE level = 8 AND idx = 7")  # missing: added back
        db.execute("INSERT INTO log_subtrees (level, idx, hash) VALUES (3, 0, ?), (16, 0, ?)", (FORGED,) * 2)
    code, out, err = run_cli(capsys, "log", "verify", "--repair", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["ok"] and report["size"] == SIZE + 1 and report["problems"] == []  # verified again, after
    assert report["repair"] == {
        "ok": True,
        "size": SIZE,
        "rewritten": 1,
        "added": 1,
        "removed": 2,
        "entry": SIZE,
        "error": None,
    }
    assert _subtrees(log_home) == _expected_rows(leaves)
    with Context(home=Home(root=log_home)) as ctx:
        ((entry, _),) = ctx.audit.entries(since_index=SIZE)
    assert (entry.event, entry.result, entry.env, entry.artifact) == ("log-repaired", "ok", None, None)
    assert entry.reason == (
        "stored subtree hashes recomputed from the 3000 entries of the latest signed checkpoint: 1 "
        "rewritten (level 8, index 3), 1 added, 2 removed (level 3, index 0; level 16, index 0)"
    )
    leaves = _leaves(log_home)
    old = tmp_path / "old.ckpt"
    old.write_text(_note(log_home, 1024))
    with monkeypatch.context() as patched:
        _no_full_read(patched)  # the proofs read the rows again: no fallback
        code, out, err = run_cli(capsys, "log", "prove", "5")
        assert (code, err) == (0, "")
        _check_inclusion(out, leaves, 5)
        code, out, err = run_cli(capsys, "log", "consistency", "--json", str(old))
        assert (code, err) == (0, "")
        _check_consistency(json.loads(out), leaves, 1024)
    code, out, err = run_cli(capsys, "log", "verify", "--repair")  # nothing to do: nothing written
    assert (code, err) == (0, "")
    assert out == f"ok: {SIZE + 1} entries, {SIZE + 1} checkpoints, root {root_hash(leaves).hex()}\n"
    assert len(_leaves(log_home)) == SIZE + 1


def test_log_verify_repair_says_what_it_did(log_home: Path, capsys: Capsys) -> None:
    _forge(log_home)
    code, out, err = run_cli(capsys, "log", "verify", "--repair")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "repaired the stored subtree hashes: 1 wrong rewritten, 0 missing added, 0 stray removed (recomputed "
        "from the 3000 entries of the latest signed checkpoint; logged as entry 3000)",
        f"ok: 3001 entries, 3001 checkpoints, root {root_hash(_leaves(log_home)).hex()}",
    ]


def test_a_changed_entry_still_fails_the_proofs_and_repair_never_rewrites_from_it(
    log_home: Path, tmp_path: Path, capsys: Capsys
) -> None:
    """Repair fixes derived rows, never history: entries that do not lead to the signed root are what is
    wrong, and the stored rows (still those of the signed entries) stay as evidence."""
    with _db(log_home) as db:
        (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = 5").fetchone()
        changed = text.replace('"reason":"r5"', '"reason":"r6"')
        assert changed != text
        db.execute(  # its leaf hash column too: only the signed checkpoints hold against this
            "UPDATE log_entries SET entry = ?, leaf_hash = ? WHERE idx = 5",
            (changed, leaf_hash(changed.encode()).hex()),
        )
    _forge(log_home)
    rows = _subtrees(log_home)
    code, out, err = run_cli(capsys, "log", "prove", "5")
    assert (code, out) == (1, "")
    assert err == (
        "graven: error: the log's entries do not lead to the root of its latest signed checkpoint "
        "(3000 entries): no proof for entry 5; run `graven log verify`\n"
    )
    old = tmp_path / "old.ckpt"
    old.write_text(_note(log_home, 1024))
    code, _, err = run_cli(capsys, "log", "consistency", str(old))
    assert (code, err) == (
        1,
        "graven: error: the log's entries do not match its latest signed checkpoint (3000 entries); run "
        "`graven log verify`\n",
    )
    not_repaired = (
        "the log's entries do not lead to the root of its latest signed checkpoint (3000 entries): the "
        "entries themselves are damaged, and no stored hash is rewritten from them"
    )
    code, out, err = run_cli(capsys, "log", "verify", "--repair", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["first_bad_index"] == 5
    assert report["repair"] == {
        "ok": False,
        "size": SIZE,
        "rewritten": 0,
        "added": 0,
        "removed": 0,
        "entry": None,
        "error": not_repaired,
    }
    code, out, err = run_cli(capsys, "log", "verify", "--repair")
    assert (code, out) == (1, "")
    assert err.splitlines()[-2:] == [
        f"the stored subtree hashes were not repaired: {not_repaired}",
        "graven: error: the audit log does not verify (first bad index 5)",
    ]
    assert _subtrees(log_home) == rows and len(_leaves(log_home)) == SIZE  # nothing written, nothing logged


def test_a_read_only_home_proves_from_the_entries_and_its_repair_writes_nothing(
    log_home: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prove is a read: a home this user cannot write (an auditor's copy) still gets its proof. Only
    --repair writes, and it says in one line why it could not."""
    import os

    leaves = _leaves(log_home)
    _forge(log_home)
    real_access = os.access

    def cannot_make_shm(raw: sqlite3.Connection) -> None:  # as in a directory this user cannot write
        raise sqlite3.OperationalError("attempt to write a readonly database")

    with monkeypatch.context() as patched:
        patched.setattr(
            "graven.db.os.access", lambda p, mode: False if str(p) == str(log_home) else real_access(p, mode)
        )
        patched.setattr("graven.db._set_wal", cannot_make_shm)
        code, out, err = run_cli(capsys, "log", "prove", "5")
        assert (code, err) == (0, FALLBACK)
        _check_inclusion(out, leaves, 5)
        code, out, err = run_cli(capsys, "log", "verify", "--repair")
        assert (code, out) == (1, "")
        assert err.splitlines()[-2].startswith(
            "the stored subtree hashes were not repaired: cannot write the "
        )
        assert "directory is read-only for this user" in err.splitlines()[-2]
    assert _subtrees(log_home)[(8, 3)] == FORGED and len(_leaves(log_home)) == SIZE


def test_missing_subtree_rows_are_computed_and_stray_ones_reported(
    log_home: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = _leaves(log_home)
    with _db(log_home) as db:
        db.execute("DELETE FROM log_subtrees WHERE idx IN (0, 3, 7)")
        db.execute("UPDATE log_subtrees SET hash = 'not hex' WHERE idx = 5")
    with Context(home=Home(root=log_home)) as ctx, monkeypatch.context() as patched:
        _no_full_read(patched)
        for index in (5, 800, 1500, SIZE - 1):
            assert ctx.audit.prove(index)["proof"] == [h.hex() for h in inclusion_proof(leaves, index)]
        result = ctx.audit.consistency(_note(log_home, 256))
        assert result["proof"] == [h.hex() for h in consistency_proof(leaves, 256)]
    report = _verify(capsys)  # the deleted rows are no problem (they are computed when needed)
    assert report["size"] == SIZE and report["problems"] == [
        "the stored subtree hash of entries 1280..1535 (level 8, index 5) does not match the entries"
    ]
    with _db(log_home) as db:
        db.execute("UPDATE log_subtrees SET hash = ? WHERE idx = 5", (_expected_rows(leaves)[(8, 5)],))
        db.execute(
            "INSERT INTO log_subtrees (level, idx, hash) VALUES (8, 11, ?), (3, 0, ?)", ("00" * 32,) * 2
        )
    report = _verify(capsys)
    assert report["problems"] == [
        "a stored subtree hash (level 3, index 0) is of no complete subtree of the 3000 entries",
        "a stored subtree hash (level 8, index 11) is of no complete subtree of the 3000 entries",
    ]


def test_rows_an_older_graven_left_out_are_filled_by_the_next_append_that_completes_a_subtree(
    log_home: Path, capsys: Capsys
) -> None:
    """An older graven that was still running when the database was upgraded appends without rows."""
    with _db(log_home) as db:
        db.execute("DELETE FROM log_subtrees WHERE idx >= 9")
    _append(log_home, 3071 - SIZE)  # up to 3071 entries: no subtree completed, nothing filled
    assert max(i for _, i in _subtrees(log_home)) == 8
    _append(log_home, 1)
    assert _subtrees(log_home) == _expected_rows(_leaves(log_home))  # 9, 10 filled, 11 appended
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 3072


def _downgrade(home: Path) -> None:
    """Make the database what graven's schema 9 left: no subtree table, no later index, version 9."""
    with _db(home) as db:
        db.execute("DROP TABLE log_subtrees")
        db.execute("DROP INDEX ix_deployments_pending")  # schema 11's
        db.execute("""UPDATE graven_meta SET value = '9' WHERE "key" = 'schema_version'""")


def test_a_database_of_the_previous_schema_is_filled_by_its_upgrade(
    log_home: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graven.db import SCHEMA_VERSION

    leaves = _leaves(log_home)
    _downgrade(log_home)
    with Context(home=Home(root=log_home)) as ctx, monkeypatch.context() as patched:
        assert ctx.db.schema_version() == SCHEMA_VERSION >= 10  # upgraded through 10 and on
        _no_full_read(patched)
        assert ctx.audit.prove(777)["proof"] == [h.hex() for h in inclusion_proof(leaves, 777)]
        result = ctx.audit.consistency(_note(log_home, 1000))
        assert result["proof"] == [h.hex() for h in consistency_proof(leaves, 1000)]
    assert _subtrees(log_home) == _expected_rows(leaves)
    report = _verify(capsys)
    assert report["ok"] and report["size"] == SIZE


def test_the_upgrade_of_a_damaged_log_fills_up_to_its_first_gap(log_home: Path, capsys: Capsys) -> None:
    leaves = _leaves(log_home)
    _downgrade(log_home)
    with _db(log_home) as db:
        db.execute("DELETE FROM log_entries WHERE idx = 1000")
    report = _verify(capsys)  # the upgrade does not fail: the log is as damaged as it was
    assert not report["ok"] and report["first_bad_index"] == 1000
    assert _subtrees(log_home) == {n: h for n, h in _expected_rows(leaves).items() if n[1] < 3}
    code, _, err = run_cli(capsys, "log", "prove", "1001")
    assert code == 1 and err.endswith("run `graven log verify`\n") and "no entry 1000" in err


@pytest.mark.services
def test_subtrees_on_postgres_are_written_read_and_filled_by_the_upgrade(
    postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    _append(home, 600, postgres_url)
    _append(home, 1, postgres_url)  # a second transaction: the appends read what the first one stored
    from graven.db import Database

    database = Database.open(postgres_url)
    try:
        with database.connect() as conn:
            leaves = [
                leaf_hash(str(e).encode())
                for e in conn.execute("SELECT entry FROM log_entries ORDER BY idx").scalars()
            ]
            rows = {
                (r.level, r.idx): r.hash for r in conn.execute("SELECT level, idx, hash FROM log_subtrees")
            }
            note = str(conn.execute("SELECT note FROM log_checkpoints WHERE size = 300").scalar_one())
        assert rows == _expected_rows(leaves) and len(rows) == 2
        with database.begin() as conn:  # back to schema 9
            conn.execute("DROP TABLE log_subtrees")
            conn.execute("""UPDATE graven_meta SET value = '9' WHERE "key" = 'schema_version'""")
    finally:
        database.close()
    with Context(home=Home(root=home, db_url_override=postgres_url)) as ctx, monkeypatch.context() as patched:
        _no_full_read(patched)
        assert ctx.audit.prove(299)["proof"] == [h.hex() for h in inclusion_proof(leaves, 299)]
        assert ctx.audit.consistency(note)["proof"] == [h.hex() for h in consistency_proof(leaves, 300)]
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 601


def test_verify_names_no_row_past_a_missing_entry_and_counts_the_rows_a_truncation_leaves(
    log_home: Path, capsys: Capsys
) -> None:
    """Past a missing entry the rest of the log is not read, so its rows (right, of entries that are
    there) are not "of no complete subtree": one per 255 entries, they filled the problems shown (20)
    and kept (100) before the truncation and the rollback were named. A truncated log's rows are
    stray, and counted in one line past the first few."""
    with _db(log_home) as db:
        db.execute("DELETE FROM log_entries WHERE idx = 1000")
    report = _verify(capsys)
    assert report["first_bad_index"] == 1000
    assert report["problems"][0] == "entry 1000 is missing (next is 1001)"
    assert not [p for p in report["problems"] if "stored subtree" in p]
    with _db(log_home) as db:
        db.execute("DELETE FROM log_entries WHERE idx > 1000")
        db.execute("DELETE FROM log_checkpoints WHERE size > 1000")
    report = _verify(capsys)
    assert [p for p in report["problems"] if "stored subtree" in p] == [
        "a stored subtree hash (level 8, index 3) is of no complete subtree of the 1000 entries",
        "a stored subtree hash (level 8, index 4) is of no complete subtree of the 1000 entries",
        "a stored subtree hash (level 8, index 5) is of no complete subtree of the 1000 entries",
        "5 more stored subtree hashes are of no complete subtree of the 1000 entries",
    ]


class _Warnings:
    """A reporter that keeps the warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        pass


def _fresh_database(postgres_url: str, name: str) -> str:
    """A new, empty database on the module's server (another test's log is in postgres_url's)."""
    import psycopg

    server = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.services
def test_a_wrong_row_on_postgres_gives_a_proof_from_the_entries_and_is_repaired(
    postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_url = _fresh_database(postgres_url, "graven_repair")
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    _append(home, 700, postgres_url)
    from graven.db import Database

    database = Database.open(postgres_url)
    try:
        with database.begin() as conn:
            conn.execute("UPDATE log_subtrees SET hash = :h WHERE level = 8 AND idx = 1", {"h": FORGED})
            conn.execute("INSERT INTO log_subtrees (level, idx, hash) VALUES (8, 5, :h)", {"h": FORGED})
        with database.connect() as conn:
            leaves = [
                leaf_hash(str(e).encode())
                for e in conn.execute("SELECT entry FROM log_entries ORDER BY idx").scalars()
            ]
    finally:
        database.close()
    reporter = _Warnings()
    with Context(home=Home(root=home, db_url_override=postgres_url), reporter=reporter) as ctx:
        proof = ctx.audit.prove(3)
        assert proof["proof"] == [h.hex() for h in inclusion_proof(leaves, 3)]
        assert reporter.warnings == [
            "the audit log's stored subtree hash of entries 256..511 (level 8, index 1) does not match its "
            "entries: this proof was made from the entries instead (the whole log read); `graven log verify "
            "--repair` rewrites the stored hashes"
        ]
        report = ctx.audit.verify(repair=True)
        assert report.ok and report.size == 701
        assert report.repair is not None and report.repair.to_json() == {
            "ok": True,
            "size": 700,
            "rewritten": 1,
            "added": 0,
            "removed": 1,
            "entry": 700,
            "error": None,
        }
        with ctx.db.connect() as conn:
            leaves = [
                leaf_hash(str(e).encode())
                for e in conn.execute("SELECT entry FROM log_entries ORDER BY idx").scalars()
            ]
            rows = {
                (r.level, r.idx): r.hash for r in conn.execute("SELECT level, idx, hash FROM log_subtrees")
            }
        assert rows == _expected_rows(leaves)
        with monkeypatch.context() as patched:
            _no_full_read(patched)  # the rows are read again: no fallback, no warning
            assert ctx.audit.prove(3)["proof"] == [h.hex() for h in inclusion_proof(leaves, 3)]
        assert len(reporter.warnings) == 1
