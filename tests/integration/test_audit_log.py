"""The audit log: tamper evidence, proofs, concurrency, and an independent check with Go's tlog."""

from __future__ import annotations

import base64
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_cli_error
from graven.errors import IntegrityError
from graven.home import Home
from graven.model.logentry import LogEvent
from graven.service.context import Context
from helpers_repo import make_repo, run_cli

GO_CHECKER_TESTS = Path(__file__).with_name("test_go_checker.py")


def _append(home: Path, count: int, **fields: Any) -> None:
    with Context(home=Home(root=home)) as ctx:
        for i in range(count):
            ctx.audit.record(LogEvent("deploy", env=f"env{i % 3}", reason=f"r{i}", **fields))


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "graven.db", isolation_level=None)


def _verify(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = run_cli(capsys, "log", "verify", "--json")
    report: dict[str, Any] = json.loads(out)
    assert (code == 0) is report["ok"]
    return report


def test_commands_write_to_the_log(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a"})
    run_cli(capsys, "keys", "generate")
    digest = run_cli(capsys, "build", "-C", str(repo))[1].strip()
    _, out, _ = run_cli(capsys, "log", "--json")
    events = [e["event"] for e in json.loads(out)]
    assert events == ["key-trusted", "build", "sign"]
    _, out, _ = run_cli(capsys, "log", "--artifact", digest[7:15], "--json")
    assert {e["artifact"] for e in json.loads(out)} == {digest}
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 3 and report["checkpoints_checked"] == 3


@pytest.mark.parametrize("field", ["actor", "reason", "time", "result", "event", "index"])
@pytest.mark.parametrize("index", [0, 6, 11])
def test_editing_any_field_of_any_entry_fails_at_that_index(
    home: Path, capsys: pytest.CaptureFixture[str], field: str, index: int
) -> None:
    _append(home, 12)
    assert _verify(capsys)["ok"]
    with _db(home) as db:
        (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
        doc = json.loads(text)
        doc[field] = doc[field] + 1 if isinstance(doc[field], int) else doc[field] + "x"
        new = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        db.execute("UPDATE log_entries SET entry = ? WHERE idx = ?", (new, index))
    report = _verify(capsys)
    assert not report["ok"]
    assert report["first_bad_index"] == index


def test_rewriting_an_entry_and_its_leaf_hash_is_caught_by_the_checkpoints(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    _append(home, 9)
    with _db(home) as db:
        (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = 4").fetchone()
        new = text.replace('"reason":"r4"', '"reason":"forged"')
        leaf = hashlib.sha256(b"\x00" + new.encode()).hexdigest()
        db.execute("UPDATE log_entries SET entry = ?, leaf_hash = ? WHERE idx = 4", (new, leaf))
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 4


def test_editing_a_derived_column_is_caught(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 5)
    with _db(home) as db:
        db.execute("UPDATE log_entries SET env = 'prod' WHERE idx = 2")
    report = _verify(capsys)
    assert report["first_bad_index"] == 2


def test_deleting_the_last_entry_is_caught_by_the_checkpoint(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 6)
    with _db(home) as db:
        db.execute("DELETE FROM log_entries WHERE idx = 5")
    report = _verify(capsys)
    assert not report["ok"] and report["first_bad_index"] == 5


def test_deleting_and_reordering_entries_is_caught(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 6)
    with _db(home) as db:
        db.execute("DELETE FROM log_entries WHERE idx = 2")
    assert _verify(capsys)["first_bad_index"] == 2
    with _db(home) as db:
        (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = 1").fetchone()
        db.execute(
            "INSERT INTO log_entries SELECT 2, entry, leaf_hash, time, event, artifact, env "
            "FROM log_entries WHERE idx = 3"
        )
        db.execute("UPDATE log_entries SET entry = ? WHERE idx = 3", (text,))
    assert _verify(capsys)["first_bad_index"] == 2


def test_fork_fails_the_consistency_check(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 8)
    old = tmp_path / "old.ckpt"
    old.write_text(run_cli(capsys, "log", "checkpoint")[1])
    _append(home, 3)
    code, out, _ = run_cli(capsys, "log", "consistency", str(old), "--json")
    assert code == 0 and json.loads(out)["ok"]
    # an attacker truncates to 5 entries and appends different ones: a fork of the old checkpoint
    with _db(home) as db:
        db.execute("DELETE FROM log_entries WHERE idx >= 5")
        db.execute("DELETE FROM log_checkpoints WHERE size > 5")
    with Context(home=Home(root=home)) as ctx:
        from graven.core.merkle import CompactRange, leaf_hash

        compact = CompactRange()
        with ctx.db.connect() as conn:
            rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx").all()
        compact.extend(leaf_hash(r[0].encode()) for r in rows)
        with ctx.db.begin() as conn:
            conn.execute(
                "UPDATE log_state SET size = 5, frontier = :frontier",
                {"frontier": ",".join(h.hex() for h in compact.hashes)},
            )
    with pytest.raises(IntegrityError, match="but this home committed 11"):  # this home's mark sees it
        _append(home, 1, result="forked")
    (home / "log" / "in-use").write_text("")  # who can write the database can write the home as well
    _append(home, 6, result="forked")
    assert _verify(capsys)["ok"]  # the forked log is self-consistent...
    code, _, err = run_cli(capsys, "log", "consistency", str(old))
    assert code == 1 and "fork" in err  # ...but not with what an auditor kept


def test_malformed_old_checkpoint_is_an_input_error(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 2)
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "log", "consistency", str(bad))
    assert code == 2 and err.startswith("graven: error:")
    assert f"{bad} is not a checkpoint of a graven log (" in err  # which file, and what to pass
    assert "`graven log checkpoint` wrote" in err and err.count("\n") == 1


def test_an_old_checkpoint_with_crlf_line_ends_is_refused_as_the_note_is(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed note's lines end in LF (C2SP; Go's note.Open refuses a CR): the file was read in text
    mode, whose universal newlines turned CRLF (and a lone CR) into LF, so the CLI took a note that
    graven's own parser and other tools refuse."""
    _append(home, 2)
    _, note, _ = run_cli(capsys, "log", "checkpoint")
    kept = tmp_path / "kept.ckpt"
    kept.write_bytes(note.encode())
    assert run_cli(capsys, "log", "consistency", str(kept))[0] == 0
    kept.write_bytes(note.replace("\n", "\r\n").encode())
    refused = run_cli(capsys, "log", "consistency", str(kept))
    assert_cli_error(refused, 2, "is not a checkpoint of a graven log", "control characters")


def test_a_huge_old_checkpoint_is_refused_without_reading_it_whole(home: Path) -> None:
    """The file was read whole: /dev/zero (or a large file passed by mistake) ran graven out of memory,
    a MemoryError traceback. A checkpoint is a few hundred bytes; more than 1 MiB is not one."""
    _append(home, 2)
    limited = (  # 1 GiB of address space: the old read fails within it, and never takes the machine's
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "sys.argv = ['graven', 'log', 'consistency', '/dev/zero']; "
        "runpy.run_module('graven', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", limited],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAVEN_HOME": str(home), "LC_ALL": "C.UTF-8"},
        timeout=120,
        check=False,
    )
    assert_cli_error((result.returncode, result.stdout, result.stderr), 2, "/dev/zero is not a checkpoint")


def test_a_damaged_entry_stops_the_timeline_and_export_as_a_failed_check_naming_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry that is not canonical graven.log/v1 is a damaged database (exit 1, as `log verify`),
    not the user's bad input (exit 2), and the error names which entry it is."""
    _append(home, 6)
    with _db(home) as db:
        (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = 3").fetchone()
        db.execute("UPDATE log_entries SET entry = ? WHERE idx = 3", (" " + text,))
    assert_cli_error(run_cli(capsys, "log"), 1, "log entry 3 ", "`graven log verify`")
    code, out, err = run_cli(capsys, "log", "export")
    assert code == 1 and len(out.splitlines()) == 3, out
    assert err.startswith("graven: error: log entry 3 ") and err.count("\n") == 1, err
    assert run_cli(capsys, "log", "export", "--since", "4")[0] == 0


def test_inclusion_proofs_are_small_and_verify(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graven.core.merkle import verify_inclusion

    _append(home, 37)
    for index in (0, 17, 36):
        _code, out, _ = run_cli(capsys, "log", "prove", str(index))
        proof = json.loads(out)
        hashes = [bytes.fromhex(h) for h in proof["proof"]]
        assert len(hashes) * 32 <= 32 * math.ceil(math.log2(proof["tree_size"]))
        verify_inclusion(
            bytes.fromhex(proof["leaf_hash"]), index, proof["tree_size"], hashes, bytes.fromhex(proof["root"])
        )
    assert_cli_error(run_cli(capsys, "log", "prove", "99"), 2, "no log entry 99: the log has entries 0..36")


def _appender(home: str, count: int) -> None:
    os.environ.pop("GRAVEN_DB_URL", None)
    _append(Path(home), count)


def test_four_processes_appending_at_once_leave_no_gap(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(home, 1)  # create the key and schema first
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(str(home), 25)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    report = _verify(capsys)
    assert report["ok"] and report["size"] == 101


def test_killed_appenders_never_leave_a_gap(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(home, 1)
    code = (
        "import sys; from pathlib import Path; from graven.home import Home; "
        "from graven.model.logentry import LogEvent; from graven.service.context import Context\n"
        "with Context(home=Home(root=Path(sys.argv[1]))) as ctx:\n"
        "    ctx.audit.record(LogEvent('drift', reason='x')); print('appending', flush=True)\n"
        "    while True: ctx.audit.record(LogEvent('drift', reason='x'))\n"
    )
    for delay in (0.05, 0.2, 0.4):
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE)
            for _ in range(2)
        ]
        for proc in procs:  # killed while appending, however long start-up took on a loaded machine
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"appending\n"
        time.sleep(delay)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    report = _verify(capsys)
    assert report["ok"], report["problems"]
    assert report["size"] > 1


def _append_before_the_mark_is_read(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """The next read of the high-water mark first lets another writer commit an entry (and raise the
    mark): what a concurrent build or deploy does at any moment."""
    from graven.service.audit import AuditLog

    original = AuditLog.high_water
    pending = [True]

    def high_water(self: AuditLog) -> tuple[int, str]:
        if pending:
            pending.clear()
            _append(home, 1)
        return original(self)

    monkeypatch.setattr(AuditLog, "high_water", high_water)


def test_a_log_verified_while_another_process_appends_verifies(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark read after the database's snapshot could be past it: a live home's log "rolled back"."""
    _append(home, 3)
    _append_before_the_mark_is_read(monkeypatch, home)
    report = _verify(capsys)
    assert report["ok"], report["problems"]
    assert _verify(capsys)["size"] == 4


def test_a_deployer_s_check_passes_while_another_process_appends(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_ready (a deploy's, under its lock) refused a deploy while a build was being recorded."""
    _append(home, 3)
    _append_before_the_mark_is_read(monkeypatch, home)
    with Context(home=Home(root=home)) as ctx:
        ctx.audit.check_ready()


@pytest.mark.services
def test_go_tlog_accepts_graven_cli_output(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The checkpoint, proofs and raw entries printed by the CLI, checked by golang.org/x/mod/sumdb."""
    sys.path.insert(0, str(GO_CHECKER_TESTS.parent))
    from test_go_checker import CHECKER_SOURCE, X_MOD_PACKAGES

    from helpers_services import build_go_program

    binary = build_go_program(CHECKER_SOURCE, tmp_path / "gochecker", X_MOD_PACKAGES)

    _append(home, 5)
    old_note = run_cli(capsys, "log", "checkpoint")[1]
    old = tmp_path / "old"
    old.write_text(old_note)
    _append(home, 8)
    vkey = run_cli(capsys, "log", "checkpoint", "--vkey")[1].strip()
    note = run_cli(capsys, "log", "checkpoint")[1]
    proof = json.loads(run_cli(capsys, "log", "prove", "9")[1])
    consistency = json.loads(run_cli(capsys, "log", "consistency", str(old), "--json")[1])
    entries = []
    for line in run_cli(capsys, "log", "export")[1].splitlines():
        doc = json.loads(line)
        doc.pop("leaf_hash")
        entries.append(
            base64.b64encode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).decode()
        )

    def b64(hexes: list[str]) -> list[str]:
        return [base64.b64encode(bytes.fromhex(h)).decode() for h in hexes]

    request = {
        "vkey": vkey,
        "checkpoint": note,
        "inclusion": {"index": 9, "leafHash": b64([proof["leaf_hash"]])[0], "proof": b64(proof["proof"])},
        "consistency": {
            "oldSize": consistency["old_size"],
            "oldRoot": b64([consistency["old_root"]])[0],
            "proof": b64(consistency["proof"]),
        },
        "entries": entries,
    }
    ok = subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tampered = dict(request, checkpoint=note.replace("\n13\n", "\n12\n"))
    bad = subprocess.run(
        [str(binary)], input=json.dumps(tampered), capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1


def test_the_mark_is_read_only_between_two_writes_of_it(home: Path) -> None:
    """A writer raising the mark of a log started anew writes its shorter text over the old one, then
    cuts the file (pwrite, ftruncate) under an exclusive lock: a reader between the two saw the new text
    with the old one's tail, and called a sound mark damaged. The reader takes the lock shared."""
    import fcntl
    import threading

    from graven.service.audit import AuditLog

    _append(home, 2)
    with Context(home=Home(root=home)) as ctx:
        log = AuditLog(ctx)
        path = log.in_use_path
        size, origin = log.high_water()
        assert size == 2
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a writer half-way: the new text written, not yet cut
            os.pwrite(fd, f"3 {origin[:-5]}\n".encode(), 0)
            seen: list[object] = []
            reader = threading.Thread(target=lambda: seen.append(_mark_or_error(log)))
            reader.start()
            reader.join(timeout=0.3)
            assert reader.is_alive(), f"the mark was read while a writer held it: {seen}"
            os.ftruncate(fd, len(f"3 {origin[:-5]}\n"))
        finally:
            os.close(fd)  # releases the lock
        reader.join(timeout=30)
        assert seen == [(3, origin[:-5])]


def _mark_or_error(log: Any) -> object:
    try:
        return log.high_water()
    except IntegrityError as exc:
        return exc
